//! Faults, each on a real server on 127.0.0.1: failing and panicking bodies,
//! stuck bodies, vanishing clients, odd handle use, HTTP/2, and the tower-http
//! layers people put beside this one.

mod common;
#[path = "common/swarm.rs"]
mod swarm;

use axum::{
    Router,
    response::sse::{Event, Sse},
    routing::get,
};
use bytes::Bytes;
use common::*;
use futures_util::{
    StreamExt,
    stream::{self, BoxStream},
};
use http::{HeaderMap, Request, Response, StatusCode, Version, header};
use http_body::Frame;
use http_body_util::{BodyExt as _, Empty, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::{convert::Infallible, io::Read, net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_stream::wrappers::ReceiverStream;
use tower::{ServiceBuilder, service_fn};
use tower_graceful_sse::{Config, DrainHandle};
use tower_http::{
    catch_panic::CatchPanicLayer, compression::CompressionLayer, timeout::TimeoutLayer,
    trace::TraceLayer,
};

type SseStream = Sse<BoxStream<'static, Result<Event, Infallible>>>;
type Feed = mpsc::Sender<Result<Bytes, std::io::Error>>;

/// One `hello`, then nothing.
async fn idle() -> SseStream {
    let hello = Ok(Event::default().event("hello").data("hi"));
    Sse::new(
        stream::once(async { hello })
            .chain(stream::pending())
            .boxed(),
    )
}

fn sse_response<B>(body: B) -> Response<B> {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(body)
        .unwrap()
}

/// A server whose `/fed` streams are fed by the test: data, an error, or
/// `panic!`, which makes the body panic inside `poll_frame`.
async fn fault_server(
    handle: &DrainHandle,
    catch_panic: bool,
) -> (SocketAddr, mpsc::UnboundedReceiver<Feed>) {
    let (feeds_tx, feeds) = mpsc::unbounded_channel();
    let app = Router::new()
        .route("/idle", get(idle))
        .route(
            "/fed",
            get(move || {
                let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
                feeds_tx.send(tx).unwrap();
                async move {
                    sse_response(axum::body::Body::new(StreamBody::new(
                        ReceiverStream::new(rx).map(|r| {
                            r.map(|chunk| {
                                // Inside the layer's `poll_frame`.
                                assert!(chunk != "panic!", "bug in the handler's stream");
                                Frame::data(chunk)
                            })
                        }),
                    )))
                }
            }),
        )
        .layer(handle.layer());
    let app = if catch_panic {
        app.layer(CatchPanicLayer::new())
    } else {
        app
    };
    (serve(app).await, feeds)
}

/// Feeds one chunk and waits until the body has taken it.
async fn feed(feed: &Feed, chunk: &'static [u8]) {
    feed.send(Ok(Bytes::from_static(chunk))).await.unwrap();
    until(|| feed.capacity() == feed.max_capacity()).await;
}

/// Reads a raw stream to its end; `Err` if it ends in an error.
async fn drain_events(events: &mut Events) -> Result<Vec<eventsource_stream::Event>, String> {
    let mut out = Vec::new();
    while let Some(item) = within(events.next_raw()).await {
        out.push(item?);
    }
    Ok(out)
}

#[tokio::test]
async fn body_error_before_the_drain_cuts_only_its_own_stream() {
    let handle = DrainHandle::new(Config::default());
    let (addr, mut feeds) = fault_server(&handle, false).await;
    let mut healthy = sse(addr, "/idle").await;
    assert_eq!(next(&mut healthy).await.event, "hello");
    let mut failing = sse(addr, "/fed").await;
    let fed = feeds.recv().await.unwrap();
    feed(&fed, b"data: 1\n\ndata: half").await;
    assert_eq!(next(&mut failing).await.data, "1");

    fed.send(Err(std::io::Error::other("backend went away")))
        .await
        .unwrap();
    // The client sees the failure, not a clean end, and never the half event.
    let got = drain_events(&mut failing).await;
    assert!(got.is_err(), "{got:?}");
    until(|| handle.in_flight() == 1).await;

    let report = handle.drain();
    assert_shutdown_event(&next(&mut healthy).await);
    assert!(rest(&mut healthy).await.is_empty());
    let report = within(report).await;
    assert_eq!((report.in_flight, report.notified), (1, 1));
    assert_eq!((report.closed, report.force_closed), (1, 0));
}

#[tokio::test]
async fn body_error_during_the_drain_mid_event_gives_no_notice_and_releases_the_count() {
    let handle = DrainHandle::new(Config::default().grace_period(Duration::from_secs(60)));
    let (addr, mut feeds) = fault_server(&handle, false).await;
    let mut failing = sse(addr, "/fed").await;
    let fed = feeds.recv().await.unwrap();
    feed(&fed, b"data: 1\n\ndata: half").await;
    assert_eq!(next(&mut failing).await.data, "1");

    let drain = handle.drain();
    fed.send(Err(std::io::Error::other("backend went away")))
        .await
        .unwrap();
    let got = drain_events(&mut failing).await;
    assert!(
        got.is_err(),
        "the notice is never glued to a half event: {got:?}"
    );
    // The drain does not wait 60 s for a stream that failed.
    let report = within(drain).await;
    assert_eq!((report.in_flight, report.notified), (1, 0));
    assert_eq!((report.closed, report.force_closed), (1, 0));
    assert_eq!(handle.in_flight(), 0);
}

async fn panicking_body_releases_its_count_and_spares_other_streams(catch_panic: bool) {
    let handle = DrainHandle::new(Config::default());
    let (addr, mut feeds) = fault_server(&handle, catch_panic).await;
    let mut healthy = sse(addr, "/idle").await;
    assert_eq!(next(&mut healthy).await.event, "hello");

    let mut panicking = sse(addr, "/fed").await;
    let fed = feeds.recv().await.unwrap();
    feed(&fed, b"data: before the panic\n\n").await;
    assert_eq!(next(&mut panicking).await.data, "before the panic");
    assert_eq!(handle.sse_streams(), 2);
    fed.send(Ok(Bytes::from_static(b"panic!"))).await.unwrap();
    // The panic unwinds through hyper's connection task, which drops the
    // body and with it the count; the client sees a broken stream.
    let got = drain_events(&mut panicking).await;
    assert!(got.is_err(), "{got:?}");
    until(|| handle.in_flight() == 1 && handle.sse_streams() == 1).await;

    let report = handle.drain();
    assert_shutdown_event(&next(&mut healthy).await);
    assert!(rest(&mut healthy).await.is_empty());
    let report = within(report).await;
    assert_eq!(
        (report.in_flight, report.notified, report.force_closed),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn panicking_body_releases_its_count_and_spares_other_streams_without_catch_panic() {
    panicking_body_releases_its_count_and_spares_other_streams(false).await;
}

/// `CatchPanicLayer` catches panics of the handler, not of the body it
/// returned: the body's panic behaves exactly as without it.
#[tokio::test]
async fn panicking_body_releases_its_count_and_spares_other_streams_with_catch_panic() {
    panicking_body_releases_its_count_and_spares_other_streams(true).await;
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
    let addr = serve(app).await;
    let (res, _conn) = request(addr, "/boom", "*/*").await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    body_bytes(res.into_body()).await;
    until(|| handle.in_flight() == 0).await;
    let report = within(handle.drain()).await;
    assert_eq!(report.in_flight, 0);
}

#[tokio::test]
async fn body_stuck_mid_event_is_ended_cleanly_at_the_grace_period_without_a_notice() {
    let handle = DrainHandle::new(Config::default().grace_period(Duration::from_millis(300)));
    let (addr, mut feeds) = fault_server(&handle, false).await;
    let (res, _conn) = request(addr, "/fed", "text/event-stream").await;
    let fed = feeds.recv().await.unwrap();
    feed(&fed, b"data: first\n\ndata: half of an ev").await;
    let drain = handle.drain();
    // The body never sends more; the grace period ends it.
    let raw = body_bytes(res.into_body()).await;
    assert_eq!(&raw[..], b"data: first\n\ndata: half of an ev");
    let events = rest(&mut events(http_body_util::Full::new(raw))).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let report = within(drain).await;
    assert_eq!(
        (report.notified, report.closed, report.force_closed),
        (0, 0, 1)
    );
    assert_eq!(handle.in_flight(), 0);
    drop(fed);
}

/// Opens a raw HTTP/1.1 SSE request and reads until `hello` has arrived.
async fn raw_sse(addr: SocketAddr) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(b"GET /idle HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0; 1024];
    while !seen.windows(9).any(|w| w == b"data: hi\n") {
        let n = within(socket.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed early: {}", seen.escape_ascii());
        seen.extend_from_slice(&buf[..n]);
    }
    socket
}

/// A client that stops reading while a huge notice is being written to it,
/// then disconnects: its stream (which runs on after the notice) is released
/// by the disconnect, and another client gets its whole notice.
#[tokio::test]
async fn client_leaving_while_its_notice_is_written_is_released() {
    let message = "x".repeat(16 << 20); // more than the socket buffers hold
    let handle = DrainHandle::new(
        Config::default()
            .message(message.clone())
            .end_after_notice(false)
            .reconnect_jitter(Duration::ZERO)
            .grace_period(Duration::from_secs(60)),
    );
    let addr = serve(
        Router::new()
            .route("/idle", get(idle))
            .layer(handle.layer()),
    )
    .await;
    let stalled = raw_sse(addr).await;
    let (res, conn) = request(addr, "/idle", "text/event-stream").await;
    let mut body = res.into_body();
    let drain = handle.drain();

    // The reading client gets all of its notice, then leaves.
    let mut got = Vec::new();
    while !got.ends_with(b"}\n\n") {
        let frame = within(http_body_util::BodyExt::frame(&mut body)).await;
        got.extend_from_slice(&frame.unwrap().unwrap().into_data().unwrap());
    }
    assert!(got.starts_with(b"event: hello\ndata: hi\n\nretry: 30000\n"));
    assert!(got.len() > message.len());
    drop((body, conn));
    until(|| handle.in_flight() == 1).await;

    // The other is stuck in the middle of its notice until it goes away.
    assert!(handle.report().is_none());
    drop(stalled);
    let report = within(drain).await;
    assert_eq!((report.in_flight, report.notified), (2, 2));
    assert_eq!((report.closed, report.force_closed), (2, 0));
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test]
async fn two_thousand_clients_leaving_during_the_drain_are_all_released() {
    const CLIENTS: usize = 2000;
    // Both ends of every connection live in this process.
    swarm::need_fds(2 * CLIENTS as u64 + 512);
    let handle = DrainHandle::new(
        Config::default()
            .end_after_notice(false)
            .grace_period(Duration::from_secs(60)),
    );
    let addr = serve(
        Router::new()
            .route("/idle", get(idle))
            .layer(handle.layer()),
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS / 100 {
        clients.extend(futures_util::future::join_all((0..100).map(|_| raw_sse(addr))).await);
    }
    assert_eq!(handle.sse_streams(), CLIENTS);

    let drain = handle.drain();
    // Half leave at once, half after reading a little of the notice.
    let leavers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut socket)| {
            tokio::spawn(async move {
                if i % 2 == 1 {
                    let mut buf = [0; 16];
                    let _ = socket.read(&mut buf).await;
                }
            })
        })
        .collect();
    for leaver in leavers {
        leaver.await.unwrap();
    }
    // The streams run on after the notice; only the clients' leaving ends
    // them, long before the 60 s.
    let report = within(drain).await;
    assert_eq!(report.in_flight, CLIENTS);
    assert_eq!((report.closed, report.force_closed), (CLIENTS, 0));
    assert_eq!((handle.in_flight(), handle.sse_streams()), (0, 0));
}

#[tokio::test]
async fn drain_from_a_clone_after_the_original_handle_is_dropped() {
    let handle = DrainHandle::new(Config::default());
    let layer = handle.layer();
    let clone = handle.clone();
    drop(handle);
    let addr = serve(Router::new().route("/idle", get(idle)).layer(layer)).await;
    let mut events = sse(addr, "/idle").await;
    next(&mut events).await;
    let first = clone.drain();
    let second = clone.drain();
    assert_shutdown_event(&next(&mut events).await);
    assert!(rest(&mut events).await.is_empty(), "one notice");
    let (a, b) = (within(first).await, within(second).await);
    assert_eq!(a, b);
    assert_eq!(a.notified, 1);
    assert_eq!(within(clone.drain()).await, a, "and again, after the end");
}

#[tokio::test]
async fn one_handle_shared_by_two_routers_drains_both() {
    let handle = DrainHandle::new(Config::default());
    let one = serve(
        Router::new()
            .route("/idle", get(idle))
            .layer(handle.layer()),
    )
    .await;
    let two = serve(
        Router::new()
            .route("/other", get(idle))
            .layer(handle.layer()),
    )
    .await;
    let mut a = sse(one, "/idle").await;
    let mut b = sse(two, "/other").await;
    next(&mut a).await;
    next(&mut b).await;
    assert_eq!(handle.sse_streams(), 2);
    let drain = handle.drain();
    assert_shutdown_event(&next(&mut a).await);
    assert_shutdown_event(&next(&mut b).await);
    let report = within(drain).await;
    assert_eq!(
        (report.in_flight, report.notified, report.closed),
        (2, 2, 2)
    );
    let (res, _conn) = request(two, "/other", "*/*").await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
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
            Ok::<_, Infallible>(sse_response(StreamBody::new(frames)))
        }));

    // One connection, served until the drain's report, then shut down
    // gracefully (GOAWAY), as a server's shutdown path does.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_handle = handle.clone();
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let conn = builder.serve_connection(
            TokioIo::new(socket),
            hyper_util::service::TowerToHyperService::new(service),
        );
        tokio::pin!(conn);
        let drained = async {
            while server_handle.report().is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::select! {
            res = conn.as_mut() => return res.map_err(|e| e.to_string()),
            () = drained => {}
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
    within(server)
        .await
        .unwrap()
        .expect("the server closes the connection cleanly");
    within(client_conn)
        .await
        .unwrap()
        .expect("the client sees a clean close");
}

/// GETs `path` asking for gzip.
async fn get_gzip(addr: SocketAddr, path: &str) -> (Response<Incoming>, Conn) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = Conn::new(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let req = Request::get(path)
        .header(header::HOST, addr.to_string())
        .header(header::ACCEPT, "text/event-stream")
        .header(header::ACCEPT_ENCODING, "gzip")
        .body(Empty::<Bytes>::new())
        .unwrap();
    (within(sender.send_request(req)).await.unwrap(), conn)
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
        let addr = serve(app).await;
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
    let addr = serve(app).await;
    let (res, _conn) = get_gzip(addr, "/idle").await;
    assert_eq!(res.headers()[header::CONTENT_ENCODING], "gzip");
    until(|| handle.sse_streams() == 1).await;
    let drain = handle.drain();
    let raw = body_bytes(res.into_body()).await;
    let plain = gunzip(&raw).expect("a whole gzip stream");
    let events = rest(&mut events(http_body_util::Full::new(Bytes::from(plain)))).await;
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
#[tokio::test]
async fn gzip_inside_the_layer_is_never_spliced_and_is_cut_at_the_grace_period() {
    let handle = DrainHandle::new(Config::default().grace_period(Duration::from_millis(200)));
    let app = Router::new()
        .route("/idle", get(idle))
        .layer(CompressionLayer::new().compress_when(always))
        .layer(handle.layer());
    let addr = serve(app).await;
    let (res, _conn) = get_gzip(addr, "/idle").await;
    assert_eq!(res.headers()[header::CONTENT_ENCODING], "gzip");
    until(|| handle.in_flight() == 1).await;
    assert_eq!(handle.sse_streams(), 0, "not a stream the notice can enter");
    let drain = handle.drain();
    let cut = within(res.into_body().collect()).await;
    assert!(cut.is_err(), "a cut stream must not end like a whole one");
    let report = within(drain).await;
    assert_eq!((report.notified, report.force_closed), (0, 1));
}

/// `TimeoutLayer` inside and `TraceLayer` outside: streams get their notice,
/// a timed-out request is a counted 408, and nothing stays counted.
#[tokio::test]
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
    let addr = serve(app).await;
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
