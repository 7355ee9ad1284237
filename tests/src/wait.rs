//! The bounded wait: a condition tried at intervals until it holds or a deadline passes.

use std::{
    thread,
    time::{Duration, Instant},
};

/// Tries `attempt`, `every` apart, until it gives `Ok` or `timeout` has passed since the
/// first try. Returns that `Ok`, or else the last `Err`, which holds what the caller's
/// message reports.
pub fn wait_until<T, E>(
    timeout: Duration,
    every: Duration,
    mut attempt: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + timeout;
    loop {
        let outcome = attempt();
        if outcome.is_ok() || Instant::now() >= deadline {
            return outcome;
        }
        thread::sleep(every);
    }
}
