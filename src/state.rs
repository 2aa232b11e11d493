//! The counting and phase state behind a handle, apart from everything async,
//! so that `loom` can check every interleaving of it (see `tests/loom.rs`).
//!
//! One word holds `count << 2 | FORCED | DRAINING`: admitting a request and
//! starting the drain touch the same word, so one of them comes first.
#![cfg_attr(not(loom), allow(unreachable_pub))]

#[cfg(loom)]
use loom::sync::atomic::{AtomicUsize, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicUsize, Ordering};

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
