//! Reconnect delays: exponential with full jitter, never under 1 s between attempts, capped;
//! after an authorization failure the delay grows three steps at once and keeps at least
//! half its ceiling, since retrying soon cannot help until someone fixes the cause.

use std::time::Duration;

const FLOOR: Duration = Duration::from_secs(1);

pub struct Backoff {
    step: u32,
    cap: Duration,
}

impl Backoff {
    pub fn new(cap: Duration) -> Self {
        Self {
            step: 0,
            cap: cap.max(FLOOR),
        }
    }

    /// The delay before the next attempt.
    pub fn next(&mut self, authorization: bool) -> Duration {
        self.step = (self.step + if authorization { 3 } else { 1 }).min(20);
        let ceiling = FLOOR.saturating_mul(1 << self.step.min(20)).min(self.cap);
        let low = if authorization {
            (ceiling / 2).max(FLOOR)
        } else {
            FLOOR
        };
        let span = ceiling.saturating_sub(low).as_millis() as u64;
        low + Duration::from_millis(fastrand::u64(0..=span))
    }

    /// After a successful connection the next failure starts over.
    pub fn reset(&mut self) {
        self.step = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_jitter_within_floor_and_cap() {
        let mut backoff = Backoff::new(Duration::from_secs(30));
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            let d = backoff.next(false);
            assert!(d >= FLOOR && d <= Duration::from_secs(30), "{d:?}");
            ceilings.push(FLOOR.saturating_mul(1 << backoff.step).min(backoff.cap));
        }
        assert_eq!(ceilings[0], Duration::from_secs(2));
        assert_eq!(ceilings[3], Duration::from_secs(16));
        assert_eq!(ceilings[9], Duration::from_secs(30));
    }

    #[test]
    fn delays_are_jittered() {
        let mut backoff = Backoff::new(Duration::from_secs(60));
        let delays: std::collections::HashSet<Duration> = (0..20)
            .map(|_| {
                backoff.reset();
                (0..5).map(|_| backoff.next(false)).last().unwrap()
            })
            .collect();
        assert!(delays.len() > 1);
    }

    #[test]
    fn an_authorization_failure_waits_longer() {
        let mut backoff = Backoff::new(Duration::from_secs(120));
        let first = backoff.next(true);
        assert!(first >= Duration::from_secs(4) && first <= Duration::from_secs(8));
        let second = backoff.next(true);
        assert!(second >= Duration::from_secs(32), "{second:?}");
        backoff.reset();
        assert!(backoff.next(false) <= Duration::from_secs(2));
    }
}
