//! Benchmark 2 again, counted in instructions instead of seconds, so that a
//! 2 % difference can be resolved on a noisy machine.
//!
//! Each measurement is a child process run under valgrind's callgrind: one
//! single-threaded runtime serves an axum SSE endpoint of N events on loopback
//! (with or without the layer) and reads it back with a hyper client, every
//! byte checked. The cost per event is `(I(N2) - I(N1)) / (N2 - N1)`, which
//! cancels the start-up cost; the ratio of the two costs is the layer's
//! end-to-end overhead (server and client together, as the wall-clock
//! benchmark measures it).
//!
//! A third endpoint puts the thinnest body layer there is on the route: one
//! that wraps the body and forwards every call (`Forward` below). axum boxes
//! any layered body a second time, so this is the floor under any body
//! middleware on an axum route, ours included, and the bench reports the
//! layer's cost above it too.
//!
//! Run with: `cargo bench --bench instructions` (needs `valgrind`).

#[path = "../tests/common/mod.rs"]
mod common;

use axum::{
    Router,
    response::sse::{Event, Sse},
    routing::get,
};
use bytes::Bytes;
use common::median;
use futures_util::stream;
use http_body_util::BodyExt;
use std::{convert::Infallible, process::Command};
use tower_graceful_sse::{Config, DrainHandle};

/// The event streamed: 40 bytes on the wire, as in `benches/loopback.rs`.
const DATA: &str = r#"{"seq":1234,"status":"running"}"#;
const EVENT_LEN: usize = "data: \n\n".len() + DATA.len();
const N1: usize = 2_000;
const N2: usize = 12_000;
const ROUNDS: usize = 3;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, child, layer, n] = &args[..] {
        if child == "--child" {
            return serve_and_read(layer, n.parse().unwrap());
        }
    }
    if Command::new("valgrind").arg("--version").output().is_err() {
        eprintln!("instructions: valgrind is not installed; skipping");
        return;
    }
    let per_event = |layer: &str| -> Vec<f64> {
        (0..ROUNDS)
            .map(|_| (count(layer, N2) - count(layer, N1)) as f64 / (N2 - N1) as f64)
            .collect()
    };
    // Alternate, so that whatever drifts affects all alike.
    let (mut bare, mut forward, mut layered) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        bare.extend(per_event("without"));
        forward.extend(per_event("forward"));
        layered.extend(per_event("with"));
    }
    let (bare, forward, layered) = (median(bare), median(forward), median(layered));
    let pct = |a: f64, b: f64| (a / b - 1.0) * 100.0;
    println!("\n== end to end, instructions per event (callgrind), {N2} - {N1} events ==");
    println!("bare endpoint      {bare:>10.0} instructions/event");
    println!(
        "forwarding layer   {forward:>10.0} instructions/event  ({:+.2} % of bare: the floor of any body layer on an axum route)",
        pct(forward, bare)
    );
    println!("with the layer     {layered:>10.0} instructions/event");
    println!(
        "ratio              {:>10.4}  ({:+.2} %; {:+.2} % above the forwarding layer)",
        layered / bare,
        pct(layered, bare),
        pct(layered, forward)
    );
}

/// Total instructions of one child run, from callgrind's summary.
fn count(layer: &str, n: usize) -> u64 {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(exe)
        .args(["--child", layer, &n.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let collected = stderr
        .lines()
        .find_map(|l| l.split("Collected : ").nth(1))
        .unwrap_or_else(|| panic!("no callgrind summary in:\n{stderr}"));
    collected.trim().parse().unwrap()
}

pin_project_lite::pin_project! {
    /// A body that forwards every call to the one it wraps.
    struct Forward<B> {
        #[pin]
        inner: B,
    }
}

impl<B: http_body::Body> http_body::Body for Forward<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The child: one runtime thread, one server, one client, `n` events;
/// `layer` is `without`, `forward` or `with`.
fn serve_and_read(layer: &str, n: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let handle = DrainHandle::new(Config::default());
        let app = Router::new().route(
            "/",
            get(move || async move {
                Sse::new(stream::iter(
                    (0..n).map(|_| Ok::<_, Infallible>(Event::default().data(DATA))),
                ))
            }),
        );
        let app = match layer {
            "with" => app.layer(handle.layer()),
            "forward" => app.layer(axum::middleware::map_response(
                |res: axum::response::Response| async move {
                    res.map(|inner| axum::body::Body::new(Forward { inner }))
                },
            )),
            _ => app,
        };
        let addr = common::serve(app);
        let (res, _conn) = common::request(addr, "/", "text/event-stream").await;
        let mut body = res.into_body();
        let mut bytes = 0;
        while let Some(frame) = body.frame().await {
            bytes += frame.unwrap().data_ref().map_or(0, Bytes::len);
        }
        assert_eq!(bytes, n * EVENT_LEN, "every event read back");
    });
}
