//! The log on Redis Streams, shared by every instance (`REDIS_URL`).
//!
//! - A hit is `XADD live:hits MAXLEN ~ <count> 0-* source .. path .. ts ..`:
//!   the id `0-*` numbers the entries 0-1, 0-2, ... (Redis 7.0), and the
//!   number is the position.
//! - The history after a position is `XRANGE live:hits (0-<n> + COUNT k`.
//! - The one reader per instance waits with `XREAD BLOCK` on a connection
//!   of its own (a blocking command would hold up everything else queued on
//!   a shared one), then reads as above; at start and after an error it
//!   reads first, since a Redis restarted empty numbers from 1 again, below
//!   the reader's position, where `XREAD` would not wake for it. A flush
//!   without a restart is seen when the `XREAD` times out (2 s).
//! - The epoch is the key `live:epoch`, set once with `SET live:epoch
//!   <random> NX` (Centrifugo's approach): a Redis restarted empty, or
//!   flushed, has none, so the next command sets a new one and every id of
//!   the old epoch is recognised as such.
//! - Whether a position is still covered is exact: trimming removes the
//!   oldest entries only, and positions are consecutive, so the entries after
//!   `n` are all there when `XINFO STREAM`'s `first-entry` is at most `n + 1`
//!   (or, with none left, when `n` is `last-generated-id`). Redis 7.0's
//!   `max-deleted-entry-id` would say it, but it counts `XDEL`s only, not
//!   trimming.
//! - An age (`LIVE_HISTORY=10m`) cannot be a `MINID` of such ids: the reader
//!   trims by the hits' own time instead, at most once a second
//!   (`XRANGE - + COUNT 100`, then `XTRIM live:hits MINID <the first id to
//!   keep>`).
//!
//! Every command that reads or writes the stream runs in one `MULTI` with
//! `SET live:epoch <random> NX` and `GET live:epoch`, so that the epoch
//! returned is the one of the entries read or written.
//!
//! One [`ConnectionManager`] for the commands (it reconnects by itself when
//! Redis comes back), one for the blocking reads.

use super::{
    AppendError, Entry, EventId, History, Hit, Log, LogError, Position, Read, new_epoch, now_ms,
};
use futures_util::future::BoxFuture;
use redis::{
    Client, RedisResult, Value,
    aio::{ConnectionManager, ConnectionManagerConfig},
    streams::StreamRangeReply,
};
use std::{sync::Arc, time::Duration};

const STREAM: &str = "live:hits";
const EPOCH: &str = "live:epoch";

/// How long one `XREAD BLOCK` waits for a new entry.
const BLOCK: Duration = Duration::from_secs(2);

/// How often the reader trims an age-bound history.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// See the module docs.
pub struct RedisLog {
    history: History,
    commands: ConnectionManager,
    blocking: ConnectionManager,
    /// When the reader last trimmed an age-bound history.
    trimmed_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// The reader reads before it blocks: at start and after an error (a
    /// Redis restarted empty numbers from 1 again, below the reader's
    /// position, where `XREAD` would not see it).
    recheck: std::sync::atomic::AtomicBool,
}

impl RedisLog {
    /// Opens the log at `url` (`redis://127.0.0.1:6379/`). Does not
    /// connect: the first command does, and a Redis down at start only
    /// makes the log unreachable until it is up.
    pub fn open(url: &str, history: History) -> Result<Self, String> {
        let client = Client::open(url).map_err(|e| format!("invalid REDIS_URL={url:?}: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let manager = |config: ConnectionManagerConfig| {
            ConnectionManager::new_lazy_with_config(client.clone(), config)
                .map_err(|e| format!("invalid REDIS_URL={url:?}: {e}"))
        };
        Ok(Self {
            history,
            commands: manager(config.clone())?,
            blocking: manager(config.set_response_timeout(Some(BLOCK + Duration::from_secs(2))))?,
            trimmed_at: std::sync::Mutex::new(None),
            recheck: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// `MULTI`, `SET live:epoch <random> NX`, `GET live:epoch`, then `XINFO
    /// STREAM` and (with `range`) `XRANGE (after + COUNT limit`, `EXEC`.
    async fn read(&self, after: Position, limit: Option<usize>) -> Result<Read, LogError> {
        let mut pipe = redis::pipe();
        pipe.atomic().ignore_errors();
        epoch(&mut pipe);
        pipe.cmd("XINFO").arg("STREAM").arg(STREAM);
        if let Some(limit) = limit {
            pipe.cmd("XRANGE")
                .arg(STREAM)
                .arg(format!("(0-{after}"))
                .arg("+")
                .arg("COUNT")
                .arg(limit);
        }
        let mut con = self.commands.clone();
        let mut replies: Vec<RedisResult<Value>> =
            pipe.query_async(&mut con).await.map_err(unreachable)?;
        if replies.len() != 2 + usize::from(limit.is_some()) {
            return Err(LogError(format!(
                "redis: {} replies to MULTI",
                replies.len()
            )));
        }
        let range = limit.map(|_| replies.pop().unwrap());
        let info = replies.pop().unwrap();
        let epoch = epoch_reply(replies.pop().unwrap())?;
        // No stream (a new epoch, nothing stored yet): nothing trimmed.
        let (first, last) = match info {
            Ok(info) => stream_info(&info)?,
            Err(e) if e.to_string().contains("no such key") => (None, Position::ZERO),
            Err(e) => return Err(unreachable(e)),
        };
        let entries = match range {
            None => Vec::new(),
            Some(range) => {
                let range: StreamRangeReply =
                    redis::from_redis_value(range.map_err(unreachable)?).map_err(unreachable)?;
                range.ids.iter().map(entry).collect::<Result<_, _>>()?
            }
        };
        Ok(Read {
            epoch,
            entries,
            trimmed: after.next() < first.unwrap_or(last.next()),
            last,
        })
    }
}

impl RedisLog {
    /// [`Log::tail`]: waits with `XREAD BLOCK` for an entry after `after`,
    /// then reads. First reads at once when asked to recheck (see
    /// `recheck`).
    async fn wait(&self, epoch: &str, after: Position, limit: usize) -> Result<Read, LogError> {
        if let History::Age(age) = self.history {
            self.trim_by_age(age).await?;
        }
        if self
            .recheck
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            let read = self.read(after, Some(limit)).await?;
            if !read.entries.is_empty() || *read.epoch != *epoch || read.trimmed {
                return Ok(read);
            }
        }
        // A wake-up only: what is read is read again below, in one MULTI
        // with the epoch, so that the epoch said is the entries' own.
        let mut con = self.blocking.clone();
        let _: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(STREAM)
            .arg(format!("0-{after}"))
            .query_async(&mut con)
            .await
            .map_err(unreachable)?;
        self.read(after, Some(limit)).await
    }

    /// Removes the hits older than `age`, at most once a [`TRIM_EVERY`].
    async fn trim_by_age(&self, age: Duration) -> Result<(), LogError> {
        {
            let mut at = self.trimmed_at.lock().unwrap();
            if at.is_some_and(|at| at.elapsed() < TRIM_EVERY) {
                return Ok(());
            }
            *at = Some(std::time::Instant::now());
        }
        let oldest = now_ms().saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
        let mut con = self.commands.clone();
        loop {
            let range: StreamRangeReply = redis::cmd("XRANGE")
                .arg(STREAM)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(100)
                .query_async(&mut con)
                .await
                .map_err(unreachable)?;
            let entries = range.ids.iter().map(entry).collect::<Result<Vec<_>, _>>()?;
            let keep = entries.iter().find(|e| e.hit.ts >= oldest);
            let Some(min) = keep.or(entries.last()).map(|e| match keep {
                Some(_) => e.position,
                None => e.position.next(),
            }) else {
                return Ok(());
            };
            if min == entries[0].position {
                return Ok(());
            }
            let _: Value = redis::cmd("XTRIM")
                .arg(STREAM)
                .arg("MINID")
                .arg(format!("0-{min}"))
                .query_async(&mut con)
                .await
                .map_err(unreachable)?;
            if keep.is_some() {
                return Ok(());
            }
        }
    }
}

impl Log for RedisLog {
    fn append<'a>(&'a self, hit: &'a Hit) -> BoxFuture<'a, Result<EventId, AppendError>> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.atomic();
            epoch(&mut pipe);
            let xadd = pipe.cmd("XADD").arg(STREAM);
            if let History::Count(n) = self.history {
                xadd.arg("MAXLEN").arg("~").arg(n);
            }
            xadd.arg("0-*")
                .arg("source")
                .arg(&hit.source)
                .arg("path")
                .arg(&hit.path)
                .arg("ts")
                .arg(hit.ts);
            let mut con = self.commands.clone();
            let (epoch, id): (String, String) = pipe.query_async(&mut con).await.map_err(|e| {
                // Sent, perhaps executed, and no answer: say so.
                if e.is_timeout() || e.is_connection_dropped() {
                    AppendError::Unconfirmed(unreachable(e))
                } else {
                    AppendError::Unreachable(unreachable(e))
                }
            })?;
            Ok(EventId {
                epoch: epoch.into(),
                // Stored, under an id that makes no sense.
                position: position(&id).map_err(AppendError::Unconfirmed)?,
            })
        })
    }

    fn read_after(&self, after: Position, limit: usize) -> BoxFuture<'_, Result<Read, LogError>> {
        Box::pin(self.read(after, Some(limit)))
    }

    fn tail<'a>(
        &'a self,
        epoch: &'a str,
        after: Position,
        limit: usize,
    ) -> BoxFuture<'a, Result<Read, LogError>> {
        Box::pin(async move {
            let read = self.wait(epoch, after, limit).await;
            if read.is_err() {
                self.recheck
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            read
        })
    }

    fn head(&self) -> BoxFuture<'_, Result<Read, LogError>> {
        Box::pin(self.read(Position::ZERO, None))
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

/// `SET live:epoch <random> NX` (ignored) and `GET live:epoch`.
fn epoch(pipe: &mut redis::Pipeline) {
    pipe.cmd("SET")
        .arg(EPOCH)
        .arg(new_epoch())
        .arg("NX")
        .ignore()
        .cmd("GET")
        .arg(EPOCH);
}

fn epoch_reply(reply: RedisResult<Value>) -> Result<Arc<str>, LogError> {
    let epoch: String =
        redis::from_redis_value(reply.map_err(unreachable)?).map_err(unreachable)?;
    Ok(epoch.into())
}

/// The id of `first-entry` (none in an empty stream) and
/// `last-generated-id` of `XINFO STREAM`.
fn stream_info(info: &Value) -> Result<(Option<Position>, Position), LogError> {
    let pairs: Vec<(&Value, &Value)> = match info {
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|kv| Some((kv.first()?, kv.get(1)?)))
            .collect(),
        Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
        other => return Err(LogError(format!("redis: XINFO STREAM answered {other:?}"))),
    };
    let field = |name: &str| -> Result<&Value, LogError> {
        pairs
            .iter()
            .find(|(k, _)| redis::from_redis_value_ref::<String>(k).is_ok_and(|k| k == name))
            .map(|(_, v)| *v)
            .ok_or_else(|| LogError(format!("redis: XINFO STREAM has no {name}")))
    };
    let last: String =
        redis::from_redis_value_ref(field("last-generated-id")?).map_err(unreachable)?;
    let first = match field("first-entry")? {
        Value::Nil => None,
        Value::Array(entry) => {
            let id: String = redis::from_redis_value_ref(entry.first().unwrap_or(&Value::Nil))
                .map_err(unreachable)?;
            Some(position(&id)?)
        }
        other => {
            return Err(LogError(format!(
                "redis: XINFO STREAM first-entry {other:?}"
            )));
        }
    };
    Ok((first, position(&last)?))
}

/// The position of stream id `0-<n>`.
fn position(id: &str) -> Result<Position, LogError> {
    id.strip_prefix("0-")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| LogError(format!("redis: unexpected stream id {id:?}")))
}

fn entry(id: &redis::streams::StreamId) -> Result<Entry, LogError> {
    let hit = Hit {
        source: id.get("source").unwrap_or_default(),
        path: id.get("path").unwrap_or_default(),
        ts: id.get("ts").unwrap_or_default(),
    };
    Ok(Entry {
        position: position(&id.id)?,
        hit: Arc::new(hit),
    })
}

fn unreachable(e: impl std::fmt::Display) -> LogError {
    LogError(format!("redis: {e}"))
}
