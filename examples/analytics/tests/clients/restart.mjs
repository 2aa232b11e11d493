// Two SSE clients people use, across a real restart of the analytics example:
// the `eventsource` package (WHATWG EventSource for Node) and
// @microsoft/fetch-event-source driven by the README's lines
// (./fetch-event-source.mjs). Both read one report; midway the server gets
// SIGTERM, drains (each stream gets its shutdown notice) and exits; a new one
// starts on the same port once each client has found nobody there a few
// times. Each client must get the notice, come back after the notice's delay
// (`retry:` for eventsource, `reconnect_delay` for fetch-event-source) with
// the last event id it saw as Last-Event-ID, and get every row of the report
// exactly once, in order. While nobody answers, eventsource retries every
// `retry:` and the README's lines back off (500 ms doubling, with jitter).
//
// Usage: node restart.mjs <analytics binary>   (./scripts/test runs it)
// Exits non-zero, saying why, when a client fails.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createServer } from "node:net";
import { EventSource } from "eventsource";
import { follow } from "./fetch-event-source.mjs";

// fetch-event-source is written for browsers: it calls `window.setTimeout`,
// `window.clearTimeout`, `window.fetch` and `document.removeEventListener`,
// which Node has not (Azure/fetch-event-source#39). openWhenHidden is set.
globalThis.window ??= { setTimeout, clearTimeout, fetch: (...args) => fetch(...args) };
globalThis.document ??= { removeEventListener() {} };

const [binary] = process.argv.slice(2);
assert.ok(binary, "usage: node restart.mjs <analytics binary>");

// The README shows the lines this test runs, exactly.
const marker = "<!-- examples/analytics/tests/clients/fetch-event-source.mjs -->\n```js\n";
const readme = readFileSync(new URL("../../../../README.md", import.meta.url), "utf8");
const lines = readFileSync(new URL("./fetch-event-source.mjs", import.meta.url), "utf8");
const shown = readme.slice(readme.indexOf(marker) + marker.length).split("```\n")[0];
assert.ok(readme.includes(marker), "README.md: the fetch-event-source block is gone");
assert.equal(shown, lines.slice(lines.indexOf("import { fetchEventSource }")), "README.md shows other lines than fetch-event-source.mjs");
const ENV = {
  ANALYTICS_EVENT_INTERVAL_MS: "20",
  // 1 to 2 s, each stream its own.
  SHUTDOWN_RECONNECT_DELAY: "1",
  SHUTDOWN_RECONNECT_JITTER: "1",
  RUST_LOG: "info",
};
const DAYS = 40;
const DOWN = 3;
setTimeout(() => {
  console.error("clients: no result within 90 s");
  process.exit(1);
}, 90_000).unref();

const port = await new Promise((resolve) => {
  const probe = createServer().listen(0, "127.0.0.1", () => {
    const { port } = probe.address();
    probe.close(() => resolve(port));
  });
});
const url = `http://127.0.0.1:${port}/api/v1/analytics/stream?report=clients&days=${DAYS}`;

// One run of the example server on `port`; `exited` resolves to its code.
async function start() {
  const child = spawn(binary, [], { env: { ...process.env, ...ENV, PORT: String(port) }, stdio: ["ignore", "pipe", "pipe"] });
  let logs = "";
  const exited = new Promise((resolve) => child.on("exit", (code) => resolve(code)));
  await new Promise((resolve, reject) => {
    for (const out of [child.stdout, child.stderr]) {
      out.on("data", (chunk) => {
        logs += chunk;
        if (logs.includes("listening on")) resolve();
      });
    }
    exited.then((code) => reject(new Error(`the server exited (${code}) before listening:\n${logs}`)));
  });
  return { child, exited, logs: () => logs };
}

// What one client saw: every request it made (when, with which
// Last-Event-ID), every notice (when, its delay, the last id before it), the
// rows, the `complete` event.
function recorder(name) {
  const got = { name, requests: [], notices: [], rows: [], lastEventId: null, complete: null };
  got.fetch = (input, init) => {
    const request = { at: Date.now(), lastEventId: new Headers(init?.headers).get("last-event-id"), failed: false };
    got.requests.push(request);
    return fetch(input, init).catch((err) => {
      request.failed = true;
      throw err;
    });
  };
  got.event = (id, event, data) => {
    if (event === "shutdown") {
      const notice = JSON.parse(data);
      got.notices.push({ at: Date.now(), delay: notice.reconnect_delay * 1000, lastEventId: got.lastEventId, requestsBefore: got.requests.length });
      return;
    }
    if (id) got.lastEventId = id;
    if (event === "result") got.rows.push(...JSON.parse(data).rows);
    if (event === "complete") got.complete = JSON.parse(data);
  };
  return got;
}

// The `eventsource` package, as an application uses it: it reconnects by
// itself after `retry:`, sending Last-Event-ID.
function withEventSource() {
  const got = recorder("eventsource");
  got.done = new Promise((resolve, reject) => {
    const source = new EventSource(url, { fetch: got.fetch });
    for (const event of ["status", "result", "shutdown"]) {
      source.addEventListener(event, (e) => got.event(e.lastEventId, event, e.data));
    }
    source.addEventListener("complete", (e) => {
      got.event(e.lastEventId, "complete", e.data);
      source.close();
      resolve();
    });
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) reject(new Error("eventsource gave up"));
    };
  });
  return got;
}

// fetch-event-source through the README's `follow`.
function withFetchEventSource() {
  const got = recorder("fetch-event-source");
  const stop = new AbortController();
  got.done = follow(url, {
    fetch: got.fetch,
    signal: stop.signal,
    onmessage(msg) {
      got.event(msg.id, msg.event, msg.data);
      if (msg.event === "complete") stop.abort();
    },
  });
  return got;
}

async function until(what, cond) {
  const deadline = Date.now() + 30_000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

const servers = [];
try {
  servers.push(await start());
  const clients = [withEventSource(), withFetchEventSource()];
  await until("rows on both clients", () => clients.every((c) => c.rows.length >= 20));
  servers[0].child.kill("SIGTERM");
  assert.equal(await servers[0].exited, 0, `the first server's exit code; its log:\n${servers[0].logs()}`);
  // Down until each client has failed DOWN times after the notice.
  const failed = (c) => c.requests.filter((r) => r.failed).length;
  await until(`${DOWN} failed requests on both clients`, () => clients.every((c) => failed(c) >= DOWN));
  servers.push(await start());
  await Promise.all(clients.map((c) => c.done));

  // The report read again, straight through: the rows each client must have.
  const reference = withEventSource();
  await reference.done;
  assert.equal(reference.rows.length, reference.complete.rows);

  for (const got of clients) {
    const why = `${got.name}: ${JSON.stringify({ requests: got.requests, notices: got.notices })}`;
    assert.equal(got.notices.length, 1, `one shutdown notice: ${why}`);
    const [notice] = got.notices;
    const back = got.requests[notice.requestsBefore];
    assert.ok(back, `a request after the notice: ${why}`);
    const waited = back.at - notice.at;
    assert.ok(waited >= notice.delay - 5 && waited < notice.delay + 1000, `back ${waited} ms after a notice that asked ${notice.delay} ms: ${why}`);
    assert.equal(back.lastEventId, notice.lastEventId, `resumes after the last event before the notice: ${why}`);
    assert.ok(got.requests.slice(1).every((r) => r.lastEventId !== null), `every reconnect sends Last-Event-ID: ${why}`);
    // While nobody answered: the wait before each retry.
    const down = got.requests.slice(notice.requestsBefore);
    const gaps = down.slice(1).filter((_, i) => down[i].failed).map((r, i) => r.at - down[i].at);
    assert.ok(gaps.length >= DOWN, `retries while down: ${why}`);
    gaps.forEach((gap, i) => {
      // eventsource: `retry:`, every time; the README's lines: half to all of 500 ms, doubling.
      const [least, most] = got.name === "eventsource" ? [notice.delay, notice.delay] : [250 * 2 ** i, 500 * 2 ** i];
      assert.ok(gap >= least - 5 && gap <= most + 300, `${got.name}: retry ${i + 1} after ${gap} ms, outside ${least}..=${most}: ${why}`);
    });
    assert.deepEqual(got.rows, reference.rows, `${got.name}: every row exactly once, in order`);
    console.log(
      `clients: ${got.name}: ${got.rows.length} rows, exactly once and in order; notice after event ${notice.lastEventId}, ` +
        `back after ${waited} ms (asked ${notice.delay} ms), then nobody there: retries ${gaps.join(", ")} ms apart; ${got.requests.length} request(s)`,
    );
  }
} finally {
  for (const server of servers) server.child.kill("SIGKILL");
}
