//! The analytics example run as a child process: real signals, real clients,
//! a real browser.
//!
//! `cargo test` builds the example before it runs these tests.

#[path = "../../../tests/common/mod.rs"]
mod common;
mod example;

use analytics::report;
use common::*;
use example::{Server, example_binary, free_port};
use serde_json::Value;
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};

/// The rows of a `result` event.
fn rows(event: &eventsource_stream::Event) -> Vec<Value> {
    let data: Value = serde_json::from_str(&event.data).unwrap();
    data["rows"].as_array().unwrap().clone()
}

/// The rows the report holds, in order: the ground truth.
fn report_rows(name: &str, days: u32) -> Vec<Value> {
    let params = report::Params {
        report: name.into(),
        days,
    };
    report::Report::new(params)
        .events_from(0)
        .filter(|(_, e)| e.name == "result")
        .flat_map(|(_, e)| {
            let data: Value = serde_json::from_str(&e.data).unwrap();
            data["rows"].as_array().unwrap().clone()
        })
        .collect()
}

async fn get_text(addr: SocketAddr, path: &str) -> (u16, String) {
    let (res, _conn) = request(addr, path, "*/*").await;
    let status = res.status().as_u16();
    let body = body_bytes(res.into_body()).await;
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn sigterm_mid_report_notifies_every_client_and_exits_zero() {
    let mut server = Server::start(free_port(), &[("ANALYTICS_EVENT_INTERVAL_MS", "20")]).await;
    let addr = server.addr;
    assert_eq!(
        get_text(addr, "/healthz/ready").await,
        (200, "ready".into())
    );

    // A CSV download of about 7 s keeps the drain open while we look around.
    let (export, _export_conn) =
        request(addr, "/api/v1/analytics/export?report=big&days=365", "*/*").await;
    assert_eq!(export.status(), 200);

    let clients = futures_util::future::join_all((0..100).map(|i| async move {
        let mut events = sse(
            addr,
            &format!("/api/v1/analytics/stream?report=r{i}&days=365"),
        )
        .await;
        let mut seen = vec![next(&mut events).await];
        while seen.last().unwrap().event != "result" {
            seen.push(next(&mut events).await);
        }
        (events, seen)
    }))
    .await;

    server.signal("TERM");
    let readers = clients.into_iter().map(|(mut events, mut seen)| {
        tokio::spawn(async move {
            seen.extend(rest(&mut events).await);
            let (notice, before) = seen.split_last().unwrap();
            assert_shutdown_event(notice);
            for (i, event) in before.iter().enumerate() {
                assert_eq!(event.id, i.to_string(), "events intact and in order");
            }
            assert_eq!(notice.id, before.last().unwrap().id, "Last-Event-ID kept");
        })
    });
    for reader in futures_util::future::join_all(readers).await {
        reader.unwrap();
    }

    // Draining: streams get the notice alone, other API calls a 503, the
    // readiness probe fails, metrics still answer.
    let mut events = sse(addr, "/api/v1/analytics/stream?days=3").await;
    let rejected = rest(&mut events).await;
    assert_eq!(rejected.len(), 1);
    assert_shutdown_event(&rejected[0]);
    let (status, _) = get_text(addr, "/api/v1/analytics/export?days=1").await;
    assert_eq!(status, 503);
    assert_eq!(
        get_text(addr, "/healthz/ready").await,
        (503, "draining".into())
    );
    assert_eq!(get_text(addr, "/healthz/live").await.0, 200);
    let (status, metrics) = get_text(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(r#"sse_active_connections{pod="analytics-test-pod"} 0"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"sse_force_closed_connections_total{pod="analytics-test-pod"} 0"#));

    // The download runs to its end within the grace period: nothing lost.
    let csv = String::from_utf8(body_bytes(export.into_body()).await.to_vec()).unwrap();
    let export_done = Instant::now();
    assert_eq!(csv.lines().count(), 1 + 365 * 5);
    assert_eq!(server.exit_code().await, 0);
    println!(
        "exited {:?} after the last stream closed",
        export_done.elapsed()
    );

    let logs = server.logs();
    for line in [
        "Received SIGTERM signal, initiating graceful shutdown...",
        // The seed's log lines, word for word.
        "Active SSE connections: 100",
        "Notifying 100 active connections of shutdown",
        "Waiting for 1 connections to close (",
        "Graceful shutdown complete",
        // Rejected: the notice-only stream and the export's 503.
        "drain report: 100 of 100 SSE streams notified, 101 of 101 responses closed in time, \
         0 force-closed, 2 requests rejected",
    ] {
        assert!(logs.contains(line), "missing {line:?} in:\n{logs}");
    }
}

#[tokio::test]
async fn a_report_resumes_on_the_next_server_with_every_row_once() {
    let port = free_port();
    let env = [("ANALYTICS_EVENT_INTERVAL_MS", "30")];
    let mut first = Server::start(port, &env).await;
    let path = "/api/v1/analytics/stream?report=resume&days=60";

    let mut events = sse(first.addr, path).await;
    let mut held = Vec::new();
    let mut last_id = String::new();
    while held.len() < 50 {
        let event = next(&mut events).await;
        if event.event == "result" {
            held.extend(rows(&event));
        }
        last_id = event.id;
    }
    first.signal("TERM");
    for event in rest(&mut events).await {
        if event.event == "shutdown" {
            break;
        }
        held.extend(if event.event == "result" {
            rows(&event)
        } else {
            vec![]
        });
        last_id = event.id;
    }
    assert_eq!(first.exit_code().await, 0);
    assert!(held.len() < 300, "the restart came mid-report");

    let second = Server::start(port, &env).await;
    let mut events = sse_with(second.addr, path, &[("last-event-id", &last_id)]).await;
    let mut complete = None;
    for event in rest(&mut events).await {
        match event.event.as_str() {
            "result" => held.extend(rows(&event)),
            "complete" => complete = Some(event),
            _ => {}
        }
    }
    assert!(complete.is_some());
    assert_eq!(
        held,
        report_rows("resume", 60),
        "every row exactly once, in order"
    );
}

#[tokio::test]
async fn bad_configuration_stops_the_start_with_exit_code_2() {
    for (name, value) in [
        ("SHUTDOWN_GRACE_PERIOD", "abc"),
        ("SHUTDOWN_GRACE_PERIOD", "-1"),
        ("SHUTDOWN_GRACE_PERIOD", ""),
        ("SHUTDOWN_SSE_REJECTION", "maybe"),
        ("LIVE_HISTORY", "10x"),
        ("LIVE_HISTORY", "0"),
        ("LIVE_HISTORY", "9223372036854775808"),
        ("LIVE_BROADCAST_CAPACITY", "0"),
        // Would allocate 6.6 TB at start (an abort), and panic in tokio.
        ("LIVE_BROADCAST_CAPACITY", "100000000000"),
        ("LIVE_BROADCAST_CAPACITY", "9223372036854775808"),
        ("SHUTDOWN_RECONNECT_RATE", "1e-9"),
        ("RUST_LOG", "[[["),
        ("REDIS_URL", "nope"),
    ] {
        let out = Command::new(example_binary())
            .env("PORT", free_port().to_string())
            .env(name, value)
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("invalid {name}={value:?}")),
            "{stderr}"
        );
    }
}

/// `SHUTDOWN_SSE_REJECTION=503`: while draining, a stream request gets the
/// plain 503 (for a proxy that retries it elsewhere), not the notice.
#[tokio::test]
async fn sse_rejection_503_refuses_streams_with_a_503() {
    let mut server = Server::start(
        free_port(),
        &[
            ("ANALYTICS_EVENT_INTERVAL_MS", "50"),
            ("SHUTDOWN_SSE_REJECTION", "503"),
        ],
    )
    .await;
    // A download of about 1.5 s keeps the drain open meanwhile.
    let (export, _conn) = request(server.addr, "/api/v1/analytics/export?days=30", "*/*").await;
    server.signal("TERM");
    until(|| server.logs().contains("Waiting for 1 connections")).await;
    let (res, _conn) = request(
        server.addr,
        "/api/v1/analytics/stream?days=3",
        "text/event-stream",
    )
    .await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    body_bytes(export.into_body()).await;
    assert_eq!(server.exit_code().await, 0);
}

#[tokio::test]
async fn bad_parameters_get_a_json_400() {
    let server = Server::start(free_port(), &[]).await;
    for path in [
        "/api/v1/analytics/stream?days=0",
        "/api/v1/analytics/stream?days=abc",
        "/api/v1/analytics/stream?report=a%20b",
        "/api/v1/analytics/stream?last_event_id=99999",
        "/api/v1/analytics/export?days=400",
    ] {
        let (status, body) = get_text(server.addr, path).await;
        assert_eq!(status, 400, "{path}");
        let error: Value = serde_json::from_str(&body).unwrap();
        assert!(error["error"].as_str().unwrap().len() > 10, "{body}");
    }
}

#[tokio::test]
async fn resuming_after_the_last_event_answers_204() {
    let server = Server::start(free_port(), &[("ANALYTICS_EVENT_INTERVAL_MS", "0")]).await;
    let path = "/api/v1/analytics/stream?report=done&days=9";
    let mut events = sse(server.addr, path).await;
    let all = rest(&mut events).await;
    let last = all.last().unwrap();
    assert_eq!(last.event, "complete");

    // The report is complete: an EventSource that reconnects with the last
    // id is told to stop (204), by header or by query parameter.
    for (path, headers) in [
        (path.to_owned(), vec![("last-event-id", last.id.as_str())]),
        (format!("{path}&last_event_id={}", last.id), vec![]),
    ] {
        let mut all_headers = vec![("accept", "text/event-stream")];
        all_headers.extend(headers);
        let (res, _conn) = request_with(server.addr, &path, &all_headers).await;
        assert_eq!(res.status(), 204, "{path}");
        assert!(body_bytes(res.into_body()).await.is_empty());
    }
    // One before the last still streams the last event; one after is unknown.
    let before = (last.id.parse::<usize>().unwrap() - 1).to_string();
    let mut events = sse_with(server.addr, path, &[("last-event-id", &before)]).await;
    let tail = rest(&mut events).await;
    assert_eq!(tail.len(), 1);
    assert_eq!(
        (tail[0].id.as_str(), tail[0].data.as_str()),
        (last.id.as_str(), last.data.as_str())
    );
    let after = (last.id.parse::<usize>().unwrap() + 1).to_string();
    let (res, _conn) = request_with(server.addr, path, &[("last-event-id", &after)]).await;
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn the_realtime_stream_is_endless_numbered_and_drained() {
    let mut server = Server::start(free_port(), &[("ANALYTICS_EVENT_INTERVAL_MS", "0")]).await;
    let path = "/api/v1/analytics/realtime";

    // A pace of 0: as fast as the client reads, far beyond one report.
    let mut events = sse(server.addr, path).await;
    for seq in 0..5_000u64 {
        let event = next(&mut events).await;
        assert_eq!(
            (event.event.as_str(), event.id.as_str()),
            ("realtime", &*seq.to_string())
        );
        let data: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(data["seq"], seq);
        let sum: u64 = data["sources"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum();
        assert_eq!(data["active_users"], sum);
        assert!(sum > 0);
    }

    // A reconnect goes on after its Last-Event-ID; garbage is a 400.
    let mut resumed = sse_with(server.addr, path, &[("last-event-id", "41")]).await;
    assert_eq!(next(&mut resumed).await.id, "42");
    let (res, _conn) = request_with(server.addr, path, &[("last-event-id", "x")]).await;
    assert_eq!(res.status(), 400);

    // Behind the drain layer: both streams get the notice and end.
    server.signal("TERM");
    for stream in [&mut events, &mut resumed] {
        // Bounded in time: a stream the drain missed would never end.
        let notice = within(async {
            loop {
                let event = next(stream).await;
                if event.event != "realtime" {
                    break event;
                }
            }
        })
        .await;
        assert_shutdown_event(&notice);
        assert!(
            within(stream.next_raw()).await.is_none(),
            "the stream ends after the notice"
        );
    }
    assert_eq!(server.exit_code().await, 0);
}

/// The endless stream's worst client: 20 readers of `/realtime` (as fast as
/// they read) that stop reading after the response head, sockets open and
/// buffers full. SIGTERM with a 2 s grace period: the process still exits 0
/// within 4 s, because `DrainHandle::listener` closes their connections at
/// the deadline (grace + 1 s linger). Without it, it never exits.
#[tokio::test]
async fn stalled_readers_of_the_realtime_stream_cannot_hold_the_process() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = Server::start(
        free_port(),
        &[
            ("ANALYTICS_EVENT_INTERVAL_MS", "0"),
            ("SHUTDOWN_GRACE_PERIOD", "2"),
        ],
    )
    .await;
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(server.addr).await.unwrap();
        stream
            .write_all(
                b"GET /api/v1/analytics/realtime HTTP/1.1\r\nhost: test\r\n\
                  accept: text/event-stream\r\n\r\n",
            )
            .await
            .unwrap();
        let mut head = [0; 64];
        let n = within(stream.read(&mut head)).await.unwrap();
        assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &head[..n]);
        stalled.push(stream); // and never read again
    }
    // At a pace of 0 their events fill the kernel's send buffers (which grow
    // to a few MB each) and then hyper's: wait until the bytes queued on the
    // server's sockets stop growing, so that the server is truly stuck.
    let queued = || {
        let port = format!(":{:04X} ", server.addr.port());
        std::fs::read_to_string("/proc/net/tcp")
            .unwrap()
            .lines()
            .skip(1)
            .filter(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|a| a.ends_with(&port[..5]))
            })
            .filter_map(|l| {
                l.split_whitespace()
                    .nth(4)?
                    .split(':')
                    .next()
                    .map(str::to_owned)
            })
            .map(|tx| u64::from_str_radix(&tx, 16).unwrap())
            .sum::<u64>()
    };
    let mut last = 0;
    let mut still = 0;
    tokio::time::timeout(Duration::from_secs(60), async {
        while still < 3 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = queued();
            still = if now == last && now > 0 { still + 1 } else { 0 };
            last = now;
        }
    })
    .await
    .expect("the stalled sockets never filled up");
    eprintln!("{last} bytes queued on the server's side of the stalled sockets");

    let sigterm = Instant::now();
    server.signal("TERM");
    let code = tokio::time::timeout(Duration::from_secs(4), server.exit_code())
        .await
        .unwrap_or_else(|_| panic!("still running 4 s after SIGTERM:\n{}", server.logs()));
    let took = sigterm.elapsed();
    assert_eq!(code, 0, "{}", server.logs());
    eprintln!("20 stalled readers: exit 0 {took:?} after SIGTERM");
    assert!(
        took >= Duration::from_secs(2),
        "exited before the grace period: {took:?}"
    );
    drop(stalled);
}

#[tokio::test]
async fn a_second_sigint_exits_at_once() {
    let mut server = Server::start(free_port(), &[("ANALYTICS_EVENT_INTERVAL_MS", "100")]).await;
    // A 36 s download keeps the drain going.
    let (_export, _conn) = request(server.addr, "/api/v1/analytics/export?days=365", "*/*").await;
    server.signal("INT");
    until(|| server.logs().contains("Waiting for 1 connections")).await;
    server.signal("INT");
    assert_eq!(server.exit_code().await, 130);
    assert!(
        server
            .logs()
            .contains("Received a second SIGINT, exiting now")
    );
}

/// The page in headless Chromium, through a restart: it shows the notice
/// with one countdown, the one it keeps (its report, realtime and live
/// streams come back together at the report's notice delay); it finds no server when it
/// comes back and backs off exponentially up to its cap while the server
/// stays down; then it reconnects by itself to the next server and completes
/// the report with every row once. Screenshots land in `target/tmp/`
/// (`CARGO_TARGET_TMPDIR`).
#[tokio::test]
async fn browser_page_survives_a_restart() {
    let browser_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "run `npm ci --prefix examples/analytics/tests/browser` (and install Debian's chromium) first; `./scripts/test` does both"
    );
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&shots).unwrap();

    // The page's back-off in this test: 200 ms doubling, capped at 1.6 s.
    const BASE_MS: f64 = 200.0;
    const CAP_MS: f64 = 1600.0;
    // Failed retries before the next server starts: enough to reach the cap
    // (the 4th) and stay there.
    const RETRIES_DOWN: u32 = 5;
    let port = free_port();
    let env = [
        ("ANALYTICS_EVENT_INTERVAL_MS", "60"),
        // 2 to 4 s, each stream its own: long enough to watch the countdown
        // go down second by second, and the report's and the realtime
        // stream's delays differ.
        ("SHUTDOWN_RECONNECT_DELAY", "2"),
        ("SHUTDOWN_RECONNECT_JITTER", "2"),
    ];
    let mut first = Server::start(port, &env).await;
    let mut driver = Command::new("node")
        .arg(browser_dir.join("restart.mjs"))
        .arg(format!("http://127.0.0.1:{port}/?report=browser&days=40"))
        .arg(&shots)
        .arg(BASE_MS.to_string())
        .arg(CAP_MS.to_string())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
    let mut next_line = async || {
        tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the browser driver went quiet")
            .unwrap()
            .expect("the browser driver ended early")
    };
    loop {
        let line = next_line().await;
        println!("browser: {line}");
        if line == "MIDWAY" {
            break;
        }
    }
    first.signal("TERM");
    assert_eq!(first.exit_code().await, 0);
    // The server stays down while the page retries, failing, RETRIES_DOWN
    // times after its first attempt (at the notice's delay).
    loop {
        let line = next_line().await;
        println!("browser: {line}");
        if line == format!("RETRIES {RETRIES_DOWN}") {
            break;
        }
    }
    let _second = Server::start(port, &env).await;
    let result: Value = loop {
        let line = next_line().await;
        match line.strip_prefix("RESULT ") {
            Some(json) => break serde_json::from_str(json).unwrap(),
            None => println!("browser: {line}"),
        }
    };
    assert!(driver.wait().await.unwrap().success());

    println!("states: {}", result["states"]);
    println!("attempts: {}", result["attempts"]);
    println!("notices: {}", result["notices"]);
    assert_eq!(result["restarts"], 1);
    assert_eq!(result["stateText"], "complete");
    let records = |name: &str, stream: &str| -> Vec<Value> {
        result[name]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["stream"] == stream)
            .cloned()
            .collect()
    };
    let ms = |v: &Value| v.as_f64().unwrap();

    // One delay: the report's notice. The notice line shows its message,
    // the badge counts down from its delay to 1 one second at a time, and
    // both streams open again together at that delay.
    let notice = &records("notices", "report")[..];
    let [notice] = notice else {
        panic!("one notice on the report: {notice:?}")
    };
    let seconds = ms(&notice["reconnect_delay"]);
    let delay = seconds * 1000.0;
    let message = notice["message"].as_str().unwrap();
    assert_eq!(
        message,
        format!("Server restarting, please reconnect in {seconds}s")
    );
    let lines: Vec<&str> = result["noticeLines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .filter(|n| n.starts_with("Server restarting"))
        .collect();
    assert_eq!(lines, [message], "the notice line shows one delay");
    assert!(
        result["noticeLines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().starts_with("No answer from the server")),
        "while the page backs off, the notice line says so: {}",
        result["noticeLines"]
    );
    let countdown: Vec<f64> = result["badges"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| {
            t.as_str()?
                .strip_prefix("server restarting, back in ")?
                .strip_suffix(" s")?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        countdown[0] > seconds - 0.1 && countdown[0] < seconds + 1.0,
        "the countdown starts at the notice's {delay} ms: {countdown:?} in {}",
        result["badges"]
    );
    assert!(
        countdown.windows(2).all(|w| w[1] + 1.0 == w[0]),
        "{countdown:?}"
    );
    assert_eq!(countdown.last(), Some(&1.0));
    let report_attempts = records("attempts", "report");
    let after = |attempts: &[Value], kind: &str| -> f64 {
        let attempt = attempts.iter().find(|a| a["after"] == kind);
        ms(&attempt.unwrap_or_else(|| panic!("no attempt after a {kind}: {attempts:?}"))["at"])
    };
    let back = after(&report_attempts, "notice") - ms(&notice["at"]);
    assert!(
        back >= delay - 5.0 && back < delay + 1000.0,
        "the report came back {back} ms after a notice that asked {delay} ms"
    );
    for stream in ["realtime", "live"] {
        let stream_back = after(&records("attempts", stream), "notice");
        assert!(
            (stream_back - after(&report_attempts, "notice")).abs() < 100.0,
            "the {stream} stream comes back with the report, not at its own {} s",
            records("notices", stream)[0]["reconnect_delay"]
        );
    }

    // The server down: each retry waits between half and all of its
    // back-off step (200 ms doubling, capped at 1.6 s), plus the time a
    // connection takes to fail (a second of slack for a loaded machine: an
    // uncapped back-off still breaks it by the 6th retry, 3.2 s or more);
    // so the spacing grows and stays under the cap.
    let notice_at = report_attempts
        .iter()
        .position(|a| a["after"] == "notice")
        .unwrap();
    let gaps: Vec<f64> = report_attempts[notice_at..]
        .windows(2)
        .map(|w| {
            assert_eq!(w[1]["after"], "failure", "{report_attempts:?}");
            ms(&w[1]["at"]) - ms(&w[0]["at"])
        })
        .collect();
    println!("gaps between the report's attempts while the server was down: {gaps:?} ms");
    assert!(gaps.len() > RETRIES_DOWN as usize, "{gaps:?}");
    for (i, gap) in gaps.iter().enumerate() {
        let step = (BASE_MS * 2f64.powi(i as i32)).min(CAP_MS);
        assert!(
            *gap >= step / 2.0 - 5.0 && *gap <= step + 1000.0,
            "retry {} came {gap} ms after the last, outside {}..={step} ms: {gaps:?}",
            i + 1,
            step / 2.0
        );
    }
    // Up to the cap, each step's least is the last step's most.
    assert!(
        gaps[..4].windows(2).all(|w| w[1] >= w[0] - 50.0),
        "the spacing grows: {gaps:?}"
    );
    assert!(
        gaps[3..].iter().all(|g| *g >= CAP_MS / 2.0 - 5.0),
        "the cap reached: {gaps:?}"
    );
    let states: Vec<&str> = result["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let at = |state| {
        let at = states.iter().position(|s| *s == state);
        at.unwrap_or_else(|| panic!("the page never showed {state:?}: {states:?}"))
    };
    assert!(at("restarting") < at("retrying"), "{states:?}");
    assert!(at("retrying") < at("complete"), "{states:?}");
    assert!(result["reconnects"].as_u64().unwrap() > RETRIES_DOWN as u64);
    assert_eq!(
        result["rows"].as_array().unwrap(),
        &report_rows("browser", 40),
        "every row exactly once, in order"
    );
    assert!(shots.join("analytics-restarting.png").exists());
}

/// The page in headless Chromium where the server says no: a bad report
/// name and `days=0` show the server's 400 message and stop (no retry
/// loop), the form's own check of the name works in Chromium, and a resume
/// after the last event (204) shows the report complete and stops too.
#[tokio::test]
async fn browser_page_shows_a_refusal_and_stops() {
    let browser_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let server = Server::start(free_port(), &[("ANALYTICS_EVENT_INTERVAL_MS", "10")]).await;
    let out = Command::new("node")
        .arg(browser_dir.join("errors.mjs"))
        .arg(format!("http://{}", server.addr))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    let result: Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|json| serde_json::from_str(json).unwrap())
        .expect("no RESULT line");

    for (case, message) in [
        (
            "badReport",
            r#"report must be 1 to 64 letters, digits, '-' or '_', got "a b""#,
        ),
        (
            "zeroDays",
            r#"days must be a whole number from 1 to 365, got "0""#,
        ),
    ] {
        let shown = &result[case];
        assert_eq!(shown["state"], "failed", "{case}: {shown}");
        assert_eq!(shown["stateText"], "failed: 400", "{case}: {shown}");
        assert_eq!(shown["notice"], message, "{case}: {shown}");
        // The EventSource's request and the page's one look at the status.
        assert_eq!(shown["requests"], 2, "{case}: {shown}");
        assert_eq!(shown["reconnects"], 0, "{case}: {shown}");
    }
    assert_eq!(
        result["pattern"],
        serde_json::json!({ "spaced": false, "dotted": false, "plain": true })
    );
    let after = &result["afterLast"];
    assert_eq!(after["lastEventId"], "3", "{after}"); // the `complete` of 2 days
    assert_eq!(after["state"], "complete", "{after}");
    assert_eq!(after["notice"], "Report complete.", "{after}");
    assert_eq!(after["requests"], 2, "{after}");
    assert_eq!(after["reconnects"], 0, "{after}");
}
