//! Watching a drain without starting it: `DrainHandle::drained`, and the
//! metrics a Prometheus scrape sees while the drain runs.

mod common;

use axum::{
    Router,
    response::sse::{Event, Sse},
    routing::get,
};
use common::{body_bytes, request, serve, sse, until, within};
use futures_util::{FutureExt, StreamExt, stream};
use metrics_exporter_prometheus::PrometheusBuilder;
use std::{convert::Infallible, time::Duration};
use tower_graceful_sse::{Config, DrainHandle};

#[tokio::test(start_paused = true)]
async fn drained_waits_without_starting_and_completes_at_once_when_over() {
    let handle = DrainHandle::new(Config::default().grace_period(Duration::from_secs(5)));
    let watcher = tokio::spawn(handle.drained());
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(!handle.is_draining(), "watching started a drain");
    assert!(!watcher.is_finished());

    let report = handle.drain().await;
    assert_eq!(within(watcher).await.unwrap(), report);
    // Over: a new watcher completes on its first poll, with the same report.
    assert_eq!(handle.drained().now_or_never(), Some(report));
    // Cancel safe: one dropped half-way changes nothing.
    drop(handle.drained());
    assert_eq!(handle.drained().await, report);
}

#[tokio::test(start_paused = true)]
async fn drained_resolves_with_the_force_close_at_the_deadline() {
    let handle = DrainHandle::new(Config::default().grace_period(Duration::from_secs(5)));
    let service = tower::ServiceBuilder::new()
        .layer(handle.layer())
        .service(tower::service_fn(|_: http::Request<()>| async {
            // A body that never ends: only the deadline ends it.
            let body = http_body_util::StreamBody::new(stream::pending::<
                Result<http_body::Frame<bytes::Bytes>, Infallible>,
            >());
            Ok::<_, Infallible>(http::Response::new(body))
        }));
    let res = tower::ServiceExt::oneshot(service, http::Request::new(()))
        .await
        .unwrap();
    let watcher = tokio::spawn(handle.drained());
    let start = tokio::time::Instant::now();
    let drain = handle.drain();
    assert_eq!(drain.deadline(), start + Duration::from_secs(6)); // + linger
    let mut body = res.into_body();
    let polled = tokio::spawn(async move {
        use http_body_util::BodyExt as _;
        body.frame().await.map(|r| r.is_err())
    });
    let report = within(watcher).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!((report.in_flight, report.force_closed), (1, 1));
    assert_eq!(drain.await, report);
    assert_eq!(polled.await.unwrap(), Some(true), "cut, not ended");
}

/// The three metrics, scraped from the exporter while the drain runs: the
/// duration grows at each progress tick, and the force-closed count shows
/// from the deadline; `/metrics` (outside the layer) answers throughout.
#[tokio::test]
async fn a_scrape_during_the_drain_sees_its_duration_and_force_closes() {
    let recorder = PrometheusBuilder::new().install_recorder().unwrap();
    let handle = DrainHandle::new(
        Config::default()
            .grace_period(Duration::from_millis(1800))
            .end_after_notice(false),
    );
    let events = || async {
        let hello = stream::once(async { Ok::<_, Infallible>(Event::default().data("hi")) });
        Sse::new(hello.chain(stream::pending()))
    };
    let app = Router::new()
        .route("/events", get(events))
        .layer(handle.layer())
        .route("/metrics", get(move || async move { recorder.render() }));
    let addr = serve(app);
    let mut stream = sse(addr, "/events").await;
    within(stream.next_raw()).await.unwrap().unwrap();

    let scrape = || async move {
        let (res, _conn) = request(addr, "/metrics", "*/*").await;
        assert_eq!(res.status(), 200);
        String::from_utf8(body_bytes(res.into_body()).await.to_vec()).unwrap()
    };
    let value = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    let before = scrape().await;
    assert_eq!(
        value(&before, "sse_active_connections"),
        Some(1.0),
        "{before}"
    );
    assert_eq!(
        value(&before, "sse_force_closed_connections_total"),
        Some(0.0)
    );

    let drain = handle.drain();
    // The first progress tick comes 0.5 s in: a scrape then sees a duration
    // while the drain is still running.
    let mut during = None;
    within(async {
        while during.is_none() {
            let text = scrape().await;
            let running = handle.report().is_none();
            if running && value(&text, "sse_shutdown_duration_seconds").is_some_and(|d| d > 0.0) {
                during = Some(text);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    let report = within(drain).await;
    assert_eq!(report.force_closed, 1);
    let after = scrape().await;
    assert_eq!(
        value(&after, "sse_force_closed_connections_total"),
        Some(1.0),
        "{after}"
    );
    let duration = value(&after, "sse_shutdown_duration_seconds").unwrap();
    assert!(
        (duration - report.elapsed.as_secs_f64()).abs() < 1e-6,
        "{after}"
    );
    until(|| handle.in_flight() == 0).await;
}
