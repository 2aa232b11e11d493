//! nginx as a child process: a non-daemon master in a temporary directory,
//! its upstream rewritten and reloaded as an endpoint controller would.

use crate::http::get;
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};
use tokio::process::{Child, Command};

/// The configuration, every setting commented: deploy/nginx.conf.template.
const TEMPLATE: &str = include_str!("../nginx.conf.template");

pub struct Nginx {
    bin: PathBuf,
    dir: PathBuf,
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl Nginx {
    /// Writes the configuration into `dir` and starts nginx on a free port
    /// in front of `upstreams`; returns once it proxies `/healthz/ready`.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        upstreams: &[SocketAddr],
        retry_503: bool,
        max_files: u64,
    ) -> Result<Self, String> {
        let port = crate::instance::free_port();
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            // The workers run as nobody and must reach their temp paths.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
        }
        let files = max_files.clamp(1024, 1 << 20);
        let config = TEMPLATE
            .replace("{{dir}}", &dir.display().to_string())
            .replace("{{port}}", &port.to_string())
            .replace("{{worker_rlimit_nofile}}", &files.to_string())
            .replace("{{worker_connections}}", &(files - 64).to_string())
            .replace("{{user}}", if root { "user nobody nogroup;" } else { "" })
            .replace(
                "{{next_upstream}}",
                if retry_503 {
                    "error timeout http_503"
                } else {
                    "error timeout"
                },
            );
        std::fs::write(dir.join("nginx.conf"), config).map_err(|e| e.to_string())?;
        let mut nginx = Self {
            bin: bin.into(),
            dir: dir.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child: None,
        };
        nginx.write_upstream(upstreams)?;
        let child = Command::new(bin)
            .args(nginx.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        nginx.child = Some(child);
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = get(nginx.addr, "/healthz/ready", Duration::from_secs(1)).await {
                return Ok(nginx);
            }
            if let Some(Ok(Some(status))) = nginx.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("nginx exited ({status}):\n{}", nginx.error_log()));
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(format!("nginx does not answer:\n{}", nginx.error_log()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn args(&self) -> Vec<String> {
        let dir = self.dir.display();
        vec![
            "-p".into(),
            format!("{dir}/"),
            "-c".into(),
            format!("{dir}/nginx.conf"),
            "-e".into(),
            format!("{dir}/error.log"),
        ]
    }

    fn write_upstream(&self, upstreams: &[SocketAddr]) -> Result<(), String> {
        let servers: String = upstreams.iter().map(|a| format!("server {a};\n")).collect();
        std::fs::write(self.dir.join("upstream.conf"), servers).map_err(|e| e.to_string())
    }

    /// Rewrites the upstream and reloads, as an endpoint controller does;
    /// returns once the new workers run.
    pub async fn set_upstreams(&self, upstreams: &[SocketAddr]) -> Result<(), String> {
        self.write_upstream(upstreams)?;
        let started = |log: &str| log.matches("start worker process ").count();
        let before = started(&self.error_log());
        let out = Command::new(&self.bin)
            .args(self.args())
            .args(["-s", "reload"])
            .output()
            .await
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "nginx -s reload: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let start = Instant::now();
        while started(&self.error_log()) == before {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(format!("nginx did not reload:\n{}", self.error_log()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    /// Fast shutdown (SIGTERM: the master stops its workers), then waits.
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }
}

impl Drop for Nginx {
    /// On an early return, stop the master so that it stops its workers
    /// (a SIGKILL of the master alone would leave them serving).
    fn drop(&mut self) {
        if let Some(pid) = self.child.as_ref().and_then(|c| c.id()) {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
    }
}
