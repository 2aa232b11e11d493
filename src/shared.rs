//! The state behind a handle, shared by its clones, layers and bodies, and the
//! guard that counts one response.

use crate::{
    Config, DrainReport, metrics,
    state::{DRAINING, FORCED, State},
};
use bytes::Bytes;
use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};
use tokio::sync::Notify;

/// The state behind a handle, shared by its clones, layers and bodies.
pub(crate) struct Shared {
    /// The in-flight count and the phase, in one word.
    pub(crate) state: State,
    pub(crate) sse: AtomicUsize,
    pub(crate) rejected: AtomicUsize,
    pub(crate) notified: AtomicUsize,
    pub(crate) force_closed_total: AtomicU64,
    /// Fired on each phase change; bodies wait on it while their inner body
    /// is pending.
    pub(crate) changed: Arc<Notify>,
    /// Fired when the last in-flight response ends during a drain.
    pub(crate) all_closed: Notify,
    pub(crate) report_ready: Arc<Notify>,
    /// Set once, before `DRAINING`, by the first `drain()`.
    pub(crate) frame: OnceLock<Bytes>,
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
            changed: Arc::new(Notify::new()),
            all_closed: Notify::new(),
            report_ready: Arc::new(Notify::new()),
            frame: OnceLock::new(),
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

    pub(crate) fn count_notified(&self) {
        self.notified.fetch_add(1, Ordering::Relaxed);
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
