//! One instance of the analytics example: a child process on its own port,
//! stopped the way the kubelet stops a pod.

use crate::{connect::Target, http::get};
use std::{
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};
use tokio::process::{Child, Command};

pub struct Instance {
    pub name: String,
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

/// How an instance ended.
#[derive(Debug)]
pub struct Exit {
    /// `0`, another code, or the signal that ended it.
    pub status: String,
    /// It outlived terminationGracePeriodSeconds and got SIGKILL.
    pub killed: bool,
    /// From SIGTERM to exit.
    pub after_sigterm: Duration,
    /// The instance's own summary of its drain (its `drain report:` log line).
    pub drain_report: String,
}

/// A port nobody listens on at this moment.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Instance {
    /// Starts `bin` on a free port with `env` on top of the driver's own
    /// environment (so every `SHUTDOWN_*` variable set for the driver
    /// reaches the instances); its output goes to `<dir>/<name>.log`.
    pub fn start(
        bin: &Path,
        name: &str,
        dir: &Path,
        env: &[(&str, String)],
    ) -> Result<Self, String> {
        let port = free_port();
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .env("BIND", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("POD_NAME", name)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        Ok(Self {
            name: name.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            log,
        })
    }

    /// Waits until `/healthz/ready` answers 200 (the readiness probe).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited ({status}) before it was ready:\n{}",
                    self.name,
                    self.log_tail()
                ));
            }
            if let Ok((200, _)) = get(
                &Target::plain(self.addr),
                "/healthz/ready",
                Duration::from_secs(1),
            )
            .await
            {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "{} not ready after {timeout:?}:\n{}",
                    self.name,
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn signal(&self, signal: libc::c_int) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe { libc::kill(pid as libc::pid_t, signal) };
        }
    }

    /// SIGTERM now, SIGKILL at `kill_at` if the process is still there.
    pub async fn terminate(mut self, kill_at: Instant) -> Exit {
        let sigterm = Instant::now();
        self.signal(libc::SIGTERM);
        let (status, killed) =
            match tokio::time::timeout_at(kill_at.into(), self.child.wait()).await {
                Ok(status) => (status, false),
                Err(_) => {
                    self.signal(libc::SIGKILL);
                    (self.child.wait().await, true)
                }
            };
        let after_sigterm = sigterm.elapsed();
        let status = match status {
            Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                (Some(code), _) => code.to_string(),
                (None, Some(sig)) => format!("signal {sig}"),
                _ => s.to_string(),
            },
            Err(e) => e.to_string(),
        };
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let drain_report = log
            .lines()
            .find_map(|l| {
                l.split_once("drain report: ")
                    .map(|(_, r)| r.trim().to_owned())
            })
            .unwrap_or_else(|| "(no drain report in the log)".into());
        Exit {
            status,
            killed,
            after_sigterm,
            drain_report,
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}
