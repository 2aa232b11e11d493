//! Every interleaving of the state behind a handle, checked with loom.
//!
//! Run with:
//! `RUSTFLAGS="--cfg loom" cargo test --release --test loom`
//!
//! The models use the crate's real `State` (its atomics come from loom under
//! `cfg(loom)`); the drain task's wait for the last release is modelled with
//! `loom::sync::Notify`, which keeps a permit as `tokio::sync::Notify::notify_one`
//! does; the phase wait of bodies and connections uses the crate's real
//! `Wakers` (its lock comes from loom too).
#![cfg(loom)]

use loom::{
    sync::{
        Arc, Notify,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    thread,
};
use std::task::Waker;
use tower_graceful_sse::state::{CUT, DRAINING, FORCED, NoticeLog, Notices, State, Wakers};

/// One request: admitted (reaching the "inner service", then released, which
/// wakes the drain if it was the last) or rejected. Returns whether it was
/// admitted.
fn request(state: &State, closed: &Notify, served: &AtomicUsize) -> bool {
    if !state.admit() {
        return false;
    }
    served.fetch_add(1, SeqCst);
    if state.release(false) {
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

/// The admission race: requests arriving while `drain()` starts. Each one is
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

        let in_flight = state
            .start_drain()
            .expect("the first drain starts it")
            .in_flight;
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

        let in_flight = state.start_drain().unwrap().in_flight;
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
                    if state.release(false) {
                        wakes.fetch_add(1, SeqCst);
                    }
                })
            })
            .collect();
        let in_flight = state.start_drain().unwrap().in_flight;
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

/// Two streams admitted before the drain, one marked an SSE stream before or
/// after it (a late response) and released at any point, the other marked
/// and kept: the drain's `sse_streams` (open at its start plus the late
/// ones) never exceeds what was in flight at its start, and counts every
/// stream that was admitted before it.
#[test]
fn sse_streams_at_the_drain_count_late_responses_and_never_exceed_in_flight() {
    model(|| {
        let state = Arc::new(State::new());
        assert!(state.admit() && state.admit());
        let streams: Vec<_> = [true, false]
            .into_iter()
            .map(|release| {
                let state = state.clone();
                thread::spawn(move || {
                    state.mark_sse();
                    if release {
                        state.release(true);
                    }
                })
            })
            .collect();
        let at_start = state.start_drain().unwrap();
        for s in streams {
            s.join().unwrap();
        }
        let sse_streams = at_start.sse_streams + state.late_sse();
        assert!(
            sse_streams <= at_start.in_flight,
            "{at_start:?} + {}",
            state.late_sse()
        );
        // Every stream still in flight at the start is counted, marked then
        // or later.
        assert_eq!(sse_streams, at_start.in_flight);
        assert_eq!((state.count(), state.sse()), (1, 1));
    });
}

/// A waker that records that it was woken. Its `Arc` is std's (the waker
/// API needs one); the flag is loom's, so every interleaving of the wake is
/// explored.
struct Flag(AtomicBool);

impl std::task::Wake for Flag {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.store(true, SeqCst);
    }
}

fn flag() -> (std::sync::Arc<Flag>, Waker) {
    let flag = std::sync::Arc::new(Flag(AtomicBool::new(false)));
    (flag.clone(), Waker::from(flag))
}

/// How a waiter came out of one pass of `shared::wait_phase`.
enum Outcome {
    SawThePhase,
    Registered,
}

/// One pass of the phase wait (`shared::register`) of a body or a
/// connection whose call went pending at phase `seen`; `register_first` is
/// the crate's order (the waker into its slot, then the look at the phase),
/// `false` the order it replaced.
fn wait_phase(
    state: &State,
    wakers: &Wakers,
    key: &mut u32,
    waker: &Waker,
    seen: u64,
    register_first: bool,
) -> Outcome {
    if register_first {
        *key = wakers.set(*key, waker);
    }
    if state.phase() != seen {
        return Outcome::SawThePhase;
    }
    if !register_first {
        *key = wakers.set(*key, waker);
    }
    Outcome::Registered
}

/// The cut (or any phase change) racing a connection that goes pending: the
/// connection either sees the new phase or is woken. Never pending forever.
fn phase_change_racing_a_waiter(register_first: bool) {
    model(move || {
        let state = Arc::new(State::new());
        let wakers = Arc::new(Wakers::new());
        state.start_drain();
        let cutter = {
            let (state, wakers) = (state.clone(), wakers.clone());
            thread::spawn(move || {
                state.cut();
                wakers.wake_all();
            })
        };
        // The connection: looks at the phase, its IO call goes pending.
        let (woken, waker) = flag();
        let mut key = 0;
        let seen = state.phase();
        let outcome = wait_phase(&state, &wakers, &mut key, &waker, seen, register_first);
        cutter.join().unwrap();
        match outcome {
            Outcome::SawThePhase => {}
            Outcome::Registered => assert!(
                seen & CUT != 0 || woken.0.load(SeqCst),
                "pending at phase {seen:#b}, never woken: the cut is lost"
            ),
        }
        wakers.remove(key);
    });
}

/// The hot path before the drain, racing the drain's start: a body
/// registered once is woken, polled again, and waits with the same waker
/// (taking no lock, returning at once) for as long as it sees no drain. Its
/// last wait must be followed by a wake, or it must have seen the drain; a
/// second body, dropped meanwhile, gives its slot back without disturbing
/// the first. `store_first` is the drain's order (the phase, then the wake);
/// `false` wakes first, which the model must catch: the body re-polled by
/// that wake still sees no drain, and nothing wakes it again.
fn fast_path_racing_the_drain(store_first: bool) {
    model(move || {
        let state = Arc::new(State::new());
        let wakers = Arc::new(Wakers::new());
        let (woken, waker) = flag();
        let mut key = 0;
        // The first pending poll, before any drain.
        let seen = state.phase();
        assert!(matches!(
            wait_phase(&state, &wakers, &mut key, &waker, seen, true),
            Outcome::Registered
        ));
        let other = {
            let wakers = wakers.clone();
            thread::spawn(move || {
                let (_, waker) = flag();
                let key = wakers.set(0, &waker);
                wakers.remove(key);
            })
        };
        let drain = {
            let (state, wakers) = (state.clone(), wakers.clone());
            thread::spawn(move || {
                if store_first {
                    state.start_drain();
                    wakers.wake_all();
                } else {
                    wakers.wake_all();
                    state.start_drain();
                }
            })
        };
        // Each wake polls the body again: the fast path while no drain is
        // seen (the slot is not touched). Two polls cover a wake between.
        let mut saw_drain = false;
        for _ in 0..2 {
            if state.phase() & DRAINING != 0 {
                saw_drain = true;
                break;
            }
            // Taken with a compare-exchange: loom 0.7.3 lets a `swap` read
            // past a plain store made before it.
            if woken
                .0
                .compare_exchange(true, false, SeqCst, SeqCst)
                .is_err()
            {
                break;
            }
        }
        other.join().unwrap();
        drain.join().unwrap();
        assert!(
            saw_drain || woken.0.load(SeqCst),
            "pending on the fast path, never woken by the drain"
        );
        wakers.remove(key);
    });
}

#[test]
fn a_waiter_that_returns_without_the_lock_is_still_woken_by_the_drain() {
    fast_path_racing_the_drain(true);
}

/// The model finds the lost wake-up of a drain that wakes before it stores
/// the phase.
#[test]
#[should_panic(expected = "never woken by the drain")]
fn waking_before_storing_the_drain_loses_the_fast_path() {
    fast_path_racing_the_drain(false);
}

#[test]
fn a_phase_change_is_never_lost_by_a_waiter_registering() {
    phase_change_racing_a_waiter(true);
}

/// The model finds the lost wake-up of the order the crate used before (look
/// at the phase, then make the registration).
#[test]
#[should_panic(expected = "the cut is lost")]
fn looking_before_registering_loses_the_cut() {
    phase_change_racing_a_waiter(false);
}
