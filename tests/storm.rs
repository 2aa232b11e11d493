//! Reconnect-storm control, end to end over loopback: each stream's own
//! reconnect delay, the notice window and drain priority.
//!
//! The window tests run on paused time with the server in the same runtime:
//! every time below is virtual, taken by the client when its parser hands it
//! the event, so "when" is exact and the tests take no real time.

mod common;

use axum::{
    Router,
    response::{
        IntoResponse,
        sse::{Event, Sse},
    },
    routing::get,
};
use bytes::Bytes;
use common::*;
use futures_util::{StreamExt, stream};
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::{collections::BTreeSet, convert::Infallible, net::SocketAddr, time::Duration};
use tokio::time::Instant;
use tokio_stream::wrappers::IntervalStream;
use tower::util::MapRequestLayer;
use tower_graceful_sse::{Config, DrainHandle, DrainPriority, DrainReport};

/// `/idle`: one event, then nothing. `/busy`: `tick N` every 250 ms. A
/// `?high` query sets `DrainPriority::High` on the response; an
/// `x-priority: low` header sets `Low` on the request, in a middleware in
/// front of the layer.
fn app(handle: &DrainHandle) -> Router {
    let busy = || {
        let ticks = IntervalStream::new(tokio::time::interval(Duration::from_millis(250)))
            .enumerate()
            .map(|(n, _)| Ok::<_, Infallible>(Event::default().data(format!("tick {n}"))));
        Sse::new(ticks.boxed())
    };
    let idle = || {
        let hello = stream::once(async { Ok::<_, Infallible>(Event::default().data("hello")) });
        Sse::new(hello.chain(stream::pending()).boxed())
    };
    // Only `?high` sets a response priority: one set to `Normal` would win
    // over the request's.
    let with_priority = |q: Option<String>, sse: Sse<_>| {
        let mut res = sse.into_response();
        if q.as_deref() == Some("high") {
            res.extensions_mut().insert(DrainPriority::High);
        }
        res
    };
    Router::new()
        .route(
            "/idle",
            get(move |q: axum::extract::RawQuery| async move { with_priority(q.0, idle()) }),
        )
        .route(
            "/busy",
            get(move |q: axum::extract::RawQuery| async move { with_priority(q.0, busy()) }),
        )
        .route_layer(handle.layer())
        .layer(MapRequestLayer::new(
            |mut req: Request<axum::body::Body>| {
                if req.headers().get("x-priority").is_some_and(|v| v == "low") {
                    req.extensions_mut().insert(DrainPriority::Low);
                }
                req
            },
        ))
}

/// What one client saw: every event with the (virtual) time it arrived.
struct Seen {
    events: Vec<(Instant, eventsource_stream::Event)>,
}

impl Seen {
    /// The one shutdown event, and when it came.
    fn notice(&self) -> (Instant, &eventsource_stream::Event) {
        let notices: Vec<_> = self
            .events
            .iter()
            .filter(|(_, e)| e.event == "shutdown")
            .collect();
        assert_eq!(notices.len(), 1, "exactly one notice");
        let (at, event) = notices[0];
        assert_eq!(
            self.events.last().unwrap().1.event,
            "shutdown",
            "the stream ends right after its notice"
        );
        (*at, event)
    }

    /// The stream's own delay: `retry:`, `reconnect_delay` and the default
    /// message agree.
    fn delay(&self) -> Duration {
        let (_, event) = self.notice();
        let retry = event.retry.unwrap();
        let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
        let secs = &data["reconnect_delay"];
        assert_eq!(
            (secs.as_f64().unwrap() * 1000.0).round() as u128,
            retry.as_millis()
        );
        // The message names the same number, written the same way.
        assert_eq!(
            data["message"],
            format!("Server restarting, please reconnect in {secs}s")
        );
        retry
    }

    /// Ticks between `from` and the notice; checks none was lost or cut.
    fn ticks_after(&self, from: Instant) -> usize {
        let ticks: Vec<&str> = self
            .events
            .iter()
            .filter(|(_, e)| e.event == "message" && e.data.starts_with("tick"))
            .map(|(_, e)| e.data.as_str())
            .collect();
        for (n, tick) in ticks.iter().enumerate() {
            assert_eq!(*tick, format!("tick {n}"), "a tick lost or cut");
        }
        self.events
            .iter()
            .filter(|(at, e)| *at > from && e.event == "message")
            .count()
    }
}

/// Opens a stream (waiting for its first event, so that it is counted) and
/// returns a task that reads it to the end.
async fn open(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> tokio::task::JoinHandle<Seen> {
    let mut events = sse_with(addr, path, headers).await;
    let first = next(&mut events).await;
    let mut seen = vec![(Instant::now(), first)];
    tokio::spawn(async move {
        while let Some(event) = events.next_raw().await {
            seen.push((Instant::now(), event.expect("a clean stream")));
        }
        Seen { events: seen }
    })
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<Seen>>) -> Vec<Seen> {
    let mut out = Vec::new();
    for task in tasks {
        out.push(within(task).await.unwrap());
    }
    out
}

/// The delays of `n` idle streams drained with `config`, sorted, and the
/// `Retry-After` of `n` requests rejected after the drain.
async fn delays(config: Config, n: usize) -> (Vec<Duration>, Vec<u64>) {
    let (delays, retry_after, _) = drain_idle(config, n).await;
    (delays, retry_after)
}

/// [`delays`], with the drain's report.
async fn drain_idle(config: Config, n: usize) -> (Vec<Duration>, Vec<u64>, DrainReport) {
    let handle = DrainHandle::new(config);
    let addr = serve(app(&handle));
    let mut tasks = Vec::new();
    for _ in 0..n {
        tasks.push(open(addr, "/idle", &[]).await);
    }
    let report = within(handle.drain()).await;
    assert_eq!(report.notified, n);
    let mut delays: Vec<Duration> = collect(tasks).await.iter().map(Seen::delay).collect();
    delays.sort();
    // Rejections: Retry-After spread the same way, in whole seconds.
    let mut retry_after = Vec::new();
    for _ in 0..n {
        let (res, _conn) = request(addr, "/idle", "*/*").await;
        assert_eq!(res.status(), 503);
        retry_after.push(
            res.headers()[header::RETRY_AFTER]
                .to_str()
                .unwrap()
                .parse()
                .unwrap(),
        );
    }
    (delays, retry_after, report)
}

#[tokio::test]
async fn each_stream_gets_its_own_delay_within_bounds_the_same_for_the_same_seed() {
    let config = Config::default()
        .reconnect_delay(Duration::from_secs(30))
        .reconnect_jitter(Duration::from_secs(10))
        .seed(42);
    let (a, retry_after) = delays(config.clone(), 20).await;
    let (lo, hi) = (Duration::from_secs(30), Duration::from_secs(40));
    assert!(a.iter().all(|d| (lo..=hi).contains(d)), "{a:?}");
    let distinct: BTreeSet<_> = a.iter().collect();
    assert!(distinct.len() >= 18, "delays barely differ: {a:?}");
    assert!(
        retry_after.iter().all(|s| (30..=40).contains(s)),
        "{retry_after:?}"
    );
    let distinct: BTreeSet<_> = retry_after.iter().collect();
    assert!(
        distinct.len() >= 3,
        "Retry-After not spread: {retry_after:?}"
    );

    // Seeded: the same values again (the order among streams is the order
    // in which their notices were made, so compare them sorted).
    let (b, retry_after_b) = delays(config.clone(), 20).await;
    assert_eq!(a, b);
    let mut sorted = (retry_after.clone(), retry_after_b);
    sorted.0.sort();
    sorted.1.sort();
    assert_eq!(sorted.0, sorted.1);
    let (c, _) = delays(config.seed(43), 20).await;
    assert_ne!(a, c, "another seed, other delays");
}

#[tokio::test]
async fn without_jitter_every_stream_gets_the_configured_delay() {
    let config = Config::default().reconnect_jitter(Duration::ZERO);
    let (delays, retry_after) = delays(config, 5).await;
    assert!(delays.iter().all(|d| *d == Duration::from_secs(30)));
    assert!(retry_after.iter().all(|s| *s == 30));
}

#[tokio::test]
async fn the_defaults_spread_the_delays_over_fifteen_seconds() {
    let (delays, retry_after) = delays(Config::default(), 30).await;
    let (lo, hi) = (Duration::from_secs(30), Duration::from_secs(45));
    assert!(delays.iter().all(|d| (lo..=hi).contains(d)), "{delays:?}");
    assert!(
        delays[29] - delays[0] > Duration::from_secs(5),
        "{delays:?}"
    );
    assert!(retry_after.iter().all(|s| (30..=45).contains(s)));
}

#[tokio::test]
async fn a_reconnect_rate_sizes_the_spread_to_the_open_streams() {
    // 60 streams at 20 per second: every delay within 1 s ..= 1 s + 3 s, and
    // the report says the window; the rate replaces the jitter.
    let config = Config::default()
        .reconnect_delay(Duration::from_secs(1))
        .reconnect_jitter(Duration::from_secs(60))
        .reconnect_rate(20.0)
        .seed(11);
    let (delays, retry_after, report) = drain_idle(config, 60).await;
    assert_eq!(report.reconnect_window, Duration::from_secs(3));
    let (lo, hi) = (Duration::from_secs(1), Duration::from_secs(4));
    assert!(delays.iter().all(|d| (lo..=hi).contains(d)), "{delays:?}");
    assert!(
        delays[59] - delays[0] > Duration::from_secs(2),
        "{delays:?}"
    );
    // Even over the window: each second of it holds exactly the rate, as the
    // clients' `retry:` fields say.
    let mut per_second = [0; 4];
    for d in &delays {
        per_second[((*d - lo).as_secs() as usize).min(3)] += 1;
    }
    assert_eq!(per_second, [20, 20, 20, 0], "{delays:?}");
    // Rejections take the slots after the window's: the next 3 s.
    assert!(
        retry_after.iter().all(|s| (4..=7).contains(s)),
        "{retry_after:?}"
    );

    // Three streams at the same rate come back within 150 ms of the delay:
    // a light instance does not keep its clients waiting for a spread sized
    // for a heavy one.
    let config = Config::default()
        .reconnect_delay(Duration::from_secs(1))
        .reconnect_rate(20.0)
        .seed(11);
    let (delays, _, report) = drain_idle(config, 3).await;
    assert_eq!(report.reconnect_window, Duration::from_millis(150));
    assert!(
        delays.iter().all(|d| *d <= Duration::from_millis(1150)),
        "{delays:?}"
    );

    // Without a rate, the window is the jitter.
    let config = Config::default().reconnect_jitter(Duration::from_secs(7));
    let (_, _, report) = drain_idle(config, 2).await;
    assert_eq!(report.reconnect_window, Duration::from_secs(7));
}

/// With a rate, requests rejected during the drain take slots of their own,
/// after the streams': 300 EventSource requests rejected by an instance
/// with no stream open (the notice-only 200) come back at most `rate` + 1 in
/// any second, as their `retry:` fields say. They all got the bare delay:
/// 300 in one second.
#[tokio::test]
async fn a_reconnect_rate_holds_for_rejections_with_no_stream_open() {
    let config = Config::default()
        .reconnect_delay(Duration::from_secs(1))
        .reconnect_rate(100.0)
        .seed(5);
    let handle = DrainHandle::new(config);
    let addr = serve(app(&handle));
    let report = within(handle.drain()).await;
    assert_eq!(
        (report.sse_streams, report.reconnect_window),
        (0, Duration::ZERO)
    );
    let mut delays = Vec::new();
    for _ in 0..300 {
        let mut events = sse(addr, "/idle").await;
        let notice = next(&mut events).await;
        assert_eq!(notice.event, "shutdown");
        delays.push(notice.retry.expect("retry:"));
    }
    delays.sort();
    let busiest = (0..delays.len())
        .map(|i| delays[i..].partition_point(|&d| d < delays[i] + Duration::from_secs(1)))
        .max()
        .unwrap();
    assert!(busiest <= 101, "{busiest} in one second: {delays:?}");
    let (lo, hi) = (Duration::from_secs(1), Duration::from_secs(4));
    assert!(delays.iter().all(|d| (lo..=hi).contains(d)), "{delays:?}");
}

/// A reconnect delay finer than a millisecond is rounded up to whole
/// milliseconds, the unit of `retry:`, so that the frame's `retry:`, its
/// JSON `reconnect_delay` and its message agree (`retry:` said 2500 against
/// 2.5007 s).
#[tokio::test]
async fn a_delay_finer_than_a_millisecond_agrees_everywhere() {
    let config = Config::default()
        .reconnect_delay(Duration::from_micros(2_500_700))
        .reconnect_jitter(Duration::ZERO);
    // `Seen::delay` checks that `retry:`, the JSON and the message agree.
    let (delays, retry_after, _) = drain_idle(config, 1).await;
    assert_eq!(delays, [Duration::from_millis(2501)]);
    assert_eq!(retry_after, [3]);
}

/// Opens `per` idle and `per` busy streams of each priority, drains with a
/// window of `window`, and returns the report, the drain's start and what
/// each client saw, with its priority and whether it was busy.
async fn drain_with_window(
    window: Duration,
    per: usize,
) -> (DrainReport, Instant, Vec<(DrainPriority, bool, Seen)>) {
    let handle = DrainHandle::new(
        Config::default()
            .grace_period(Duration::from_secs(20))
            .notice_window(window)
            .seed(7),
    );
    let addr = serve(app(&handle));
    let mut tasks = Vec::new();
    for &priority in DrainPriority::ALL {
        for busy in [false, true] {
            let path = match (busy, priority) {
                (false, DrainPriority::High) => "/idle?high",
                (true, DrainPriority::High) => "/busy?high",
                (false, _) => "/idle",
                (true, _) => "/busy",
            };
            let low: &[(&str, &str)] = if priority == DrainPriority::Low {
                &[("x-priority", "low")]
            } else {
                &[]
            };
            for _ in 0..per {
                tasks.push((priority, busy, open(addr, path, low).await));
            }
        }
    }
    let started = Instant::now();
    let report = within(handle.drain()).await;
    let mut seen = Vec::new();
    for (priority, busy, task) in tasks {
        seen.push((priority, busy, within(task).await.unwrap()));
    }
    (report, started, seen)
}

#[tokio::test(start_paused = true)]
async fn a_window_spreads_the_notices_over_it_lowest_priority_first() {
    let window = Duration::from_secs(9);
    let (report, started, seen) = drain_with_window(window, 5).await;
    let at = |s: &Seen| s.notice().0 - started;

    // Spread over the whole window, measured by the clients.
    let times: Vec<Duration> = seen.iter().map(|(_, _, s)| at(s)).collect();
    let (first, last) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
    assert!(last < window, "a notice after the window: {last:?}");
    assert!(first < Duration::from_secs(1), "{first:?}");
    assert!(last > Duration::from_secs(8), "{last:?}");
    let distinct: BTreeSet<_> = times.iter().collect();
    assert!(distinct.len() >= 25, "notices bunched: {times:?}");

    // In priority order: each band after the one below it.
    let band = |p| {
        let t: Vec<Duration> = seen
            .iter()
            .filter(|(q, _, _)| *q == p)
            .map(|(_, _, s)| at(s))
            .collect();
        (*t.iter().min().unwrap(), *t.iter().max().unwrap())
    };
    let (low, normal, high) = (
        band(DrainPriority::Low),
        band(DrainPriority::Normal),
        band(DrainPriority::High),
    );
    assert!(
        low.1 <= normal.0 && normal.1 <= high.0,
        "{low:?} {normal:?} {high:?}"
    );
    // Each of the three equal shares gets a third of the window.
    assert!(low.1 <= Duration::from_secs(3) && high.0 >= Duration::from_secs(6));

    // Busy streams not yet due stream on untouched: those notified late got
    // ticks after the drain started, none lost or cut.
    for (_, busy, s) in &seen {
        let ticks = s.ticks_after(started);
        if *busy && at(s) > Duration::from_secs(1) {
            assert!(ticks >= 3, "a busy stream stopped before its notice");
        }
    }

    // Idle streams too got theirs at their moment, spread, not at once.
    let idle: BTreeSet<Duration> = seen
        .iter()
        .filter(|(_, busy, _)| !busy)
        .map(|(_, _, s)| at(s))
        .collect();
    assert!(idle.len() >= 12, "{idle:?}");

    // The report agrees with the clients.
    for &p in DrainPriority::ALL {
        assert_eq!(report.notified_at(p), 10);
    }
    assert_eq!(report.notified, 30);
    let close = |a: Duration, b: Duration| a.abs_diff(b) <= Duration::from_millis(2);
    assert!(
        close(report.first_notice.unwrap(), first),
        "{report:?} vs {first:?}"
    );
    assert!(
        close(report.last_notice.unwrap(), last),
        "{report:?} vs {last:?}"
    );
    assert_eq!(report.force_closed, 0);
}

#[tokio::test(start_paused = true)]
async fn without_a_window_every_stream_is_notified_at_once_whatever_its_priority() {
    let (report, started, seen) = drain_with_window(Duration::ZERO, 2).await;
    for (_, _, s) in &seen {
        assert!(s.notice().0 - started <= Duration::from_millis(1));
    }
    assert_eq!(report.notified_at(DrainPriority::High), 4);
    assert_eq!(report.first_notice, Some(Duration::ZERO));
}

/// On real time: with paused time the second request on the h2c connection
/// never gets its response (hyper's HTTP/2 client and the auto-advancing
/// clock, not looked into). So the bounds leave room for a busy machine, and
/// the upper one is the server's own.
#[tokio::test]
async fn h2c_streams_on_one_connection_are_spread_over_the_window() {
    let window = Duration::from_secs(4);
    let handle = DrainHandle::new(
        Config::default()
            .notice_window(window)
            .reconnect_jitter(Duration::from_secs(10))
            .seed(11),
    );
    let addr = serve_tower(app(&handle).into_service());
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let _conn = Conn::new(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let path = if i % 2 == 0 { "/idle" } else { "/busy" };
        let req = Request::get(format!("http://{addr}{path}"))
            .header(header::ACCEPT, "text/event-stream")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = within(sender.clone().send_request(req)).await.unwrap();
        assert_eq!(res.version(), http::Version::HTTP_2);
        let mut events = events(res.into_body());
        let first = next(&mut events).await;
        let mut seen = vec![(Instant::now(), first)];
        tasks.push(tokio::spawn(async move {
            while let Some(event) = events.next_raw().await {
                seen.push((Instant::now(), event.expect("a clean stream")));
            }
            Seen { events: seen }
        }));
    }
    let started = Instant::now();
    let report = within(handle.drain()).await;
    let seen = collect(tasks).await;
    let times: Vec<Duration> = seen.iter().map(|s| s.notice().0 - started).collect();
    let (first, last) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
    assert!(first < Duration::from_millis(1500), "{times:?}");
    assert!(last > Duration::from_secs(3), "{times:?}");
    assert!(report.last_notice.unwrap() < window, "{report:?}");
    let delays: BTreeSet<Duration> = seen.iter().map(Seen::delay).collect();
    assert!(delays.len() >= 18, "{delays:?}");
    assert_eq!((report.notified, report.force_closed), (20, 0));
}

#[test]
#[should_panic(
    expected = "invalid Config::notice_window=\"20\": must end before the grace period, Config::grace_period=\"20\""
)]
fn a_window_that_does_not_end_before_the_grace_period_is_refused() {
    let _ = DrainHandle::new(Config::default().notice_window(Duration::from_secs(20)));
}
