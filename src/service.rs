//! The service: admits or rejects each request.

use crate::{
    DrainHandle, DrainPriority, GracefulBody, GracefulSseLayer, ResponseFuture,
    schedule::Draw,
    shared::{Shared, Waiter},
    sse::accepts_event_stream,
};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use http_body::Body;
use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};
use tower_service::Service;

/// Middleware that counts every response body and drains them on demand.
///
/// Made by [`GracefulSseLayer`]; see the [crate docs](crate) for the behaviour.
///
/// While draining, `poll_ready` is ready at once without asking the inner
/// service (which may be saturated: a `ConcurrencyLimit` whose permits slow
/// handlers hold), and `call` answers with the rejection without touching
/// it. A request already waiting in the inner `poll_ready` when the drain
/// starts is woken and rejected too.
pub struct GracefulSse<S> {
    inner: S,
    shared: Arc<Shared>,
    // Wakes a `poll_ready` pending in the inner service when the drain
    // starts. Boxed: it exists only while the inner service is not ready,
    // and inline it would make every clone (axum clones the service for
    // each connection) 24 bytes bigger.
    wait: Option<Box<Waiter>>,
}

impl<S: Clone> Clone for GracefulSse<S> {
    fn clone(&self) -> Self {
        Self::from_shared(self.inner.clone(), self.shared.clone())
    }
}

impl<S> GracefulSse<S> {
    /// Wraps `inner`, counting its responses with `handle`.
    pub fn new(inner: S, handle: &DrainHandle) -> Self {
        Self::from_shared(inner, handle.shared().clone())
    }

    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        Self {
            inner,
            shared,
            wait: None,
        }
    }

    /// A [`GracefulSseLayer`] tied to `handle`.
    pub fn layer(handle: &DrainHandle) -> GracefulSseLayer {
        GracefulSseLayer::new(handle)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for GracefulSse<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<GracefulBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            // `DRAINING` never goes away: `call` then rejects without the
            // inner service, so there is nothing to wait for.
            let phase = self.shared.phase();
            if Shared::is_draining(phase) {
                self.wait = None;
                return Poll::Ready(Ok(()));
            }
            let ready = self.inner.poll_ready(cx);
            if ready.is_ready() {
                self.wait = None;
                return ready;
            }
            let shared = &self.shared;
            let wait = self
                .wait
                .get_or_insert_with(|| Box::new(Waiter::new(shared.clone())));
            if wait.wait(cx, phase).is_pending() {
                return Poll::Pending;
            }
        }
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // Set by a middleware in front: one map lookup per request, none per
        // frame.
        let priority = req
            .extensions()
            .get::<DrainPriority>()
            .copied()
            .unwrap_or_default();
        match self.shared.admit(priority) {
            Ok(guard) => ResponseFuture::admitted(self.inner.call(req), guard),
            Err(index) => ResponseFuture::rejected(rejection(&self.shared, &req, index)),
        }
    }
}

/// The answer to the `index`th request that arrives while draining.
///
/// `503` with `Retry-After`, except that a request for an event stream gets,
/// by default, `200` with the shutdown frame alone: see
/// [`Config::sse_rejection_as_notice`](crate::Config::sse_rejection_as_notice).
/// Either carries the rejection's own delay, spread as the notices' are.
fn rejection<B>(shared: &Shared, req: &Request<B>, index: usize) -> Response<Bytes> {
    let config = &shared.config;
    let mut res = if config.sse_rejection_as_notice && accepts_event_stream(req) {
        let mut res = Response::new(shared.plan().frame(Draw::Rejection, index));
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        res
    } else {
        let mut res = Response::new(Bytes::from_static(
            b"503 Service Unavailable: the server is restarting, please retry later\n",
        ));
        *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(shared.plan().retry_after(index)),
        );
        res
    };
    if req.version() <= Version::HTTP_11 {
        // Send the client elsewhere: a new connection reaches a live instance.
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

impl<S: fmt::Debug> fmt::Debug for GracefulSse<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GracefulSse")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
