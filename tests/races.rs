//! The register-versus-drain race under real threads: many tasks send
//! requests in a tight loop while `drain()` fires at a varying moment.

use bytes::Bytes;
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

/// Marks a request sent after its sender saw `is_draining()`.
#[derive(Clone, Copy)]
struct SentWhileDraining;

const ROUNDS: usize = 200;
const TASKS: usize = 8;

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
                        let admitted = res.headers().get(header::CONNECTION).is_none();
                        if admitted {
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
                let bytes = tokio::time::timeout(Duration::from_secs(10), body)
                    .await
                    .expect("an admitted stream was never notified")
                    .unwrap()
                    .unwrap()
                    .to_bytes();
                assert!(
                    bytes.starts_with(b"retry: 30000\nevent: shutdown\n"),
                    "round {round}"
                );
                assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 4);
                admitted += 1;
            }
        }
        let report = tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .unwrap();

        assert_eq!(
            late.load(SeqCst),
            0,
            "round {round}: served after the drain was visible"
        );
        assert_eq!(admitted, served.load(SeqCst), "round {round}");
        assert!(rejected >= TASKS * 3, "round {round}");
        assert_eq!(report.in_flight, admitted, "round {round}: {report:?}");
        assert_eq!((report.closed, report.force_closed), (admitted, 0));
        assert_eq!(handle.in_flight(), 0);
        assert_eq!(handle.sse_streams(), 0);
    }
}

/// `drain()` from many tasks on many threads at once: one drain, one report,
/// the same for every caller, and every later call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_drains_from_clones_resolve_to_one_report() {
    for _ in 0..50 {
        let handle = DrainHandle::new(Config::default());
        let service = ServiceBuilder::new()
            .layer(handle.layer())
            .service(service_fn(|_: Request<()>| async {
                let body = StreamBody::new(stream::pending::<Result<Frame<Bytes>, Infallible>>());
                Ok::<_, Infallible>(
                    Response::builder()
                        .header(header::CONTENT_TYPE, "text/event-stream")
                        .body(body)
                        .unwrap(),
                )
            }));
        let body = service.oneshot(Request::new(())).await.unwrap().into_body();
        let reader = tokio::spawn(body.collect());
        let drains: Vec<_> = (0..16)
            .map(|_| {
                let handle = handle.clone();
                tokio::spawn(async move { handle.drain().await })
            })
            .collect();
        let notice = reader.await.unwrap().unwrap().to_bytes();
        assert_eq!(
            notice.iter().filter(|&&b| b == b'\n').count(),
            4,
            "one notice"
        );
        let mut reports = Vec::new();
        for drain in drains {
            reports.push(drain.await.unwrap());
        }
        reports.push(handle.drain().await);
        // Equal reports, `elapsed` included: the clock never restarts.
        assert!(reports.iter().all(|r| *r == reports[0]), "{reports:?}");
        assert_eq!((reports[0].in_flight, reports[0].notified), (1, 1));
    }
}
