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
//! A fourth puts there the least a body of the layer's kind can do (`Least`
//! below): one phase load and, for each data chunk, a two-byte check for
//! the blank line that ends an event; its drain path, out of line, returns an
//! error. It is no usable body (no notice, no count, no wait for the drain),
//! only the cost under which no drain-aware body on an axum route can go:
//! its drain path returning a value is what makes it dearer than a
//! forwarding body, because the result of the two paths then meets in one
//! place before axum's `MapErr` copies it out (86 instructions for the poll
//! against 35, by callgrind's per-function counts; 50 with a drain path
//! that panics instead, which no real body can do).
//!
//! The count is exact for one process layout, not across them: glibc's
//! malloc takes different paths per event (consolidating, unlinking) with
//! the heap's layout, which moves with anything allocated at start, down to
//! the length of the executable's path. The same build measured the bare
//! endpoint from 6,372 to 6,445 instructions per event, and the ratio from
//! +1.2 % to +2.7 %, with nothing changed but that path. So each variant
//! runs under several layouts (the executable through symlinks of
//! different path lengths), and the bench reports the median and the range
//! of the per-layout ratios. Within one layout, runs repeat to a few
//! instructions.
//!
//! With glibc's tcache off (`GLIBC_TUNABLES=glibc.malloc.tcache_count=0`
//! in the children), every free and malloc takes the allocator's general
//! path, and the spread by layout nearly goes: the bare endpoint measured
//! 6,537 to 6,553 instructions per event in 8 layouts, against 6,416 to
//! 6,447 with it on. The layer allocates nothing per event, so a pass with
//! the tcache off is the closest to its own cost; the first pass, with the
//! tcache on, is what a server runs. The live stream is measured with the
//! tcache off (with it on, its ratio moved from +1.9 % to +2.7 % between
//! runs of one build), and its spread by layout stays wide even so (-0.6 to
//! +5.2 % in one run): read its median roughly.
//!
//! Two kinds of stream: `bulk`, every event ready at once, so the body never
//! goes pending; and `live`, which yields to the runtime before each event,
//! as a stream fed by a channel or a timer does: each event is then two
//! polls of the body, one pending, and a write of its own.
//!
//! Run with: `cargo bench --bench instructions` (needs `valgrind`; about
//! four minutes).

#[path = "../tests/common/mod.rs"]
mod common;

use axum::{
    Router,
    response::sse::{Event, Sse},
    routing::get,
};
use bytes::Bytes;
use common::median;
use futures_util::{StreamExt, stream};
use http_body_util::BodyExt;
use std::{
    convert::Infallible,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};
use tower_graceful_sse::{BoxError, Config, DrainHandle};

/// The event streamed: 40 bytes on the wire, as in `benches/loopback.rs`.
const DATA: &str = r#"{"seq":1234,"status":"running"}"#;
const EVENT_LEN: usize = "data: \n\n".len() + DATA.len();
const N1: usize = 2_000;
const N2: usize = 12_000;
/// Process layouts: the executable's path through symlinks this many bytes
/// long (see the module docs).
const LAYOUTS: [usize; 8] = [1, 20, 40, 60, 80, 100, 120, 140];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, child, layer, n, stream] = &args[..] {
        if child == "--child" {
            return serve_and_read(layer, n.parse().unwrap(), stream == "live");
        }
    }
    if Command::new("valgrind").arg("--version").output().is_err() {
        eprintln!("instructions: valgrind is not installed; skipping");
        return;
    }
    for (stream, tcache) in [("bulk", true), ("bulk", false), ("live", false)] {
        measure(stream, tcache);
    }
}

/// Every variant under every layout, for one kind of stream: `bulk`, every
/// event ready at once (the body never goes pending), or `live`, each event
/// a moment later (the stream, and so the body, goes pending before each).
/// Without `tcache`, glibc's per-thread cache of freed blocks is off in the
/// children (see the module docs).
fn measure(stream: &str, tcache: bool) {
    let malloc = if tcache { "" } else { ", glibc's tcache off" };
    println!("\n{stream} stream{malloc}:");
    let dir = std::env::temp_dir().join(format!("instructions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut ratios: [Vec<f64>; 4] = Default::default();
    let mut counts: [Vec<f64>; 4] = Default::default();
    for len in LAYOUTS {
        let link = dir.join("x".repeat(len));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&exe, &link).unwrap();
        let per_event = |layer: &str| {
            (count(&link, layer, N2, stream, tcache) - count(&link, layer, N1, stream, tcache))
                as f64
                / (N2 - N1) as f64
        };
        let [bare, forward, least, layered] =
            ["without", "forward", "least", "with"].map(per_event);
        let ratio = [
            pct(forward, bare),
            pct(least, bare),
            pct(layered, bare),
            pct(layered, forward),
        ];
        println!(
            "layout {len:>3}: bare {bare:.0}, forwarding {forward:.0} ({:+.2} %), least {least:.0} ({:+.2} %), with the layer {layered:.0} ({:+.2} %; {:+.2} % above forwarding)",
            ratio[0], ratio[1], ratio[2], ratio[3]
        );
        for (all, x) in counts.iter_mut().zip([bare, forward, least, layered]) {
            all.push(x);
        }
        for (all, x) in ratios.iter_mut().zip(ratio) {
            all.push(x);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let range = |v: &[f64]| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        format!("{lo:+.2} to {hi:+.2}")
    };
    let [bare, forward, least, layered] = counts.map(median);
    let spread = ratios.each_ref().map(|v| range(v));
    let [floor, bound, total, own] = ratios.map(median);
    println!(
        "\n== end to end, {stream} stream{malloc}, instructions per event (callgrind), {N2} - {N1} events, medians of {} layouts ==",
        LAYOUTS.len()
    );
    println!("bare endpoint      {bare:>10.0} instructions/event");
    println!(
        "forwarding layer   {forward:>10.0} instructions/event  ({floor:+.2} % of bare, {} by layout: the floor of any body layer on an axum route)",
        spread[0]
    );
    println!(
        "least drain-aware  {least:>10.0} instructions/event  ({bound:+.2} % of bare, {} by layout: the least a body of the layer's kind costs)",
        spread[1]
    );
    println!("with the layer     {layered:>10.0} instructions/event");
    println!(
        "ratio              {:>10.4}  ({total:+.2} %, {} by layout; {own:+.2} % above the forwarding layer, {} by layout)",
        1.0 + total / 100.0,
        spread[2],
        spread[3]
    );
}

fn pct(a: f64, b: f64) -> f64 {
    (a / b - 1.0) * 100.0
}

/// Total instructions of one child run, from callgrind's summary.
fn count(exe: &std::path::Path, layer: &str, n: usize, stream: &str, tcache: bool) -> u64 {
    let mut valgrind = Command::new("valgrind");
    if !tcache {
        valgrind.env("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0");
    }
    let out = valgrind
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(exe)
        .args(["--child", layer, &n.to_string(), stream])
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

pin_project_lite::pin_project! {
    /// The least a drain-aware body does (see the module docs): the phase,
    /// here a bare atomic, and whether the last chunk ended an event.
    struct Least<B> {
        #[pin]
        inner: B,
        phase: Arc<AtomicU64>,
        at_boundary: bool,
    }
}

impl<B> http_body::Body for Least<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if this.phase.load(Ordering::Acquire) != 0 {
            return draining();
        }
        let polled = this.inner.poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                *this.at_boundary = data.ends_with(b"\n\n");
            }
        }
        polled.map(|frame| frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `Least`'s drain path: never taken here, but it returns, as a real one
/// must.
#[cold]
#[inline(never)]
fn draining() -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
    std::task::Poll::Ready(Some(Err("drained".into())))
}

/// The child: one runtime thread, one server, one client, `n` events;
/// `layer` is `without`, `forward`, `least` or `with`. A `live` stream yields to the
/// runtime before each event, as one fed by a channel or a timer does: the
/// server's body goes pending, and hyper writes what it has, each time.
fn serve_and_read(layer: &str, n: usize, live: bool) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let handle = DrainHandle::new(Config::default());
        let events =
            move || stream::iter((0..n).map(|_| Ok::<_, Infallible>(Event::default().data(DATA))));
        // Two handlers, not one stream for both: the bulk stream stays what
        // it was before the live one was added.
        let app = if live {
            Router::new().route(
                "/",
                get(move || async move {
                    Sse::new(events().then(|event| async move {
                        tokio::task::yield_now().await;
                        event
                    }))
                }),
            )
        } else {
            Router::new().route("/", get(move || async move { Sse::new(events()) }))
        };
        let app = match layer {
            "with" => app.layer(handle.layer()),
            "least" => {
                let phase = Arc::new(AtomicU64::new(0));
                app.layer(axum::middleware::map_response(
                    move |res: axum::response::Response| {
                        let phase = phase.clone();
                        async move {
                            res.map(|inner| {
                                axum::body::Body::new(Least {
                                    inner,
                                    phase,
                                    at_boundary: true,
                                })
                            })
                        }
                    },
                ))
            }
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
