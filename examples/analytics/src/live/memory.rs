//! The in-process log: the default when `REDIS_URL` is unset. The same
//! semantics as the Redis log (hits numbered from 1, trimmed from the oldest
//! by count or age), for one instance. Its epoch is new with every process, since a restart
//! loses its history.

use super::{
    AppendError, Entry, EventId, History, Hit, Log, LogError, Position, Read, new_epoch, now_ms,
};
use futures_util::future::BoxFuture;
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::watch;

/// The longest [`Log::tail`] waits for an entry.
const TAIL_WAIT: Duration = Duration::from_secs(5);

/// See the module docs.
pub struct MemoryLog {
    epoch: Arc<str>,
    history: History,
    state: Mutex<State>,
    /// The last position, for [`Log::tail`] to wait on.
    last: watch::Sender<Position>,
}

impl State {
    /// The first position kept (the next one when none is).
    fn first(&self) -> Position {
        self.entries
            .front()
            .map_or(self.last.next(), |e| e.position)
    }
}

struct State {
    entries: VecDeque<Entry>,
    last: Position,
}

impl MemoryLog {
    pub fn new(history: History) -> Self {
        Self {
            epoch: new_epoch().into(),
            history,
            state: Mutex::new(State {
                entries: VecDeque::new(),
                last: Position::ZERO,
            }),
            last: watch::Sender::new(Position::ZERO),
        }
    }

    fn read(&self, after: Position, limit: usize) -> Read {
        let state = self.state.lock().unwrap();
        let start = state.entries.partition_point(|e| e.position <= after);
        Read {
            epoch: self.epoch.clone(),
            entries: state.entries.range(start..).take(limit).cloned().collect(),
            trimmed: after.next() < state.first(),
            last: state.last,
        }
    }
}

impl Log for MemoryLog {
    fn append<'a>(&'a self, hit: &'a Hit) -> BoxFuture<'a, Result<EventId, AppendError>> {
        let mut state = self.state.lock().unwrap();
        let position = state.last.next();
        state.entries.push_back(Entry {
            position,
            hit: Arc::new(hit.clone()),
        });
        state.last = position;
        match self.history {
            History::Count(n) => {
                let excess = state.entries.len().saturating_sub(n as usize);
                state.entries.drain(..excess);
            }
            History::Age(age) => {
                let oldest =
                    now_ms().saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
                while state.entries.front().is_some_and(|e| e.hit.ts < oldest) {
                    state.entries.pop_front();
                }
            }
        }
        drop(state);
        self.last.send_replace(position);
        let id = EventId {
            epoch: self.epoch.clone(),
            position,
        };
        Box::pin(async move { Ok(id) })
    }

    fn read_after(&self, after: Position, limit: usize) -> BoxFuture<'_, Result<Read, LogError>> {
        let read = self.read(after, limit);
        Box::pin(async move { Ok(read) })
    }

    fn tail<'a>(
        &'a self,
        _epoch: &'a str,
        after: Position,
        limit: usize,
    ) -> BoxFuture<'a, Result<Read, LogError>> {
        Box::pin(async move {
            let mut last = self.last.subscribe();
            let _ = tokio::time::timeout(TAIL_WAIT, last.wait_for(|p| *p > after)).await;
            Ok(self.read(after, limit))
        })
    }

    fn head(&self) -> BoxFuture<'_, Result<Read, LogError>> {
        let state = self.state.lock().unwrap();
        let read = Read {
            epoch: self.epoch.clone(),
            entries: Vec::new(),
            trimmed: false,
            last: state.last,
        };
        Box::pin(async move { Ok(read) })
    }

    fn kind(&self) -> &'static str {
        "in-process"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(n: u64) -> Hit {
        Hit {
            source: "google".into(),
            path: format!("/{n}"),
            ts: n,
        }
    }

    #[tokio::test]
    async fn reads_after_a_position_and_reports_trimming() {
        let log = MemoryLog::new(History::Count(3));
        let mut ids = Vec::new();
        for n in 0..5 {
            ids.push(log.append(&hit(n)).await.unwrap());
        }
        assert!(ids.windows(2).all(|w| w[0].position < w[1].position));
        // Kept: the last 3. After the second (trimmed at 0 and 1): covered.
        let read = log.read_after(ids[1].position, 10).await.unwrap();
        assert!(!read.trimmed);
        assert_eq!(read.entries.len(), 3);
        assert_eq!(read.last, ids[4].position);
        // After the first: the second is gone.
        let read = log.read_after(ids[0].position, 10).await.unwrap();
        assert!(read.trimmed);
        // Bounded batches.
        let read = log.read_after(Position::ZERO, 2).await.unwrap();
        assert_eq!(read.entries[0].hit.path, "/2");
        assert_eq!(read.entries.len(), 2);
    }

    #[tokio::test]
    async fn the_tail_wakes_on_append() {
        let log = Arc::new(MemoryLog::new(History::DEFAULT));
        let head = log.head().await.unwrap();
        let tail = tokio::spawn({
            let log = log.clone();
            async move { log.tail("", head.last, 10).await.unwrap() }
        });
        tokio::task::yield_now().await;
        let id = log.append(&hit(1)).await.unwrap();
        let read = tail.await.unwrap();
        assert_eq!(read.entries[0].position, id.position);
    }
}
