//! Benchmark 1, body overhead: polling a stream of small SSE frames through
//! `GracefulBody` versus polling the bare body, in the same run.
//!
//! Measured twice: by criterion, one variant for seconds after another, and
//! then paired (see `paired`), every variant in turn in each of 101 rounds.
//! The paired figures are the ones to compare: on a shared machine the
//! speed drifts over seconds, and criterion's runs give that drift to one
//! variant.
//!
//! Each poll is a call that is never inlined (`poll_called`), as a server's
//! is: inlined into the bench's loop, the figures hung on LLVM's inlining
//! (one more caller of the same poll took the layer's from +4 to +13 ns).
//! The test body itself is inlined into that call. Behind a pointer too (an
//! axum `Body`, through `black_box`), both sides paid a store-forwarding
//! stall inside the test body's own poll, 13 ns a frame (70 % of its
//! samples under `perf annotate`, one 16-byte load over the 8-byte stores
//! of the frame just cloned), which hid the layer's cost.
//!
//! Run with: `cargo bench --bench body`

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support.rs"]
mod support;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use http_body::{Body, Frame};
use std::{
    convert::Infallible,
    hint::black_box,
    pin::Pin,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};
use tower_graceful_sse::{Config, DrainHandle};

/// Frames per body: one iteration polls them all.
const FRAMES: usize = 1_000;

/// `left` clones of one frame. With `pending`, every other poll returns
/// `Pending` (after waking itself), as a live stream between events does.
struct Frames {
    frame: Bytes,
    left: usize,
    pending: bool,
    next_pending: bool,
}

impl Frames {
    /// `FRAMES` clones of `frame`, pending between them if `pending`.
    fn new(frame: &Bytes, pending: bool) -> Self {
        Self {
            frame: frame.clone(),
            left: FRAMES,
            pending,
            next_pending: false,
        }
    }
}

/// The cases measured: frame size, and pending between frames.
const CASES: [(usize, bool); 3] = [(20, false), (1024, false), (20, true)];

/// A case's name in the output: `20B`, `20B+pending`.
fn case_name(size: usize, pending: bool) -> String {
    format!("{size}B{}", if pending { "+pending" } else { "" })
}

/// The variants, each against the first: the bare body, and the body
/// through the layer as an event stream and as anything else.
const VARIANTS: [(&str, Option<&str>); 3] = [
    ("bare", None),
    ("graceful_sse", Some("text/event-stream")),
    ("graceful_plain", Some("text/plain")),
];

/// Drains one body of a variant (see [`VARIANTS`]).
fn drain_variant<B>(handle: &DrainHandle, content_type: Option<&'static str>, body: B) -> Duration
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match content_type {
        None => drain_body(body),
        Some(content_type) => drain_body(common::through_layer(handle, content_type, body)),
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        if self.pending {
            self.next_pending = !self.next_pending;
            if self.next_pending {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(self.frame.clone()))))
    }
}

/// What one poll of a `B` gives.
type Polled<B> = Poll<Option<Result<Frame<<B as Body>::Data>, <B as Body>::Error>>>;

/// Polls every frame of `body` with a no-op waker, each poll a call to
/// [`poll_called`]; returns the time it took.
fn drain_body<B: Body<Data = Bytes>>(body: B) -> Duration {
    /// One poll, never inlined: as a server polls a body, through a call whose
    /// result comes back through memory, not inlined into the loop that polls.
    #[inline(never)]
    fn poll_called<B: Body>(body: Pin<&mut B>, cx: &mut Context<'_>) -> Polled<B> {
        body.poll_frame(cx)
    }

    let mut body = std::pin::pin!(body);
    let mut cx = Context::from_waker(Waker::noop());
    let start = Instant::now();
    let mut bytes = 0;
    loop {
        match poll_called(body.as_mut(), &mut cx) {
            Poll::Ready(Some(Ok(frame))) => bytes += frame.into_data().map_or(0, |d| d.len()),
            Poll::Ready(_) => break,
            Poll::Pending => {}
        }
    }
    let elapsed = start.elapsed();
    black_box(bytes);
    elapsed
}

fn event(size: usize) -> Bytes {
    // `data: xxx…\n\n`, `size` bytes in all, as axum frames one event.
    let mut e = b"data: ".to_vec();
    e.resize(size - 2, b'x');
    e.extend_from_slice(b"\n\n");
    // Static, so that cloning a frame costs no reference count in either body.
    Bytes::from_static(e.leak())
}

fn body_overhead(c: &mut Criterion) {
    let mut group = c.benchmark_group("body_overhead");
    group.throughput(Throughput::Elements(FRAMES as u64));
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    let handle = DrainHandle::new(Config::default());
    for (size, pending) in CASES {
        let frame = event(size);
        let frames = || Frames::new(&frame, pending);
        compare(&mut group, &handle, &case_name(size, pending), frames);
    }
    group.finish();
}

fn compare<B>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    handle: &DrainHandle,
    param: &str,
    frames: impl Fn() -> B,
) where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    for (name, content_type) in VARIANTS {
        let id = format!("{name}/{param}");
        group.bench_function(BenchmarkId::new(name, param), |b| {
            b.iter_custom(|iters| {
                support::timed(&id, iters, || drain_variant(handle, content_type, frames()))
            })
        });
    }
}

criterion_group!(benches, body_overhead);

/// Rounds of the paired comparison, and bodies drained per variant a round.
const ROUNDS: usize = 101;
const REPS: usize = 40;

/// The same comparison, paired: each round drains every variant in turn (in
/// an order that rotates), so that the machine's noise falls on all of them
/// alike, and the layer's cost is the median of the per-round differences.
/// criterion's runs, one variant for seconds after another, put the noise
/// of one moment in one variant only.
fn paired(handle: &DrainHandle) {
    println!(
        "\n== body overhead, paired: {ROUNDS} rounds, each drains every variant {REPS} times in turn =="
    );
    for (size, pending) in CASES {
        let frame = event(size);
        let frames = || Frames::new(&frame, pending);
        paired_rows(handle, &case_name(size, pending), frames);
    }
}

fn paired_rows<B>(handle: &DrainHandle, param: &str, frames: impl Fn() -> B)
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let run = |v: usize| drain_variant(handle, VARIANTS[v].1, frames());
    let per = (REPS * FRAMES) as f64;
    // A second of warm-up first: the machine's clock, caches and allocator
    // settle, as criterion's warm-up lets them.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(1) {
        (0..VARIANTS.len()).for_each(|v| {
            black_box(run(v));
        });
    }
    let mut ns: [Vec<f64>; 3] = Default::default();
    for round in 0..ROUNDS {
        for k in 0..3 {
            let v = (round + k) % 3;
            let total: Duration = (0..REPS).map(|_| run(v)).sum();
            ns[v].push(total.as_nanos() as f64 / per);
        }
    }
    let bare = common::median(ns[0].clone());
    for (v, (name, _)) in VARIANTS.iter().enumerate().skip(1) {
        let added: Vec<f64> = ns[v].iter().zip(&ns[0]).map(|(c, b)| c - b).collect();
        let ratio: Vec<f64> = ns[v].iter().zip(&ns[0]).map(|(c, b)| c / b).collect();
        println!(
            "{:<34} {:>6.2} ns/frame  vs bare {bare:>6.2}  added {:>+6.2} ns/frame  ratio {:.3}",
            format!("{name}/{param}"),
            common::median(ns[v].clone()),
            common::median(added),
            common::median(ratio),
        );
    }
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    let per = FRAMES as f64;
    let mut rows = Vec::new();
    let ids: Vec<(String, String)> = CASES
        .iter()
        .flat_map(|&(size, pending)| {
            let case = case_name(size, pending);
            VARIANTS[1..]
                .iter()
                .map(move |(name, _)| (format!("bare/{case}"), format!("{name}/{case}")))
        })
        .collect();
    for (b, c) in &ids {
        rows.push((b.as_str(), c.as_str(), per, "ns/frame"));
    }
    support::print_ratios("body overhead", &rows);
    paired(&DrainHandle::new(Config::default()));
}
