//! The proxy in front of the instances, as the deploy drives it: started,
//! given the ready endpoints, and told to take one out, the way an endpoint
//! controller drives a real one. nginx (nginx.rs) and HAProxy (haproxy.rs)
//! behind one trait; the driver never asks which one it has.

use crate::{connect::Target, http::get, tls};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// What both proxies are configured from.
pub struct Settings {
    /// The proxy's binary.
    pub bin: PathBuf,
    /// The run's temporary directory: configuration, logs, sockets.
    pub dir: PathBuf,
    /// Retry a 503 on another instance (GET only).
    pub retry_503: bool,
    /// The open-file limit the proxy may use.
    pub max_files: u64,
    /// Terminate TLS with HTTP/2 on, with these files.
    pub tls: Option<tls::Files>,
    /// How many distinct instances the run will put behind the proxy.
    pub upstream_slots: usize,
}

/// One request as the proxy logged it.
#[derive(Debug, Clone)]
pub struct Logged {
    /// The status the client got.
    pub status: u16,
    /// The request path with its query.
    pub path: String,
    /// Instances tried, counting the one that answered (a retry makes 2).
    pub tries: usize,
    /// The protocol the client spoke: `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: String,
    /// Which client connection carried it (unique within the run).
    pub connection: String,
    /// From the page in Chromium (deploy.mjs sets its User-Agent).
    pub browser: bool,
}

/// The User-Agent deploy.mjs gives the page, so the logs can tell it apart.
pub const PAGE_USER_AGENT: &str = "rolling-deploy-page";

#[allow(async_fn_in_trait)] // used as a generic bound only, within this binary
pub trait Proxy: Sized {
    /// What the table calls it.
    const NAME: &'static str;

    /// Writes the configuration into the run's directory and starts the
    /// proxy on a free port of 127.0.0.1 in front of `upstreams`; returns
    /// once it proxies `/healthz/ready`.
    async fn start(settings: &Settings, upstreams: &[SocketAddr]) -> Result<Self, String>;

    /// Where clients connect.
    fn target(&self) -> &Target;

    /// The upstreams new requests may go to.
    fn upstreams(&self) -> &[SocketAddr];

    /// New requests go to exactly `upstreams` from now on (the Service's
    /// ready endpoints); returns once the proxy applies it. Streams already
    /// open on an instance no longer listed go on until it ends them.
    async fn set_upstreams(&mut self, upstreams: &[SocketAddr]) -> Result<(), String>;

    /// Takes one upstream out (its pod is terminating); returns once applied.
    async fn take_out(&mut self, upstream: SocketAddr) -> Result<(), String> {
        let rest: Vec<SocketAddr> = self
            .upstreams()
            .iter()
            .copied()
            .filter(|a| *a != upstream)
            .collect();
        self.set_upstreams(&rest).await
    }

    /// Every request logged so far (a stream is logged when it ends).
    fn requests(&self) -> Vec<Logged>;

    /// Stops at once, closing every connection, and waits.
    async fn stop(self);
}

/// Waits until `GET /healthz/ready` through `target` answers 200; `exited`
/// says why the proxy stopped if it did.
pub async fn wait_proxying(
    target: &Target,
    mut exited: impl FnMut() -> Option<String>,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if let Ok((200, _)) = get(target, "/healthz/ready", Duration::from_secs(1)).await {
            return Ok(());
        }
        if let Some(why) = exited() {
            return Err(why);
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "no 200 from /healthz/ready through {}",
                target.origin()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// As root, a proxy's workers run as nobody and must reach the directory.
pub fn open_dir_to_workers(dir: &Path) -> Result<bool, String> {
    // SAFETY: geteuid(2) has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        use std::os::unix::fs::PermissionsExt;
        for d in [dir.to_owned(), dir.join("tls")] {
            if d.exists() {
                std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(root)
}

/// SIGTERM to a child proxy's pid.
pub fn terminate(child: &tokio::process::Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
}
