//! A client that behaves like a browser's `EventSource` (WHATWG HTML,
//! "Server-sent events"), whatever stream it reads: the expectation it is
//! given ([`Expect`]: a report, report.rs, or the live feed, live.rs)
//! checks each event, and one [`Outcome`] counts for both.
//!
//! - `200` with `Content-Type: text/event-stream`: the stream is announced and
//!   parsed; when it ends, cleanly or not, the client *reestablishes the
//!   connection* after the reconnection time (`retry:`, 3 s until the server
//!   sets one), sending `Last-Event-ID`.
//! - A network error before any answer (refused, reset): reestablish too.
//! - Any other status, or another content type: *fail the connection*. A
//!   browser never retries; here that is a client error. A `204 No Content`
//!   ends the client too: the server's way of saying the report is complete.
//! - The expectation says when the stream is complete (a report's `complete`
//!   event): the page closes its `EventSource`.
//! - Over HTTP/2 the client keeps its connection across reconnects, as a
//!   browser does, and opens a new one only when the proxy closed it.

use crate::connect::{Conn, Protocol, Target};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{StatusCode, header};
use std::time::{Duration, Instant};

/// A browser's reconnection time until the server sends `retry:` (Chromium
/// and WebKit use 3 s).
const DEFAULT_RETRY: Duration = Duration::from_secs(3);
/// Longer than the example's 15 s keep-alive: silence this long is a dead stream.
const IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// What one client saw, from its first request to the end of its report.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Report events received once, in order.
    pub delivered: u64,
    /// Report events never received (skipped, or missing at the end).
    pub lost: u64,
    /// Report events received again after they had arrived once.
    pub duplicated: u64,
    /// Events whose id is not in the report, or whose content differs.
    pub corrupt: u64,
    /// A non-200 answer or a wrong content type: what a browser gives up on.
    pub client_error: Option<String>,
    /// Requests after the first.
    pub reconnects: u32,
    /// When each reconnect request was sent.
    pub reconnect_times: Vec<Instant>,
    /// `shutdown` events received.
    pub notices: u32,
    /// `reset` events received: the server said history was lost.
    pub resets: u32,
    /// Live hits acknowledged and then lost with the log (after the last
    /// one received before a reset): expected where Redis restarts empty.
    pub gone_with_log: u64,
    /// Streams that carried the shutdown notice and no report event: the
    /// answer of an instance that was already draining.
    pub notice_only: u32,
    /// Streams that ended without a notice (a network error or a cut).
    pub cut: u32,
    /// The stream completed (a report's `complete` event or a `204`; the
    /// live feed once told to stop and caught up).
    pub completed: bool,
    /// The longest time without a stream that carried report events: from
    /// the end of one to the answer of the next.
    pub max_gap: Duration,
}

/// One parsed event, as `EventSource` dispatches it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub last_event_id: String,
    pub event: String,
    pub data: String,
}

/// The WHATWG event-stream parser: lines end in CR, LF or CRLF; a blank line
/// dispatches; `id` persists across events; `retry` takes digits only.
#[derive(Default)]
pub struct Parser {
    line: Vec<u8>,
    after_cr: bool,
    event: String,
    data: String,
    last_event_id: String,
    pub retry: Option<Duration>,
}

impl Parser {
    /// Feeds bytes, returning the events they complete.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Event>) {
        for &b in bytes {
            if self.after_cr && b == b'\n' {
                self.after_cr = false;
                continue;
            }
            self.after_cr = b == b'\r';
            if b == b'\r' || b == b'\n' {
                let line = std::mem::take(&mut self.line);
                self.line_done(&String::from_utf8_lossy(&line), out);
            } else {
                self.line.push(b);
            }
        }
    }

    fn line_done(&mut self, line: &str, out: &mut Vec<Event>) {
        if line.is_empty() {
            let data = std::mem::take(&mut self.data);
            let event = std::mem::take(&mut self.event);
            if data.is_empty() {
                return;
            }
            out.push(Event {
                last_event_id: self.last_event_id.clone(),
                event: if event.is_empty() {
                    "message".into()
                } else {
                    event
                },
                data: data.strip_suffix('\n').unwrap_or(&data).to_owned(),
            });
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => self.last_event_id = value.to_owned(),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok().map(Duration::from_millis);
            }
            _ => {}
        }
    }
}

/// What a stream must carry, checked event by event (the shutdown notice
/// is the client's own business and never reaches it).
pub trait Expect: Send {
    /// Checks one event and counts it in `out`; true when the stream is
    /// complete and the client should close it.
    fn event(&mut self, event: &Event, out: &mut Outcome) -> bool;
    /// The client was told to stop: true once nothing more is awaited.
    fn caught_up(&self) -> bool {
        true
    }
    /// At the end: counts in `out` what never arrived.
    fn finish(&mut self, out: &mut Outcome);
}

/// How one connection attempt ended.
enum Attempt {
    /// The stream ended (cleanly or cut) or never opened: reconnect.
    Reconnect,
    /// The stream is complete (or `204`).
    Done,
    /// Fail the connection: a client error.
    Fatal(String),
}

/// One client: its stream, its protocol, and when it gives up.
pub struct Client<E> {
    pub target: Target,
    pub protocol: Protocol,
    pub path: String,
    pub expect: E,
    /// Give up (and count what is missing) at this time.
    pub deadline: Instant,
    /// Once true, end as soon as the expectation is caught up.
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// The `Last-Event-ID` of the first request, if any.
    pub resume_from: Option<String>,
}

/// Streams like an `EventSource` until the stream completes, the
/// connection fails, or the deadline passes; `expect` checks every event.
pub async fn run<E: Expect>(mut c: Client<E>) -> Outcome {
    let mut state = State {
        out: Outcome::default(),
        parser: Parser {
            last_event_id: c.resume_from.take().unwrap_or_default(),
            ..Parser::default()
        },
        gap_since: None,
        conn: None,
    };
    let mut first = true;
    loop {
        if !first {
            state.out.reconnects += 1;
            state.out.reconnect_times.push(Instant::now());
        }
        first = false;
        let attempt = tokio::time::timeout_at(c.deadline.into(), state.attempt(&mut c))
            .await
            .unwrap_or(Attempt::Done);
        match attempt {
            Attempt::Done => break,
            Attempt::Fatal(reason) => {
                state.out.client_error = Some(reason);
                break;
            }
            Attempt::Reconnect => {
                state.gap_since.get_or_insert_with(Instant::now);
                let wait = state.parser.retry.unwrap_or(DEFAULT_RETRY);
                if Instant::now() + wait >= c.deadline {
                    break;
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
    state.conn = None;
    c.expect.finish(&mut state.out);
    state.out
}

struct State {
    out: Outcome,
    parser: Parser,
    gap_since: Option<Instant>,
    /// An HTTP/2 connection kept for the next request.
    conn: Option<Conn>,
}

impl State {
    /// The kept HTTP/2 connection if the proxy has not closed it, else a new one.
    async fn connection(&mut self, c: &Client<impl Expect>) -> Option<Conn> {
        match self.conn.take() {
            Some(conn) if c.protocol == Protocol::Http2 && conn.is_open() => Some(conn),
            _ => c.target.connect(c.protocol).await.ok(),
        }
    }

    async fn attempt<E: Expect>(&mut self, c: &mut Client<E>) -> Attempt {
        let Some(mut conn) = self.connection(c).await else {
            return Attempt::Reconnect;
        };
        let mut req = conn
            .request("GET", &c.path)
            .header(header::ACCEPT, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache");
        if !self.parser.last_event_id.is_empty() {
            req = req.header("last-event-id", self.parser.last_event_id.as_str());
        }
        let req = req.body(Full::new(Bytes::new())).expect("valid request");
        let res = match tokio::time::timeout(Duration::from_secs(30), conn.send(req)).await {
            Ok(Ok(res)) => res,
            _ => return Attempt::Reconnect,
        };
        let opened = Instant::now();
        match res.status() {
            StatusCode::OK => {}
            StatusCode::NO_CONTENT => return Attempt::Done,
            status => {
                let body = tokio::time::timeout(Duration::from_secs(5), res.into_body().collect())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let body = String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned();
                return Attempt::Fatal(format!("{status}: {}", body.trim()));
            }
        }
        let content_type = res
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("text/event-stream") {
            return Attempt::Fatal(format!("200 with Content-Type {content_type:?}"));
        }

        let mut body = res.into_body();
        let mut events = Vec::new();
        let (mut stream_events, mut notices) = (0u32, 0u32);
        let out = &mut self.out;
        let ended = loop {
            let frame = tokio::select! {
                frame = tokio::time::timeout(IDLE_TIMEOUT, body.frame()) => frame,
                _ = c.stop.wait_for(|stop| *stop), if c.expect.caught_up() => break true,
            };
            let frame = match frame {
                Ok(Some(Ok(frame))) => frame,
                _ => break false, // end of stream, error or silence: reestablish
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            self.parser.feed(&data, &mut events);
            let mut complete = false;
            for event in events.drain(..) {
                if event.event == "shutdown" {
                    notices += 1;
                    out.notices += 1;
                    continue;
                }
                if stream_events == 0 {
                    if let Some(since) = self.gap_since.take() {
                        out.max_gap = out.max_gap.max(opened - since);
                    }
                }
                stream_events += 1;
                complete |= c.expect.event(&event, out);
            }
            if complete || (*c.stop.borrow() && c.expect.caught_up()) {
                break true;
            }
        };
        if ended {
            out.completed = true;
            return Attempt::Done;
        }
        if stream_events == 0 && notices > 0 {
            out.notice_only += 1;
        } else if notices == 0 {
            out.cut += 1;
        }
        // The stream ended; an HTTP/2 connection can carry the next one.
        drop(body);
        self.conn = Some(conn);
        Attempt::Reconnect
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&str]) -> (Vec<Event>, Option<Duration>) {
        let mut parser = Parser::default();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk.as_bytes(), &mut out);
        }
        (out, parser.retry)
    }

    #[test]
    fn parses_like_eventsource() {
        let (events, retry) = parse(&[
            ": keep-alive\n\nid: 7\nevent: result\ndata: {\"a\"",
            ":1}\r",
            "\n\r\nretry: 1000\nevent: shutdown\ndata: bye\n\nretry: x\n\n",
        ]);
        assert_eq!(
            events,
            vec![
                Event {
                    last_event_id: "7".into(),
                    event: "result".into(),
                    data: "{\"a\":1}".into()
                },
                // No `id:`: the last event id survives the notice.
                Event {
                    last_event_id: "7".into(),
                    event: "shutdown".into(),
                    data: "bye".into()
                },
            ]
        );
        assert_eq!(retry, Some(Duration::from_millis(1000)));
    }
}
