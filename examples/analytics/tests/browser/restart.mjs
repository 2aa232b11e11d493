// Drives the analytics page in headless Chromium through a server restart.
//
// Usage: node restart.mjs <page url> <screenshot dir>
// Protocol with examples/analytics/tests/analytics.rs, one line each on stdout:
//   MIDWAY          the report is streaming and part-way: stop the server now
//   STATE <state>   the page's connection state changed
//   RESULT <json>   the page's final state
// Anything else on stdout is a log line.
import { launch } from "./chromium.mjs";

const [url, shots] = process.argv.slice(2);
const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 900 } });
  page.on("console", (msg) => console.log(`console: ${msg.text()}`));
  page.on("pageerror", (err) => console.log(`pageerror: ${err}`));
  await page.goto(url);

  await page.waitForFunction(() => window.report.rows.length >= 25, null, { timeout: 30_000 });
  console.log("MIDWAY");

  // Record every state the person watching would have seen.
  const states = [];
  const texts = [];
  const notices = new Set();
  let shot = false;
  const deadline = Date.now() + 60_000;
  for (;;) {
    const now = await page.evaluate(() => ({
      state: window.report.state,
      text: document.getElementById("state").textContent,
      notice: document.getElementById("notice").textContent,
    }));
    if (texts[texts.length - 1] !== now.text) texts.push(now.text);
    if (states[states.length - 1] !== now.state) {
      states.push(now.state);
      console.log(`STATE ${now.state}`);
    }
    if (now.notice) notices.add(now.notice);
    if (now.state === "restarting" && !shot) {
      await page.screenshot({ path: `${shots}/analytics-restarting.png` });
      shot = true;
    }
    if (now.state === "complete" || Date.now() > deadline) break;
    await page.waitForTimeout(25);
  }
  await page.screenshot({ path: `${shots}/analytics-complete.png`, fullPage: false });
  const result = await page.evaluate(() => ({
    rows: window.report.rows,
    restarts: window.report.restarts,
    reconnects: window.report.reconnects,
    complete: window.report.complete,
    stateText: document.getElementById("state").textContent,
  }));
  console.log(`RESULT ${JSON.stringify({ ...result, states, texts, notices: [...notices] })}`);
} finally {
  await browser.close();
}
