//! The live feed end to end: the example server as a child process on
//! 127.0.0.1, real SSE clients, and a real `redis-server` started by each
//! test that needs one (Debian's; the test fails, saying to install it, when
//! it is missing).

#[path = "../../../tests/common/mod.rs"]
mod common;
mod example;

use analytics::live::{EventId, Position};
use common::*;
use example::{Redis, Server, free_port, post};
use serde_json::Value;
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

const LIVE: &str = "/api/v1/analytics/live";
const COLLECT: &str = "/api/v1/analytics/collect";
const SOURCES: [&str; 4] = ["google", "direct", "newsletter", "bing"];

#[derive(Clone, Copy, Debug)]
enum Backend {
    InProcess,
    Redis,
}

/// The example with the in-process log, or with a Redis of its own.
async fn start(backend: Backend, env: &[(&str, &str)]) -> (Server, Option<Redis>) {
    let redis = matches!(backend, Backend::Redis).then(Redis::start);
    let mut all: Vec<(&str, &str)> = env.to_vec();
    let url = redis.as_ref().map(Redis::url);
    if let Some(url) = &url {
        all.push(("REDIS_URL", url));
    }
    (Server::start(free_port(), &all).await, redis)
}

/// Posts one hit and returns its id; fails unless it was stored.
async fn hit(addr: SocketAddr, source: &str, path: &str) -> String {
    let (status, body) = post(addr, COLLECT, &hit_body(source, path)).await;
    assert_eq!(status, 200, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

fn hit_body(source: &str, path: &str) -> String {
    serde_json::json!({ "source": source, "path": path }).to_string()
}

fn id(text: &str) -> EventId {
    text.parse()
        .unwrap_or_else(|()| panic!("not an id: {text:?}"))
}

fn position(text: &str) -> Position {
    id(text).position
}

/// Reads `hit` events until the one whose path is `end`; any other event
/// fails the test. The ids, in the order received.
async fn hits_until(events: &mut Events, end: &str) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let event = next(events).await;
        assert_eq!(event.event, "hit", "{event:?} after {} hits", ids.len());
        let data: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(
            data["id"],
            event.id.as_str(),
            "the data's id is the event's"
        );
        ids.push(event.id);
        if data["path"] == end {
            return ids;
        }
    }
}

/// Fails unless `got` is `expected`, saying how it differs in a line:
/// the hits missing, those received twice, and where the order breaks.
fn assert_exactly(got: &[String], expected: &[String], context: &str) {
    if got == expected {
        return;
    }
    let missing: Vec<&String> = expected.iter().filter(|id| !got.contains(id)).collect();
    let mut seen = std::collections::HashSet::new();
    let twice: Vec<&String> = got.iter().filter(|id| !seen.insert(*id)).collect();
    let disorder = got
        .windows(2)
        .position(|w| position(&w[0]) >= position(&w[1]));
    panic!(
        "{context}: {} received, {} expected; missing {} (first {:?}), received twice {} \
         (first {:?}), out of order at {disorder:?}",
        got.len(),
        expected.len(),
        missing.len(),
        missing.first(),
        twice.len(),
        twice.first()
    );
}

/// `ids` sorted by position: the log's order.
fn in_log_order(mut ids: Vec<String>) -> Vec<String> {
    ids.sort_by_key(|id| position(id));
    ids
}

/// A small deterministic generator, for positions chosen "at random".
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// 100 clients resume from random positions of a history of 200 hits while
/// 4 producers append (until every client is connected, 100 each at least):
/// each client gets every hit after its id exactly once, in log order.
async fn seam(backend: Backend, env: &[(&str, &str)]) {
    let (server, _redis) = start(backend, env).await;
    let addr = server.addr;
    let mut before = Vec::new();
    for i in 0..200 {
        before.push(hit(addr, SOURCES[i % 4], &format!("/before/{i}")).await);
    }
    let connected = Arc::new(AtomicUsize::new(0));
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let connected = connected.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                while ids.len() < 100 || connected.load(Ordering::SeqCst) < 100 {
                    let path = format!("/during/{p}/{}", ids.len());
                    ids.push(hit(addr, SOURCES[p], &path).await);
                }
                ids
            })
        })
        .collect();
    let mut rng = Lcg(13);
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let from = before[rng.below(before.len())].clone();
            let connected = connected.clone();
            tokio::spawn(async move {
                let mut events = sse_with(addr, LIVE, &[("last-event-id", &from)]).await;
                connected.fetch_add(1, Ordering::SeqCst);
                let got = hits_until(&mut events, "/end").await;
                (from, got)
            })
        })
        .collect();
    let mut all = before;
    for producer in producers {
        all.extend(producer.await.unwrap());
    }
    let during = all.len() - 200;
    all.push(hit(addr, "direct", "/end").await);
    let all = in_log_order(all);
    for client in clients {
        let (from, got) = client.await.unwrap();
        let expected: Vec<String> = all
            .iter()
            .filter(|id| position(id) > position(&from))
            .cloned()
            .collect();
        assert_exactly(
            &got,
            &expected,
            &format!("{backend:?}: every hit after {from} once, in order"),
        );
    }
    eprintln!("{backend:?}: 100 clients resumed while {during} hits were appended");
}

#[tokio::test]
async fn resumes_have_no_gap_and_no_duplicate_at_the_seam_in_process() {
    seam(Backend::InProcess, &[]).await;
}

#[tokio::test]
async fn resumes_have_no_gap_and_no_duplicate_at_the_seam_on_redis() {
    seam(Backend::Redis, &[]).await;
}

/// A broadcast of 2: every subscriber lags as soon as the reader sends more
/// than 2 hits at once, and reads from the log instead; each still gets
/// every hit once, in order.
#[tokio::test]
async fn a_subscriber_that_lags_the_broadcast_still_sees_every_hit_once() {
    for backend in [Backend::InProcess, Backend::Redis] {
        seam(backend, &[("LIVE_BROADCAST_CAPACITY", "2")]).await;
    }
    // And the lag did happen (the counter is the server's own).
    let (server, _redis) = start(Backend::InProcess, &[("LIVE_BROADCAST_CAPACITY", "1")]).await;
    let addr = server.addr;
    let first = hit(addr, "google", "/0").await;
    let mut events = sse_with(addr, LIVE, &[("last-event-id", &first)]).await;
    let producers: Vec<_> = (0..4)
        .map(|p| {
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..50 {
                    ids.push(hit(addr, SOURCES[p], &format!("/{p}/{i}")).await);
                }
                ids
            })
        })
        .collect();
    let mut all = Vec::new();
    for producer in producers {
        all.extend(producer.await.unwrap());
    }
    all.push(hit(addr, "direct", "/end").await);
    let got = hits_until(&mut events, "/end").await;
    assert_exactly(
        &got,
        &in_log_order(all),
        "a subscriber with a broadcast of 1",
    );
    let (_, metrics) = get_text(addr, "/metrics").await;
    let lagged = metrics
        .lines()
        .find_map(|l| l.strip_prefix("live_subscriber_lagged_total"))
        .and_then(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(lagged > 0, "no subscriber lagged:\n{metrics}");
}

async fn get_text(addr: SocketAddr, path: &str) -> (u16, String) {
    let (res, _conn) = request(addr, path, "*/*").await;
    let status = res.status().as_u16();
    let body = body_bytes(res.into_body()).await;
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// The next event, which must be a reset for `reason`; its data.
async fn reset(events: &mut Events, reason: &str) -> (String, Value) {
    let event = next(events).await;
    assert_eq!(event.event, "reset", "{event:?}");
    let data: Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(data["reason"], reason, "{data}");
    assert_eq!(data["resume"], event.id.as_str());
    (event.id, data)
}

/// `LIVE_HISTORY=50`: a resume after a trimmed hit gets one reset, then the
/// live feed from now; after a hit still kept, the rest and no reset.
#[tokio::test]
async fn a_resume_after_trimmed_history_gets_one_reset_then_live() {
    for backend in [Backend::InProcess, Backend::Redis] {
        let (server, _redis) = start(backend, &[("LIVE_HISTORY", "50")]).await;
        let addr = server.addr;
        let mut ids = Vec::new();
        // Redis trims whole nodes of 100 entries (`MAXLEN ~`): 300 hits
        // leave the first node trimmed whatever the node size.
        for i in 0..300 {
            ids.push(hit(addr, SOURCES[i % 4], &format!("/{i}")).await);
        }
        let mut trimmed = sse_with(addr, LIVE, &[("last-event-id", &ids[0])]).await;
        let (resume, data) = reset(&mut trimmed, "trimmed").await;
        assert_eq!(data["after"], ids[0].as_str());
        assert_eq!(resume, ids[299], "{backend:?}: live from now");
        let kept = sse_with(addr, LIVE, &[("last-event-id", &ids[289])]).await;
        let resumed = sse_with(addr, LIVE, &[("last-event-id", &resume)]).await;
        let new = vec![
            hit(addr, "google", "/new").await,
            hit(addr, "bing", "/end").await,
        ];
        assert_eq!(hits_until(&mut trimmed, "/end").await, new, "{backend:?}");
        let mut expected = ids[290..].to_vec();
        expected.extend(new.clone());
        for (mut events, expected) in [(kept, expected), (resumed, new)] {
            assert_eq!(
                hits_until(&mut events, "/end").await,
                expected,
                "{backend:?}"
            );
        }
    }
}

/// `LIVE_HISTORY=1s`: hits older than a second are trimmed (by the append
/// in process, by the reader on Redis), and a resume after one says so.
#[tokio::test]
async fn an_age_bound_history_is_trimmed_by_age() {
    for backend in [Backend::InProcess, Backend::Redis] {
        let (server, _redis) = start(backend, &[("LIVE_HISTORY", "1s")]).await;
        let addr = server.addr;
        let first = hit(addr, "google", "/first").await;
        let second = hit(addr, "google", "/second").await;
        // Covered while young.
        let mut young = sse_with(addr, LIVE, &[("last-event-id", &first)]).await;
        assert_eq!(hits_until(&mut young, "/second").await, vec![second]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            hit(addr, "bing", "/later").await;
            let mut events = sse_with(addr, LIVE, &[("last-event-id", &first)]).await;
            let event = next(&mut events).await;
            if event.event == "reset" {
                assert!(event.data.contains(r#""reason":"trimmed""#), "{event:?}");
                break;
            }
            assert_eq!(event.event, "hit");
            assert!(
                Instant::now() < deadline,
                "{backend:?}: never trimmed by age"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// An id that cannot be parsed, or from a past epoch of the in-process log
/// (another process): one reset (never a 400, fatal to an `EventSource`),
/// then live.
#[tokio::test]
async fn an_unknown_id_gets_one_reset_not_a_400() {
    let (server, _redis) = start(Backend::InProcess, &[]).await;
    let addr = server.addr;
    let first = hit(addr, "google", "/first").await;
    let mut all = vec![first.clone()];
    for (last_event_id, reason) in [
        ("garbage", "invalid"),
        ("0123abcd:1", "epoch"),
        (&*format!("{}:{}", id(&first).epoch, u64::MAX), "invalid"),
    ] {
        let mut events = sse_with(addr, LIVE, &[("last-event-id", last_event_id)]).await;
        let (resume, data) = reset(&mut events, reason).await;
        assert_eq!(data["after"], last_event_id);
        let end_path = format!("/end/{reason}/{}", all.len());
        let end = hit(addr, "direct", &end_path).await;
        all.push(end.clone());
        let got = hits_until(&mut events, &end_path).await;
        if reason == "epoch" {
            // The whole of the log's epoch.
            assert_eq!(resume, format!("{}:0", id(&first).epoch));
            assert_eq!(got, all);
        } else {
            // From now: the instance's position in the log, which is the
            // last hit acknowledged before the request or, if its reader has
            // not read that one yet, an earlier one (the log's head, before
            // any hit, at the earliest); every hit after it follows, once.
            let from = position(&resume);
            assert!(
                from <= position(&all[all.len() - 2]),
                "resume {resume} is after the request"
            );
            let after: Vec<_> = all.iter().filter(|h| position(h) > from).cloned().collect();
            assert_eq!(got, after);
        }
    }
    // By the query parameter too.
    let mut events = sse(addr, &format!("{LIVE}?last_event_id=%3F")).await;
    reset(&mut events, "invalid").await;
    // An empty header is no id: the query's is taken (it made a fresh start,
    // silently skipping the hits after the query's id).
    let query = format!("{LIVE}?last_event_id={first}");
    let mut events = sse_with(addr, &query, &[("last-event-id", "")]).await;
    let end = hit(addr, "direct", "/end/empty-header").await;
    all.push(end);
    assert_eq!(hits_until(&mut events, "/end/empty-header").await, all[1..]);
}

/// A resume with an id of another epoch (a lost log), once this log's start
/// is trimmed too: one reset that says both, live from now, then every hit
/// after it and no second reset (it used to say `epoch` from the start, then
/// `trimmed` at once). On both logs.
#[tokio::test]
async fn a_lost_epoch_whose_successor_is_trimmed_gets_one_reset() {
    for backend in [Backend::InProcess, Backend::Redis] {
        let (server, _redis) = start(backend, &[("LIVE_HISTORY", "20")]).await;
        let addr = server.addr;
        let mut ids = Vec::new();
        // 300: past Redis's whole nodes of 100 (`MAXLEN ~`), as above.
        for i in 0..300 {
            ids.push(hit(addr, SOURCES[i % 4], &format!("/{i}")).await);
        }
        let lost = "deadbeefdeadbeef:5";
        let mut events = sse_with(addr, LIVE, &[("last-event-id", lost)]).await;
        let (resume, data) = reset(&mut events, "epoch").await;
        assert_eq!(data["after"], lost, "{backend:?}");
        assert_eq!(resume, ids[299], "{backend:?}: live from now");
        assert!(
            data["message"].as_str().unwrap().contains("trimmed"),
            "{backend:?}: {data}"
        );
        let new = vec![
            hit(addr, "google", "/new").await,
            hit(addr, "bing", "/end").await,
        ];
        assert_eq!(hits_until(&mut events, "/end").await, new, "{backend:?}");
    }
}

/// A Redis flushed, then restarted empty: each time every live stream gets
/// exactly one reset (`epoch`), then every hit stored since; a resume with
/// an id of a lost epoch too.
#[tokio::test]
async fn a_lost_redis_gets_one_reset_then_live() {
    let (server, mut redis) = start(Backend::Redis, &[]).await;
    let addr = server.addr;
    let redis = redis.as_mut().unwrap();
    let mut live = sse(addr, LIVE).await;
    let h1 = hit(addr, "google", "/1").await;
    assert_eq!(hits_until(&mut live, "/1").await, vec![h1.clone()]);

    redis.cmd(&["FLUSHALL"]);
    let h2 = hit(addr, "google", "/2").await;
    assert_ne!(id(&h2).epoch, id(&h1).epoch, "a new epoch");
    let (resume, _) = reset(&mut live, "epoch").await;
    assert_eq!(id(&resume).epoch, id(&h2).epoch);
    let h3 = hit(addr, "bing", "/3").await;
    assert_eq!(
        hits_until(&mut live, "/3").await,
        vec![h2.clone(), h3.clone()]
    );
    let mut old = sse_with(addr, LIVE, &[("last-event-id", &h1)]).await;
    reset(&mut old, "epoch").await;
    assert_eq!(
        hits_until(&mut old, "/3").await,
        vec![h2.clone(), h3.clone()]
    );

    redis.kill();
    redis.restart();
    // The first hits may find the connection broken (503); then stored.
    let deadline = Instant::now() + Duration::from_secs(10);
    let h4 = loop {
        let (status, body) = post(addr, COLLECT, &hit_body("direct", "/4")).await;
        if status == 200 {
            break body["id"].as_str().unwrap().to_owned();
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "Redis is back, collect is not");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(id(&h4).epoch, id(&h2).epoch);
    for events in [&mut live, &mut old] {
        reset(events, "epoch").await;
        assert_eq!(hits_until(events, "/4").await, vec![h4.clone()]);
    }
    let h5 = hit(addr, "google", "/5").await;
    assert_eq!(hits_until(&mut live, "/5").await, vec![h5]);
}

/// Posts until one is refused (503): the hits acknowledged meanwhile.
async fn post_until_refused(addr: SocketAddr, acked: &mut Vec<String>, tag: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = post(
            addr,
            COLLECT,
            &hit_body("google", &format!("/{tag}/{}", acked.len())),
        )
        .await;
        match status {
            200 => acked.push(body["id"].as_str().unwrap().to_owned()),
            503 => {
                // Sent to a Redis that stopped answering: it may have
                // executed the hit, and the answer says so.
                let error = body["error"].as_str().unwrap();
                assert!(
                    error.starts_with("not confirmed") && error.contains("may be stored"),
                    "{body}"
                );
                return;
            }
            _ => panic!("{status} {body}"),
        }
        assert!(Instant::now() < deadline, "never refused");
    }
}

/// Waits until `/healthz/ready` says what `says` accepts; its text. Ready
/// stays 200 throughout: the live log is shared, and its outage must not
/// make every instance unready.
async fn ready_says(addr: SocketAddr, says: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, text) = get_text(addr, "/healthz/ready").await;
        assert_eq!(status, 200, "{text}");
        if says(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "ready stayed {text:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const UNREACHABLE: &str = "ready; live log unreachable: ";

/// Redis unreachable at the start, then stopped (SIGSTOP) mid-stream: ready
/// says so (and stays 200), collect answers 503 (never a 2xx for a hit not stored;
/// "not confirmed" for one sent to the stopped Redis), and the
/// live streams go on when it is back with every acknowledged hit once, in
/// order, and no reset (nothing was lost).
#[tokio::test]
async fn redis_unreachable_at_start_and_mid_stream() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let server = Server::start(free_port(), &[("REDIS_URL", &url)]).await;
    let addr = server.addr;

    let (status, text) = get_text(addr, "/healthz/ready").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.starts_with(&format!("{UNREACHABLE}redis")), "{text}");
    let (status, body) = post(addr, COLLECT, &hit_body("google", "/lost")).await;
    assert_eq!(status, 503, "{body}");
    // A stream opened now waits for the log, and misses nothing after.
    let mut early = sse(addr, LIVE).await;

    let redis = Redis::start_on(port);
    ready_says(addr, |t| t == "ready").await;
    let mut acked = Vec::new();
    for i in 0..20 {
        acked.push(hit(addr, "google", &format!("/up/{i}")).await);
    }
    let mut live = sse_with(addr, LIVE, &[("last-event-id", &acked[9])]).await;

    redis.signal("STOP");
    ready_says(addr, |t| t.starts_with(UNREACHABLE)).await;
    post_until_refused(addr, &mut acked, "stopped").await;
    // A resume during the outage waits for the log too.
    let mut resumed = sse_with(addr, LIVE, &[("last-event-id", &acked[4])]).await;
    redis.signal("CONT");
    ready_says(addr, |t| t == "ready").await;
    for i in 0..20 {
        acked.push(hit(addr, "bing", &format!("/back/{i}")).await);
    }
    acked.push(hit(addr, "direct", "/end").await);

    // A hit refused with a 503 may still have reached Redis before it
    // stopped answering: it is in the log, and in the streams. Every hit
    // acknowledged is there once, in order.
    for (name, events, after) in [
        ("early", &mut early, None),
        ("live", &mut live, Some(9)),
        ("resumed", &mut resumed, Some(4)),
    ] {
        let got = hits_until(events, "/end").await;
        let mut unique = got.clone();
        unique.dedup();
        assert_eq!(unique, got, "{name}: no duplicate");
        assert_eq!(in_log_order(got.clone()), got, "{name}: in log order");
        let expected: Vec<&String> = acked[after.map_or(0, |a| a + 1)..].iter().collect();
        let acked_got: Vec<&String> = got.iter().filter(|id| acked.contains(id)).collect();
        assert_eq!(acked_got, expected, "{name}: every acknowledged hit");
    }
}

/// Bad bodies get a JSON 400 saying what is wrong; during a drain, collect
/// still stores (it is not behind the drain layer) while the live stream
/// gets the shutdown notice like every stream.
#[tokio::test]
async fn collect_validates_and_stores_during_a_drain() {
    let (mut server, redis) = start(Backend::Redis, &[("ANALYTICS_EVENT_INTERVAL_MS", "50")]).await;
    let redis = redis.unwrap();
    let addr = server.addr;
    let long = "/".repeat(5_000);
    for (body, message) in [
        ("", "not JSON"),
        ("{\"source\":", "not JSON"),
        ("[]", "JSON object"),
        (r#"{"path":"/"}"#, r#"missing field "source""#),
        (r#"{"source":"google"}"#, r#"missing field "path""#),
        (
            r#"{"source":["google"],"path":"/"}"#,
            "source must be a string",
        ),
        (r#"{"source":"google","path":7}"#, "path must be a string"),
        (
            r#"{"source":"google","path":"pricing"}"#,
            "path must start with '/'",
        ),
        (
            &*format!(r#"{{"source":"google","path":"/{}"}}"#, "p".repeat(600)),
            "path must be 1 to 512",
        ),
        (
            &*format!(r#"{{"source":"google","path":"{long}"}}"#),
            "more than 4096",
        ),
        // Past axum's own limit of 2 MB too: a JSON 400, not a text 413.
        (&*"x".repeat(3 << 20), "more than 4096"),
    ] {
        let (status, json) = post(addr, COLLECT, body).await;
        assert_eq!(status, 400, "{body}: {json}");
        let error = json["error"].as_str().unwrap();
        assert!(error.contains(message), "{body}: {error}");
    }
    assert_eq!(redis.int(&["XLEN", "live:hits"]), 0, "nothing stored");

    let mut live = sse(addr, LIVE).await;
    let first = hit(addr, "google", "/before").await;
    assert_eq!(hits_until(&mut live, "/before").await, vec![first]);
    // A 5 s download keeps the drain open.
    let (_export, _conn) = request(addr, "/api/v1/analytics/export?days=100", "*/*").await;
    server.signal("TERM");
    let notice = next(&mut live).await;
    assert_shutdown_event(&notice);
    until(|| server.logs().contains("Waiting for 1 connections")).await;
    let during = hit(addr, "bing", "/during-the-drain").await;
    assert_eq!(redis.int(&["XLEN", "live:hits"]), 2);
    let stored = format!("{:?}", redis.cmd(&["XRANGE", "live:hits", "-", "+"]));
    assert!(
        stored.contains(&*id(&during).position.to_string()),
        "{stored}"
    );
    // A new live stream is refused with the notice alone, as others are.
    let mut refused = sse(addr, LIVE).await;
    let only = rest(&mut refused).await;
    assert_eq!(only.len(), 1, "{only:?}");
    assert_shutdown_event(&only[0]);
    drop((_export, _conn));
    assert_eq!(server.exit_code().await, 0);
}
