//! The counting and phase state behind a handle, apart from everything async,
//! so that `loom` can check every interleaving of it (see `tests/loom.rs`).
//!
//! One 64-bit word holds the phase, the open SSE streams and the admitted
//! requests:
//!
//! ```text
//!  63            34 33             4 3    2      1        0
//! | in flight (30) | SSE streams (30) | -- | CUT | FORCED | DRAINING |
//! ```
//!
//! Admitting a request and starting the drain touch the same word, so one of
//! them comes first; marking a response as an event stream returns the word
//! before it, so a stream marked after the drain started is told apart from
//! one that was open at its start; and a phase change and a waiter's look at
//! the phase are one load apart (see `shared::wait_phase`).
//!
//! Beside the word, [`Wakers`]: the tasks to wake when the phase changes.
//!
//! Limits: at most [`MAX_IN_FLIGHT`] requests in flight per handle (about a
//! billion: far beyond what fits in memory, each holds a body); admitting one
//! more panics with a message instead of wrapping. An SSE stream is always an
//! in-flight request, so the SSE count cannot overflow either.
#![cfg_attr(not(loom), allow(unreachable_pub))]

#[cfg(loom)]
use loom::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};
#[cfg(not(loom))]
use std::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};
use std::{sync::PoisonError, task::Waker};

/// The drain has started: requests are rejected.
pub const DRAINING: u64 = 0b001;
/// The grace period has run out: open bodies end at their next poll.
pub const FORCED: u64 = 0b010;
/// The deadline (grace period plus linger) has passed: wrapped connections
/// are closed at their next IO call.
pub const CUT: u64 = 0b100;
/// Every phase bit.
pub const PHASE: u64 = DRAINING | FORCED | CUT;

const SSE_SHIFT: u32 = 4;
const COUNT_SHIFT: u32 = 34;
/// One open SSE stream.
const ONE_SSE: u64 = 1 << SSE_SHIFT;
/// One admitted request.
const ONE: u64 = 1 << COUNT_SHIFT;
const SSE_MASK: u64 = ((1 << 30) - 1) << SSE_SHIFT;

/// The most requests one handle counts in flight at once.
pub const MAX_IN_FLIGHT: usize = (1 << 30) - 1;

/// The in-flight count of a word.
#[inline]
fn count(word: u64) -> usize {
    (word >> COUNT_SHIFT) as usize
}

/// The SSE count of a word.
#[inline]
fn sse(word: u64) -> usize {
    ((word & SSE_MASK) >> SSE_SHIFT) as usize
}

/// What the word held when the drain started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtStart {
    /// Requests in flight.
    pub in_flight: usize,
    /// Of those, open SSE streams.
    pub sse_streams: usize,
}

/// The in-flight count, the SSE count and the phase of one handle.
#[derive(Debug)]
pub struct State {
    word: AtomicU64,
    /// SSE streams marked after the drain started (responses admitted before
    /// it that resolved after): with the open streams at its start, every
    /// stream the drain has to notify.
    late_sse: AtomicUsize,
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
            word: AtomicU64::new(0),
            late_sse: AtomicUsize::new(0),
        }
    }

    /// The `DRAINING | FORCED | CUT` bits.
    #[inline]
    pub fn phase(&self) -> u64 {
        self.word.load(Ordering::Acquire) & PHASE
    }

    /// The number of admitted requests not yet released.
    pub fn count(&self) -> usize {
        count(self.word.load(Ordering::Acquire))
    }

    /// The number of open SSE streams.
    pub fn sse(&self) -> usize {
        sse(self.word.load(Ordering::Acquire))
    }

    /// SSE streams marked since the drain started.
    pub fn late_sse(&self) -> usize {
        self.late_sse.load(Ordering::Acquire)
    }

    /// Counts a request in, or refuses it (`false`) because the drain has
    /// started. Either the request is counted before the drain starts, and the
    /// drain waits for its [`release`](Self::release), or it is refused.
    ///
    /// # Panics
    ///
    /// With [`MAX_IN_FLIGHT`] requests already in flight.
    pub fn admit(&self) -> bool {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            if word & DRAINING != 0 {
                return false;
            }
            assert!(
                count(word) < MAX_IN_FLIGHT,
                "tower-graceful-sse: more than {MAX_IN_FLIGHT} responses in flight on one handle"
            );
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

    /// Marks an admitted request as an open SSE stream. True if the drain had
    /// already started: a late stream, counted as such.
    pub fn mark_sse(&self) -> bool {
        let prev = self.word.fetch_add(ONE_SSE, Ordering::AcqRel);
        debug_assert!(sse(prev) < count(prev), "an SSE stream not admitted");
        let late = prev & DRAINING != 0;
        if late {
            self.late_sse.fetch_add(1, Ordering::AcqRel);
        }
        late
    }

    /// Releases one admitted request (and its SSE stream, if `sse`). True if
    /// it was the last one while draining: the drain is waiting for exactly
    /// this.
    pub fn release(&self, sse: bool) -> bool {
        let one = if sse { ONE + ONE_SSE } else { ONE };
        let prev = self.word.fetch_sub(one, Ordering::AcqRel);
        debug_assert!(count(prev) >= 1, "released more requests than admitted");
        prev & DRAINING != 0 && count(prev) == 1
    }

    /// Starts the drain. `Some` for the one call that started it, with what
    /// was in flight at that moment; `None` for every later call.
    pub fn start_drain(&self) -> Option<AtStart> {
        let prev = self.word.fetch_or(DRAINING, Ordering::AcqRel);
        (prev & DRAINING == 0).then_some(AtStart {
            in_flight: count(prev),
            sse_streams: sse(prev),
        })
    }

    /// Ends the grace period; returns the number of requests still open.
    pub fn force_close(&self) -> usize {
        count(self.word.fetch_or(FORCED, Ordering::AcqRel))
    }

    /// Passes the deadline: wrapped connections are to be closed.
    pub fn cut(&self) {
        self.word.fetch_or(CUT, Ordering::AcqRel);
    }
}

/// The tasks to wake at the next phase change: a slot for each body,
/// connection or service that waits, holding the waker it last waited with.
///
/// A waiter takes a slot at its first wait and gives it back when it is
/// dropped (its key, `0` until then, says which). A phase change takes every
/// waker out and wakes it; the slots stay taken, and each waiter puts its
/// waker back at its next wait. One lock guards them all, taken when a waiter
/// first waits or changes its waker, when it is dropped, and at each phase
/// change: before the drain, a waiter that waits again with the same waker
/// takes no lock (see `shared::wait_phase`).
///
/// A slot is a waker (16 bytes) in pages of 256: no allocation of its own
/// beside the body it serves.
#[derive(Debug, Default)]
pub struct Wakers {
    slots: Mutex<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    /// The waker of the slot with key `i + 1` at `pages[i / PAGE][i % PAGE]`;
    /// `None` if the slot is free or its waker was woken. In pages, so that
    /// growing never copies (nor leaves behind) the slots taken so far.
    pages: Vec<Box<[Option<Waker>; PAGE]>>,
    /// Slots handed out so far, free ones included.
    len: u32,
    /// Keys of free slots.
    free: Vec<u32>,
}

/// Slots per page: 4 KiB.
const PAGE: usize = 256;

impl Slots {
    fn slot(&mut self, key: u32) -> &mut Option<Waker> {
        let i = key as usize - 1;
        &mut self.pages[i / PAGE][i % PAGE]
    }

    /// A free slot's key.
    fn take(&mut self) -> u32 {
        if let Some(key) = self.free.pop() {
            return key;
        }
        if self.len as usize == self.pages.len() * PAGE {
            self.pages.push(Box::new([const { None }; PAGE]));
        }
        self.len = self
            .len
            .checked_add(1)
            .expect("tower-graceful-sse: more than u32::MAX waiters on one handle");
        self.len
    }
}

impl Wakers {
    /// No slot taken.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        // Nothing under the lock leaves the slots half changed.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts `waker` in the slot `key`, or in a new slot if `key` is 0, and
    /// returns the slot's key.
    ///
    /// # Panics
    ///
    /// With `u32::MAX` slots taken at once.
    pub fn set(&self, key: u32, waker: &Waker) -> u32 {
        let mut slots = self.lock();
        let key = if key == 0 { slots.take() } else { key };
        let old = slots.slot(key).replace(waker.clone());
        drop(slots);
        // Outside the lock: dropping a waker may drop a task, and with it a
        // waiter that gives its slot back.
        drop(old);
        key
    }

    /// Gives the slot `key` back; nothing if `key` is 0.
    pub fn remove(&self, key: u32) {
        if key == 0 {
            return;
        }
        let mut slots = self.lock();
        let old = slots.slot(key).take();
        slots.free.push(key);
        drop(slots);
        drop(old);
    }

    /// Wakes every waiter: the phase has changed. Each keeps its slot.
    pub fn wake_all(&self) {
        let woken: Vec<Waker> = self
            .lock()
            .pages
            .iter_mut()
            .flat_map(|page| page.iter_mut())
            .filter_map(Option::take)
            .collect();
        woken.into_iter().for_each(Waker::wake);
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
