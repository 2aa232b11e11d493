//! The counting and phase state behind a handle, apart from everything async,
//! so that `loom` can check every interleaving of it (see `tests/loom.rs`).
//!
//! One word holds `count << 2 | FORCED | DRAINING`: admitting a request and
//! starting the drain touch the same word, so one of them comes first.
#![cfg_attr(not(loom), allow(unreachable_pub))]

#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The drain has started: requests are rejected.
pub const DRAINING: usize = 0b01;
/// The grace period has run out: open bodies end at their next poll.
pub const FORCED: usize = 0b10;
const ONE: usize = 0b100;

/// The in-flight count and the phase of one handle.
#[derive(Debug)]
pub struct State {
    word: AtomicUsize,
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    /// No request counted, no drain.
    pub fn new() -> Self {
        Self {
            word: AtomicUsize::new(0),
        }
    }

    /// The `DRAINING | FORCED` bits.
    #[inline]
    pub fn phase(&self) -> usize {
        self.word.load(Ordering::Acquire) & (DRAINING | FORCED)
    }

    /// The number of admitted requests not yet released.
    pub fn count(&self) -> usize {
        self.word.load(Ordering::Acquire) / ONE
    }

    /// Counts a request in, or refuses it (`false`) because the drain has
    /// started. Either the request is counted before the drain starts, and the
    /// drain waits for its [`release`](Self::release), or it is refused.
    pub fn admit(&self) -> bool {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            if word & DRAINING != 0 {
                return false;
            }
            // Never counts a request it then refuses: a count that is only
            // undone later would be seen by the drain as in flight.
            match self
                .word
                .compare_exchange(word, word + ONE, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(now) => word = now,
            }
        }
    }

    /// Releases one admitted request. True if it was the last one while
    /// draining: the drain is waiting for exactly this.
    pub fn release(&self) -> bool {
        let prev = self.word.fetch_sub(ONE, Ordering::AcqRel);
        debug_assert!(prev >= ONE, "released more requests than admitted");
        prev & DRAINING != 0 && prev / ONE == 1
    }

    /// Starts the drain. `Some(count)` for the one call that started it, with
    /// the number of requests in flight at that moment; `None` for every
    /// later call.
    pub fn start_drain(&self) -> Option<usize> {
        let prev = self.word.fetch_or(DRAINING, Ordering::AcqRel);
        (prev & DRAINING == 0).then_some(prev / ONE)
    }

    /// Ends the grace period; returns the number of requests still open.
    pub fn force_close(&self) -> usize {
        self.word.fetch_or(FORCED, Ordering::AcqRel) / ONE
    }
}

/// The notices sent during a drain: how many of each priority, and when the
/// first and the last went out. Touched only by notices, never before the
/// drain.
#[derive(Debug)]
pub struct NoticeLog {
    /// Nanoseconds from the start of the drain; `u64::MAX` before any.
    first: AtomicU64,
    last: AtomicU64,
    by_priority: [AtomicUsize; 3],
}

/// What a [`NoticeLog`] held at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notices {
    /// Notices of each priority, lowest first.
    pub by_priority: [usize; 3],
    /// First and last, in nanoseconds from the start of the drain; `None`
    /// while no notice is counted.
    pub first_last: Option<(u64, u64)>,
}

impl Default for NoticeLog {
    fn default() -> Self {
        Self::new()
    }
}

impl NoticeLog {
    /// No notice yet.
    pub fn new() -> Self {
        Self {
            first: AtomicU64::new(u64::MAX),
            last: AtomicU64::new(0),
            by_priority: std::array::from_fn(|_| AtomicUsize::new(0)),
        }
    }

    /// Counts one notice of the priority at `priority`, sent `at` nanoseconds
    /// after the start of the drain.
    ///
    /// The times go in before the count, which releases them: whoever sees
    /// the count sees the times.
    pub fn record(&self, priority: usize, at: u64) {
        self.first.fetch_min(at, Ordering::Relaxed);
        self.last.fetch_max(at, Ordering::Relaxed);
        self.by_priority[priority].fetch_add(1, Ordering::Release);
    }

    /// The counts, then the times: never a counted notice without its time.
    pub fn snapshot(&self) -> Notices {
        let by_priority = [0, 1, 2].map(|p| self.by_priority[p].load(Ordering::Acquire));
        let first_last = (by_priority.iter().sum::<usize>() > 0).then(|| {
            (
                self.first.load(Ordering::Relaxed),
                self.last.load(Ordering::Relaxed),
            )
        });
        Notices {
            by_priority,
            first_last,
        }
    }
}
