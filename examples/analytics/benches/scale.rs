//! The analytics example at scale: memory and shutdown-notice latency with
//! N report streams, against a baseline in the same run.
//!
//! For each N, two servers run in turn as child processes:
//! - `example`: the release build of the example (`CARGO_BIN_EXE_analytics`);
//! - `baseline`: this executable again (with `SCALE_BASELINE` set), a plain
//!   axum server with the layer that serves the very same events (captured
//!   once from the example) at the same pace, each event an `Event` built
//!   from strings every stream shares: no report code, nothing per stream
//!   but what axum, hyper and the layer hold.
//!
//! N clients (the team's swarm, `tests/common/swarm.rs`, in a third process)
//! stream `report=traffic&days=365`. Once every client has its first event
//! and the streams have run for `--hold` seconds, the server gets SIGTERM;
//! each client notes on `CLOCK_MONOTONIC` when its own parser sees the
//! `shutdown` event, so the notice latency is SIGTERM to client. The
//! server's resident set is sampled from `/proc/<pid>/status` all along;
//! its peak (`VmHWM`) minus its resident set before the clients, divided by
//! N, is the RSS per stream.
//!
//! Run with: `cargo bench -p analytics --bench scale -- --clients 10000`
//!
//! Options: `--clients N[,N...]` (1000,10000), `--interval-ms MS` (1000: the
//! example's `ANALYTICS_EVENT_INTERVAL_MS`, one day of rows per stream per
//! interval), `--hold S` (5: seconds of streaming before SIGTERM),
//! `--rounds R` (1: each round runs both servers, alternating which first),
//! `--example-bin PATH` (another build of the example, e.g. an older
//! commit's, in place of this one's).
//! Needs about N + 300 file descriptors in each process; each raises its
//! soft limit itself.
//!
//! With `--live`, the live feed instead (`/api/v1/analytics/live`), once on
//! the in-process log and once on a `redis-server` the bench starts (Debian's,
//! on a free port, nothing saved), see [`live_bench`]. Run with:
//! `cargo bench -p analytics --bench scale -- --live --clients 10000`

#[path = "../../../tests/common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "../tests/example/redis_server.rs"]
mod redis_server;

use common::swarm;

use axum::{
    Router,
    response::sse::{Event, KeepAlive, Sse},
    routing::get,
};
use futures_util::{StreamExt, stream};
use http_body_util::BodyExt;
use std::{
    convert::Infallible,
    net::SocketAddr,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::process::{Child, Command};
use tower_graceful_sse::{Config, DrainHandle};

const PATH: &str = "/api/v1/analytics/stream?report=traffic&days=365";

struct Args {
    /// The example's binary: this build's, or another (say an older commit's).
    example: std::path::PathBuf,
    clients: Vec<usize>,
    interval_ms: u64,
    hold: Duration,
    rounds: usize,
    /// The live feed's bench rather than the reports'.
    live: bool,
}

impl Args {
    fn parse() -> Self {
        let mut args = Self {
            example: env!("CARGO_BIN_EXE_analytics").into(),
            clients: vec![1_000, 10_000],
            interval_ms: 1_000,
            hold: Duration::from_secs(5),
            rounds: 1,
            live: false,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let (key, inline) = match arg.split_once('=') {
                Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                None => (arg.clone(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| it.next())
                    .unwrap_or_else(|| fail(&format!("{key} needs a value")))
            };
            match key.as_str() {
                "--clients" => args.clients = value().split(',').map(|n| number(&key, n)).collect(),
                "--interval-ms" => args.interval_ms = number(&key, &value()),
                "--hold" => args.hold = Duration::from_secs(number(&key, &value())),
                "--rounds" => args.rounds = number(&key, &value()),
                "--example-bin" => args.example = value().into(),
                "--live" => args.live = true,
                "--bench" => {} // passed by `cargo bench`
                other => fail(&format!(
                    "unknown option {other:?}; options: --clients N[,N...] --interval-ms MS --hold S --rounds R --example-bin PATH"
                )),
            }
        }
        if args.clients.contains(&0) || args.rounds == 0 {
            fail("--clients and --rounds must be at least 1");
        }
        args
    }
}

fn number<T: std::str::FromStr>(name: &str, v: &str) -> T {
    v.parse()
        .unwrap_or_else(|_| fail(&format!("invalid {name} {v:?}: expected a whole number")))
}

fn fail(message: &str) -> ! {
    eprintln!("scale: {message}");
    std::process::exit(2)
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Variant {
    Example,
    Baseline,
}

/// One server run with N clients.
struct Run {
    connected: usize,
    notified: usize,
    idle_rss: u64,
    peak_rss: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    exit: Option<i32>,
}

impl Run {
    fn per_stream(&self, n: usize) -> f64 {
        (self.peak_rss.saturating_sub(self.idle_rss)) as f64 / n as f64
    }
}

fn main() {
    swarm::worker_if_asked();
    baseline_if_asked();
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if args.live {
        rt.block_on(live_bench(&args));
        return;
    }
    rt.block_on(async {
        let events = capture(&args).await;
        println!(
            "captured the report from the example: {} events, {} bytes",
            events.1,
            events.2
        );
        let mut results = Vec::new();
        for &n in &args.clients {
            let mut runs: Vec<(Variant, Run)> = Vec::new();
            for round in 0..args.rounds {
                let order = if round % 2 == 0 {
                    [Variant::Example, Variant::Baseline]
                } else {
                    [Variant::Baseline, Variant::Example]
                };
                for variant in order {
                    let run = run(variant, n, &args, &events.0).await;
                    println!(
                        "N={n} round {round} {variant:?}: connected {} notified {} peak RSS {:.1} MB \
                         ({:.1} KB/stream) notice p50 {:.0} ms p99 {:.0} ms max {:.0} ms exit {:?}",
                        run.connected,
                        run.notified,
                        run.peak_rss as f64 / 1e6,
                        run.per_stream(n) / 1e3,
                        run.p50_ms,
                        run.p99_ms,
                        run.max_ms,
                        run.exit
                    );
                    runs.push((variant, run));
                }
            }
            results.push((n, runs));
        }
        print_table(&args, &results);
    });
}

/// Runs the example once with `ANALYTICS_EVENT_INTERVAL_MS=0` and keeps the
/// whole report as the baseline will serve it: a file of `id`, `event` and
/// `data` lines. Returns the file, the number of events and their size.
async fn capture(args: &Args) -> (std::path::PathBuf, usize, usize) {
    let mut server = start(Variant::Example, &args.example, 0, None).await;
    let (res, _conn) = common::get(server.addr, PATH, &[("accept", "text/event-stream")])
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    signal(&server.child, libc::SIGTERM);
    let _ = server.child.wait().await;
    let mut out = String::new();
    let mut count = 0;
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let field = |name: &str| {
            block
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_default()
                .to_owned()
        };
        if block.starts_with(':') {
            continue; // a keep-alive comment
        }
        out += &format!(
            "{}\n{}\n{}\n",
            field("id: "),
            field("event: "),
            field("data: ")
        );
        count += 1;
    }
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("scale-events-{}.txt", std::process::id()));
    std::fs::write(&path, out).unwrap();
    (path, count, body.len())
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

/// Starts a server and waits until it answers `/healthz/live`.
async fn start(
    variant: Variant,
    example: &std::path::Path,
    interval_ms: u64,
    events: Option<&std::path::Path>,
) -> Server {
    start_with(variant, example, interval_ms, events, &[]).await
}

/// [`start`], with more environment.
async fn start_with(
    variant: Variant,
    example: &std::path::Path,
    interval_ms: u64,
    events: Option<&std::path::Path>,
    env: &[(&str, String)],
) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = match variant {
        Variant::Example => Command::new(example),
        Variant::Baseline => {
            let mut c = Command::new(std::env::current_exe().unwrap());
            c.env("SCALE_BASELINE", events.unwrap());
            c
        }
    };
    let child = command
        .env("PORT", port.to_string())
        .env("ANALYTICS_EVENT_INTERVAL_MS", interval_ms.to_string())
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..500 {
        if let Ok((res, _)) = common::get(addr, "/healthz/live", &[("accept", "*/*")]).await {
            if res.status() == 200 {
                return Server { child, addr };
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{variant:?} server did not answer /healthz/live within 10 s");
}

fn signal(child: &Child, signal: i32) {
    let pid = child.id().expect("running") as i32;
    // SAFETY: kill only sends a signal to the process we started.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

/// `VmRSS` and `VmHWM` (peak) of a process, in bytes.
fn rss(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((kb("VmRSS:")? * 1024, kb("VmHWM:")? * 1024))
}

async fn run(variant: Variant, n: usize, args: &Args, events: &std::path::Path) -> Run {
    let mut server = start(variant, &args.example, args.interval_ms, Some(events)).await;
    let pid = server.child.id().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss = rss(pid).unwrap().0;

    // The peak, sampled until the process is gone.
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (peak, done) = (peak.clone(), done.clone());
        async move {
            while !done.load(Ordering::Acquire) {
                if let Some((now, hwm)) = rss(pid) {
                    peak.fetch_max(now.max(hwm), Ordering::AcqRel);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    let mut clients = swarm::Swarm::spawn(server.addr, PATH, n, 0.0);
    let connected = clients.ready().await;
    tokio::time::sleep(args.hold).await;
    let t0 = swarm::monotonic_ns();
    signal(&server.child, libc::SIGTERM);
    let outcomes = clients.finish(Duration::from_secs(60)).await;
    let exit = tokio::time::timeout(Duration::from_secs(60), server.child.wait())
        .await
        .ok()
        .and_then(|s| s.ok())
        .and_then(|s| s.code());
    done.store(true, Ordering::Release);
    sampler.await.unwrap();

    let mut ms: Vec<f64> = outcomes
        .iter()
        .filter_map(|o| o.notice_ns)
        .map(|ns| ns.saturating_sub(t0) as f64 / 1e6)
        .collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if ms.is_empty() {
            f64::NAN
        } else {
            ms[((ms.len() as f64 * q) as usize).min(ms.len() - 1)]
        }
    };
    Run {
        connected,
        notified: ms.len(),
        idle_rss,
        peak_rss: peak.load(Ordering::Acquire),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: ms.last().copied().unwrap_or(f64::NAN),
        exit,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn print_table(args: &Args, results: &[(usize, Vec<(Variant, Run)>)]) {
    println!(
        "\n== analytics example at scale: report=traffic&days=365, one day of rows per stream every {} ms, \
         SIGTERM after {} s; medians of {} round(s) ==",
        args.interval_ms,
        args.hold.as_secs(),
        args.rounds
    );
    println!(
        "| streams | server | notified | peak RSS | RSS per stream | notice p50 / p99 (max) | exit |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut verdicts = Vec::new();
    for (n, runs) in results {
        let of = |v: Variant| runs.iter().filter(move |(w, _)| *w == v).map(|(_, r)| r);
        let mut rows = Vec::new();
        for (variant, name) in [
            (Variant::Example, "example"),
            (Variant::Baseline, "layer on plain axum"),
        ] {
            let m = |f: &dyn Fn(&Run) -> f64| median(of(variant).map(f).collect());
            let (peak, per, p50, p99, max) = (
                m(&|r| r.peak_rss as f64),
                m(&|r| r.per_stream(*n)),
                m(&|r| r.p50_ms),
                m(&|r| r.p99_ms),
                m(&|r| r.max_ms),
            );
            let mut notified: Vec<String> = of(variant)
                .map(|r| format!("{}/{}", r.notified, r.connected))
                .collect();
            let mut exits: Vec<String> = of(variant)
                .map(|r| r.exit.map_or("none".into(), |c| c.to_string()))
                .collect();
            for list in [&mut notified, &mut exits] {
                if list.len() > 1 && list.iter().all(|x| *x == list[0]) {
                    *list = vec![format!("{} (each)", list[0])];
                }
            }
            println!(
                "| {n} | {name} | {} | {:.1} MB | {:.1} KB | {p50:.0} / {p99:.0} ms ({max:.0}) | {} |",
                notified.join(", "),
                peak / 1e6,
                per / 1e3,
                exits.join(", ")
            );
            rows.push((per, p99));
        }
        let ((per, p99), (_, base_p99)) = (rows[0], rows[1]);
        // Each round's example run against the same round's baseline run.
        let paired = median(
            of(Variant::Example)
                .zip(of(Variant::Baseline))
                .map(|(e, b)| e.p99_ms / b.p99_ms)
                .collect(),
        );
        verdicts.push(format!(
            "N={n}: example {:.1} KB/stream (target <= 40 KB: {}); notice p99 {:.2}x the baseline's \
             (median of the rounds' ratios {paired:.2}x; target <= 1.5x: {})",
            per / 1e3,
            if per <= 40e3 { "met" } else { "not met" },
            p99 / base_p99,
            if p99 <= 1.5 * base_p99 { "met" } else { "not met" },
        ));
    }
    println!();
    for v in verdicts {
        println!("{v}");
    }
}

/// The baseline server: the captured events, served by axum behind the
/// layer at the example's pace, drained on SIGTERM as the example is.
fn baseline_if_asked() {
    let Ok(file) = std::env::var("SCALE_BASELINE") else {
        return;
    };
    swarm::raise_fd_limit(1 << 20);
    let port: u16 = std::env::var("PORT").unwrap().parse().unwrap();
    let pace = Duration::from_millis(
        std::env::var("ANALYTICS_EVENT_INTERVAL_MS")
            .unwrap()
            .parse()
            .unwrap(),
    );
    let text = std::fs::read_to_string(file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let events: Arc<[(String, String, String)]> = lines
        .chunks(3)
        .map(|c| (c[0].to_owned(), c[1].to_owned(), c[2].to_owned()))
        .collect();
    // Like `#[tokio::main]` in the example: one worker per core.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let drain = DrainHandle::new(Config::default());
        let app = Router::new()
            .route(
                "/api/v1/analytics/stream",
                get(move || {
                    let events = events.clone();
                    async move {
                        let stream = stream::iter(0..events.len()).then(move |i| {
                            let events = events.clone();
                            async move {
                                let (id, name, data) = &events[i];
                                // The example's pace: none before a status.
                                if name != "status" {
                                    pause(pace).await;
                                }
                                Ok::<_, Infallible>(Event::default().id(id).event(name).data(data))
                            }
                        });
                        Sse::new(stream)
                            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
                    }
                }),
            )
            .route_layer(drain.layer())
            .route("/healthz/live", get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        axum::serve(listener, app.into_make_service())
            .with_graceful_shutdown(async move {
                term.recv().await;
                drain.drain().await;
            })
            .await
            .unwrap();
    });
    std::process::exit(0);
}

/// As in the example: a pace of 0 only yields.
async fn pause(pace: Duration) {
    if pace.is_zero() {
        tokio::task::yield_now().await;
    } else {
        tokio::time::sleep(pace).await;
    }
}

// ---------------------------------------------------------------------------
// The live feed.

const LIVE: &str = "/api/v1/analytics/live";

/// A free loopback port (for `redis_server`).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One backend's figures.
struct LiveRun {
    log: &'static str,
    subscribers: usize,
    per_subscriber: f64,
    live: (f64, f64, usize),
    reports: (f64, f64, usize),
    commands: Option<(f64, f64)>,
    resume_ms: f64,
}

/// For each log (in-process, then Redis): the release build of the example,
/// a producer posting `HIT_RATE` hits a second all along, then
/// 1. the time for a resume that replays 1,000 hits (median of 5): 1,000
///    hits posted after an id, then a client with that `Last-Event-ID`
///    until its 1,000th hit;
/// 2. Redis commands per second (`INFO commandstats`, before and after
///    10 s) with 1 live subscriber;
/// 3. N live subscribers (the swarm): RSS per subscriber (the resident set
///    with them, minus before them, over N), and commands per second again;
/// 4. 1,000 report streams beside them, then SIGTERM: notice p50/p99 of
///    the live streams and of the report streams, in the same drain.
async fn live_bench(args: &Args) {
    swarm::raise_fd_limit(1 << 20);
    let n = *args.clients.last().unwrap();
    let mut all = Vec::new();
    for round in 0..args.rounds {
        for redis in [false, true] {
            let run = live_run(args, n, redis).await;
            print!("round {round}: ");
            println!(
                "{}: {} live subscribers, {:.1} KB each; notice p99 live {:.0} ms, reports {:.0} ms; \
             commands/s {:?}; resume of 1,000 {:.0} ms",
                run.log,
                run.subscribers,
                run.per_subscriber / 1e3,
                run.live.1,
                run.reports.1,
                run.commands,
                run.resume_ms
            );
            all.push(run);
        }
    }
    // The median of the rounds, field by field.
    let runs: Vec<LiveRun> = ["in-process", "Redis Streams"]
        .into_iter()
        .map(|log| {
            let of: Vec<&LiveRun> = all.iter().filter(|r| r.log == log).collect();
            let m = |f: &dyn Fn(&LiveRun) -> f64| median(of.iter().map(|r| f(r)).collect());
            LiveRun {
                log: of[0].log,
                subscribers: m(&|r| r.subscribers as f64) as usize,
                per_subscriber: m(&|r| r.per_subscriber),
                live: (
                    m(&|r| r.live.0),
                    m(&|r| r.live.1),
                    m(&|r| r.live.2 as f64) as usize,
                ),
                reports: (
                    m(&|r| r.reports.0),
                    m(&|r| r.reports.1),
                    m(&|r| r.reports.2 as f64) as usize,
                ),
                commands: of[0]
                    .commands
                    .map(|_| (m(&|r| r.commands.unwrap().0), m(&|r| r.commands.unwrap().1))),
                resume_ms: m(&|r| r.resume_ms),
            }
        })
        .collect();
    println!(
        "\n== live feed: {n} subscribers on one instance, {HIT_RATE} hits/s, 1,000 report streams \
         beside them at one day per {} ms, SIGTERM after {} s; medians of {} round(s) ==",
        args.interval_ms,
        args.hold.as_secs(),
        args.rounds
    );
    println!(
        "| log | live subscribers | RSS per subscriber | notice p50 / p99, live | notice p50 / p99, \
         reports (same drain) | Redis commands/s, 1 subscriber | with {n} | resume replaying 1,000 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &runs {
        let (c1, cn) = r.commands.map_or(("-".into(), "-".into()), |(a, b)| {
            (format!("{a:.0}"), format!("{b:.0}"))
        });
        println!(
            "| {} | {} | {:.1} KB | {:.0} / {:.0} ms ({} notified) | {:.0} / {:.0} ms ({} notified) | {c1} | {cn} | {:.0} ms |",
            r.log,
            r.subscribers,
            r.per_subscriber / 1e3,
            r.live.0,
            r.live.1,
            r.live.2,
            r.reports.0,
            r.reports.1,
            r.reports.2,
            r.resume_ms
        );
    }
}

/// Hits a second posted during the whole run.
const HIT_RATE: u64 = 20;

async fn live_run(args: &Args, n: usize, with_redis: bool) -> LiveRun {
    let redis = with_redis.then(redis_server::Redis::start);
    let mut env = Vec::new();
    if let Some(redis) = &redis {
        env.push(("REDIS_URL", redis.url()));
    }
    let mut server = start_with(
        Variant::Example,
        &args.example,
        args.interval_ms,
        None,
        &env,
    )
    .await;
    let addr = server.addr;
    let pid = server.child.id().unwrap();

    // 1. A resume that replays 1,000 hits.
    let mut resumes = Vec::new();
    for round in 0..5 {
        let from = post_hit(addr, "google", "/before").await;
        for i in 0..1_000 {
            post_hit(
                addr,
                ["google", "direct", "bing"][i % 3],
                &format!("/{round}/{i}"),
            )
            .await;
        }
        let start = std::time::Instant::now();
        let mut events = common::sse_with(addr, LIVE, &[("last-event-id", &from)]).await;
        for _ in 0..1_000 {
            let event = common::next(&mut events).await;
            assert_eq!(event.event, "hit");
        }
        resumes.push(start.elapsed().as_secs_f64() * 1e3);
    }

    // The producer, from now on.
    let producing = Arc::new(AtomicBool::new(true));
    let producer = tokio::spawn({
        let producing = producing.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1_000 / HIT_RATE));
            let mut i = 0u64;
            while producing.load(Ordering::Acquire) {
                tick.tick().await;
                let source = ["google", "direct", "newsletter", "bing", "twitter"][i as usize % 5];
                // Refused during the drain's end: not counted here.
                let _ = try_post_hit(addr, source, "/live").await;
                i += 1;
            }
        }
    });

    // 2. Commands per second with one subscriber.
    let window = Duration::from_secs(10);
    let mut one = swarm::Swarm::spawn(addr, LIVE, 1, 0.0);
    assert_eq!(one.ready().await, 1);
    let rate_one = match &redis {
        Some(redis) => Some(commands_per_second(redis, window).await),
        None => None,
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss(pid).unwrap().0;

    // 3. N subscribers.
    let mut live = swarm::Swarm::spawn(addr, LIVE, n, 0.0);
    let subscribers = live.ready().await;
    tokio::time::sleep(args.hold).await;
    let with_rss = rss(pid).unwrap().0;
    let rate_n = match &redis {
        Some(redis) => Some(commands_per_second(redis, window).await),
        None => None,
    };

    // 4. Report streams beside them, and the drain.
    let mut reports = swarm::Swarm::spawn(addr, PATH, 1_000, 0.0);
    reports.ready().await;
    tokio::time::sleep(args.hold).await;
    let t0 = swarm::monotonic_ns();
    signal(&server.child, libc::SIGTERM);
    let (live_out, report_out, _) = tokio::join!(
        live.finish(Duration::from_secs(60)),
        reports.finish(Duration::from_secs(60)),
        one.finish(Duration::from_secs(60)),
    );
    producing.store(false, Ordering::Release);
    let _ = tokio::time::timeout(Duration::from_secs(60), server.child.wait()).await;
    producer.abort();
    let quantiles = |outcomes: &[swarm::Outcome]| {
        let mut ms: Vec<f64> = outcomes
            .iter()
            .filter_map(|o| o.notice_ns)
            .map(|ns| ns.saturating_sub(t0) as f64 / 1e6)
            .collect();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| {
            ms.get(((ms.len() as f64 * q) as usize).min(ms.len().saturating_sub(1)))
                .copied()
        };
        (
            at(0.5).unwrap_or(f64::NAN),
            at(0.99).unwrap_or(f64::NAN),
            ms.len(),
        )
    };
    LiveRun {
        log: if with_redis {
            "Redis Streams"
        } else {
            "in-process"
        },
        subscribers,
        per_subscriber: with_rss.saturating_sub(idle_rss) as f64 / n as f64,
        live: quantiles(&live_out),
        reports: quantiles(&report_out),
        commands: rate_one.zip(rate_n),
        resume_ms: median(resumes),
    }
}

/// Redis commands per second over `window`: every `cmdstat_*` `calls=` of
/// `INFO commandstats` (the `INFO` itself not counted).
async fn commands_per_second(redis: &redis_server::Redis, window: Duration) -> f64 {
    let calls = |redis: &redis_server::Redis| -> u64 {
        let info = match redis.cmd(&["INFO", "commandstats"]) {
            redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
            redis::Value::VerbatimString { text, .. } => text,
            other => panic!("INFO: {other:?}"),
        };
        info.lines()
            .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
            .filter_map(|l| {
                l.split([':', ','])
                    .find_map(|f| f.strip_prefix("calls="))?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let before = calls(redis);
    let start = std::time::Instant::now();
    tokio::time::sleep(window).await;
    let after = calls(redis);
    (after - before) as f64 / start.elapsed().as_secs_f64()
}

async fn post_hit(addr: SocketAddr, source: &str, path: &str) -> String {
    try_post_hit(addr, source, path)
        .await
        .unwrap_or_else(|e| panic!("collect: {e}"))
}

/// `POST /collect`: the id, or why not.
async fn try_post_hit(addr: SocketAddr, source: &str, path: &str) -> Result<String, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let body = serde_json::json!({ "source": source, "path": path }).to_string();
    let req = http::Request::post("/api/v1/analytics/collect")
        .header(http::header::HOST, addr.to_string())
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    match json["id"].as_str() {
        Some(id) if status == 200 => Ok(id.to_owned()),
        _ => Err(format!("{status} {json}")),
    }
}
