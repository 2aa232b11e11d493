//! `Config::from_env` reads `SHUTDOWN_GRACE_PERIOD` and `SHUTDOWN_RECONNECT_DELAY`. One test in its own
//! process, because it changes the environment.

use std::time::Duration;
use tower_graceful_sse::{Config, GRACE_PERIOD_ENV, RECONNECT_DELAY_ENV};

fn with_value(value: Option<&str>) -> Result<Config, String> {
    // SAFETY: the only test in this binary; no other thread reads the environment.
    unsafe {
        match value {
            Some(value) => std::env::set_var(GRACE_PERIOD_ENV, value),
            None => std::env::remove_var(GRACE_PERIOD_ENV),
        }
    }
    Config::from_env().map_err(|e| e.to_string())
}

#[test]
fn grace_period_comes_from_the_environment() {
    let grace = |secs: f64| Ok(Config::default().grace_period(Duration::from_secs_f64(secs)));
    assert_eq!(with_value(None), Ok(Config::default()));
    assert_eq!(with_value(Some("20")), grace(20.0));
    assert_eq!(with_value(Some("7")), grace(7.0));
    assert_eq!(with_value(Some("2.5")), grace(2.5));
    assert_eq!(with_value(Some("0")), grace(0.0));
    for (bad, reason) in [
        ("-1", "must be a finite number of seconds, zero or more"),
        ("abc", "is not a number of seconds such as 20 or 0.5"),
        (
            "",
            "is empty; expected a number of seconds such as 20 or 0.5",
        ),
        ("1e12", "is longer than a day (86400 seconds)"),
    ] {
        assert_eq!(
            with_value(Some(bad)),
            Err(format!("invalid SHUTDOWN_GRACE_PERIOD={bad:?}: {reason}"))
        );
    }
    let _ = with_value(None).unwrap();

    // SAFETY: as above.
    unsafe { std::env::set_var(RECONNECT_DELAY_ENV, "5") };
    let config = Config::from_env().unwrap();
    assert_eq!(
        config,
        Config::default().reconnect_delay(Duration::from_secs(5))
    );
    assert_eq!(
        config.message_text(),
        "Server restarting, please reconnect in 5s"
    );
    // SAFETY: as above.
    unsafe { std::env::set_var(RECONNECT_DELAY_ENV, "soon") };
    assert_eq!(
        Config::from_env().unwrap_err().to_string(),
        "invalid SHUTDOWN_RECONNECT_DELAY=\"soon\": is not a number of seconds such as 20 or 0.5"
    );
}
