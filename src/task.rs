//! The drain task: starts the drain, waits for the streams up to the grace
//! period, ends the rest, builds the report, and cuts the connections still
//! open at the deadline.

use crate::{
    DrainReport,
    config::{after, seconds},
    metrics,
    schedule::Plan,
    shared::Shared,
    state::AtStart,
};
use std::{
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    time::{Duration, SystemTime},
};
use tokio::time::{Instant, Sleep};

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
        let Some(at_start) = self.state.start_drain() else {
            return; // started by an earlier call
        };
        self.wakers.wake_all();
        runtime.spawn(self.clone().run_drain(started, at_start));
    }

    async fn run_drain(self: Arc<Self>, started: Instant, at_start: AtStart) {
        let grace = self.config.grace_period;
        let AtStart {
            in_flight,
            sse_streams,
        } = at_start;
        let config = &self.config;
        let window = self.plan().window();
        tracing::info!(
            in_flight,
            grace_period_secs = grace.as_secs_f64(),
            reconnect_delay_secs = config.reconnect_delay.as_secs_f64(),
            reconnect_window_secs = window.as_secs_f64(),
            reconnect_rate = config.reconnect_rate,
            notice_window_secs = config.notice_window.as_secs_f64(),
            "SSE drain started: new requests are rejected; clients reconnect after {} s plus up to {} s{}",
            seconds(config.reconnect_delay),
            seconds(window),
            match config.reconnect_rate {
                Some(rate) => format!(" ({sse_streams} streams at {rate}/s)"),
                None => String::from(" (the fixed jitter)"),
            },
        );
        tracing::info!("Active SSE connections: {sse_streams}");
        tracing::info!(
            "Notifying {sse_streams} active connections of shutdown \
             (and the streams among {} more responses in flight as their handlers resolve)",
            in_flight - sse_streams,
        );
        metrics::drain_duration(0.0);

        let deadline = tokio::time::sleep_until(after(started, grace));
        tokio::pin!(deadline);
        let mut ticks =
            tokio::time::interval_at(started + Duration::from_millis(500), Duration::from_secs(1));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let force_closed = loop {
            tokio::select! {
                biased;
                ended = self.all_ended(deadline.as_mut()) => {
                    break if ended { 0 } else { self.force_close() };
                }
                _ = ticks.tick() => {
                    let elapsed = started.elapsed().as_secs_f64();
                    metrics::drain_duration(elapsed);
                    tracing::info!(
                        "Waiting for {} connections to close ({elapsed:.1}s elapsed)",
                        self.state.count(),
                    );
                }
            }
        };
        let elapsed = started.elapsed();
        if force_closed > 0 {
            // A body ended by the deadline ends at its next poll, after its
            // notice where it stands at an event boundary (with a grace
            // period of zero, every idle stream): wait for those to go, up to
            // the connections' deadline, so that the report counts their
            // notices. One whose client does not read is never polled again,
            // and is cut at that deadline below.
            let cut = tokio::time::sleep_until(self.deadline().expect("the plan is set"));
            tokio::pin!(cut);
            self.all_ended(cut).await;
        }
        // The notices first, then the late streams: a stream is marked before
        // its notice goes out, so every notice counted here has its stream
        // counted below, and `notified <= sse_streams <= in_flight`.
        let notices = self.log.snapshot();
        let report = DrainReport {
            in_flight,
            sse_streams: sse_streams + self.state.late_sse(),
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
            reconnect_window: self.plan().window(),
            elapsed,
        };
        tracing::info!(
            notified = report.notified,
            sse_streams = report.sse_streams,
            closed = report.closed,
            force_closed = report.force_closed,
            rejected = report.rejected,
            duration_secs = report.elapsed.as_secs_f64(),
            "Graceful shutdown complete"
        );
        metrics::drain_duration(report.elapsed.as_secs_f64());
        let _ = self.report.set(report);
        self.report_ready.notify_waiters();

        // At the deadline, close every connection still wrapped (wrapped
        // before the report or after it: an accept loop goes on, a second
        // server may share the handle): they hold a client that does not read
        // or a response outside the layer, and no client may keep the server
        // alive. A connection wrapped after the cut is cut at its first IO
        // call. The wait holds only a `Weak`, and ends when the state is
        // dropped: it keeps nothing alive for whoever dropped the handle.
        let deadline = self.deadline().expect("the plan is set");
        let gone = self.gone.clone();
        let shared = Arc::downgrade(&self);
        drop(self);
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            () = gone.notified() => return,
        }
        if let Some(shared) = shared.upgrade() {
            shared.state.cut();
            shared.wakers.wake_all();
            tracing::debug!("drain deadline: closing the connections that are still open");
        }
    }

    /// Waits until every counted response has ended (`true`), or `until`
    /// fires first (`false`).
    async fn all_ended(&self, mut until: Pin<&mut Sleep>) -> bool {
        loop {
            // Made before the count is read, so that no last end is missed.
            let closed = self.all_closed.notified();
            if self.state.count() == 0 {
                return true;
            }
            tokio::select! {
                biased;
                () = closed => {}
                () = until.as_mut() => return false,
            }
        }
    }

    /// Ends the grace period: every body still open ends at its next poll.
    fn force_close(&self) -> usize {
        let open = self.state.force_close();
        self.wakers.wake_all();
        self.force_closed_total
            .fetch_add(open as u64, Ordering::Relaxed);
        metrics::force_closed(open);
        if open > 0 {
            tracing::warn!("Force closing {open} remaining connections");
        }
        open
    }
}
