//! The state behind a handle, shared by its clones, layers and bodies, and the
//! guard that counts one response.

use crate::{
    Config, DrainPriority, DrainReport,
    config::after,
    metrics,
    schedule::{Draw, Plan},
    state::{CUT, DRAINING, FORCED, NoticeLog, State, Wakers},
};
use bytes::Bytes;
use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
};
use tokio::{sync::Notify, time::Instant};

/// The state behind a handle, shared by its clones, layers and bodies.
pub(crate) struct Shared {
    /// The phase, the in-flight count and the SSE count, in one word, and
    /// the streams marked after the drain started.
    pub(crate) state: State,
    /// Open SSE streams of a priority other than `Normal`, by priority
    /// (`Normal`'s entry stays 0: its count is the rest of the SSE count), so
    /// that a stream with no priority set pays nothing for them.
    pub(crate) prioritised: [AtomicUsize; 3],
    pub(crate) rejected: AtomicUsize,
    /// Notices handed out: each takes its index from here.
    pub(crate) notified: AtomicUsize,
    /// Moments in the notice window drawn: each takes its index from here.
    pub(crate) drawn: AtomicUsize,
    /// Notices sent, by priority, and when.
    pub(crate) log: NoticeLog,
    pub(crate) force_closed_total: AtomicU64,
    /// Woken after each phase change: the bodies, connections and services
    /// pending (see [`wait_phase`]).
    pub(crate) wakers: Wakers,
    /// Fired when the last in-flight response ends during a drain.
    pub(crate) all_closed: Notify,
    pub(crate) report_ready: Arc<Notify>,
    /// Fired when this state is dropped: the drain task, waiting for the
    /// deadline with only a `Weak`, then stops waiting.
    pub(crate) gone: Arc<Notify>,
    /// Set once, before `DRAINING`, by the first `drain()`: the frame and
    /// the schedule of notices.
    pub(crate) plan: OnceLock<Plan>,
    pub(crate) report: OnceLock<DrainReport>,
    pub(crate) config: Config,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // A permit: heard even if the task has not polled yet.
        self.gone.notify_one();
    }
}

impl Shared {
    pub(crate) fn new(config: Config) -> Self {
        Self {
            state: State::new(),
            prioritised: [const { AtomicUsize::new(0) }; 3],
            rejected: AtomicUsize::new(0),
            notified: AtomicUsize::new(0),
            drawn: AtomicUsize::new(0),
            log: NoticeLog::new(),
            force_closed_total: AtomicU64::new(0),
            wakers: Wakers::new(),
            all_closed: Notify::new(),
            report_ready: Arc::new(Notify::new()),
            gone: Arc::new(Notify::new()),
            plan: OnceLock::new(),
            report: OnceLock::new(),
            config,
        }
    }

    /// `DRAINING | FORCED | CUT` bits.
    #[inline]
    pub(crate) fn phase(&self) -> u64 {
        self.state.phase()
    }

    #[inline]
    pub(crate) fn is_draining(phase: u64) -> bool {
        phase & DRAINING != 0
    }

    #[inline]
    pub(crate) fn is_forced(phase: u64) -> bool {
        phase & FORCED != 0
    }

    #[inline]
    pub(crate) fn is_cut(phase: u64) -> bool {
        phase & CUT != 0
    }

    /// Counts a request in, or refuses it because the drain has started,
    /// with the rejection's index.
    ///
    /// Either the request is counted before the drain starts (and the drain
    /// waits for it and notifies its stream), or it is rejected: see
    /// [`State::admit`]. No request slips between the two.
    pub(crate) fn admit(self: &Arc<Self>, priority: DrainPriority) -> Result<Guard, usize> {
        if self.state.admit() {
            return Ok(Guard {
                shared: self.clone(),
                key: 0,
                sse: false,
                priority,
            });
        }
        Err(self.rejected.fetch_add(1, Ordering::Relaxed))
    }

    /// The schedule of notices; present once the drain has started.
    pub(crate) fn plan(&self) -> &Plan {
        self.plan.get().expect("the plan is set before DRAINING")
    }

    /// The instant connections are cut: the end of the grace period plus the
    /// linger, saturated. Present once the drain has started.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let config = &self.config;
        let started = self.plan.get()?.started;
        Some(after(
            started,
            config.grace_period.saturating_add(config.linger),
        ))
    }

    /// Open SSE streams of each priority, lowest first.
    pub(crate) fn open_by_priority(&self) -> [usize; 3] {
        let [low, _, high] = self
            .prioritised
            .each_ref()
            .map(|n| n.load(Ordering::Acquire));
        let all = self.state.sse();
        [low, all.saturating_sub(low + high), high]
    }

    /// The moment a stream of `priority` that has just seen the drain gets
    /// its notice; `None` if that is now.
    pub(crate) fn notice_due(&self, priority: DrainPriority) -> Option<Instant> {
        if self.config.notice_window.is_zero() {
            return None;
        }
        let plan = self.plan();
        let index = self.drawn.fetch_add(1, Ordering::Relaxed);
        let at = after(plan.started, plan.slot(priority, index)?);
        (at > Instant::now()).then_some(at)
    }

    /// The notice for a stream of `priority`, counted as sent now.
    pub(crate) fn notice(&self, priority: DrainPriority) -> Bytes {
        let plan = self.plan();
        let index = self.notified.fetch_add(1, Ordering::Relaxed);
        let at = u64::try_from(plan.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.log.record(priority.index(), at);
        plan.frame(Draw::Notice, index)
    }
}

/// A body, connection or service's place among the handle's [`Wakers`]: the
/// key of its slot (0 until its first wait) and a copy of the waker the slot
/// holds. It gives the slot back when dropped.
pub(crate) struct Waiter {
    shared: Arc<Shared>,
    waker: Option<Waker>,
    key: u32,
}

impl Waiter {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            waker: None,
            key: 0,
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// [`wait_phase`] for this waiter.
    #[inline]
    pub(crate) fn wait(&mut self, cx: &mut Context<'_>, seen: u64) -> Poll<u64> {
        wait_phase(&self.shared, &mut self.key, &mut self.waker, cx, seen)
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.shared.wakers.remove(self.key);
    }
}

/// Waits until the phase differs from `seen`, the phase the caller looked at
/// before the poll that went pending: `Ready` with the phase now, or
/// `Pending` with the task's waker in the slot `key` (taken if 0), which the
/// next phase change wakes. `waker` is the copy of what the slot holds. The
/// one wait of the body, [`GracefulIo`](crate::GracefulIo),
/// [`Watched`](crate::Watched) and the service's `poll_ready`.
///
/// No change is ever missed: the waker goes in *before* the phase is looked
/// at again, and every phase change is stored before its
/// [`Wakers::wake_all`], under the same lock: either the look sees the new
/// phase, or the wake finds the waker (modelled in `tests/loom.rs`).
///
/// The hot path (a live stream goes pending after each event) takes no lock:
/// before the drain, a waiter whose slot already holds this task's waker
/// returns at once. No waker has been taken out yet (the first phase change
/// is the drain's start), so the slot still holds it, and the drain's start
/// wakes this task; the caller sees it at the next poll. Once draining, every
/// wait puts its waker back, as a phase change took it.
#[inline]
pub(crate) fn wait_phase(
    shared: &Shared,
    key: &mut u32,
    waker: &mut Option<Waker>,
    cx: &mut Context<'_>,
    seen: u64,
) -> Poll<u64> {
    if !Shared::is_draining(seen) && waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        return Poll::Pending;
    }
    register(shared, key, waker, cx, seen)
}

/// [`wait_phase`] the long way: the waker into its slot, then the look.
#[inline(never)]
fn register(
    shared: &Shared,
    key: &mut u32,
    waker: &mut Option<Waker>,
    cx: &mut Context<'_>,
    seen: u64,
) -> Poll<u64> {
    *key = shared.wakers.set(*key, cx.waker());
    if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *waker = Some(cx.waker().clone());
    }
    let now = shared.phase();
    if now != seen {
        // The waker stays in its slot: the next change wakes this task once
        // for nothing, which is cheaper than a second lock now.
        return Poll::Ready(now);
    }
    Poll::Pending
}

/// One in-flight response. It moves from the response future into the body,
/// and releases its count when dropped, whatever ends the response.
pub(crate) struct Guard {
    shared: Arc<Shared>,
    // The key of the body's slot among the wakers (see `Waiter`), held here
    // so that the body's count and its slot are given back together; it fits
    // beside the flags. The body keeps the copy of the slot's waker.
    key: u32,
    sse: bool,
    /// The request's, then the response's if it set one.
    priority: DrainPriority,
}

impl Guard {
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(crate) fn priority(&self) -> DrainPriority {
        self.priority
    }

    /// [`wait_phase`] for the body that holds this guard, with the copy of
    /// its slot's waker.
    #[inline]
    pub(crate) fn wait(
        &mut self,
        waker: &mut Option<Waker>,
        cx: &mut Context<'_>,
        seen: u64,
    ) -> Poll<u64> {
        wait_phase(&self.shared, &mut self.key, waker, cx, seen)
    }

    /// Marks this response as an SSE stream that can be notified, with the
    /// response's priority if it set one.
    pub(crate) fn mark_sse(&mut self, priority: Option<DrainPriority>) {
        if !self.sse {
            self.sse = true;
            self.priority = priority.unwrap_or(self.priority);
            if self.priority != DrainPriority::Normal {
                self.shared.prioritised[self.priority.index()].fetch_add(1, Ordering::AcqRel);
            }
            if self.shared.state.mark_sse() {
                // Admitted before the drain, resolved after it: notified as
                // it comes, and counted in the report's `sse_streams`.
                tracing::debug!("notifying an SSE stream whose handler resolved during the drain");
            }
            metrics::sse_streams(1.0);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.wakers.remove(self.key);
        if self.sse {
            if self.priority != DrainPriority::Normal {
                self.shared.prioritised[self.priority.index()].fetch_sub(1, Ordering::AcqRel);
            }
            metrics::sse_streams(-1.0);
        }
        if self.shared.state.release(self.sse) {
            self.shared.all_closed.notify_one();
        }
    }
}
