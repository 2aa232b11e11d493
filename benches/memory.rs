//! Benchmark 4, memory: bytes the layer adds per open stream.
//!
//! Each measurement starts a fresh server process (this executable, with
//! `MEMORY_SERVER` set) with or without the layer, reads its resident set
//! from `/proc/<pid>/statm`, opens N idle SSE streams to it from a client
//! swarm in a third process, and reads the resident set again. The rounds
//! alternate the two servers; the bytes added per stream are the difference
//! of the two medians of `(after - before) / N`.
//!
//! Both ways of serving an axum `Router` are measured, each against its own
//! bare server:
//!
//! - `into_make_service`: `axum::serve(listener, router.into_make_service())`
//!   builds the router's routes once;
//! - `serve(router)`: `axum::serve(listener, router)` builds them again for
//!   every connection (its `Service<IncomingStream>` calls `with_state`), so
//!   each connection keeps its own copies of every route's service, layers
//!   included.
//!
//! Run with: `cargo bench --bench memory` (`-- --streams N --rounds R`).

#[path = "../tests/common/mod.rs"]
mod common;

use axum::{Router, routing::get};
use common::{alloc, idle, median, swarm};
use std::{collections::BTreeMap, process::Stdio, time::Duration};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tower_graceful_sse::{Config, DrainHandle, GracefulBody};

/// Counts live heap bytes and blocks by requested size, so the server can
/// say exactly what it holds, beside what the kernel says it touched.
#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// The two ways of serving the router (see the module docs).
const MAKE: &str = "into_make_service";
const ROUTER: &str = "serve(router)";

/// The server process: prints its address, then serves until killed.
fn server_if_asked() {
    let Ok(variant) = std::env::var("MEMORY_SERVER") else {
        return;
    };
    swarm::raise_fd_limit(1 << 20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let handle = DrainHandle::new(Config::default());
        let mut app = Router::new().route("/events", get(idle));
        let (layer, serving) = variant.split_once(':').unwrap();
        if layer == "layer" {
            app = app.route_layer(handle.layer());
        }
        if serving == MAKE {
            let listener = common::listener(std::net::Ipv4Addr::LOCALHOST);
            println!("{}", listener.local_addr().unwrap());
            tokio::spawn(async move {
                axum::serve(listener, app.into_make_service())
                    .await
                    .unwrap()
            });
        } else {
            println!("{}", common::serve(app));
        }
        // One heap snapshot per line read on stdin.
        let mut stdin = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(_)) = stdin.next_line().await {
            println!("{}", alloc::snapshot());
        }
    });
    // Stdin closed: the parent is done with this server.
    std::process::exit(0);
}

fn rss_bytes(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf reads a constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

/// A heap snapshot: live bytes, and live blocks per size.
struct Heap {
    bytes: f64,
    blocks: BTreeMap<usize, f64>,
}

impl Heap {
    fn parse(line: &str) -> Self {
        let mut parts = line.split(' ');
        let bytes = parts.next().unwrap().parse().unwrap();
        let blocks = parts
            .map(|p| {
                let (size, n) = p.split_once(':').unwrap();
                (size.parse().unwrap(), n.parse().unwrap())
            })
            .collect();
        Self { bytes, blocks }
    }

    /// Per stream: `(self - before) / n`.
    fn per_stream(&self, before: &Heap, n: usize) -> Heap {
        let mut blocks = self.blocks.clone();
        for (size, k) in &before.blocks {
            *blocks.entry(*size).or_default() -= k;
        }
        blocks.values_mut().for_each(|k| *k /= n as f64);
        Heap {
            bytes: (self.bytes - before.bytes) / n as f64,
            blocks,
        }
    }
}

struct PerStream {
    rss: f64,
    heap: Heap,
}

/// Resident and heap bytes per open stream in a fresh server.
async fn per_stream(variant: &str, n: usize) -> PerStream {
    let mut server = tokio::process::Command::new(std::env::current_exe().unwrap())
        .env("MEMORY_SERVER", variant)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let addr = lines.next_line().await.unwrap().unwrap().parse().unwrap();
    let pid = server.id().unwrap();
    // Warm the server up with a few streams first, so that one-time costs
    // (thread stacks, the router, first allocations) are in `before`.
    let warm = swarm::Swarm::spawn(addr, "/events", 64, 0.0);
    drop(warm);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut stdin = server.stdin.take().unwrap();
    let mut heap = async || {
        stdin.write_all(b"heap\n").await.unwrap();
        Heap::parse(&lines.next_line().await.unwrap().unwrap())
    };
    let before = (rss_bytes(pid), heap().await);
    let mut clients = swarm::Swarm::spawn(addr, "/events", n, 0.0);
    assert_eq!(clients.ready().await, n);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = (rss_bytes(pid), heap().await);
    drop(clients);
    drop(server);
    PerStream {
        rss: (after.0 as f64 - before.0 as f64) / n as f64,
        heap: after.1.per_stream(&before.1, n),
    }
}

fn main() {
    swarm::worker_if_asked();
    server_if_asked();
    let mut streams = 10_000;
    let mut rounds = 5;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--streams" => streams = args.next().unwrap().parse().unwrap(),
            "--rounds" => rounds = args.next().unwrap().parse().unwrap(),
            _ => {} // `--bench`, passed by cargo bench
        }
    }
    swarm::need_fds(streams as u64 + 512);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let [make, router] = [MAKE, ROUTER].map(|serving| {
        let (bare, layer) = rt.block_on(measure(serving, streams, rounds));
        report(serving, streams, &bare, &layer)
    });
    println!(
        "\nthe bare server, {ROUTER} against {MAKE}: {:+.0} resident, {:+.0} heap bytes per connection",
        router.0 - make.0,
        router.1 - make.1
    );
    println!(
        "(for scale: size_of::<GracefulBody<axum::body::Body>>() = {} B)",
        size_of::<GracefulBody<axum::body::Body>>()
    );
}

/// `rounds` rounds of the bare and the layered server served the `serving`
/// way, alternating which goes first.
async fn measure(serving: &str, streams: usize, rounds: usize) -> (Vec<PerStream>, Vec<PerStream>) {
    let (mut bare, mut layer) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for k in 0..2 {
            if (round + k) % 2 == 0 {
                bare.push(per_stream(&format!("bare:{serving}"), streams).await);
            } else {
                layer.push(per_stream(&format!("layer:{serving}"), streams).await);
            }
        }
        let (b, l) = (&bare[round], &layer[round]);
        println!(
            "{serving} round {round}: resident bare {:.0} B/stream, layer {:.0} B/stream; \
             heap bare {:.0} B/stream, layer {:.0} B/stream",
            b.rss, l.rss, b.heap.bytes, l.heap.bytes
        );
    }
    (bare, layer)
}

/// Prints the medians; returns the bare server's resident and heap bytes per
/// stream.
fn report(serving: &str, streams: usize, bare: &[PerStream], layer: &[PerStream]) -> (f64, f64) {
    let rounds = bare.len();
    // Which blocks the layer adds, from the last round.
    let (b, l) = (&bare[rounds - 1].heap, &layer[rounds - 1].heap);
    println!("\nheap blocks added per stream by the layer (requested size: blocks per stream):");
    for (size, k) in &l.blocks {
        let d = k - b.blocks.get(size).copied().unwrap_or(0.0);
        if d.abs() >= 0.05 {
            println!("  <= {size:>4} B: {d:+.2}");
        }
    }
    let hb = median(bare.iter().map(|p| p.heap.bytes).collect());
    let hl = median(layer.iter().map(|p| p.heap.bytes).collect());
    let (b, l) = (
        median(bare.iter().map(|p| p.rss).collect()),
        median(layer.iter().map(|p| p.rss).collect()),
    );
    println!(
        "\n== memory, {serving}: resident bytes per open idle SSE stream, {streams} streams, median of {rounds} rounds =="
    );
    println!("without the layer {b:>10.0} B/stream");
    println!("with the layer    {l:>10.0} B/stream  ratio {:.3}", l / b);
    println!("added by the layer {:>9.0} B/stream", l - b);
    println!(
        "heap (requested bytes): without {hb:.0}, with {hl:.0}, added {:.0} B/stream",
        hl - hb
    );
    (b, hb)
}
