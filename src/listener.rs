//! The axum integration: a listener whose connections the drain's deadline
//! closes.

use crate::{DrainHandle, GracefulIo};
use axum::serve::Listener;
use std::{fmt, io};

/// An [`axum::serve::Listener`] whose connections are closed at the drain's
/// [deadline](crate::Drain::deadline): a client that stops reading cannot keep
/// `axum::serve(..).with_graceful_shutdown(..)` waiting.
///
/// Made by [`DrainHandle::listener`]; every accepted connection is a
/// [`GracefulIo`]. `ListenerExt::tap_io` still works on it, and on the
/// listener it wraps.
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use tower_graceful_sse::{Config, DrainHandle};
///
/// # #[tokio::main]
/// # async fn main() -> std::io::Result<()> {
/// let handle = DrainHandle::new(Config::default());
/// let app: Router = Router::new().route("/events", get(|| async { "..." }));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// axum::serve(handle.listener(listener), app.layer(handle.layer()).into_make_service())
///     .with_graceful_shutdown(async move {
///         tokio::signal::ctrl_c().await.ok();
///         handle.drain().await;
///     })
///     .await
/// # }
/// ```
pub struct GracefulListener<L> {
    listener: L,
    handle: DrainHandle,
}

impl<L> GracefulListener<L> {
    /// Wraps `listener`: its connections are closed at the deadline of
    /// `handle`'s drain.
    pub fn new(listener: L, handle: &DrainHandle) -> Self {
        Self {
            listener,
            handle: handle.clone(),
        }
    }

    /// The wrapped listener.
    pub fn get_ref(&self) -> &L {
        &self.listener
    }

    /// Unwraps the listener.
    pub fn into_inner(self) -> L {
        self.listener
    }
}

impl<L: Listener> Listener for GracefulListener<L> {
    type Io = GracefulIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.listener.accept().await;
        (GracefulIo::new(io, &self.handle), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

impl<L: fmt::Debug> fmt::Debug for GracefulListener<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GracefulListener")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}
