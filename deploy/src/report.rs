//! The expected reports: fetched once, in one stream each, from a reference
//! instance that sends them without pause. The report is a pure function of
//! its parameters, so every instance sends the same events. [`ReportCheck`]
//! is a report client's expectation.

use crate::client::{Event, Expect, Outcome, Parser};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    net::SocketAddr,
    sync::Arc,
};
use tokio::net::TcpStream;

/// A report's events in order: their ids and a digest of each.
#[derive(Debug)]
pub struct Reference {
    index: HashMap<String, usize>,
    digests: Vec<u64>,
    /// The rows of the `result` events, in order (what the page shows).
    pub rows: Vec<serde_json::Value>,
}

impl Reference {
    pub fn new(events: Vec<Event>) -> Self {
        let mut rows = Vec::new();
        for event in events.iter().filter(|e| e.event == "result") {
            if let Ok(data) = serde_json::from_str::<serde_json::Value>(&event.data) {
                rows.extend(data["rows"].as_array().cloned().unwrap_or_default());
            }
        }
        Self {
            index: events
                .iter()
                .enumerate()
                .map(|(i, e)| (e.last_event_id.clone(), i))
                .collect(),
            digests: events.iter().map(digest).collect(),
            rows,
        }
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn index(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    pub fn matches(&self, i: usize, event: &Event) -> bool {
        self.digests[i] == digest(event)
    }
}

/// Every event of the report exactly once, in order, then `complete`.
pub struct ReportCheck {
    reference: Arc<Reference>,
    /// Index in the reference of the next expected event.
    next: usize,
}

impl ReportCheck {
    pub fn new(reference: Arc<Reference>) -> Self {
        Self { reference, next: 0 }
    }
}

impl Expect for ReportCheck {
    /// The event must be the next one the report holds.
    fn event(&mut self, event: &Event, out: &mut Outcome) -> bool {
        match self.reference.index(&event.last_event_id) {
            Some(i) if !self.reference.matches(i, event) => out.corrupt += 1,
            Some(i) if i == self.next => {
                out.delivered += 1;
                self.next += 1;
            }
            Some(i) if i < self.next => out.duplicated += 1,
            Some(i) => {
                out.lost += (i - self.next) as u64;
                out.delivered += 1;
                self.next = i + 1;
            }
            None => out.corrupt += 1,
        }
        event.event == "complete"
    }

    fn finish(&mut self, out: &mut Outcome) {
        out.lost += (self.reference.len() - self.next) as u64;
    }
}

fn digest(event: &Event) -> u64 {
    let mut h = DefaultHasher::new();
    (&event.event, &event.data).hash(&mut h);
    h.finish()
}

/// Reads the whole report at `path` from one instance, in one stream.
pub async fn fetch(addr: SocketAddr, path: &str) -> Result<Reference, String> {
    let fail = |e: &dyn std::fmt::Display| format!("reference report {path}: {e}");
    let tcp = TcpStream::connect(addr).await.map_err(|e| fail(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| fail(&e))?;
    let conn = tokio::spawn(conn);
    let req = Request::get(path)
        .header(header::HOST, addr.to_string())
        .header(header::ACCEPT, "text/event-stream")
        .body(Empty::<Bytes>::new())
        .expect("valid request");
    let res = sender.send_request(req).await.map_err(|e| fail(&e))?;
    if res.status() != StatusCode::OK {
        return Err(fail(&res.status()));
    }
    let mut body = res.into_body();
    let (mut parser, mut events) = (Parser::default(), Vec::new());
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(|e| fail(&e))?.into_data() {
            parser.feed(&data, &mut events);
        }
        if events.last().is_some_and(|e| e.event == "complete") {
            break;
        }
    }
    conn.abort();
    match events.last() {
        Some(last) if last.event == "complete" => Ok(Reference::new(events)),
        _ => Err(fail(&"ended before its `complete` event")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_lost_duplicated_and_corrupt() {
        let reference = Reference::new(
            (0..4)
                .map(|i| Event {
                    last_event_id: i.to_string(),
                    event: "result".into(),
                    data: format!("d{i}"),
                })
                .collect(),
        );
        let mut check = ReportCheck::new(Arc::new(reference));
        let mut out = Outcome::default();
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
            check.event(&event, &mut out);
        }
        check.finish(&mut out);
        assert_eq!(
            (out.delivered, out.duplicated, out.lost, out.corrupt),
            (3, 1, 1, 1)
        );
    }
}
