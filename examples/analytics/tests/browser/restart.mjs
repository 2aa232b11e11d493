// Drives the analytics page in headless Chromium through a server restart.
//
// Usage: node restart.mjs <page url> <screenshot dir> [<back-off base ms> <cap ms>]
// Protocol with examples/analytics/tests/analytics.rs, one line each on stdout:
//   MIDWAY          the report is streaming and part-way: stop the server now
//   STATE <state>   the page's connection state changed
//   RETRIES <n>     the page has made n report attempts after a failed one
//   RESULT <json>   the page's final state, every badge text it showed, and
//                   its `attempts` and `notices`
// Anything else on stdout is a log line.
import { launch } from "./chromium.mjs";

const [url, shots, baseMs, capMs] = process.argv.slice(2);
const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 900 } });
  page.on("console", (msg) => console.log(`console: ${msg.text()}`));
  page.on("pageerror", (err) => console.log(`pageerror: ${err}`));
  // Before the page's script: its back-off, and a record of every text
  // the badge shows (each change, however brief).
  await page.addInitScript((backoff) => {
    if (backoff.baseMs) window.analyticsBackoff = backoff;
    window.badges = [];
    new MutationObserver(() => {
      const text = document.getElementById("state")?.textContent;
      if (text !== undefined && window.badges[window.badges.length - 1] !== text) window.badges.push(text);
    }).observe(document, { subtree: true, childList: true, characterData: true });
  }, { baseMs: Number(baseMs) || 0, capMs: Number(capMs) || 0 });
  await page.goto(url);

  await page.waitForFunction(() => window.report.rows.length >= 25, null, { timeout: 30_000 });
  console.log("MIDWAY");

  // Record every state the person watching would have seen.
  const states = [];
  const notices = new Set();
  let shot = false;
  let retries = 0;
  const deadline = Date.now() + 60_000;
  for (;;) {
    const now = await page.evaluate(() => ({
      state: window.report.state,
      notice: document.getElementById("notice").textContent,
      retries: window.attempts.filter((a) => a.stream === "report" && a.after === "failure").length,
    }));
    if (now.retries !== retries) {
      retries = now.retries;
      console.log(`RETRIES ${retries}`);
    }
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
    badges: window.badges,
    attempts: window.attempts,
    notices: window.notices,
  }));
  console.log(`RESULT ${JSON.stringify({ ...result, states, noticeLines: [...notices] })}`);
} finally {
  await browser.close();
}
