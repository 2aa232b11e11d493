//! The driver's command line: `--help`, the options and their checks.

use std::{path::PathBuf, time::Duration};

pub(crate) const HELP: &str = "\
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
pub(crate) enum Scenario {
    Rolling,
    Race,
    RedisRestart,
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum ProxyKind {
    Nginx,
    Haproxy,
}

#[derive(Debug)]
pub(crate) struct Options {
    pub(crate) server_bin: PathBuf,
    pub(crate) proxy: ProxyKind,
    pub(crate) nginx: PathBuf,
    pub(crate) haproxy: PathBuf,
    pub(crate) tls: bool,
    pub(crate) scenario: Scenario,
    pub(crate) clients: usize,
    pub(crate) live_clients: usize,
    pub(crate) hit_rate: f64,
    pub(crate) redis: PathBuf,
    pub(crate) instances: usize,
    pub(crate) replacements: usize,
    pub(crate) days: u32,
    pub(crate) interval_ms: u64,
    pub(crate) reports: usize,
    pub(crate) pre_stop: Duration,
    pub(crate) termination_grace: Option<Duration>,
    pub(crate) endpoint_lag: Duration,
    pub(crate) download: Duration,
    pub(crate) retry_503: bool,
    pub(crate) browser: bool,
    pub(crate) keep: bool,
}

pub(crate) fn parse_options() -> Result<Options, String> {
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
