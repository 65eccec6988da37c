//! When to try a failed delivery again: exponential backoff with full jitter, per priority,
//! for as long as the priority's retry horizon lasts from when the notification was due.
//! Time, not a count, bounds the retries: a receiver that is down for a deploy or an hour
//! gets what waited once it is back, however much other traffic it has. The attempt number
//! is a report, not the budget.
//!
//! The attempt number is JetStream's delivery count (carried across holds) and the wait is
//! a NAK delay or a HOLD schedule kept by the server, and the horizon counts from the
//! notification's own `accepted_at` / `send_at`, so a crashed worker loses no retry state.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Backoff of one priority class, written `base:cap:horizon` (e.g. `200ms:5m:1h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Upper bound of the first retry's wait.
    pub base: Duration,
    /// Upper bound of any wait.
    pub cap: Duration,
    /// How long after it was due a notification is still retried; then it is
    /// dead-lettered. The last attempt is made at the horizon at the latest.
    pub horizon: Duration,
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

    /// The wait before attempt `next_attempt` of a notification due `since_due` ago, or
    /// `None` when its horizon has passed: the wait is cut so that the last attempt falls
    /// at the horizon, never after it.
    pub fn next_wait(
        &self,
        next_attempt: u32,
        since_due: Duration,
        random_unit: f64,
    ) -> Option<Duration> {
        let left = self
            .horizon
            .checked_sub(since_due)
            .filter(|l| !l.is_zero())?;
        Some(self.delay(next_attempt, random_unit).min(left))
    }

    /// Whether a notification due `since_due` ago is past its horizon.
    pub fn past_horizon(&self, since_due: Duration) -> bool {
        since_due >= self.horizon
    }
}

impl FromStr for RetryPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        let [base, cap, horizon] = parts.as_slice() else {
            return Err(format!(
                "expected base:cap:horizon (e.g. 5s:1h:72h), got {s:?}"
            ));
        };
        let parse = |what: &str, text: &str| {
            humantime::parse_duration(text).map_err(|e| format!("{what} {text:?}: {e}"))
        };
        let (base, cap, horizon) = (
            parse("base", base)?,
            parse("cap", cap)?,
            parse("horizon", horizon)?,
        );
        if base.is_zero() {
            return Err(String::from("base must be above zero"));
        }
        if cap < base {
            return Err(String::from("cap must not be below base"));
        }
        if horizon < cap {
            return Err(String::from("horizon must not be below cap"));
        }
        Ok(RetryPolicy { base, cap, horizon })
    }
}

impl fmt::Display for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            humantime::format_duration(self.base),
            humantime::format_duration(self.cap),
            humantime::format_duration(self.horizon)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> RetryPolicy {
        "100ms:1s:10s".parse().unwrap()
    }

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let p = policy();
        let ceilings: Vec<u64> = (2..=7).map(|a| p.ceiling(a).as_millis() as u64).collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn the_last_wait_ends_at_the_horizon_and_none_follows_it() {
        let p = policy();
        let s = Duration::from_secs;
        assert_eq!(p.next_wait(9, s(2), 1.0), Some(s(1)));
        assert_eq!(
            p.next_wait(9, Duration::from_millis(9_700), 1.0),
            Some(Duration::from_millis(300))
        );
        assert_eq!(p.next_wait(9, s(10), 1.0), None);
        assert_eq!(p.next_wait(9, s(11), 0.0), None);
        assert!(p.past_horizon(s(10)) && !p.past_horizon(s(9)));
    }

    #[test]
    fn parse_refuses_nonsense() {
        for bad in [
            "1s:2s",
            "1s:500ms:3s",
            "1s:2s:1s",
            "soon:2s:3h",
            "1s:2s:x",
            "0s:1s:1h",
        ] {
            assert!(bad.parse::<RetryPolicy>().is_err(), "{bad}");
        }
        assert_eq!(policy().to_string(), "100ms:1s:10s");
    }

    /// The default policies, replayed on a simulated clock against a receiver that is down
    /// for an hour: every priority is still retried when it comes back (so nothing is
    /// lost), and a retry follows its return within the cap.
    #[test]
    fn an_hour_down_is_survived_by_every_default_policy() {
        let defaults = super::super::settings::DeliveryConfig::default();
        for p in [defaults.retry_medium, defaults.retry_low] {
            let mut since_due = Duration::ZERO;
            let mut attempt = 1;
            let back = Duration::from_secs(3600);
            while since_due < back {
                attempt += 1;
                since_due += p
                    .next_wait(attempt, since_due, 1.0)
                    .expect("within the horizon");
            }
            assert!(
                since_due - back <= p.cap,
                "{p}: retried {:?} after",
                since_due - back
            );
        }
        // High's horizon is the hour itself: its last attempt is made at the hour.
        let p = defaults.retry_high;
        assert_eq!(p.horizon, Duration::from_secs(3600));
    }

    #[test]
    fn a_cap_longer_than_the_retention_is_refused_by_name() {
        let mut config = super::super::settings::DeliveryConfig::default();
        let week = Duration::from_secs(7 * 24 * 3600);
        assert!(config.check_retention(week).is_ok());
        config.retry_low = "5s:8d:9d".parse().unwrap();
        let refused = config.check_retention(week).unwrap_err();
        assert!(
            refused.starts_with("--retry-low 5s:8days:9days"),
            "{refused}"
        );
        assert!(refused.contains("--stream-max-age"), "{refused}");
    }

    proptest! {
        #[test]
        fn waits_stay_under_the_ceiling_and_inside_the_horizon(
            attempt in 2u32..100,
            r in 0.0f64..=1.0,
            since_ms in 0u64..20_000,
        ) {
            let p = policy();
            let since = Duration::from_millis(since_ms);
            match p.next_wait(attempt, since, r) {
                Some(d) => {
                    prop_assert!(d <= p.ceiling(attempt));
                    prop_assert!(since + d <= p.horizon);
                }
                None => prop_assert!(since >= p.horizon),
            }
        }
    }
}
