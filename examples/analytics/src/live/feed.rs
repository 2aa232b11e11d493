//! One reader of the log per instance, broadcast to its subscribers; a
//! subscription that resumes after an id.
//!
//! The seam between history and live is the classic bug: read the history,
//! then subscribe, and what was appended in between is lost; subscribe, then
//! read, and it comes twice. Here a subscription subscribes to the broadcast
//! first, reads the history from the log, then takes the broadcast and skips
//! every position the history already gave. It falls back to the log
//! whenever the broadcast cannot vouch for what it missed: it lagged
//! (`RecvError::Lagged`), or the reader itself fell behind the trimming.

use super::{Entry, EventId, Log, LogError, Position, Read, hit_json};
use futures_util::{Stream, stream};
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::broadcast::{self, error::RecvError};

/// Entries read from the log at a time, by the reader and by a subscription
/// catching up: what a subscription holds at most.
pub const BATCH: usize = 1_000;

/// How long a subscription or the reader waits before asking an unreachable
/// log again (doubling up to [`MAX_RETRY`]).
const MIN_RETRY: Duration = Duration::from_millis(50);
const MAX_RETRY: Duration = Duration::from_secs(1);

/// A stored hit as it goes to every subscriber: its id and its `data:`,
/// encoded once.
#[derive(Debug)]
pub struct LiveHit {
    pub id: EventId,
    /// `id` as text, the event's `id:`.
    pub id_text: String,
    /// The event's `data:`: see [`hit_json`].
    pub data: String,
}

impl LiveHit {
    fn new(epoch: &Arc<str>, entry: &Entry) -> Self {
        let id = EventId {
            epoch: epoch.clone(),
            position: entry.position,
        };
        Self {
            id_text: id.to_string(),
            data: hit_json(&id, &entry.hit),
            id,
        }
    }
}

/// Why a subscription could not resume where it asked to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The history after its id was trimmed (`LIVE_HISTORY`).
    Trimmed,
    /// The log was lost (a Redis restarted empty, another process's
    /// in-process log): its id is from another epoch.
    Epoch,
    /// Its id cannot be parsed, or is past the end of the log.
    Invalid,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Trimmed => "trimmed",
            Reason::Epoch => "epoch",
            Reason::Invalid => "invalid",
        }
    }
}

/// What a subscription yields.
#[derive(Debug)]
pub enum Item {
    /// Where a fresh subscription starts: an `id:` alone, no event, so that
    /// a client that reconnects before any hit resumes from here.
    Position(EventId),
    /// A hit, in log order.
    Hit(Arc<LiveHit>),
    /// A gap that could not be avoided, said once; the live feed goes on
    /// after `id`.
    Reset {
        reason: Reason,
        id: EventId,
        /// `{"reason":..., "after":..., "resume":..., "message":...}`.
        data: String,
    },
}

/// Where a subscription starts.
#[derive(Clone, Debug)]
pub enum Resume {
    /// From now.
    Now,
    /// After this id (`Last-Event-ID`).
    After(EventId),
    /// After an id that cannot be parsed: a reset, then from now.
    Invalid(String),
}

/// What the reader sends.
#[derive(Clone, Debug)]
enum Broadcast {
    Hit(Arc<LiveHit>),
    /// The log has a new epoch; its hits follow from its first.
    Epoch(Arc<str>),
    /// The reader fell behind the trimming: what it sends next does not
    /// follow what it sent before.
    Gap,
}

/// The live feed of one instance: the log, its one reader, the broadcast.
/// Cloning shares them.
#[derive(Clone)]
pub struct Feed {
    inner: Arc<Inner>,
}

struct Inner {
    log: Arc<dyn Log>,
    tx: broadcast::Sender<Broadcast>,
    /// Where the reader is; locked while it sends, so that a subscription
    /// made under the lock sees every hit after `at`.
    reader: Mutex<Reader>,
}

#[derive(Default)]
struct Reader {
    /// The epoch read and the last position broadcast.
    at: Option<(Arc<str>, Position)>,
    /// Where the reader started in that epoch: it broadcasts every hit after.
    started: Option<(Arc<str>, Position)>,
}

impl Feed {
    /// Starts the reader of `log` (on the current runtime). `capacity` is
    /// the broadcast's: how far a subscriber may fall behind before it
    /// reads from the log instead.
    pub fn new(log: Arc<dyn Log>, capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        let inner = Arc::new(Inner {
            log,
            tx,
            reader: Mutex::new(Reader::default()),
        });
        tokio::spawn(read_log(inner.clone()));
        Self { inner }
    }

    /// The log.
    pub fn log(&self) -> &dyn Log {
        &*self.inner.log
    }

    /// Subscribers now.
    pub fn subscribers(&self) -> usize {
        self.inner.tx.receiver_count()
    }

    /// The events from `resume` on, endless. Holds at most one batch of
    /// the log; waits (and retries) while the log is unreachable.
    pub fn subscribe(&self, resume: Resume) -> impl Stream<Item = Item> + Send + 'static {
        // Subscribe first, and read where the reader is under its lock.
        let (rx, at) = {
            let reader = self.inner.reader.lock().unwrap();
            (self.inner.tx.subscribe(), reader.at.clone())
        };
        let sub = Subscription {
            inner: self.inner.clone(),
            rx,
            at,
            start: Some(resume),
            catching_up: false,
            pending: VecDeque::new(),
        };
        stream::unfold(sub, |mut sub| async move {
            let item = sub.next().await;
            Some((item, sub))
        })
    }
}

/// The one reader of the log: from its head at start, every entry in order,
/// sent to the broadcast.
async fn read_log(inner: Arc<Inner>) {
    let mut retry = MIN_RETRY;
    let mut failing = false;
    let mut at: Option<(Arc<str>, Position)> = None;
    loop {
        let result = match &at {
            None => inner.log.head().await.map(|head| {
                tracing::info!(log = inner.log.kind(), epoch = %head.epoch, last = %head.last, "live feed reading");
                let mut reader = inner.reader.lock().unwrap();
                let here = (head.epoch, head.last);
                reader.at = Some(here.clone());
                reader.started = Some(here.clone());
                at = Some(here);
            }),
            Some((epoch, last)) => {
                let (epoch, last) = (epoch.clone(), *last);
                inner
                    .log
                    .tail(&epoch, last, BATCH)
                    .await
                    .map(|read| at = Some(inner.publish(epoch, last, read)))
            }
        };
        match result {
            Ok(()) => {
                if failing {
                    tracing::info!("live feed: the log is reachable again");
                }
                failing = false;
                retry = MIN_RETRY;
            }
            Err(LogError(e)) => {
                if !failing {
                    tracing::warn!("live feed: cannot read the log: {e}");
                }
                failing = true;
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}

impl Inner {
    /// Sends what the reader read after `last` in `epoch`; returns where it
    /// is now.
    fn publish(&self, epoch: Arc<str>, last: Position, read: Read) -> (Arc<str>, Position) {
        let mut reader = self.reader.lock().unwrap();
        if read.epoch != epoch {
            // The log was lost: its new epoch, from its first entry.
            tracing::warn!(old = %epoch, new = %read.epoch, "live feed: the log has a new epoch");
            let here = (read.epoch.clone(), Position::ZERO);
            reader.at = Some(here.clone());
            reader.started = Some(here.clone());
            let _ = self.tx.send(Broadcast::Epoch(read.epoch));
            return here;
        }
        let mut last = last;
        if read.trimmed {
            tracing::warn!(after = %last, "live feed: the reader fell behind the history");
            let _ = self.tx.send(Broadcast::Gap);
            // Nothing left after it at all: on from the end.
            if read.entries.is_empty() {
                last = read.last;
            }
        }
        for entry in &read.entries {
            last = entry.position;
            let _ = self
                .tx
                .send(Broadcast::Hit(Arc::new(LiveHit::new(&epoch, entry))));
        }
        reader.at = Some((epoch.clone(), last));
        (epoch, last)
    }
}

struct Subscription {
    inner: Arc<Inner>,
    rx: broadcast::Receiver<Broadcast>,
    /// The epoch and the last position given (or skipped past).
    at: Option<(Arc<str>, Position)>,
    start: Option<Resume>,
    /// Reading from the log until it has caught up with the broadcast.
    catching_up: bool,
    /// Entries read from the log, not yet given: at most one batch.
    pending: VecDeque<Entry>,
}

impl Subscription {
    async fn next(&mut self) -> Item {
        loop {
            if let Some(resume) = self.start.take() {
                if let Some(item) = self.begin(resume).await {
                    return item;
                }
                continue;
            }
            if let Some(entry) = self.pending.pop_front() {
                let (epoch, position) = self.at.as_mut().expect("set before reading");
                *position = entry.position;
                return Item::Hit(Arc::new(LiveHit::new(epoch, &entry)));
            }
            if self.catching_up {
                if let Some(item) = self.catch_up().await {
                    return item;
                }
                continue;
            }
            let (epoch, position) = self.at.as_mut().expect("set before going live");
            match self.rx.recv().await {
                Ok(Broadcast::Hit(hit)) => {
                    // Skip what the history gave, and the rest of an epoch
                    // this subscription has left.
                    if hit.id.epoch == *epoch && hit.id.position > *position {
                        *position = hit.id.position;
                        return Item::Hit(hit);
                    }
                }
                Ok(Broadcast::Epoch(new)) => {
                    if new != *epoch {
                        let after = EventId {
                            epoch: epoch.clone(),
                            position: *position,
                        }
                        .to_string();
                        return self.reset(Reason::Epoch, &after, new, Position::ZERO);
                    }
                }
                Ok(Broadcast::Gap) => self.catching_up = true,
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "live subscriber lagged; reading from the log");
                    metrics_lagged();
                    self.catching_up = true;
                }
                Err(RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }

    /// The first step: where to start, and the first item (if any).
    async fn begin(&mut self, resume: Resume) -> Option<Item> {
        match resume {
            Resume::After(id) => {
                self.at = Some((id.epoch, id.position));
                self.catching_up = true;
                None
            }
            Resume::Now | Resume::Invalid(_) => {
                let at = match self.at.clone() {
                    Some(at) => at,
                    None => {
                        // The reader has not started: from the log's head,
                        // then through the log until the reader has.
                        let head = self.retry(|log| log.head()).await;
                        self.catching_up = true;
                        (head.epoch, head.last)
                    }
                };
                self.at = Some(at.clone());
                let (epoch, position) = at;
                Some(match resume {
                    Resume::Invalid(raw) => self.reset(Reason::Invalid, &raw, epoch, position),
                    _ => Item::Position(EventId { epoch, position }),
                })
            }
        }
    }

    /// One read of the log after the current position.
    async fn catch_up(&mut self) -> Option<Item> {
        let (epoch, position) = self.at.clone().expect("set before reading");
        let read = self.retry(|log| log.read_after(position, BATCH)).await;
        let after = || EventId {
            epoch: epoch.clone(),
            position,
        };
        if read.epoch != epoch {
            // From the new epoch's first entry, through the log; or, if its
            // start is trimmed too, live from now: one reset says both.
            let first = self
                .retry(|log| log.read_after(Position::ZERO, BATCH))
                .await;
            if first.epoch != read.epoch {
                return None; // a newer epoch still: start over
            }
            let after = after().to_string();
            if first.trimmed {
                return Some(self.reset(Reason::Epoch, &after, first.epoch, first.last));
            }
            let reset = self.reset(Reason::Epoch, &after, first.epoch, Position::ZERO);
            self.pending.extend(first.entries);
            return Some(reset);
        }
        if read.trimmed || position > read.last {
            let reason = if read.trimmed {
                Reason::Trimmed
            } else {
                Reason::Invalid
            };
            // Still through the log: the broadcast has what follows only
            // once the reader has started (see below).
            let after = after().to_string();
            return Some(self.reset(reason, &after, epoch, read.last));
        }
        let end = read.entries.last().map_or(position, |e| e.position);
        self.pending.extend(read.entries);
        if self.pending.len() < BATCH {
            // The end of the log: the broadcast has the rest if the reader
            // started there or before in this epoch. If not (it has not
            // started, or not yet seen this epoch), keep reading the log.
            let started = self.inner.reader.lock().unwrap().started.clone();
            match started {
                Some((e, p)) if e == epoch && p <= end => self.catching_up = false,
                _ => {
                    if self.pending.is_empty() {
                        tokio::time::sleep(MIN_RETRY).await;
                    }
                }
            }
        }
        None
    }

    /// Calls the log until it answers, waiting longer each time.
    async fn retry<'a, F>(&'a self, call: F) -> Read
    where
        F: Fn(&'a dyn Log) -> futures_util::future::BoxFuture<'a, Result<Read, LogError>>,
    {
        let mut wait = MIN_RETRY;
        loop {
            match call(&*self.inner.log).await {
                Ok(read) => return read,
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_RETRY);
                }
            }
        }
    }

    /// Says a gap once and goes on after `position` of `epoch`: for a lost
    /// log, from its first entry ([`Position::ZERO`]) or, if that is trimmed
    /// too, from now.
    fn reset(&mut self, reason: Reason, after: &str, epoch: Arc<str>, position: Position) -> Item {
        let id = EventId {
            epoch: epoch.clone(),
            position,
        };
        let message = match reason {
            Reason::Trimmed => "the history after this id was trimmed; live from now",
            Reason::Epoch if position == Position::ZERO => {
                "the log was lost and started again; live from its start"
            }
            Reason::Epoch => {
                "the log was lost and started again, and its start was trimmed; live from now"
            }
            Reason::Invalid => "this id is not one of this log; live from now",
        };
        let data = serde_json::json!({
            "reason": reason.as_str(),
            "after": after,
            "resume": id.to_string(),
            "epoch": &*epoch,
            "message": message,
        })
        .to_string();
        tracing::info!(reason = reason.as_str(), after, resume = %id, "live reset");
        metrics_reset(reason);
        self.at = Some((epoch, position));
        self.pending.clear();
        Item::Reset { reason, id, data }
    }
}

fn metrics_lagged() {
    metrics::counter!("live_subscriber_lagged_total").increment(1);
}

fn metrics_reset(reason: Reason) {
    metrics::counter!("live_resets_total", "reason" => reason.as_str()).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::{AppendError, History, Hit, memory::MemoryLog};
    use futures_util::{StreamExt, future::BoxFuture};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The in-process log, whose `head` fails until `open`: the reader of an
    /// instance that started while its log was unreachable, and has not read
    /// the head yet, while a subscription's reads get through.
    struct Gated {
        log: MemoryLog,
        open: AtomicBool,
    }

    impl Log for Gated {
        fn append<'a>(&'a self, hit: &'a Hit) -> BoxFuture<'a, Result<EventId, AppendError>> {
            self.log.append(hit)
        }
        fn read_after(
            &self,
            after: Position,
            limit: usize,
        ) -> BoxFuture<'_, Result<Read, LogError>> {
            self.log.read_after(after, limit)
        }
        fn tail<'a>(
            &'a self,
            epoch: &'a str,
            after: Position,
            limit: usize,
        ) -> BoxFuture<'a, Result<Read, LogError>> {
            self.log.tail(epoch, after, limit)
        }
        fn head(&self) -> BoxFuture<'_, Result<Read, LogError>> {
            if self.open.load(Ordering::SeqCst) {
                self.log.head()
            } else {
                Box::pin(async { Err(LogError("not yet".into())) })
            }
        }
        fn kind(&self) -> &'static str {
            "gated"
        }
    }

    async fn append(log: &dyn Log, n: usize) -> Vec<EventId> {
        let mut ids = Vec::new();
        for i in 0..n {
            let hit = Hit {
                source: "google".into(),
                path: format!("/{i}"),
                ts: 0,
            };
            ids.push(log.append(&hit).await.unwrap());
        }
        ids
    }

    /// A resume after trimmed history, on an instance whose reader has not
    /// started: one reset, then every hit after it, those appended before
    /// the reader started included (they went missing: the subscription went
    /// live on the broadcast, which carries only what follows the reader's
    /// start).
    #[tokio::test]
    async fn a_reset_before_the_reader_starts_loses_nothing_after_it() {
        let gated = Arc::new(Gated {
            log: MemoryLog::new(History::Count(10)),
            open: AtomicBool::new(false),
        });
        let first = append(&*gated, 20).await;
        let feed = Feed::new(gated.clone(), 1024);
        let mut sub = Box::pin(feed.subscribe(Resume::After(first[0].clone())));
        match sub.next().await.unwrap() {
            Item::Reset { reason, id, .. } => {
                assert_eq!((reason, &id), (Reason::Trimmed, &first[19]));
            }
            other => panic!("{other:?}"),
        }
        let mut expected = append(&*gated, 5).await;
        gated.open.store(true, Ordering::SeqCst);
        expected.extend(append(&*gated, 1).await);
        for want in &expected {
            let got = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .expect("every hit after the reset comes")
                .unwrap();
            match got {
                Item::Hit(hit) => assert_eq!(&hit.id, want),
                other => panic!("{other:?}"),
            }
        }
    }
}
