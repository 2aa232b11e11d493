//! What a drain did.

use crate::DrainPriority;
use std::{fmt, time::Duration};

/// What a drain did, resolved by [`Drain`](crate::Drain).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Responses in flight (SSE or not) when the drain started.
    pub in_flight: usize,
    /// Of those, the `text/event-stream` responses the notice can enter:
    /// those open when the drain started, and those whose handler resolved
    /// after it (up to the report). Always `notified <= sse_streams <=
    /// in_flight`.
    pub sse_streams: usize,
    /// Open SSE streams whose shutdown frame was handed to the server to
    /// write, those ended by the grace period's end included (rejected SSE
    /// requests, which get it too, count under `rejected`); by priority with
    /// [`notified_at`](Self::notified_at).
    pub notified: usize,
    pub(crate) notified_by_priority: [usize; 3],
    /// When the first notice went out, from the start of the drain.
    pub first_notice: Option<Duration>,
    /// When the last notice went out, from the start of the drain: with a
    /// [notice window](crate::Config::notice_window), near its end.
    pub last_notice: Option<Duration>,
    /// In-flight responses that ended within the grace period.
    pub closed: usize,
    /// Responses still open when the grace period ended, and ended by the
    /// layer (SSE or not): what the `sse_force_closed_connections_total`
    /// counter adds.
    pub force_closed: usize,
    /// Requests rejected since the drain started, up to the report.
    pub rejected: usize,
    /// How far past [`Config::reconnect_delay`](crate::Config::reconnect_delay)
    /// the clients' delays were spread: the
    /// [jitter](crate::Config::reconnect_jitter), or the open streams over
    /// the [reconnect rate](crate::Config::reconnect_rate).
    pub reconnect_window: Duration,
    /// From the start of the drain until the last response ended or the grace
    /// period ran out: the final value of the `sse_shutdown_duration_seconds`
    /// gauge.
    pub elapsed: Duration,
}

impl DrainReport {
    /// The notices sent to streams of `priority`.
    #[must_use]
    pub fn notified_at(&self, priority: DrainPriority) -> usize {
        self.notified_by_priority[priority.index()]
    }
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
