//! The smallest complete integration: one SSE route, drained on Ctrl-C or
//! SIGTERM, then a clean exit.
//!
//! Run with: `cargo run --example minimal`, then
//! `curl -N localhost:3000/events` and press Ctrl-C in the server's terminal.

use axum::{
    Router,
    response::sse::{Event, KeepAlive, Sse},
    routing::get,
};
use futures_util::{Stream, StreamExt};
use std::{convert::Infallible, time::Duration};
use tokio_stream::wrappers::IntervalStream;
use tower_graceful_sse::{Config, DrainHandle};

#[tokio::main]
async fn main() {
    let config = Config::from_env().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2);
    });
    let handle = DrainHandle::new(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000")
        .await
        .unwrap();
    println!(
        "listening on http://{}/events",
        listener.local_addr().unwrap()
    );
    // A client that stops reading cannot hold the server past the deadline.
    axum::serve(handle.listener(listener), app(&handle).into_make_service())
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            let report = handle.drain().await;
            println!("drained: {report:?}");
        })
        .await
        .unwrap();
}

fn app(handle: &DrainHandle) -> Router {
    Router::new()
        .route("/events", get(events))
        .layer(handle.layer())
}

async fn events() -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let ticks = IntervalStream::new(tokio::time::interval(Duration::from_secs(1)))
        .enumerate()
        .map(|(i, _)| Ok(Event::default().id(i.to_string()).data(format!("tick {i}"))));
    Sse::new(ticks).keep_alive(KeepAlive::default())
}

async fn shutdown_signal() {
    let ctrl_c = async { tokio::signal::ctrl_c().await.unwrap() };
    #[cfg(unix)]
    let terminate = async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .unwrap()
            .recv()
            .await;
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
