//! End-to-end behaviour of the core: real servers on 127.0.0.1, real clients.

mod common;

use axum::{
    Router,
    body::Body as AxumBody,
    response::sse::{Event, Sse},
    routing::get,
};
use bytes::Bytes;
use common::*;
use futures_util::{
    StreamExt,
    stream::{self, BoxStream},
};
use http::{Request, Response, header};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, StreamBody};
use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{IntervalStream, ReceiverStream};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_graceful_sse::{Config, DrainHandle};

type SseStream = Sse<BoxStream<'static, Result<Event, Infallible>>>;

fn hello() -> Result<Event, Infallible> {
    Ok(Event::default().event("hello").data("hi"))
}

/// One `hello`, then nothing: a stream waiting for its next event.
async fn idle() -> SseStream {
    Sse::new(
        stream::once(async { hello() })
            .chain(stream::pending())
            .boxed(),
    )
}

/// One `hello`, then a numbered tick every 10 ms.
async fn busy() -> SseStream {
    let ticks = IntervalStream::new(tokio::time::interval(Duration::from_millis(10)))
        .enumerate()
        .map(|(i, _)| Ok(Event::default().id(i.to_string()).data(format!("tick {i}"))));
    Sse::new(stream::once(async { hello() }).chain(ticks).boxed())
}

/// A plain text body that never ends by itself.
async fn plain_stream() -> Response<AxumBody> {
    let chunks = IntervalStream::new(tokio::time::interval(Duration::from_millis(20)))
        .enumerate()
        .map(|(i, _)| Ok::<_, Infallible>(Bytes::from(format!("chunk {i}\n"))));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain")
        .body(AxumBody::from_stream(chunks))
        .unwrap()
}

fn app(handle: &DrainHandle) -> Router {
    Router::new()
        .route("/idle", get(idle))
        .route("/busy", get(busy))
        .route("/plain", get(plain_stream))
        .layer(handle.layer())
}

/// Checks a stream's events after its `hello`: intact numbered ticks, then
/// exactly one shutdown event, last.
fn assert_ticks_then_notice(events: &[eventsource_stream::Event]) {
    let (notice, ticks) = events.split_last().expect("at least the notice");
    assert_shutdown_event(notice);
    let last_id = ticks.last().map_or("", |t| t.id.as_str());
    assert_eq!(notice.id, last_id, "the notice keeps the Last-Event-ID");
    for (i, tick) in ticks.iter().enumerate() {
        assert_eq!(tick.data, format!("tick {i}"));
        assert_eq!(tick.id, i.to_string());
    }
}

#[tokio::test]
async fn two_hundred_idle_and_busy_streams_each_get_one_notice_then_end() {
    let handle = DrainHandle::new(Config::default());
    let addr = serve(app(&handle)).await;

    let clients = futures_util::future::join_all((0..200).map(|i| async move {
        let mut events = sse(addr, if i % 2 == 0 { "/idle" } else { "/busy" }).await;
        assert_eq!(next(&mut events).await.event, "hello");
        events
    }))
    .await;
    assert_eq!(handle.sse_streams(), 200);
    assert_eq!(handle.in_flight(), 200);

    let drain = handle.drain();
    assert!(handle.is_draining());
    let readers = clients.into_iter().map(|mut events| {
        tokio::spawn(async move { assert_ticks_then_notice(&rest(&mut events).await) })
    });
    for reader in futures_util::future::join_all(readers).await {
        reader.unwrap();
    }

    let report = within(drain).await;
    assert_eq!(report.in_flight, 200);
    assert_eq!(report.sse_streams, 200);
    assert_eq!(report.notified, 200);
    assert_eq!(report.closed, 200);
    assert_eq!(report.force_closed, 0);
    assert_eq!(report.rejected, 0);
    assert_eq!(handle.sse_streams(), 0);
    assert_eq!(handle.in_flight(), 0);
    let metrics = handle.metrics();
    assert_eq!(metrics.sse_active_connections, 0);
    assert_eq!(metrics.sse_force_closed_connections_total, 0);
    assert!(metrics.sse_shutdown_duration_seconds.is_some());
}

#[tokio::test]
async fn requests_after_drain_are_rejected_without_reaching_the_service() {
    let calls = Arc::new(AtomicUsize::new(0));
    let handle = DrainHandle::new(Config::default());
    let counted = calls.clone();
    let app = Router::new()
        .route(
            "/count",
            get(move || async move {
                counted.fetch_add(1, Ordering::SeqCst);
                "ok"
            }),
        )
        .layer(handle.layer());
    let addr = serve(app).await;

    let (res, _conn) = request(addr, "/count", "*/*").await;
    assert_eq!(res.status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    within(handle.drain()).await;

    let (res, _conn) = request(addr, "/count", "*/*").await;
    assert_eq!(res.status(), 503);
    assert_default_retry_after(&res);
    assert_eq!(res.headers()[header::CONNECTION], "close");
    assert!(
        body_bytes(res.into_body())
            .await
            .starts_with(b"503 Service Unavailable")
    );

    // An EventSource gets a stream that carries the notice and ends.
    let (res, _conn) = request(addr, "/count", "text/event-stream").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
    assert_eq!(res.headers()[header::CONNECTION], "close");
    let events = rest(&mut events(res.into_body())).await;
    assert_eq!(events.len(), 1);
    assert_shutdown_event(&events[0]);

    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the service was called while draining"
    );
}

#[tokio::test]
async fn sse_rejection_can_be_a_plain_503() {
    let handle = DrainHandle::new(Config::default().sse_rejection_as_notice(false));
    let addr = serve(app(&handle)).await;
    within(handle.drain()).await;
    let (res, _conn) = request(addr, "/idle", "text/event-stream").await;
    assert_eq!(res.status(), 503);
    assert_default_retry_after(&res);
}

/// A hyper server around a tower `service_fn` whose SSE body is fed by the
/// test, chunk by chunk.
async fn fed_server(handle: &DrainHandle) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Feed>) {
    let (feeds_tx, feeds) = mpsc::unbounded_channel();
    let service = ServiceBuilder::new()
        .layer(handle.layer())
        .service(service_fn(move |_req: Request<hyper::body::Incoming>| {
            let (tx, rx) = mpsc::channel::<Bytes>(64);
            feeds_tx.send(tx).unwrap();
            let body = StreamBody::new(
                ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b))),
            );
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
                        .body(body)
                        .unwrap(),
                )
            }
        }));
    (serve_tower(service).await, feeds)
}

type Feed = mpsc::Sender<Bytes>;

/// Feeds `bytes` one per chunk; the body may have ended, dropping the rest.
async fn feed_bytes(feed: &Feed, bytes: &[u8]) {
    for b in bytes {
        let _ = feed.send(Bytes::copy_from_slice(&[*b])).await;
    }
}

/// Feeds one chunk and waits until the body has taken everything fed.
async fn feed_all(feed: &Feed, chunk: &'static [u8]) {
    feed.send(Bytes::from_static(chunk)).await.unwrap();
    until(|| feed.capacity() == feed.max_capacity()).await;
}

#[tokio::test]
async fn event_split_byte_by_byte_gets_the_notice_after_it() {
    let handle = DrainHandle::new(Config::default());
    let (addr, mut feeds) = fed_server(&handle).await;
    let mut events = sse(addr, "/").await;
    let feed = feeds.recv().await.unwrap();

    feed_all(&feed, b"data: first\n\n").await;
    assert_eq!(next(&mut events).await.data, "first");

    // Drain mid-event, then finish the event byte by byte, with a CRLF split
    // between two chunks.
    feed_bytes(&feed, b"event: second\r\ndata: 2\r").await;
    until(|| feed.capacity() == feed.max_capacity()).await;
    let drain = handle.drain();
    feed_bytes(&feed, b"\n\r\n: ignored\n").await;

    let events = rest(&mut events).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!((&*events[0].event, &*events[0].data), ("second", "2"));
    assert_shutdown_event(&events[1]);
    let report = within(drain).await;
    assert_eq!(
        (report.notified, report.closed, report.force_closed),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn notice_after_a_trailing_cr_swallows_its_lf_when_the_stream_runs_on() {
    let handle = DrainHandle::new(Config::default().end_after_notice(false));
    let (addr, mut feeds) = fed_server(&handle).await;
    let (res, _conn) = request(addr, "/", "text/event-stream").await;
    let feed = feeds.recv().await.unwrap();

    feed_all(&feed, b"data: first\r\r").await;
    let drain = handle.drain();
    // The LF that completes the CR before the notice, then more events.
    feed_all(&feed, b"\ndata: second\r\n\r\n").await;
    drop(feed); // the stream ends by itself, within the grace period
    let raw = body_bytes(res.into_body()).await;
    let frame_at = raw.windows(6).position(|w| w == b"retry:").unwrap();
    let frame_end = frame_at
        + raw[frame_at..]
            .windows(2)
            .position(|w| w == b"\n\n")
            .unwrap()
        + 2;
    assert_eq!(&raw[..frame_at], b"data: first\r\r");
    assert_eq!(&raw[frame_end..], b"data: second\r\n\r\n");
    let events = rest(&mut events(http_body_util::Full::new(raw))).await;
    let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data.len(), 3);
    assert_eq!((data[0], data[2]), ("first", "second"));
    assert_shutdown_event(&events[1]);
    let report = within(drain).await;
    assert_eq!((report.closed, report.force_closed), (1, 0));
}

#[tokio::test]
async fn chunk_holding_a_boundary_is_cut_there_for_the_notice() {
    let handle = DrainHandle::new(Config::default());
    let (addr, mut feeds) = fed_server(&handle).await;
    let mut events = sse(addr, "/").await;
    let feed = feeds.recv().await.unwrap();
    feed_all(&feed, b"data: a").await;
    let drain = handle.drain();
    feed_all(&feed, b"\n\ndata: b").await;
    // `b` stays unfinished: the notice went in after `a`, then the end.
    assert_eq!(next(&mut events).await.data, "a");
    assert_shutdown_event(&next(&mut events).await);
    assert!(rest(&mut events).await.is_empty());
    assert_eq!(within(drain).await.force_closed, 0);
}

#[tokio::test(start_paused = true)]
async fn ignored_notice_is_force_closed_at_the_end_of_the_grace_period() {
    let grace = Duration::from_secs(5);
    let handle = DrainHandle::new(
        Config::default()
            .grace_period(grace)
            .end_after_notice(false),
    );
    let service = ServiceBuilder::new()
        .layer(handle.layer())
        .service(service_fn(|_: Request<()>| async {
            let ticks = IntervalStream::new(tokio::time::interval(Duration::from_secs(1)))
                .map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"data: tick\n\n"))));
            Ok::<_, Infallible>(
                Response::builder()
                    .header(header::CONTENT_TYPE, "text/event-stream")
                    .body(StreamBody::new(ticks))
                    .unwrap(),
            )
        }));
    let res = service.oneshot(Request::new(())).await.unwrap();
    let reader = tokio::spawn(async move {
        let events = rest(&mut events(res.into_body())).await;
        (events, tokio::time::Instant::now())
    });

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let started = tokio::time::Instant::now();
    let report = handle.drain().await;
    assert_eq!(report.elapsed, grace);
    assert_eq!(
        (report.notified, report.closed, report.force_closed),
        (1, 0, 1)
    );

    let (events, ended) = reader.await.unwrap();
    assert_eq!(ended - started, grace, "the body ends at the deadline");
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    // Ticks at 0, 1, 2 s; the notice at 2.5 s; ticks at 3..=7 s; the end at 7.5 s.
    assert_eq!(
        kinds,
        [
            "message", "message", "message", "shutdown", "message", "message", "message",
            "message", "message"
        ]
    );
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.metrics().sse_force_closed_connections_total, 1);
}

#[tokio::test]
async fn non_sse_body_is_never_spliced_and_is_cut_as_incomplete_at_the_grace_period() {
    let grace = Duration::from_millis(300);
    let handle = DrainHandle::new(Config::default().grace_period(grace));
    let addr = serve(app(&handle)).await;
    let (res, _conn) = request(addr, "/plain", "*/*").await;
    let mut body = res.into_body();
    let first = within(body.frame())
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(first, "chunk 0\n");
    assert_eq!(handle.in_flight(), 1);
    assert_eq!(handle.sse_streams(), 0);

    let report = within(handle.drain()).await;
    assert_eq!(
        (report.notified, report.closed, report.force_closed),
        (0, 0, 1)
    );
    // The chunks sent in time arrive, then the transfer is cut without its
    // chunked terminator: the client sees an incomplete body, not an end.
    let mut received = 1;
    let cut = loop {
        match within(body.frame()).await {
            Some(Ok(frame)) => {
                let data = frame.into_data().unwrap();
                assert_eq!(data, format!("chunk {received}\n"));
                received += 1;
            }
            Some(Err(err)) => break err,
            None => panic!("the cut body ended like a whole one after {received} chunks"),
        }
    };
    let eof = std::error::Error::source(&cut)
        .and_then(|e| e.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    assert_eq!(eof, Some(std::io::ErrorKind::UnexpectedEof), "{cut:?}");
    until(|| handle.in_flight() == 0).await;
}

#[tokio::test]
async fn clients_that_leave_before_or_during_the_drain_are_counted_closed() {
    let handle = DrainHandle::new(
        Config::default()
            .end_after_notice(false)
            .grace_period(Duration::from_secs(60)),
    );
    let addr = serve(app(&handle)).await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut events = sse(addr, "/idle").await;
        assert_eq!(next(&mut events).await.event, "hello");
        clients.push(events);
    }
    clients.truncate(5);
    until(|| handle.sse_streams() == 5).await;

    let drain = handle.drain();
    for mut events in clients {
        assert_shutdown_event(&next(&mut events).await);
    }
    // Every client is gone: the drain ends long before its 60 s.
    let report = within(drain).await;
    assert_eq!(report.in_flight, 5);
    assert_eq!(
        (report.notified, report.closed, report.force_closed),
        (5, 5, 0)
    );
    assert_eq!(handle.in_flight(), 0);
}

/// Opens idle and busy streams, signals `shutdown`, and returns the server task.
async fn serve_with_graceful_shutdown(
    handle: &DrainHandle,
    drain_on_shutdown: bool,
) -> (tokio::task::JoinHandle<std::io::Result<()>>, Vec<Events>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let drain_handle = handle.clone();
    let server = tokio::spawn(
        axum::serve(listener, app(handle))
            .with_graceful_shutdown(async move {
                let _ = rx.await;
                if drain_on_shutdown {
                    drain_handle.drain().await;
                }
            })
            .into_future(),
    );
    let mut clients = Vec::new();
    for path in ["/idle", "/busy", "/idle", "/busy"] {
        let mut events = sse(addr, path).await;
        assert_eq!(next(&mut events).await.event, "hello");
        clients.push(events);
    }
    tx.send(()).unwrap();
    (server, clients)
}

#[tokio::test]
async fn axum_graceful_shutdown_exits_once_the_drain_has_closed_the_streams() {
    let handle = DrainHandle::new(Config::default());
    let (server, clients) = serve_with_graceful_shutdown(&handle, true).await;
    for mut events in clients {
        assert_ticks_then_notice(&rest(&mut events).await);
    }
    within(server).await.unwrap().unwrap();
    assert_eq!(handle.report().unwrap().force_closed, 0);
}

/// The hang this crate removes (hyper issue 2787): without a drain, the
/// graceful shutdown waits on open streams for ever.
#[tokio::test]
async fn without_a_drain_graceful_shutdown_hangs_on_open_streams() {
    let handle = DrainHandle::new(Config::default());
    let (server, _clients) = serve_with_graceful_shutdown(&handle, false).await;
    assert!(
        tokio::time::timeout(Duration::from_secs(1), server)
            .await
            .is_err(),
        "the server exited with streams open"
    );
    assert_eq!(handle.sse_streams(), 4);
}

#[tokio::test]
async fn body_error_releases_the_count() {
    let handle = DrainHandle::new(Config::default());
    let service = ServiceBuilder::new()
        .layer(handle.layer())
        .service(service_fn(|_: Request<()>| async {
            let frames = stream::iter([
                Ok(Frame::data(Bytes::from_static(b"data: 1\n\n"))),
                Err(std::io::Error::other("backend went away")),
            ]);
            Ok::<_, Infallible>(
                Response::builder()
                    .header(header::CONTENT_TYPE, "text/event-stream")
                    .body(StreamBody::new(frames))
                    .unwrap(),
            )
        }));
    let mut body = service.oneshot(Request::new(())).await.unwrap().into_body();
    assert_eq!(handle.sse_streams(), 1);
    assert!(body.frame().await.unwrap().is_ok());
    assert!(body.frame().await.unwrap().is_err());
    assert_eq!(
        handle.in_flight(),
        0,
        "released at the error, before the drop"
    );
    assert_eq!(handle.sse_streams(), 0);
    assert!(body.frame().await.is_none());
}

#[tokio::test]
async fn body_panic_releases_the_count() {
    let handle = DrainHandle::new(Config::default());
    let service = ServiceBuilder::new()
        .layer(handle.layer())
        .service(service_fn(|_: Request<()>| async {
            let frames = stream::iter([0]).map(|_| -> Result<Frame<Bytes>, Infallible> {
                panic!("bug in the handler's stream")
            });
            Ok::<_, Infallible>(
                Response::builder()
                    .header(header::CONTENT_TYPE, "text/event-stream")
                    .body(StreamBody::new(frames))
                    .unwrap(),
            )
        }));
    let body = service.oneshot(Request::new(())).await.unwrap().into_body();
    assert_eq!(handle.in_flight(), 1);
    let task = tokio::spawn(async move { body.collect().await });
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.sse_streams(), 0);
}

#[tokio::test]
async fn drain_is_idempotent_across_clones_and_tasks() {
    let handle = DrainHandle::new(Config::default());
    let addr = serve(app(&handle)).await;
    let mut events = sse(addr, "/idle").await;
    next(&mut events).await;

    let drains: Vec<_> = (0..8)
        .map(|_| {
            let handle = handle.clone();
            tokio::spawn(async move { handle.drain().await })
        })
        .collect();
    assert_shutdown_event(&next(&mut events).await);
    assert!(rest(&mut events).await.is_empty(), "one notice only");
    let mut reports = Vec::new();
    for drain in drains {
        reports.push(within(drain).await.unwrap());
    }
    reports.push(handle.drain().await);
    assert!(reports.windows(2).all(|w| w[0] == w[1]), "{reports:?}");
    assert_eq!(reports[0].notified, 1);
}

#[tokio::test]
async fn empty_body_is_counted_until_its_end() {
    let handle = DrainHandle::new(Config::default());
    let service = ServiceBuilder::new()
        .layer(handle.layer())
        .service(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        }));
    let res = service.oneshot(Request::new(())).await.unwrap();
    assert_eq!(handle.in_flight(), 1);
    assert!(http_body::Body::is_end_stream(res.body()));
    drop(res);
    assert_eq!(handle.in_flight(), 0);
}

#[test]
fn drain_outside_a_runtime_panics_without_starting_the_drain() {
    let handle = DrainHandle::new(Config::default());
    let outside = std::panic::catch_unwind(|| drop(handle.drain()));
    assert!(outside.is_err());
    assert!(!handle.is_draining(), "nothing started");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let report = runtime.block_on(async { within(handle.drain()).await });
    assert!(handle.is_draining());
    assert_eq!(report.in_flight, 0);
}

/// A body of `frames`, served with `content_type`, through the layer.
async fn through_layer(
    handle: &DrainHandle,
    content_type: &'static str,
    frames: Vec<Frame<Bytes>>,
) -> tower_graceful_sse::GracefulBody<
    StreamBody<stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>,
> {
    let mut frames = Some(frames.into_iter().map(Ok).collect::<Vec<_>>());
    let service = ServiceBuilder::new()
        .layer(handle.layer())
        .service(service_fn(move |_: Request<()>| {
            let body = StreamBody::new(stream::iter(frames.take().expect("called once")));
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .header(header::CONTENT_TYPE, content_type)
                        .body(body)
                        .unwrap(),
                )
            }
        }));
    service.oneshot(Request::new(())).await.unwrap().into_body()
}

#[tokio::test]
async fn trailers_pass_through_sse_and_plain_bodies() {
    let handle = DrainHandle::new(Config::default());
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    for content_type in ["text/event-stream", "text/plain"] {
        let body = through_layer(
            &handle,
            content_type,
            vec![
                Frame::data(Bytes::from_static(b"data: 1\n\n")),
                Frame::trailers(trailers.clone()),
            ],
        )
        .await;
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers), "{content_type}");
        assert_eq!(collected.to_bytes(), "data: 1\n\n");
        assert_eq!(handle.in_flight(), 0);
    }
}

#[tokio::test]
async fn size_hint_and_end_of_stream_pass_through() {
    use http_body::Body as _;
    let handle = DrainHandle::new(Config::default());
    let service = ServiceBuilder::new()
        .layer(handle.layer())
        .service(service_fn(|req: Request<&'static str>| async move {
            let body = http_body_util::Full::new(Bytes::from_static(b"hello"));
            Ok::<_, Infallible>(
                Response::builder()
                    .header(header::CONTENT_TYPE, *req.body())
                    .body(body)
                    .unwrap(),
            )
        }));

    // A plain body keeps its exact length and its end.
    let mut plain = service
        .clone()
        .oneshot(Request::new("text/plain"))
        .await
        .unwrap()
        .into_body();
    assert_eq!(plain.size_hint().exact(), Some(5));
    assert!(!plain.is_end_stream());
    assert_eq!(
        plain.frame().await.unwrap().unwrap().into_data().unwrap(),
        "hello"
    );
    assert!(plain.is_end_stream());
    assert!(plain.frame().await.is_none());
    assert_eq!(plain.size_hint().exact(), Some(0));

    // An event stream may grow by the notice: no exact length is promised.
    let mut sse = service
        .oneshot(Request::new("text/event-stream"))
        .await
        .unwrap()
        .into_body();
    assert_eq!(
        (sse.size_hint().lower(), sse.size_hint().upper()),
        (0, None)
    );
    assert!(!sse.is_end_stream());
    sse.frame().await.unwrap().unwrap();
    assert!(sse.is_end_stream());
    assert!(sse.frame().await.is_none());
    assert_eq!(handle.in_flight(), 0);
}

/// `Retry-After` with the default delay and jitter: whole seconds in 30..=45.
fn assert_default_retry_after<B>(res: &http::Response<B>) {
    let secs: u64 = res.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((30..=45).contains(&secs), "{secs}");
}
