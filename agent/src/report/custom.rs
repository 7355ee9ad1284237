//! Custom metrics tern adds to its reports: their names, and how each one merges when an
//! undelivered report folds into the next (`Report::absorb`). Holds no values.

use super::Merge;

/// Reports the broker's Device Defender service accepted during the interval.
pub const REPORTS_ACCEPTED: &str = "reports_accepted";
/// Reports it rejected (each also logged with its error code).
pub const REPORTS_REJECTED: &str = "reports_rejected";
/// Reports acknowledged by the broker with no accepted or rejected reply in time.
pub const REPORTS_UNANSWERED: &str = "reports_unanswered";
/// Undelivered reports dropped because the spool was full.
pub const REPORTS_DROPPED: &str = "reports_dropped";

/// How `name` merges: the delivery counts here and the collectors' own metrics by their
/// table; anything else (user-defined readings) is replaced by the newer value.
pub fn merge_rule(name: &str) -> Merge {
    match name {
        REPORTS_ACCEPTED | REPORTS_REJECTED | REPORTS_UNANSWERED | REPORTS_DROPPED => Merge::Sum,
        _ => crate::collect::BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(Merge::Latest, |(_, rule)| *rule),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document's rule for a custom metric name: 1..128 of `[a-zA-Z0-9:_-]`, not `aws:`.
    fn valid_name(name: &str) -> bool {
        (1..=128).contains(&name.len())
            && !name.starts_with("aws:")
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
    }

    #[test]
    fn tern_metrics_have_valid_names_and_add_up_when_merged() {
        for name in [
            REPORTS_ACCEPTED,
            REPORTS_REJECTED,
            REPORTS_UNANSWERED,
            REPORTS_DROPPED,
        ] {
            assert!(valid_name(name), "{name}");
            assert_eq!(merge_rule(name), Merge::Sum);
        }
        assert_eq!(merge_rule("something-else"), Merge::Latest);
        assert_eq!(merge_rule("interval_execs"), Merge::Sum);
        assert_eq!(merge_rule("interval_remote_addresses"), Merge::Union);
        assert_eq!(merge_rule("cpu_usage"), Merge::Latest);
    }

    #[test]
    fn names_outside_the_rule_are_invalid() {
        assert!(!valid_name(""));
        assert!(!valid_name("aws:all-bytes-in"));
        assert!(!valid_name("has space"));
        assert!(!valid_name(&"x".repeat(129)));
        assert!(valid_name(&"x".repeat(128)));
    }
}
