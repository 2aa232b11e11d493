//! Drain settings: grace period, notice text, reconnect delay and its spread,
//! behaviour.

use std::{borrow::Cow, fmt, time::Duration};

/// The environment variable read by [`Config::from_env`] for the grace period.
pub const GRACE_PERIOD_ENV: &str = "SHUTDOWN_GRACE_PERIOD";

/// The environment variable read by [`Config::from_env`] for the reconnect delay.
pub const RECONNECT_DELAY_ENV: &str = "SHUTDOWN_RECONNECT_DELAY";

/// The environment variable read by [`Config::from_env`] for the linger.
pub const LINGER_ENV: &str = "SHUTDOWN_LINGER";

/// The environment variable read by [`Config::from_env`] for the reconnect
/// jitter.
pub const RECONNECT_JITTER_ENV: &str = "SHUTDOWN_RECONNECT_JITTER";

/// The environment variable read by [`Config::from_env`] for the notice window.
pub const NOTICE_WINDOW_ENV: &str = "SHUTDOWN_NOTICE_WINDOW";

/// The environment variable read by [`Config::from_env`] for the reconnect
/// rate, in streams per second.
pub const RECONNECT_RATE_ENV: &str = "SHUTDOWN_RECONNECT_RATE";

/// The longest duration accepted: one day. Anything longer is a typo.
const MAX_SECONDS: f64 = 86_400.0;

/// How a drain behaves: grace period, notice text and what happens to streams
/// and requests once it starts.
///
/// Build one with [`Config::default`] or [`Config::from_env`] and the setters,
/// then give it to [`DrainHandle::new`](crate::DrainHandle::new) (or
/// [`DrainHandle::try_new`](crate::DrainHandle::try_new)). Each setter
/// returns the new `Config` (`config.grace_period(x);` alone does nothing, and
/// warns); the `get_*` methods read a setting back, as
/// `std::process::Command`'s do.
///
/// # Durations
///
/// Every duration may be anything up to `Duration::MAX`, which means "as long
/// as it takes": sums saturate, and an instant too far to represent is about
/// thirty years away (tokio's own "never"). The notice carries the saturated
/// delay. [`from_env`](Self::from_env) alone refuses values above a day, which
/// are typos in an environment.
///
/// ```
/// use std::time::Duration;
/// use tower_graceful_sse::Config;
///
/// let config = Config::default()
///     .grace_period(Duration::from_secs(10))
///     .reconnect_delay(Duration::from_secs(5));
/// assert_eq!(config.message_text(), "Server restarting, please reconnect in 5s");
/// ```
#[derive(Clone, Debug, PartialEq)]
#[must_use = "a Config does nothing until given to DrainHandle::new; each setter returns the new one"]
pub struct Config {
    pub(crate) grace_period: Duration,
    pub(crate) reconnect_delay: Duration,
    pub(crate) linger: Duration,
    pub(crate) reconnect_jitter: Duration,
    pub(crate) reconnect_rate: Option<f64>,
    pub(crate) notice_window: Duration,
    pub(crate) seed: Option<u64>,
    pub(crate) message: Option<String>,
    pub(crate) end_after_notice: bool,
    pub(crate) sse_rejection_as_notice: bool,
}

impl Default for Config {
    /// A 20 s grace period, a reconnect delay of 30 s plus up to 15 s of
    /// jitter, every notice at once (no window), a 1 s linger, the default
    /// message, streams ended right after their notice, SSE requests rejected
    /// with a notice.
    fn default() -> Self {
        Self {
            grace_period: Duration::from_secs(20),
            reconnect_delay: Duration::from_secs(30),
            linger: Duration::from_secs(1),
            reconnect_jitter: DEFAULT_JITTER,
            reconnect_rate: None,
            notice_window: Duration::ZERO,
            seed: None,
            message: None,
            end_after_notice: true,
            sse_rejection_as_notice: true,
        }
    }
}

impl Config {
    /// The defaults, with the grace period read from `SHUTDOWN_GRACE_PERIOD`,
    /// the reconnect delay from `SHUTDOWN_RECONNECT_DELAY`, its jitter from
    /// `SHUTDOWN_RECONNECT_JITTER` or its rate from `SHUTDOWN_RECONNECT_RATE`,
    /// the notice window from `SHUTDOWN_NOTICE_WINDOW` and the linger from
    /// `SHUTDOWN_LINGER`, where set.
    ///
    /// Durations are in seconds, whole or fractional (`20`, `0.5`, `0`); the
    /// rate is in streams per second (`500`, `2.5`).
    ///
    /// # Errors
    ///
    /// An unset variable gives the default; a value that is empty, not a
    /// number, negative, not finite or longer than a day (a rate: below one
    /// stream a day) is an error that names the variable and the value as
    /// set. So is a notice window that does not end
    /// before the grace period (see [`validate`](Self::validate)): the error
    /// names both variables and their values.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut config = Self::default();
        if let Some(grace) = env_seconds(GRACE_PERIOD_ENV)? {
            config.grace_period = grace;
        }
        if let Some(delay) = env_seconds(RECONNECT_DELAY_ENV)? {
            config.reconnect_delay = delay;
        }
        if let Some(linger) = env_seconds(LINGER_ENV)? {
            config.linger = linger;
        }
        if let Some(jitter) = env_seconds(RECONNECT_JITTER_ENV)? {
            config.reconnect_jitter = jitter;
        }
        if let Some(rate) = env_rate(RECONNECT_RATE_ENV)? {
            config.reconnect_rate = Some(rate);
        }
        if let Some(window) = env_seconds(NOTICE_WINDOW_ENV)? {
            config.notice_window = window;
        }
        // Only a window from the environment can be refused here (the
        // default has none): name the variables, the knobs to turn, with
        // their values as set.
        if !config.window_fits() {
            let shown = |name, d| std::env::var(name).unwrap_or_else(|_| seconds(d));
            return Err(window_error(
                (
                    NOTICE_WINDOW_ENV,
                    shown(NOTICE_WINDOW_ENV, config.notice_window),
                ),
                (
                    GRACE_PERIOD_ENV,
                    shown(GRACE_PERIOD_ENV, config.grace_period),
                ),
            ));
        }
        Ok(config)
    }

    /// Checks the settings together: a non-zero
    /// [notice window](Self::notice_window) must end before the
    /// [grace period](Self::grace_period) does, so that every stream gets its
    /// notice before the deadline ends the rest.
    ///
    /// [`from_env`](Self::from_env) calls it, and
    /// [`DrainHandle::new`](crate::DrainHandle::new) panics on what it
    /// rejects.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setters (`Config::notice_window`,
    /// `Config::grace_period`), both values and why; from
    /// [`from_env`](Self::from_env), the variables a value came from.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_graceful_sse::Config;
    ///
    /// let config = Config::default().notice_window(Duration::from_secs(20));
    /// assert_eq!(
    ///     config.validate().unwrap_err().to_string(),
    ///     "invalid Config::notice_window=\"20\": must end before the grace period, \
    ///      Config::grace_period=\"20\"; make the window shorter or the grace period longer"
    /// );
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(rate) = self.reconnect_rate {
            check_rate("Config::reconnect_rate", &rate.to_string(), rate)?;
        }
        if !self.window_fits() {
            return Err(window_error(
                ("Config::notice_window", seconds(self.notice_window)),
                ("Config::grace_period", seconds(self.grace_period)),
            ));
        }
        Ok(())
    }

    /// No notice window, or one that ends before the grace period (one of
    /// `Duration::MAX` never ends: any window fits).
    fn window_fits(&self) -> bool {
        self.notice_window.is_zero()
            || self.notice_window < self.grace_period
            || self.grace_period == Duration::MAX
    }

    /// How long a drain waits for streams to close before it ends the rest
    /// (default 20 s). Zero ends every stream at once, after its notice where
    /// the stream stands at an event boundary.
    pub fn grace_period(mut self, grace_period: Duration) -> Self {
        self.grace_period = grace_period;
        self
    }

    /// The delay clients are asked to wait before they reconnect (default
    /// 30 s): the frame's `retry:` field, its `reconnect_delay` and the
    /// rejection's `Retry-After`; each stream's own delay is drawn from
    /// `reconnect_delay ..= reconnect_delay + reconnect_jitter`. Rounded up
    /// to whole milliseconds, the unit of `retry:`.
    pub fn reconnect_delay(mut self, reconnect_delay: Duration) -> Self {
        self.reconnect_delay = reconnect_delay;
        self
    }

    /// How long after the grace period connections that still carry a
    /// response are left to write what they hold (default 1 s); then they
    /// are closed, whether or not their client reads.
    ///
    /// The end of the linger is the drain's [deadline](crate::Drain::deadline):
    /// [`GracefulIo`](crate::GracefulIo), the axum listener and the
    /// hyper-util watcher close their connections there, so a client that
    /// stopped reading cannot keep the server alive.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// How much later than [`reconnect_delay`](Self::reconnect_delay) a
    /// client may be asked to come back (default 15 s): each notice carries
    /// its own delay, drawn uniformly from `reconnect_delay ..=
    /// reconnect_delay + reconnect_jitter` in whole milliseconds, and its
    /// `retry:`, `reconnect_delay` and default message agree. A `503`'s
    /// `Retry-After` is drawn the same way, rounded up to whole seconds.
    ///
    /// Without it every client comes back to the surviving servers in the
    /// same instant. Clients that honour `retry:` (browsers do, exactly)
    /// return spread over the jitter: with the default 15 s, 10,000 streams
    /// drained together give the successor about 670 reconnects in its
    /// busiest second instead of all 10,000 (see `BENCHMARKS.md`). Zero gives
    /// every stream the same frame, as before this setting existed.
    pub fn reconnect_jitter(mut self, reconnect_jitter: Duration) -> Self {
        self.reconnect_jitter = reconnect_jitter;
        self
    }

    /// Spreads the reconnects over a window sized to the load instead of the
    /// fixed [jitter](Self::reconnect_jitter): at most `per_second` streams
    /// of this instance are asked to come back in any aligned second of the
    /// window, and at most `per_second` rounded up, plus one, in any
    /// one-second span (which may catch the ends of two slots) (default: not
    /// set, the jitter applies).
    ///
    /// When the drain starts with `open` SSE streams, the window
    /// `reconnect_delay ..= reconnect_delay + open / per_second` is cut into
    /// `open` slots of `1 / per_second`, and each notice's delay is a random
    /// moment (in whole milliseconds) in a slot of its own: the delays fill
    /// the window evenly, so no second gets more than `per_second` (a
    /// uniform draw puts about 2 % more than that in the busiest second of
    /// 1,000 streams at 500/s). Its `retry:`, JSON
    /// `reconnect_delay`, default message and a `503`'s `Retry-After` agree,
    /// as with the jitter; [`DrainReport::reconnect_window`] says the window
    /// used. 1,000 streams at 500 per second come back within 2 s of the
    /// delay, 10,000 within 20 s: the same peak at the successors, and no
    /// client of a lightly loaded instance waits for a spread sized for the
    /// heaviest one. Streams whose handler resolves after the drain started
    /// draw from the same window; in a rolling update (the instance leaves
    /// the load balancer before `SIGTERM`) they are few. Requests rejected
    /// during the drain take the slots after the window's, one each (the
    /// `k`th rejection slot `open + k`), so the rate holds for them too, even
    /// with no stream open: their `Retry-After` runs past the window as they
    /// come.
    ///
    /// Set, it replaces the jitter; clear it with
    /// [`reconnect_jitter`](Self::reconnect_jitter)'s fixed spread by not
    /// setting it. `per_second` must be finite and above zero: see
    /// [`validate`](Self::validate).
    ///
    /// [`DrainReport::reconnect_window`]: crate::DrainReport::reconnect_window
    pub fn reconnect_rate(mut self, per_second: f64) -> Self {
        self.reconnect_rate = Some(per_second);
        self
    }

    /// Spreads the notices over this long from the start of the drain
    /// (default zero: every stream at once).
    ///
    /// Each stream draws a moment in the window, uniformly (as Envoy's
    /// gradual drain does) within the band of its [`DrainPriority`]
    /// (lowest first), when it first sees the drain, and keeps streaming
    /// untouched until then; it gets its one notice at the first event
    /// boundary from that moment on, an idle stream at that moment exactly.
    /// At the end of the grace period every stream still open ends alike.
    ///
    /// It must end before the grace period: see [`validate`](Self::validate).
    /// A window makes every drain last at least as long as it; it spreads the
    /// load of clients that reconnect at once whatever `retry:` says, and lets
    /// high-priority streams keep their server longest.
    ///
    /// Why no window by default: the [jitter](Self::reconnect_jitter) alone
    /// already spreads clients that honour `retry:`, and a default window
    /// would lengthen every drain (and every rolling update) by itself, and
    /// turn any `SHUTDOWN_GRACE_PERIOD` at or under it into a configuration
    /// error for users who set nothing else.
    ///
    /// [`DrainPriority`]: crate::DrainPriority
    pub fn notice_window(mut self, notice_window: Duration) -> Self {
        self.notice_window = notice_window;
        self
    }

    /// Makes the per-stream delays and moments in the window a function of
    /// `seed` and the order in which streams draw them, for tests. Without
    /// it (the default) each drain seeds from the standard library's
    /// `RandomState` and the clock.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The human-readable `message` of the shutdown event (default
    /// `Server restarting, please reconnect in {reconnect_delay}s`).
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// Whether a stream ends right after its notice (`true`, the default) or
    /// runs on until it ends by itself or the grace period runs out.
    pub fn end_after_notice(mut self, end: bool) -> Self {
        self.end_after_notice = end;
        self
    }

    /// How a request that accepts `text/event-stream` is rejected while
    /// draining: with `200 OK` carrying only the shutdown frame (`true`, the
    /// default), or with the plain `503 Service Unavailable`.
    ///
    /// A browser's `EventSource` treats any status but 200 as fatal and never
    /// reconnects (WHATWG HTML, *fail the connection*), whereas a stream that
    /// ends is retried after its `retry:` delay. The notice therefore keeps
    /// browsers reconnecting until they reach a server that is not draining.
    /// Choose `false` if the clients are not browsers and handle 503 themselves.
    pub fn sse_rejection_as_notice(mut self, notice: bool) -> Self {
        self.sse_rejection_as_notice = notice;
        self
    }

    /// The [grace period](Self::grace_period).
    #[must_use]
    pub fn get_grace_period(&self) -> Duration {
        self.grace_period
    }

    /// The [reconnect delay](Self::reconnect_delay).
    #[must_use]
    pub fn get_reconnect_delay(&self) -> Duration {
        self.reconnect_delay
    }

    /// The [linger](Self::linger).
    #[must_use]
    pub fn get_linger(&self) -> Duration {
        self.linger
    }

    /// The [reconnect rate](Self::reconnect_rate), in streams per second, if
    /// set.
    #[must_use]
    pub fn get_reconnect_rate(&self) -> Option<f64> {
        self.reconnect_rate
    }

    /// The [reconnect jitter](Self::reconnect_jitter).
    #[must_use]
    pub fn get_reconnect_jitter(&self) -> Duration {
        self.reconnect_jitter
    }

    /// The [notice window](Self::notice_window).
    #[must_use]
    pub fn get_notice_window(&self) -> Duration {
        self.notice_window
    }

    /// The [seed](Self::seed), if one was set.
    #[must_use]
    pub fn get_seed(&self) -> Option<u64> {
        self.seed
    }

    /// The [message](Self::message), if one was set (see
    /// [`message_text`](Self::message_text) for the text sent).
    #[must_use]
    pub fn get_message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// Whether a stream [ends after its notice](Self::end_after_notice).
    #[must_use]
    pub fn get_end_after_notice(&self) -> bool {
        self.end_after_notice
    }

    /// Whether an SSE request is
    /// [rejected with a notice](Self::sse_rejection_as_notice).
    #[must_use]
    pub fn get_sse_rejection_as_notice(&self) -> bool {
        self.sse_rejection_as_notice
    }

    /// The message the shutdown event carries, for a stream whose delay is
    /// exactly [`reconnect_delay`](Self::reconnect_delay) (with jitter, the
    /// default message of each stream names its own delay).
    #[must_use]
    pub fn message_text(&self) -> String {
        match &self.message {
            Some(message) => message.clone(),
            None => default_message(self.reconnect_delay),
        }
    }
}

/// The default message's text around the delay in seconds.
pub(crate) const DEFAULT_MESSAGE: (&str, &str) = ("Server restarting, please reconnect in ", "s");

/// The default jitter: with uniform delays over 15 s, 10,000 clients put
/// about 670 (6.7 %) into the successor's busiest second, under the 10 %
/// asked for with room for chance; it adds 7.5 s to the mean wait.
const DEFAULT_JITTER: Duration = Duration::from_secs(15);

/// The default message for a delay.
pub(crate) fn default_message(delay: Duration) -> String {
    format!(
        "{}{}{}",
        DEFAULT_MESSAGE.0,
        seconds(delay),
        DEFAULT_MESSAGE.1
    )
}

/// `Retry-After` wants whole seconds: round up so nobody comes back early
/// (saturating: `Duration::MAX` gives `u64::MAX`).
pub(crate) fn whole_seconds_up(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

/// About thirty years: what tokio itself takes for "never".
const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `at + d`, saturated: an instant too far to represent is about thirty years
/// away (tokio's timers treat anything that far as "never"), so that
/// `Duration::MAX` means "as long as it takes" instead of a panic.
pub(crate) fn after(at: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    at.checked_add(d.min(FAR))
        .or_else(|| at.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(at)
}

/// `30` for whole seconds, `1.5` otherwise: exact, in decimal (a float would
/// write 30.798 s as `30.798000000000002`), and a valid JSON number.
pub(crate) fn seconds(d: Duration) -> String {
    let nanos = d.subsec_nanos();
    if nanos == 0 {
        return d.as_secs().to_string();
    }
    let fraction = format!("{nanos:09}");
    format!("{}.{}", d.as_secs(), fraction.trim_end_matches('0'))
}

/// A notice window that does not end before the grace period: each named
/// with its value.
fn window_error(window: (&'static str, String), grace: (&'static str, String)) -> ConfigError {
    ConfigError::new(
        window.0,
        window.1,
        format!(
            "must end before the grace period, {}={:?}; \
             make the window shorter or the grace period longer",
            grace.0, grace.1
        ),
    )
}

/// Reads a duration in seconds from the environment, if the variable is set.
fn env_seconds(name: &'static str) -> Result<Option<Duration>, ConfigError> {
    env_var(name, parse_seconds)
}

/// Reads a rate in streams per second from the environment, if the variable
/// is set.
fn env_rate(name: &'static str) -> Result<Option<f64>, ConfigError> {
    env_var(name, parse_rate)
}

/// Reads `name` and parses it with `parse`, if the variable is set.
fn env_var<T>(
    name: &'static str,
    parse: fn(&'static str, &str) -> Result<T, ConfigError>,
) -> Result<Option<T>, ConfigError> {
    match std::env::var(name) {
        Ok(value) => parse(name, &value).map(Some),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(value)) => Err(ConfigError::new(
            name,
            value.to_string_lossy(),
            "is not valid UTF-8",
        )),
    }
}

/// Parses a rate in streams per second: a number above zero, and at least
/// one stream a day (below, a typo, as a duration above a day is: each
/// stream's slot of the window is `1 / rate`).
pub(crate) fn parse_rate(name: &'static str, value: &str) -> Result<f64, ConfigError> {
    let trimmed = value.trim();
    let rate: f64 = trimmed.parse().map_err(|_| {
        ConfigError::new(
            name,
            value,
            "is not a number of streams per second such as 500 or 2.5",
        )
    })?;
    check_rate(name, value, rate)?;
    if 1.0 / rate > MAX_SECONDS {
        return Err(ConfigError::new(
            name,
            value,
            "is below one stream a day (0.0000116 per second)",
        ));
    }
    Ok(rate)
}

/// A rate must be finite and above zero: zero would ask every client to wait
/// forever, and the window is `open / rate`.
fn check_rate(name: &'static str, value: &str, rate: f64) -> Result<(), ConfigError> {
    if !(rate.is_finite() && rate > 0.0) {
        return Err(ConfigError::new(
            name,
            value,
            "must be a finite number of streams per second above zero",
        ));
    }
    Ok(())
}

/// Parses a duration in seconds, whole or fractional.
pub(crate) fn parse_seconds(name: &'static str, value: &str) -> Result<Duration, ConfigError> {
    let err = |reason| ConfigError::new(name, value, reason);
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(err(
            "is empty; expected a number of seconds such as 20 or 0.5",
        ));
    }
    let secs: f64 = trimmed
        .parse()
        .map_err(|_| err("is not a number of seconds such as 20 or 0.5"))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(err("must be a finite number of seconds, zero or more"));
    }
    if secs > MAX_SECONDS {
        return Err(err("is longer than a day (86400 seconds)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// An invalid configuration value: names the environment variable (or, for
/// settings made in code, the `Config` setter), the value and why.
///
/// ```standalone_crate
/// # // SAFETY: this doctest runs alone in its own process.
/// # unsafe { std::env::set_var("SHUTDOWN_GRACE_PERIOD", "abc") };
/// let err = tower_graceful_sse::Config::from_env().unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "invalid SHUTDOWN_GRACE_PERIOD=\"abc\": is not a number of seconds such as 20 or 0.5"
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    name: &'static str,
    value: String,
    reason: Cow<'static, str>,
}

impl ConfigError {
    fn new(
        name: &'static str,
        value: impl Into<String>,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            name,
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// The environment variable or setter at fault.
    #[must_use]
    pub fn name(&self) -> &str {
        self.name
    }

    /// The value it held.
    #[must_use]
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}={:?}: {}", self.name, self.value, self.reason)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Result<Duration, String> {
        parse_seconds(GRACE_PERIOD_ENV, value).map_err(|e| e.to_string())
    }

    #[test]
    fn grace_period_accepts_whole_fractional_and_zero_seconds() {
        assert_eq!(parse("20"), Ok(Duration::from_secs(20)));
        assert_eq!(parse(" 0.5 "), Ok(Duration::from_millis(500)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("86400"), Ok(Duration::from_secs(86_400)));
    }

    #[test]
    fn grace_period_rejects_bad_values_naming_variable_and_value() {
        for bad in ["", "  ", "abc", "-1", "-0.5", "NaN", "inf", "1e9", "20s"] {
            let err = parse(bad).unwrap_err();
            assert!(
                err.starts_with(&format!("invalid SHUTDOWN_GRACE_PERIOD={bad:?}: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn default_message_follows_reconnect_delay() {
        let config = Config::default();
        assert_eq!(
            config.message_text(),
            "Server restarting, please reconnect in 30s"
        );
        assert_eq!(whole_seconds_up(config.reconnect_delay), 30);
        let config = config.reconnect_delay(Duration::from_millis(2500));
        assert_eq!(
            config.message_text(),
            "Server restarting, please reconnect in 2.5s"
        );
        assert_eq!(whole_seconds_up(config.reconnect_delay), 3);
    }

    #[test]
    fn seconds_are_exact_decimals() {
        let s = |ms| seconds(Duration::from_millis(ms));
        assert_eq!(s(30_000), "30");
        assert_eq!(s(30_798), "30.798");
        assert_eq!(s(2_500), "2.5");
        assert_eq!(s(1), "0.001");
        assert_eq!(seconds(Duration::from_nanos(1_000_500_000)), "1.0005");
        assert_eq!(seconds(Duration::from_nanos(100)), "0.0000001");
    }

    #[test]
    fn window_must_end_before_the_grace_period() {
        let config = |window: u64, grace: u64| {
            Config::default()
                .notice_window(Duration::from_millis(window))
                .grace_period(Duration::from_millis(grace))
                .validate()
                .map_err(|e| e.to_string())
        };
        assert_eq!(config(0, 0), Ok(()), "no window fits any grace period");
        assert_eq!(config(0, 20_000), Ok(()));
        assert_eq!(config(19_999, 20_000), Ok(()));
        assert_eq!(
            config(20_000, 20_000),
            Err(
                "invalid Config::notice_window=\"20\": must end before the grace period, \
                 Config::grace_period=\"20\"; make the window shorter or the grace period longer"
                    .into()
            )
        );
        assert_eq!(
            config(2500, 500),
            Err(
                "invalid Config::notice_window=\"2.5\": must end before the grace period, \
                 Config::grace_period=\"0.5\"; make the window shorter or the grace period longer"
                    .into()
            )
        );
        assert!(Config::default().validate().is_ok());
    }
}
