//! `Duration::MAX` ("as long as it takes") in every duration setting, through
//! `drain()` on a real axum server with a real client: nothing panics, the
//! drain task runs to its report, the notice and the rejection say what they
//! were given (saturated), and the deadline is far, not an overflow.

mod common;

use axum::{Router, routing::get};
use common::*;
use std::time::Duration;
use tower_graceful_sse::{Config, DrainHandle};

const MAX: Duration = Duration::MAX;

/// The drain of one idle stream with `config`, on a server whose accepted
/// connections are wrapped for the deadline. `notified` says whether the
/// stream is to get its notice at once (no window); otherwise its client
/// leaves, which must end the drain all the same.
async fn drain_one_stream(
    config: Config,
    notified: bool,
) -> (String, tower_graceful_sse::DrainReport) {
    let handle = DrainHandle::new(config);
    let app = Router::new()
        .route("/idle", get(idle))
        .layer(handle.layer());
    let listener = listener(std::net::Ipv4Addr::LOCALHOST);
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(handle.listener(listener), app).into_future());

    let (res, conn) = request(addr, "/idle", "text/event-stream").await;
    let mut body = res.into_body();
    let hello = frame_text(&mut body).await;
    assert!(hello.starts_with("event: hello"), "{hello}");

    let drain = handle.drain();
    // Neither the deadline nor the `Debug` of the drain overflows.
    let deadline = drain.deadline().expect("started");
    assert!(deadline > tokio::time::Instant::now());
    let _ = format!("{drain:?} {handle:?}");

    // The drain task is alive and the layer rejects: the rejection carries
    // the (saturated) delay.
    let (rejected, _conn) = request(addr, "/idle", "*/*").await;
    assert_eq!(rejected.status(), 503);
    let retry_after: u64 = rejected.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);

    let notice = if notified {
        let notice = frame_text(&mut body).await;
        assert!(
            within(http_body_util::BodyExt::frame(&mut body))
                .await
                .is_none()
        );
        notice
    } else {
        drop(body);
        drop(conn);
        String::new()
    };
    let report = within(drain).await;
    assert_eq!(
        (report.in_flight, report.closed, report.force_closed),
        (1, 1, 0)
    );
    assert_eq!(report.sse_streams, 1);
    assert_eq!(report.notified, usize::from(notified));
    (notice, report)
}

async fn frame_text(body: &mut hyper::body::Incoming) -> String {
    let frame = within(http_body_util::BodyExt::frame(body))
        .await
        .expect("a frame")
        .expect("no error");
    String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap()
}

/// The `retry:` of a notice and its JSON `reconnect_delay`, which must agree.
fn delays(notice: &str) -> (u128, f64) {
    let retry = notice
        .lines()
        .find_map(|l| l.strip_prefix("retry: "))
        .expect("retry:")
        .parse()
        .unwrap();
    let data = notice
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(data).unwrap();
    (retry, json["reconnect_delay"].as_f64().unwrap())
}

#[tokio::test]
async fn grace_period_of_duration_max_waits_as_long_as_it_takes() {
    let (notice, report) = drain_one_stream(Config::default().grace_period(MAX), true).await;
    assert!(notice.contains("event: shutdown"), "{notice}");
    assert!(report.elapsed < Duration::from_secs(10));
}

#[tokio::test]
async fn reconnect_delay_of_duration_max_is_sent_saturated() {
    let config = Config::default()
        .reconnect_delay(MAX)
        .reconnect_jitter(Duration::ZERO);
    let (notice, _) = drain_one_stream(config, true).await;
    let (retry, seconds) = delays(&notice);
    assert_eq!(retry, MAX.as_millis());
    assert_eq!(seconds, MAX.as_secs_f64());
}

/// The jitter on top of a delay just under the maximum: the sum saturates.
#[tokio::test]
async fn reconnect_jitter_of_duration_max_is_sent_saturated() {
    let base = MAX - Duration::from_secs(1);
    let config = Config::default()
        .reconnect_delay(base)
        .reconnect_jitter(MAX)
        .seed(1);
    let (notice, _) = drain_one_stream(config, true).await;
    let (retry, seconds) = delays(&notice);
    assert!(
        retry >= base.as_millis() && retry <= MAX.as_millis(),
        "{retry}"
    );
    assert!(seconds >= base.as_secs_f64(), "{notice}");
}

#[tokio::test]
async fn linger_of_duration_max_puts_the_deadline_far_away() {
    let (notice, _) = drain_one_stream(Config::default().linger(MAX), true).await;
    assert!(notice.contains("event: shutdown"), "{notice}");
}

#[tokio::test]
async fn notice_window_of_duration_max_keeps_the_stream_until_its_client_leaves() {
    let config = Config::default().grace_period(MAX).notice_window(MAX);
    let (_, report) = drain_one_stream(config, false).await;
    assert_eq!(report.first_notice, None);
}
