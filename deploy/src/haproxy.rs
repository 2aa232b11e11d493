//! HAProxy as a child process: one foreground process in the run's
//! directory, its servers set over the runtime API (a stats socket), as an
//! endpoint controller would; see deploy/haproxy.cfg.template for why.

use crate::{
    connect::Target,
    proxy::{self, Logged, PAGE_USER_AGENT, Proxy, Settings},
};
use std::{fs::File, net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
    process::{Child, Command},
};

/// The configuration, every setting commented: deploy/haproxy.cfg.template.
const TEMPLATE: &str = include_str!("../haproxy.cfg.template");

pub struct Haproxy {
    dir: PathBuf,
    target: Target,
    /// `slots[i]` is server `s{i+1}`: the instance it was given, if any.
    slots: Vec<Option<SocketAddr>>,
    upstreams: Vec<SocketAddr>,
    child: Option<Child>,
}

impl Proxy for Haproxy {
    const NAME: &'static str = "HAProxy";

    async fn start(settings: &Settings, upstreams: &[SocketAddr]) -> Result<Self, String> {
        let dir = &settings.dir;
        let port = crate::instance::free_port();
        // Two sockets per stream, plus listeners, logs and the stats socket.
        let maxconn = (settings.max_files.min(1 << 20).saturating_sub(100) / 2).max(256);
        let bind_tls = match &settings.tls {
            None => String::new(),
            Some(t) => format!(" ssl crt {} alpn h2,http/1.1", t.bundle.display()),
        };
        let config = TEMPLATE
            .replace("{{dir}}", &dir.display().to_string())
            .replace("{{port}}", &port.to_string())
            .replace("{{bind_tls}}", &bind_tls)
            .replace("{{maxconn}}", &maxconn.to_string())
            .replace("{{slots}}", &settings.upstream_slots.max(1).to_string())
            .replace(
                "{{retry_on}}",
                if settings.retry_503 {
                    "conn-failure empty-response 503"
                } else {
                    "conn-failure empty-response"
                },
            );
        let config_path = dir.join("haproxy.cfg");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let log = File::create(dir.join("haproxy.log")).map_err(|e| e.to_string())?;
        let err = File::create(dir.join("haproxy.stderr")).map_err(|e| e.to_string())?;
        let child = Command::new(&settings.bin)
            .arg("-db")
            .arg("-f")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", settings.bin.display()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut haproxy = Self {
            dir: dir.clone(),
            target: match &settings.tls {
                None => Target::plain(addr),
                Some(files) => Target::tls(addr, files)?,
            },
            slots: vec![None; settings.upstream_slots.max(1)],
            upstreams: Vec::new(),
            child: Some(child),
        };
        // The socket exists once the configuration is loaded.
        let start = std::time::Instant::now();
        while haproxy.command("show info").await.is_err() {
            if let Some(why) = haproxy.exited() {
                return Err(why);
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(format!("HAProxy does not start:\n{}", haproxy.stderr()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        haproxy.set_upstreams(upstreams).await?;
        let target = haproxy.target.clone();
        proxy::wait_proxying(&target, || haproxy.exited())
            .await
            .map_err(|e| format!("{e}\n{}", haproxy.stderr()))?;
        Ok(haproxy)
    }

    fn target(&self) -> &Target {
        &self.target
    }

    fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// A new upstream gets a slot never used before (an old slot may still
    /// carry the streams of its terminating instance): its address, then
    /// `state ready`. A removed one goes to `state maint`. Each command has
    /// taken effect when the socket answers.
    async fn set_upstreams(&mut self, upstreams: &[SocketAddr]) -> Result<(), String> {
        for addr in upstreams {
            if self.slots.contains(&Some(*addr)) {
                continue;
            }
            let slot = self.slots.iter().position(Option::is_none).ok_or_else(|| {
                format!("no free HAProxy server slot for {addr} (upstream_slots too small)")
            })?;
            self.slots[slot] = Some(*addr);
            let server = format!("analytics/s{}", slot + 1);
            self.command(&format!(
                "set server {server} addr {} port {}",
                addr.ip(),
                addr.port()
            ))
            .await?;
            self.command(&format!("set server {server} state ready"))
                .await?;
        }
        for addr in &self.upstreams {
            if upstreams.contains(addr) {
                continue;
            }
            let slot = self.slots.iter().position(|s| *s == Some(*addr));
            if let Some(slot) = slot {
                self.command(&format!("set server analytics/s{} state maint", slot + 1))
                    .await?;
            }
        }
        self.upstreams = upstreams.to_vec();
        Ok(())
    }

    /// The `log-format` of the template.
    fn requests(&self) -> Vec<Logged> {
        let log = std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default();
        log.lines().filter_map(parse_line).collect()
    }

    /// Hard stop (SIGTERM closes every connection at once), then waits.
    async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            proxy::terminate(&child);
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }
}

impl Haproxy {
    /// One runtime API command; its answer. HAProxy closes the socket after
    /// answering a single command (non-interactive mode).
    async fn command(&self, command: &str) -> Result<String, String> {
        let socket = self.dir.join("haproxy.sock");
        let exchange = async {
            let mut stream = UnixStream::connect(&socket).await?;
            stream.write_all(format!("{command}\n").as_bytes()).await?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        let answer = tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .map_err(|_| format!("HAProxy runtime API: no answer to {command:?}"))?
            .map_err(|e| format!("HAProxy runtime API {}: {e}", socket.display()))?;
        let refused = ["No such", "Unknown", "Require", "invalid", "failed"];
        if refused.iter().any(|r| answer.contains(r)) {
            return Err(format!("HAProxy refused {command:?}: {}", answer.trim()));
        }
        Ok(answer)
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.as_mut()?.try_wait() {
            Ok(Some(status)) => Some(format!("HAProxy exited ({status}):\n{}", self.stderr())),
            _ => None,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("haproxy.stderr")).unwrap_or_default()
    }
}

/// `%Ts.%ms %ST "%r" up=%si:%sp rc=%rc proto=%HV conn=%cp ua=%hr`
fn parse_line(line: &str) -> Option<Logged> {
    let status = line.split(' ').nth(1)?.parse().ok()?;
    let request = line.split('"').nth(1)?;
    let field = |name: &str| {
        line.split_once(&format!(" {name}="))
            .map(|(_, rest)| rest.split(' ').next().unwrap_or(""))
            .unwrap_or("")
    };
    // HTTP/2 requests carry an absolute URI: keep the path.
    let uri = request.split(' ').nth(1)?;
    let path = match uri.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => uri,
    };
    Some(Logged {
        status,
        path: path.to_owned(),
        tries: field("rc").parse::<usize>().unwrap_or(0) + 1,
        protocol: field("proto").to_owned(),
        connection: field("conn").to_owned(),
        browser: line.contains(PAGE_USER_AGENT),
    })
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            proxy::terminate(child);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_log_format() {
        let line = r#"1764000000.123 200 "GET https://127.0.0.1:4000/api/v1/analytics/stream?report=x HTTP/2.0" up=127.0.0.1:38133 rc=1 proto=HTTP/2.0 conn=51234 ua={Mozilla/5.0 rolling-deploy-page}"#;
        let l = super::parse_line(line).unwrap();
        assert_eq!(
            (l.status, l.path.as_str(), l.tries, l.protocol.as_str()),
            (200, "/api/v1/analytics/stream?report=x", 2, "HTTP/2.0")
        );
        assert_eq!((l.connection.as_str(), l.browser), ("51234", true));
    }
}
