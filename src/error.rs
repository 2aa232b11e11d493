//! The error a response body ends with when the drain cuts it.

use std::{error::Error, fmt};

/// The error type of [`GracefulBody`](crate::GracefulBody): the inner body's
/// own error, or [`DrainDeadline`].
pub type BoxError = Box<dyn Error + Send + Sync>;

/// The drain cut this: a response that was not an event stream, still
/// running when the grace period ran out; or, as the source of
/// [`GracefulIo`](crate::GracefulIo)'s `TimedOut` error, a connection still
/// open at the drain's [deadline](crate::Drain::deadline).
///
/// [`GracefulBody`](crate::GracefulBody) yields it instead of a normal end, so
/// that the server aborts the response (on HTTP/1.1 the connection closes
/// without the final chunk, on HTTP/2 the stream is reset) and the client
/// reports a truncated transfer rather than a complete one. Tell it apart
/// from the inner body's errors with `downcast_ref::<DrainDeadline>()`.
///
/// ```
/// use tower_graceful_sse::{BoxError, DrainDeadline};
///
/// let err: BoxError = DrainDeadline::default().into();
/// assert!(err.downcast_ref::<DrainDeadline>().is_some());
/// assert_eq!(err.to_string(), "cut by the drain: still open when its time ran out");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainDeadline;

impl DrainDeadline {
    pub(crate) fn boxed() -> BoxError {
        Box::new(Self)
    }
}

impl fmt::Display for DrainDeadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cut by the drain: still open when its time ran out")
    }
}

impl Error for DrainDeadline {}
