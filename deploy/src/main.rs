//! A rolling deploy of the analytics example through a real nginx, on one
//! machine, with clients that behave like browsers' `EventSource` and check
//! that every event of their report arrives exactly once.
//!
//! Run with: `scripts/rolling-deploy` (installs nginx, builds, runs this), or
//! `cargo run --release -p rolling-deploy -- --server-bin target/release/examples/analytics`.
//! `--help` lists the options. Every `SHUTDOWN_*` variable in the
//! environment reaches the instances.

mod browser;
mod client;
mod http;
mod instance;
mod nginx;
mod report;

use instance::{Exit, Instance};
use nginx::Nginx;
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

const HELP: &str = "\
rolling-deploy: replace the analytics example's instances behind nginx, one at a
time, while EventSource-like clients stream reports; exits 0 only when no event
was lost or duplicated and no client saw an error.

Options (defaults in brackets):
  --server-bin PATH      the analytics binary [target/release/analytics, else
                         target/release/examples/analytics]
  --nginx PATH           nginx [nginx on PATH, else /usr/sbin/nginx]
  --scenario S           rolling: leave the upstream, preStop, then SIGTERM;
                         race: SIGTERM first, leave the upstream --endpoint-lag later
                         [rolling]
  --clients N            EventSource clients [1000]
  --instances N          replicas behind nginx [3]
  --replacements N       instances replaced, oldest first [= --instances]
  --days N               days per report (1..=365) [200]
  --interval-ms N        ANALYTICS_EVENT_INTERVAL_MS: pace of a report [300]
  --reports N            distinct reports among the clients [10]
  --pre-stop S           preStop sleep, seconds [rolling 3, race 0]
  --termination-grace S  terminationGracePeriodSeconds [preStop + SHUTDOWN_GRACE_PERIOD + 5]
  --endpoint-lag S       race: SIGTERM to leaving the upstream, seconds [3]
  --download S           a CSV download in flight at each SIGTERM that needs S
                         more seconds (0: none) [3]
  --no-retry-503         nginx passes a 503 to the client (ingress-nginx's default)
  --skip-browser         no headless Chromium page
  --keep                 keep the temporary directory (logs) even on success
Environment: SHUTDOWN_* reach the instances (defaults here:
SHUTDOWN_RECONNECT_DELAY=1, SHUTDOWN_GRACE_PERIOD=10).
";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Scenario {
    Rolling,
    Race,
}

#[derive(Debug)]
struct Options {
    server_bin: PathBuf,
    nginx: PathBuf,
    scenario: Scenario,
    clients: usize,
    instances: usize,
    replacements: usize,
    days: u32,
    interval_ms: u64,
    reports: usize,
    pre_stop: Duration,
    termination_grace: Option<Duration>,
    endpoint_lag: Duration,
    download: Duration,
    retry_503: bool,
    browser: bool,
    keep: bool,
}

fn parse_options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut o = Options {
        server_bin: [
            "target/release/analytics",
            "target/release/examples/analytics",
        ]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| "target/release/examples/analytics".into()),
        nginx: find_nginx(),
        scenario: Scenario::Rolling,
        clients: 1000,
        instances: 3,
        replacements: 0,
        days: 200,
        interval_ms: 300,
        reports: 10,
        pre_stop: Duration::MAX,
        termination_grace: None,
        endpoint_lag: Duration::from_secs(3),
        download: Duration::from_secs(3),
        retry_503: true,
        browser: true,
        keep: false,
    };
    let mut replacements = None;
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T, String> {
            v.parse()
                .map_err(|_| format!("invalid {name} {v:?}: expected a number"))
        }
        fn secs(name: &str, v: String) -> Result<Duration, String> {
            Duration::try_from_secs_f64(num(name, v.clone())?)
                .map_err(|_| format!("invalid {name} {v:?}: expected seconds"))
        }
        match arg.as_str() {
            "--help" | "-h" => return Err(String::new()),
            "--server-bin" => o.server_bin = value()?.into(),
            "--nginx" => o.nginx = value()?.into(),
            "--scenario" => {
                o.scenario = match value()?.as_str() {
                    "rolling" => Scenario::Rolling,
                    "race" => Scenario::Race,
                    v => {
                        return Err(format!(
                            "invalid --scenario {v:?}: expected rolling or race"
                        ));
                    }
                }
            }
            "--clients" => o.clients = num(&arg, value()?)?,
            "--instances" => o.instances = num(&arg, value()?)?,
            "--replacements" => replacements = Some(num(&arg, value()?)?),
            "--days" => o.days = num(&arg, value()?)?,
            "--interval-ms" => o.interval_ms = num(&arg, value()?)?,
            "--reports" => o.reports = num(&arg, value()?)?,
            "--pre-stop" => o.pre_stop = secs(&arg, value()?)?,
            "--termination-grace" => o.termination_grace = Some(secs(&arg, value()?)?),
            "--endpoint-lag" => o.endpoint_lag = secs(&arg, value()?)?,
            "--download" => o.download = secs(&arg, value()?)?,
            "--no-retry-503" => o.retry_503 = false,
            "--skip-browser" => o.browser = false,
            "--keep" => o.keep = true,
            _ => return Err(format!("unknown option {arg:?} (see --help)")),
        }
    }
    o.replacements = replacements.unwrap_or(o.instances);
    if o.pre_stop == Duration::MAX {
        o.pre_stop = match o.scenario {
            Scenario::Rolling => Duration::from_secs(3),
            Scenario::Race => Duration::ZERO,
        };
    }
    if !(1..=365).contains(&o.days) {
        return Err(format!("invalid --days {}: expected 1 to 365", o.days));
    }
    if o.clients == 0 || o.instances < 2 || o.reports == 0 {
        return Err("--clients and --reports must be at least 1, --instances at least 2".into());
    }
    if !o.server_bin.exists() {
        return Err(format!(
            "the server binary {} is missing: build it (scripts/rolling-deploy does) or pass --server-bin",
            o.server_bin.display()
        ));
    }
    Ok(o)
}

fn find_nginx() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into()])
        .map(|dir| dir.join("nginx"))
        .find(|p| p.exists())
        .unwrap_or_else(|| "nginx".into())
}

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
    match runtime.block_on(run(options, files)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("rolling-deploy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One replacement, as the table shows it.
struct Step {
    old: String,
    new: String,
    ready: Duration,
    exit: Exit,
    download: Result<(), String>,
}

async fn run(o: Options, files: u64) -> Result<bool, String> {
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
         nginx retries 503: {}\n  instances get {}\n  logs in {}",
        o.scenario,
        o.clients,
        o.instances,
        o.replacements,
        o.days,
        o.interval_ms,
        o.pre_stop,
        termination_grace,
        o.retry_503,
        shutdown_env.join(" "),
        dir.display()
    );
    let env = [("ANALYTICS_EVENT_INTERVAL_MS", o.interval_ms.to_string())];

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
    let nginx = Nginx::start(&o.nginx, &dir, &addrs(&live), o.retry_503, files).await?;
    println!(
        "  nginx on http://{}/ in front of {:?}",
        nginx.addr,
        addrs(&live)
    );

    // The page in Chromium, then the clients, started over 2 s.
    let browser = if o.browser {
        let url = format!("http://{}/?report=browser&days={}", nginx.addr, o.days);
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
    let clients: Vec<_> = (0..o.clients)
        .map(|i| {
            let r = i % o.reports;
            let (addr, path, reference) = (
                nginx.addr,
                report_path(&format!("deploy-{r}")),
                references[r].clone(),
            );
            let start = run_start + ramp * i as u32 / o.clients as u32;
            tokio::spawn(async move {
                tokio::time::sleep_until(start.into()).await;
                client::run(addr, path, reference, deadline).await
            })
        })
        .collect();
    tokio::time::sleep(ramp + Duration::from_secs(1)).await;

    // The deploy: maxSurge 1, maxUnavailable 0, oldest first.
    let deploy_start = Instant::now();
    let mut steps = Vec::new();
    for n in 0..o.replacements {
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
        let mut endpoints = addrs(&live);
        endpoints.push(new.addr);
        nginx
            .set_upstreams(&[endpoints.clone(), vec![old.addr]].concat())
            .await?;
        // A download in flight at SIGTERM, which the drain lets finish.
        let download = start_download(old.addr, &o).await;
        let kill_at = Instant::now() + termination_grace;
        let exit = match o.scenario {
            Scenario::Rolling => {
                // Terminating: out of the endpoints, then preStop, then SIGTERM.
                nginx.set_upstreams(&endpoints).await?;
                tokio::time::sleep(o.pre_stop).await;
                old.terminate(kill_at).await
            }
            Scenario::Race => {
                // SIGTERM while the proxy still routes to the old instance.
                let exit = tokio::spawn(old.terminate(kill_at));
                tokio::time::sleep(o.endpoint_lag).await;
                nginx.set_upstreams(&endpoints).await?;
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
    let page = match browser {
        Some(page) => Some(page.result(&browser_reference.rows).await),
        None => None,
    };
    let access_log = nginx.access_log();
    for instance in live {
        instance.terminate(Instant::now() + termination_grace).await;
    }
    nginx.stop().await;

    let ok = print_results(
        &o,
        &steps,
        &outcomes,
        page.as_ref(),
        &access_log,
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

/// A CSV download from `addr` that is still running `--download` seconds
/// after SIGTERM; checks that it arrives whole. Returns once the instance
/// has answered, so the download is admitted before the SIGTERM.
async fn start_download(
    addr: SocketAddr,
    o: &Options,
) -> tokio::task::JoinHandle<Result<(), String>> {
    let run_for = match o.scenario {
        Scenario::Rolling => o.pre_stop + o.download,
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
        let (status, body) =
            http::get_with(addr, &path, Duration::from_secs(600), Some(headers)).await?;
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

/// The table and the final line; true when nothing was lost, duplicated or
/// refused, no instance was killed and the page completed its report.
fn print_results(
    o: &Options,
    steps: &[Step],
    outcomes: &[client::Outcome],
    page: Option<&Result<browser::PageResult, String>>,
    access_log: &str,
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
    let notice_only = sum(|c| c.notice_only as u64);
    let cut = sum(|c| c.cut as u64);
    let completed = outcomes.iter().filter(|c| c.completed).count();
    let crossed = outcomes.iter().filter(|c| c.notices > 0).count();
    let mut errors: BTreeMap<&str, usize> = BTreeMap::new();
    for c in outcomes {
        if let Some(e) = &c.client_error {
            *errors.entry(e.as_str()).or_default() += 1;
        }
    }
    let client_errors: usize = errors.values().sum();
    let mut per_second: BTreeMap<u64, u64> = BTreeMap::new();
    for t in outcomes.iter().flat_map(|c| &c.reconnect_times) {
        *per_second
            .entry(t.duration_since(run_start).as_secs())
            .or_default() += 1;
    }
    let peak = per_second.values().copied().max().unwrap_or(0);
    let mut gaps: Vec<u128> = outcomes
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

    // What nginx saw: 503s it retried on another instance, and answers
    // other than 200 that reached a client.
    let (mut retried_503, mut passed_on) = (0, BTreeMap::<&str, usize>::new());
    for line in access_log
        .lines()
        .filter(|l| l.contains("/api/v1/analytics/stream"))
    {
        let status = line.split(' ').nth(1).unwrap_or("?");
        let up_status = line
            .split(" up_status=")
            .nth(1)
            .and_then(|r| r.split(" last_event_id").next())
            .unwrap_or("");
        if up_status.contains("503") && status == "200" {
            retried_503 += 1;
        }
        if status != "200" {
            *passed_on.entry(status).or_default() += 1;
        }
    }

    println!("\nclients:");
    println!("| measure | value |");
    println!("|---|---|");
    let rows: Vec<(&str, String)> = vec![
        (
            "clients (completed / crossed a restart)",
            format!("{} ({completed} / {crossed})", outcomes.len()),
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
            "answers that were the notice alone (a draining instance)",
            notice_only.to_string(),
        ),
        ("streams cut without a notice", cut.to_string()),
        (
            "503s nginx retried on another instance",
            retried_503.to_string(),
        ),
        (
            "non-200 stream answers nginx passed on",
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
                "browser page: {} rows, {} restart(s), {} failed reconnect(s), states {}: {}",
                p.rows,
                p.restarts,
                p.reconnects,
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
    println!(
        "\nrolling deploy: clients={} events={events} lost={lost} duplicated={duplicated} \
         client_errors={client_errors} reconnects={reconnects} peak_reconnects_per_s={peak} \
         max_gap_ms={max_gap} deploy_s={:.1}",
        outcomes.len(),
        deploy_time.as_secs_f64()
    );
    let mut failures = Vec::new();
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
