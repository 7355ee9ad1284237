//! Custom metrics tern adds to its reports: their names, and how each one merges when an
//! undelivered report folds into the next (`Report::absorb`). Holds no values.

use super::Merge;

/// Reports the broker's Device Defender service accepted during the interval.
pub const REPORTS_ACCEPTED: &str = "tern:reports-accepted";
/// Reports it rejected (each also logged with its error code).
pub const REPORTS_REJECTED: &str = "tern:reports-rejected";
/// Reports acknowledged by the broker with no accepted or rejected reply in time.
pub const REPORTS_UNANSWERED: &str = "tern:reports-unanswered";
/// Undelivered reports dropped because the spool was full.
pub const REPORTS_DROPPED: &str = "tern:reports-dropped";

pub fn merge_rule(name: &str) -> Merge {
    match name {
        REPORTS_ACCEPTED | REPORTS_REJECTED | REPORTS_UNANSWERED | REPORTS_DROPPED => Merge::Sum,
        _ => Merge::Latest,
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
