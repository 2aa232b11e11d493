//! The drain: the future of its report, and the task that runs it.

use crate::{DrainReport, metrics, schedule::Plan, shared::Shared};
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll, ready},
    time::{Duration, SystemTime},
};
use tokio::{sync::futures::OwnedNotified, time::Instant};

/// The future returned by [`DrainHandle::drain`]: resolves to the drain's
/// report when every response has ended or the grace period has run out.
///
/// # Cancel safety
///
/// Dropping it does not stop the drain; a new call to
/// [`DrainHandle::drain`] returns a future of the same report.
pub struct Drain {
    pub(crate) shared: Arc<Shared>,
    pub(crate) wait: Option<Pin<Box<OwnedNotified>>>,
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

impl Shared {
    /// Starts the drain, once: marks it started, wakes every body and
    /// spawns the drain task.
    pub(crate) fn start(self: &Arc<Self>) {
        if Self::is_draining(self.phase()) {
            return;
        }
        // Fail before the state changes: a drain marked started with no task
        // to run it would never end.
        let runtime = tokio::runtime::Handle::try_current()
            .expect("DrainHandle::drain must first be called inside a Tokio runtime");
        // Whoever sees `DRAINING` finds the frame and the schedule: they are
        // set first.
        let plan = self.plan.get_or_init(|| {
            Plan::new(
                &self.config,
                self.open_by_priority(),
                Instant::now(),
                SystemTime::now(),
            )
        });
        let started = plan.started;
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
        let notices = self.log.snapshot();
        let report = DrainReport {
            in_flight,
            sse_streams,
            notified: notices.by_priority.iter().sum(),
            notified_by_priority: notices.by_priority,
            first_notice: notices
                .first_last
                .map(|(first, _)| Duration::from_nanos(first)),
            last_notice: notices
                .first_last
                .map(|(_, last)| Duration::from_nanos(last)),
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
        metrics::drain_duration(report.elapsed.as_secs_f64());
        let _ = self.report.set(report);
        self.report_ready.notify_waiters();
    }

    /// Ends the grace period: every body still open ends at its next poll.
    fn force_close(&self) -> usize {
        let open = self.state.force_close();
        self.changed.notify_waiters();
        self.force_closed_total
            .fetch_add(open as u64, Ordering::Relaxed);
        metrics::force_closed(open);
        if open > 0 {
            tracing::warn!("Force closing {open} remaining connections");
        }
        open
    }
}
