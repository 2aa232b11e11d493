//! Benchmark 4, memory: bytes the layer adds per open stream.
//!
//! Each measurement starts a fresh server process (this executable, with
//! `MEMORY_SERVER` set) with or without the layer, reads its resident set
//! from `/proc/<pid>/statm`, opens N idle SSE streams to it from a client
//! swarm in a third process, and reads the resident set again. The rounds
//! alternate the two servers; the bytes added per stream are the difference
//! of the two medians of `(after - before) / N`.
//!
//! Run with: `cargo bench --bench memory` (`-- --streams N --rounds R`).

#[path = "../tests/common/swarm.rs"]
mod swarm;

use axum::{
    Router,
    response::sse::{Event, Sse},
    routing::get,
};
use futures_util::{
    StreamExt,
    stream::{self, BoxStream},
};
use std::{convert::Infallible, process::Stdio, time::Duration};
use tokio::io::{AsyncBufReadExt, BufReader};
use tower_graceful_sse::{Config, DrainHandle, GracefulBody};

async fn idle() -> Sse<BoxStream<'static, Result<Event, Infallible>>> {
    Sse::new(
        stream::once(async { Ok(Event::default().event("hello").data("hi")) })
            .chain(stream::pending())
            .boxed(),
    )
}

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
        if variant == "layer" {
            app = app.route_layer(handle.layer());
        }
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(4096).unwrap();
        println!("{}", listener.local_addr().unwrap());
        axum::serve(listener, app).await.unwrap();
    });
}

fn rss_bytes(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf reads a constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

/// Resident bytes per open stream in a fresh server.
async fn per_stream(variant: &str, n: usize) -> f64 {
    let mut server = tokio::process::Command::new(std::env::current_exe().unwrap())
        .env("MEMORY_SERVER", variant)
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
    let before = rss_bytes(pid);
    let mut clients = swarm::Swarm::spawn(addr, "/events", n, 0.0);
    assert_eq!(clients.ready().await, n);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rss_bytes(pid);
    drop(clients);
    drop(server);
    (after as f64 - before as f64) / n as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
    let (mut bare, mut layer) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for round in 0..rounds {
            for k in 0..2 {
                if (round + k) % 2 == 0 {
                    bare.push(per_stream("bare", streams).await);
                } else {
                    layer.push(per_stream("layer", streams).await);
                }
            }
            println!(
                "round {round}: bare {:.0} B/stream, layer {:.0} B/stream",
                bare[round], layer[round]
            );
        }
    });
    let (b, l) = (median(bare), median(layer));
    println!(
        "\n== memory: resident bytes per open idle SSE stream, {streams} streams, median of {rounds} rounds =="
    );
    println!("without the layer {b:>10.0} B/stream");
    println!("with the layer    {l:>10.0} B/stream  ratio {:.3}", l / b);
    println!("added by the layer {:>9.0} B/stream", l - b);
    println!(
        "(for scale: size_of::<GracefulBody<axum::body::Body>>() = {} B)",
        size_of::<GracefulBody<axum::body::Body>>()
    );
}
