//! `Config::from_env` reads `SHUTDOWN_RECONNECT_RATE`. One test in its own
//! process, because it changes the environment.

use tower_graceful_sse::{Config, RECONNECT_RATE_ENV};

#[test]
fn reconnect_rate_from_the_environment_and_its_errors() {
    let with = |value: &str| {
        // SAFETY: the only test of this binary: no other thread reads the
        // environment.
        unsafe { std::env::set_var(RECONNECT_RATE_ENV, value) };
        Config::from_env().map_err(|e| e.to_string())
    };
    assert_eq!(with("500").unwrap().get_reconnect_rate(), Some(500.0));
    assert_eq!(with(" 2.5 ").unwrap().get_reconnect_rate(), Some(2.5));
    for bad in ["", "abc", "0", "-3", "NaN", "inf", "500/s"] {
        assert_eq!(
            with(bad),
            Err(format!(
                "invalid SHUTDOWN_RECONNECT_RATE={bad:?}: must be a number of streams per \
                 second above zero, such as 500"
            ))
        );
    }
    // SAFETY: as above.
    unsafe { std::env::remove_var(RECONNECT_RATE_ENV) };
    assert_eq!(Config::from_env().unwrap().get_reconnect_rate(), None);
}
