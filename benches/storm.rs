//! Benchmark 5, reconnect storm: N streams drained while every client honours
//! its `retry:` and reconnects to a successor, side by side for three
//! settings: synchronized (no jitter, no window), the defaults, and the
//! defaults with a 10 s notice window.
//!
//! Three processes per run, so that no process needs more than N + a few
//! descriptors (the hard limit here is 20,000): the draining server (this
//! executable with `STORM_SERVER=draining`, the layer on an axum SSE route),
//! the successor (`STORM_SERVER=successor`, a plain SSE route that notes the
//! `CLOCK_MONOTONIC` time of every request it receives), and the clients,
//! here. Each client opens a stream to the draining server and reads its
//! first event; once all have, the draining server is told to drain. A client
//! that gets the notice reads on to the end of its stream, waits its `retry:`
//! (as an `EventSource` does: Chromium waits exactly that long), then opens a
//! stream to the successor and reads its first event.
//!
//! Reported per run: the reconnects the successor received in its busiest
//! 100 ms and its busiest second (sliding windows), the spread of their times
//! from the start of the drain (1st to 99th percentile), each client's
//! longest gap without a stream (end of the old one to the first event of the
//! new one; the largest over the clients and the median), and how long the
//! drain took by its own report.
//!
//! Run with: `cargo bench --bench storm` (N = 1,000 and 10,000, about 5
//! minutes: the clients wait their 30 to 45 s), or
//! `cargo bench --bench storm -- --streams 1000`.

#[path = "../tests/common/mod.rs"]
mod common;

use axum::{
    Router,
    response::sse::{Event, Sse},
    routing::get,
};
use common::swarm::{self, monotonic_ns};
use eventsource_stream::Eventsource;
use futures_util::{StreamExt, stream};
use http_body_util::BodyDataStream;
use std::{
    convert::Infallible,
    net::SocketAddr,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

/// One GET for an event stream over a fresh connection.
async fn get_once(
    addr: std::net::SocketAddr,
    path: &str,
    accept: &str,
) -> Result<(http::Response<hyper::body::Incoming>, common::Conn), String> {
    common::get(addr, path, &[("accept", accept)]).await
}
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, Command},
    sync::Semaphore,
};
use tower_graceful_sse::{Config, DrainHandle};

/// The three settings compared: name, jitter, window.
const SETTINGS: [(&str, Option<Duration>, Duration); 3] = [
    (
        "synchronized (jitter 0, window 0)",
        Some(Duration::ZERO),
        Duration::ZERO,
    ),
    ("defaults (jitter 15 s, window 0)", None, Duration::ZERO),
    (
        "window 10 s (and jitter 15 s)",
        None,
        Duration::from_secs(10),
    ),
];

fn main() {
    if let Ok(role) = std::env::var("STORM_SERVER") {
        return server(&role);
    }
    let args: Vec<String> = std::env::args().collect();
    let sizes: Vec<usize> = match args.iter().position(|a| a == "--streams") {
        Some(i) => vec![args[i + 1].parse().expect("--streams N")],
        None => vec![1_000, 10_000],
    };
    swarm::need_fds(*sizes.iter().max().unwrap() as u64 + 1_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut rows = Vec::new();
    for &n in &sizes {
        for (i, setting) in SETTINGS.iter().enumerate() {
            let row = runtime.block_on(run(n, i, setting));
            println!("{}", row.line());
            rows.push(row);
        }
    }
    println!("\n== reconnect storm: N streams drained, every client reconnects to a successor ==");
    println!(
        "| N | setting | busiest 100 ms | busiest second | reconnects p1 .. p99 (from the drain) | longest gap, max / median | drain |"
    );
    println!("|---|---|---|---|---|---|---|");
    for row in &rows {
        println!("{}", row.line());
    }
}

struct Row {
    n: usize,
    setting: &'static str,
    reconnects: usize,
    busiest_100ms: usize,
    busiest_second: usize,
    p1: f64,
    p99: f64,
    gap_max: f64,
    gap_median: f64,
    drain: f64,
}

impl Row {
    fn line(&self) -> String {
        let pct = |k: usize| 100.0 * k as f64 / self.n as f64;
        format!(
            "| {} | {} | {} ({:.1} %) | {} ({:.1} %) | {:.2} s .. {:.2} s ({:.2} s) | {:.2} s / {:.2} s | {:.2} s |{}",
            self.n,
            self.setting,
            self.busiest_100ms,
            pct(self.busiest_100ms),
            self.busiest_second,
            pct(self.busiest_second),
            self.p1,
            self.p99,
            self.p99 - self.p1,
            self.gap_max,
            self.gap_median,
            self.drain,
            if self.reconnects == self.n {
                String::new()
            } else {
                format!(" only {} of {} reconnected", self.reconnects, self.n)
            }
        )
    }
}

/// One run: N clients, one setting.
async fn run(n: usize, index: usize, setting: &(&'static str, Option<Duration>, Duration)) -> Row {
    let (name, jitter, window) = *setting;
    let (mut draining, draining_addr, mut draining_in) = spawn_server("draining", index).await;
    let (mut successor, successor_addr, mut successor_in) = spawn_server("successor", index).await;
    eprintln!("storm: N = {n}, {name}: connecting");
    let _ = (jitter, window);

    // Connect every client and read its first event, 200 at a time.
    let gate = Arc::new(Semaphore::new(200));
    let connected = Arc::new(tokio::sync::Barrier::new(n + 1));
    let gaps = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let (gate, connected, gaps) = (gate.clone(), connected.clone(), gaps.clone());
        clients.push(tokio::spawn(async move {
            client(draining_addr, successor_addr, gate, connected, gaps).await
        }));
    }
    connected.wait().await;
    eprintln!("storm: all {n} connected, draining");
    let drain_start = monotonic_ns();
    draining_in.write_all(b"drain\n").await.unwrap();
    for client in clients {
        client.await.unwrap();
    }
    let drain = read_line(&mut draining).await;
    let drain: f64 = drain.strip_prefix("drained ").unwrap().parse().unwrap();

    successor_in.write_all(b"report\n").await.unwrap();
    let arrivals = read_line(&mut successor).await;
    let mut times: Vec<f64> = arrivals
        .split_whitespace()
        .skip(1)
        .map(|ns| (ns.parse::<u64>().unwrap().saturating_sub(drain_start)) as f64 / 1e9)
        .collect();
    times.sort_by(f64::total_cmp);
    drop((draining_in, successor_in));
    let _ = draining.wait().await;
    let _ = successor.wait().await;

    let mut gaps = std::mem::take(&mut *gaps.lock().unwrap());
    gaps.sort_by(f64::total_cmp);
    let pct = |v: &[f64], p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    Row {
        n,
        setting: name,
        reconnects: times.len(),
        busiest_100ms: busiest(&times, 0.1),
        busiest_second: busiest(&times, 1.0),
        p1: pct(&times, 0.01),
        p99: pct(&times, 0.99),
        gap_max: *gaps.last().unwrap(),
        gap_median: pct(&gaps, 0.5),
        drain,
    }
}

/// The most times within any window of `width` seconds (sorted times).
fn busiest(times: &[f64], width: f64) -> usize {
    let mut best = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= width {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

/// One client: a stream from the draining server until it ends after the
/// notice, `retry:` of waiting, a stream from the successor.
async fn client(
    draining: SocketAddr,
    successor: SocketAddr,
    gate: Arc<Semaphore>,
    connected: Arc<tokio::sync::Barrier>,
    gaps: Arc<Mutex<Vec<f64>>>,
) {
    let permit = gate.acquire_owned().await.unwrap();
    let (res, conn) = get_once(draining, "/", "text/event-stream").await.unwrap();
    let mut events = BodyDataStream::new(res.into_body()).eventsource();
    let first = events.next().await.unwrap().unwrap();
    assert_eq!(first.data, "hello");
    drop(permit);
    connected.wait().await;

    let mut retry = None;
    while let Some(event) = events.next().await {
        let event = event.unwrap();
        if event.event == "shutdown" {
            retry = event.retry;
        }
    }
    let lost = monotonic_ns();
    drop(conn);
    let retry = retry.expect("every stream gets the notice");
    tokio::time::sleep(retry).await;
    // A refused or reset connection is retried at once (an EventSource would
    // wait its retry: again; counting the first try keeps the storm's shape).
    loop {
        match get_once(successor, "/", "text/event-stream").await {
            Ok((res, _conn)) => {
                let mut events = BodyDataStream::new(res.into_body()).eventsource();
                if let Some(Ok(_)) = events.next().await {
                    break;
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let back = monotonic_ns();
    gaps.lock().unwrap().push((back - lost) as f64 / 1e9);
}

async fn read_line(child: &mut Child) -> String {
    let stdout = child.stdout.as_mut().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).await.unwrap();
    line.trim().to_owned()
}

/// Starts a server process; returns it, its address and its stdin.
async fn spawn_server(role: &str, setting: usize) -> (Child, SocketAddr, ChildStdin) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("STORM_SERVER", role)
        .env("STORM_SETTING", setting.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let addr = read_line(&mut child).await.parse().unwrap();
    (child, addr, stdin)
}

/// A server process: prints its address, then obeys its stdin.
fn server(role: &str) {
    swarm::need_fds(11_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(4096).unwrap();
        println!("{}", listener.local_addr().unwrap());
        let sse = || {
            let hello = stream::once(async { Ok::<_, Infallible>(Event::default().data("hello")) });
            Sse::new(hello.chain(stream::pending()))
        };
        let mut stdin = BufReader::new(tokio::io::stdin()).lines();
        if role == "draining" {
            let setting: usize = std::env::var("STORM_SETTING").unwrap().parse().unwrap();
            let (_, jitter, window) = SETTINGS[setting];
            let mut config = Config::default().notice_window(window);
            if let Some(jitter) = jitter {
                config = config.reconnect_jitter(jitter);
            }
            let handle = DrainHandle::new(config);
            let app = Router::new()
                .route("/", get(move || async move { sse() }))
                .layer(handle.layer());
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            while let Some(line) = stdin.next_line().await.unwrap() {
                if line == "drain" {
                    let report = handle.drain().await;
                    assert_eq!(report.force_closed, 0, "{report}");
                    println!("drained {}", report.elapsed.as_secs_f64());
                }
            }
        } else {
            let arrivals = Arc::new(Mutex::new(Vec::new()));
            let noted = arrivals.clone();
            let app = Router::new().route(
                "/",
                get(move || {
                    noted.lock().unwrap().push(monotonic_ns());
                    async move { sse() }
                }),
            );
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            while let Some(line) = stdin.next_line().await.unwrap() {
                if line == "report" {
                    let times = arrivals.lock().unwrap();
                    let list: Vec<String> = times.iter().map(u64::to_string).collect();
                    println!("arrivals {}", list.join(" "));
                }
            }
        }
    });
}
