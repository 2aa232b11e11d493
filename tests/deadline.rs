//! The grace period: what is still open when it runs out is ended there and
//! counted as force-closed — a stream that ignored its notice, a body that
//! never reaches an event boundary again, a body that is not an event stream.
//!
//! Every test runs under paused time: the grace period passes at once, and
//! the drain's own clock (`DrainReport::elapsed`) is exact. Where a real
//! socket is involved the clock also jumps to the next timer whenever the
//! runtime waits on the socket, so what the client saw is asserted by content
//! and order, not by the instant it arrived.

mod common;

use axum::{Router, body::Body as AxumBody, routing::get};
use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http::{Request, Response, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use std::{convert::Infallible, time::Duration};
use tokio::time::Instant;
use tokio_stream::wrappers::IntervalStream;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_graceful_sse::{Config, DrainHandle};

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
        (events, Instant::now())
    });

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let started = Instant::now();
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
}

/// A plain text body that never ends by itself: `chunk 0`, `chunk 1`, ...,
/// one every `TICK`.
const TICK: Duration = Duration::from_millis(20);

async fn plain_stream() -> Response<AxumBody> {
    let chunks = IntervalStream::new(tokio::time::interval(TICK))
        .enumerate()
        .map(|(i, _)| Ok::<_, Infallible>(Bytes::from(format!("chunk {i}\n"))));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain")
        .body(AxumBody::from_stream(chunks))
        .unwrap()
}

/// A body that is not an event stream gets no notice: it runs on, byte for
/// byte as its handler makes it, until the grace period cuts it, and the
/// client sees the cut: a truncated transfer, never a whole one.
#[tokio::test(start_paused = true)]
async fn non_sse_body_is_never_spliced_runs_until_the_grace_period_then_is_cut() {
    // Not a multiple of the tick: no chunk is due at the deadline itself.
    let grace = Duration::from_millis(310);
    let handle = DrainHandle::new(Config::default().grace_period(grace));
    let addr = serve(
        Router::new()
            .route("/plain", get(plain_stream))
            .layer(handle.layer()),
    );
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
    assert_eq!(report.elapsed, grace);
    assert_eq!(
        (report.notified, report.closed, report.force_closed),
        (0, 0, 1)
    );
    let (rest, end) = body_and_end(body).await;
    let rest = String::from_utf8(rest.to_vec()).unwrap();
    // What the client received after `chunk 0`: the handler's chunks in
    // order, untouched, one per tick for the whole grace period, and nothing
    // spliced in.
    let lines: Vec<&str> = rest.lines().collect();
    let at_least = (grace.as_millis() / TICK.as_millis()) as usize;
    assert!(
        lines.len() >= at_least,
        "{} chunks after the drain, expected one per tick of the {grace:?} grace period: {rest:?}",
        lines.len()
    );
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(*line, format!("chunk {}", i + 1), "{rest:?}");
    }
    assert!(rest.ends_with('\n'), "{rest:?}");
    // How the cut looks to the client: no chunked terminator, so hyper's
    // client reports the body cut short (see also tests/honest_end.rs).
    let err = end.expect_err("the cut body ended like a whole one");
    assert!(err.contains("error reading a body"), "{err}");
    until(|| handle.in_flight() == 0).await;
}

#[tokio::test(start_paused = true)]
async fn body_stuck_mid_event_is_ended_cleanly_at_the_grace_period_without_a_notice() {
    let grace = Duration::from_millis(300);
    let handle = DrainHandle::new(Config::default().grace_period(grace));
    let (addr, mut feeds) = fed_server(&handle, false);
    let (res, _conn) = request(addr, "/fed", "text/event-stream").await;
    let fed = feeds.recv().await.unwrap();
    feed(&fed, b"data: first\n\ndata: half of an ev").await;
    let drain = handle.drain();
    let started = Instant::now();
    // The body never sends more; the grace period ends it.
    let raw = body_bytes(res.into_body()).await;
    // Not before the deadline (under paused time with real sockets the clock
    // moves on while the client's read is pending, so not exactly at it).
    assert!(
        Instant::now() - started >= grace,
        "ended before the deadline"
    );
    assert_eq!(&raw[..], b"data: first\n\ndata: half of an ev");
    let events = parse(raw).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let report = within(drain).await;
    assert_eq!(report.elapsed, grace);
    assert_eq!(
        (report.notified, report.closed, report.force_closed),
        (0, 0, 1)
    );
    assert_eq!(handle.in_flight(), 0);
    drop(fed);
}

/// A grace period of zero ends every stream at once, after its notice where
/// it stands at an event boundary: here all 50 idle streams, over real
/// sockets. The report counts every notice the clients got, also those
/// written after the grace period's end, in every one of 10 drains (they
/// were missing from it at random, down to 24 of 50). On two worker
/// threads, so that the drain task and the bodies run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_period_zero_reports_every_notice_it_sends() {
    for round in 0..10 {
        let handle = DrainHandle::new(Config::default().grace_period(Duration::ZERO));
        let addr = serve(
            Router::new()
                .route("/idle", get(idle))
                .layer(handle.layer()),
        );
        let clients = futures_util::future::join_all((0..50).map(|_| async move {
            let mut events = sse(addr, "/idle").await;
            assert_eq!(next(&mut events).await.event, "hello");
            events
        }))
        .await;
        assert_eq!(handle.sse_streams(), 50);

        let report = within(handle.drain()).await;
        let mut notices = 0;
        for mut events in clients {
            let rest = rest(&mut events).await;
            notices += rest.iter().filter(|e| e.event == "shutdown").count();
        }
        assert_eq!(
            notices, 50,
            "round {round}: every idle stream got its notice"
        );
        // Closed in time or force-closed: which, races with the timer.
        assert_eq!(
            (
                report.sse_streams,
                report.notified,
                report.closed + report.force_closed
            ),
            (50, 50, 50),
            "round {round}: {report}"
        );
    }
}
