//! ga4-analytics-api: an analytics server whose report streams survive a
//! rolling restart.
//!
//! Run with: `cargo run --example analytics`, open <http://127.0.0.1:3000/>,
//! and send the server SIGTERM (`kill $(pgrep -f examples/analytics)`) or press
//! Ctrl-C while a report streams: the page shows the restart notice, waits,
//! and resumes the report where it stopped on the next server you start.
//!
//! Environment:
//! - `BIND` (default `127.0.0.1`) and `PORT` (default `3000`);
//! - `SHUTDOWN_GRACE_PERIOD` (seconds, default 20) and
//!   `SHUTDOWN_RECONNECT_DELAY` (seconds, default 30);
//! - `SHUTDOWN_SSE_REJECTION`: how a stream request is refused while draining:
//!   `notice` (default: 200 with the shutdown notice alone, which a browser
//!   retries) or `503` (for a proxy that retries 503s on another instance,
//!   see `Config::sse_rejection_as_notice` and the README);
//! - `ANALYTICS_EVENT_INTERVAL_MS`: pace of the report, one day of rows per
//!   interval (default 100);
//! - `POD_NAME` (else the host name): the `pod` label of the metrics;
//! - `RUST_LOG` (default `info`).

mod report;

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{
        Html, IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use futures_util::{StreamExt, stream};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use report::{Params, ReportEvent};
use serde_json::json;
use std::{collections::HashMap, convert::Infallible, process::ExitCode, time::Duration};
use tokio::signal::unix::{SignalKind, signal};
use tower_graceful_sse::{Config, DrainHandle};
use tracing_subscriber::EnvFilter;

#[derive(Clone)]
struct AppState {
    drain: DrainHandle,
    metrics: PrometheusHandle,
    pace: Duration,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(StartError(code, message)) => {
            tracing::error!("{message}");
            eprintln!("analytics: {message}");
            ExitCode::from(code)
        }
    }
}

/// A reason not to start, with the exit code: 2 for bad configuration.
struct StartError(u8, String);

async fn run() -> Result<(), StartError> {
    let mut config = Config::from_env().map_err(|e| StartError(2, e.to_string()))?;
    match std::env::var("SHUTDOWN_SSE_REJECTION").as_deref() {
        Err(_) | Ok("notice") => {}
        Ok("503") => config = config.sse_rejection_as_notice(false),
        Ok(v) => {
            return Err(StartError(
                2,
                format!("invalid SHUTDOWN_SSE_REJECTION={v:?}: expected notice or 503"),
            ));
        }
    }
    let pace = match std::env::var("ANALYTICS_EVENT_INTERVAL_MS") {
        Err(_) => Duration::from_millis(100),
        Ok(v) => v.parse().map(Duration::from_millis).map_err(|_| {
            StartError(
                2,
                format!("invalid ANALYTICS_EVENT_INTERVAL_MS={v:?}: expected milliseconds"),
            )
        })?,
    };
    let addr = bind_addr().map_err(|e| StartError(2, e))?;
    let metrics = PrometheusBuilder::new()
        .add_global_label("pod", pod_name())
        .install_recorder()
        .map_err(|e| StartError(1, format!("cannot install the metrics recorder: {e}")))?;
    tracing::info!(?config, "configuration");

    let drain = DrainHandle::new(config);
    let state = AppState {
        drain: drain.clone(),
        metrics,
        pace,
    };
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| StartError(1, format!("cannot listen on {addr}: {e}")))?;
    tracing::info!("listening on http://{addr}/");
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown(drain))
        .await
        .map_err(|e| StartError(1, format!("server error: {e}")))?;
    tracing::info!("server stopped; exiting");
    Ok(())
}

/// The API's streaming routes sit behind the drain layer; health checks,
/// metrics and the page do not, so they answer during the drain.
fn app(state: AppState) -> Router {
    let api = Router::new()
        .route("/stream", get(stream_report))
        .route("/export", get(export_report))
        .route_layer(state.drain.layer());
    Router::new()
        .nest("/api/v1/analytics", api)
        .route("/", get(|| async { Html(include_str!("page.html")) }))
        .route("/healthz/live", get(|| async { "ok" }))
        .route("/healthz/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Waits for SIGTERM or SIGINT, then drains; resolving lets `axum::serve`
/// finish, which it does as soon as the drained connections have closed.
async fn shutdown(drain: DrainHandle) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; no graceful shutdown");
        return std::future::pending().await;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!("Received {name} signal, initiating graceful shutdown...");
    tokio::spawn(async move {
        int.recv().await;
        tracing::warn!("Received a second SIGINT, exiting now");
        std::process::exit(130);
    });
    let report = drain.drain().await;
    tracing::info!("drain report: {report}");
}

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    if state.drain.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (StatusCode::OK, "ready")
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// `GET /api/v1/analytics/stream?report=<name>&days=<n>`: the report as SSE,
/// resumed after `Last-Event-ID` (header, or `last_event_id` for clients that
/// reconnect by hand).
async fn stream_report(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, BadRequest> {
    let params = params(&query)?;
    let events = report::events(&params);
    let last_id = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("?").to_owned())
        .or_else(|| query.get("last_event_id").cloned());
    let start = match last_id.as_deref() {
        None | Some("") => 0,
        Some(id) => match id.parse::<usize>() {
            Ok(id) if id < events.len() => id + 1,
            _ => return Err(BadRequest(format!("unknown Last-Event-ID {id:?}"))),
        },
    };
    tracing::debug!(?params, start, "report stream");
    let pace = state.pace;
    let stream = stream::iter(events.into_iter().enumerate().skip(start)).then(
        move |(id, ReportEvent { name, data })| async move {
            if name != "status" {
                tokio::time::sleep(pace).await;
            }
            Ok::<_, Infallible>(
                Event::default()
                    .id(id.to_string())
                    .event(name)
                    .data(data.to_string()),
            )
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// `GET /api/v1/analytics/export?report=<name>&days=<n>`: the report's rows
/// as CSV, streamed at the report's pace: a download that a restart lets
/// finish within the grace period.
async fn export_report(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, BadRequest> {
    let params = params(&query)?;
    let pace = state.pace;
    let days = report::events(&params)
        .into_iter()
        .filter(|e| e.name == "result")
        .map(|e| {
            let mut csv = String::new();
            for row in e.data["rows"].as_array().into_iter().flatten() {
                csv += &format!(
                    "{},{},{},{},{}\n",
                    row["date"].as_str().unwrap_or_default(),
                    row["source"].as_str().unwrap_or_default(),
                    row["sessions"],
                    row["users"],
                    row["pageviews"]
                );
            }
            csv
        });
    let body = stream::once(async { "date,source,sessions,users,pageviews\n".to_owned() })
        .chain(stream::iter(days).then(move |csv| async move {
            tokio::time::sleep(pace).await;
            csv
        }))
        .map(Ok::<_, Infallible>);
    Ok((
        [(header::CONTENT_TYPE, "text/csv")],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

fn params(query: &HashMap<String, String>) -> Result<Params, BadRequest> {
    Params::parse(
        query.get("report").map(String::as_str),
        query.get("days").map(String::as_str),
    )
    .map_err(BadRequest)
}

/// A 400 with a JSON body: `{"error": "..."}`.
struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, Json(json!({ "error": self.0 }))).into_response()
    }
}

/// `BIND` (an address, with or without port) and `PORT`.
fn bind_addr() -> Result<String, String> {
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1".into());
    if bind.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(bind);
    }
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let port: u16 = port
        .parse()
        .map_err(|_| format!("invalid PORT={port:?}: expected a port number"))?;
    let ip: std::net::IpAddr = bind
        .parse()
        .map_err(|_| format!("invalid BIND={bind:?}: expected an IP address"))?;
    Ok(std::net::SocketAddr::new(ip, port).to_string())
}

/// `POD_NAME`, else the host name: the `pod` label of every metric.
fn pod_name() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .or_else(|_| std::fs::read_to_string("/proc/sys/kernel/hostname"))
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}
