//! A rolling deploy of the analytics example through a real nginx or
//! HAProxy, on one machine, with clients that behave like browsers'
//! `EventSource` and check that every event of their stream arrives exactly
//! once.
//!
//! Run with: `scripts/rolling-deploy` (installs the proxy, builds, runs this), or
//! `cargo run --release -p rolling-deploy -- --server-bin target/release/examples/analytics`.
//! `--help` lists the options. Every `SHUTDOWN_*` variable in the
//! environment reaches the instances.

mod browser;
mod client;
mod connect;
mod haproxy;
mod http;
mod instance;
mod live;
mod nginx;
mod options;
mod proxy;
mod report;
mod results;
mod tls;

use connect::Target;
use haproxy::Haproxy;
use instance::{Exit, Instance};
use nginx::Nginx;
use options::{HELP, Options, ProxyKind, Scenario, parse_options};
use proxy::Proxy;
use results::print_results;
use std::{
    net::SocketAddr,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

/// Raises the soft limit on open files to the hard limit: each client holds
/// a socket.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}

/// Sets `name` for the instances unless the caller's environment has it.
fn env_default(name: &str, value: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        // SAFETY: called at start-up, before any other thread reads the environment.
        unsafe { std::env::set_var(name, value) };
        value.to_owned()
    })
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("rolling-deploy: {e}");
            return ExitCode::from(2);
        }
    };
    let files = raise_fd_limit();
    if (files as usize) < options.clients + 200 {
        eprintln!(
            "rolling-deploy: {} clients need {} open files, the limit is {files}",
            options.clients,
            options.clients + 200
        );
        return ExitCode::from(2);
    }
    env_default("SHUTDOWN_RECONNECT_DELAY", "1");
    env_default("SHUTDOWN_GRACE_PERIOD", "10");
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let result = runtime.block_on(async {
        match options.proxy {
            ProxyKind::Nginx => run::<Nginx>(options, files).await,
            ProxyKind::Haproxy => run::<Haproxy>(options, files).await,
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("rolling-deploy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the live feed's clients, the producer and the audit saw.
struct Feed {
    clients: Vec<client::Outcome>,
    /// A client that read the final epoch of the log from its start.
    audit: client::Outcome,
    acked: live::Shared,
    /// With --scenario redis-restart: hits acknowledged before Redis restarted.
    redis_restart: Option<usize>,
}

/// One replacement, as the table shows it.
struct Step {
    old: String,
    new: String,
    ready: Duration,
    exit: Exit,
    download: Result<(), String>,
}

async fn run<P: Proxy>(o: Options, files: u64) -> Result<bool, String> {
    let grace: f64 = std::env::var("SHUTDOWN_GRACE_PERIOD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20.0);
    let termination_grace = o
        .termination_grace
        .unwrap_or(o.pre_stop + Duration::from_secs_f64(grace + 5.0));
    let dir = std::env::temp_dir().join(format!("rolling-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let shutdown_env: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("SHUTDOWN_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!(
        "rolling deploy: scenario {:?}, {} clients, {} instances, {} replacements, \
         report {} days at {} ms, preStop {:?}, terminationGracePeriodSeconds {:?}, \
         {}{} retries 503: {}\n  instances get {}\n  logs in {}",
        o.scenario,
        o.clients,
        o.instances,
        o.replacements,
        o.days,
        o.interval_ms,
        o.pre_stop,
        termination_grace,
        P::NAME,
        if o.tls { " with TLS and HTTP/2" } else { "" },
        o.retry_503,
        shutdown_env.join(" "),
        dir.display()
    );
    // Redis for the live feed, shared by every instance.
    let mut redis = if o.live_clients > 0 {
        let redis = live::Redis::start(&o.redis, &dir).await?;
        println!("  redis-server on {}", redis.url());
        Some(redis)
    } else {
        None
    };
    let mut env = vec![("ANALYTICS_EVENT_INTERVAL_MS", o.interval_ms.to_string())];
    if let Some(redis) = &redis {
        env.push(("REDIS_URL", redis.url()));
    }

    // The expected reports, from an instance that sends them without pause.
    let report_path =
        |name: &str| format!("/api/v1/analytics/stream?report={name}&days={}", o.days);
    let mut reference = Instance::start(
        &o.server_bin,
        "reference",
        &dir,
        &[("ANALYTICS_EVENT_INTERVAL_MS", "0".into())],
    )?;
    reference.wait_ready(Duration::from_secs(30)).await?;
    let mut references = Vec::new();
    for r in 0..o.reports {
        references.push(Arc::new(
            report::fetch(reference.addr, &report_path(&format!("deploy-{r}"))).await?,
        ));
    }
    let browser_reference = report::fetch(reference.addr, &report_path("browser")).await?;
    reference
        .terminate(Instant::now() + Duration::from_secs(10))
        .await;
    let report_events = references[0].len();
    let report_time = Duration::from_millis(o.interval_ms * (o.days as u64 + 1));
    println!(
        "  each report: {report_events} events over about {:.0} s",
        report_time.as_secs_f64()
    );

    // The replicas and the proxy.
    let mut live = Vec::new();
    for i in 0..o.instances {
        let mut instance = Instance::start(&o.server_bin, &format!("analytics-{i}"), &dir, &env)?;
        instance.wait_ready(Duration::from_secs(30)).await?;
        live.push(instance);
    }
    let addrs = |live: &[Instance]| live.iter().map(|i| i.addr).collect::<Vec<SocketAddr>>();
    let settings = proxy::Settings {
        bin: match o.proxy {
            ProxyKind::Nginx => o.nginx.clone(),
            ProxyKind::Haproxy => o.haproxy.clone(),
        },
        dir: dir.clone(),
        retry_503: o.retry_503,
        max_files: files,
        tls: if o.tls { Some(tls::make(&dir)?) } else { None },
        upstream_slots: o.instances + o.replacements,
    };
    let mut proxy = P::start(&settings, &addrs(&live)).await?;
    let target: Target = proxy.target().clone();
    println!(
        "  {} on {}/ in front of {:?}",
        P::NAME,
        target.origin(),
        addrs(&live)
    );

    // The page in Chromium, then the clients, started over 2 s; with TLS
    // every other client speaks HTTP/2.
    let browser = if o.browser {
        let url = format!("{}/?report=browser&days={}", target.origin(), o.days);
        let deadline = report_time * 2 + Duration::from_secs(120);
        Some(browser::Page::start(&url, deadline).await?)
    } else {
        None
    };
    let run_start = Instant::now();
    let deadline = run_start
        + report_time
        + termination_grace * o.replacements as u32
        + Duration::from_secs(120);
    let ramp = Duration::from_secs(2);
    let (_stop, stop) = tokio::sync::watch::channel(false);
    let clients: Vec<_> = (0..o.clients)
        .map(|i| {
            let r = i % o.reports;
            let client = client::Client {
                target: target.clone(),
                protocol: target.best(i % 2 == 0),
                path: report_path(&format!("deploy-{r}")),
                expect: report::ReportCheck::new(references[r].clone()),
                deadline,
                stop: stop.clone(),
                resume_from: None,
            };
            let start = run_start + ramp * i as u32 / o.clients as u32;
            tokio::spawn(async move {
                tokio::time::sleep_until(start.into()).await;
                client::run(client).await
            })
        })
        .collect();
    // The live feed: the producer, then its clients over the same ramp.
    let acked = live::Shared::default();
    let (stop_feed, feed_stop) = tokio::sync::watch::channel(false);
    let producer = (o.live_clients > 0).then(|| {
        tokio::spawn(live::produce(
            target.clone(),
            o.hit_rate,
            acked.clone(),
            feed_stop.clone(),
        ))
    });
    let feed_clients: Vec<_> = (0..o.live_clients)
        .map(|i| {
            let client = client::Client {
                target: target.clone(),
                protocol: target.best(i % 2 == 0),
                path: "/api/v1/analytics/live".into(),
                expect: live::LiveCheck::new(acked.clone()),
                deadline,
                stop: feed_stop.clone(),
                resume_from: None,
            };
            let start = run_start + ramp * i as u32 / o.live_clients as u32;
            tokio::spawn(async move {
                tokio::time::sleep_until(start.into()).await;
                client::run(client).await
            })
        })
        .collect();
    tokio::time::sleep(ramp + Duration::from_secs(1)).await;

    // The deploy: maxSurge 1, maxUnavailable 0, oldest first.
    let deploy_start = Instant::now();
    let mut steps = Vec::new();
    let mut redis_restart = None;
    for n in 0..o.replacements {
        if o.scenario == Scenario::RedisRestart && n == o.replacements / 2 {
            if let Some(redis) = redis.as_mut() {
                let hits_before = acked.lock().unwrap().ids.len();
                let away = redis.restart_empty().await?;
                println!(
                    "  {:>5.1} s  redis-server restarted empty (away {} ms, {hits_before} hits acknowledged before)",
                    run_start.elapsed().as_secs_f64(),
                    away.as_millis()
                );
                redis_restart = Some(hits_before);
            }
        }
        let old = live.remove(0);
        let old_label = format!("{} :{}", old.name, old.addr.port());
        let name = format!("analytics-{}", o.instances + n);
        let mut new = Instance::start(&o.server_bin, &name, &dir, &env)?;
        let ready = new.wait_ready(Duration::from_secs(30)).await?;
        let new_label = format!("{name} :{}", new.addr.port());
        println!(
            "  {:>5.1} s  {new_label} ready; replacing {old_label}",
            run_start.elapsed().as_secs_f64()
        );
        // Ready: the endpoint controller adds it.
        let mut endpoints = proxy.upstreams().to_vec();
        endpoints.push(new.addr);
        proxy.set_upstreams(&endpoints).await?;
        // A download in flight at SIGTERM, which the drain lets finish.
        let download = start_download(old.addr, &o).await;
        let kill_at = Instant::now() + termination_grace;
        let exit = match o.scenario {
            Scenario::Rolling | Scenario::RedisRestart => {
                // Terminating: out of the endpoints, then preStop, then SIGTERM.
                proxy.take_out(old.addr).await?;
                tokio::time::sleep(o.pre_stop).await;
                old.terminate(kill_at).await
            }
            Scenario::Race => {
                // SIGTERM while the proxy still routes to the old instance.
                let old_addr = old.addr;
                let exit = tokio::spawn(old.terminate(kill_at));
                tokio::time::sleep(o.endpoint_lag).await;
                proxy.take_out(old_addr).await?;
                exit.await.map_err(|e| format!("{old_label}: {e}"))?
            }
        };
        println!(
            "  {:>5.1} s  {old_label} exited {} {:.2} s after SIGTERM{}: {}",
            run_start.elapsed().as_secs_f64(),
            exit.status,
            exit.after_sigterm.as_secs_f64(),
            if exit.killed { " (SIGKILL)" } else { "" },
            exit.drain_report
        );
        steps.push(Step {
            old: old_label,
            new: new_label,
            ready,
            exit,
            download: download.await.unwrap_or_else(|e| Err(e.to_string())),
        });
        live.push(new);
    }
    let deploy_time = deploy_start.elapsed();

    // Every client to the end of its report.
    let mut outcomes = Vec::new();
    for client in clients {
        outcomes.push(
            client
                .await
                .map_err(|e| format!("a client panicked: {e}"))?,
        );
    }
    // The producer stops; each live client ends once it has the last
    // acknowledged hit; then an audit reads the log's whole epoch.
    let feed = match producer {
        None => None,
        Some(producer) => {
            let _ = stop_feed.send(true);
            producer
                .await
                .map_err(|e| format!("the producer panicked: {e}"))?;
            let mut clients = Vec::new();
            for client in feed_clients {
                clients.push(
                    client
                        .await
                        .map_err(|e| format!("a live client panicked: {e}"))?,
                );
            }
            let last = acked.lock().unwrap().last.clone();
            let audit = client::run(client::Client {
                target: target.clone(),
                protocol: target.best(false),
                path: "/api/v1/analytics/live".into(),
                expect: live::LiveCheck::from_start(acked.clone()),
                deadline: Instant::now() + Duration::from_secs(30),
                stop: feed_stop.clone(),
                resume_from: last.map(|l| format!("{}:0", l.epoch)),
            })
            .await;
            Some(Feed {
                clients,
                audit,
                acked: acked.clone(),
                redis_restart,
            })
        }
    };
    let page = match browser {
        Some(page) => Some(page.result(&browser_reference.rows).await),
        None => None,
    };
    // The last streams end here, so the proxy has logged them all; and a
    // last check as they go.
    let all_draining = all_draining(&target, live, &o, termination_grace).await;
    let requests = proxy.requests();
    proxy.stop().await;
    if let Some(redis) = redis.as_mut() {
        redis.stop().await;
    }

    for error in &all_draining {
        println!("  all draining: {error}");
    }
    let ok = all_draining.is_empty()
        & print_results(
            &o,
            P::NAME,
            &steps,
            &outcomes,
            feed.as_ref(),
            page.as_ref(),
            &requests,
            run_start,
            deploy_time,
        );
    if ok && !o.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("logs kept in {}", dir.display());
    }
    Ok(ok)
}

/// The end of the run: every instance SIGTERMed at once while the proxy
/// still routes to them (a restart of every pod, a node drained), each
/// drain held open by a download. Through the proxy, three times over, a
/// download must get the drain's own 503 and a hit must be stored, never an
/// error of the proxy's: nginx counted a retried 503 as a failure, took
/// every instance out of rotation for its `fail_timeout` (10 s) and
/// answered its own 502 to everything, POSTs included. The errors, if any.
async fn all_draining(
    target: &Target,
    live: Vec<Instance>,
    o: &Options,
    termination_grace: Duration,
) -> Vec<String> {
    let addrs: Vec<SocketAddr> = live.iter().map(|i| i.addr).collect();
    let mut downloads = Vec::new();
    for addr in &addrs {
        downloads.push(start_download(*addr, o).await);
    }
    let kill_at = Instant::now() + termination_grace;
    let exits: Vec<_> = live
        .into_iter()
        .map(|i| tokio::spawn(i.terminate(kill_at)))
        .collect();
    let mut errors = Vec::new();
    if o.download.is_zero() {
        // Nothing holds the drains open: no check.
        for exit in exits {
            let _ = exit.await;
        }
        return errors;
    }
    // Each says it drains on its readiness probe.
    for addr in &addrs {
        let instance = Target::plain(*addr);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let ready = http::get(&instance, "/healthz/ready", Duration::from_secs(2)).await;
            if let Ok((503, _)) = ready {
                break;
            }
            if Instant::now() > deadline {
                errors.push(format!("{addr} never said it drains"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let timeout = Duration::from_secs(5);
    for round in 1..=3 {
        let path = "/api/v1/analytics/export?report=all-draining&days=1";
        match http::get(target, path, timeout).await {
            Ok((503, _)) => {}
            other => errors.push(format!(
                "round {round}: a download got {other:?}, not the drain's 503"
            )),
        }
        let hit = r#"{"source":"deploy","path":"/all-draining"}"#.to_string();
        let collect = "/api/v1/analytics/collect";
        match http::send(target, "POST", collect, Some(hit), timeout, None).await {
            Ok((200, _)) => {}
            other => errors.push(format!("round {round}: a hit got {other:?}, not stored")),
        }
    }
    for download in downloads {
        if let Ok(Err(e)) = download.await {
            errors.push(format!("a download held by a drain: {e}"));
        }
    }
    for exit in exits {
        let _ = exit.await;
    }
    if errors.is_empty() {
        println!(
            "  all draining: every instance drained at once, still in rotation; through the proxy 3 of 3 downloads got the drain's 503 and 3 of 3 hits were stored"
        );
    }
    errors
}

/// A CSV download from `addr` that is still running `--download` seconds
/// after SIGTERM; checks that it arrives whole. Returns once the instance
/// has answered, so the download is admitted before the SIGTERM.
async fn start_download(
    addr: SocketAddr,
    o: &Options,
) -> tokio::task::JoinHandle<Result<(), String>> {
    let run_for = match o.scenario {
        Scenario::Rolling | Scenario::RedisRestart => o.pre_stop + o.download,
        Scenario::Race => o.download,
    };
    let days = (run_for.as_millis() as u64)
        .div_ceil(o.interval_ms.max(1))
        .min(365);
    let enabled = !o.download.is_zero();
    let (headers, started) = tokio::sync::oneshot::channel();
    let download = tokio::spawn(async move {
        if !enabled {
            return Ok(());
        }
        let path = format!("/api/v1/analytics/export?report=download&days={days}");
        let (status, body) = http::send(
            &Target::plain(addr),
            "GET",
            &path,
            None,
            Duration::from_secs(600),
            Some(headers),
        )
        .await?;
        let rows = body.lines().count().saturating_sub(1);
        match (status, rows == days as usize * 5) {
            (200, true) => Ok(()),
            _ => Err(format!(
                "download: status {status}, {rows} of {} rows",
                days * 5
            )),
        }
    });
    let _ = started.await;
    download
}
