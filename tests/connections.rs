//! The connection-level deadline: clients that stop reading, among healthy
//! ones, cannot keep a server alive past the grace period plus the linger.
//!
//! A stalled reader here is what a phone in a tunnel is to a server: a real
//! socket on 127.0.0.1 that sent its request, read the response headers and
//! then never reads again, with small socket buffers so that the server's
//! writes stop at once. Each case runs a real server (axum::serve with
//! `DrainHandle::listener`, or hyper-util's builder with `DrainHandle::watch`)
//! over HTTP/1.1 and h2c, and a control shows that without the adapter the
//! same server is still waiting on the stalled socket.

mod common;

use axum::{
    Router,
    response::sse::{Event, Sse},
    routing::get,
    serve::ListenerExt,
};
use bytes::Bytes;
use common::{Events, events, next, sse, within};
use futures_util::{StreamExt, stream};
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::{
    convert::Infallible,
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    task::{JoinHandle, JoinSet},
};
use tower_graceful_sse::{Config, DrainHandle};

const GRACE: Duration = Duration::from_millis(1000);
const LINGER: Duration = Duration::from_millis(200);
/// What the issue allows beyond grace + linger for the server to finish.
const SLACK: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
enum Server {
    /// `axum::serve(handle.listener(listener), app)`.
    Axum,
    /// hyper-util's auto builder, each connection in `handle.watch`.
    HyperUtil,
    /// The control: `axum::serve(listener, app)` without the adapter.
    AxumWithoutAdapter,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Proto {
    Http1,
    H2c,
}

/// Healthy streams get a tick at once, then one every 500 ms; `/flood` sends
/// 16 KiB events as fast as the connection takes them, counting each.
fn app(handle: &DrainHandle, produced: Arc<AtomicU64>) -> Router {
    let ticks = || async {
        let ticks =
            stream::once(async { Ok::<_, Infallible>(Event::default().event("tick").data("t")) })
                .chain(
                    tokio_stream::wrappers::IntervalStream::new(tokio::time::interval_at(
                        tokio::time::Instant::now() + Duration::from_millis(500),
                        Duration::from_millis(500),
                    ))
                    .map(|_| Ok(Event::default().event("tick").data("t"))),
                );
        Sse::new(ticks)
    };
    let flood = move || {
        let produced = produced.clone();
        async move {
            let big: Arc<str> = "x".repeat(16 * 1024).into();
            Sse::new(stream::repeat_with(move || {
                produced.fetch_add(1, Ordering::Relaxed);
                Ok::<_, Infallible>(Event::default().data(&*big))
            }))
        }
    };
    Router::new()
        .route("/ticks", get(ticks))
        .route("/flood", get(flood))
        .layer(handle.layer())
}

/// A 16 KiB send buffer, so that a stalled client stops the server's writes
/// after little data (and the test needs little memory).
fn small_send_buffer(stream: &TcpStream) {
    let size: libc::c_int = 16 * 1024;
    // SAFETY: setsockopt reads `size` for the call only; the fd is open.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

/// Starts `server` on 127.0.0.1; the task ends when the server has stopped.
async fn start(
    server: Server,
    handle: &DrainHandle,
    produced: Arc<AtomicU64>,
) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = app(handle, produced);
    let drained = handle.drained();
    let task = match server {
        Server::Axum => serve_axum(
            handle.listener(listener.tap_io(|s| small_send_buffer(s))),
            app,
            drained,
        ),
        Server::AxumWithoutAdapter => {
            serve_axum(listener.tap_io(|s| small_send_buffer(s)), app, drained)
        }
        Server::HyperUtil => {
            let handle = handle.clone();
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let mut connections = JoinSet::new();
                tokio::pin!(drained);
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let (stream, _) = accepted.unwrap();
                            small_send_buffer(&stream);
                            let conn = builder
                                .serve_connection(
                                    TokioIo::new(stream),
                                    hyper_util::service::TowerToHyperService::new(app.clone()),
                                )
                                .into_owned();
                            connections.spawn(handle.watch(conn));
                        }
                        _ = &mut drained => break,
                    }
                }
                while connections.join_next().await.is_some() {}
            })
        }
    };
    (addr, task)
}

/// `axum::serve` with a graceful shutdown once the drain has reported.
fn serve_axum<L>(listener: L, app: Router, drained: tower_graceful_sse::Drain) -> JoinHandle<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                drained.await;
            })
            .await
            .unwrap();
    })
}

/// A socket with a 4 KiB receive buffer.
async fn connect_small(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(addr).await.unwrap()
}

/// An HTTP/1.1 client that reads the response head of `/flood`, then never
/// reads again.
async fn stalled_http1(addr: SocketAddr) -> TcpStream {
    let mut socket = connect_small(addr).await;
    socket
        .write_all(b"GET /flood HTTP/1.1\r\nhost: test\r\naccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = within(socket.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed before the response head");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    socket
}

/// An h2c client (prior knowledge) that sends one request for `/flood`,
/// reads frames up to the response's HEADERS, then never reads again.
async fn stalled_h2c(addr: SocketAddr) -> TcpStream {
    let mut socket = connect_small(addr).await;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // empty SETTINGS
    // HPACK, no Huffman: :method GET, :scheme http, :path /flood,
    // :authority test, accept text/event-stream.
    let mut block = vec![0x82, 0x86, 0x04, 6];
    block.extend_from_slice(b"/flood");
    block.extend_from_slice(&[0x01, 4]);
    block.extend_from_slice(b"test");
    block.extend_from_slice(&[0x0f, 0x04, 17]);
    block.extend_from_slice(b"text/event-stream");
    let len = block.len() as u32;
    // HEADERS, END_STREAM | END_HEADERS, stream 1.
    out.extend_from_slice(&[
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        1,
        0x5,
        0,
        0,
        0,
        1,
    ]);
    out.extend_from_slice(&block);
    socket.write_all(&out).await.unwrap();
    loop {
        let mut head = [0; 9];
        within(socket.read_exact(&mut head)).await.unwrap();
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0; len];
        within(socket.read_exact(&mut payload)).await.unwrap();
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        assert_ne!(head[3], 3, "the stream was reset");
        if head[3] == 1 && stream == 1 {
            return socket; // the response's HEADERS: stop reading here
        }
    }
}

/// Opens `n` healthy SSE streams on `/ticks`, each at its first tick.
async fn healthy_streams(addr: SocketAddr, proto: Proto, n: usize) -> Vec<Events> {
    let mut streams = Vec::with_capacity(n);
    match proto {
        Proto::Http1 => {
            for _ in 0..n {
                let mut events = sse(addr, "/ticks").await;
                assert_eq!(next(&mut events).await.event, "tick");
                streams.push(events);
            }
        }
        Proto::H2c => {
            // 100 streams per connection, as a browser multiplexes tabs.
            let mut sender = None;
            for i in 0..n {
                if i % 100 == 0 {
                    let socket = TcpStream::connect(addr).await.unwrap();
                    let (s, conn) = hyper::client::conn::http2::handshake(
                        TokioExecutor::new(),
                        TokioIo::new(socket),
                    )
                    .await
                    .unwrap();
                    tokio::spawn(conn);
                    sender = Some(s);
                }
                let sender = sender.as_mut().unwrap();
                let req = Request::get(format!("http://{addr}/ticks"))
                    .header(header::ACCEPT, "text/event-stream")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let res = within(sender.send_request(req)).await.unwrap();
                assert_eq!(res.version(), http::Version::HTTP_2);
                let mut events = events(res.into_body());
                assert_eq!(next(&mut events).await.event, "tick");
                streams.push(events);
            }
        }
    }
    streams
}

/// Waits until the flood has filled every stalled socket: the count of
/// events produced stops growing.
async fn until_stalled(produced: &AtomicU64, stalled: usize) {
    within(async {
        let mut last = u64::MAX;
        let mut still = 0;
        while still < 3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = produced.load(Ordering::Relaxed);
            still = if now == last && now >= stalled as u64 {
                still + 1
            } else {
                0
            };
            last = now;
        }
    })
    .await;
}

/// The scenario: `healthy` streams and `stalled` readers, a drain, and the
/// time the server took to stop after the drain started (`None`: still
/// running at grace + linger + slack).
async fn stalled_readers(
    server: Server,
    proto: Proto,
    stalled: usize,
    healthy: usize,
) -> Option<Duration> {
    stalled_readers_with(server, proto, stalled, healthy, LINGER).await
}

async fn stalled_readers_with(
    server: Server,
    proto: Proto,
    stalled: usize,
    healthy: usize,
    linger: Duration,
) -> Option<Duration> {
    common::swarm::need_fds(2 * (stalled + healthy) as u64 + 256);
    let handle = DrainHandle::new(Config::default().grace_period(GRACE).linger(linger));
    let produced = Arc::new(AtomicU64::new(0));
    let (addr, server_task) = start(server, &handle, produced.clone()).await;

    let mut streams = healthy_streams(addr, proto, healthy).await;
    let mut stalled_sockets = Vec::with_capacity(stalled);
    for _ in 0..stalled {
        stalled_sockets.push(match proto {
            Proto::Http1 => stalled_http1(addr).await,
            Proto::H2c => stalled_h2c(addr).await,
        });
    }
    until_stalled(&produced, stalled).await;
    assert_eq!(handle.sse_streams(), stalled + healthy);

    let started = Instant::now();
    let drain = handle.drain();
    // Every healthy stream gets its notice and a clean end, stalled readers
    // or not.
    let readers: Vec<_> = streams
        .drain(..)
        .map(|mut events| {
            tokio::spawn(async move {
                let mut names = Vec::new();
                while let Some(item) = within(events.next_raw()).await {
                    names.push(item.expect("a healthy stream ends cleanly").event);
                }
                names
            })
        })
        .collect();
    for reader in readers {
        let names = reader.await.unwrap();
        assert_eq!(
            names.iter().filter(|n| *n == "shutdown").count(),
            1,
            "{names:?}"
        );
        assert_eq!(
            names.last().map(String::as_str),
            Some("shutdown"),
            "{names:?}"
        );
    }
    // A stalled body may still have been polled once more (HTTP/1.1 buffers
    // its end in memory: counted closed, yet the connection cannot flush it)
    // or never again (h2c, out of flow-control window: force-closed). Either
    // way its connection stays open until the deadline.
    let report = within(drain).await;
    assert_eq!(report.in_flight, stalled + healthy, "{report}");
    assert!(report.notified >= healthy, "{report}");

    let stopped = tokio::time::timeout(GRACE + linger + SLACK, server_task).await;
    let took = started.elapsed();
    drop(stalled_sockets);
    match stopped {
        Ok(joined) => {
            joined.unwrap();
            Some(took)
        }
        Err(_) => None,
    }
}

async fn server_stops_in_time(server: Server, proto: Proto, stalled: usize, healthy: usize) {
    let took = stalled_readers(server, proto, stalled, healthy).await;
    let took = took.unwrap_or_else(|| {
        panic!(
            "{server:?} over {proto:?} still running {:?} after the drain started",
            GRACE + LINGER + SLACK
        )
    });
    assert!(
        took >= GRACE,
        "stopped before the grace period ended: {took:?}"
    );
    eprintln!(
        "{server:?} {proto:?} {stalled} stalled + {healthy} healthy: stopped {took:?} after the drain started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_http1_one_stalled_reader_among_100_healthy_streams() {
    server_stops_in_time(Server::Axum, Proto::Http1, 1, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_h2c_one_stalled_reader_among_100_healthy_streams() {
    server_stops_in_time(Server::Axum, Proto::H2c, 1, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_http1_1000_stalled_readers_among_1000_healthy_streams() {
    server_stops_in_time(Server::Axum, Proto::Http1, 1000, 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_h2c_1000_stalled_readers_among_1000_healthy_streams() {
    server_stops_in_time(Server::Axum, Proto::H2c, 1000, 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_util_http1_one_stalled_reader_among_100_healthy_streams() {
    server_stops_in_time(Server::HyperUtil, Proto::Http1, 1, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_util_h2c_one_stalled_reader_among_100_healthy_streams() {
    server_stops_in_time(Server::HyperUtil, Proto::H2c, 1, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_util_http1_1000_stalled_readers_among_1000_healthy_streams() {
    server_stops_in_time(Server::HyperUtil, Proto::Http1, 1000, 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_util_h2c_1000_stalled_readers_among_1000_healthy_streams() {
    server_stops_in_time(Server::HyperUtil, Proto::H2c, 1000, 1000).await;
}

/// The cut with no linger: the end of the grace period and the cut come
/// together, while the forced bodies make their connections write and go
/// pending again, so a connection registering for the cut races the cut
/// itself (a registration made after the look at the phase would miss it
/// and hold the server forever). Repeated, on both servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_with_no_linger_closes_1000_stalled_readers_every_time() {
    for round in 0..3 {
        for server in [Server::Axum, Server::HyperUtil] {
            let took = stalled_readers_with(server, Proto::Http1, 1000, 10, Duration::ZERO).await;
            let took = took.unwrap_or_else(|| panic!("round {round}: {server:?} still running"));
            assert!(took >= GRACE, "round {round}: stopped early, {took:?}");
        }
    }
}

/// A connection accepted after the drain's report (the accept loop goes on
/// until the server stops, and a second server may share the handle) is cut
/// at the deadline like the others: a client that sends nothing cannot hold
/// it open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_wrapped_after_the_report_is_cut_at_the_deadline() {
    for server in [Server::Axum, Server::HyperUtil] {
        let grace = Duration::from_millis(300);
        let handle = DrainHandle::new(Config::default().grace_period(grace).linger(LINGER));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = app(&handle, Arc::new(AtomicU64::new(0)));
        // The server runs on after the report: it stops only when told.
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = match server {
            Server::Axum => {
                let listener = handle.listener(listener);
                tokio::spawn(async move {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = stopped.await;
                        })
                        .await
                        .unwrap();
                })
            }
            _ => {
                let handle = handle.clone();
                tokio::spawn(async move {
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let mut connections = JoinSet::new();
                    tokio::pin!(stopped);
                    loop {
                        tokio::select! {
                            accepted = listener.accept() => {
                                let (stream, _) = accepted.unwrap();
                                let conn = builder
                                    .serve_connection(
                                        TokioIo::new(stream),
                                        hyper_util::service::TowerToHyperService::new(app.clone()),
                                    )
                                    .into_owned();
                                connections.spawn(handle.watch(conn));
                            }
                            _ = &mut stopped => break,
                        }
                    }
                    while connections.join_next().await.is_some() {}
                })
            }
        };
        let drain = handle.drain();
        let deadline = drain.deadline().unwrap();
        let report = within(drain).await;
        assert_eq!(report.in_flight, 0);
        // Wrapped during the drain, a whole request: its answer, the
        // notice-only 200 for an EventSource and a 503 with `Retry-After`
        // otherwise, then the end of the connection (hyper-util's graceful
        // shutdown closed it unanswered, before reading the request).
        for (accept, status) in [("text/event-stream", "200"), ("*/*", "503")] {
            let mut late = TcpStream::connect(addr).await.unwrap();
            let request = format!("GET /ticks HTTP/1.1\r\nhost: x\r\naccept: {accept}\r\n\r\n");
            late.write_all(request.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            within(late.read_to_end(&mut answer)).await.unwrap();
            let answer = String::from_utf8_lossy(&answer).to_lowercase();
            assert!(
                answer.starts_with(&format!("http/1.1 {status} ")),
                "{server:?}, {accept}: {answer:?}"
            );
            assert!(
                answer.contains("connection: close"),
                "{server:?}: {answer:?}"
            );
            let shutdown = answer.contains("event: shutdown");
            assert_eq!(shutdown, status == "200", "{server:?}: {answer:?}");
            assert_eq!(
                answer.contains("retry-after: "),
                status == "503",
                "{server:?}: {answer:?}"
            );
        }
        // Wrapped after the report, before the deadline: a client that sends
        // half a request and then nothing.
        let mut late = TcpStream::connect(addr).await.unwrap();
        late.write_all(b"GET /ticks HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0; 64];
        let read = tokio::time::timeout_at(deadline + SLACK, late.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "{server:?}: a connection wrapped after the report still open a second after the deadline: {read:?}"
        );
        // Neither server can see a half-read request: the cut is what
        // closes it.
        assert!(
            Instant::now() >= deadline.into_std(),
            "{server:?}: cut before the deadline"
        );
        // Wrapped after the cut: closed at its first IO call, unanswered.
        let mut after_cut = TcpStream::connect(addr).await.unwrap();
        let _ = after_cut
            .write_all(b"GET /ticks HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        let read = tokio::time::timeout(SLACK, after_cut.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "{server:?}: a connection wrapped after the cut was served: {read:?}"
        );
        let _ = stop.send(());
        within(task).await.unwrap();
    }
}

/// The control: the same scenario without the adapter reproduces the hang
/// (hyper#2787 through a stalled reader), so the tests above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_adapter_one_stalled_reader_holds_axum_serve() {
    for proto in [Proto::Http1, Proto::H2c] {
        let took = stalled_readers(Server::AxumWithoutAdapter, proto, 1, 10).await;
        assert_eq!(
            took, None,
            "{proto:?}: the server stopped without the adapter"
        );
    }
}
