//! Wall-clock timestamps as the operator API, events and state file show them: RFC 3339 in
//! UTC, to the second (`2024-05-01T12:00:00Z`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The current time, RFC 3339 in UTC, to the second.
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// `t` as RFC 3339 in UTC, to the second.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Seconds since the Unix epoch (0 for a clock set before 1970).
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .as_ref()
        .map_or(0, Duration::as_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_to_the_second() {
        let t = UNIX_EPOCH + Duration::from_millis(1_714_564_800_999);
        assert_eq!(rfc3339(t), "2024-05-01T12:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(unix_seconds(t), 1_714_564_800);
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(5)), 0);
    }

    #[test]
    fn now_is_a_parseable_current_timestamp() {
        let before = unix_seconds(SystemTime::now());
        let s = now_rfc3339();
        let parsed = humantime::parse_rfc3339(&s).expect("RFC 3339");
        let after = unix_seconds(SystemTime::now());
        assert!((before..=after).contains(&unix_seconds(parsed)), "{s}");
        assert!(s.ends_with('Z') && s.len() == 20, "{s}");
    }
}
