//! The live feed through the deploy: a producer that POSTs hits through the
//! proxy at a steady rate and records every acknowledged one, and the
//! expectation of a live client ([`LiveCheck`], run by the same
//! EventSource client as the report clients): every acknowledged hit
//! stored after its first event arrives exactly once, in log order, across
//! its restarts, and a reset only where the log was lost.
//!
//! Ids are `<epoch>:<position>` (the example's `EventId`): positions count
//! the hits of an epoch from 1 without holes, so a skipped position is a
//! lost hit whoever posted it, and a new epoch means the log was lost.

use crate::{
    client::{Event, Expect, Outcome},
    connect::{Conn, Protocol, Target},
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header;
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// `<epoch>:<position>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id {
    pub epoch: String,
    pub position: u64,
}

impl Id {
    pub fn parse(s: &str) -> Option<Self> {
        let (epoch, position) = s.split_once(':')?;
        Some(Self {
            epoch: epoch.to_owned(),
            position: position.parse().ok()?,
        })
    }
}

/// What the producer had acknowledged: each hit's id and path.
#[derive(Default, Debug)]
pub struct Acked {
    /// In the order the answers came.
    pub ids: Vec<Id>,
    pub paths: HashMap<Id, String>,
    /// POSTs answered with another status (503 while the log is down), or
    /// that got no answer: not acknowledged, so not expected.
    pub refused: u64,
    /// Set when the producer has stopped: the last acknowledged hit.
    pub last: Option<Id>,
}

pub type Shared = Arc<Mutex<Acked>>;

/// POSTs `{"source":...,"path":"/p/<n>"}` to `/api/v1/analytics/collect`
/// every `1 / rate` s until `stop`, over one keep-alive HTTP/1.1
/// connection (a new one when it breaks), and records each acknowledged
/// hit's id. A POST is never retried: an unanswered hit may or may not be
/// stored, and is not expected.
pub async fn produce(
    target: Target,
    rate: f64,
    acked: Shared,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    const SOURCES: [&str; 5] = ["google", "direct", "newsletter", "github", "bing"];
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<Conn> = None;
    for n in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let path = format!("/p/{n}");
        let body = format!(
            r#"{{"source":"{}","path":"{path}"}}"#,
            SOURCES[n as usize % 5]
        );
        let answer = tokio::time::timeout(Duration::from_secs(10), post(&target, &mut conn, body))
            .await
            .unwrap_or_else(|_| Err("no answer within 10 s".into()));
        let mut acked = acked.lock().unwrap();
        match answer {
            Ok(id) => {
                acked.paths.insert(id.clone(), path);
                acked.ids.push(id);
            }
            Err(_) => {
                acked.refused += 1;
                conn = None;
            }
        }
    }
    let mut acked = acked.lock().unwrap();
    acked.last = acked.ids.last().cloned();
}

async fn post(target: &Target, conn: &mut Option<Conn>, body: String) -> Result<Id, String> {
    if !conn.as_ref().is_some_and(Conn::is_open) {
        *conn = Some(target.connect(Protocol::Http1).await?);
    }
    let c = conn.as_mut().expect("connected");
    let req = c
        .request("POST", "/api/v1/analytics/collect")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("valid request");
    let res = c.send(req).await?;
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status != hyper::StatusCode::OK {
        return Err(format!("{status}"));
    }
    let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    json["id"]
        .as_str()
        .and_then(Id::parse)
        .ok_or_else(|| format!("collect answered {json}"))
}

/// One live client's view, epoch by epoch.
#[derive(Default, Debug)]
struct Epoch {
    /// The last position received; at first, where the client starts (the
    /// position before its first hit, or the one a reset resumes after).
    last: u64,
    /// Left by a reset (the log was lost): what was acknowledged after
    /// `last` is gone with it, not lost by the stream.
    ended_by_reset: bool,
}

/// The expectation of a live client; see the module docs.
pub struct LiveCheck {
    acked: Shared,
    epochs: BTreeMap<String, Epoch>,
    current: Option<String>,
    /// The audit: expects every hit of the first epoch it sees from the
    /// start (it resumes from `<epoch>:0`).
    from_start: bool,
}

impl LiveCheck {
    pub fn new(acked: Shared) -> Self {
        Self {
            acked,
            epochs: BTreeMap::new(),
            current: None,
            from_start: false,
        }
    }

    /// Every hit of the epoch from its first (with `Last-Event-ID:
    /// <epoch>:0`), for the audit of what the log kept.
    pub fn from_start(acked: Shared) -> Self {
        Self {
            from_start: true,
            ..Self::new(acked)
        }
    }
}

impl Expect for LiveCheck {
    fn event(&mut self, event: &Event, out: &mut Outcome) -> bool {
        let Some(id) = Id::parse(&event.last_event_id) else {
            out.corrupt += 1;
            return false;
        };
        if event.event == "reset" {
            out.resets += 1;
            if let Some(old) = self.current.as_ref().and_then(|e| self.epochs.get_mut(e)) {
                old.ended_by_reset = true;
            }
            self.epochs.insert(
                id.epoch.clone(),
                Epoch {
                    last: id.position,
                    ended_by_reset: false,
                },
            );
            self.current = Some(id.epoch);
            return false;
        }
        if event.event != "hit" {
            out.corrupt += 1;
            return false;
        }
        if self.current.as_deref() != Some(id.epoch.as_str()) {
            if self.epochs.contains_key(&id.epoch) {
                // Back to an epoch it had left: out of order.
                out.corrupt += 1;
                return false;
            }
            if self.current.is_some() {
                // A new epoch without a reset: a silent gap.
                out.lost += 1;
            }
            let last = if self.from_start { 0 } else { id.position - 1 };
            self.epochs.insert(
                id.epoch.clone(),
                Epoch {
                    last,
                    ended_by_reset: false,
                },
            );
            self.current = Some(id.epoch.clone());
        }
        let epoch = self.epochs.get_mut(&id.epoch).expect("inserted");
        if id.position <= epoch.last {
            out.duplicated += 1;
            return false;
        }
        // Positions have no holes: a skipped one is a hit this client lost.
        out.lost += id.position - epoch.last - 1;
        epoch.last = id.position;
        out.delivered += 1;
        let path = serde_json::from_str::<serde_json::Value>(&event.data)
            .ok()
            .and_then(|v| v["path"].as_str().map(str::to_owned));
        if let Some(expected) = self.acked.lock().unwrap().paths.get(&id) {
            if path.as_deref() != Some(expected.as_str()) {
                out.corrupt += 1;
            }
        }
        false
    }

    /// Caught up once it has the producer's last acknowledged hit.
    fn caught_up(&self) -> bool {
        let acked = self.acked.lock().unwrap();
        match &acked.last {
            None => acked.ids.is_empty(),
            Some(last) => self
                .epochs
                .get(&last.epoch)
                .is_some_and(|e| e.last >= last.position),
        }
    }

    /// Acknowledged hits after the client's start in an epoch it saw that it
    /// never got are lost, unless the log itself lost them (after the
    /// last one received in an epoch a reset ended). Hits it skipped were
    /// counted as they were skipped; only the tail is counted here.
    fn finish(&mut self, out: &mut Outcome) {
        let acked = self.acked.lock().unwrap();
        for id in &acked.ids {
            if let Some(e) = self.epochs.get(&id.epoch) {
                if id.position > e.last && !e.ended_by_reset {
                    out.lost += 1;
                } else if id.position > e.last {
                    out.gone_with_log += 1;
                }
            }
        }
    }
}

/// Redis as a child process: Debian's `redis-server` on 127.0.0.1, a port
/// of its own, no persistence (a restart comes back empty), in the run's
/// directory.
pub struct Redis {
    bin: std::path::PathBuf,
    dir: std::path::PathBuf,
    pub port: u16,
    child: Option<tokio::process::Child>,
    starts: u32,
}

impl Redis {
    pub async fn start(bin: &std::path::Path, dir: &std::path::Path) -> Result<Self, String> {
        let mut redis = Self {
            bin: bin.into(),
            dir: dir.join("redis"),
            port: crate::instance::free_port(),
            child: None,
            starts: 0,
        };
        std::fs::create_dir_all(&redis.dir).map_err(|e| e.to_string())?;
        redis.spawn().await?;
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn spawn(&mut self) -> Result<(), String> {
        self.starts += 1;
        let log = self.dir.join(format!("redis-{}.log", self.starts));
        let child = tokio::process::Command::new(&self.bin)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        let start = Instant::now();
        while !self.pong().await {
            if start.elapsed() > Duration::from_secs(10) {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("redis-server does not answer PING:\n{log}"));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(())
    }

    async fn pong(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut tcp) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let mut buf = [0u8; 7];
        tcp.write_all(b"PING\r\n").await.is_ok()
            && tcp.read_exact(&mut buf).await.is_ok()
            && &buf == b"+PONG\r\n"
    }

    /// Stops Redis (SIGTERM: no save is configured, so the data is gone)
    /// and starts it again, empty, on the same port; returns how long it
    /// was away.
    pub async fn restart_empty(&mut self) -> Result<Duration, String> {
        let down = Instant::now();
        self.stop().await;
        self.spawn().await?;
        Ok(down.elapsed())
    }

    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::proxy::terminate(&child);
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(id: &str, path: &str) -> Event {
        Event {
            last_event_id: id.into(),
            event: "hit".into(),
            data: format!(r#"{{"id":"{id}","source":"google","path":"{path}","ts":1}}"#),
        }
    }

    fn acked(ids: &[&str]) -> Shared {
        let mut a = Acked::default();
        for id in ids {
            let id = Id::parse(id).unwrap();
            a.paths.insert(id.clone(), format!("/p/{}", id.position));
            a.ids.push(id);
        }
        a.last = a.ids.last().cloned();
        Arc::new(Mutex::new(a))
    }

    fn run(check: &mut LiveCheck, events: &[Event]) -> Outcome {
        let mut out = Outcome::default();
        for e in events {
            check.event(e, &mut out);
        }
        check.finish(&mut out);
        out
    }

    #[test]
    fn counts_skipped_repeated_and_missing_hits() {
        let shared = acked(&["e:1", "e:2", "e:3", "e:4", "e:5", "e:6"]);
        let mut check = LiveCheck::new(shared);
        // Starts at 2; 4 skipped, 3 twice, 6 never comes.
        let out = run(
            &mut check,
            &[
                hit("e:2", "/p/2"),
                hit("e:3", "/p/3"),
                hit("e:3", "/p/3"),
                hit("e:5", "/p/x"),
            ],
        );
        assert_eq!(
            (out.delivered, out.lost, out.duplicated, out.corrupt),
            (3, 2, 1, 1)
        );
        assert!(!check.caught_up());
    }

    #[test]
    fn a_reset_excuses_only_what_the_log_lost() {
        let shared = acked(&["old:1", "old:2", "old:3", "new:1", "new:2"]);
        let reset = Event {
            last_event_id: "new:0".into(),
            event: "reset".into(),
            data: "{}".into(),
        };
        let mut check = LiveCheck::new(shared.clone());
        let out = run(
            &mut check,
            &[
                hit("old:1", "/p/1"),
                reset.clone(),
                hit("new:1", "/p/1"),
                hit("new:2", "/p/2"),
            ],
        );
        assert_eq!((out.lost, out.gone_with_log, out.resets), (0, 2, 1));
        assert!(check.caught_up());
        // The same new epoch without the reset: a silent gap.
        let mut check = LiveCheck::new(shared);
        let out = run(
            &mut check,
            &[
                hit("old:1", "/p/1"),
                hit("new:1", "/p/1"),
                hit("new:2", "/p/2"),
            ],
        );
        assert_eq!((out.lost, out.resets), (3, 0));
    }
}
