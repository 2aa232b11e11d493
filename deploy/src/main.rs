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
mod proxy;
mod report;
mod tls;

use connect::Target;
use haproxy::Haproxy;
use instance::{Exit, Instance};
use nginx::Nginx;
use proxy::{Logged, Proxy};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

const HELP: &str = "\
rolling-deploy: replace the analytics example's instances behind a proxy, one
at a time, while EventSource-like clients stream reports; exits 0 only when no
event was lost or duplicated and no client saw an error.

Options (defaults in brackets):
  --server-bin PATH      the analytics binary [target/release/analytics, else
                         target/release/examples/analytics]
  --proxy P              nginx (reloaded with a new upstream) or haproxy (its
                         runtime API) [nginx]
  --nginx PATH           nginx [nginx on PATH, else /usr/sbin/nginx]
  --haproxy PATH         HAProxy [haproxy on PATH, else /usr/sbin/haproxy]
  --tls                  the proxy terminates TLS (a CA and certificate made
                         with openssl for the run) with HTTP/2 on; the page and
                         every other client speak HTTP/2, the rest HTTP/1.1
  --scenario S           rolling: leave the upstream, preStop, then SIGTERM;
                         race: SIGTERM first, leave the upstream --endpoint-lag later;
                         redis-restart: rolling, with Redis restarted empty
                         halfway through [rolling]
  --clients N            EventSource clients of the report stream [1000]
  --live-clients N       EventSource clients of the live feed (0: no live feed,
                         no Redis) [100]
  --hit-rate R           hits per second the producer POSTs [50]
  --redis PATH           redis-server [redis-server on PATH, else /usr/bin]
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
  --no-retry-503         the proxy passes a 503 to the client (ingress-nginx's
                         default); without it a GET refused with 503 is retried
  --skip-browser         no headless Chromium page (with the page, every instance
                         is replaced so that it crosses a restart)
  --keep                 keep the temporary directory (logs) even on success
Environment: SHUTDOWN_* reach the instances (defaults here:
SHUTDOWN_RECONNECT_DELAY=1, SHUTDOWN_GRACE_PERIOD=10).
";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Scenario {
    Rolling,
    Race,
    RedisRestart,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum ProxyKind {
    Nginx,
    Haproxy,
}

#[derive(Debug)]
struct Options {
    server_bin: PathBuf,
    proxy: ProxyKind,
    nginx: PathBuf,
    haproxy: PathBuf,
    tls: bool,
    scenario: Scenario,
    clients: usize,
    live_clients: usize,
    hit_rate: f64,
    redis: PathBuf,
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
        proxy: ProxyKind::Nginx,
        nginx: find_bin("nginx"),
        haproxy: find_bin("haproxy"),
        tls: false,
        scenario: Scenario::Rolling,
        clients: 1000,
        live_clients: 100,
        hit_rate: 50.0,
        redis: find_bin("redis-server"),
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
            "--proxy" => {
                o.proxy = match value()?.as_str() {
                    "nginx" => ProxyKind::Nginx,
                    "haproxy" => ProxyKind::Haproxy,
                    v => {
                        return Err(format!("invalid --proxy {v:?}: expected nginx or haproxy"));
                    }
                }
            }
            "--nginx" => o.nginx = value()?.into(),
            "--haproxy" => o.haproxy = value()?.into(),
            "--tls" => o.tls = true,
            "--scenario" => {
                o.scenario = match value()?.as_str() {
                    "rolling" => Scenario::Rolling,
                    "race" => Scenario::Race,
                    "redis-restart" => Scenario::RedisRestart,
                    v => {
                        return Err(format!(
                            "invalid --scenario {v:?}: expected rolling, race or redis-restart"
                        ));
                    }
                }
            }
            "--clients" => o.clients = num(&arg, value()?)?,
            "--live-clients" => o.live_clients = num(&arg, value()?)?,
            "--hit-rate" => o.hit_rate = num(&arg, value()?)?,
            "--redis" => o.redis = value()?.into(),
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
            Scenario::Rolling | Scenario::RedisRestart => Duration::from_secs(3),
            Scenario::Race => Duration::ZERO,
        };
    }
    if !(1..=365).contains(&o.days) {
        return Err(format!("invalid --days {}: expected 1 to 365", o.days));
    }
    if o.clients == 0 || o.instances < 2 || o.reports == 0 {
        return Err("--clients and --reports must be at least 1, --instances at least 2".into());
    }
    if o.scenario == Scenario::RedisRestart && o.live_clients == 0 {
        return Err("--scenario redis-restart needs live clients (--live-clients)".into());
    }
    if o.browser && o.replacements < o.instances {
        return Err(format!(
            "--replacements {} of {} instances: the page may stream from one that is not \
             replaced and never cross a restart; replace them all or pass --skip-browser",
            o.replacements, o.instances
        ));
    }
    if !o.server_bin.exists() {
        return Err(format!(
            "the server binary {} is missing: build it (scripts/rolling-deploy does) or pass --server-bin",
            o.server_bin.display()
        ));
    }
    Ok(o)
}

/// `name` on PATH, else in /usr/sbin (where Debian puts nginx and HAProxy)
/// or /usr/bin.
fn find_bin(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| name.into())
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
    // The last streams end here, so the proxy has logged them all.
    for instance in live {
        instance.terminate(Instant::now() + termination_grace).await;
    }
    let requests = proxy.requests();
    proxy.stop().await;
    if let Some(redis) = redis.as_mut() {
        redis.stop().await;
    }

    let ok = print_results(
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

/// The table and the final line; true when nothing was lost, duplicated or
/// refused, no instance was killed and the page completed its report.
#[allow(clippy::too_many_arguments)]
fn print_results(
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
