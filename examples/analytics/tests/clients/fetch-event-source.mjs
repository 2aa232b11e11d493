// The README's lines for @microsoft/fetch-event-source (its section
// "Clients" shows this file, and examples/analytics/tests/clients/restart.mjs
// runs it across a real restart). fetch-event-source does not reconnect when a
// stream ends cleanly, as a drained one does, and after an error it waits its
// own interval: so end the stream with an error after a shutdown notice, and
// wait the notice's `reconnect_delay`. It resends the last `id:` as
// `Last-Event-ID` by itself.
import { fetchEventSource } from "@microsoft/fetch-event-source";

class Final extends Error {} // a refusal: retrying would not help

// Resolves when `signal` aborts or the server answers 204 (the stream is
// over); rejects on a 4xx.
export function follow(url, { onmessage, signal, ...init }) {
  const stop = new AbortController();
  signal?.addEventListener("abort", () => stop.abort());
  let notice = null; // the last shutdown notice's delay, in ms
  let failures = 0;
  return fetchEventSource(url, {
    openWhenHidden: true, // a hidden tab keeps its stream, as an EventSource does
    ...init,
    signal: stop.signal,
    async onopen(res) {
      if (res.status === 204) return stop.abort();
      if (res.ok && res.headers.get("content-type")?.startsWith("text/event-stream")) {
        failures = 0;
        return;
      }
      if (res.status >= 400 && res.status < 500) throw new Final(`HTTP ${res.status}`);
      throw new Error(`HTTP ${res.status}`); // a 503 from a draining instance, a 502 from the proxy
    },
    onmessage(msg) {
      if (msg.event === "shutdown") notice = JSON.parse(msg.data).reconnect_delay * 1000;
      onmessage(msg); // the notice too: its `message` is for the user
    },
    onclose() {
      throw new Error("stream ended"); // reconnect: onerror says when
    },
    onerror(err) {
      if (err instanceof Final) throw err; // stops, rejecting the promise
      if (notice !== null) {
        const delay = notice;
        notice = null;
        return delay;
      }
      // Nobody there: back off, exponentially with jitter, up to 30 s.
      failures += 1;
      return Math.min(30_000, 500 * 2 ** (failures - 1)) * (0.5 + Math.random() / 2);
    },
  });
}
