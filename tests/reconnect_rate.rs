//! A pause sized to the load: with `Config::reconnect_rate`, the notices'
//! delays spread over `open / rate` from the reconnect delay on, on a real
//! server with real clients, and every field of each notice agrees.

mod common;

use axum::{Router, routing::get};
use common::*;
use std::time::Duration;
use tower_graceful_sse::{Config, DrainHandle};

const STREAMS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_spread_over_open_streams_divided_by_the_rate() {
    let delay = Duration::from_secs(1);
    let handle = DrainHandle::new(
        Config::default()
            .reconnect_delay(delay)
            .reconnect_rate(100.0) // 200 streams at 100/s: a 2 s window
            .seed(5),
    );
    let addr = serve(
        Router::new()
            .route("/idle", get(idle))
            .layer(handle.layer()),
    );
    let mut clients = Vec::new();
    for _ in 0..STREAMS {
        let mut events = sse(addr, "/idle").await;
        assert_eq!(next(&mut events).await.event, "hello");
        clients.push(events);
    }
    let drain = handle.drain();
    let mut delays = Vec::new();
    for mut events in clients {
        let notice = next(&mut events).await;
        assert_eq!(notice.event, "shutdown");
        let retry = notice.retry.expect("retry:");
        let data: serde_json::Value = serde_json::from_str(&notice.data).unwrap();
        let seconds = &data["reconnect_delay"];
        // `retry:`, the JSON delay and the message name the same delay.
        assert_eq!(
            (seconds.as_f64().unwrap() * 1000.0).round() as u128,
            retry.as_millis()
        );
        assert_eq!(
            data["message"],
            format!("Server restarting, please reconnect in {seconds}s")
        );
        delays.push(retry);
    }
    let window = Duration::from_secs(2);
    let (min, max) = (*delays.iter().min().unwrap(), *delays.iter().max().unwrap());
    assert!(min >= delay && max <= delay + window, "{min:?}..{max:?}");
    // Uniform over the window: spread over most of it, at most about the rate
    // in any one of its seconds.
    assert!(max - min > window * 3 / 4, "{min:?}..{max:?}");
    let first_second = delays
        .iter()
        .filter(|d| **d < delay + Duration::from_secs(1))
        .count();
    assert!(
        (70..=130).contains(&first_second),
        "{first_second} in the first second"
    );

    let report = within(drain).await;
    assert_eq!(report.reconnect_window, window, "{report:?}");
    assert_eq!((report.sse_streams, report.notified), (STREAMS, STREAMS));

    // A request during the drain: its `Retry-After` comes from the same
    // window, rounded up.
    let (res, _conn) = request(addr, "/idle", "*/*").await;
    assert_eq!(res.status(), 503);
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3).contains(&retry_after), "{retry_after}");
}

#[tokio::test]
async fn without_a_rate_the_window_is_the_jitter() {
    let handle = DrainHandle::new(Config::default().reconnect_jitter(Duration::from_secs(7)));
    let report = handle.drain().await;
    assert_eq!(report.reconnect_window, Duration::from_secs(7));
}

#[test]
fn a_rate_that_is_not_above_zero_is_refused() {
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let err = DrainHandle::try_new(Config::default().reconnect_rate(bad)).unwrap_err();
        assert_eq!(err.name(), "Config::reconnect_rate", "{err}");
    }
}
