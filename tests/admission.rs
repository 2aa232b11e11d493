//! What happens to a request during the drain: it never reaches the inner
//! service; a plain request gets `503` with `Retry-After`, an EventSource gets
//! `200` carrying the notice alone (or the `503`, if configured); and the race
//! between admitting a request and starting the drain, under real threads.
//!
//! The same race is model-checked in `tests/loom.rs`.

mod common;

use axum::{Router, routing::get};
use bytes::Bytes;
use common::*;
use futures_util::stream;
use http::{Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_graceful_sse::{Config, DrainHandle};

#[tokio::test]
async fn requests_after_drain_are_rejected_without_reaching_the_service() {
    let calls = Arc::new(AtomicUsize::new(0));
    let handle = DrainHandle::new(Config::default());
    let counted = calls.clone();
    let app = Router::new()
        .route(
            "/count",
            get(move || async move {
                counted.fetch_add(1, SeqCst);
                "ok"
            }),
        )
        .layer(handle.layer());
    let addr = serve(app);

    let (res, _conn) = request(addr, "/count", "*/*").await;
    assert_eq!(res.status(), 200);
    assert_eq!(body_bytes(res.into_body()).await, "ok");
    assert_eq!(calls.load(SeqCst), 1);

    within(handle.drain()).await;

    let (res, _conn) = request(addr, "/count", "*/*").await;
    assert_eq!(res.status(), 503);
    assert_default_retry_after(&res);
    assert_eq!(res.headers()[header::CONNECTION], "close");
    assert!(
        body_bytes(res.into_body())
            .await
            .starts_with(b"503 Service Unavailable")
    );

    // An EventSource gets a stream that carries the notice and ends.
    let (res, _conn) = request(addr, "/count", "text/event-stream").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
    assert_eq!(res.headers()[header::CONNECTION], "close");
    let events = rest(&mut events(res.into_body())).await;
    assert_eq!(events.len(), 1);
    assert_shutdown_event(&events[0]);

    assert_eq!(
        calls.load(SeqCst),
        1,
        "the service was called while draining"
    );
}

#[tokio::test]
async fn sse_rejection_can_be_a_plain_503() {
    let handle = DrainHandle::new(Config::default().sse_rejection_as_notice(false));
    let addr = serve(
        Router::new()
            .route("/idle", get(idle))
            .layer(handle.layer()),
    );
    within(handle.drain()).await;
    let (res, _conn) = request(addr, "/idle", "text/event-stream").await;
    assert_eq!(res.status(), 503);
    assert_default_retry_after(&res);
    assert!(
        body_bytes(res.into_body())
            .await
            .starts_with(b"503 Service Unavailable")
    );
}

/// Marks a request sent after its sender saw `is_draining()`.
#[derive(Clone, Copy)]
struct SentWhileDraining;

/// The header the inner service puts on every response it makes: a response
/// without it never reached the service.
const SERVED_BY_INNER: &str = "x-served-by-inner";

const ROUNDS: usize = 200;
const TASKS: usize = 8;

/// Many tasks on two threads send requests in a tight loop while `drain()`
/// fires at a varying moment. Whether a request was admitted is told by the
/// inner service's own mark on the response, not by the layer's headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_reaches_the_service_once_the_drain_is_visible() {
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    for round in 0..ROUNDS {
        // The drain fires after a varying number of served requests.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let fire_after = (seed % 200) as usize;

        let handle = DrainHandle::new(
            Config::default()
                .grace_period(Duration::from_secs(60))
                .reconnect_jitter(Duration::ZERO),
        );
        let served = Arc::new(AtomicUsize::new(0));
        let late = Arc::new(AtomicUsize::new(0));
        let service = {
            let (served, late) = (served.clone(), late.clone());
            ServiceBuilder::new()
                .layer(handle.layer())
                .service(service_fn(move |req: Request<()>| {
                    if req.extensions().get::<SentWhileDraining>().is_some() {
                        late.fetch_add(1, SeqCst);
                    }
                    served.fetch_add(1, SeqCst);
                    // An idle event stream: only the notice will end it.
                    let body =
                        StreamBody::new(stream::pending::<Result<Frame<Bytes>, Infallible>>());
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header(header::CONTENT_TYPE, "text/event-stream")
                                .header(SERVED_BY_INNER, "yes")
                                .body(body)
                                .unwrap(),
                        )
                    }
                }))
        };

        let senders: Vec<_> = (0..TASKS)
            .map(|task| {
                let (handle, mut service) = (handle.clone(), service.clone());
                tokio::spawn(async move {
                    let (mut bodies, mut rejected) = (Vec::new(), 0);
                    // Send until a few requests have been sent after the
                    // drain became visible to this task.
                    let mut after = 0;
                    while after < 3 {
                        let mut req = Request::new(());
                        if task % 2 == 0 {
                            req.headers_mut()
                                .insert(header::ACCEPT, "text/event-stream".parse().unwrap());
                        }
                        if handle.is_draining() {
                            req.extensions_mut().insert(SentWhileDraining);
                            after += 1;
                        }
                        let res = service.ready().await.unwrap().call(req).await.unwrap();
                        if res.headers().contains_key(SERVED_BY_INNER) {
                            bodies.push(tokio::spawn(res.into_body().collect()));
                        } else {
                            rejected += 1;
                            let status = res.status();
                            let body = res.into_body().collect().await.unwrap().to_bytes();
                            if task % 2 == 0 {
                                assert_eq!(status, StatusCode::OK);
                                assert!(body.starts_with(b"retry: 30000\nevent: shutdown\n"));
                            } else {
                                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
                                assert!(body.starts_with(b"503 Service Unavailable"));
                            }
                        }
                        tokio::task::yield_now().await;
                    }
                    (bodies, rejected)
                })
            })
            .collect();

        while served.load(SeqCst) < fire_after && !senders.iter().all(|s| s.is_finished()) {
            tokio::task::yield_now().await;
        }
        let drain = handle.drain();

        let (mut admitted, mut rejected) = (0, 0);
        for sender in senders {
            let (bodies, r) = sender.await.unwrap();
            rejected += r;
            for body in bodies {
                // Every admitted stream gets exactly the notice, then ends.
                let bytes = within(body).await.unwrap().unwrap().to_bytes();
                assert!(
                    bytes.starts_with(b"retry: 30000\nevent: shutdown\n"),
                    "round {round}"
                );
                assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 4);
                admitted += 1;
            }
        }
        let report = within(drain).await;

        assert_eq!(
            late.load(SeqCst),
            0,
            "round {round}: served after the drain was visible"
        );
        assert_eq!(admitted, served.load(SeqCst), "round {round}");
        assert!(rejected >= TASKS * 3, "round {round}");
        assert_eq!(report.in_flight, admitted, "round {round}: {report:?}");
        // Every admitted response is an event stream and got its notice.
        assert_eq!(
            (report.sse_streams, report.notified),
            (admitted, admitted),
            "round {round}: {report:?}"
        );
        assert_eq!((report.closed, report.force_closed), (admitted, 0));
        assert_eq!(handle.in_flight(), 0);
        assert_eq!(handle.sse_streams(), 0);
    }
}

/// Responses admitted before the drain whose handler resolves after it (a
/// slow database query before the stream starts): each is an event stream
/// the drain must notify, and the report counts them, so that `notified <=
/// sse_streams <= in_flight` holds with every figure exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_whose_handler_resolves_during_the_drain_are_notified_and_counted() {
    const N: usize = 300;
    let handle = DrainHandle::new(Config::default().reconnect_jitter(Duration::ZERO));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let slow = {
        let gate = gate.clone();
        move || {
            let gate = gate.clone();
            async move {
                gate.acquire().await.unwrap().forget();
                idle().await
            }
        }
    };
    let addr = serve(
        Router::new()
            .route("/slow", get(slow))
            .layer(handle.layer()),
    );
    let clients: Vec<_> = (0..N)
        .map(|_| {
            tokio::spawn(async move {
                let mut events = sse(addr, "/slow").await;
                rest(&mut events).await
            })
        })
        .collect();
    until(|| handle.in_flight() == N).await;
    assert_eq!(handle.sse_streams(), 0, "every handler is still running");
    let drain = handle.drain();
    gate.add_permits(N);
    for client in clients {
        let events = client.await.unwrap();
        let notices = events.iter().filter(|e| e.event == "shutdown").count();
        assert_eq!(notices, 1, "{events:?}");
        assert_eq!(events.last().unwrap().event, "shutdown", "{events:?}");
    }
    let report = within(drain).await;
    assert_eq!(
        (report.in_flight, report.sse_streams, report.notified),
        (N, N, N),
        "{report}"
    );
    assert!(report.notified <= report.sse_streams && report.sse_streams <= report.in_flight);
}

/// Behind the layer, a `ConcurrencyLimit` of 1 (global: axum applies a layer
/// per connection, and a per-connection limit would never be saturated by
/// another client) whose permit a slow handler holds: a request during the drain gets its rejection at once, without
/// waiting for the inner service to be ready (it never reaches it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_during_the_drain_is_rejected_at_once_behind_a_saturated_concurrency_limit() {
    let handle = DrainHandle::new(Config::default());
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let slow = {
        let gate = gate.clone();
        move || {
            let gate = gate.clone();
            async move {
                gate.acquire().await.unwrap().forget();
                "done"
            }
        }
    };
    let app = Router::new().route("/slow", get(slow)).layer(
        ServiceBuilder::new()
            .layer(handle.layer())
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(1)),
    );
    let addr = serve(app);
    let holder = tokio::spawn(async move { request(addr, "/slow", "*/*").await.0.status() });
    until(|| handle.in_flight() == 1).await;

    let drain = handle.drain();
    let started = tokio::time::Instant::now();
    let rejected = tokio::time::timeout(Duration::from_secs(2), common::get(addr, "/slow", &[]))
        .await
        .expect("the rejection waited for the inner service")
        .unwrap();
    assert_eq!(rejected.0.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_secs(1));

    gate.add_permits(1);
    assert_eq!(within(holder).await.unwrap(), StatusCode::OK);
    let report = within(drain).await;
    assert_eq!(
        (report.in_flight, report.closed, report.rejected),
        (1, 1, 1)
    );
}

/// The same saturated limit, but the requests are already waiting in its
/// `poll_ready` when the drain starts (the permit held by a handler that
/// does not finish until the test lets it): the drain wakes them, and each
/// gets its rejection at once, a plain request its `503`, an EventSource
/// its notice-only `200`, without the handler finishing or being called
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_waiting_in_poll_ready_when_the_drain_starts_is_woken_and_rejected() {
    let handle = DrainHandle::new(Config::default());
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let slow = {
        let (gate, calls) = (gate.clone(), calls.clone());
        move || {
            let (gate, calls) = (gate.clone(), calls.clone());
            async move {
                calls.fetch_add(1, SeqCst);
                gate.acquire().await.unwrap().forget();
                "done"
            }
        }
    };
    let waiting = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route("/slow", get(slow)).layer(
        ServiceBuilder::new()
            .layer(handle.layer())
            .layer(tower::layer::layer_fn({
                let waiting = waiting.clone();
                move |inner| CountWaiting::new(inner, waiting.clone())
            }))
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(1)),
    );
    let addr = serve(app);
    let holder = tokio::spawn(async move { request(addr, "/slow", "*/*").await.0.status() });
    until(|| calls.load(SeqCst) == 1).await;

    // Two requests that the limit keeps waiting, one of each kind.
    let plain = tokio::spawn(common::get(addr, "/slow", &[]));
    let stream = tokio::spawn(common::get(
        addr,
        "/slow",
        &[("accept", "text/event-stream")],
    ));
    until(|| waiting.load(SeqCst) == 2).await;

    let drain = handle.drain();
    let (res, _conn) = woken(plain).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_default_retry_after(&res);
    let (res, _conn) = woken(stream).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
    let notice = rest(&mut events(res.into_body())).await;
    assert_eq!(notice.len(), 1, "{notice:?}");
    assert_shutdown_event(&notice[0]);

    assert!(
        !holder.is_finished(),
        "the slow handler still holds the permit"
    );
    assert_eq!(
        calls.load(SeqCst),
        1,
        "a rejected request reached the handler"
    );
    gate.add_permits(1);
    assert_eq!(within(holder).await.unwrap(), StatusCode::OK);
    let report = within(drain).await;
    assert_eq!(
        (report.in_flight, report.closed, report.rejected),
        (1, 1, 2)
    );
}

/// The answer to a request sent before the drain, which must come at once.
async fn woken<T>(task: tokio::task::JoinHandle<Result<T, String>>) -> T {
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("a request waiting in poll_ready was not woken by the drain")
        .unwrap()
        .unwrap()
}

/// Counts the requests whose `poll_ready` the inner service answered
/// `Pending` (each once): the signal that a request is waiting for it. Axum
/// clones the route's service for every request.
struct CountWaiting<S> {
    inner: S,
    waiting: Arc<AtomicUsize>,
    counted: bool,
}

impl<S> CountWaiting<S> {
    fn new(inner: S, waiting: Arc<AtomicUsize>) -> Self {
        Self {
            inner,
            waiting,
            counted: false,
        }
    }
}

impl<S: Clone> Clone for CountWaiting<S> {
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), self.waiting.clone())
    }
}

impl<S: Service<R>, R> Service<R> for CountWaiting<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        let ready = self.inner.poll_ready(cx);
        if ready.is_pending() && !self.counted {
            self.counted = true;
            self.waiting.fetch_add(1, SeqCst);
        }
        ready
    }

    fn call(&mut self, req: R) -> S::Future {
        self.inner.call(req)
    }
}

/// `Retry-After` with the default delay and jitter: whole seconds in 30..=45.
fn assert_default_retry_after<B>(res: &http::Response<B>) {
    let secs: u64 = res.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((30..=45).contains(&secs), "{secs}");
}
