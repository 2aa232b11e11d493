//! The metrics a Prometheus scrape sees while the drain runs. Alone in its
//! test binary: the recorder is global, and another test's drain would move
//! the counters it asserts on.

mod common;

use axum::{
    Router,
    response::sse::{Event, Sse},
    routing::get,
};
use common::{body_bytes, request, serve, sse, until, within};
use futures_util::{StreamExt, stream};
use metrics_exporter_prometheus::PrometheusBuilder;
use std::{convert::Infallible, time::Duration};
use tower_graceful_sse::{Config, DrainHandle};

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
