//! Every call to the [`metrics`](https://docs.rs/metrics) facade, behind
//! functions that do nothing without the `metrics` cargo feature, so that no
//! `#[cfg]` is scattered through the logic.

/// Describes the three metrics to the installed recorder and shows them from
/// the start, at zero, rather than only once used.
pub(crate) fn describe() {
    #[cfg(feature = "metrics")]
    {
        metrics::describe_gauge!("sse_active_connections", "Open text/event-stream responses");
        metrics::describe_gauge!(
            "sse_shutdown_duration_seconds",
            metrics::Unit::Seconds,
            "Duration of the drain: updated as it runs, final once it ends"
        );
        metrics::describe_counter!(
            "sse_force_closed_connections_total",
            "Responses ended at the end of a grace period"
        );
        metrics::gauge!("sse_active_connections").increment(0.0);
        metrics::counter!("sse_force_closed_connections_total").increment(0);
    }
}

/// One more (`+1`) or one fewer (`-1`) open SSE stream.
#[inline]
pub(crate) fn sse_streams(delta: f64) {
    #[cfg(feature = "metrics")]
    metrics::gauge!("sse_active_connections").increment(delta);
    #[cfg(not(feature = "metrics"))]
    let _ = delta;
}

/// How long the drain has run so far, or took.
pub(crate) fn drain_duration(secs: f64) {
    #[cfg(feature = "metrics")]
    metrics::gauge!("sse_shutdown_duration_seconds").set(secs);
    #[cfg(not(feature = "metrics"))]
    let _ = secs;
}

/// Responses ended at the end of the grace period.
pub(crate) fn force_closed(count: usize) {
    #[cfg(feature = "metrics")]
    metrics::counter!("sse_force_closed_connections_total").increment(count as u64);
    #[cfg(not(feature = "metrics"))]
    let _ = count;
}
