//! Faults: failing and panicking bodies, clients that vanish before, during
//! or while their notice is written. Each ends only its own stream, releases
//! its count, and never makes the drain wait.

mod common;

use axum::{Router, routing::get};
use bytes::Bytes;
use common::*;
use futures_util::{StreamExt, stream};
use http::{Request, Response, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_graceful_sse::{Config, DrainHandle};

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
    let (addr, mut feeds) = fed_server(&handle, false);
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
    let (addr, mut feeds) = fed_server(&handle, false);
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
    let (addr, mut feeds) = fed_server(&handle, catch_panic);
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
    );
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
    common::swarm::need_fds(2 * CLIENTS as u64 + 512);
    let handle = DrainHandle::new(
        Config::default()
            .end_after_notice(false)
            .grace_period(Duration::from_secs(60)),
    );
    let addr = serve(
        Router::new()
            .route("/idle", get(idle))
            .layer(handle.layer()),
    );
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
async fn clients_that_leave_before_or_during_the_drain_are_counted_closed() {
    let handle = DrainHandle::new(
        Config::default()
            .end_after_notice(false)
            .grace_period(Duration::from_secs(60)),
    );
    let addr = serve(
        Router::new()
            .route("/idle", get(idle))
            .layer(handle.layer()),
    );
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

/// A body that sets its flag when dropped: what it holds (a subscription, a
/// socket) goes with it.
struct DropFlag<B> {
    body: B,
    dropped: Arc<AtomicBool>,
}

impl<B> DropFlag<B> {
    fn new(body: B) -> (Self, Arc<AtomicBool>) {
        let dropped = Arc::new(AtomicBool::new(false));
        let flagged = Self {
            body,
            dropped: dropped.clone(),
        };
        (flagged, dropped)
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for DropFlag<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }
}

impl<B> Drop for DropFlag<B> {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

/// The inner body is dropped the moment its response ends, at its own end
/// or at the deadline, while the server still holds the layer's body: what
/// it holds is freed with the count, not later.
#[tokio::test]
async fn inner_body_is_dropped_when_its_response_ends() {
    let handle = DrainHandle::new(Config::default().grace_period(Duration::from_millis(50)));

    // Its own end.
    let event = Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"data: 1\n\n")));
    let (inner, dropped) = DropFlag::new(StreamBody::new(stream::iter([event])));
    let mut body = through_layer(&handle, "text/event-stream", inner);
    assert!(body.frame().await.unwrap().is_ok());
    assert!(!dropped.load(Ordering::SeqCst), "still streaming");
    assert!(body.frame().await.is_none());
    assert!(dropped.load(Ordering::SeqCst), "dropped at its end");
    assert_eq!(handle.in_flight(), 0);

    // The deadline: a download that never ends, cut when the grace period
    // runs out.
    let never = stream::pending::<Result<Frame<Bytes>, Infallible>>();
    let (inner, dropped) = DropFlag::new(StreamBody::new(never));
    let mut body = through_layer(&handle, "text/plain", inner);
    let drain = handle.drain();
    assert!(within(body.frame()).await.unwrap().is_err(), "cut");
    assert!(dropped.load(Ordering::SeqCst), "dropped at the cut");
    assert!(body.frame().await.is_none());
    let report = within(drain).await;
    assert_eq!((report.in_flight, report.force_closed), (1, 1));
}

/// A body that panics is released by its drop, which the unwinding server
/// task (or hyper, behind `CatchPanic`) makes: not before, since the layer
/// cannot see the panic, and never later.
#[tokio::test]
async fn panicking_body_is_released_when_it_is_dropped() {
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
    let mut body = service.oneshot(Request::new(())).await.unwrap().into_body();
    assert_eq!((handle.in_flight(), handle.sse_streams()), (1, 1));
    // The panic, caught with the body kept alive.
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let waker = futures_util::task::noop_waker();
        let _ = http_body::Body::poll_frame(
            std::pin::Pin::new(&mut body),
            &mut std::task::Context::from_waker(&waker),
        );
    }));
    assert!(panicked.is_err());
    assert_eq!(
        (handle.in_flight(), handle.sse_streams()),
        (1, 1),
        "the body still exists: still counted"
    );
    drop(body);
    assert_eq!((handle.in_flight(), handle.sse_streams()), (0, 0));

    // And a server task that panics drops it while unwinding.
    let service = ServiceBuilder::new()
        .layer(handle.layer())
        .service(service_fn(|_: Request<()>| async {
            let frames = stream::iter([0]).map(|_| -> Result<Frame<Bytes>, Infallible> {
                panic!("bug in the handler's stream")
            });
            Ok::<_, Infallible>(Response::new(StreamBody::new(frames)))
        }));
    let body = service.oneshot(Request::new(())).await.unwrap().into_body();
    assert_eq!(handle.in_flight(), 1);
    let task = tokio::spawn(async move { body.collect().await });
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(handle.in_flight(), 0);
}
