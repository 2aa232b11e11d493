//! The public handle: starts the drain and watches its progress.

use crate::{Config, ConfigError, Drain, DrainReport, GracefulSseLayer, metrics, shared::Shared};
use std::{fmt, sync::Arc};

/// A cheap, cloneable handle that starts the drain and watches its progress.
///
/// Every clone, and every [`GracefulSseLayer`] made from one, shares the same
/// state: the counts, the drain and its report (cloning shares it
/// deliberately, as cloning tower's `ConcurrencyLimitLayer` shares its
/// semaphore). One handle can serve any number of layers (several routers,
/// several servers); the drain covers them all.
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
#[derive(Clone)]
pub struct DrainHandle {
    shared: Arc<Shared>,
}

impl DrainHandle {
    /// A handle with the given settings; no drain has started.
    ///
    /// A [`Config`] from [`Config::from_env`] is already validated: this
    /// cannot panic on it. For settings built in code that may not fit
    /// together, [`try_new`](Self::try_new) returns the error instead.
    ///
    /// # Panics
    ///
    /// If the settings do not fit together (a notice window that does not end
    /// before the grace period), with the message of
    /// [`Config::validate`], which says which: a mistake in the code that
    /// builds the settings, found at start-up rather than at the drain.
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self::try_new(config).unwrap_or_else(|err| panic!("{err}"))
    }

    /// A handle with the given settings, or the error of
    /// [`Config::validate`] if they do not fit together.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of [`Config::validate`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_graceful_sse::{Config, DrainHandle};
    ///
    /// let config = Config::default().notice_window(Duration::from_secs(30));
    /// let err = DrainHandle::try_new(config).unwrap_err();
    /// assert_eq!(err.name(), "Config::notice_window");
    /// ```
    pub fn try_new(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        metrics::describe();
        Ok(Self {
            shared: Arc::new(Shared::new(config)),
        })
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
    /// inside a runtime then starts the drain. The drain runs on that
    /// runtime: it must run until the drain's deadline (see the crate docs'
    /// caveats).
    pub fn drain(&self) -> Drain {
        self.shared.start();
        Drain::new(self.shared.clone())
    }

    /// Waits for the report of the drain, without starting one.
    ///
    /// Completes immediately if the drain is over; otherwise when whoever
    /// calls [`drain`](Self::drain) sees it finish. This keeps the trigger
    /// (your shutdown code) apart from those that only watch: a test, a
    /// metrics task, a second server sharing the handle.
    ///
    /// ```
    /// use tower_graceful_sse::{Config, DrainHandle};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let handle = DrainHandle::new(Config::default());
    /// let watcher = tokio::spawn(handle.drained()); // does not start it
    /// assert!(!handle.is_draining());
    ///
    /// let report = handle.drain().await;
    /// assert_eq!(watcher.await.unwrap(), report);
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future changes nothing.
    pub fn drained(&self) -> Drain {
        Drain::new(self.shared.clone())
    }

    /// Wraps an axum listener so that its connections are closed at the
    /// drain's [deadline](Drain::deadline): see [`GracefulListener`](crate::GracefulListener).
    ///
    /// `axum::serve(handle.listener(listener), app.into_make_service())` is
    /// the one line that keeps a client that stops reading from holding the
    /// server past the grace period.
    #[cfg(feature = "axum")]
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub fn listener<L>(&self, listener: L) -> crate::GracefulListener<L> {
        crate::GracefulListener::new(listener, self)
    }

    /// Watches a hyper connection: shuts it down gracefully when the drain
    /// starts and drops it at the drain's [deadline](Drain::deadline). See
    /// [`Watched`](crate::Watched).
    ///
    /// The counterpart of hyper-util's `GracefulShutdown::watch`, for
    /// servers written with hyper-util's connection builders:
    ///
    /// ```
    /// use hyper_util::{rt::{TokioExecutor, TokioIo}, server::conn::auto::Builder};
    /// use tower_graceful_sse::{Config, DrainHandle};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let handle = DrainHandle::new(Config::default());
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// # let addr = listener.local_addr()?;
    /// # tokio::spawn(tokio::net::TcpStream::connect(addr));
    /// let (stream, _) = listener.accept().await?;
    /// let service = hyper::service::service_fn(|_req| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
    /// });
    /// let conn = Builder::new(TokioExecutor::new())
    ///     .serve_connection(TokioIo::new(stream), service)
    ///     .into_owned();
    /// tokio::spawn(handle.watch(conn));
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "hyper-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "hyper-util")))]
    pub fn watch<C>(&self, conn: C) -> crate::Watched<C>
    where
        C: hyper_util::server::graceful::GracefulConnection,
    {
        crate::Watched::new(conn, self.shared.clone())
    }

    /// True once [`drain`](Self::drain) has been called.
    #[must_use]
    pub fn is_draining(&self) -> bool {
        Shared::is_draining(self.shared.phase())
    }

    /// The number of open `text/event-stream` responses that can receive the
    /// shutdown frame (not compressed ones, nor ones of declared length: see
    /// the crate docs' caveats). The `sse_active_connections` gauge follows
    /// it.
    #[must_use]
    pub fn sse_streams(&self) -> usize {
        self.shared.state.sse()
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
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Default for DrainHandle {
    /// A handle with [`Config::default`], as [`DrainHandle::new`] makes it.
    fn default() -> Self {
        Self::new(Config::default())
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
