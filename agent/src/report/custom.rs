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

/// The delivery counts, with how they merge: counts of the interval add up.
pub const DELIVERY: &[(&str, Merge)] = &[
    (REPORTS_ACCEPTED, Merge::Sum),
    (REPORTS_REJECTED, Merge::Sum),
    (REPORTS_UNANSWERED, Merge::Sum),
    (REPORTS_DROPPED, Merge::Sum),
];

/// How `name` merges: tern's own metrics (the delivery counts and the collectors') by their
/// tables; anything else (user-defined readings) is replaced by the newer value.
pub fn merge_rule(name: &str) -> Merge {
    DELIVERY
        .iter()
        .chain(crate::collect::BUILTIN)
        .find(|(n, _)| *n == name)
        .map_or(Merge::Latest, |(_, rule)| *rule)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::valid_name;

    #[test]
    fn tern_metrics_have_valid_names_and_add_up_when_merged() {
        for name in [
            REPORTS_ACCEPTED,
            REPORTS_REJECTED,
            REPORTS_UNANSWERED,
            REPORTS_DROPPED,
        ] {
            assert!(valid_name(name).is_ok(), "{name}");
            assert_eq!(merge_rule(name), Merge::Sum);
        }
        assert_eq!(merge_rule("something-else"), Merge::Latest);
        assert_eq!(merge_rule("interval_execs"), Merge::Sum);
        assert_eq!(merge_rule("interval_remote_addresses"), Merge::Union);
        assert_eq!(merge_rule("cpu_usage"), Merge::Latest);
    }

    #[test]
    fn names_outside_the_rule_are_invalid() {
        assert!(valid_name("").is_err());
        assert!(valid_name("aws:all-bytes-in").is_err());
        assert!(valid_name("has space").is_err());
        assert!(valid_name(&"x".repeat(129)).is_err());
        assert!(valid_name(&"x".repeat(128)).is_ok());
    }
}
