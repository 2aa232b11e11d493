//! The example server as a child process, and Redis: shared by the tests of
//! the example (`analytics.rs`, `live.rs`).
#![allow(dead_code)]

use crate::common::{until, within};
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

mod redis_server;
#[allow(unused_imports)]
pub use redis_server::Redis;

/// The example binary, built by `cargo test` before these tests.
pub fn example_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_analytics"))
}

/// A free loopback port, to start two servers on the same one in turn.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One run of the example server; killed if the test fails.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<String>>,
    /// The tasks copying stdout and stderr into `logs`; they end at EOF.
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    pub async fn start(port: u16, env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(example_binary())
            .env("PORT", port.to_string())
            .env("RUST_LOG", "info")
            .env("POD_NAME", "analytics-test-pod")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let logs = logs.clone();
            readers.push(tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut logs = logs.lock().unwrap();
                    logs.push_str(&line);
                    logs.push('\n');
                }
            }));
        }
        let server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            logs,
            readers,
        };
        until(|| server.logs().contains("listening on")).await;
        server
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub async fn exit_code(&mut self) -> i32 {
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the server did not exit within 30 s")
            .unwrap();
        // Every line it wrote before exiting is in `logs` once both pipes
        // reach their end.
        for reader in self.readers.drain(..) {
            within(reader).await.unwrap();
        }
        status.code().expect("exited by a signal")
    }
}

/// `POST path` with a JSON body over a fresh HTTP/1.1 connection: the status
/// and the JSON answer.
pub async fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, serde_json::Value) {
    use http_body_util::{BodyExt, Full};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(body.to_owned())))
        .unwrap();
    let res = within(sender.send_request(req)).await.unwrap();
    let status = res.status().as_u16();
    let body = within(res.into_body().collect()).await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("not JSON ({status}): {}", String::from_utf8_lossy(&body)));
    (status, json)
}
