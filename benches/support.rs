//! Shared by the criterion bench binaries (each includes it with `#[path]`,
//! which brings `tests/common` as `support::common`): a record of every sample criterion
//! takes, so each binary can print its medians and their ratio to the
//! baseline measured in the same run.
#![allow(dead_code)]

#[path = "../tests/common/mod.rs"]
pub mod common;

use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, Instant},
};

static SAMPLES: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());

/// Records one sample of `iters` iterations that took `elapsed` in all, as
/// nanoseconds per iteration, under `id`.
pub fn record(id: &str, iters: u64, elapsed: Duration) -> Duration {
    SAMPLES
        .lock()
        .unwrap()
        .entry(id.to_owned())
        .or_default()
        .push(elapsed.as_nanos() as f64 / iters.max(1) as f64);
    elapsed
}

/// Times `f` once per iteration, summing only the part `f` reports, records
/// the sample and returns the total for criterion.
pub fn timed(id: &str, iters: u64, mut f: impl FnMut() -> Duration) -> Duration {
    let total: Duration = (0..iters).map(|_| f()).sum();
    record(id, iters, total)
}

/// Times a whole closure.
pub fn stopwatch(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

/// The median of the samples recorded under `id`, in ns per iteration.
pub fn median(id: &str) -> Option<f64> {
    let samples = SAMPLES.lock().unwrap();
    let v = samples.get(id).filter(|v| !v.is_empty())?;
    Some(common::median(v.clone()))
}

/// Prints one row per `(baseline, candidate, per, unit)`: both medians (ns per
/// iteration divided by `per`) and candidate / baseline.
pub fn print_ratios(title: &str, rows: &[(&str, &str, f64, &str)]) {
    println!("\n== {title}: medians of the samples above, same run ==");
    for &(base, cand, per, unit) in rows {
        match (median(base), median(cand)) {
            (Some(b), Some(c)) => println!(
                "{cand:<40} {:>12.2} {unit}  vs {base:<32} {:>12.2} {unit}  ratio {:.3}",
                c / per,
                b / per,
                c / b
            ),
            _ => println!("{cand}: not run (filtered out?)"),
        }
    }
}
