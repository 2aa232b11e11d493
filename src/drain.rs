//! The drain's public future: its report, to come. The task that runs the
//! drain is in `task.rs`.

use crate::{DrainReport, shared::Shared};
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};
use tokio::{sync::futures::OwnedNotified, time::Instant};

/// A drain's report, to come: returned by
/// [`DrainHandle::drain`](crate::DrainHandle::drain), which starts the drain,
/// and by [`DrainHandle::drained`](crate::DrainHandle::drained), which only
/// waits for one.
///
/// Resolves to the report once every response has ended, or once the grace
/// period has run out and the responses it ended have gone (at the latest
/// at the [deadline](Self::deadline), for those whose client does not
/// read); completes immediately if the drain is already over, and waits for
/// as long as no drain is started.
///
/// One type for both: what they wait for is the same report, and the
/// [deadline](Self::deadline) is known to both once the drain has started.
///
/// # Cancel safety
///
/// Dropping it does not stop the drain, and it holds no place in any queue
/// that matters: it can be used in `tokio::select!` and made again; a new
/// call returns a future of the same report.
#[must_use = "the drain runs anyway; await this to get its report"]
pub struct Drain {
    report: ReportWait,
}

impl Drain {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            report: ReportWait::new(shared),
        }
    }

    /// The drain's deadline, once it has started (`None` before): the end of
    /// the grace period plus the [linger](crate::Config::linger), saturated
    /// (an instant too far to represent is about thirty years away). At this
    /// instant the layer's bodies have long ended, and connections that still
    /// carry a response are closed by [`GracefulIo`](crate::GracefulIo), the
    /// axum listener and the hyper-util watcher.
    ///
    /// With any other server, drop each connection still open at this
    /// instant: a client that stops reading then cannot keep the process
    /// alive. A connection accepted before the drain learns the instant
    /// only once the drain has started, for example by awaiting
    /// [`DrainHandle::drained`](crate::DrainHandle::drained) (the report comes
    /// before the deadline) before `tokio::time::sleep_until(deadline)`.
    #[must_use]
    pub fn deadline(&self) -> Option<Instant> {
        self.report.shared.deadline()
    }
}

impl Future for Drain {
    type Output = DrainReport;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<DrainReport> {
        self.report.poll(cx)
    }
}

impl fmt::Debug for Drain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain")
            .field("deadline", &self.deadline())
            .field("report", &self.report.shared.report.get())
            .finish()
    }
}

/// Waits for the report to be published.
struct ReportWait {
    shared: Arc<Shared>,
    wait: Option<Pin<Box<OwnedNotified>>>,
}

impl ReportWait {
    fn new(shared: Arc<Shared>) -> Self {
        Self { shared, wait: None }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<DrainReport> {
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
