//! Many drain cycles in one process, each with a new handle, server and
//! streams: every count returns to zero and live memory stays flat.

mod common;

use axum::{
    Router,
    response::sse::{Event, Sse},
    routing::get,
};
use common::*;
use futures_util::{StreamExt, stream};
use std::{
    alloc::{GlobalAlloc, Layout, System},
    convert::Infallible,
    sync::atomic::{AtomicIsize, Ordering::Relaxed},
};
use tower_graceful_sse::{Config, DrainHandle};

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator, only counting sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

async fn idle() -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let hello = Ok(Event::default().event("hello").data("hi"));
    Sse::new(stream::once(async { hello }).chain(stream::pending()))
}

/// One cycle: a server with a fresh handle, five streams, a drain through
/// axum's graceful shutdown, and the server's exit.
async fn cycle() {
    let handle = DrainHandle::new(Config::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let drain_handle = handle.clone();
    let app = Router::new()
        .route("/idle", get(idle))
        .layer(handle.layer());
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
                drain_handle.drain().await;
            })
            .into_future(),
    );
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut events = sse(addr, "/idle").await;
        assert_eq!(next(&mut events).await.event, "hello");
        clients.push(events);
    }
    assert_eq!(handle.sse_streams(), 5);
    tx.send(()).unwrap();
    for mut events in clients {
        assert_shutdown_event(&next(&mut events).await);
        assert!(rest(&mut events).await.is_empty());
    }
    within(server).await.unwrap().unwrap();
    let report = handle.report().unwrap();
    assert_eq!(
        (report.notified, report.closed, report.force_closed),
        (5, 5, 0)
    );
    assert_eq!((handle.in_flight(), handle.sse_streams()), (0, 0));
}

#[tokio::test(flavor = "current_thread")]
async fn hundred_drain_cycles_leave_no_count_and_no_memory_behind() {
    // Warm up: runtime, allocator and connection pools reach their size.
    for _ in 0..20 {
        cycle().await;
    }
    let before = LIVE.load(Relaxed);
    for _ in 0..80 {
        cycle().await;
    }
    let grown = LIVE.load(Relaxed) - before;
    // A leaked handle state with its frame is about half a KiB per cycle:
    // 80 cycles would leak about 40 KiB.
    assert!(
        grown < 8 << 10,
        "live heap grew by {grown} bytes over 80 cycles"
    );
}
