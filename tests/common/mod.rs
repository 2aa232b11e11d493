//! Shared test helpers: real servers on 127.0.0.1 and a real SSE client.
#![allow(dead_code, unreachable_pub)]

pub mod grammar;

use bytes::Bytes;
use eventsource_stream::{Event, Eventsource};
use futures_util::{Stream, StreamExt};
use http::{Request, Response, header};
use http_body_util::{BodyDataStream, BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::{future::Future, net::SocketAddr, pin::Pin, time::Duration};
use tokio::net::{TcpListener, TcpStream};

/// The shutdown event's JSON with the default settings, checked field by
/// field: the stream's own delay, within 30 s and 30 + 15 s of jitter, agrees
/// in `retry:`, `reconnect_delay` and the message.
pub fn assert_shutdown_event(event: &Event) {
    assert_eq!(event.event, "shutdown");
    let retry = event.retry.expect("the notice carries retry:");
    assert!(
        (Duration::from_secs(30)..=Duration::from_secs(45)).contains(&retry),
        "{retry:?}"
    );
    let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(data["type"], "shutdown");
    let delay = &data["reconnect_delay"];
    assert_eq!(
        (delay.as_f64().unwrap() * 1000.0).round() as u128,
        retry.as_millis()
    );
    assert_eq!(
        data["message"],
        format!("Server restarting, please reconnect in {delay}s")
    );
    let ts = data["timestamp"].as_str().unwrap();
    assert_eq!(ts.len(), 24, "{ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");
}

/// Serves an axum router on an ephemeral loopback port.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Serves a tower service with hyper directly (HTTP/1.1 and h2c), no axum.
pub async fn serve_tower<S, B>(service: S) -> SocketAddr
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper_util::service::TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A client connection; dropping it closes the socket at once.
pub struct Conn(tokio::task::JoinHandle<()>);

impl Conn {
    /// Wraps the task that drives a client connection.
    pub fn new(task: tokio::task::JoinHandle<()>) -> Self {
        Self(task)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends one GET over a fresh HTTP/1.1 connection.
pub async fn request(addr: SocketAddr, path: &str, accept: &str) -> (Response<Incoming>, Conn) {
    request_with(addr, path, &[("accept", accept)]).await
}

/// Sends one GET with the given headers over a fresh HTTP/1.1 connection.
pub async fn request_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (Response<Incoming>, Conn) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = Conn(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let mut req = Request::get(path)
        .header(header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    for (name, value) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    (within(sender.send_request(req)).await.unwrap(), conn)
}

/// An SSE stream parsed by the independent `eventsource-stream`, with the
/// connection it came on (if any).
pub struct Events {
    stream: Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>,
    _conn: Option<Conn>,
}

impl Events {
    /// The next event, an error, or the end, as the parser reports them.
    pub async fn next_raw(&mut self) -> Option<Result<Event, String>> {
        self.stream.next().await
    }
}

/// Opens an SSE stream over a fresh connection.
pub async fn sse(addr: SocketAddr, path: &str) -> Events {
    sse_with(addr, path, &[]).await
}

/// Opens an SSE stream with extra headers (say `Last-Event-ID`).
pub async fn sse_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Events {
    let mut all = vec![("accept", "text/event-stream")];
    all.extend_from_slice(headers);
    let (res, conn) = request_with(addr, path, &all).await;
    assert_eq!(res.status(), 200);
    let mut events = events(res.into_body());
    events._conn = Some(conn);
    events
}

/// Parses a body as an event stream.
pub fn events<B>(body: B) -> Events
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    Events {
        stream: Box::pin(
            BodyDataStream::new(body)
                .eventsource()
                .map(|r| r.map_err(|e| e.to_string())),
        ),
        _conn: None,
    }
}

/// The next event, failing on an error, an end or a 10 s silence.
pub async fn next(events: &mut Events) -> Event {
    match within(events.stream.next()).await {
        Some(Ok(event)) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// Everything left in the stream; panics if it ends with an error rather
/// than a clean end of stream.
pub async fn rest(events: &mut Events) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(item) = within(events.stream.next()).await {
        out.push(item.unwrap_or_else(|e| panic!("stream failed after {out:?}: {e}")));
    }
    out
}

/// Bounds a step that should happen promptly, so a bug fails the test
/// instead of hanging it.
pub async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .expect("timed out after 10 s")
}

/// Waits until `cond` holds (checking every few milliseconds), at most 10 s.
pub async fn until(mut cond: impl FnMut() -> bool) {
    within(async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// Reads a whole body as bytes.
pub async fn body_bytes<B>(body: B) -> Bytes
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    within(body.collect()).await.unwrap().to_bytes()
}
