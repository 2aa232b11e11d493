//! The layer among the servers and layers people use with it: axum's
//! graceful shutdown (the hang of hyper issue 2787, and its end), a hyper-util
//! HTTP/2 connection shut down with GOAWAY, and tower-http's compression,
//! timeout, trace and catch-panic layers beside it.

mod common;

use axum::{Router, routing::get};
use bytes::Bytes;
use common::*;
use futures_util::{StreamExt, stream};
use http::{HeaderMap, Request, StatusCode, Version, header};
use http_body::Frame;
use http_body_util::{Empty, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::{convert::Infallible, io::Read, net::SocketAddr, time::Duration};
use tokio::{net::TcpStream, sync::oneshot, time::Instant};
use tower::{ServiceBuilder, service_fn};
use tower_graceful_sse::{Config, DrainHandle};
use tower_http::{
    catch_panic::CatchPanicLayer, compression::CompressionLayer, timeout::TimeoutLayer,
    trace::TraceLayer,
};

fn app(handle: &DrainHandle) -> Router {
    Router::new()
        .route("/idle", get(idle))
        .route("/busy", get(busy))
        .layer(handle.layer())
}

/// Opens two idle and two busy streams and reads their `hello`.
async fn open_streams(addr: SocketAddr) -> Vec<Events> {
    let mut clients = Vec::new();
    for path in ["/idle", "/busy", "/idle", "/busy"] {
        let mut events = sse(addr, path).await;
        assert_eq!(next(&mut events).await.event, "hello");
        clients.push(events);
    }
    clients
}

/// The documented use: the drain runs inside axum's shutdown signal. The
/// server exits as soon as the drain has ended the streams; the clients hold
/// them open and read nothing until it has.
#[tokio::test(start_paused = true)]
async fn axum_graceful_shutdown_exits_once_the_drain_has_ended_the_streams() {
    let grace = Duration::from_secs(60);
    let handle = DrainHandle::new(Config::default().grace_period(grace));
    let (tx, rx) = oneshot::channel::<()>();
    let drain_handle = handle.clone();
    let (addr, server) = serve_graceful(app(&handle), async move {
        let _ = rx.await;
        drain_handle.drain().await;
    });
    let clients = open_streams(addr).await;
    let started = Instant::now();
    tx.send(()).unwrap();
    within(server).await.unwrap().unwrap();
    assert!(
        Instant::now() - started < grace,
        "ended by the notice, not the deadline"
    );
    let report = handle.report().unwrap();
    assert_eq!(
        (report.notified, report.closed, report.force_closed),
        (4, 4, 0)
    );
    for mut events in clients {
        assert_ticks_then_notice(&rest(&mut events).await);
    }
}

/// The hang this crate removes (hyper issue 2787) and its end, on one server
/// with the layer: once the shutdown is signalled, axum's graceful shutdown
/// waits on the open streams (here 5 s, and for ever); then the drain
/// notifies and ends them, and the server exits at once, well before the
/// grace period, although no client ever closed its stream.
#[tokio::test(start_paused = true)]
async fn axum_graceful_shutdown_hangs_on_open_streams_until_the_drain_ends_them() {
    let grace = Duration::from_secs(60);
    let handle = DrainHandle::new(Config::default().grace_period(grace));
    let (tx, rx) = oneshot::channel::<()>();
    let (addr, mut server) = serve_graceful(app(&handle), async move {
        let _ = rx.await;
    });
    let clients = open_streams(addr).await;
    tx.send(()).unwrap();

    // Without a drain: the server waits on its streams.
    let waited = tokio::time::timeout(Duration::from_secs(5), &mut server).await;
    assert!(waited.is_err(), "the server exited with streams open");
    assert_eq!(handle.sse_streams(), 4);

    // With the drain: it exits once the layer has ended every stream.
    let started = Instant::now();
    let drain = handle.drain();
    within(&mut server).await.unwrap().unwrap();
    assert!(
        Instant::now() - started < grace,
        "ended by the notice, not the deadline"
    );
    let report = within(drain).await;
    assert_eq!(
        (report.notified, report.closed, report.force_closed),
        (4, 4, 0)
    );
    for mut events in clients {
        assert_ticks_then_notice(&rest(&mut events).await);
    }
}

#[tokio::test]
async fn h2c_hundred_streams_on_one_connection_are_notified_then_the_connection_closes_gracefully()
{
    const STREAMS: usize = 100;
    let handle = DrainHandle::new(Config::default());
    let service = ServiceBuilder::new()
        .layer(handle.layer())
        .service(service_fn(|_: Request<Incoming>| async {
            let frames = stream::once(async {
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(
                    b"event: hello\ndata: hi\n\n",
                )))
            })
            .chain(stream::pending());
            Ok::<_, Infallible>(
                http::Response::builder()
                    .header(header::CONTENT_TYPE, "text/event-stream")
                    .body(StreamBody::new(frames))
                    .unwrap(),
            )
        }));

    // One connection, served until the drain's report, then shut down
    // gracefully (GOAWAY), as a server's shutdown path does.
    let listener = listener(std::net::Ipv4Addr::LOCALHOST);
    let addr = listener.local_addr().unwrap();
    let (drained_tx, drained) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let conn = builder.serve_connection(
            TokioIo::new(socket),
            hyper_util::service::TowerToHyperService::new(service),
        );
        tokio::pin!(conn);
        tokio::select! {
            res = conn.as_mut() => return res.map_err(|e| e.to_string()),
            _ = drained => {}
        }
        conn.as_mut().graceful_shutdown();
        conn.await.map_err(|e| e.to_string())
    });

    let socket = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(socket))
            .await
            .unwrap();
    let client_conn = tokio::spawn(conn);
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let mut sender = sender.clone();
        let req = Request::get(format!("http://{addr}/"))
            .header(header::ACCEPT, "text/event-stream")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = within(sender.send_request(req)).await.unwrap();
        assert_eq!(res.version(), Version::HTTP_2);
        let mut events = events(res.into_body());
        assert_eq!(next(&mut events).await.event, "hello");
        streams.push(events);
    }
    drop(sender);
    assert_eq!(handle.sse_streams(), STREAMS);

    let drain = handle.drain();
    for mut events in streams {
        assert_shutdown_event(&next(&mut events).await);
        assert!(rest(&mut events).await.is_empty());
    }
    let report = within(drain).await;
    assert_eq!(
        (report.notified, report.closed, report.force_closed),
        (STREAMS, STREAMS, 0)
    );
    drained_tx.send(()).unwrap();
    within(server)
        .await
        .unwrap()
        .expect("the server closes the connection cleanly");
    within(client_conn)
        .await
        .unwrap()
        .expect("the client sees a clean close");
}

/// GETs `path` as an EventSource that accepts gzip.
async fn get_gzip(addr: SocketAddr, path: &str) -> (http::Response<Incoming>, Conn) {
    request_with(
        addr,
        path,
        &[("accept", "text/event-stream"), ("accept-encoding", "gzip")],
    )
    .await
}

fn gunzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out)?;
    Ok(out)
}

fn always(_: StatusCode, _: Version, _: &HeaderMap, _: &http::Extensions) -> bool {
    true
}

/// tower-http's default predicate never compresses `text/event-stream`: in
/// either order the stream stays plain and gets its notice.
#[tokio::test]
async fn default_compression_leaves_event_streams_plain_in_either_order() {
    for compression_outside in [true, false] {
        let handle = DrainHandle::new(Config::default());
        let routes = Router::new().route("/idle", get(idle));
        let app = if compression_outside {
            routes.layer(handle.layer()).layer(CompressionLayer::new())
        } else {
            routes.layer(CompressionLayer::new()).layer(handle.layer())
        };
        let addr = serve(app);
        let (res, _conn) = get_gzip(addr, "/idle").await;
        assert!(res.headers().get(header::CONTENT_ENCODING).is_none());
        let mut events = events(res.into_body());
        assert_eq!(next(&mut events).await.event, "hello");
        let drain = handle.drain();
        assert_shutdown_event(&next(&mut events).await);
        assert!(rest(&mut events).await.is_empty());
        assert_eq!(within(drain).await.notified, 1);
    }
}

/// Compression outside this layer (the documented order) and told to
/// compress event streams: the notice is spliced into the plain stream and
/// compressed with it; the gzip stream is whole.
#[tokio::test]
async fn gzip_outside_the_layer_carries_the_notice_in_a_whole_gzip_stream() {
    let handle = DrainHandle::new(Config::default());
    let app = Router::new()
        .route("/idle", get(idle))
        .layer(handle.layer())
        .layer(CompressionLayer::new().compress_when(always));
    let addr = serve(app);
    let (res, _conn) = get_gzip(addr, "/idle").await;
    assert_eq!(res.headers()[header::CONTENT_ENCODING], "gzip");
    until(|| handle.sse_streams() == 1).await;
    let drain = handle.drain();
    let raw = body_bytes(res.into_body()).await;
    let plain = gunzip(&raw).expect("a whole gzip stream");
    let events = parse(Bytes::from(plain)).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].event, "hello");
    assert_shutdown_event(&events[1]);
    assert_eq!(within(drain).await.notified, 1);
}

/// Compression inside this layer: the layer sees `Content-Encoding: gzip` and
/// never splices into it (that would corrupt it). The stream is counted and,
/// if still open at the end of the grace period, cut there: the transfer is
/// aborted before the gzip trailer, which the client reports as an incomplete
/// body. Put compression outside the layer.
#[tokio::test(start_paused = true)]
async fn gzip_inside_the_layer_is_never_spliced_and_is_cut_at_the_grace_period() {
    let handle = DrainHandle::new(Config::default().grace_period(Duration::from_millis(200)));
    let app = Router::new()
        .route("/idle", get(idle))
        .layer(CompressionLayer::new().compress_when(always))
        .layer(handle.layer());
    let addr = serve(app);
    let (res, _conn) = get_gzip(addr, "/idle").await;
    assert_eq!(res.headers()[header::CONTENT_ENCODING], "gzip");
    until(|| handle.in_flight() == 1).await;
    assert_eq!(handle.sse_streams(), 0, "not a stream the notice can enter");
    let drain = handle.drain();
    let (_, end) = body_and_end(res.into_body()).await;
    assert!(end.is_err(), "a cut stream must not end like a whole one");
    let report = within(drain).await;
    assert_eq!((report.notified, report.force_closed), (0, 1));
}

/// `TimeoutLayer` inside and `TraceLayer` outside: streams get their notice,
/// a timed-out request is a counted 408, and nothing stays counted.
#[tokio::test(start_paused = true)]
async fn timeout_and_trace_layers_beside_it() {
    let handle = DrainHandle::new(Config::default());
    let app = Router::new()
        .route("/idle", get(idle))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "late"
            }),
        )
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(100),
        ))
        .layer(handle.layer())
        .layer(TraceLayer::new_for_http());
    let addr = serve(app);
    let (res, _conn) = request(addr, "/slow", "*/*").await;
    assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
    body_bytes(res.into_body()).await;
    let mut events = sse(addr, "/idle").await;
    assert_eq!(next(&mut events).await.event, "hello");
    until(|| handle.in_flight() == 1).await;
    let drain = handle.drain();
    assert_shutdown_event(&next(&mut events).await);
    assert!(rest(&mut events).await.is_empty());
    let report = within(drain).await;
    assert_eq!(
        (report.in_flight, report.notified, report.force_closed),
        (1, 1, 0)
    );
}

/// A handler that panics under `CatchPanicLayer` (inside this layer) becomes a
/// 500 that is counted and released like any response.
#[tokio::test]
async fn panicking_handler_inside_catch_panic_is_a_counted_500() {
    let handle = DrainHandle::new(Config::default());
    let app = Router::new()
        .route(
            "/boom",
            get(|| async {
                panic!("bug in the handler");
                #[allow(unreachable_code)]
                ""
            }),
        )
        .layer(CatchPanicLayer::new())
        .layer(handle.layer());
    let addr = serve(app);
    let (res, _conn) = request(addr, "/boom", "*/*").await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    body_bytes(res.into_body()).await;
    until(|| handle.in_flight() == 0).await;
    let report = within(handle.drain()).await;
    assert_eq!(report.in_flight, 0);
}
