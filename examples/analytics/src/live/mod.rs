//! The live feed: hits collected by any instance, appended to one shared log,
//! and streamed to every subscriber in log order.
//!
//! The log is a [`Log`]: [`MemoryLog`] in the process (the default, so the
//! example needs nothing to run) or [`RedisLog`] on Redis Streams when
//! `REDIS_URL` is set, which every instance shares. Both keep a bounded
//! history ([`History`], `LIVE_HISTORY`) and an *epoch*, a random name that
//! changes when the history is lost (a new process for the in-process log,
//! a Redis restarted empty), so that a resumed id from an older epoch is
//! recognised instead of silently meaning something else.
//!
//! [`Feed`] is written once against the trait: one reader of the log per
//! instance, broadcast to the subscribers, and a subscription that resumes
//! after an id with the history then the live events, no gap and no
//! duplicate at the seam, and an explicit [`Item::Reset`] where a gap cannot
//! be avoided.

mod feed;
mod memory;
mod redis;

pub use feed::{Feed, Item, Reason, Resume};
pub use memory::MemoryLog;
pub use redis::RedisLog;

use futures_util::future::BoxFuture;
use std::{fmt, str::FromStr, sync::Arc, time::Duration};

/// A hit as collected: where the visitor came from and the page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    pub source: String,
    pub path: String,
    /// When the instance received it, in milliseconds since 1970.
    pub ts: u64,
}

impl Hit {
    /// The longest `source` accepted.
    pub const MAX_SOURCE: usize = 64;
    /// The longest `path` accepted.
    pub const MAX_PATH: usize = 512;

    /// Checks the JSON body of `POST /collect`, `{"source":"google",
    /// "path":"/pricing"}`; the error is the message of a 400.
    pub fn parse(body: &[u8], ts: u64) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        let object = value
            .as_object()
            .ok_or("the body must be a JSON object with source and path")?;
        if let Some(key) = object.keys().find(|k| *k != "source" && *k != "path") {
            return Err(format!("unknown field {key:?}: expected source and path"));
        }
        let field = |name: &str, max: usize| -> Result<String, String> {
            let value = object
                .get(name)
                .ok_or_else(|| format!("missing field {name:?}"))?;
            let text = value
                .as_str()
                .ok_or_else(|| format!("{name} must be a string, got {value}"))?;
            if text.is_empty() || text.chars().count() > max {
                return Err(format!(
                    "{name} must be 1 to {max} characters, got {}",
                    text.chars().count()
                ));
            }
            if text.chars().any(char::is_control) {
                return Err(format!("{name} must not contain control characters"));
            }
            Ok(text.to_owned())
        };
        let source = field("source", Self::MAX_SOURCE)?;
        let path = field("path", Self::MAX_PATH)?;
        if !path.starts_with('/') {
            return Err(format!("path must start with '/', got {path:?}"));
        }
        Ok(Self { source, path, ts })
    }
}

/// A position in the log: the hit's number, counted from 1 in its epoch
/// (0 is before the first). Consecutive, so that whether the history after
/// a position is complete is arithmetic: nothing after it is missing when
/// the first entry kept is at most the next one. In Redis the stream id is
/// `0-<n>` (`XADD live:hits 0-*` numbers them so).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position(pub u64);

impl Position {
    /// Before every entry: the position of an empty log.
    pub const ZERO: Position = Position(0);

    /// The next position.
    pub fn next(self) -> Position {
        Position(self.0.saturating_add(1))
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Position {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(());
        }
        s.parse().map(Position).map_err(|_| ())
    }
}

/// The id of an event on the wire and of a stored hit: `<epoch>:<position>`
/// (`9f2c4e1a0b7d3c55:1042`),
/// as `POST /collect` answers it and as the live stream's `id:` carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventId {
    pub epoch: Arc<str>,
    pub position: Position,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.position)
    }
}

impl FromStr for EventId {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (epoch, position) = s.split_once(':').ok_or(())?;
        if epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(());
        }
        Ok(Self {
            epoch: epoch.into(),
            position: position.parse()?,
        })
    }
}

/// One stored hit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub position: Position,
    pub hit: Arc<Hit>,
}

/// What a read of the log found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// The log's epoch at the read. When it is not the one the reader
    /// asked about, `entries` is empty and the reader starts over.
    pub epoch: Arc<str>,
    /// At most the `limit` asked for, in order.
    pub entries: Vec<Entry>,
    /// Entries after the position asked about are gone (trimmed).
    pub trimmed: bool,
    /// The last position the log has given out ([`Position::ZERO`] if none).
    pub last: Position,
}

/// The log is unreachable (or answered nonsense): the reason, for a 503.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogError(pub String);

/// Why [`Log::append`] has no id to give.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendError {
    /// The hit never reached the log: it is not stored.
    Unreachable(LogError),
    /// The hit was sent, but the log did not answer in time: it may be
    /// stored (and show in the live feed), and a retry may store it twice.
    Unconfirmed(LogError),
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The shared, bounded, ordered log of hits.
///
/// Every answer carries the log's epoch, read atomically with the rest, so
/// that a position is never taken for one of another epoch.
pub trait Log: Send + Sync + 'static {
    /// Stores a hit; resolves only once it is stored, to its id.
    fn append<'a>(&'a self, hit: &'a Hit) -> BoxFuture<'a, Result<EventId, AppendError>>;

    /// The entries after `after` (at most `limit`), whether some after it
    /// were trimmed, and the last position.
    fn read_after(&self, after: Position, limit: usize) -> BoxFuture<'_, Result<Read, LogError>>;

    /// Like [`Log::read_after`], but waits (a few seconds at most) for an
    /// entry after `after` when there is none yet, and reports a change of
    /// epoch from `epoch` with no entries. For the one reader per instance.
    fn tail<'a>(
        &'a self,
        epoch: &'a str,
        after: Position,
        limit: usize,
    ) -> BoxFuture<'a, Result<Read, LogError>>;

    /// The epoch and the last position, no entries: where "from now" is;
    /// also the readiness check.
    fn head(&self) -> BoxFuture<'_, Result<Read, LogError>>;

    /// The kind of log, for the logs: `in-process` or `redis`.
    fn kind(&self) -> &'static str;
}

/// How much history the log keeps: `LIVE_HISTORY`, a count (`10000`) or an
/// age (`90s`, `10m`, `2h`, `1d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum History {
    Count(u64),
    Age(Duration),
}

impl History {
    /// The name of the variable.
    pub const ENV: &'static str = "LIVE_HISTORY";
    /// Without `LIVE_HISTORY`: the last 10,000 hits.
    pub const DEFAULT: History = History::Count(10_000);

    /// Parses a value of `LIVE_HISTORY`; the error names the variable and
    /// the value.
    pub fn parse(value: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                "invalid {}={value:?}: expected a count of hits (10000) or an age (90s, 10m, 2h, 1d)",
                Self::ENV
            )
        };
        let digits = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let unit = &value[digits.len()..];
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        let n: u64 = digits.parse().map_err(|_| invalid())?;
        if n == 0 {
            return Err(invalid());
        }
        let seconds = match unit {
            // Redis takes a count up to `i64::MAX`.
            "" if i64::try_from(n).is_ok() => return Ok(Self::Count(n)),
            "" => {
                return Err(format!(
                    "invalid {}={value:?}: a count of hits is at most {}",
                    Self::ENV,
                    i64::MAX
                ));
            }
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            _ => return Err(invalid()),
        };
        n.checked_mul(seconds)
            .map(|s| Self::Age(Duration::from_secs(s)))
            .ok_or_else(invalid)
    }

    /// `LIVE_HISTORY`, or the default when unset.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(Self::ENV) {
            Err(_) => Ok(Self::DEFAULT),
            Ok(v) => Self::parse(&v),
        }
    }
}

/// Milliseconds since 1970 on this machine's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A new epoch: 16 hex digits nobody else picks (the standard library's
/// randomly keyed hasher over the time and the process id).
pub fn new_epoch() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// The data of a `hit` event: `{"id":"<epoch>:<position>","source":...,
/// "path":...,"ts":...}`.
pub fn hit_json(id: &EventId, hit: &Hit) -> String {
    serde_json::json!({
        "id": id.to_string(),
        "source": hit.source,
        "path": hit.path,
        "ts": hit.ts,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_a_count_or_an_age() {
        assert_eq!(History::parse("500"), Ok(History::Count(500)));
        assert_eq!(
            History::parse("10m"),
            Ok(History::Age(Duration::from_secs(600)))
        );
        assert_eq!(
            History::parse("1d"),
            Ok(History::Age(Duration::from_secs(86_400)))
        );
        assert_eq!(
            History::parse("9223372036854775807"),
            Ok(History::Count(i64::MAX as u64))
        );
        for bad in [
            "",
            "0",
            "-1",
            "10x",
            "m",
            "1.5m",
            "10 m",
            "9223372036854775808",
        ] {
            let e = History::parse(bad).unwrap_err();
            assert!(e.contains(&format!("invalid LIVE_HISTORY={bad:?}")), "{e}");
        }
    }

    #[test]
    fn ids_round_trip_and_order() {
        let id: EventId = "ab12:17".parse().unwrap();
        assert_eq!(id.to_string(), "ab12:17");
        assert!("9".parse::<Position>().unwrap() < "10".parse::<Position>().unwrap());
        for bad in [
            "",
            "x",
            "12",
            ":12",
            "e:",
            "e:1-2",
            "e:-1",
            "e:+1",
            "é:1",
            "e:1 ",
            "e:99999999999999999999",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn hits_are_validated() {
        let ok = Hit::parse(br#"{"source":"google","path":"/pricing"}"#, 7).unwrap();
        assert_eq!(
            (ok.source.as_str(), ok.path.as_str(), ok.ts),
            ("google", "/pricing", 7)
        );
        for (body, message) in [
            (&b"not json"[..], "not JSON"),
            (b"[1]", "JSON object"),
            (br#"{"path":"/"}"#, "missing field \"source\""),
            (br#"{"source":"g"}"#, "missing field \"path\""),
            (br#"{"source":1,"path":"/"}"#, "source must be a string"),
            (br#"{"source":"","path":"/"}"#, "source must be 1 to 64"),
            (br#"{"source":"g","path":"pricing"}"#, "must start with '/'"),
            (br#"{"source":"g","path":"/","x":1}"#, "unknown field \"x\""),
        ] {
            let e = Hit::parse(body, 0).unwrap_err();
            assert!(e.contains(message), "{e}");
        }
        let long = format!(r#"{{"source":"{}","path":"/"}}"#, "g".repeat(65));
        assert!(
            Hit::parse(long.as_bytes(), 0)
                .unwrap_err()
                .contains("1 to 64")
        );
    }
}
