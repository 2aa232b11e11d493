//! Benchmarks 2 and 3, over loopback, each against a baseline measured in the
//! same run:
//!
//! - `end_to_end`: events per second from an axum SSE endpoint to a client,
//!   with and without the layer, same process; then an interleaved A/B run
//!   whose per-round ratios give a second, noise-resistant ratio;
//! - `drain_fanout`: from just before `drain()` until the last of N open
//!   streams has the notice in its client, for N = 100, 1,000, 10,000; beside
//!   it the floor, the same N sockets each written one frame of the same size
//!   with no layer. The clients run in a child process (see
//!   `tests/common/swarm.rs`), and take their time on the same clock.
//!
//! Run with: `cargo bench --bench loopback`

#[path = "support.rs"]
mod support;

use axum::{
    Router,
    response::sse::{Event, Sse},
    routing::get,
};
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group};
use futures_util::{
    StreamExt,
    stream::{self, BoxStream},
};
use support::common::{self, idle, swarm};

use http_body_util::BodyExt;
use std::{
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    sync::atomic::{AtomicU8, Ordering},
    time::{Duration, Instant},
};
use tokio::{runtime::Runtime, sync::watch};
use tower_graceful_sse::{Config, DrainHandle};

type SseStream = Sse<BoxStream<'static, Result<Event, Infallible>>>;

/// The event the throughput benchmark streams: 40 bytes on the wire.
const DATA: &str = r#"{"seq":1234,"status":"running"}"#;
const EVENT_LEN: usize = "data: \n\n".len() + DATA.len();

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Serves `app` on `127.0.0.<host>`: a fresh address per fan-out iteration
/// keeps the 4-tuples of closed connections apart.
fn serve(app: Router, host: u8) -> SocketAddr {
    common::serve_on(app, Ipv4Addr::new(127, 0, 0, host))
}

/// An endless stream of small events, as fast as the client reads them.
async fn firehose() -> SseStream {
    Sse::new(stream::repeat_with(|| Ok(Event::default().data(DATA))).boxed())
}

/// One client reading an endless event stream, counting events by bytes.
struct Reader {
    body: hyper::body::Incoming,
    carry: usize,
    _conn: common::Conn,
}

impl Reader {
    async fn open(addr: SocketAddr) -> Self {
        let (res, conn) = common::request(addr, "/events", "text/event-stream").await;
        assert_eq!(res.status(), 200);
        Self {
            body: res.into_body(),
            carry: 0,
            _conn: conn,
        }
    }

    /// Reads `events` whole events.
    async fn read(&mut self, events: u64) {
        let want = events as usize * EVENT_LEN;
        while self.carry < want {
            let frame = self.body.frame().await.unwrap().unwrap();
            self.carry += frame.into_data().map_or(0, |d| d.len());
        }
        self.carry -= want;
    }
}

fn end_to_end(c: &mut Criterion) {
    let rt = runtime();
    let handle = DrainHandle::new(Config::default());
    let (mut bare, mut layered) = rt.block_on(async {
        let bare = serve(Router::new().route("/events", get(firehose)), 1);
        let layered = serve(
            Router::new()
                .route("/events", get(firehose))
                .route_layer(handle.layer()),
            1,
        );
        (Reader::open(bare).await, Reader::open(layered).await)
    });

    let mut group = c.benchmark_group("end_to_end");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(4));
    group.sample_size(30);
    for (name, reader) in [("bare", &mut bare), ("layer", &mut layered)] {
        group.bench_function(BenchmarkId::new("events", name), |b| {
            b.iter_custom(|iters| {
                let elapsed = rt.block_on(async {
                    let start = Instant::now();
                    reader.read(iters).await;
                    start.elapsed()
                });
                support::record(&format!("end_to_end/{name}"), iters, elapsed)
            })
        });
    }
    group.finish();

    // Interleaved A/B: rounds of a fixed number of events on each, in
    // alternating order, so both see the same machine within a round.
    const ROUNDS: usize = 21;
    const EVENTS: u64 = 100_000;
    let mut ratios = Vec::with_capacity(ROUNDS);
    rt.block_on(async {
        for round in 0..ROUNDS {
            let mut t = [Duration::ZERO; 2];
            for k in 0..2 {
                let which = (round + k) % 2;
                let reader = if which == 0 { &mut bare } else { &mut layered };
                let start = Instant::now();
                reader.read(EVENTS).await;
                t[which] = start.elapsed();
                let name = ["bare", "layer"][which];
                support::record(&format!("end_to_end_ab/{name}"), EVENTS, t[which]);
            }
            ratios.push(t[1].as_secs_f64() / t[0].as_secs_f64());
        }
    });
    ratios.sort_by(f64::total_cmp);
    println!(
        "\nend_to_end interleaved A/B: {ROUNDS} rounds of {EVENTS} events each way; \
         layer/bare time per event: median {:.4}, quartiles {:.4}..{:.4}",
        common::median(ratios.clone()),
        ratios[ROUNDS / 4],
        ratios[3 * ROUNDS / 4]
    );
    drop(handle);
}

/// The floor's stream: `hello`, then one frame of the notice's size when
/// `go` changes, then nothing.
fn floor_app(go: watch::Receiver<()>, frame: String) -> Router {
    Router::new().route(
        "/events",
        get(move || {
            let mut go = go.clone();
            let frame = frame.clone();
            async move {
                let notice = async move {
                    let _ = go.changed().await;
                    Ok::<_, Infallible>(
                        Event::default()
                            .event("shutdown")
                            .retry(Duration::from_secs(30))
                            .data(frame),
                    )
                };
                let hello = stream::once(async { Ok(Event::default().event("hello").data("hi")) });
                Sse::new(
                    hello
                        .chain(stream::once(notice))
                        .chain(stream::pending())
                        .boxed(),
                )
            }
        }),
    )
}

/// A loopback address not used recently.
fn next_host() -> u8 {
    static HOST: AtomicU8 = AtomicU8::new(2);
    let h = HOST.fetch_add(1, Ordering::Relaxed);
    if h >= 250 {
        HOST.store(2, Ordering::Relaxed);
    }
    h.clamp(2, 250)
}

/// Opens `n` streams, starts the trigger, and returns the time from just
/// before the trigger until the last client had the notice.
async fn fan_out(n: usize, with_layer: bool) -> Duration {
    let json = r#"{"type":"shutdown","message":"Server restarting, please reconnect in 30s","timestamp":"2025-01-02T13:00:00.000Z","reconnect_delay":30}"#;
    let handle = DrainHandle::new(Config::default());
    let (go_tx, go_rx) = watch::channel(());
    let app = if with_layer {
        Router::new()
            .route("/events", get(idle))
            .route_layer(handle.layer())
    } else {
        floor_app(go_rx, json.to_owned())
    };
    let addr = serve(app, next_host());
    let mut clients = swarm::Swarm::spawn(addr, "/events", n, 0.0);
    assert_eq!(clients.ready().await, n, "every client connected");
    let t0 = swarm::monotonic_ns();
    if with_layer {
        drop(handle.drain());
    } else {
        go_tx.send(()).unwrap();
    }
    let outcomes = clients.finish(Duration::from_secs(60)).await;
    let last = outcomes
        .iter()
        .map(|o| o.notice_ns.expect("every client had the notice"))
        .max()
        .unwrap();
    Duration::from_nanos(last - t0)
}

fn drain_fanout(c: &mut Criterion) {
    let rt = runtime();
    swarm::need_fds(10_000 + 512);
    let mut group = c.benchmark_group("drain_fanout");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(1));
    group.measurement_time(Duration::from_millis(1));
    for n in [100, 1_000, 10_000] {
        for (name, with_layer) in [("floor", false), ("drain", true)] {
            let id = format!("drain_fanout/{name}/{n}");
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter_custom(|iters| {
                    support::timed(&id, iters, || rt.block_on(fan_out(n, with_layer)))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, end_to_end, drain_fanout);

fn main() {
    swarm::worker_if_asked();
    benches();
    Criterion::default().configure_from_args().final_summary();
    support::print_ratios(
        "end to end: time per event, layer / bare (overhead = ratio - 1)",
        &[
            ("end_to_end/bare", "end_to_end/layer", 1.0, "ns/event"),
            ("end_to_end_ab/bare", "end_to_end_ab/layer", 1.0, "ns/event"),
        ],
    );
    let rows: Vec<(String, String)> = [100, 1_000, 10_000]
        .iter()
        .map(|n| {
            (
                format!("drain_fanout/floor/{n}"),
                format!("drain_fanout/drain/{n}"),
            )
        })
        .collect();
    let rows: Vec<_> = rows
        .iter()
        .map(|(b, c)| (b.as_str(), c.as_str(), 1e6, "ms"))
        .collect();
    support::print_ratios("drain fan-out: drain() to the last notice", &rows);
}
