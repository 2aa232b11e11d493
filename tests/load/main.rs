//! Load test: a production deploy simulated on loopback.
//!
//! N SSE clients (default 1,000) hold streams open against a real axum server
//! with the layer; the drain starts; every client records when its own parser
//! (the independent `eventsource-stream`) sees the `shutdown` event. Most
//! clients close on the notice, as the seed's frontend does; a share of them
//! ignores it and keeps reading, so the grace period runs out and the layer
//! force-closes their streams. New requests made during the drain must all be
//! rejected. The test prints one table and asserts the seed's criteria as
//! counts, never on wall-clock time.
//!
//! Run with: `cargo test --test load -- --clients 10000`
//!
//! Options: `--clients N` (1000), `--ignore-share F` (0.02: share of clients
//! that ignore the notice), `--grace SECS` (5), `--late N` (100: requests made
//! during the drain), `--tick-ms MS` (1000: each stream's event interval).

use axum::{
    Router,
    response::sse::{Event, Sse},
    routing::get,
};
use eventsource_stream::Eventsource;
use futures_util::{
    StreamExt,
    stream::{self, BoxStream},
};
use http::header;
use http_body_util::BodyExt;
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::IntervalStream;
use tower_graceful_sse::{Config, DrainHandle, DrainReport};

#[path = "../common/mod.rs"]
mod common;

use common::swarm::{self, End, Outcome, Swarm};

const NAME: &str = "graceful_shutdown_load";

struct Args {
    clients: usize,
    ignore_share: f64,
    grace: Duration,
    late: usize,
    tick: Duration,
}

impl Args {
    /// Our options, plus libtest's flags (ignored) and filters: a filter that
    /// does not match this test's name skips it, as libtest would.
    fn parse() -> Option<Self> {
        let mut args = Self {
            clients: 1_000,
            ignore_share: 0.02,
            grace: Duration::from_secs(5),
            late: 100,
            tick: Duration::from_millis(1000),
        };
        let mut filters = Vec::new();
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let (key, inline) = match arg.split_once('=') {
                Some((k, v)) if k.starts_with("--") => (k.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            let mut value = |name: &str| -> String {
                inline
                    .clone()
                    .or_else(|| it.next())
                    .unwrap_or_else(|| panic!("{name} needs a value"))
            };
            let number = |name: &str, v: String| -> f64 {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name}: not a number: {v:?}"))
            };
            match key.as_str() {
                "--clients" => args.clients = number("--clients", value("--clients")) as usize,
                "--ignore-share" => {
                    args.ignore_share = number("--ignore-share", value("--ignore-share"))
                }
                "--grace" => {
                    args.grace = Duration::from_secs_f64(number("--grace", value("--grace")))
                }
                "--late" => args.late = number("--late", value("--late")) as usize,
                "--tick-ms" => {
                    args.tick =
                        Duration::from_millis(number("--tick-ms", value("--tick-ms")) as u64)
                }
                "--list" => {
                    println!("{NAME}: test");
                    return None;
                }
                // libtest options that take a value.
                "--test-threads" | "--format" | "--color" | "--skip" | "--logfile" | "-Z" => {
                    value(&key);
                }
                k if k.starts_with('-') => {}
                _ => filters.push(arg),
            }
        }
        assert!(args.clients > 0, "--clients must be at least 1");
        assert!(
            (0.0..=1.0).contains(&args.ignore_share),
            "--ignore-share must be within 0..=1"
        );
        if !filters.is_empty() && !filters.iter().any(|f| NAME.contains(f.as_str())) {
            println!("{NAME}: filtered out");
            return None;
        }
        Some(args)
    }

    fn ignoring(&self) -> usize {
        swarm::ignoring(self.clients, self.ignore_share)
    }
}

fn main() {
    swarm::worker_if_asked();
    let Some(args) = Args::parse() else { return };
    // The clients run in a child process (see `swarm`); this one holds the
    // server's end of every connection and the late requests.
    let fds = swarm::need_fds(args.clients as u64 + 2 * args.late as u64 + 512);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let failures = runtime.block_on(run(&args, fds));
    // Tear down 2N sockets at once rather than task by task.
    std::mem::forget(runtime);
    if !failures.is_empty() {
        eprintln!("\nFAILED:");
        for failure in &failures {
            eprintln!("  - {failure}");
        }
        std::process::exit(1);
    }
    println!("\n{NAME}: ok");
}

async fn run(args: &Args, fds: u64) -> Vec<String> {
    let handle = DrainHandle::new(
        Config::default()
            .grace_period(args.grace)
            .end_after_notice(false),
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let addr = common::serve(app(&handle, calls.clone(), args.tick));

    // Connect everyone.
    let connecting = Instant::now();
    let mut clients = Swarm::spawn(addr, "/events", args.clients, args.ignore_share);
    let connected = clients.ready().await;
    let connect_time = connecting.elapsed();
    let open_before = handle.sse_streams();

    // The deploy: SIGTERM arrives, the drain starts.
    let t0 = swarm::monotonic_ns();
    let drain = handle.drain();

    // New requests keep arriving during the drain: half from EventSource
    // clients, half plain.
    let late: Vec<JoinHandle<Late>> = (0..args.late)
        .map(|i| tokio::spawn(late_request(addr, i % 2 == 0)))
        .collect();

    let report = drain.await;
    let outcomes = clients.finish(Duration::from_secs(30)).await;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut late_results = Vec::new();
    for l in late {
        late_results.push(
            tokio::time::timeout_at(give_up, l)
                .await
                .map(|l| l.unwrap())
                .unwrap_or(Late::Other("no answer within 30 s".into())),
        );
    }

    let table = Table::new(args, connected, t0, &outcomes, &late_results);
    let setup = Setup {
        fds,
        connect_time,
        open_before,
    };
    table.print(args, &report, setup);
    table.check(args, &report, calls.load(Ordering::Acquire))
}

fn app(handle: &DrainHandle, calls: Arc<AtomicUsize>, tick: Duration) -> Router {
    Router::new()
        .route(
            "/events",
            get(move || {
                calls.fetch_add(1, Ordering::Relaxed);
                events(tick)
            }),
        )
        .route("/plain", get(|| async { "ok" }))
        .route_layer(handle.layer())
}

/// A `hello`, then a numbered `tick` event every `tick`.
async fn events(tick: Duration) -> Sse<BoxStream<'static, Result<Event, Infallible>>> {
    let start = tokio::time::Instant::now() + tick;
    let ticks = IntervalStream::new(tokio::time::interval_at(start, tick))
        .enumerate()
        .map(|(i, _)| Ok(Event::default().event("tick").data(i.to_string())));
    let hello = stream::once(async { Ok(Event::default().event("hello").data("hi")) });
    Sse::new(hello.chain(ticks).boxed())
}

/// The answer to a request made during the drain.
enum Late {
    /// `503` with `Retry-After`.
    Unavailable,
    /// `200` carrying the shutdown event alone.
    Notice,
    Other(String),
}

async fn late_request(addr: SocketAddr, sse: bool) -> Late {
    let (path, accept) = if sse {
        ("/events", "text/event-stream")
    } else {
        ("/plain", "*/*")
    };
    let (res, _conn) = match common::get(addr, path, &[("accept", accept)]).await {
        Ok(ok) => ok,
        Err(e) => return Late::Other(e),
    };
    let status = res.status();
    let retry_after = res.headers().contains_key(header::RETRY_AFTER);
    let body = match res.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return Late::Other(format!("body: {e}")),
    };
    match status.as_u16() {
        503 if retry_after => Late::Unavailable,
        200 if sse => {
            let events: Vec<_> = stream::iter([Ok::<_, Infallible>(body)])
                .eventsource()
                .collect()
                .await;
            match &events[..] {
                [Ok(e)] if e.event == "shutdown" => Late::Notice,
                _ => Late::Other(format!("200 without a lone notice: {events:?}")),
            }
        }
        _ => Late::Other(format!("status {status}")),
    }
}

struct Table {
    connected: usize,
    notified: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    dropped: usize,
    closed_by_client: usize,
    ended_by_server_after_notice: usize,
    unfinished: usize,
    errors: Vec<String>,
    late_503: usize,
    late_notice: usize,
    late_other: Vec<String>,
    ignoring: usize,
}

impl Table {
    fn new(args: &Args, connected: usize, t0: u64, outcomes: &[Outcome], late: &[Late]) -> Self {
        let mut times: Vec<Duration> = outcomes
            .iter()
            .filter_map(|o| o.notice_ns)
            .map(|ns| Duration::from_nanos(ns.saturating_sub(t0)))
            .collect();
        times.sort_unstable();
        let pct = |p: f64| {
            if times.is_empty() {
                Duration::ZERO
            } else {
                times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1]
            }
        };
        let count = |f: &dyn Fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
        assert_eq!(outcomes.len(), args.clients, "an outcome per client");
        Self {
            connected,
            notified: times.len(),
            p50: pct(0.50),
            p99: pct(0.99),
            max: times.last().copied().unwrap_or_default(),
            dropped: count(&|o| {
                o.notice_ns.is_none() && matches!(o.end, End::Ended | End::Error(_))
            }),
            closed_by_client: count(&|o| o.end == End::Closed),
            ended_by_server_after_notice: count(&|o| o.notice_ns.is_some() && o.end == End::Ended),
            unfinished: count(&|o| o.end == End::Unfinished),
            errors: outcomes
                .iter()
                .filter_map(|o| match &o.end {
                    End::Error(e) | End::Failed(e) => Some(e.clone()),
                    _ => None,
                })
                .collect(),
            late_503: late
                .iter()
                .filter(|l| matches!(l, Late::Unavailable))
                .count(),
            late_notice: late.iter().filter(|l| matches!(l, Late::Notice)).count(),
            late_other: late
                .iter()
                .filter_map(|l| match l {
                    Late::Other(e) => Some(e.clone()),
                    _ => None,
                })
                .collect(),
            ignoring: args.ignoring(),
        }
    }

    fn print(&self, args: &Args, report: &DrainReport, setup: Setup) {
        let n = args.clients;
        let pct = |k: usize, of: usize| 100.0 * k as f64 / of.max(1) as f64;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "\n{NAME}: {n} SSE clients on loopback, {} ignore the notice, grace {:.1} s, \
             server on 2 worker threads, clients in a child process, fd limit {}",
            self.ignoring,
            args.grace.as_secs_f64(),
            setup.fds
        );
        println!(
            "connected in {:.2} s; {} streams open at the layer before the drain\n",
            setup.connect_time.as_secs_f64(),
            setup.open_before
        );
        println!("| metric                                   | value |");
        println!("|------------------------------------------|-------|");
        println!(
            "| clients connected                        | {} of {n} |",
            self.connected
        );
        println!(
            "| notified (client parser saw `shutdown`)  | {} ({:.2}%) |",
            self.notified,
            pct(self.notified, self.connected)
        );
        println!(
            "| drain -> notice at the client p50 / p99  | {:.2} ms / {:.2} ms (max {:.2} ms) |",
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        );
        println!(
            "| closed within grace                      | {} of {} ({:.2}%) |",
            report.closed,
            report.in_flight,
            pct(report.closed, report.in_flight)
        );
        println!(
            "| dropped without notification             | {} ({:.2}%) |",
            self.dropped,
            pct(self.dropped, self.connected)
        );
        println!(
            "| force-closed at the deadline             | {} ({:.2}%); clients saw {} clean ends after the notice |",
            report.force_closed,
            pct(report.force_closed, report.in_flight),
            self.ended_by_server_after_notice
        );
        println!(
            "| requests rejected during drain           | {} of {} ({} x 503, {} x notice-only 200); layer counted {} |",
            self.late_503 + self.late_notice,
            args.late,
            self.late_503,
            self.late_notice,
            report.rejected
        );
        println!(
            "| drain duration                           | {:.3} s |",
            report.elapsed.as_secs_f64()
        );
        println!(
            "\nclients that closed on the notice: {}; unfinished: {}; errors: {}",
            self.closed_by_client,
            self.unfinished,
            self.errors.len()
        );
        for e in self.errors.iter().take(5) {
            println!("  error: {e}");
        }
        println!("layer's report: {report:?}");
    }

    /// The seed's criteria, and the exact counts behind them.
    fn check(&self, args: &Args, report: &DrainReport, calls: usize) -> Vec<String> {
        let n = args.clients;
        let mut failures = Vec::new();
        let mut expect = |ok: bool, what: String| {
            if !ok {
                failures.push(what);
            }
        };
        expect(
            self.connected == n,
            format!("{} of {n} clients connected", self.connected),
        );
        expect(
            self.notified == self.connected,
            format!(
                "100% notified: {} of {} clients saw the notice",
                self.notified, self.connected
            ),
        );
        expect(
            self.dropped == 0,
            format!("0% dropped without notification: {} were", self.dropped),
        );
        expect(
            self.errors.is_empty() && self.unfinished == 0,
            format!(
                "every stream ends cleanly: {} errors, {} unfinished",
                self.errors.len(),
                self.unfinished
            ),
        );
        expect(
            report.in_flight == n && report.sse_streams == n,
            format!("the layer counted {} streams, not {n}", report.in_flight),
        );
        // Exact counts: the clients that close on the notice are closed within
        // the grace period, the ones that ignore it are force-closed, and each
        // of those sees its stream end cleanly.
        expect(
            report.force_closed == self.ignoring,
            format!(
                "force-closed {} streams, but {} clients ignored the notice",
                report.force_closed, self.ignoring
            ),
        );
        expect(
            report.closed == n - self.ignoring && self.closed_by_client == n - self.ignoring,
            format!(
                "closed within grace: {} (clients closed {}), expected {}",
                report.closed,
                self.closed_by_client,
                n - self.ignoring
            ),
        );
        expect(
            self.ended_by_server_after_notice == self.ignoring,
            format!(
                "{} ignoring clients saw a clean end, expected {}",
                self.ended_by_server_after_notice, self.ignoring
            ),
        );
        expect(
            self.late_503 + self.late_notice == args.late && calls == n,
            format!(
                "every request during the drain is rejected without reaching the service: \
                 {} + {} of {}, service called {calls} times for {n} clients; {:?}",
                self.late_503,
                self.late_notice,
                args.late,
                self.late_other.first()
            ),
        );
        if args.ignore_share < 0.05 {
            // The seed's success criteria, as stated.
            expect(
                report.closed * 100 >= report.in_flight * 95,
                format!(
                    "95%+ close within the grace period: {} of {}",
                    report.closed, report.in_flight
                ),
            );
            expect(
                report.force_closed * 100 < report.in_flight * 5,
                format!(
                    "< 5% force-closed: {} of {}",
                    report.force_closed, report.in_flight
                ),
            );
        } else {
            println!(
                "(--ignore-share {} >= 5%: the seed's closed/force-closed shares cannot hold by construction; exact counts checked instead)",
                args.ignore_share
            );
        }
        failures
    }
}

struct Setup {
    fds: u64,
    connect_time: Duration,
    open_before: usize,
}
