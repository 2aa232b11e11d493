//! What a run found: the table of steps, the checks of every client, the
//! page and the live feed, and the final line.

use crate::{
    Feed, Step, browser, client,
    options::{Options, Scenario},
    proxy::Logged,
};
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// The table and the final line; true when nothing was lost, duplicated or
/// refused, no instance was killed and the page completed its report.
#[allow(clippy::too_many_arguments)]
pub(crate) fn print_results(
    o: &Options,
    proxy: &str,
    steps: &[Step],
    outcomes: &[client::Outcome],
    feed: Option<&Feed>,
    page: Option<&Result<browser::PageResult, String>>,
    requests: &[Logged],
    run_start: Instant,
    deploy_time: Duration,
) -> bool {
    println!("\nreplacements:");
    println!(
        "| old | new | ready after | exit | SIGTERM to exit | download | drain report of the old instance |"
    );
    println!("|---|---|---|---|---|---|---|");
    for s in steps {
        println!(
            "| {} | {} | {} ms | {}{} | {:.2} s | {} | {} |",
            s.old,
            s.new,
            s.ready.as_millis(),
            s.exit.status,
            if s.exit.killed { " **SIGKILL**" } else { "" },
            s.exit.after_sigterm.as_secs_f64(),
            match &s.download {
                Ok(()) => "whole".to_owned(),
                Err(e) => format!("**{e}**"),
            },
            s.exit.drain_report
        );
    }

    let sum = |f: fn(&client::Outcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    let events = sum(|c| c.delivered);
    let lost = sum(|c| c.lost);
    let duplicated = sum(|c| c.duplicated);
    let corrupt = sum(|c| c.corrupt);
    let reconnects = sum(|c| c.reconnects as u64);
    let notices = sum(|c| c.notices as u64);
    let resets = sum(|c| c.resets as u64);
    let notice_only = sum(|c| c.notice_only as u64);
    let cut = sum(|c| c.cut as u64);
    let completed = outcomes.iter().filter(|c| c.completed).count();
    let crossed = outcomes.iter().filter(|c| c.notices > 0).count();
    // Report and live clients alike: errors, the successors' load, the gaps.
    let all: Vec<&client::Outcome> = outcomes
        .iter()
        .chain(feed.iter().flat_map(|f| &f.clients))
        .collect();
    let mut errors: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &all {
        if let Some(e) = &c.client_error {
            *errors.entry(e.as_str()).or_default() += 1;
        }
    }
    let client_errors: usize = errors.values().sum();
    let mut per_second: BTreeMap<u64, u64> = BTreeMap::new();
    for t in all.iter().flat_map(|c| &c.reconnect_times) {
        *per_second
            .entry(t.duration_since(run_start).as_secs())
            .or_default() += 1;
    }
    let peak = per_second.values().copied().max().unwrap_or(0);
    let mut gaps: Vec<u128> = all
        .iter()
        .filter(|c| !c.max_gap.is_zero())
        .map(|c| c.max_gap.as_millis())
        .collect();
    gaps.sort_unstable();
    let pct = |p: usize| {
        gaps.get((gaps.len() * p / 100).min(gaps.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let max_gap = gaps.last().copied().unwrap_or(0);
    let sigkills = steps.iter().filter(|s| s.exit.killed).count();
    let bad_downloads = steps.iter().filter(|s| s.download.is_err()).count();

    // What the proxy saw: stream requests it retried on another instance,
    // and answers other than 200 that reached a client.
    let streams: Vec<&Logged> = requests
        .iter()
        .filter(|r| r.path.starts_with("/api/v1/analytics/stream"))
        .collect();
    let retried = streams
        .iter()
        .filter(|r| r.tries > 1 && r.status == 200)
        .count();
    let mut passed_on = BTreeMap::<u16, usize>::new();
    for r in streams.iter().filter(|r| r.status != 200) {
        *passed_on.entry(r.status).or_default() += 1;
    }
    let h2_clients = outcomes.len().div_ceil(2) * usize::from(o.tls);

    println!("\nclients:");
    println!("| measure | value |");
    println!("|---|---|");
    let rows: Vec<(&str, String)> = vec![
        (
            "clients (completed / crossed a restart)",
            format!("{} ({completed} / {crossed})", outcomes.len()),
        ),
        (
            "clients over HTTP/2 (TLS)",
            format!("{h2_clients} of {}", outcomes.len()),
        ),
        ("report events delivered once, in order", events.to_string()),
        ("lost", lost.to_string()),
        ("duplicated", duplicated.to_string()),
        ("corrupt (unknown id or other content)", corrupt.to_string()),
        (
            "client errors (what a browser gives up on)",
            client_errors.to_string(),
        ),
        ("reconnects", reconnects.to_string()),
        ("shutdown notices received", notices.to_string()),
        (
            "reset events (the server's history was lost)",
            resets.to_string(),
        ),
        (
            "answers that were the notice alone (a draining instance)",
            notice_only.to_string(),
        ),
        ("streams cut without a notice", cut.to_string()),
        (
            "stream requests the proxy retried on another instance",
            retried.to_string(),
        ),
        (
            "non-200 stream answers the proxy passed on",
            if passed_on.is_empty() {
                "0".into()
            } else {
                format!("{passed_on:?}")
            },
        ),
        ("peak reconnects per second", peak.to_string()),
        (
            "max gap without a stream, p50 / p99 / max",
            format!("{} / {} / {max_gap} ms", pct(50), pct(99)),
        ),
        ("deploy", format!("{:.1} s", deploy_time.as_secs_f64())),
        ("SIGKILLs", sigkills.to_string()),
        ("downloads cut", bad_downloads.to_string()),
    ];
    for (name, value) in rows {
        println!("| {name} | {value} |");
    }
    for (error, n) in &errors {
        println!("client error x{n}: {error}");
    }
    let page_ok = match page {
        None => true,
        Some(Ok(p)) => {
            println!(
                "browser page: {} rows, {} restart(s), {} failed reconnect(s), protocols {:?}, \
                 states {}: {}",
                p.rows,
                p.restarts,
                p.reconnects,
                p.protocols,
                p.states.join(" > "),
                if p.ok {
                    "complete, every row once, in order"
                } else {
                    "**FAILED**"
                }
            );
            p.ok
        }
        Some(Err(e)) => {
            println!("browser page: **FAILED**: {e}");
            false
        }
    };
    let page_restarts = match page {
        Some(Ok(p)) => p.restarts,
        _ => 0,
    };
    let page_h2 = page.is_some() && o.tls && {
        let ok = page_on_one_h2_connection(requests);
        println!(
            "browser page over TLS: {}",
            ok.as_ref().unwrap_or_else(|e| e)
        );
        ok.is_ok()
    };
    let mut failures = Vec::new();
    let live_line = match feed {
        None => String::new(),
        Some(feed) => live_results(o, feed, &mut failures),
    };
    println!(
        "\nrolling deploy: proxy={}{} clients={} events={events} lost={lost} \
         duplicated={duplicated} client_errors={client_errors} reconnects={reconnects} \
         peak_reconnects_per_s={peak} max_gap_ms={max_gap} deploy_s={:.1}{live_line} \
         gap_p50_ms={} gap_p99_ms={}",
        proxy.to_lowercase(),
        if o.tls { "+tls" } else { "" },
        outcomes.len(),
        deploy_time.as_secs_f64(),
        pct(50),
        pct(99),
    );
    if lost + duplicated + corrupt > 0 || client_errors > 0 {
        failures.push("events lost, duplicated or corrupt, or client errors".to_owned());
    }
    if completed + client_errors < outcomes.len() {
        failures.push(format!(
            "{} clients did not finish their report",
            outcomes.len() - completed - client_errors
        ));
    }
    if sigkills > 0 {
        failures.push(format!(
            "{sigkills} instance(s) outlived terminationGracePeriodSeconds"
        ));
    }
    if bad_downloads > 0 {
        failures.push(format!("{bad_downloads} download(s) cut"));
    }
    if !page_ok {
        failures.push("the browser page did not complete its report".into());
    }
    if page.is_some() && page_restarts == 0 && o.replacements > 0 {
        failures.push(
            "the browser page crossed no restart, so its resume went untested: make the \
             report longer (--days, --interval-ms)"
                .into(),
        );
    }
    if page.is_some() && o.tls && !page_h2 {
        failures.push("the page's streams did not share one HTTP/2 connection".into());
    }
    if crossed == 0 && o.replacements > 0 {
        failures.push(
            "no client streamed across a restart: make the reports longer (--days, --interval-ms)"
                .into(),
        );
    }
    for f in &failures {
        eprintln!("FAILED: {f}");
    }
    failures.is_empty()
}

/// Every request of the page went over HTTP/2, and its streams (report,
/// realtime, live) shared a connection at some point (a browser multiplexes
/// one origin's streams on one). nginx's reload closes a connection
/// gracefully (GOAWAY) when its streams end, so the page may use more than
/// one over the deploy.
fn page_on_one_h2_connection(requests: &[Logged]) -> Result<String, String> {
    use std::collections::BTreeSet;
    let page: Vec<&Logged> = requests.iter().filter(|r| r.browser).collect();
    let not_h2: Vec<&str> = page
        .iter()
        .filter(|r| r.protocol != "HTTP/2.0")
        .map(|r| r.protocol.as_str())
        .collect();
    if page.is_empty() || !not_h2.is_empty() {
        return Err(format!(
            "{} requests logged for the page, {} not over HTTP/2 ({not_h2:?})",
            page.len(),
            not_h2.len()
        ));
    }
    let streams: Vec<(&str, BTreeSet<&str>)> = ["stream", "realtime", "live"]
        .into_iter()
        .map(|name| {
            let prefix = format!("/api/v1/analytics/{name}");
            let on = page
                .iter()
                .filter(|r| r.path.starts_with(&prefix))
                .map(|r| r.connection.as_str())
                .collect();
            (name, on)
        })
        .filter(|(_, on): &(&str, BTreeSet<&str>)| !on.is_empty())
        .collect();
    let connections: BTreeSet<&str> = page.iter().map(|r| r.connection.as_str()).collect();
    let shared = streams
        .iter()
        .map(|(_, on)| on.clone())
        .reduce(|a, b| a.intersection(&b).copied().collect())
        .unwrap_or_default();
    let summary = format!(
        "{} requests, all HTTP/2, on {} connection(s); streams by connection {streams:?}",
        page.len(),
        connections.len(),
    );
    if streams.len() >= 2 && !shared.is_empty() {
        Ok(format!(
            "{summary}: all {} streams shared one",
            streams.len()
        ))
    } else {
        Err(format!("{summary}: never all on the same connection"))
    }
}

/// The live feed's table; its part of the final line. Fails the run when a
/// live client lost, duplicated or misread a hit, did not catch up, or got
/// a reset it should not have (none, or exactly one each when Redis
/// restarted empty), or when the log lost an acknowledged hit.
fn live_results(o: &Options, feed: &Feed, failures: &mut Vec<String>) -> String {
    let sum = |f: fn(&client::Outcome) -> u64| feed.clients.iter().map(f).sum::<u64>();
    let (events, lost, duplicated) = (sum(|c| c.delivered), sum(|c| c.lost), sum(|c| c.duplicated));
    let (corrupt, resets, gone) = (
        sum(|c| c.corrupt),
        sum(|c| c.resets as u64),
        sum(|c| c.gone_with_log),
    );
    let reconnects = sum(|c| c.reconnects as u64);
    let behind = feed.clients.iter().filter(|c| !c.completed).count();
    let acked = feed.acked.lock().unwrap();
    let final_epoch = acked.last.as_ref().map(|l| l.epoch.clone());
    let before_restart = acked
        .ids
        .iter()
        .filter(|id| Some(&id.epoch) != final_epoch.as_ref())
        .count();
    let audit = &feed.audit;
    let hits_lost = audit.lost + audit.corrupt + audit.duplicated;
    println!("\nlive feed:");
    println!("| measure | value |");
    println!("|---|---|");
    let rows: Vec<(&str, String)> = vec![
        (
            "hits acknowledged by collect (refused or unanswered)",
            format!("{} ({})", acked.ids.len(), acked.refused),
        ),
        (
            "live clients (caught up at the end)",
            format!("{} ({})", feed.clients.len(), feed.clients.len() - behind),
        ),
        ("hits delivered once, in log order", events.to_string()),
        ("lost", lost.to_string()),
        ("duplicated", duplicated.to_string()),
        ("corrupt (unknown id, other path)", corrupt.to_string()),
        ("resets", resets.to_string()),
        (
            "acknowledged, then gone with the log (after the last received before a reset)",
            gone.to_string(),
        ),
        ("reconnects", reconnects.to_string()),
        (
            "audit: the final epoch replayed from its start",
            format!(
                "{} hits, {} acknowledged ones missing",
                audit.delivered, audit.lost
            ),
        ),
        (
            "acknowledged before Redis restarted empty (not in the final epoch)",
            before_restart.to_string(),
        ),
    ];
    for (name, value) in rows {
        println!("| {name} | {value} |");
    }
    if lost + duplicated + corrupt > 0 {
        failures.push("live hits lost, duplicated or corrupt".into());
    }
    if behind > 0 {
        failures.push(format!(
            "{behind} live client(s) never caught up with the last hit"
        ));
    }
    if hits_lost > 0 || !audit.completed {
        failures.push(format!(
            "the log lost {hits_lost} acknowledged hit(s) (audit complete: {})",
            audit.completed
        ));
    }
    if acked.ids.is_empty() {
        failures.push("no hit was acknowledged".into());
    }
    match feed.redis_restart {
        Some(_) => {
            let not_one = feed.clients.iter().filter(|c| c.resets != 1).count();
            if not_one > 0 {
                failures.push(format!(
                    "{not_one} live client(s) did not get exactly one reset when Redis restarted"
                ));
            }
        }
        None if resets > 0 => failures.push(format!("{resets} reset(s) with no log lost")),
        None => {}
    }
    if o.scenario != Scenario::RedisRestart && before_restart > 0 {
        failures.push(format!(
            "{before_restart} acknowledged hit(s) of an epoch the log no longer has"
        ));
    }
    format!(
        " live_clients={} live_events={events} live_lost={lost} live_duplicated={duplicated} \
         live_resets={resets} hits_acked={} hits_lost={hits_lost}",
        feed.clients.len(),
        acked.ids.len()
    )
}
