//! The notice: every open event stream gets exactly one shutdown event, at an
//! event boundary, whether it is idle or busy, fed in whole events or byte by
//! byte; everything else about a body passes through the layer unchanged.
//!
//! The property test of the splice over arbitrary streams is `tests/splice.rs`;
//! HTTP/2, compression and servers' shutdown paths are in
//! `tests/integrations.rs`.

mod common;

use axum::{Router, routing::get};
use bytes::Bytes;
use common::*;
use futures_util::stream;
use http::{Request, Response, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use std::convert::Infallible;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_graceful_sse::{Config, DrainHandle};

#[tokio::test]
async fn two_hundred_idle_and_busy_streams_each_get_one_notice_then_end() {
    let handle = DrainHandle::new(Config::default());
    let addr = serve(
        Router::new()
            .route("/idle", get(idle))
            .route("/busy", get(busy))
            .layer(handle.layer()),
    );

    let clients = futures_util::future::join_all((0..200).map(|i| async move {
        let mut events = sse(addr, if i % 2 == 0 { "/idle" } else { "/busy" }).await;
        assert_eq!(next(&mut events).await.event, "hello");
        events
    }))
    .await;
    assert_eq!(handle.sse_streams(), 200);
    assert_eq!(handle.in_flight(), 200);

    let drain = handle.drain();
    assert!(handle.is_draining());
    let readers = clients.into_iter().map(|mut events| {
        tokio::spawn(async move { assert_ticks_then_notice(&rest(&mut events).await) })
    });
    for reader in futures_util::future::join_all(readers).await {
        reader.unwrap();
    }

    let report = within(drain).await;
    assert_eq!(report.in_flight, 200);
    assert_eq!(report.sse_streams, 200);
    assert_eq!(report.notified, 200);
    assert_eq!(report.closed, 200);
    assert_eq!(report.force_closed, 0);
    assert_eq!(report.rejected, 0);
    assert_eq!(handle.sse_streams(), 0);
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test]
async fn event_split_byte_by_byte_gets_the_notice_after_it() {
    let handle = DrainHandle::new(Config::default());
    let (addr, mut feeds) = fed_server(&handle, false);
    let mut events = sse(addr, "/fed").await;
    let fed = feeds.recv().await.unwrap();

    feed(&fed, b"data: first\n\n").await;
    assert_eq!(next(&mut events).await.data, "first");

    // Drain mid-event, then finish the event byte by byte, with a CRLF split
    // between two chunks.
    feed_bytes(&fed, b"event: second\r\ndata: 2\r").await;
    until(|| fed.capacity() == fed.max_capacity()).await;
    let drain = handle.drain();
    feed_bytes(&fed, b"\n\r\n: ignored\n").await;

    let events = rest(&mut events).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!((&*events[0].event, &*events[0].data), ("second", "2"));
    assert_shutdown_event(&events[1]);
    let report = within(drain).await;
    assert_eq!(
        (report.notified, report.closed, report.force_closed),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn notice_after_a_trailing_cr_swallows_its_lf_when_the_stream_runs_on() {
    let handle = DrainHandle::new(Config::default().end_after_notice(false));
    let (addr, mut feeds) = fed_server(&handle, false);
    let (res, _conn) = request(addr, "/fed", "text/event-stream").await;
    let fed = feeds.recv().await.unwrap();

    feed(&fed, b"data: first\r\r").await;
    let drain = handle.drain();
    // The LF that completes the CR before the notice, then more events.
    feed(&fed, b"\ndata: second\r\n\r\n").await;
    drop(fed); // the stream ends by itself, within the grace period
    let raw = body_bytes(res.into_body()).await;
    let frame_at = raw.windows(6).position(|w| w == b"retry:").unwrap();
    let frame_end = frame_at
        + raw[frame_at..]
            .windows(2)
            .position(|w| w == b"\n\n")
            .unwrap()
        + 2;
    assert_eq!(&raw[..frame_at], b"data: first\r\r");
    assert_eq!(&raw[frame_end..], b"data: second\r\n\r\n");
    let events = parse(raw).await;
    let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data.len(), 3);
    assert_eq!((data[0], data[2]), ("first", "second"));
    assert_shutdown_event(&events[1]);
    let report = within(drain).await;
    assert_eq!((report.closed, report.force_closed), (1, 0));
}

/// A stream that runs on after a notice sent before its first byte: a byte
/// order mark leading it (a client ignores one only at the very start) would
/// now stand inside the stream, where a client reads `\u{feff}data` as an
/// unknown field and loses the event. It goes, even split over two chunks.
#[tokio::test]
async fn notice_before_the_first_byte_takes_the_byte_order_mark_off_the_stream() {
    let handle = DrainHandle::new(Config::default().end_after_notice(false));
    let (addr, mut feeds) = fed_server(&handle, false);
    let (res, _conn) = request(addr, "/fed", "text/event-stream").await;
    let fed = feeds.recv().await.unwrap();

    let drain = handle.drain();
    feed(&fed, b"\xEF\xBB").await;
    feed(&fed, b"\xBFdata: first\n\n").await;
    feed(&fed, b"data: second\n\n").await;
    drop(fed);
    let raw = body_bytes(res.into_body()).await;
    assert!(raw.starts_with(b"retry:"), "the notice first: {raw:?}");
    let frame_end = raw.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
    assert_eq!(&raw[frame_end..], b"data: first\n\ndata: second\n\n");
    let events = parse(raw).await;
    assert_shutdown_event(&events[0]);
    let data: Vec<&str> = events[1..].iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data, ["first", "second"]);
    let report = within(drain).await;
    assert_eq!((report.notified, report.closed), (1, 1));
}

#[tokio::test]
async fn chunk_holding_a_boundary_is_cut_there_for_the_notice() {
    let handle = DrainHandle::new(Config::default());
    let (addr, mut feeds) = fed_server(&handle, false);
    let mut events = sse(addr, "/fed").await;
    let fed = feeds.recv().await.unwrap();
    feed(&fed, b"data: a").await;
    let drain = handle.drain();
    feed(&fed, b"\n\ndata: b").await;
    // `b` stays unfinished: the notice went in after `a`, then the end.
    assert_eq!(next(&mut events).await.data, "a");
    assert_shutdown_event(&next(&mut events).await);
    assert!(rest(&mut events).await.is_empty());
    assert_eq!(within(drain).await.force_closed, 0);
}

#[tokio::test]
async fn trailers_pass_through_sse_and_plain_bodies() {
    let handle = DrainHandle::new(Config::default());
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    for content_type in ["text/event-stream", "text/plain"] {
        let frames = [
            Frame::data(Bytes::from_static(b"data: 1\n\n")),
            Frame::trailers(trailers.clone()),
        ];
        let body = through_layer(
            &handle,
            content_type,
            StreamBody::new(stream::iter(frames.map(Ok::<_, Infallible>))),
        );
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers), "{content_type}");
        assert_eq!(collected.to_bytes(), "data: 1\n\n");
        assert_eq!(handle.in_flight(), 0);
    }
}

#[tokio::test]
async fn size_hint_and_end_of_stream_pass_through() {
    use http_body::Body as _;
    let handle = DrainHandle::new(Config::default());
    let service = ServiceBuilder::new()
        .layer(handle.layer())
        .service(service_fn(|req: Request<&'static str>| async move {
            let body = http_body_util::Full::new(Bytes::from_static(b"hello"));
            Ok::<_, Infallible>(
                Response::builder()
                    .header(header::CONTENT_TYPE, *req.body())
                    .body(body)
                    .unwrap(),
            )
        }));

    // A plain body keeps its exact length and its end.
    let mut plain = service
        .clone()
        .oneshot(Request::new("text/plain"))
        .await
        .unwrap()
        .into_body();
    assert_eq!(plain.size_hint().exact(), Some(5));
    assert!(!plain.is_end_stream());
    assert_eq!(
        plain.frame().await.unwrap().unwrap().into_data().unwrap(),
        "hello"
    );
    assert!(plain.is_end_stream());
    assert!(plain.frame().await.is_none());
    assert_eq!(plain.size_hint().exact(), Some(0));

    // An event stream may grow by the notice: no exact length is promised.
    let mut sse = service
        .oneshot(Request::new("text/event-stream"))
        .await
        .unwrap()
        .into_body();
    assert_eq!(
        (sse.size_hint().lower(), sse.size_hint().upper()),
        (0, None)
    );
    assert!(!sse.is_end_stream());
    sse.frame().await.unwrap().unwrap();
    assert!(sse.is_end_stream());
    assert!(sse.frame().await.is_none());
    assert_eq!(handle.in_flight(), 0);
}

/// An event stream whose handler declared its length (a finite list of
/// events): the notice would overrun `Content-Length` (HTTP/1.1 truncates
/// the body there, HTTP/2 resets the stream), so it is never spliced in, and
/// the response runs to its declared end during the drain, byte for byte.
#[tokio::test]
async fn event_stream_of_declared_length_runs_to_its_end_without_the_notice() {
    const ONE: &[u8] = b"data: one\n\n";
    const TWO: &[u8] = b"data: two\n\n";
    let handle = DrainHandle::new(Config::default());
    let second = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let release = second.clone();
    let app = Router::new()
        .route(
            "/finite",
            get(move || {
                let second = second.clone();
                async move {
                    use futures_util::StreamExt as _;
                    let one = stream::once(async { Ok::<_, Infallible>(Bytes::from_static(ONE)) });
                    let two = stream::once(async move {
                        let _ = second.acquire().await;
                        Ok(Bytes::from_static(TWO))
                    });
                    Response::builder()
                        .header(header::CONTENT_TYPE, "text/event-stream")
                        .header(header::CONTENT_LENGTH, ONE.len() + TWO.len())
                        .body(axum::body::Body::from_stream(one.chain(two)))
                        .unwrap()
                }
            }),
        )
        .layer(handle.layer());
    let addr = serve(app);
    let (res, _conn) = request(addr, "/finite", "text/event-stream").await;
    let mut body = res.into_body();
    let first = within(body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), ONE);
    assert_eq!(handle.in_flight(), 1);
    assert_eq!(handle.sse_streams(), 0, "not one the notice can enter");

    // The body's first poll in the drain would give the notice before the
    // inner body, whenever the last event comes.
    let drain = handle.drain();
    release.add_permits(1);
    let (rest, end) = body_and_end(body).await;
    assert_eq!(end, Ok(()), "a clean end at the declared length");
    assert_eq!(rest, TWO, "the rest of the declared bytes, no notice");

    let report = within(drain).await;
    assert_eq!(
        (report.in_flight, report.sse_streams, report.notified),
        (1, 0, 0)
    );
    assert_eq!((report.closed, report.force_closed), (1, 0));
}
