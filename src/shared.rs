//! The state behind a handle, shared by its clones, layers and bodies, and the
//! guard that counts one response.

use crate::{
    Config, DrainReport, metrics,
    state::{DRAINING, FORCED, State},
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
    pub(crate) rejected: AtomicUsize,
    pub(crate) notified: AtomicUsize,
    pub(crate) force_closed_total: AtomicU64,
    /// Set at the end of the linger after the grace period: connections that
    /// still carry a response are closed.
    pub(crate) cut: AtomicBool,
    /// Fired on each phase change and at the cut; bodies and connections wait
    /// on it while they are pending.
    pub(crate) changed: Arc<Notify>,
    /// Fired when the last in-flight response ends during a drain.
    pub(crate) all_closed: Notify,
    pub(crate) report_ready: Arc<Notify>,
    /// Set once, before `DRAINING`, by the first `drain()`.
    pub(crate) frame: OnceLock<Bytes>,
    /// When the drain started; set with the frame.
    pub(crate) started: OnceLock<Instant>,
    pub(crate) report: OnceLock<DrainReport>,
    pub(crate) config: Config,
}

impl Shared {
    pub(crate) fn new(config: Config) -> Self {
        Self {
            state: State::new(),
            sse: AtomicUsize::new(0),
            rejected: AtomicUsize::new(0),
            notified: AtomicUsize::new(0),
            force_closed_total: AtomicU64::new(0),
            cut: AtomicBool::new(false),
            changed: Arc::new(Notify::new()),
            all_closed: Notify::new(),
            report_ready: Arc::new(Notify::new()),
            frame: OnceLock::new(),
            started: OnceLock::new(),
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

    /// Counts a request in, or refuses it because the drain has started.
    ///
    /// Either the request is counted before the drain starts (and the drain
    /// waits for it and notifies its stream), or it is rejected: see
    /// [`State::admit`]. No request slips between the two.
    pub(crate) fn admit(self: &Arc<Self>) -> Option<Guard> {
        if self.state.admit() {
            return Some(Guard {
                shared: self.clone(),
                sse: false,
            });
        }
        self.rejected.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// The shutdown frame; present once the drain has started.
    pub(crate) fn frame(&self) -> &Bytes {
        self.frame.get().expect("the frame is set before DRAINING")
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
        let started = *self.started.get()?;
        Some(started + config.grace_period + config.linger)
    }

    pub(crate) fn count_notified(&self) {
        self.notified.fetch_add(1, Ordering::Relaxed);
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

/// One in-flight response. It moves from the response future into the body,
/// and releases its count when dropped, whatever ends the response.
pub(crate) struct Guard {
    shared: Arc<Shared>,
    sse: bool,
}

impl Guard {
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Marks this response as an SSE stream that can be notified.
    pub(crate) fn mark_sse(&mut self) {
        if !self.sse {
            self.sse = true;
            self.shared.sse.fetch_add(1, Ordering::AcqRel);
            metrics::sse_streams(1.0);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.sse {
            self.shared.sse.fetch_sub(1, Ordering::AcqRel);
            metrics::sse_streams(-1.0);
        }
        if self.shared.state.release() {
            self.shared.all_closed.notify_one();
        }
    }
}
