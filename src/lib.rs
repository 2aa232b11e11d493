//! Tower middleware that makes server restarts invisible to Server-Sent Events
//! clients.
//!
//! When a server behind Kubernetes gets `SIGTERM`, every open SSE stream is
//! usually cut: clients see "connection lost", work in progress is lost, and a
//! graceful shutdown hangs on the open streams until the process is killed.
//! [`GracefulSseLayer`] counts every in-flight response body; when your
//! shutdown code calls [`DrainHandle::drain`]:
//!
//! - new requests through the layer are rejected: `503 Service Unavailable`
//!   with `Retry-After` (and `Connection: close` on HTTP/1.x), or, for a
//!   request that accepts `text/event-stream`, a `200` stream that carries only
//!   the shutdown frame (see [`Config::sse_rejection_as_notice`] for why);
//! - every open `text/event-stream` body gets one frame spliced in at an event
//!   boundary, never inside an event, at once if the stream is idle (or at
//!   its moment in the [notice window](Config::notice_window), lowest
//!   [`DrainPriority`] first):
//!
//!   ```text
//!   retry: 37215
//!   event: shutdown
//!   data: {"type":"shutdown","message":"Server restarting, please reconnect in 37.215s","timestamp":"2025-01-02T13:00:00.000Z","reconnect_delay":37.215}
//!
//!   ```
//!
//!   and then ends (or runs on, see [`Config::end_after_notice`]). Each
//!   stream's delay is its own, drawn from 30 s to 30 + 15 s
//!   ([`Config::reconnect_delay`], [`Config::reconnect_jitter`]), so that the
//!   clients do not all come back to the surviving servers in the same
//!   instant;
//! - the drain waits up to the grace period ([`Config::grace_period`],
//!   `SHUTDOWN_GRACE_PERIOD`, default 20 s) for bodies to end, then ends the
//!   rest, and resolves to a [`DrainReport`]: an event stream ends cleanly (its
//!   client drops an unfinished event and reconnects after `retry:`), any
//!   other body is cut with [`DrainDeadline`] so that it never looks complete.
//!
//! # Clients that stop reading
//!
//! A client that stops reading (a phone in a tunnel, a frozen background tab)
//! fills the socket buffers: the server stops polling its response body, so
//! the layer cannot end it, and the connection stays open. Left alone, it
//! keeps `axum::serve(..).with_graceful_shutdown(..)` (or any graceful
//! shutdown) waiting until the process is killed. Close such connections at
//! the drain's [deadline](Drain::deadline), the end of the grace period plus a
//! short [linger](Config::linger) (default 1 s) that lets the last bytes out:
//!
//! - axum: serve [`DrainHandle::listener`]`(listener)` instead of the listener
//!   (cargo feature `axum`), and the router as `router.into_make_service()`:
//!   `axum::serve(listener, router)` builds the routes again for every
//!   connection, each with its own copies of the layered routes' services;
//! - hyper-util: spawn [`DrainHandle::watch`]`(connection)` instead of the
//!   connection (cargo feature `hyper-util`); it also shuts the connection
//!   down gracefully when the drain starts (one accepted during the drain
//!   answers first: see [`Watched`]);
//! - any other server: wrap each connection's IO in [`GracefulIo`], or drop
//!   each connection still open at [`Drain::deadline`]: the deadline is
//!   known once the drain has started, so race each connection against
//!   [`DrainHandle::drained`] (the report comes before the deadline), then a
//!   sleep until the deadline.
//!
//! Connections wrapped after the drain's report (an accept loop goes on until
//! the server stops) are cut at the deadline too, and one wrapped after the
//! deadline fails at its first IO call.
//!
//! Healthy streams are not affected: they have had their notice and ended long
//! before.
//!
//! # Metrics
//!
//! With the `metrics` cargo feature the crate records three metrics through
//! the [`metrics`](https://docs.rs/metrics) facade, so any exporter installed
//! by the application (Prometheus, StatsD, ...) sees them. Their names are a
//! contract, and they carry no label: the handles of one process add up in
//! the active gauge and the counter, and share the duration gauge, which
//! shows the drain that wrote it last.
//!
//! - `sse_active_connections` (gauge): open `text/event-stream` responses the
//!   notice can enter, as [`DrainHandle::sse_streams`] counts them; a
//!   compressed event stream, one of declared length (see the caveats) and
//!   any other body are not in it (they are in [`DrainHandle::in_flight`]).
//! - `sse_shutdown_duration_seconds` (gauge): how long the drain has run,
//!   updated every second while it runs, final once it ends:
//!   [`DrainReport::elapsed`].
//! - `sse_force_closed_connections_total` (counter): responses of any kind
//!   (SSE or not) still open at the end of a grace period and ended by the
//!   layer: [`DrainReport::force_closed`], summed over drains.
//!
//! In code, read each figure in one place: the handle for what is open now,
//! the report for what the drain did.
//!
//! # Caveats
//!
//! - A compressed event stream (`Content-Encoding` other than `identity`) is
//!   counted but never spliced, and if it is still open at the deadline it is
//!   cut there, so the client's decoder reports a truncated stream. Put the
//!   compression layer outside this one: the notice is then compressed with
//!   the rest. (tower-http's default predicate never compresses event
//!   streams.) `RELIABILITY.md` shows each order.
//! - An event stream whose handler set `Content-Length` (a finite list of
//!   events, or an upstream's headers passed on) is counted but never
//!   spliced either: the notice would overrun the declared length, which
//!   HTTP/1.1 truncates and HTTP/2 resets. It runs to its end within the
//!   grace period, or is cut at the deadline, as any other body.
//! - A body that is not an event stream (a CSV download, a long JSON response)
//!   and is still running at the deadline is cut: it fails with
//!   [`DrainDeadline`], so the server aborts it (HTTP/1.1 closes the
//!   connection without the final chunk, HTTP/2 resets the stream) and the
//!   client reports a truncated transfer instead of taking it for a whole one.
//! - A handler that resolves after the grace period (admitted before the
//!   drain, slow to answer) gets its body ended at its first poll, as every
//!   body still open then: an event stream gets its notice if it stands at a
//!   boundary and ends cleanly, any other body, even a complete `Full`, is
//!   cut with [`DrainDeadline`]: the layer cannot tell a body that would end
//!   at once from one that would run on, and a grace period is the bound on
//!   both.
//! - [`DrainHandle::drain`] spawns the drain task on the runtime it is
//!   called on: the task ends the grace period and, after the report, cuts
//!   the connections at the deadline. Call it on the runtime that serves, or
//!   on one that runs at least until the deadline: a runtime dropped earlier
//!   (one made to `block_on` the drain in a signal thread) takes the task
//!   with it, and nothing cuts a client that stopped reading.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use std::convert::Infallible;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_graceful_sse::{Config, DrainHandle};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let handle = DrainHandle::new(Config::default()); // or Config::from_env()?
//! let service = ServiceBuilder::new()
//!     .layer(handle.layer())
//!     .service(service_fn(|_: Request<()>| async {
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hello"))))
//!     }));
//!
//! let res = service.clone().oneshot(Request::new(())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(handle.in_flight(), 1); // until the body ends or is dropped
//! drop(res);
//!
//! let report = handle.drain().await; // from your SIGTERM handler
//! assert_eq!(report.force_closed, 0);
//!
//! let res = service.oneshot(Request::new(())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
//! let retry_after: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
//! assert!((30..=45).contains(&retry_after)); // 30 s plus up to 15 s of jitter
//! # }
//! ```
//!
//! With axum, put the layer on the streaming routes (`Router::route_layer`)
//! so health checks and metrics stay answerable during the drain, serve
//! [`DrainHandle::listener`]`(listener)`, and let
//! `axum::serve(..).with_graceful_shutdown(..)` wait for the drain's report:
//! the streams are then closed and the server exits, at the latest at the
//! deadline. The `analytics` example shows the whole integration.

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![deny(unreachable_pub)]

mod body;
mod config;
mod drain;
mod error;
mod future;
mod handle;
mod io;
mod layer;
#[cfg(feature = "axum")]
mod listener;
mod metrics;
mod priority;
mod report;
mod schedule;
mod service;
mod shared;
mod sse;
#[cfg(loom)]
#[doc(hidden)]
pub mod state;
#[cfg(not(loom))]
mod state;
mod task;
#[cfg(feature = "hyper-util")]
mod watch;

pub use body::GracefulBody;
pub use config::{
    Config, ConfigError, GRACE_PERIOD_ENV, LINGER_ENV, NOTICE_WINDOW_ENV, RECONNECT_DELAY_ENV,
    RECONNECT_JITTER_ENV, RECONNECT_RATE_ENV,
};
pub use drain::Drain;
pub use error::{BoxError, DrainDeadline};
pub use future::ResponseFuture;
pub use handle::DrainHandle;
pub use io::GracefulIo;
pub use layer::GracefulSseLayer;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use listener::GracefulListener;
pub use priority::DrainPriority;
pub use report::DrainReport;
pub use service::GracefulSse;
#[cfg(feature = "hyper-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "hyper-util")))]
pub use watch::Watched;

/// The README's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
