// Drives the analytics page in headless Chromium through a rolling deploy
// behind nginx or HAProxy (used by scripts/rolling-deploy, see
// deploy/src/browser.rs). An https:// URL is the proxy with --tls: its
// certificate comes from the run's own CA, which this throwaway profile is
// told to accept (Playwright's ignoreHTTPSErrors, i.e.
// --ignore-certificate-errors); the connection is HTTP/2 all the same. The
// User-Agent ends in "rolling-deploy-page" so the proxy's log tells the
// page's requests apart (the driver checks they shared one HTTP/2 connection).
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
  const context = await browser.newContext({
    viewport: { width: 1000, height: 900 },
    ignoreHTTPSErrors: url.startsWith("https:"),
    userAgent: `Mozilla/5.0 Chromium/${browser.version()} rolling-deploy-page`,
  });
  const page = await context.newPage();
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
    // The protocol of every request that has ended (Resource Timing).
    protocols: [...new Set(performance.getEntriesByType("resource").map((e) => e.nextHopProtocol))],
  }));
  console.log(`RESULT ${JSON.stringify({ ...result, states })}`);
} finally {
  await browser.close();
}
