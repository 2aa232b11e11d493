//! nginx as a child process: a non-daemon master in the run's directory,
//! its upstream rewritten and reloaded as an endpoint controller would.

use crate::{
    connect::Target,
    proxy::{self, Logged, PAGE_USER_AGENT, Proxy, Settings},
};
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};
use tokio::process::{Child, Command};

/// The configuration, every setting commented: deploy/nginx.conf.template.
const TEMPLATE: &str = include_str!("../nginx.conf.template");

pub struct Nginx {
    bin: PathBuf,
    dir: PathBuf,
    target: Target,
    upstreams: Vec<SocketAddr>,
    child: Option<Child>,
}

impl Proxy for Nginx {
    const NAME: &'static str = "nginx";

    async fn start(settings: &Settings, upstreams: &[SocketAddr]) -> Result<Self, String> {
        let dir = &settings.dir;
        let port = crate::instance::free_port();
        let root = proxy::open_dir_to_workers(dir)?;
        let files = settings.max_files.clamp(1024, 1 << 20);
        let listen = format!("127.0.0.1:{port}");
        let (listen, tls) = match &settings.tls {
            None => (listen, String::new()),
            Some(t) => (
                format!("{listen} ssl http2"),
                format!(
                    "ssl_certificate {};\n        ssl_certificate_key {};",
                    t.cert.display(),
                    t.key.display()
                ),
            ),
        };
        let config = TEMPLATE
            .replace("{{dir}}", &dir.display().to_string())
            .replace("{{listen}}", &listen)
            .replace("{{tls}}", &tls)
            .replace("{{worker_rlimit_nofile}}", &files.to_string())
            .replace("{{worker_connections}}", &(files - 64).to_string())
            .replace("{{user}}", if root { "user nobody nogroup;" } else { "" })
            .replace(
                "{{next_upstream}}",
                if settings.retry_503 {
                    "error timeout http_503"
                } else {
                    "error timeout"
                },
            );
        std::fs::write(dir.join("nginx.conf"), config).map_err(|e| e.to_string())?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let target = match &settings.tls {
            None => Target::plain(addr),
            Some(files) => Target::tls(addr, files)?,
        };
        let mut nginx = Self {
            bin: settings.bin.clone(),
            dir: dir.clone(),
            target,
            upstreams: upstreams.to_vec(),
            child: None,
        };
        nginx.write_upstream()?;
        let child = Command::new(&nginx.bin)
            .args(nginx.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", nginx.bin.display()))?;
        nginx.child = Some(child);
        let target = nginx.target.clone();
        proxy::wait_proxying(&target, || match nginx.child.as_mut()?.try_wait() {
            Ok(Some(status)) => Some(format!("nginx exited ({status}):\n{}", nginx_log(dir))),
            _ => None,
        })
        .await
        .map_err(|e| format!("{e}\n{}", nginx_log(dir)))?;
        Ok(nginx)
    }

    fn target(&self) -> &Target {
        &self.target
    }

    fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// Rewrites the upstream and reloads; returns once the new workers run.
    /// The old workers serve their open streams until those end (and
    /// close their idle client connections; HTTP/2 ones with a GOAWAY).
    async fn set_upstreams(&mut self, upstreams: &[SocketAddr]) -> Result<(), String> {
        self.upstreams = upstreams.to_vec();
        self.write_upstream()?;
        let started = |log: &str| log.matches("start worker process ").count();
        let before = started(&nginx_log(&self.dir));
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
        while started(&nginx_log(&self.dir)) == before {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(format!("nginx did not reload:\n{}", nginx_log(&self.dir)));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// The `deploy` log format of the template.
    fn requests(&self) -> Vec<Logged> {
        let log = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
        log.lines().filter_map(parse_line).collect()
    }

    /// Fast shutdown (SIGTERM: the master stops its workers), then waits.
    async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            proxy::terminate(&child);
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }
}

impl Nginx {
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

    fn write_upstream(&self) -> Result<(), String> {
        let servers: String = self
            .upstreams
            .iter()
            .map(|a| format!("server {a} max_fails=0;\n"))
            .collect();
        std::fs::write(self.dir.join("upstream.conf"), servers).map_err(|e| e.to_string())
    }
}

fn nginx_log(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
}

/// `$msec $status "$request" up=... up_status=503, 200 proto=... conn=... ua="..." ...`
fn parse_line(line: &str) -> Option<Logged> {
    let status = line.split(' ').nth(1)?.parse().ok()?;
    let request = line.split('"').nth(1)?;
    let field = |name: &str| {
        line.split_once(&format!(" {name}="))
            .map(|(_, rest)| rest.split(' ').next().unwrap_or(""))
            .unwrap_or("")
    };
    let up_status = line
        .split_once(" up_status=")
        .and_then(|(_, r)| r.split(" proto=").next())
        .unwrap_or("");
    Some(Logged {
        status,
        path: request.split(' ').nth(1)?.to_owned(),
        tries: up_status
            .split([',', ':'])
            .filter(|s| !s.trim().is_empty())
            .count(),
        protocol: field("proto").to_owned(),
        connection: field("conn").to_owned(),
        browser: line.contains(PAGE_USER_AGENT),
    })
}

impl Drop for Nginx {
    /// On an early return, stop the master so that it stops its workers
    /// (a SIGKILL of the master alone would leave them serving).
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            proxy::terminate(child);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_deploy_log_format() {
        let line = r#"1764000000.123 200 "GET /api/v1/analytics/stream?report=x HTTP/2.0" up=127.0.0.1:1, 127.0.0.1:2 up_status=503, 200 proto=HTTP/2.0 conn=17 ua="Mozilla/5.0 rolling-deploy-page" last_event_id="3" rt=1.0"#;
        let l = super::parse_line(line).unwrap();
        assert_eq!(
            (l.status, l.path.as_str(), l.tries, l.protocol.as_str()),
            (200, "/api/v1/analytics/stream?report=x", 2, "HTTP/2.0")
        );
        assert_eq!((l.connection.as_str(), l.browser), ("17", true));
    }
}
