//! `Config::from_env` reads `SHUTDOWN_RECONNECT_JITTER`,
//! `SHUTDOWN_RECONNECT_RATE` and `SHUTDOWN_NOTICE_WINDOW`, and checks the window against
//! `SHUTDOWN_GRACE_PERIOD`. One test in its own process, because it changes
//! the environment.

use std::time::Duration;
use tower_graceful_sse::{
    Config, GRACE_PERIOD_ENV, NOTICE_WINDOW_ENV, RECONNECT_JITTER_ENV, RECONNECT_RATE_ENV,
};

/// `from_env` with `name` set to `value` (or unset), the others unset.
fn with(name: &str, value: Option<&str>) -> Result<Config, String> {
    // SAFETY: the only test in this binary; no other thread reads the environment.
    unsafe {
        for other in [
            GRACE_PERIOD_ENV,
            NOTICE_WINDOW_ENV,
            RECONNECT_JITTER_ENV,
            RECONNECT_RATE_ENV,
        ] {
            std::env::remove_var(other);
        }
        if let Some(value) = value {
            std::env::set_var(name, value);
        }
    }
    Config::from_env().map_err(|e| e.to_string())
}

#[test]
fn jitter_and_window_come_from_the_environment() {
    let secs = Duration::from_secs_f64;
    for (name, set) in [
        (
            RECONNECT_JITTER_ENV,
            (|c: Config, d| c.reconnect_jitter(d)) as fn(Config, Duration) -> Config,
        ),
        (NOTICE_WINDOW_ENV, |c: Config, d| c.notice_window(d)),
    ] {
        let expect = |d: f64| Ok(set(Config::default(), secs(d)));
        assert_eq!(with(name, None), Ok(Config::default()), "{name} unset");
        assert_eq!(with(name, Some("5")), expect(5.0), "{name}");
        assert_eq!(with(name, Some(" 2.5 ")), expect(2.5), "{name}");
        assert_eq!(with(name, Some("0")), expect(0.0), "{name}");
        for (bad, reason) in [
            ("-1", "must be a finite number of seconds, zero or more"),
            ("-0.5", "must be a finite number of seconds, zero or more"),
            ("abc", "is not a number of seconds such as 20 or 0.5"),
            ("5s", "is not a number of seconds such as 20 or 0.5"),
            (
                "",
                "is empty; expected a number of seconds such as 20 or 0.5",
            ),
            (
                " ",
                "is empty; expected a number of seconds such as 20 or 0.5",
            ),
            ("NaN", "must be a finite number of seconds, zero or more"),
            ("1e12", "is longer than a day (86400 seconds)"),
        ] {
            assert_eq!(
                with(name, Some(bad)),
                Err(format!("invalid {name}={bad:?}: {reason}"))
            );
        }
    }
    // The defaults: 15 s of jitter, no window.
    assert_eq!(
        with(RECONNECT_JITTER_ENV, Some("15")),
        Ok(Config::default())
    );

    // The window must end before the grace period: the error names both.
    // SAFETY: as above.
    unsafe {
        std::env::set_var(GRACE_PERIOD_ENV, "5");
        std::env::set_var(NOTICE_WINDOW_ENV, "5");
    }
    assert_eq!(
        Config::from_env().unwrap_err().to_string(),
        "invalid SHUTDOWN_NOTICE_WINDOW=\"5\": must end before the grace period, \
         SHUTDOWN_GRACE_PERIOD=\"5\"; make the window shorter or the grace period longer"
    );
    // The values as set, not as read.
    // SAFETY: as above.
    unsafe { std::env::set_var(NOTICE_WINDOW_ENV, "05e0") };
    assert_eq!(
        Config::from_env().unwrap_err().to_string(),
        "invalid SHUTDOWN_NOTICE_WINDOW=\"05e0\": must end before the grace period, \
         SHUTDOWN_GRACE_PERIOD=\"5\"; make the window shorter or the grace period longer"
    );
    // SAFETY: as above.
    unsafe { std::env::set_var(NOTICE_WINDOW_ENV, "4.5") };
    let config = Config::from_env().unwrap();
    assert_eq!(
        config,
        Config::default()
            .grace_period(Duration::from_secs(5))
            .notice_window(Duration::from_millis(4500))
    );
    // A grace period alone never clashes with the default window (none).
    assert!(with(GRACE_PERIOD_ENV, Some("0")).is_ok());
    assert_eq!(
        with(NOTICE_WINDOW_ENV, Some("25")).unwrap_err(),
        "invalid SHUTDOWN_NOTICE_WINDOW=\"25\": must end before the grace period, \
         SHUTDOWN_GRACE_PERIOD=\"20\"; make the window shorter or the grace period longer"
    );

    // The reconnect rate, in streams per second: a number above zero; a bad
    // value names the variable and the value.
    assert_eq!(
        with(RECONNECT_RATE_ENV, Some("500")),
        Ok(Config::default().reconnect_rate(500.0))
    );
    assert_eq!(
        with(RECONNECT_RATE_ENV, Some(" 2.5 ")),
        Ok(Config::default().reconnect_rate(2.5))
    );
    // One stream a day is the least.
    assert!(with(RECONNECT_RATE_ENV, Some("0.0000116")).is_ok());
    for (bad, reason) in [
        (
            "0",
            "must be a finite number of streams per second above zero",
        ),
        (
            "-3",
            "must be a finite number of streams per second above zero",
        ),
        (
            "inf",
            "must be a finite number of streams per second above zero",
        ),
        (
            "NaN",
            "must be a finite number of streams per second above zero",
        ),
        ("1e-9", "is below one stream a day (0.0000116 per second)"),
        (
            "4.94e-324",
            "is below one stream a day (0.0000116 per second)",
        ),
        (
            "abc",
            "is not a number of streams per second such as 500 or 2.5",
        ),
        (
            "500/s",
            "is not a number of streams per second such as 500 or 2.5",
        ),
        (
            "",
            "is not a number of streams per second such as 500 or 2.5",
        ),
    ] {
        assert_eq!(
            with(RECONNECT_RATE_ENV, Some(bad)),
            Err(format!("invalid {RECONNECT_RATE_ENV}={bad:?}: {reason}"))
        );
    }
    // In code, the error names the setter.
    assert_eq!(
        Config::default()
            .reconnect_rate(0.0)
            .validate()
            .unwrap_err()
            .to_string(),
        "invalid Config::reconnect_rate=\"0\": must be a finite number of streams per second above zero"
    );
}
