//! The drain handle, the state it shares with every layer, and the drain task.

use crate::{
    Config, GracefulSseLayer, sse,
    state::{DRAINING, FORCED, State},
};
use bytes::Bytes;
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::{Duration, SystemTime},
};
use tokio::{
    sync::{Notify, futures::OwnedNotified},
    time::Instant,
};

/// A cheap, cloneable handle that starts the drain and watches its progress.
///
/// Every clone, and every [`GracefulSseLayer`] made from one, shares the same
/// state: the counts, the drain and its report. One handle can serve any number
/// of layers (several routers, several servers); the drain covers them all.
///
/// ```
/// use tower_graceful_sse::{Config, DrainHandle};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let handle = DrainHandle::new(Config::default());
/// let layer = handle.layer(); // put it on your router or service
/// # let _ = layer;
///
/// // In your shutdown code:
/// let report = handle.drain().await;
/// assert_eq!(report.force_closed, 0);
/// assert!(handle.is_draining());
/// # }
/// ```
#[derive(Clone, Default)]
pub struct DrainHandle {
    shared: Arc<Shared>,
}

impl DrainHandle {
    /// A handle with the given settings; no drain has started.
    pub fn new(config: Config) -> Self {
        #[cfg(feature = "metrics")]
        describe_metrics();
        Self {
            shared: Arc::new(Shared::new(config)),
        }
    }

    /// A layer that counts its responses with this handle and obeys its drain.
    #[must_use]
    pub fn layer(&self) -> GracefulSseLayer {
        GracefulSseLayer::new(self)
    }

    /// Starts the drain, once, and returns a future of its report.
    ///
    /// From the moment this returns, requests through any layer of this
    /// handle are rejected, and every open SSE stream receives the shutdown
    /// frame at its next event boundary (at once if it is idle). Streams that
    /// are still open when the grace period ends are ended cleanly and counted
    /// as force-closed. The drain runs on a spawned task: it proceeds whether
    /// or not the returned future is awaited.
    ///
    /// Calling it again, from any clone or task, starts nothing new: the
    /// future resolves to the same report, and the clock is never restarted.
    ///
    /// # Panics
    ///
    /// The first call panics if it is made outside a Tokio runtime, as
    /// [`tokio::spawn`] does, before anything has started: a later call from
    /// inside a runtime then starts the drain.
    pub fn drain(&self) -> Drain {
        self.shared.start();
        Drain {
            shared: self.shared.clone(),
            wait: None,
        }
    }

    /// True once [`drain`](Self::drain) has been called.
    #[must_use]
    pub fn is_draining(&self) -> bool {
        Shared::is_draining(self.shared.phase())
    }

    /// The number of open `text/event-stream` responses that can receive the
    /// shutdown frame.
    #[must_use]
    pub fn sse_streams(&self) -> usize {
        self.shared.sse.load(Ordering::Acquire)
    }

    /// The number of admitted requests whose response body has not yet ended
    /// or been dropped, SSE or not.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.shared.state.count()
    }

    /// The report of the drain, once it has finished.
    #[must_use]
    pub fn report(&self) -> Option<DrainReport> {
        self.shared.report.get().copied()
    }

    /// The settings this handle was made with.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// A snapshot of the three metrics the seed design asks for.
    #[must_use]
    pub fn metrics(&self) -> Metrics {
        Metrics {
            sse_active_connections: self.sse_streams(),
            sse_shutdown_duration_seconds: self.report().map(|r| r.elapsed.as_secs_f64()),
            sse_force_closed_connections_total: self
                .shared
                .force_closed_total
                .load(Ordering::Acquire),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl fmt::Debug for DrainHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrainHandle")
            .field("draining", &self.is_draining())
            .field("in_flight", &self.in_flight())
            .field("sse_streams", &self.sse_streams())
            .field("report", &self.report())
            .finish()
    }
}

/// What a drain did, resolved by [`Drain`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Responses in flight (SSE or not) when the drain started.
    pub in_flight: usize,
    /// Of those, the open `text/event-stream` responses.
    pub sse_streams: usize,
    /// Open SSE streams whose shutdown frame was handed to the server to
    /// write (rejected SSE requests, which get it too, count under
    /// `rejected`).
    pub notified: usize,
    /// In-flight responses that ended within the grace period.
    pub closed: usize,
    /// Responses still open when the grace period ended, and ended by the
    /// layer.
    pub force_closed: usize,
    /// Requests rejected since the drain started, up to the report.
    pub rejected: usize,
    /// From the start of the drain until the last response ended or the grace
    /// period ran out.
    pub elapsed: Duration,
}

impl fmt::Display for DrainReport {
    /// One line for a log: `100 of 100 SSE streams notified, 101 of 101
    /// responses closed in time, 0 force-closed, 2 requests rejected, in 1.204 s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} SSE streams notified, {} of {} responses closed in time, \
             {} force-closed, {} requests rejected, in {:.3} s",
            self.notified,
            self.sse_streams,
            self.closed,
            self.in_flight,
            self.force_closed,
            self.rejected,
            self.elapsed.as_secs_f64()
        )
    }
}

/// A snapshot of the metrics, named as in the seed design.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Metrics {
    /// Open `text/event-stream` responses.
    pub sse_active_connections: usize,
    /// How long the drain took, once it has finished.
    pub sse_shutdown_duration_seconds: Option<f64>,
    /// Responses ended by the layer at the end of a grace period.
    pub sse_force_closed_connections_total: u64,
}

/// The future returned by [`DrainHandle::drain`]: resolves to the drain's
/// report when every response has ended or the grace period has run out.
///
/// # Cancel safety
///
/// Dropping it does not stop the drain; a new call to
/// [`DrainHandle::drain`] returns a future of the same report.
pub struct Drain {
    shared: Arc<Shared>,
    wait: Option<Pin<Box<OwnedNotified>>>,
}

impl Future for Drain {
    type Output = DrainReport;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<DrainReport> {
        loop {
            if let Some(report) = self.shared.report.get() {
                return Poll::Ready(*report);
            }
            // The report is set before `report_ready` fires, and a waiter hears
            // every `notify_waiters` made after it was created: look again
            // after creating one.
            match &mut self.wait {
                Some(wait) => {
                    ready!(wait.as_mut().poll(cx));
                    self.wait = None;
                }
                None => {
                    let wait = self.shared.report_ready.clone().notified_owned();
                    self.wait = Some(Box::pin(wait));
                }
            }
        }
    }
}

impl fmt::Debug for Drain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain")
            .field("report", &self.shared.report.get())
            .finish()
    }
}

/// The state behind a handle, shared by its clones, layers and bodies.
pub(crate) struct Shared {
    /// The in-flight count and the phase, in one word.
    state: State,
    sse: AtomicUsize,
    rejected: AtomicUsize,
    notified: AtomicUsize,
    force_closed_total: AtomicU64,
    /// Fired on each phase change; bodies wait on it while their inner body
    /// is pending.
    pub(crate) changed: Arc<Notify>,
    /// Fired when the last in-flight response ends during a drain.
    all_closed: Notify,
    report_ready: Arc<Notify>,
    /// Set once, before `DRAINING`, by the first `drain()`.
    frame: OnceLock<Bytes>,
    report: OnceLock<DrainReport>,
    pub(crate) config: Config,
}

impl Default for Shared {
    fn default() -> Self {
        Self::new(Config::default())
    }
}

impl Shared {
    fn new(config: Config) -> Self {
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

    fn start(self: &Arc<Self>) {
        if Self::is_draining(self.phase()) {
            return;
        }
        // Fail before the state changes: a drain marked started with no task
        // to run it would never end.
        let runtime = tokio::runtime::Handle::try_current()
            .expect("DrainHandle::drain must first be called inside a Tokio runtime");
        // Whoever sees `DRAINING` finds the frame: it is set first.
        self.frame.get_or_init(|| {
            sse::shutdown_frame(
                &self.config.message_text(),
                self.config.reconnect_delay,
                SystemTime::now(),
            )
        });
        let started = Instant::now();
        let Some(in_flight) = self.state.start_drain() else {
            return; // started by an earlier call
        };
        let sse = self.sse.load(Ordering::Acquire);
        self.changed.notify_waiters();
        runtime.spawn(self.clone().run_drain(started, in_flight, sse));
    }

    async fn run_drain(self: Arc<Self>, started: Instant, in_flight: usize, sse_streams: usize) {
        let grace = self.config.grace_period;
        tracing::info!(
            in_flight,
            grace_period_secs = grace.as_secs_f64(),
            "SSE drain started: new requests are rejected"
        );
        tracing::info!("Active SSE connections: {sse_streams}");
        tracing::info!("Notifying {sse_streams} active connections of shutdown");

        let deadline = tokio::time::sleep_until(started + grace);
        tokio::pin!(deadline);
        let mut ticks =
            tokio::time::interval_at(started + Duration::from_millis(500), Duration::from_secs(1));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let open = || self.state.count();
        let force_closed = loop {
            let closed = self.all_closed.notified();
            if open() == 0 {
                break 0;
            }
            tokio::select! {
                biased;
                () = closed => {}
                () = &mut deadline => break self.force_close(),
                _ = ticks.tick() => tracing::info!(
                    "Waiting for {} connections to close ({:.1}s elapsed)",
                    open(),
                    started.elapsed().as_secs_f64()
                ),
            }
        };
        let report = DrainReport {
            in_flight,
            sse_streams,
            notified: self.notified.load(Ordering::Acquire),
            closed: in_flight.saturating_sub(force_closed),
            force_closed,
            rejected: self.rejected.load(Ordering::Acquire),
            elapsed: started.elapsed(),
        };
        tracing::info!(
            notified = report.notified,
            closed = report.closed,
            force_closed = report.force_closed,
            rejected = report.rejected,
            duration_secs = report.elapsed.as_secs_f64(),
            "Graceful shutdown complete"
        );
        #[cfg(feature = "metrics")]
        metrics::gauge!("sse_shutdown_duration_seconds").set(report.elapsed.as_secs_f64());
        let _ = self.report.set(report);
        self.report_ready.notify_waiters();
    }

    /// Ends the grace period: every body still open ends at its next poll.
    fn force_close(&self) -> usize {
        let open = self.state.force_close();
        self.changed.notify_waiters();
        self.force_closed_total
            .fetch_add(open as u64, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("sse_force_closed_connections_total").increment(open as u64);
        if open > 0 {
            tracing::warn!("Force closing {open} remaining connections");
        }
        open
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
            #[cfg(feature = "metrics")]
            metrics::gauge!("sse_active_connections").increment(1.0);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.sse {
            self.shared.sse.fetch_sub(1, Ordering::AcqRel);
            #[cfg(feature = "metrics")]
            metrics::gauge!("sse_active_connections").decrement(1.0);
        }
        if self.shared.state.release() {
            self.shared.all_closed.notify_one();
        }
    }
}

/// Describes the three metrics to the installed `metrics` recorder.
#[cfg(feature = "metrics")]
fn describe_metrics() {
    metrics::describe_gauge!("sse_active_connections", "Open text/event-stream responses");
    metrics::describe_gauge!(
        "sse_shutdown_duration_seconds",
        metrics::Unit::Seconds,
        "Duration of the last drain"
    );
    metrics::describe_counter!(
        "sse_force_closed_connections_total",
        "Responses ended at the end of a grace period"
    );
    // Show the series from the start, at zero, rather than only once used.
    metrics::gauge!("sse_active_connections").increment(0.0);
    metrics::counter!("sse_force_closed_connections_total").increment(0);
}
