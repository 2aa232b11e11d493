//! A client that behaves like a browser's `EventSource` (WHATWG HTML,
//! "Server-sent events"), and checks what it receives against the report.
//!
//! - `200` with `Content-Type: text/event-stream`: the stream is announced and
//!   parsed; when it ends, cleanly or not, the client *reestablishes the
//!   connection* after the reconnection time (`retry:`, 3 s until the server
//!   sets one), sending `Last-Event-ID`.
//! - A network error before any answer (refused, reset): reestablish too.
//! - Any other status, or another content type: *fail the connection*. A
//!   browser never retries; here that is a client error. A `204 No Content`
//!   ends the client too: the server's way of saying the report is complete.
//! - The `complete` event ends the report: the page closes its `EventSource`.

use crate::report::Reference;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::net::TcpStream;

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
    /// Streams that carried the shutdown notice and no report event: the
    /// answer of an instance that was already draining.
    pub notice_only: u32,
    /// Streams that ended without a notice (a network error or a cut).
    pub cut: u32,
    /// The report ended with its `complete` event or a `204`.
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

/// How one connection attempt ended.
enum Attempt {
    /// The stream ended (cleanly or cut) or never opened: reconnect.
    Reconnect,
    /// The report is complete (`complete` event or `204`).
    Done,
    /// Fail the connection: a client error.
    Fatal(String),
}

/// Streams `path` through `addr` like an `EventSource` until the report
/// completes, the connection fails, or `deadline` passes; checks every event
/// against `reference`.
pub async fn run(
    addr: SocketAddr,
    path: String,
    reference: Arc<Reference>,
    deadline: Instant,
) -> Outcome {
    let mut out = Outcome::default();
    let mut parser = Parser::default();
    let mut next = 0usize; // index in the reference of the next expected event
    let mut gap_since: Option<Instant> = None;
    let mut first = true;
    loop {
        if !first {
            out.reconnects += 1;
            out.reconnect_times.push(Instant::now());
        }
        first = false;
        let attempt = tokio::time::timeout_at(
            deadline.into(),
            attempt(
                addr,
                &path,
                &reference,
                &mut parser,
                &mut next,
                &mut gap_since,
                &mut out,
            ),
        )
        .await
        .unwrap_or(Attempt::Done);
        match attempt {
            Attempt::Done => break,
            Attempt::Fatal(reason) => {
                out.client_error = Some(reason);
                break;
            }
            Attempt::Reconnect => {
                gap_since.get_or_insert_with(Instant::now);
                let wait = parser.retry.unwrap_or(DEFAULT_RETRY);
                if Instant::now() + wait >= deadline {
                    break;
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
    out.lost += (reference.len() - next) as u64;
    out
}

async fn attempt(
    addr: SocketAddr,
    path: &str,
    reference: &Reference,
    parser: &mut Parser,
    next: &mut usize,
    gap_since: &mut Option<Instant>,
    out: &mut Outcome,
) -> Attempt {
    let Ok(Ok(tcp)) = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await
    else {
        return Attempt::Reconnect;
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await
    else {
        return Attempt::Reconnect;
    };
    let conn = tokio::spawn(conn);
    let _abort = AbortOnDrop(conn);
    let mut req = Request::get(path)
        .header(header::HOST, addr.to_string())
        .header(header::ACCEPT, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache");
    if !parser.last_event_id.is_empty() {
        req = req.header("last-event-id", parser.last_event_id.as_str());
    }
    let req = req.body(Empty::<Bytes>::new()).expect("valid request");
    let res = match tokio::time::timeout(Duration::from_secs(30), sender.send_request(req)).await {
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
    let (mut report_events, mut notices) = (0u32, 0u32);
    loop {
        let frame = match tokio::time::timeout(IDLE_TIMEOUT, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            _ => break, // end of stream, error or silence: reestablish
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        parser.feed(&data, &mut events);
        for event in events.drain(..) {
            if event.event == "shutdown" {
                notices += 1;
                out.notices += 1;
                continue;
            }
            if report_events == 0 {
                if let Some(since) = gap_since.take() {
                    out.max_gap = out.max_gap.max(opened - since);
                }
            }
            report_events += 1;
            check(reference, &event, next, out);
            if event.event == "complete" {
                out.completed = true;
                return Attempt::Done;
            }
        }
    }
    if report_events == 0 && notices > 0 {
        out.notice_only += 1;
    } else if notices == 0 {
        out.cut += 1;
    }
    Attempt::Reconnect
}

/// Exactly once, in order: the event must be the next one the report holds.
fn check(reference: &Reference, event: &Event, next: &mut usize, out: &mut Outcome) {
    match reference.index(&event.last_event_id) {
        Some(i) if !reference.matches(i, event) => out.corrupt += 1,
        Some(i) if i == *next => {
            out.delivered += 1;
            *next += 1;
        }
        Some(i) if i < *next => out.duplicated += 1,
        Some(i) => {
            out.lost += (i - *next) as u64;
            out.delivered += 1;
            *next = i + 1;
        }
        None => out.corrupt += 1,
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
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

    #[test]
    fn check_counts_lost_duplicated_and_corrupt() {
        let reference = Reference::new(
            (0..4)
                .map(|i| Event {
                    last_event_id: i.to_string(),
                    event: "result".into(),
                    data: format!("d{i}"),
                })
                .collect(),
        );
        let mut out = Outcome::default();
        let mut next = 0;
        for (id, data) in [
            ("0", "d0"),
            ("1", "d1"),
            ("1", "d1"),
            ("3", "d3"),
            ("2", "x"),
        ] {
            let event = Event {
                last_event_id: id.into(),
                event: "result".into(),
                data: data.into(),
            };
            check(&reference, &event, &mut next, &mut out);
        }
        assert_eq!(
            (out.delivered, out.duplicated, out.lost, out.corrupt),
            (3, 1, 1, 1)
        );
    }
}
