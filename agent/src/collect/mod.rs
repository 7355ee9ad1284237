//! Collection: reads the kernel maps and turns them into the numbers and lists of one
//! report. Never reads network counters from /proc or /sys: those are ground truth for the
//! tests. (CPU and memory readings, which no kernel program counts, come from /proc.)

use std::{collections::BTreeSet, str::FromStr};

use anyhow::{Result, bail};

use crate::report::Merge;

mod device;
mod files;
mod sockets;
mod traffic;

pub use device::DeviceCollector;
#[cfg(test)]
pub(crate) use files::valid_name;
pub use files::{FileMetric, Kind};
pub use sockets::{SocketCollector, SocketOptions};
pub use traffic::TrafficCollector;

/// Every custom metric tern computes itself (all are sent unless a selection says
/// otherwise), with how it merges when an undelivered report folds into the next: counts of
/// the interval add up, sets of the interval unite, readings at report time are replaced.
pub const BUILTIN: &[(&str, Merge)] = &[
    (sockets::OPENED, Merge::Sum),
    (sockets::OPENED_INBOUND, Merge::Sum),
    (sockets::OPENED_OUTBOUND, Merge::Sum),
    (sockets::SHORT_LIVED, Merge::Sum),
    (sockets::TCP_PORTS, Merge::Union),
    (sockets::UDP_PORTS, Merge::Union),
    (sockets::REMOTES, Merge::Union),
    (sockets::DROPPED, Merge::Sum),
    (sockets::RESETS, Merge::Sum),
    (sockets::CLOSED_PORTS, Merge::Sum),
    (sockets::FAILED, Merge::Sum),
    (sockets::RETRANSMITTED, Merge::Sum),
    (sockets::EXECUTIONS, Merge::Sum),
    (sockets::NEW_EXECUTABLES, Merge::Union),
    (sockets::PORTS_CONTACTED, Merge::Union),
    (sockets::ADDRESSES_CONTACTED, Merge::Union),
    (device::CPU_USAGE, Merge::Latest),
    (device::MEMORY_USED, Merge::Latest),
];

fn is_builtin(name: &str) -> bool {
    BUILTIN.iter().any(|(n, _)| *n == name)
}

/// Which of tern's own custom metrics a report carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    All,
    Only(BTreeSet<String>),
}

impl Selection {
    pub fn sends(&self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(names) => names.contains(name),
        }
    }
}

/// "all", "none", or a comma-separated list of built-in names.
impl FromStr for Selection {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "all" => return Ok(Self::All),
            "none" | "" => return Ok(Self::Only(BTreeSet::new())),
            _ => {}
        }
        let names: BTreeSet<String> = s.split(',').map(|n| n.trim().to_owned()).collect();
        if let Some(unknown) = names.iter().find(|n| !is_builtin(n)) {
            let all: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
            bail!(
                "{unknown:?} is not one of tern's custom metrics; choose among: {}",
                all.join(", ")
            );
        }
        Ok(Self::Only(names))
    }
}

/// Refuses user-defined metrics whose names clash with tern's own or with each other.
pub fn check_user_metrics(metrics: &[FileMetric]) -> Result<()> {
    let mut seen = BTreeSet::new();
    for m in metrics {
        if is_builtin(&m.name) {
            bail!(
                "custom metric {:?} is one of tern's own; give yours another name",
                m.name
            );
        }
        if !seen.insert(m.name.as_str()) {
            bail!("custom metric {:?} is defined twice", m.name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selection_names_built_in_metrics_only() {
        assert_eq!("all".parse::<Selection>().unwrap(), Selection::All);
        let none: Selection = "none".parse().unwrap();
        assert!(!none.sends("cpu_usage"));
        let some: Selection = "cpu_usage, interval_execs".parse().unwrap();
        assert!(some.sends("cpu_usage") && some.sends("interval_execs"));
        assert!(!some.sends("memory_used"));
        let err = "cpu".parse::<Selection>().unwrap_err().to_string();
        assert!(err.contains("cpu_usage"), "{err}");
    }

    #[test]
    fn user_metrics_may_not_shadow_built_in_ones_or_repeat() {
        let m = |s: &str| s.parse::<FileMetric>().unwrap();
        assert!(check_user_metrics(&[m("t=number:/a"), m("u=number:/b")]).is_ok());
        assert!(check_user_metrics(&[m("cpu_usage=number:/a")]).is_err());
        assert!(check_user_metrics(&[m("t=number:/a"), m("t=number:/b")]).is_err());
    }
}
