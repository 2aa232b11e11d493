//! ga4-analytics-api: an analytics server whose report streams survive a
//! rolling restart.
//!
//! Run with: `cargo run -p analytics`, open <http://127.0.0.1:3000/>,
//! and send the server SIGTERM (`pkill -TERM -x analytics`) or press
//! Ctrl-C while a report streams: the page shows the restart notice, waits,
//! and resumes the report where it stopped on the next server you start.
//!
//! Routes: `/` (the page), `/api/v1/analytics/stream` (a report as SSE,
//! resumable), `/api/v1/analytics/realtime` (endless SSE of realtime
//! figures), `/api/v1/analytics/export` (a report as CSV), `/healthz/live`,
//! `/healthz/ready` (503 during the drain) and `/metrics`.
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
//!   interval, and of the realtime stream, one event per interval (default
//!   100; 0 = as fast as the client reads);
//! - `POD_NAME` (else the host name): the `pod` label of the metrics;
//! - `RUST_LOG` (default `info`).

use analytics::{
    realtime,
    report::{Params, Report, ReportEvent, Row},
};
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
    match raise_fd_limit() {
        Ok(limit) => tracing::info!("open files limit: {limit}"),
        Err(e) => tracing::warn!("cannot raise the open files limit: {e}"),
    }

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
    // `drain.listener`: at the drain's deadline (grace period + linger), the
    // connections still open are closed, so a client that stopped reading
    // cannot keep the process alive until Kubernetes kills it.
    axum::serve(drain.listener(listener), app(state))
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
        .route("/realtime", get(stream_realtime))
        .route_layer(state.drain.layer());
    Router::new()
        .nest("/api/v1/analytics", api)
        .route("/", get(|| async { Html(include_str!("../page.html")) }))
        .route("/healthz/live", get(|| async { "ok" }))
        .route("/healthz/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Waits for SIGTERM or SIGINT, then drains; resolving lets `axum::serve`
/// finish, which it does as soon as the drained connections have closed, and
/// at the latest at the drain's deadline.
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
/// reconnect by hand). Each event is computed when it is sent; a resume
/// starts at the next index without replaying the report. Resuming after the
/// last event answers `204 No Content`, which tells an `EventSource` the
/// stream is over (it stops reconnecting); an unknown id is a 400.
async fn stream_report(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, BadRequest> {
    let report = Report::new(params(&query)?);
    let start = match last_event_id(&query, &headers) {
        None => 0,
        Some(id) => match id.parse::<usize>() {
            Ok(id) if id < report.event_count() => id + 1,
            _ => return Err(BadRequest(format!("unknown Last-Event-ID {id:?}"))),
        },
    };
    if start == report.event_count() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    tracing::debug!(?report, start, "report stream");
    let pace = state.pace;
    let stream = stream::iter(report.events_from(start)).then(
        move |(id, ReportEvent { name, data })| async move {
            if name != "status" {
                pause(pace).await;
            }
            Ok::<_, Infallible>(Event::default().id(id.to_string()).event(name).data(data))
        },
    );
    Ok(Sse::new(stream).keep_alive(keep_alive()).into_response())
}

/// `Last-Event-ID` from the header, else from the `last_event_id` query
/// parameter; `None` when absent or empty (a fresh start).
fn last_event_id(query: &HashMap<String, String>, headers: &HeaderMap) -> Option<String> {
    headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("?").to_owned())
        .or_else(|| query.get("last_event_id").cloned())
        .filter(|id| !id.is_empty())
}

/// `GET /api/v1/analytics/realtime`: an endless SSE stream of realtime
/// figures, one `realtime` event per `ANALYTICS_EVENT_INTERVAL_MS` (or as fast
/// as the client reads when it is 0), numbered by `id:`. A reconnect with
/// `Last-Event-ID` goes on from the next number.
async fn stream_realtime(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, BadRequest> {
    let first = match last_event_id(&query, &headers) {
        None => 0,
        Some(id) => id
            .parse::<u64>()
            .ok()
            .and_then(|id| id.checked_add(1))
            .ok_or_else(|| BadRequest(format!("unknown Last-Event-ID {id:?}")))?,
    };
    let pace = state.pace;
    let stream = stream::iter(first..).then(move |seq| async move {
        if seq != first {
            pause(pace).await;
        }
        Ok::<_, Infallible>(
            Event::default()
                .id(seq.to_string())
                .event("realtime")
                .data(realtime::figures(seq).to_string()),
        )
    });
    Ok(Sse::new(stream).keep_alive(keep_alive()).into_response())
}

/// A comment line every 15 s on an otherwise quiet stream, so proxies and
/// clients do not time it out.
fn keep_alive() -> KeepAlive {
    KeepAlive::new().interval(Duration::from_secs(15))
}

/// Waits `pace` between two events; with a pace of 0 only yields, so the
/// stream goes as fast as its client reads and no timer is set.
async fn pause(pace: Duration) {
    if pace.is_zero() {
        tokio::task::yield_now().await;
    } else {
        tokio::time::sleep(pace).await;
    }
}

/// `GET /api/v1/analytics/export?report=<name>&days=<n>`: the report's rows
/// as CSV, streamed at the report's pace, one day computed at a time: a
/// download that a restart lets finish within the grace period.
async fn export_report(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, BadRequest> {
    let report = Report::new(params(&query)?);
    let pace = state.pace;
    let days = stream::iter(0..report.days()).then(move |day| {
        let report = report.clone();
        async move {
            pause(pace).await;
            report.rows(day).iter().map(Row::csv).collect::<String>()
        }
    });
    let body = stream::once(async { "date,source,sessions,users,pageviews\n".to_owned() })
        .chain(days)
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

/// Raises the soft limit on open files to the hard limit and returns it:
/// every stream holds a socket, and the usual soft limit of 1,024 would
/// refuse connections long before memory runs out (the hard limit is often
/// far higher; Go's runtime raises it the same way at start).
fn raise_fd_limit() -> std::io::Result<libc::rlim_t> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(limit.rlim_cur)
}
