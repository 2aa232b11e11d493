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
//! figures), `/api/v1/analytics/export` (a report as CSV),
//! `POST /api/v1/analytics/collect` (a hit, stored in the live log),
//! `/api/v1/analytics/live` (every hit as SSE, resumable on any instance),
//! `/healthz/live`, `/healthz/ready` (503 during the drain or while the live
//! log is unreachable) and `/metrics`.
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
//! - `REDIS_URL` (say `redis://127.0.0.1:6379/`): the live log on Redis
//!   Streams, shared by every instance; unset, an in-process log;
//! - `LIVE_HISTORY`: how much of the live log is kept for resumes, a count of
//!   hits (default 10000) or an age (`90s`, `10m`, `2h`, `1d`);
//! - `LIVE_BROADCAST_CAPACITY` (default 1024, at most 1000000): how many
//!   hits a live subscriber may fall behind before it reads from the log
//!   instead;
//! - `POD_NAME` (else the host name): the `pod` label of the metrics;
//! - `RUST_LOG` (default `info`; a filter that does not parse stops the
//!   start, as every bad value does).

use analytics::{
    live::{
        self, AppendError, EventId, Feed, History, Hit, Item, Log, MemoryLog, RedisLog, Resume,
    },
    realtime,
    report::{Params, Report, ReportEvent, Row},
};
use axum::body::Bytes;
use axum::{
    Json, Router,
    extract::{
        DefaultBodyLimit, Query, State,
        rejection::{BytesRejection, FailedToBufferBody},
    },
    http::{HeaderMap, StatusCode, header},
    response::{
        Html, IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{get, post},
};
use futures_util::{StreamExt, stream};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use std::{
    collections::HashMap, convert::Infallible, process::ExitCode, sync::Arc, time::Duration,
};
use tokio::signal::unix::{SignalKind, signal};
use tower_graceful_sse::{Config, DrainHandle};
use tracing_subscriber::EnvFilter;

#[derive(Clone)]
struct AppState {
    drain: DrainHandle,
    metrics: PrometheusHandle,
    pace: Duration,
    feed: Feed,
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = match std::env::var("RUST_LOG") {
        Err(_) => EnvFilter::new("info"),
        Ok(v) => match EnvFilter::try_new(&v) {
            Ok(filter) => filter,
            Err(e) => {
                eprintln!("analytics: invalid RUST_LOG={v:?}: {e}");
                return ExitCode::from(2);
            }
        },
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
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

/// The largest `LIVE_BROADCAST_CAPACITY`: a million hits behind; the
/// broadcast allocates its slots at start (48 bytes each, rounded up to a
/// power of two: about 50 MB).
const MAX_BROADCAST_CAPACITY: usize = 1_000_000;

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
    let log = live_log().map_err(|e| StartError(2, e))?;
    let capacity = match std::env::var("LIVE_BROADCAST_CAPACITY") {
        Err(_) => 1024,
        // The broadcast allocates its slots at once.
        Ok(v) => v
            .parse()
            .ok()
            .filter(|n| (1..=MAX_BROADCAST_CAPACITY).contains(n))
            .ok_or_else(|| {
                StartError(
                    2,
                    format!(
                        "invalid LIVE_BROADCAST_CAPACITY={v:?}: \
                         expected a whole number from 1 to {MAX_BROADCAST_CAPACITY}"
                    ),
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
        feed: Feed::new(log, capacity),
    };
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| StartError(1, format!("cannot listen on {addr}: {e}")))?;
    tracing::info!("listening on http://{addr}/");
    // `drain.listener`: at the drain's deadline (grace period + linger), the
    // connections still open are closed, so a client that stopped reading
    // cannot keep the process alive until Kubernetes kills it.
    // `into_make_service` builds the routes once, not again for every
    // connection as `serve(listener, router)` does (2.5 KB a connection).
    axum::serve(drain.listener(listener), app(state).into_make_service())
        .with_graceful_shutdown(shutdown(drain))
        .await
        .map_err(|e| StartError(1, format!("server error: {e}")))?;
    tracing::info!("server stopped; exiting");
    Ok(())
}

/// `REDIS_URL` and `LIVE_HISTORY`: the live log.
fn live_log() -> Result<Arc<dyn Log>, String> {
    let history = History::from_env()?;
    Ok(match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            tracing::info!(?history, "live log: Redis Streams (REDIS_URL)");
            Arc::new(RedisLog::open(&url, history)?)
        }
        _ => {
            tracing::info!(?history, "live log: in-process (REDIS_URL unset)");
            Arc::new(MemoryLog::new(history))
        }
    })
}

/// The API's streaming routes sit behind the drain layer; health checks,
/// metrics, the page and `collect` do not, so they answer during the drain
/// (a hit sent to a draining instance is stored, not refused).
fn app(state: AppState) -> Router {
    let api = Router::new()
        .route("/stream", get(stream_report))
        .route("/export", get(export_report))
        .route("/realtime", get(stream_realtime))
        .route("/live", get(stream_live))
        .route_layer(state.drain.layer());
    Router::new()
        .nest("/api/v1/analytics", api)
        .route(
            "/api/v1/analytics/collect",
            // Read no more than a hit's size: a longer body is a 400 like any
            // bad one, not axum's plain-text 413 after 2 MB.
            post(collect).layer(DefaultBodyLimit::max(MAX_HIT_BYTES)),
        )
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

/// `ready`, or a 503 saying why not: draining, or the live log unreachable
/// (no answer within a second counts as unreachable).
async fn ready(State(state): State<AppState>) -> (StatusCode, String) {
    if state.drain.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining".into());
    }
    // The live log is shared by every instance: an outage of it must not
    // make them all unready at once (Kubernetes would remove every endpoint,
    // the reports included, which do not need it). Ready says so; collect
    // answers 503 and live streams wait until it is back.
    match tokio::time::timeout(Duration::from_secs(1), state.feed.log().head()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready".into()),
        Ok(Err(e)) => (StatusCode::OK, format!("ready; live log unreachable: {e}")),
        Err(_) => (
            StatusCode::OK,
            "ready; live log unreachable: no answer within 1 s".into(),
        ),
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
    // An empty header is no id (an `EventSource` sends none then): the
    // query's, if any.
    headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("?").to_owned())
        .filter(|id| !id.is_empty())
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

/// The largest body `POST /collect` reads.
const MAX_HIT_BYTES: usize = 4096;

/// `POST /api/v1/analytics/collect` with `{"source":"google","path":"/pricing"}`:
/// appends the hit to the live log and answers `{"id":"<epoch>:<position>"}`
/// once it is stored; a 400 with `{"error": ...}` for a bad body, a 503
/// (never a 2xx) when the log is unreachable.
async fn collect(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_))) => {
            return BadRequest(format!("the body has more than {MAX_HIT_BYTES} bytes"))
                .into_response();
        }
        Err(e) => {
            return BadRequest(format!("cannot read the body: {}", e.body_text())).into_response();
        }
    };
    let hit = match Hit::parse(&body, live::now_ms()) {
        Ok(hit) => hit,
        Err(e) => return BadRequest(e).into_response(),
    };
    let error = match state.feed.log().append(&hit).await {
        Ok(id) => return Json(json!({ "id": id.to_string() })).into_response(),
        Err(AppendError::Unreachable(e)) => {
            tracing::warn!("collect: not stored: {e}");
            format!("not stored, the live log is unreachable: {e}")
        }
        Err(AppendError::Unconfirmed(e)) => {
            tracing::warn!("collect: not confirmed: {e}");
            format!(
                "not confirmed by the live log ({e}): \
                 the hit may be stored, and sent again it may be stored twice"
            )
        }
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        Json(json!({ "error": error })),
    )
        .into_response()
}

/// `GET /api/v1/analytics/live`: every hit as SSE, in log order: `event:
/// hit`, `id: <epoch>:<position>`, `data:` the hit as JSON (see
/// [`live::hit_json`]). A fresh stream starts with an `id:` alone (no event:
/// where it starts, so that a reconnect before the first hit misses
/// nothing). `Last-Event-ID` (header, or `last_event_id` as for `/stream`)
/// resumes after that hit, on any instance: the history, then live. Where
/// that cannot be done without a gap (the history was trimmed, the log lost,
/// the id unknown) one `event: reset` says so, then the feed goes on; never
/// a 4xx, which an `EventSource` would take as final.
async fn stream_live(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let resume = match last_event_id(&query, &headers) {
        None => Resume::Now,
        Some(raw) => match raw.parse::<EventId>() {
            Ok(id) => Resume::After(id),
            Err(()) => Resume::Invalid(raw),
        },
    };
    let events = state.feed.subscribe(resume).map(|item| {
        Ok::<_, Infallible>(match item {
            Item::Position(id) => Event::default().id(id.to_string()),
            Item::Hit(hit) => Event::default()
                .event("hit")
                .id(&hit.id_text)
                .data(&hit.data),
            Item::Reset { id, data, .. } => Event::default()
                .event("reset")
                .id(id.to_string())
                .data(data),
        })
    });
    Sse::new(events).keep_alive(keep_alive()).into_response()
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
