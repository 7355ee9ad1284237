//! Security signals: the kernel's counts of resets, closed-port attempts, failed connects,
//! retransmits and executions over the interval, the executables never seen before, and the
//! remote ports and addresses contacted. Counterpart of the kernel's `signals` programs.

use std::{
    collections::{BTreeSet, HashSet},
    net::IpAddr,
};

use anyhow::{Context, Result};
use tern_common::{
    changes::Changed,
    signals::EXEC_PATH_LEN,
    sockets::{Seen, ip},
};

use super::{Growth, changes::Changes, sets};
use crate::{
    kernel::maps::SignalMaps,
    report::{
        CustomMetric,
        catalog::{self, Metric},
    },
};

/// The interval's security signals.
pub type Signals = Vec<(Metric, CustomMetric)>;

/// Executables remembered as seen; past this, older ones may be reported as new again.
const KNOWN_EXECUTABLES: usize = 65_536;

pub struct SignalCollector {
    maps: SignalMaps,
    netns: Option<u64>,
    known_executables: HashSet<String>,
}

impl SignalCollector {
    pub fn new(maps: SignalMaps, netns: Option<u64>) -> Self {
        Self {
            maps,
            netns,
            known_executables: HashSet::new(),
        }
    }

    /// The ports and addresses contacted so far in interval `epoch`.
    pub fn seen_so_far(&self, epoch: u32) -> Result<Vec<Seen>> {
        sets::seen_so_far(&self.maps.contacted, epoch, self.netns)
    }

    /// The signals of the interval before `epoch`, whose counters grew by `growth`.
    pub fn collect(
        &mut self,
        epoch: u32,
        growth: &Growth,
        changes: &mut Changes,
    ) -> Result<Signals> {
        let contacted = sets::drain_seen(
            &mut self.maps.contacted,
            Changed::Contacted,
            changes,
            epoch,
            self.netns,
        )?;
        let new_executables = self.new_executables(changes)?;
        let ports: BTreeSet<u64> = contacted.iter().map(|s| u64::from(s.port)).collect();
        let addresses: BTreeSet<IpAddr> = contacted.iter().map(|s| ip(s.family, &s.addr)).collect();
        let mut signals = growth.counted(&[
            catalog::RESETS,
            catalog::CLOSED_PORTS,
            catalog::FAILED,
            catalog::RETRANSMITTED,
            catalog::EXECUTIONS,
        ]);
        signals.extend([
            (
                catalog::NEW_EXECUTABLES,
                CustomMetric::StringList(new_executables),
            ),
            (
                catalog::PORTS_CONTACTED,
                CustomMetric::NumberList(ports.into_iter().collect()),
            ),
            (
                catalog::ADDRESSES_CONTACTED,
                CustomMetric::IpList(addresses.iter().map(IpAddr::to_string).collect()),
            ),
        ]);
        Ok(signals)
    }

    /// Executables run during the interval that were never seen since start, as Device
    /// Defender string values (see `sanitize`).
    fn new_executables(&mut self, changes: &mut Changes) -> Result<Vec<String>> {
        if !changes.changed(Changed::Executed) {
            return Ok(Vec::new());
        }
        let mut paths = Vec::new();
        for key in self.maps.executed.keys() {
            paths.push(key.context("reading the EXECUTED map")?);
        }
        let mut new = BTreeSet::new();
        for path in &paths {
            let _ = self.maps.executed.remove(path);
            let name = sanitize(path);
            if self.known_executables.len() >= KNOWN_EXECUTABLES {
                self.known_executables.clear();
            }
            if self.known_executables.insert(name.clone()) {
                new.insert(name);
            }
        }
        changes.walked(Changed::Executed);
        Ok(new.into_iter().collect())
    }
}

/// An executable's path as a Device Defender string-list value, which keeps only letters,
/// digits and `: _ - / .`: any other character becomes `_`.
fn sanitize(path: &[u8; EXEC_PATH_LEN]) -> String {
    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
    path[..end]
        .iter()
        .map(|&b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b':' | b'_' | b'-' | b'/' | b'.' => {
                char::from(b)
            }
            _ => '_',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_paths_keep_only_the_characters_device_defender_keeps() {
        let mut path = [0u8; EXEC_PATH_LEN];
        let raw = b"/opt/my app/run+x\xff.sh";
        path[..raw.len()].copy_from_slice(raw);
        assert_eq!(sanitize(&path), "/opt/my_app/run_x_.sh");
    }
}
