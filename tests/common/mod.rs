//! The one home of the helpers shared by the tests and the benches: real
//! servers on 127.0.0.1, a real HTTP/SSE client, the streams the servers
//! serve, a counting allocator and `median`.
//!
//! A test binary takes it with `mod common;`; a bench or the load test with
//! `#[path = "../tests/common/mod.rs"] mod common;`.
#![allow(dead_code, unreachable_pub)]

pub mod alloc;
pub mod grammar;
pub mod swarm;

use axum::response::sse::{Event as SseEvent, Sse};
use bytes::Bytes;
use eventsource_stream::{Event, Eventsource};
use futures_util::{
    Stream, StreamExt,
    stream::{self, BoxStream},
};
use http::{Request, Response, header};
use http_body::Frame;
use http_body_util::StreamBody;
use http_body_util::{BodyDataStream, BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::{
    convert::Infallible,
    future::Future,
    net::{Ipv4Addr, SocketAddr},
    pin::Pin,
    time::Duration,
};
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::mpsc,
    task::JoinHandle,
};
use tokio_stream::wrappers::ReceiverStream;
use tower::{Layer, ServiceBuilder, service_fn};
use tower_graceful_sse::DrainHandle;

// ---------------------------------------------------------------------------
// What the servers serve.

/// An axum SSE response of boxed events.
pub type SseStream = Sse<BoxStream<'static, Result<SseEvent, Infallible>>>;

/// One `hello` event (`event: hello`, `data: hi`), then nothing: a stream
/// waiting for its next event, which only the notice (or the end of the grace
/// period) ends.
pub async fn idle() -> SseStream {
    Sse::new(
        stream::once(async { Ok(SseEvent::default().event("hello").data("hi")) })
            .chain(stream::pending())
            .boxed(),
    )
}

/// One `hello`, then a numbered tick (`id: i`, `data: tick i`) every 10 ms.
pub async fn busy() -> SseStream {
    let ticks = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(
        Duration::from_millis(10),
    ))
    .enumerate()
    .map(|(i, _)| {
        Ok(SseEvent::default()
            .id(i.to_string())
            .data(format!("tick {i}")))
    });
    Sse::new(
        stream::once(async { Ok(SseEvent::default().event("hello").data("hi")) })
            .chain(ticks)
            .boxed(),
    )
}

/// Checks a [`busy`] stream's events after its `hello`: intact numbered
/// ticks, then exactly one shutdown event, last, keeping the last event id.
pub fn assert_ticks_then_notice(events: &[Event]) {
    let (notice, ticks) = events.split_last().expect("at least the notice");
    assert_shutdown_event(notice);
    let last_id = ticks.last().map_or("", |t| t.id.as_str());
    assert_eq!(notice.id, last_id, "the notice keeps the Last-Event-ID");
    for (i, tick) in ticks.iter().enumerate() {
        assert_eq!(tick.data, format!("tick {i}"));
        assert_eq!(tick.id, i.to_string());
    }
}

/// The sending end of a body fed by the test: data, an error, or `panic!`,
/// which makes the body panic inside `poll_frame`.
pub type Feed = mpsc::Sender<Result<Bytes, std::io::Error>>;

/// A hyper server (HTTP/1.1 and h2c, no axum) around a tower `service_fn`
/// behind the layer of `handle` (and `CatchPanicLayer` outside it, if asked).
/// `/idle` serves `event: hello`, `data: hi`, then nothing; any other path an
/// event stream (`text/event-stream; charset=utf-8`) fed by the test chunk by
/// chunk, whose feed arrives on the returned channel.
pub fn fed_server(
    handle: &DrainHandle,
    catch_panic: bool,
) -> (SocketAddr, mpsc::UnboundedReceiver<Feed>) {
    let (feeds_tx, feeds) = mpsc::unbounded_channel();
    let service = ServiceBuilder::new()
        .layer(handle.layer())
        .service(service_fn(move |req: Request<Incoming>| {
            let body = if req.uri().path() == "/idle" {
                let hello = Bytes::from_static(b"event: hello\ndata: hi\n\n");
                let frames =
                    stream::once(async { Ok::<_, std::io::Error>(hello) }).chain(stream::pending());
                axum::body::Body::from_stream(frames)
            } else {
                let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
                feeds_tx.send(tx).unwrap();
                axum::body::Body::new(StreamBody::new(ReceiverStream::new(rx).map(|r| {
                    r.map(|chunk| {
                        // Inside the layer's `poll_frame`.
                        assert!(chunk != "panic!", "bug in the handler's stream");
                        Frame::data(chunk)
                    })
                })))
            };
            let res = Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
                .body(body)
                .unwrap();
            async move { Ok::<_, Infallible>(res) }
        }));
    let addr = if catch_panic {
        serve_tower(tower_http::catch_panic::CatchPanicLayer::new().layer(service))
    } else {
        serve_tower(service)
    };
    (addr, feeds)
}

/// Feeds one chunk and waits until the body has taken everything fed.
pub async fn feed(feed: &Feed, chunk: &'static [u8]) {
    feed.send(Ok(Bytes::from_static(chunk))).await.unwrap();
    until(|| feed.capacity() == feed.max_capacity()).await;
}

/// Feeds `bytes` one per chunk, without waiting; the body may have ended,
/// dropping the rest.
pub async fn feed_bytes(feed: &Feed, bytes: &[u8]) {
    for b in bytes {
        let _ = feed.send(Ok(Bytes::copy_from_slice(&[*b]))).await;
    }
}

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

// ---------------------------------------------------------------------------
// Servers.

/// A listener on an ephemeral port of `ip`, with a listen backlog deep enough
/// for a burst of thousands of connections.
pub fn listener(ip: Ipv4Addr) -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(SocketAddr::from((ip, 0))).unwrap();
    socket.listen(4096).unwrap()
}

/// Serves an axum router on an ephemeral port of 127.0.0.1, until the
/// runtime ends.
pub fn serve(app: axum::Router) -> SocketAddr {
    serve_on(app, Ipv4Addr::LOCALHOST)
}

/// Serves an axum router on an ephemeral port of `ip` (say 127.0.0.7).
pub fn serve_on(app: axum::Router, ip: Ipv4Addr) -> SocketAddr {
    let listener = listener(ip);
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Serves an axum router with `axum::serve(..).with_graceful_shutdown(signal)`;
/// the task ends when the server does.
pub fn serve_graceful(
    app: axum::Router,
    signal: impl Future<Output = ()> + Send + 'static,
) -> (SocketAddr, JoinHandle<std::io::Result<()>>) {
    let listener = listener(Ipv4Addr::LOCALHOST);
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .into_future(),
    );
    (addr, server)
}

/// Serves a tower service with hyper directly (HTTP/1.1 and h2c), no axum.
pub fn serve_tower<S, B>(service: S) -> SocketAddr
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = listener(Ipv4Addr::LOCALHOST);
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

/// `body`, served with `content_type` through the layer of `handle`: the
/// response body as the server would poll it.
pub fn through_layer<B>(
    handle: &DrainHandle,
    content_type: &'static str,
    body: B,
) -> tower_graceful_sse::GracefulBody<B>
where
    B: http_body::Body<Data = Bytes>,
{
    use tower::ServiceExt as _;
    let mut body = Some(body);
    let service = ServiceBuilder::new()
        .layer(handle.layer())
        .service(service_fn(move |_: Request<()>| {
            let body = body.take().expect("called once");
            async move {
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .header(header::CONTENT_TYPE, content_type)
                        .body(body)
                        .unwrap(),
                )
            }
        }));
    futures_util::FutureExt::now_or_never(service.oneshot(Request::new(())))
        .expect("the layer answers at once")
        .unwrap()
        .into_body()
}

// ---------------------------------------------------------------------------
// The client: hyper's, one HTTP/1.1 connection per request.

/// A client connection; dropping it closes the socket at once.
pub struct Conn(JoinHandle<()>);

impl Conn {
    /// Wraps the task that drives a client connection.
    pub fn new(task: JoinHandle<()>) -> Self {
        Self(task)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends one GET with the given headers over a fresh HTTP/1.1 connection;
/// `Err` names the step that failed (for the swarm, which counts failures).
pub async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Response<Incoming>, Conn), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
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
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    Ok((res, conn))
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
    within(get(addr, path, headers)).await.unwrap()
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

/// Parses bytes received whole as an event stream.
pub async fn parse(bytes: Bytes) -> Vec<Event> {
    rest(&mut events(http_body_util::Full::new(bytes))).await
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

/// Reads a whole body as bytes; panics if it ends in an error.
pub async fn body_bytes<B>(body: B) -> Bytes
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    within(body.collect()).await.unwrap().to_bytes()
}

/// Reads a body to its end: the data received, and whether it ended with an
/// error (a truncated transfer) rather than a clean end. Independent of the
/// body's error type.
pub async fn body_and_end<B>(body: B) -> (Bytes, Result<(), String>)
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut body = std::pin::pin!(body);
    let mut data = Vec::new();
    loop {
        match within(body.frame()).await {
            None => return (data.into(), Ok(())),
            Some(Err(e)) => return (data.into(), Err(e.to_string())),
            Some(Ok(frame)) => {
                if let Ok(chunk) = frame.into_data() {
                    data.extend_from_slice(&chunk);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Waiting.

/// How long a step that should happen promptly may take before the test
/// fails instead of hanging. Measured in real time, so that a test under
/// paused time fails after 10 real seconds too.
const PROMPTLY: Duration = Duration::from_secs(10);

/// Bounds a step that should happen promptly: panics after 10 s of real
/// time.
///
/// Under paused time it does not jump the clock to a far deadline of its own:
/// while it waits, the clock moves (when the runtime is idle) at most 100 ms at
/// a time, so a socket event that the kernel has not yet delivered cannot be
/// overtaken by the timeout.
pub async fn within<F: Future>(future: F) -> F::Output {
    let start = std::time::Instant::now();
    let watchdog = async {
        while start.elapsed() < PROMPTLY {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        biased;
        out = future => out,
        () = watchdog => panic!("timed out after {PROMPTLY:?}"),
    }
}

/// Waits until `cond` holds (checking every millisecond), at most 10 s of
/// real time.
pub async fn until(mut cond: impl FnMut() -> bool) {
    within(async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// Figures.

/// The median of `values` (the mean of the middle two for an even count).
///
/// # Panics
///
/// If `values` is empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    assert!(!values.is_empty(), "the median of nothing");
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}
