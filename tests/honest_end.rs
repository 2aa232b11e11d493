//! What a client sees of a response cut at the deadline: a download is
//! reported incomplete (HTTP/1.1 and HTTP/2), an event stream ends cleanly.
//! Real servers on 127.0.0.1, real hyper clients.

mod common;

use axum::{
    Router,
    body::Body as AxumBody,
    response::{
        Response,
        sse::{Event, Sse},
    },
    routing::get,
};
use bytes::Bytes;
use common::{events, request, serve, within};
use futures_util::StreamExt;
use http::{Request, Version, header};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::{convert::Infallible, net::SocketAddr, time::Duration};
use tokio::net::TcpStream;
use tokio_stream::wrappers::IntervalStream;
use tower_graceful_sse::{Config, DrainHandle};

const GRACE: Duration = Duration::from_millis(300);

/// `/export`: CSV lines every 20 ms, for ever (a download longer than the
/// grace period); `/events`: an SSE tick every 20 ms, for ever.
fn app(handle: &DrainHandle) -> Router {
    let export = || async {
        let lines = IntervalStream::new(tokio::time::interval(Duration::from_millis(20)))
            .enumerate()
            .map(|(i, _)| Ok::<_, Infallible>(Bytes::from(format!("{i},row\n"))));
        Response::builder()
            .header(header::CONTENT_TYPE, "text/csv")
            .body(AxumBody::from_stream(lines))
            .unwrap()
    };
    let events = || async {
        Sse::new(
            IntervalStream::new(tokio::time::interval(Duration::from_millis(20)))
                .map(|_| Ok::<_, Infallible>(Event::default().data("tick"))),
        )
    };
    Router::new()
        .route("/export", get(export))
        .route("/events", get(events))
        .layer(handle.layer())
}

/// A handle whose streams run on after their notice, so that the deadline,
/// not the notice, ends them.
fn handle() -> DrainHandle {
    DrainHandle::new(
        Config::default()
            .grace_period(GRACE)
            .end_after_notice(false),
    )
}

/// One GET over a fresh h2c connection.
async fn h2_get(addr: SocketAddr, path: &str, accept: &str) -> http::Response<Incoming> {
    let socket = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(socket))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{addr}{path}"))
        .header(header::ACCEPT, accept)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = within(sender.send_request(req)).await.unwrap();
    assert_eq!(res.version(), Version::HTTP_2);
    res
}

/// Reads a CSV download that the deadline cuts: the rows sent in time arrive
/// whole and in order, then the body fails; a clean end fails the test.
async fn read_cut_download(res: http::Response<Incoming>) -> hyper::Error {
    let mut body = res.into_body();
    let mut text = Vec::new();
    let err = loop {
        match within(body.frame()).await {
            Some(Ok(frame)) => text.extend_from_slice(&frame.into_data().unwrap()),
            Some(Err(err)) => break err,
            None => panic!("the cut download ended like a whole one: {text:?}"),
        }
    };
    let text = String::from_utf8(text).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert!(!rows.is_empty(), "the rows sent in time arrive");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(*row, format!("{i},row"), "{text:?}");
    }
    err
}

#[tokio::test]
async fn a_download_cut_at_the_deadline_is_incomplete_over_http1() {
    let handle = handle();
    let addr = serve(app(&handle));
    let (res, _conn) = request(addr, "/export", "text/csv").await;
    assert_eq!(res.version(), Version::HTTP_11);
    assert!(
        res.headers().get(header::CONTENT_LENGTH).is_none(),
        "chunked"
    );
    let drain = handle.drain();
    let err = read_cut_download(res).await;
    // No final chunk: hyper's client reports the chunked body cut short.
    let eof = std::error::Error::source(&err)
        .and_then(|e| e.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    assert_eq!(eof, Some(std::io::ErrorKind::UnexpectedEof), "{err:?}");
    let report = within(drain).await;
    assert_eq!(report.force_closed, 1, "{report}");
}

#[tokio::test]
async fn a_download_cut_at_the_deadline_is_reset_over_http2() {
    let handle = handle();
    let addr = serve(app(&handle));
    let res = h2_get(addr, "/export", "text/csv").await;
    let drain = handle.drain();
    let err = read_cut_download(res).await;
    // The stream is reset (RST_STREAM), never ended with END_STREAM.
    let h2 = std::error::Error::source(&err)
        .and_then(|e| e.downcast_ref::<h2::Error>())
        .unwrap_or_else(|| panic!("not a reset: {err:?}"));
    assert!(h2.is_reset(), "{h2:?}");
    let report = within(drain).await;
    assert_eq!(report.force_closed, 1, "{report}");
}

#[tokio::test]
async fn an_event_stream_cut_at_the_deadline_ends_cleanly_over_http1_and_http2() {
    let handle = handle();
    let addr = serve(app(&handle));
    let (res, _conn) = request(addr, "/events", "text/event-stream").await;
    let mut h1 = events(res.into_body());
    let mut h2 = events(
        h2_get(addr, "/events", "text/event-stream")
            .await
            .into_body(),
    );
    let drain = handle.drain();
    for (proto, stream) in [("HTTP/1.1", &mut h1), ("HTTP/2", &mut h2)] {
        let mut names = Vec::new();
        while let Some(item) = within(stream.next_raw()).await {
            let event = item.unwrap_or_else(|e| panic!("{proto}: the stream failed: {e}"));
            names.push(event.event);
        }
        assert_eq!(
            names.iter().filter(|n| *n == "shutdown").count(),
            1,
            "{proto}: {names:?}"
        );
        assert!(
            names.len() > 2,
            "{proto}: ticks went on after the notice: {names:?}"
        );
    }
    let report = within(drain).await;
    assert_eq!((report.notified, report.force_closed), (2, 2), "{report}");
}
