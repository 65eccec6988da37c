//! When to try a failed delivery again: exponential backoff with full jitter, per priority.
//!
//! The attempt number is JetStream's delivery count and the wait is a NAK delay kept by the
//! server, so a crashed worker loses no retry state: the next worker to receive the message
//! knows which attempt it is making.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Backoff of one priority class, written `base:cap:max_attempts` (e.g. `200ms:30s:8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Upper bound of the first retry's wait.
    pub base: Duration,
    /// Upper bound of any wait.
    pub cap: Duration,
    /// Attempts in all, the first included; then the notification is dead-lettered.
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// The wait before attempt `next_attempt` (2 for the first retry): uniform in
    /// `[0, min(cap, base * 2^(next_attempt - 2))]` ("full jitter"), which spreads retries
    /// of a burst of failures instead of synchronising them.
    pub fn delay(&self, next_attempt: u32, random_unit: f64) -> Duration {
        self.ceiling(next_attempt)
            .mul_f64(random_unit.clamp(0.0, 1.0))
    }

    /// The largest wait before attempt `next_attempt`.
    pub fn ceiling(&self, next_attempt: u32) -> Duration {
        let doublings = next_attempt.saturating_sub(2).min(32);
        self.base
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.cap)
    }

    /// Whether attempt `attempt` (1-based) was the last one allowed.
    pub fn exhausted(&self, attempt: u32) -> bool {
        attempt >= self.max_attempts
    }
}

impl FromStr for RetryPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        let [base, cap, max] = parts.as_slice() else {
            return Err(format!("expected base:cap:max_attempts, got {s:?}"));
        };
        let base = humantime::parse_duration(base).map_err(|e| format!("base {base:?}: {e}"))?;
        let cap = humantime::parse_duration(cap).map_err(|e| format!("cap {cap:?}: {e}"))?;
        let max_attempts: u32 = max
            .parse()
            .map_err(|_| format!("max_attempts {max:?} is not a whole number"))?;
        if max_attempts == 0 {
            return Err(String::from("max_attempts must be at least 1"));
        }
        if cap < base {
            return Err(String::from("cap must not be below base"));
        }
        Ok(RetryPolicy {
            base,
            cap,
            max_attempts,
        })
    }
}

impl fmt::Display for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            humantime::format_duration(self.base),
            humantime::format_duration(self.cap),
            self.max_attempts
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> RetryPolicy {
        "100ms:1s:5".parse().unwrap()
    }

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let p = policy();
        let ceilings: Vec<u64> = (2..=7).map(|a| p.ceiling(a).as_millis() as u64).collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        assert!(!p.exhausted(4));
        assert!(p.exhausted(5));
    }

    #[test]
    fn parse_refuses_nonsense() {
        for bad in ["1s:2s", "1s:500ms:3", "1s:2s:0", "soon:2s:3", "1s:2s:x"] {
            assert!(bad.parse::<RetryPolicy>().is_err(), "{bad}");
        }
        assert_eq!(policy().to_string(), "100ms:1s:5");
    }

    proptest! {
        #[test]
        fn delay_is_within_zero_and_the_ceiling(attempt in 2u32..100, r in 0.0f64..=1.0) {
            let p = policy();
            let d = p.delay(attempt, r);
            prop_assert!(d <= p.ceiling(attempt));
            prop_assert!(d <= p.cap);
        }
    }
}
