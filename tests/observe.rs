//! Watching a drain without starting it: `DrainHandle::drained`.

mod common;

use common::within;
use futures_util::{FutureExt, stream};
use std::{convert::Infallible, time::Duration};
use tower_graceful_sse::{Config, DrainHandle};

#[tokio::test(start_paused = true)]
async fn drained_waits_without_starting_and_completes_at_once_when_over() {
    let handle = DrainHandle::new(Config::default().grace_period(Duration::from_secs(5)));
    assert_eq!(handle.drained().deadline(), None, "no drain yet");
    let watcher = tokio::spawn(handle.drained());
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(!handle.is_draining(), "watching started a drain");
    assert!(!watcher.is_finished());

    let report = handle.drain().await;
    assert_eq!(within(watcher).await.unwrap(), report);
    // Over: a new watcher completes on its first poll, with the same report.
    assert_eq!(handle.drained().now_or_never(), Some(report));
    assert!(handle.drained().deadline().is_some());
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
    let watcher_deadline = handle.drained().deadline();
    let watcher = tokio::spawn(handle.drained());
    let start = tokio::time::Instant::now();
    let drain = handle.drain();
    assert_eq!(watcher_deadline, None, "no drain yet");
    assert_eq!(drain.deadline(), Some(start + Duration::from_secs(6))); // + linger
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
