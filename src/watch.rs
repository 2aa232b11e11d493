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
    /// which the layer sees to. At the drain's
    /// [deadline](crate::Drain::deadline) it drops the connection, whether or
    /// not its client reads, and resolves to `Ok(())`.
    ///
    /// [`DrainHandle::watch`]: crate::DrainHandle::watch
    #[must_use = "futures do nothing unless polled"]
    pub struct Watched<C> {
        #[pin]
        conn: Option<C>,
        shutting_down: bool,
        wait: Waiter,
    }
}

impl<C> Watched<C> {
    pub(crate) fn new(conn: C, shared: Arc<Shared>) -> Self {
        Self {
            conn: Some(conn),
            shutting_down: false,
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
            if Shared::is_draining(phase) && !*this.shutting_down {
                *this.shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
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
            .field("shutting_down", &self.shutting_down)
            .finish_non_exhaustive()
    }
}
