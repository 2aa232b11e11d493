//! The hyper-util integration: a connection that shuts down gracefully when
//! the drain starts and is dropped at its deadline.

use crate::shared::{Shared, Waiter};
use hyper_util::server::graceful::GracefulConnection;
use pin_project_lite::pin_project;
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

pin_project! {
    /// A hyper connection watched by a drain: made by [`DrainHandle::watch`].
    ///
    /// When the drain starts, it calls the connection's `graceful_shutdown`
    /// (HTTP/1: no keep-alive after the current response; HTTP/2: `GOAWAY`,
    /// open streams go on), so the connection ends once its responses have,
    /// which the layer sees to. A connection first polled during the drain
    /// (accepted then, or just before) is not shut down so: hyper would
    /// close it before reading the request it carries, which then gets no
    /// answer at all. It answers, each request rejected by the layer (on
    /// HTTP/1.x with `Connection: close`, which ends it). At the drain's
    /// [deadline](crate::Drain::deadline) it drops the connection, whether or
    /// not its client reads, and resolves to `Ok(())`.
    ///
    /// [`DrainHandle::watch`]: crate::DrainHandle::watch
    #[must_use = "futures do nothing unless polled"]
    pub struct Watched<C> {
        #[pin]
        conn: Option<C>,
        stage: Stage,
        wait: Waiter,
    }
}

/// Where a watched connection stands with the drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Not polled yet.
    New,
    /// Polled before the drain started.
    Open,
    /// Shut down gracefully at the drain's start, or first polled during
    /// the drain (and left to answer): nothing more to do until the cut.
    Draining,
}

impl<C> Watched<C> {
    pub(crate) fn new(conn: C, shared: Arc<Shared>) -> Self {
        Self {
            conn: Some(conn),
            stage: Stage::New,
            wait: Waiter::new(shared),
        }
    }
}

impl<C: GracefulConnection> Future for Watched<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        loop {
            let Some(mut conn) = this.conn.as_mut().as_pin_mut() else {
                return Poll::Ready(Ok(())); // dropped at the deadline
            };
            let phase = this.wait.shared().phase();
            *this.stage = match (*this.stage, Shared::is_draining(phase)) {
                (Stage::New, false) => Stage::Open,
                (Stage::Open, true) => {
                    conn.as_mut().graceful_shutdown();
                    Stage::Draining
                }
                (Stage::New, true) => Stage::Draining,
                (stage, _) => stage,
            };
            if Shared::is_cut(phase) {
                tracing::debug!("dropping a connection still open at the drain deadline");
                this.conn.set(None);
                continue;
            }
            if let Poll::Ready(done) = conn.poll(cx) {
                return Poll::Ready(done);
            }
            if this.wait.wait(cx, phase).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for Watched<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watched")
            .field("conn", &self.conn)
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}
