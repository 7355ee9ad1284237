//! The catalog of tern's own custom metrics, the one place each is defined: its name in the
//! document, its type, how it merges when an undelivered report folds into the next
//! (`Report::absorb`), and whether a selection may leave it out. Also Device Defender's rule
//! for metric names. Holds no values.

use std::{collections::BTreeSet, str::FromStr};

use anyhow::{Result, bail};

use super::{Kind, Merge};

/// One of tern's own custom metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub merge: Merge,
    pub origin: Origin,
}

/// Who produces a metric's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Counted or read on the device: sent unless a selection leaves it out.
    Collected,
    /// The delivery counts of the broker output: sent with every report published.
    Delivery,
}

const fn collected(name: &'static str, kind: Kind, merge: Merge) -> Metric {
    Metric {
        name,
        kind,
        merge,
        origin: Origin::Collected,
    }
}

/// Counts of the interval add up when reports fold.
const fn count(name: &'static str) -> Metric {
    collected(name, Kind::Number, Merge::Sum)
}

/// Sets seen over the interval unite when reports fold.
const fn set(name: &'static str, kind: Kind) -> Metric {
    collected(name, kind, Merge::Union)
}

const fn delivery(name: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Number,
        merge: Merge::Sum,
        origin: Origin::Delivery,
    }
}

pub const OPENED: Metric = count("interval_tcp_connections_opened");
pub const OPENED_INBOUND: Metric = count("interval_tcp_connections_opened_inbound");
pub const OPENED_OUTBOUND: Metric = count("interval_tcp_connections_opened_outbound");
pub const SHORT_LIVED: Metric = count("interval_tcp_connections_short_lived");
pub const TCP_PORTS: Metric = set("interval_listening_tcp_ports", Kind::NumberList);
pub const UDP_PORTS: Metric = set("interval_listening_udp_ports", Kind::NumberList);
pub const REMOTES: Metric = set("interval_remote_addresses", Kind::IpList);
pub const DROPPED: Metric = count("interval_details_dropped");
pub const RESETS: Metric = count("interval_tcp_resets_sent");
pub const CLOSED_PORTS: Metric = count("interval_closed_port_attempts");
pub const FAILED: Metric = count("interval_tcp_failed_connects");
pub const RETRANSMITTED: Metric = count("interval_tcp_retransmits");
pub const EXECUTIONS: Metric = count("interval_execs");
pub const NEW_EXECUTABLES: Metric = set("interval_new_executables", Kind::StringList);
pub const PORTS_CONTACTED: Metric = set("interval_remote_ports_contacted", Kind::NumberList);
pub const ADDRESSES_CONTACTED: Metric = set("interval_remote_addresses_contacted", Kind::IpList);
/// Datagrams that reached no socket, IPv4 and IPv6, as the kernel counts them (NoPorts).
pub const CLOSED_UDP_PORTS: Metric = count("interval_udp_datagrams_to_closed_ports");
/// Processes (and threads) created on the host, as the kernel counts them.
pub const PROCESSES_CREATED: Metric = count("interval_processes_created");
/// Readings at report time: the newer one stands when reports fold. The names AWS's own
/// agents use.
pub const CPU_USAGE: Metric = collected("cpu_usage", Kind::Number, Merge::Latest);
pub const MEMORY_USED: Metric = collected("memory_used", Kind::Number, Merge::Latest);
/// Reports the broker's Device Defender service accepted during the interval.
pub const REPORTS_ACCEPTED: Metric = delivery("reports_accepted");
/// Reports it rejected (each also logged with its error code).
pub const REPORTS_REJECTED: Metric = delivery("reports_rejected");
/// Reports acknowledged by the broker with no accepted or rejected reply in time.
pub const REPORTS_UNANSWERED: Metric = delivery("reports_unanswered");
/// Undelivered reports dropped because the spool was full.
pub const REPORTS_DROPPED: Metric = delivery("reports_dropped");

/// Every custom metric tern produces itself.
pub const CATALOG: &[Metric] = &[
    OPENED,
    OPENED_INBOUND,
    OPENED_OUTBOUND,
    SHORT_LIVED,
    TCP_PORTS,
    UDP_PORTS,
    REMOTES,
    DROPPED,
    RESETS,
    CLOSED_PORTS,
    FAILED,
    RETRANSMITTED,
    EXECUTIONS,
    NEW_EXECUTABLES,
    PORTS_CONTACTED,
    ADDRESSES_CONTACTED,
    CLOSED_UDP_PORTS,
    PROCESSES_CREATED,
    CPU_USAGE,
    MEMORY_USED,
    REPORTS_ACCEPTED,
    REPORTS_REJECTED,
    REPORTS_UNANSWERED,
    REPORTS_DROPPED,
];

/// The catalog entry named `name`, if tern produces such a metric.
pub fn lookup(name: &str) -> Option<&'static Metric> {
    CATALOG.iter().find(|m| m.name == name)
}

/// How `name` merges: tern's own metrics by the catalog; anything else (user-defined
/// readings) is replaced by the newer value.
pub fn merge_rule(name: &str) -> Merge {
    lookup(name).map_or(Merge::Latest, |m| m.merge)
}

/// Which of tern's collected custom metrics a report carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    All,
    Only(BTreeSet<String>),
}

impl Selection {
    pub fn sends(&self, metric: &Metric) -> bool {
        match self {
            Self::All => true,
            Self::Only(names) => names.contains(metric.name),
        }
    }
}

/// "all", "none", or a comma-separated list of collected metrics' names.
impl FromStr for Selection {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "all" => return Ok(Self::All),
            "none" | "" => return Ok(Self::Only(BTreeSet::new())),
            _ => {}
        }
        let names: BTreeSet<String> = s.split(',').map(|n| n.trim().to_owned()).collect();
        let selectable = || CATALOG.iter().filter(|m| m.origin == Origin::Collected);
        if let Some(unknown) = names.iter().find(|n| !selectable().any(|m| m.name == *n)) {
            let all: Vec<&str> = selectable().map(|m| m.name).collect();
            bail!(
                "{unknown:?} is not one of tern's custom metrics; choose among: {}",
                all.join(", ")
            );
        }
        Ok(Self::Only(names))
    }
}

/// Device Defender's rule for names: 1 to 128 of `[a-zA-Z0-9:_-]`, not starting `aws:`.
pub fn valid_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 128 {
        return Err("must be 1 to 128 characters long");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-'))
    {
        return Err("may only hold letters, digits, ':', '_' and '-'");
    }
    if name.starts_with("aws:") {
        return Err("must not start with \"aws:\", which AWS keeps for its own metrics");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalog_name_is_valid_and_appears_once() {
        let mut seen = BTreeSet::new();
        for metric in CATALOG {
            assert!(valid_name(metric.name).is_ok(), "{}", metric.name);
            assert!(seen.insert(metric.name), "{} twice", metric.name);
        }
    }

    #[test]
    fn tern_metrics_merge_by_the_catalog_and_others_are_replaced() {
        for metric in [
            REPORTS_ACCEPTED,
            REPORTS_REJECTED,
            REPORTS_UNANSWERED,
            REPORTS_DROPPED,
        ] {
            assert_eq!(merge_rule(metric.name), Merge::Sum);
        }
        assert_eq!(merge_rule("something-else"), Merge::Latest);
        assert_eq!(merge_rule("interval_execs"), Merge::Sum);
        assert_eq!(merge_rule("interval_remote_addresses"), Merge::Union);
        assert_eq!(merge_rule("cpu_usage"), Merge::Latest);
    }

    #[test]
    fn a_selection_names_collected_metrics_only() {
        assert_eq!("all".parse::<Selection>().unwrap(), Selection::All);
        let none: Selection = "none".parse().unwrap();
        assert!(!none.sends(&CPU_USAGE));
        let some: Selection = "cpu_usage, interval_execs".parse().unwrap();
        assert!(some.sends(&CPU_USAGE) && some.sends(&EXECUTIONS));
        assert!(!some.sends(&MEMORY_USED));
        let err = "cpu".parse::<Selection>().unwrap_err().to_string();
        assert!(err.contains("cpu_usage"), "{err}");
        assert!("reports_accepted".parse::<Selection>().is_err());
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
