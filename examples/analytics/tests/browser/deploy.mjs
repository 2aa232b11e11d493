// Drives the analytics page in headless Chromium through a rolling deploy
// behind nginx (used by scripts/rolling-deploy, see deploy/src/browser.rs).
//
// Usage: node deploy.mjs <page url> <deadline ms>
// One line each on stdout:
//   STREAMING       the report has started: the deploy may begin
//   STATE <state>   the page's connection state changed
//   RESULT <json>   the page's final state (at `complete`, or at the deadline)
// Anything else on stdout is a log line.
import { launch } from "./chromium.mjs";

const [url, deadlineMs] = process.argv.slice(2);
const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 900 } });
  page.on("console", (msg) => console.log(`console: ${msg.text()}`));
  page.on("pageerror", (err) => console.log(`pageerror: ${err}`));
  await page.goto(url);
  await page.waitForFunction(() => window.report.rows.length > 0, null, { timeout: 60_000 });
  console.log("STREAMING");

  const states = [];
  const deadline = Date.now() + Number(deadlineMs);
  for (;;) {
    const state = await page.evaluate(() => window.report.state);
    if (states[states.length - 1] !== state) {
      states.push(state);
      console.log(`STATE ${state}`);
    }
    if (state === "complete" || state === "failed" || Date.now() > deadline) break;
    await page.waitForTimeout(50);
  }
  const result = await page.evaluate(() => ({
    rows: window.report.rows,
    restarts: window.report.restarts,
    reconnects: window.report.reconnects,
    stateText: document.getElementById("state").textContent,
  }));
  console.log(`RESULT ${JSON.stringify({ ...result, states })}`);
} finally {
  await browser.close();
}
