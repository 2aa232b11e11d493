//! The drain handle: one drain, however many times and from wherever
//! `drain()` is called; one report, whose clock starts with the first call;
//! one handle for any number of layers; counts that follow every body.

mod common;

use axum::{Router, routing::get};
use bytes::Bytes;
use common::*;
use futures_util::stream;
use http::{Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, StreamBody};
use std::{convert::Infallible, time::Duration};
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_graceful_sse::{Config, DrainHandle};

fn idle_app(handle: &DrainHandle) -> Router {
    Router::new()
        .route("/idle", get(idle))
        .layer(handle.layer())
}

#[tokio::test]
async fn drain_is_idempotent_across_clones_and_tasks() {
    let handle = DrainHandle::new(Config::default());
    let addr = serve(idle_app(&handle));
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

/// An event stream that never sends anything by itself, through the layer.
async fn silent_stream(
    handle: &DrainHandle,
) -> tower_graceful_sse::GracefulBody<StreamBody<stream::Pending<Result<Frame<Bytes>, Infallible>>>>
{
    let service = ServiceBuilder::new()
        .layer(handle.layer())
        .service(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(
                Response::builder()
                    .header(header::CONTENT_TYPE, "text/event-stream")
                    .body(StreamBody::new(stream::pending()))
                    .unwrap(),
            )
        }));
    service.oneshot(Request::new(())).await.unwrap().into_body()
}

/// A second `drain()` 3 s after the first starts nothing: it resolves to the
/// first drain's report, at the first drain's deadline, and a stream that
/// ignores its notice is cut there. Long after a restarted clock would have
/// run out, the report is still the first one.
#[tokio::test(start_paused = true)]
async fn a_later_drain_resolves_to_the_first_report_and_never_restarts_the_clock() {
    let grace = Duration::from_secs(10);
    let handle = DrainHandle::new(
        Config::default()
            .grace_period(grace)
            .end_after_notice(false),
    );
    let body = silent_stream(&handle).await;
    let reader = tokio::spawn(async move {
        let received = body_and_end(body).await;
        (received, Instant::now())
    });

    let started = Instant::now();
    let first = handle.drain();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = handle.clone().drain();
    let (a, b) = (first.await, second.await);
    assert_eq!(
        Instant::now() - started,
        grace,
        "resolved at the first deadline"
    );
    assert_eq!(a.elapsed, grace);
    assert_eq!(b, a);
    assert_eq!((a.in_flight, a.notified, a.force_closed), (1, 1, 1));

    let ((bytes, end), ended) = reader.await.unwrap();
    assert_eq!(ended - started, grace, "cut at the first drain's deadline");
    assert!(end.is_ok(), "an event stream ends cleanly: {end:?}");
    let events = parse(bytes).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_shutdown_event(&events[0]);

    tokio::time::sleep(2 * grace).await;
    assert_eq!(handle.report(), Some(a));
    assert_eq!(handle.drain().await, a);
    assert_eq!((a.force_closed, a.elapsed), (1, Duration::from_secs(10)));
}

/// `drain()` from many tasks on many threads at once: one drain, one report,
/// the same for every caller, and every later call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_drains_from_clones_resolve_to_one_report() {
    for _ in 0..50 {
        let handle = DrainHandle::new(Config::default());
        let body = silent_stream(&handle).await;
        let reader = tokio::spawn(body.collect());
        let drains: Vec<_> = (0..16)
            .map(|_| {
                let handle = handle.clone();
                tokio::spawn(async move { handle.drain().await })
            })
            .collect();
        let notice = reader.await.unwrap().unwrap().to_bytes();
        assert_eq!(
            notice.iter().filter(|&&b| b == b'\n').count(),
            4,
            "one notice"
        );
        let mut reports = Vec::new();
        for drain in drains {
            reports.push(drain.await.unwrap());
        }
        reports.push(handle.drain().await);
        // Equal reports, `elapsed` included (see also
        // `a_later_drain_resolves_to_the_first_report_and_never_restarts_the_clock`).
        assert!(reports.iter().all(|r| *r == reports[0]), "{reports:?}");
        assert_eq!((reports[0].in_flight, reports[0].notified), (1, 1));
    }
}

#[tokio::test]
async fn drain_from_a_clone_after_the_original_handle_is_dropped() {
    let handle = DrainHandle::new(Config::default());
    let layer = handle.layer();
    let clone = handle.clone();
    drop(handle);
    let addr = serve(Router::new().route("/idle", get(idle)).layer(layer));
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
    );
    let two = serve(
        Router::new()
            .route("/other", get(idle))
            .layer(handle.layer()),
    );
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
