//! Many drain cycles in one process, each with a new handle, server and
//! streams: every count returns to zero and live memory stays flat.
//!
//! The server wraps its connections (`handle.listener`), so every drain's
//! task waits for the deadline to cut them (20 s + 1 s away, long after the
//! cycle ends): that wait must keep neither the handle's state nor itself
//! alive once everything else has dropped the handle.

mod common;

use axum::{Router, routing::get};
use common::*;
use tower_graceful_sse::{Config, DrainHandle};

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// One cycle: a server with a fresh handle, five streams, a drain through
/// axum's graceful shutdown, and the server's exit.
async fn cycle() {
    let handle = DrainHandle::new(Config::default());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let drain_handle = handle.clone();
    let app = Router::new()
        .route("/idle", get(idle))
        .layer(handle.layer());
    let listener = listener(std::net::Ipv4Addr::LOCALHOST);
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        axum::serve(handle.listener(listener), app)
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
    let before = alloc::live_bytes();
    for _ in 0..80 {
        cycle().await;
    }
    let grown = alloc::live_bytes() - before;
    // A leaked handle state with its frame is about half a KiB per cycle,
    // and so is a drain task left waiting for its deadline: 80 cycles would
    // leak about 40 KiB.
    assert!(
        grown < 8 << 10,
        "live heap grew by {grown} bytes over 80 cycles"
    );
}
