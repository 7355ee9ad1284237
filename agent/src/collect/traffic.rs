//! Traffic: reads the kernel's traffic maps (summing the per-CPU values) and turns them into
//! `network_stats` deltas since the previous report. Owns the last readings; never touches
//! /proc or /sys counters.

use std::collections::HashSet;

use anyhow::{Context, Result};
use log::warn;
use tern_common::IfTraffic;

use crate::{delta::Readings, probes::TrafficMaps, report::NetworkStats};

/// Key of the overflow slot in the readings; no interface has index 0.
const OVERFLOW: u32 = 0;

pub struct TrafficCollector {
    maps: TrafficMaps,
    readings: Readings<u32, 4>,
}

impl TrafficCollector {
    pub fn new(maps: TrafficMaps) -> Self {
        Self {
            maps,
            readings: Readings::default(),
        }
    }

    /// Traffic since the previous call on the interfaces in `counted`. Entries of interfaces
    /// no longer counted are read one last time, then removed from the kernel map.
    pub fn collect(&mut self, counted: &HashSet<u32>) -> Result<NetworkStats> {
        let mut stats = NetworkStats::default();
        let mut seen = Vec::new();
        for entry in self.maps.per_interface.iter() {
            let (ifindex, per_cpu) = entry.context("reading the IF_TRAFFIC map")?;
            stats.add(self.readings.advance(ifindex, fields(per_cpu.iter())));
            seen.push(ifindex);
        }
        let overflow = self
            .maps
            .overflow
            .get(&0, 0)
            .context("reading the IF_TRAFFIC_OVERFLOW map")?;
        stats.add(self.readings.advance(OVERFLOW, fields(overflow.iter())));

        for ifindex in seen.into_iter().filter(|i| !counted.contains(i)) {
            if let Err(err) = self.maps.per_interface.remove(&ifindex) {
                warn!("cannot drop the counters of removed interface {ifindex}: {err}");
                continue;
            }
            self.readings.forget(&ifindex);
        }
        Ok(stats)
    }
}

/// Sums one entry over all possible CPUs, in report order.
fn fields<'a>(per_cpu: impl Iterator<Item = &'a IfTraffic>) -> [u64; 4] {
    per_cpu.fold([0; 4], |acc, t| {
        [
            acc[0].wrapping_add(t.bytes_in),
            acc[1].wrapping_add(t.packets_in),
            acc[2].wrapping_add(t.bytes_out),
            acc[3].wrapping_add(t.packets_out),
        ]
    })
}
