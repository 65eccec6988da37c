//! Wall-clock stamps read off the monotonic clock.
//!
//! Payloads carry their send time as Unix nanoseconds, and the sink subtracts it from its
//! own "now". Both read [`unix_ns`]: one wall-clock reading taken once per process, moved
//! on by `Instant`. A wall clock being slewed or stepped during a run (a VM resumed from
//! suspend slews it by 5 ms a second, and NTP may step it) then shifts neither end, where
//! reading `SystemTime` at the sink added that drift to every end-to-end latency.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

static ANCHOR: OnceLock<(Instant, u128)> = OnceLock::new();

/// Unix time of `at`, in nanoseconds, consistent with every other stamp of this process.
pub fn unix_ns(at: Instant) -> u128 {
    let (instant, unix) = *ANCHOR.get_or_init(|| {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        (Instant::now(), unix)
    });
    match at.checked_duration_since(instant) {
        Some(after) => unix + after.as_nanos(),
        None => unix.saturating_sub((instant - at).as_nanos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stamps_differ_by_exactly_the_monotonic_time_between_them() {
        let early = Instant::now();
        let later = early + Duration::from_millis(1_500);
        let before = early - Duration::from_millis(250);
        assert_eq!(unix_ns(later) - unix_ns(early), 1_500_000_000);
        assert_eq!(unix_ns(early) - unix_ns(before), 250_000_000);
    }

    #[test]
    fn a_stamp_is_close_to_the_wall_clock() {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let stamp = unix_ns(Instant::now());
        assert!(stamp.abs_diff(wall) < 5_000_000_000, "{stamp} vs {wall}");
    }
}
