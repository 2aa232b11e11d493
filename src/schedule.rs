//! The schedule of notices, fixed once when the drain starts: each notice's
//! own reconnect delay, and each stream's moment in the notice window.
//!
//! Nothing here runs before the drain. A stream draws its moment when it first
//! sees the drain, and its delay when its notice goes out, each from an index
//! taken from a counter that only the drain touches, hashed with the drain's
//! seed (splitmix64): no per-stream state before the drain, no lock, and a
//! seeded drain gives the same values in the same order.

use crate::{Config, DrainPriority, config::whole_seconds_up, sse::NoticeFrame};
use bytes::Bytes;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// What the three draws are for: each index hashes differently for each.
#[derive(Clone, Copy)]
#[repr(u64)]
pub(crate) enum Draw {
    /// A stream's moment in the window.
    Slot = 1,
    /// A notice's reconnect delay.
    Notice = 2,
    /// A rejection's delay (`Retry-After`, or the notice it carries).
    Rejection = 3,
}

/// The drain's schedule, made before `DRAINING` is set.
pub(crate) struct Plan {
    /// When the drain started: the window and the report count from here.
    pub(crate) started: Instant,
    seed: u64,
    base: Duration,
    /// The spread of the delays: the jitter, or `open / rate`.
    jitter_ms: u64,
    /// With a reconnect rate, the open streams: the window is cut into this
    /// many slots of `1 / rate`, one per notice, so no second of it gets
    /// more than `rate`; zero with the jitter, where delays are drawn
    /// independently.
    slots: usize,
    /// With a reconnect rate, one slot, `1 / rate`, in milliseconds; zero
    /// without one.
    slot_ms: f64,
    frame: NoticeFrame,
    /// Each priority's band of the window: start and width.
    bands: [(Duration, Duration); 3],
}

impl Plan {
    /// `open` is the number of open SSE streams of each priority: with a
    /// [reconnect rate](Config::reconnect_rate), their sum sizes the spread.
    pub(crate) fn new(
        config: &Config,
        open: [usize; 3],
        started: Instant,
        now: SystemTime,
    ) -> Self {
        let open_streams: usize = open.iter().sum();
        Self {
            slots: if config.reconnect_rate.is_some() {
                open_streams
            } else {
                0
            },
            slot_ms: config.reconnect_rate.map_or(0.0, |rate| 1000.0 / rate),
            started,
            seed: config.seed.unwrap_or_else(random_seed),
            base: whole_millis_up(config.reconnect_delay),
            jitter_ms: u64::try_from(spread(config, open_streams).as_millis())
                .unwrap_or(u64::MAX - 1),
            frame: NoticeFrame::new(
                config.message.as_deref(),
                whole_millis_up(config.reconnect_delay),
                now,
            ),
            bands: bands(config.notice_window, open),
        }
    }

    /// How far past the base delay the delays spread: the jitter, or
    /// `open / rate`, in whole milliseconds.
    pub(crate) fn window(&self) -> Duration {
        Duration::from_millis(self.jitter_ms)
    }

    /// The reconnect delay of draw `index`, in whole milliseconds over
    /// `base ..= base + window`: uniform with the jitter; with a rate, at a
    /// uniform moment within the `index`th slot of `1 / rate` (counting again
    /// from the first past the last slot), so that the delays fill the window
    /// evenly and no second of it gets more than `rate` of one sequence. With
    /// a rate, rejection `index` takes slot `open + index`, past the window:
    /// the rate holds for the rejections too, however few streams are open.
    pub(crate) fn delay(&self, draw: Draw, index: usize) -> Duration {
        if let (Draw::Rejection, true) = (draw, self.slot_ms > 0.0) {
            let at = (self.slots as f64 + index as f64 + fraction(self.hash(draw, index)))
                * self.slot_ms;
            // `as` saturates: a slot too far is `u64::MAX` milliseconds.
            return self.base.saturating_add(Duration::from_millis(at as u64));
        }
        if self.jitter_ms == 0 {
            return self.base;
        }
        let random = self.hash(draw, index);
        let extra = if self.slots == 0 {
            below(random, self.jitter_ms + 1)
        } else {
            let width = self.jitter_ms as f64 / self.slots as f64;
            let at = ((index % self.slots) as f64 + fraction(random)) * width;
            (at as u64).min(self.jitter_ms)
        };
        self.base.saturating_add(Duration::from_millis(extra))
    }

    /// The shutdown frame of draw `index`: the one shared frame without
    /// jitter, else the frame rendered with its own delay.
    pub(crate) fn frame(&self, draw: Draw, index: usize) -> Bytes {
        let delay = self.delay(draw, index);
        if delay == self.base {
            return self.frame.base().clone();
        }
        self.frame.render(delay)
    }

    /// The `Retry-After` of rejection `index`, in whole seconds rounded up.
    pub(crate) fn retry_after(&self, index: usize) -> u64 {
        whole_seconds_up(self.delay(Draw::Rejection, index))
    }

    /// The moment of slot draw `index` for a stream of `priority`, from the
    /// start of the drain, uniform within its priority's band; `None` without
    /// a window.
    pub(crate) fn slot(&self, priority: DrainPriority, index: usize) -> Option<Duration> {
        let (start, width) = self.bands[priority.index()];
        if start.is_zero() && width.is_zero() {
            return None;
        }
        let fraction = fraction(self.hash(Draw::Slot, index));
        Some(start.saturating_add(part(width, fraction)))
    }

    fn hash(&self, draw: Draw, index: usize) -> u64 {
        splitmix64(self.seed ^ splitmix64((draw as u64) << 56 ^ index as u64))
    }
}

/// 53 of `random`'s bits as a fraction in `[0, 1)`.
fn fraction(random: u64) -> f64 {
    (random >> 11) as f64 / (1u64 << 53) as f64
}

/// `d` rounded up to whole milliseconds, the unit of `retry:`, so that it and
/// the JSON and the message agree (a `d` too long for that stays as it is).
fn whole_millis_up(d: Duration) -> Duration {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).map_or(d, Duration::from_millis)
}

/// The spread of the reconnect delays: `open / rate` with a rate (rounded up
/// to whole milliseconds, so that no second gets more than `rate`), else the
/// fixed jitter.
fn spread(config: &Config, open: usize) -> Duration {
    match config.reconnect_rate {
        Some(rate) => {
            let millis = (open as f64 * 1000.0 / rate).ceil();
            Duration::try_from_secs_f64(millis / 1000.0).unwrap_or(Duration::MAX)
        }
        None => config.reconnect_jitter,
    }
}

/// Splits the window into one band per priority, lowest first, each as wide
/// as its share of the open streams: all `Normal` streams spread over the
/// whole window. With no stream counted (all still in their handler), the
/// whole window is `Normal`'s, lower priorities go at its start and higher
/// at its end.
fn bands(window: Duration, open: [usize; 3]) -> [(Duration, Duration); 3] {
    let total: usize = open.iter().sum();
    let weights = if total == 0 { [0, 1, 0] } else { open };
    let total = weights.iter().sum::<usize>() as f64;
    let mut bands = [(Duration::ZERO, Duration::ZERO); 3];
    let mut before = 0;
    for (band, weight) in bands.iter_mut().zip(weights) {
        let start = part(window, before as f64 / total);
        before += weight;
        let end = part(window, before as f64 / total);
        *band = (start, end.saturating_sub(start));
    }
    bands
}

/// `fraction` (in `0..=1`) of `d`, never more than `d`: `Duration::mul_f64`
/// panics where rounding takes `Duration::MAX` past itself.
fn part(d: Duration, fraction: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * fraction).map_or(d, |p| p.min(d))
}

/// A value in `0..n`, from 64 random bits (Lemire's multiply-shift).
fn below(random: u64, n: u64) -> u64 {
    ((u128::from(random) * u128::from(n)) >> 64) as u64
}

/// Sebastiano Vigna's splitmix64: a well-mixed 64-bit hash of a counter.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed nobody can predict: the standard library's per-process random
/// keys, hashed with the clock.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    RandomState::new().hash_one(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(config: &Config, open: [usize; 3]) -> Plan {
        Plan::new(config, open, Instant::now(), UNIX_EPOCH)
    }

    #[test]
    fn delays_are_within_bounds_spread_and_seeded() {
        let config = Config::default()
            .reconnect_delay(Duration::from_secs(30))
            .reconnect_jitter(Duration::from_secs(10))
            .seed(7);
        let a = plan(&config, [0, 1, 0]);
        let delays: Vec<Duration> = (0..10_000).map(|i| a.delay(Draw::Notice, i)).collect();
        let (lo, hi) = (Duration::from_secs(30), Duration::from_secs(40));
        assert!(delays.iter().all(|d| (lo..=hi).contains(d)));
        // Uniform: each second of the ten holds about a tenth.
        let mut per_second = [0; 11];
        for d in &delays {
            per_second[(d.as_secs() - 30) as usize] += 1;
        }
        assert!(
            per_second[..10].iter().all(|&n| (850..1150).contains(&n)),
            "{per_second:?}"
        );
        // The same seed gives the same delays; another seed others.
        let b = plan(&config, [0, 1, 0]);
        assert!((0..100).all(|i| a.delay(Draw::Notice, i) == b.delay(Draw::Notice, i)));
        let c = plan(&config.clone().seed(8), [0, 1, 0]);
        assert!((0..100).any(|i| a.delay(Draw::Notice, i) != c.delay(Draw::Notice, i)));
        // Rejections draw apart from notices.
        assert!((0..100).any(|i| a.delay(Draw::Notice, i) != a.delay(Draw::Rejection, i)));
    }

    #[test]
    fn retry_after_rounds_each_delay_up() {
        let config = Config::default()
            .reconnect_delay(Duration::from_secs(30))
            .reconnect_jitter(Duration::from_millis(2500))
            .seed(1);
        let plan = plan(&config, [0, 0, 0]);
        let seen: std::collections::BTreeSet<u64> =
            (0..1000).map(|i| plan.retry_after(i)).collect();
        assert_eq!(
            seen,
            [30, 31, 32, 33].into(),
            "30 only for a delay of exactly 30 s"
        );
        for i in 0..1000 {
            let delay = plan.delay(Draw::Rejection, i);
            assert!(Duration::from_secs(plan.retry_after(i)) >= delay);
        }
    }

    #[test]
    fn a_rate_sizes_the_spread_to_the_open_streams() {
        let config = Config::default()
            .reconnect_delay(Duration::from_secs(1))
            .reconnect_jitter(Duration::from_secs(15))
            .reconnect_rate(500.0)
            .seed(9);
        for (open, window) in [(1_000, 2_000), (10_000, 20_000), (1, 2), (0, 0)] {
            let plan = plan(&config, [0, open, 0]);
            assert_eq!(
                plan.window(),
                Duration::from_millis(window),
                "{open} streams"
            );
            let delays: Vec<Duration> = (0..10_000).map(|i| plan.delay(Draw::Notice, i)).collect();
            let top = Duration::from_millis(1_000 + window);
            assert!(
                delays
                    .iter()
                    .all(|d| (Duration::from_secs(1)..=top).contains(d))
            );
        }
        // Even over the window: exactly `rate` of them in each second of it,
        // never more (a uniform draw puts about 540 in the busiest).
        let plan = plan(&config, [0, 10_000, 0]);
        let mut per_second = [0usize; 21];
        for i in 0..10_000 {
            per_second[(plan.delay(Draw::Notice, i).as_secs() - 1) as usize] += 1;
        }
        assert!(per_second[..20].iter().all(|&n| n == 500), "{per_second:?}");
        // And in any second, aligned or not: at most `rate` + 1.
        let mut delays: Vec<u128> = (0..10_000)
            .map(|i| plan.delay(Draw::Notice, i).as_millis())
            .collect();
        delays.sort_unstable();
        let busiest = (0..delays.len())
            .map(|i| delays[i..].partition_point(|&d| d < delays[i] + 1000))
            .max()
            .unwrap();
        assert!(busiest <= 501, "{busiest} in one second");
        // Without a rate, the jitter.
        let plan = super::Plan::new(
            &Config::default().reconnect_jitter(Duration::from_secs(3)),
            [0, 10_000, 0],
            Instant::now(),
            UNIX_EPOCH,
        );
        assert_eq!(plan.window(), Duration::from_secs(3));
    }

    #[test]
    fn no_jitter_gives_every_stream_the_one_frame() {
        let config = Config::default().reconnect_jitter(Duration::ZERO);
        let plan = plan(&config, [0, 1, 0]);
        assert_eq!(plan.delay(Draw::Notice, 5), Duration::from_secs(30));
        assert_eq!(plan.frame(Draw::Notice, 5), plan.frame(Draw::Notice, 6));
        assert_eq!(plan.retry_after(3), 30);
    }

    #[test]
    fn bands_follow_priority_and_share_of_streams() {
        let w = Duration::from_secs(12);
        let s = Duration::from_secs;
        assert_eq!(
            bands(w, [0, 10, 0]),
            [(s(0), s(0)), (s(0), s(12)), (s(12), s(0))]
        );
        assert_eq!(
            bands(w, [1, 2, 1]),
            [(s(0), s(3)), (s(3), s(6)), (s(9), s(3))]
        );
        assert_eq!(
            bands(w, [0, 0, 0]),
            [(s(0), s(0)), (s(0), s(12)), (s(12), s(0))]
        );
        assert_eq!(bands(Duration::ZERO, [1, 2, 1]), [(s(0), s(0)); 3]);
    }

    #[test]
    fn slots_fill_their_band_in_priority_order() {
        let config = Config::default()
            .grace_period(Duration::from_secs(20))
            .notice_window(Duration::from_secs(12))
            .seed(3);
        let plan = plan(&config, [100, 100, 100]);
        let plan = &plan;
        let slots = |p| {
            (0..100)
                .map(move |i| plan.slot(p, i).unwrap())
                .collect::<Vec<_>>()
        };
        let (low, normal, high) = (
            slots(DrainPriority::Low),
            slots(DrainPriority::Normal),
            slots(DrainPriority::High),
        );
        let max = |v: &[Duration]| *v.iter().max().unwrap();
        let min = |v: &[Duration]| *v.iter().min().unwrap();
        assert!(max(&low) < min(&normal) && max(&normal) < min(&high));
        assert!(
            min(&low) < Duration::from_millis(500) && max(&high) > Duration::from_millis(11_500)
        );
        assert!(max(&high) < Duration::from_secs(12));
        let none = Config::default().seed(3);
        assert_eq!(
            super::Plan::new(&none, [1, 1, 1], Instant::now(), UNIX_EPOCH)
                .slot(DrainPriority::Low, 0),
            None
        );
    }
}
