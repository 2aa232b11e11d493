// Drives the analytics page in headless Chromium where the server refuses
// or has finished the report.
//
// Usage: node errors.mjs <server url>
// Prints one line, `RESULT <json>`, for examples/analytics/tests/analytics.rs:
// for each case, what the page showed and how many report requests it made
// (an EventSource that retries forever makes more every second).
import { launch } from "./chromium.mjs";

const [base] = process.argv.slice(2);
const browser = await launch();
const shown = () => ({
  state: window.report.state,
  stateText: document.getElementById("state").textContent,
  notice: document.getElementById("notice").textContent,
  reconnects: window.report.reconnects,
});
// Longer than the page's first retry (at most 0.5 s) and than a few of them.
const SETTLE_MS = 2500;

try {
  const result = {};
  const page = await browser.newPage();
  let requests = 0;
  page.on("console", (msg) => console.log(`console: ${msg.text()}`));
  page.on("pageerror", (err) => console.log(`pageerror: ${err}`));
  page.on("request", (req) => { if (req.url().includes("/api/v1/analytics/stream")) requests += 1; });

  // Refused reports, started from the page's address (no form check).
  for (const [name, query] of [["badReport", "?report=a%20b&days=30"], ["zeroDays", "?days=0"]]) {
    requests = 0;
    await page.goto(`${base}/${query}`);
    await page.waitForFunction(() => window.report.state !== "connecting", null, { timeout: 10_000 });
    await page.waitForTimeout(SETTLE_MS);
    result[name] = { ...(await page.evaluate(shown)), requests };
  }

  // The form's check of the report name runs (a pattern Chromium rejects
  // is ignored, and every value passes).
  result.pattern = await page.evaluate(() => {
    const input = document.getElementById("report");
    const check = (value) => { input.value = value; return input.checkValidity(); };
    return { spaced: check("a b"), dotted: check("a.b"), plain: check("ok-Name_1") };
  });

  // A complete report, resumed after its last event: the server answers 204.
  await page.goto(`${base}/?report=short&days=2`);
  await page.waitForFunction(() => window.report.state === "complete", null, { timeout: 10_000 });
  requests = 0;
  await page.evaluate(() => connect()); // as after a restart, with the last id
  await page.waitForTimeout(SETTLE_MS);
  result.afterLast = { ...(await page.evaluate(shown)), requests, lastEventId: await page.evaluate(() => window.report.lastEventId) };

  console.log(`RESULT ${JSON.stringify(result)}`);
} finally {
  await browser.close();
}
