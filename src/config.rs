//! Drain settings: grace period, notice text, reconnect delay, behaviour.

use std::{fmt, time::Duration};

/// The environment variable read by [`Config::from_env`] for the grace period.
pub const GRACE_PERIOD_ENV: &str = "SHUTDOWN_GRACE_PERIOD";

/// The environment variable read by [`Config::from_env`] for the reconnect delay.
pub const RECONNECT_DELAY_ENV: &str = "SHUTDOWN_RECONNECT_DELAY";

/// The environment variable read by [`Config::from_env`] for the linger.
pub const LINGER_ENV: &str = "SHUTDOWN_LINGER";

/// The longest duration accepted: one day. Anything longer is a typo.
const MAX_SECONDS: f64 = 86_400.0;

/// How a drain behaves: grace period, notice text and what happens to streams
/// and requests once it starts.
///
/// Build one with [`Config::default`] or [`Config::from_env`] and the setters,
/// then give it to [`DrainHandle::new`](crate::DrainHandle::new).
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
pub struct Config {
    pub(crate) grace_period: Duration,
    pub(crate) reconnect_delay: Duration,
    pub(crate) linger: Duration,
    pub(crate) message: Option<String>,
    pub(crate) end_after_notice: bool,
    pub(crate) sse_rejection_as_notice: bool,
}

impl Default for Config {
    /// A 20 s grace period, a 30 s reconnect delay, a 1 s linger, the seed's
    /// message, streams ended right after their notice, SSE requests rejected
    /// with a notice.
    fn default() -> Self {
        Self {
            grace_period: Duration::from_secs(20),
            reconnect_delay: Duration::from_secs(30),
            linger: Duration::from_secs(1),
            message: None,
            end_after_notice: true,
            sse_rejection_as_notice: true,
        }
    }
}

impl Config {
    /// The defaults, with the grace period read from `SHUTDOWN_GRACE_PERIOD`,
    /// the reconnect delay from `SHUTDOWN_RECONNECT_DELAY` and the linger from
    /// `SHUTDOWN_LINGER`, where set.
    ///
    /// Values are in seconds, whole or fractional (`20`, `0.5`, `0`).
    ///
    /// # Errors
    ///
    /// An unset variable gives the default; a value that is empty, not a
    /// number, negative, not finite or longer than a day is an error that names
    /// the variable and the value.
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
        Ok(config)
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
    /// rejection's `Retry-After`.
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

    /// The message the shutdown event carries.
    #[must_use]
    pub fn message_text(&self) -> String {
        match &self.message {
            Some(message) => message.clone(),
            None => format!(
                "Server restarting, please reconnect in {}s",
                seconds(self.reconnect_delay)
            ),
        }
    }

    /// `Retry-After` wants whole seconds: round up so nobody comes back early.
    pub(crate) fn retry_after_secs(&self) -> u64 {
        self.reconnect_delay.as_secs() + u64::from(self.reconnect_delay.subsec_nanos() > 0)
    }
}

/// `30` for whole seconds, `1.5` otherwise.
fn seconds(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        d.as_secs_f64().to_string()
    }
}

/// Reads a duration in seconds from the environment, if the variable is set.
fn env_seconds(name: &'static str) -> Result<Option<Duration>, ConfigError> {
    match std::env::var(name) {
        Ok(value) => parse_seconds(name, &value).map(Some),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(value)) => Err(ConfigError::new(
            name,
            value.to_string_lossy(),
            "is not valid UTF-8",
        )),
    }
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

/// An invalid configuration value: names the variable, the value and why.
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
    reason: &'static str,
}

impl ConfigError {
    fn new(name: &'static str, value: impl Into<String>, reason: &'static str) -> Self {
        Self {
            name,
            value: value.into(),
            reason,
        }
    }

    /// The variable at fault.
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
        assert_eq!(config.retry_after_secs(), 30);
        let config = config.reconnect_delay(Duration::from_millis(2500));
        assert_eq!(
            config.message_text(),
            "Server restarting, please reconnect in 2.5s"
        );
        assert_eq!(config.retry_after_secs(), 3);
    }
}
