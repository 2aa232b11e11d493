//! The expected reports: fetched once, in one stream each, from a reference
//! instance that sends them without pause. The report is a pure function of
//! its parameters, so every instance sends the same events.

use crate::client::{Event, Parser};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    net::SocketAddr,
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
