//! Every interleaving of the state behind a handle, checked with loom.
//!
//! Run with:
//! `RUSTFLAGS="--cfg loom" cargo test --release --test loom`
//!
//! The models use the crate's real `State` (its atomics come from loom under
//! `cfg(loom)`); the drain task's wait for the last release is modelled with
//! `loom::sync::Notify`, which keeps a permit as `tokio::sync::Notify::notify_one`
//! does.
#![cfg(loom)]

use loom::{
    sync::{
        Arc, Notify,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    thread,
};
use tower_graceful_sse::state::{DRAINING, FORCED, NoticeLog, Notices, State};

/// One request: admitted (reaching the "inner service", then released, which
/// wakes the drain if it was the last) or rejected. Returns whether it was
/// admitted.
fn request(state: &State, closed: &Notify, served: &AtomicUsize) -> bool {
    if !state.admit() {
        return false;
    }
    served.fetch_add(1, SeqCst);
    if state.release() {
        closed.notify();
    }
    true
}

/// Every interleaving with at most 3 preemptions (loom's advice for models
/// of three threads; it finds the bug found so far, in 0.3 s), or with the
/// bound in `LOOM_MAX_PREEMPTIONS`: `LOOM_MAX_PREEMPTIONS=100` makes it
/// exhaustive (about 5 minutes).
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
}

/// The drain task: waits until the count reaches zero.
fn wait_for_zero(state: &State, closed: &Notify, requests: usize) {
    loop {
        let open = state.count();
        assert!(open <= requests, "count {open} above the requests sent");
        if open == 0 {
            return;
        }
        closed.wait();
    }
}

/// The seed's race: requests arriving while `drain()` starts. Each one is
/// either rejected, or counted before the drain started, waited for, and
/// released; the drain never misses the last release, and the count ends at 0.
#[test]
fn every_request_is_rejected_or_counted_and_waited_for() {
    model(|| {
        let state = Arc::new(State::new());
        let closed = Arc::new(Notify::new());
        let served = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (state, closed, served) = (state.clone(), closed.clone(), served.clone());
                thread::spawn(move || request(&state, &closed, &served))
            })
            .collect();

        let in_flight = state.start_drain().expect("the first drain starts it");
        assert!(in_flight <= 2);
        wait_for_zero(&state, &closed, 2);
        // The drain has ended: no request is served from now on.
        let served_at_end = served.load(SeqCst);
        let admitted = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|&a| a)
            .count();
        assert_eq!(
            admitted, served_at_end,
            "a request was served after the drain"
        );
        assert!(in_flight <= admitted);
        assert_eq!(state.count(), 0);
        assert_eq!(state.phase(), DRAINING);
    });
}

/// `drain()` from many tasks starts the drain exactly once.
#[test]
fn drain_starts_exactly_once() {
    model(|| {
        let state = Arc::new(State::new());
        let starts: Vec<_> = (0..3)
            .map(|_| {
                let state = state.clone();
                thread::spawn(move || state.start_drain().is_some())
            })
            .collect();
        let started = starts
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|&s| s)
            .count();
        assert_eq!(started, 1);
        assert_eq!(state.phase(), DRAINING);
    });
}

/// Regression: a request that loses the race to the drain must never be seen
/// as in flight. The first design counted it, then undid the count; a force
/// close in between reported it as force-closed (more than were in flight)
/// and added it to `sse_force_closed_connections_total`.
#[test]
fn force_close_counts_only_requests_admitted_before_the_drain() {
    model(|| {
        let state = Arc::new(State::new());
        let closed = Arc::new(Notify::new());
        let served = Arc::new(AtomicUsize::new(0));
        let client = {
            let (state, closed, served) = (state.clone(), closed.clone(), served.clone());
            thread::spawn(move || request(&state, &closed, &served))
        };

        let in_flight = state.start_drain().unwrap();
        // A grace period of zero: force at once.
        let forced = state.force_close();
        assert!(
            forced <= in_flight,
            "force-closed {forced} of {in_flight} in flight"
        );
        assert_eq!(state.phase(), DRAINING | FORCED);
        client.join().unwrap();
        assert_eq!(state.count(), 0);
    });
}

/// Releases racing the start of the drain and the force close: exactly one
/// release reports "last" when the drain has started and requests were in
/// flight, and the count never goes below zero.
#[test]
fn exactly_one_release_wakes_the_drain() {
    model(|| {
        let state = Arc::new(State::new());
        assert!(state.admit() && state.admit());
        let wakes = Arc::new(AtomicUsize::new(0));
        let releases: Vec<_> = (0..2)
            .map(|_| {
                let (state, wakes) = (state.clone(), wakes.clone());
                thread::spawn(move || {
                    if state.release() {
                        wakes.fetch_add(1, SeqCst);
                    }
                })
            })
            .collect();
        let in_flight = state.start_drain().unwrap();
        let forced = state.force_close();
        assert!(forced <= in_flight);
        for t in releases {
            t.join().unwrap();
        }
        assert_eq!(state.count(), 0);
        // The drain found requests in flight iff one release must wake it.
        assert_eq!(wakes.load(SeqCst), usize::from(in_flight > 0));
    });
}

/// Notices recorded from two streams while the drain reads the log for its
/// report: a report never counts a notice without its time, the times are
/// the earliest and latest recorded, and each priority counts its own.
#[test]
fn notice_log_never_counts_a_notice_without_its_time() {
    model(|| {
        let log = Arc::new(NoticeLog::new());
        let streams: Vec<_> = [(0, 30), (2, 10)]
            .into_iter()
            .map(|(priority, at)| {
                let log = log.clone();
                thread::spawn(move || log.record(priority, at))
            })
            .collect();
        // The drain, at any point among them.
        let seen = log.snapshot();
        let counted: usize = seen.by_priority.iter().sum();
        match seen.first_last {
            None => assert_eq!(counted, 0),
            Some((first, last)) => {
                assert!(counted > 0);
                // Every counted notice's time is in: first and last
                // bracket them.
                if seen.by_priority[0] == 1 {
                    assert!(first <= 30 && last >= 30, "{seen:?}");
                }
                if seen.by_priority[2] == 1 {
                    assert!(first <= 10 && last >= 10, "{seen:?}");
                }
            }
        }
        for s in streams {
            s.join().unwrap();
        }
        assert_eq!(
            log.snapshot(),
            Notices {
                by_priority: [1, 0, 1],
                first_last: Some((10, 30)),
            }
        );
    });
}
