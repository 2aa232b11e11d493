//! A swarm of SSE clients in a child process, for the load test and the
//! benchmarks.
//!
//! Every loopback connection costs two descriptors when client and server
//! share a process, and 10,000 connections need more than the usual hard
//! limit of 20,000 (which only `CAP_SYS_RESOURCE` may raise). So the clients
//! run in a child: the same executable, started with `SWARM_ADDR` set, which
//! [`worker_if_asked`] turns into a swarm before anything else runs.
//!
//! Each client opens a GET over its own HTTP/1.1 connection ([`super::get`]),
//! parses the stream with the independent `eventsource-stream`, and waits for
//! the first event before it counts as connected. When its parser sees the
//! `shutdown` event it notes the time on `CLOCK_MONOTONIC`, which the parent
//! reads too, so drain-to-notice is measured at the client against a clock
//! taken just before `drain()`. Then it closes the connection, unless it is
//! one of the clients that ignore the notice: those read on until the stream
//! ends.
//!
//! Protocol on the child's stdout: `ready <connected>` once every client has
//! connected or failed, then one line per client when all have finished:
//! `<notice ns or -> <closed|ended|failed|error|unfinished> [message]`.

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use http_body_util::BodyDataStream;
use std::{
    io::Write,
    net::SocketAddr,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStdout},
    sync::{Notify, Semaphore},
    task::JoinHandle,
};

/// Nanoseconds on `CLOCK_MONOTONIC`, the same clock in every process.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass and nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Raises the soft limit on open files towards `want` (and the hard limit,
/// where the process may); returns the limit in force.
pub fn raise_fd_limit(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: lim.rlim_max.max(want),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                // Not allowed to raise the hard limit: go as far as it goes.
                let soft = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &soft);
            }
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        }
    }
    lim.rlim_cur
}

/// Like [`raise_fd_limit`], but fails with advice if the limit stays short.
pub fn need_fds(want: u64) -> u64 {
    let got = raise_fd_limit(want);
    assert!(
        got >= want,
        "this process needs {want} file descriptors and the limit is {got}: \
         raise it (ulimit -n) or use fewer clients"
    );
    got
}

/// Whether client `i` of `n` ignores the notice: `round(n * share)` of them,
/// spread evenly.
pub fn ignores(i: usize, n: usize, share: f64) -> bool {
    let k = ignoring(n, share);
    (i + 1) * k / n != i * k / n
}

/// How many of `n` clients ignore the notice.
pub fn ignoring(n: usize, share: f64) -> usize {
    (n as f64 * share).round() as usize
}

/// How one client's stream went.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    /// `CLOCK_MONOTONIC` when this client's parser had the notice.
    pub notice_ns: Option<u64>,
    pub end: End,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub enum End {
    /// Still reading when the swarm was told to stop.
    #[default]
    Unfinished,
    /// The client closed the connection after the notice.
    Closed,
    /// The stream ended cleanly: the server ended it.
    Ended,
    /// Never connected: the connection, the request or the first event failed.
    Failed(String),
    /// The connection failed, or the stream did not parse, after the first event.
    Error(String),
}

/// The parent's side: a running swarm.
pub struct Swarm {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    pub clients: usize,
}

impl Swarm {
    /// Starts `clients` clients of `GET path` on `addr` in a child process
    /// (this executable again), a `share` of which ignore the notice.
    pub fn spawn(addr: SocketAddr, path: &str, clients: usize, share: f64) -> Self {
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .env("SWARM_ADDR", addr.to_string())
            .env("SWARM_PATH", path)
            .env("SWARM_CLIENTS", clients.to_string())
            .env("SWARM_IGNORE_SHARE", share.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the client swarm");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            child,
            lines,
            clients,
        }
    }

    /// Waits until every client has connected (or failed); returns how many
    /// connected.
    pub async fn ready(&mut self) -> usize {
        let line = self.lines.next_line().await.unwrap().expect("swarm died");
        line.strip_prefix("ready ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line from the swarm: {line}"))
    }

    /// Waits at most `limit` for every client to finish, then collects every
    /// client's outcome (clients still reading count as unfinished).
    pub async fn finish(mut self, limit: Duration) -> Vec<Outcome> {
        let stdin = self.child.stdin.take();
        let first = tokio::time::timeout(limit, self.lines.next_line()).await;
        // Closing stdin tells the swarm to report now.
        drop(stdin);
        let mut pending = match first {
            Ok(line) => line.unwrap(),
            Err(_) => self.lines.next_line().await.unwrap(),
        };
        let mut out = Vec::with_capacity(self.clients);
        while let Some(line) = pending {
            out.push(parse_outcome(&line));
            pending = self.lines.next_line().await.unwrap();
        }
        let _ = self.child.wait().await;
        out
    }
}

fn parse_outcome(line: &str) -> Outcome {
    let mut parts = line.splitn(3, ' ');
    let notice_ns = parts.next().and_then(|n| n.parse().ok());
    let end = match parts.next() {
        Some("closed") => End::Closed,
        Some("ended") => End::Ended,
        Some("unfinished") => End::Unfinished,
        Some("failed") => End::Failed(parts.next().unwrap_or_default().to_owned()),
        _ => End::Error(parts.next().unwrap_or(line).to_owned()),
    };
    Outcome { notice_ns, end }
}

/// Becomes a swarm and exits if this process was started as one.
pub fn worker_if_asked() {
    let Ok(addr) = std::env::var("SWARM_ADDR") else {
        return;
    };
    let var = |name: &str| std::env::var(name).unwrap();
    let addr: SocketAddr = addr.parse().unwrap();
    let path = var("SWARM_PATH");
    let clients: usize = var("SWARM_CLIENTS").parse().unwrap();
    let share: f64 = var("SWARM_IGNORE_SHARE").parse().unwrap();
    need_fds(clients as u64 + 256);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(worker(addr, path, clients, share));
    std::process::exit(0);
}

async fn worker(addr: SocketAddr, path: String, n: usize, share: f64) {
    let counts = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0), Notify::new()));
    let gate = Arc::new(Semaphore::new(512));
    let path: Arc<str> = path.into();
    let clients: Vec<JoinHandle<Outcome>> = (0..n)
        .map(|i| {
            let (counts, gate, path) = (counts.clone(), gate.clone(), path.clone());
            tokio::spawn(client(addr, path, ignores(i, n, share), counts, gate))
        })
        .collect();
    // `ready` once every client has connected or failed.
    loop {
        let changed = counts.2.notified();
        if counts.0.load(Ordering::Acquire) + counts.1.load(Ordering::Acquire) == n {
            break;
        }
        changed.await;
    }
    println!("ready {}", counts.0.load(Ordering::Acquire));
    std::io::stdout().flush().unwrap();

    // Report when every client has finished, or when the parent closes stdin.
    let mut stdin = tokio::io::stdin();
    let mut outcomes = Vec::with_capacity(n);
    let mut eof = false;
    for client in clients {
        let outcome = if eof {
            client.now_or_unfinished()
        } else {
            let mut byte = [0u8; 1];
            tokio::select! {
                outcome = client => outcome.unwrap(),
                _ = tokio::io::AsyncReadExt::read(&mut stdin, &mut byte) => {
                    eof = true;
                    Outcome::default()
                }
            }
        };
        outcomes.push(outcome);
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for o in outcomes {
        let notice = o.notice_ns.map_or("-".to_owned(), |n| n.to_string());
        let _ = match o.end {
            End::Unfinished => writeln!(out, "{notice} unfinished"),
            End::Closed => writeln!(out, "{notice} closed"),
            End::Ended => writeln!(out, "{notice} ended"),
            End::Failed(e) => writeln!(out, "{notice} failed {}", e.replace('\n', " ")),
            End::Error(e) => writeln!(out, "{notice} error {}", e.replace('\n', " ")),
        };
    }
    out.flush().unwrap();
}

trait NowOrUnfinished {
    fn now_or_unfinished(self) -> Outcome;
}

impl NowOrUnfinished for JoinHandle<Outcome> {
    fn now_or_unfinished(self) -> Outcome {
        if self.is_finished() {
            futures_util::FutureExt::now_or_never(self)
                .and_then(Result::ok)
                .unwrap_or_default()
        } else {
            self.abort();
            Outcome::default()
        }
    }
}

async fn client(
    addr: SocketAddr,
    path: Arc<str>,
    ignores: bool,
    counts: Arc<(AtomicUsize, AtomicUsize, Notify)>,
    gate: Arc<Semaphore>,
) -> Outcome {
    let permit = gate.acquire_owned().await.unwrap();
    let failed = |e: String| {
        counts.1.fetch_add(1, Ordering::AcqRel);
        counts.2.notify_waiters();
        Outcome {
            notice_ns: None,
            end: End::Failed(e),
        }
    };
    let (res, conn) = match super::get(addr, &path, &[("accept", "text/event-stream")]).await {
        Ok(ok) => ok,
        Err(e) => return failed(e),
    };
    if res.status() != 200 {
        return failed(format!("status {}", res.status()));
    }
    let mut events = BodyDataStream::new(res.into_body()).eventsource();
    match events.next().await {
        Some(Ok(event)) if event.event != "shutdown" => {}
        other => return failed(format!("expected a first event, got {other:?}")),
    }
    drop(permit);
    counts.0.fetch_add(1, Ordering::AcqRel);
    counts.2.notify_waiters();

    let mut outcome = Outcome::default();
    loop {
        match events.next().await {
            Some(Ok(event)) if event.event == "shutdown" => {
                let at = monotonic_ns();
                let data: serde_json::Value = serde_json::from_str(&event.data).unwrap_or_default();
                if data["type"] != "shutdown" || outcome.notice_ns.is_some() {
                    outcome.end = End::Error(format!("bad or second notice: {event:?}"));
                    return outcome;
                }
                outcome.notice_ns = Some(at);
                if !ignores {
                    // The seed's frontend: close the EventSource.
                    drop(events);
                    drop(conn);
                    outcome.end = End::Closed;
                    return outcome;
                }
            }
            Some(Ok(_event)) => {}
            Some(Err(e)) => {
                outcome.end = End::Error(e.to_string());
                return outcome;
            }
            None => {
                outcome.end = End::Ended;
                return outcome;
            }
        }
    }
}
