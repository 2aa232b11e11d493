//! The state behind a handle, shared by its clones, layers and bodies, and the
//! guard that counts one response.

use crate::{
    Config, DrainPriority, DrainReport, metrics,
    schedule::{Draw, Plan},
    state::{DRAINING, FORCED, NoticeLog, State},
};
use bytes::Bytes;
use pin_project_lite::pin_project;
use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Waker},
};
use tokio::{
    sync::{Notify, futures::OwnedNotified},
    time::Instant,
};

/// The state behind a handle, shared by its clones, layers and bodies.
pub(crate) struct Shared {
    /// The in-flight count and the phase, in one word.
    pub(crate) state: State,
    pub(crate) sse: AtomicUsize,
    /// Open SSE streams of a priority other than `Normal`, by priority
    /// (`Normal`'s entry stays 0: its count is the rest of `sse`), so that a
    /// stream with no priority set pays nothing for them.
    pub(crate) prioritised: [AtomicUsize; 3],
    pub(crate) rejected: AtomicUsize,
    /// Notices handed out: each takes its index from here.
    pub(crate) notified: AtomicUsize,
    /// Moments in the notice window drawn: each takes its index from here.
    pub(crate) drawn: AtomicUsize,
    /// Notices sent, by priority, and when.
    pub(crate) log: NoticeLog,
    pub(crate) force_closed_total: AtomicU64,
    /// Set at the end of the linger after the grace period: connections that
    /// still carry a response are closed.
    pub(crate) cut: AtomicBool,
    /// Connections wrapped by `GracefulIo` or `Watched` and not yet dropped:
    /// without any, nothing waits for the cut.
    pub(crate) connections: AtomicUsize,
    /// Fired on each phase change and at the cut; bodies and connections wait
    /// on it while they are pending.
    pub(crate) changed: Arc<Notify>,
    /// Fired when the last in-flight response ends during a drain.
    pub(crate) all_closed: Notify,
    pub(crate) report_ready: Arc<Notify>,
    /// Set once, before `DRAINING`, by the first `drain()`: the frame and
    /// the schedule of notices.
    pub(crate) plan: OnceLock<Plan>,
    pub(crate) report: OnceLock<DrainReport>,
    pub(crate) config: Config,
}

impl Shared {
    pub(crate) fn new(config: Config) -> Self {
        Self {
            state: State::new(),
            sse: AtomicUsize::new(0),
            prioritised: [const { AtomicUsize::new(0) }; 3],
            rejected: AtomicUsize::new(0),
            notified: AtomicUsize::new(0),
            drawn: AtomicUsize::new(0),
            log: NoticeLog::new(),
            force_closed_total: AtomicU64::new(0),
            cut: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            changed: Arc::new(Notify::new()),
            all_closed: Notify::new(),
            report_ready: Arc::new(Notify::new()),
            plan: OnceLock::new(),
            report: OnceLock::new(),
            config,
        }
    }

    /// `DRAINING | FORCED` bits.
    #[inline]
    pub(crate) fn phase(&self) -> usize {
        self.state.phase()
    }

    #[inline]
    pub(crate) fn is_draining(phase: usize) -> bool {
        phase & DRAINING != 0
    }

    #[inline]
    pub(crate) fn is_forced(phase: usize) -> bool {
        phase & FORCED != 0
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

    /// True once connections that still carry a response are to be closed.
    #[inline]
    pub(crate) fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    /// The instant connections are cut: the end of the grace period plus the
    /// linger. Present once the drain has started.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let config = &self.config;
        let started = self.plan.get()?.started;
        Some(started + config.grace_period + config.linger)
    }

    /// Open SSE streams of each priority, lowest first.
    pub(crate) fn open_by_priority(&self) -> [usize; 3] {
        let [low, _, high] = self
            .prioritised
            .each_ref()
            .map(|n| n.load(Ordering::Acquire));
        let all = self.sse.load(Ordering::Acquire);
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
        let at = plan.started + plan.slot(priority, index)?;
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

pin_project! {
    /// A registration for the next phase change, and the waker it holds.
    pub(crate) struct Waiter {
        #[pin]
        notified: OwnedNotified,
        // The waker `notified` was last polled with, once it returned
        // `Pending` before the drain.
        waker: Option<Waker>,
    }
}

impl Waiter {
    pub(crate) fn new(shared: &Shared) -> Self {
        Self {
            notified: shared.changed.clone().notified_owned(),
            waker: None,
        }
    }

    /// True once the next phase change may be due: polls the registration,
    /// unless it already holds a waker for this task and no drain has started.
    ///
    /// Polling a registered `Notified` takes the lock of the `Notify` that
    /// every stream of the handle shares, and a live stream goes pending after
    /// each event: skipping it keeps that lock off the hot path. Before the
    /// drain the only notification to come is the one that starts it, which
    /// changes the phase first: the next poll then sees `DRAINING` and polls
    /// the registration again, so no notification is lost.
    pub(crate) fn poll_changed(self: Pin<&mut Self>, cx: &mut Context<'_>, phase: usize) -> bool {
        let this = self.project();
        let draining = Shared::is_draining(phase);
        if !draining && this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return false;
        }
        if this.notified.poll(cx).is_ready() {
            return true;
        }
        *this.waker = (!draining).then(|| cx.waker().clone());
        false
    }
}

/// One connection that the cut closes: counted while it lives.
pub(crate) struct Connection {
    pub(crate) shared: Arc<Shared>,
}

impl Connection {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        shared.connections.fetch_add(1, Ordering::Relaxed);
        Self { shared }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One in-flight response. It moves from the response future into the body,
/// and releases its count when dropped, whatever ends the response.
pub(crate) struct Guard {
    shared: Arc<Shared>,
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

    /// Marks this response as an SSE stream that can be notified, with the
    /// response's priority if it set one.
    pub(crate) fn mark_sse(&mut self, priority: Option<DrainPriority>) {
        if !self.sse {
            self.sse = true;
            self.priority = priority.unwrap_or(self.priority);
            self.shared.sse.fetch_add(1, Ordering::AcqRel);
            if self.priority != DrainPriority::Normal {
                self.shared.prioritised[self.priority.index()].fetch_add(1, Ordering::AcqRel);
            }
            metrics::sse_streams(1.0);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.sse {
            if self.priority != DrainPriority::Normal {
                self.shared.prioritised[self.priority.index()].fetch_sub(1, Ordering::AcqRel);
            }
            self.shared.sse.fetch_sub(1, Ordering::AcqRel);
            metrics::sse_streams(-1.0);
        }
        if self.shared.state.release() {
            self.shared.all_closed.notify_one();
        }
    }
}
