//! Traffic: reads the kernel's traffic maps (summing the per-CPU values) and turns them into
//! `network_stats` deltas since the previous report. Owns the last readings; never touches
//! /proc or /sys counters.

use std::collections::HashSet;

use anyhow::{Context, Result};
use log::warn;
use tern_common::traffic::{IF_TRAFFIC_SLOTS, IfTraffic};

use super::{ByInterface, delta::Readings};
use crate::{kernel::maps::TrafficMaps, report::NetworkStats};

/// The slot of `IF_TRAFFIC_BY_INDEX` (and key of [`ByInterface`]) that holds the traffic of interfaces that found the
/// hash map full; no interface has index 0.
pub const OVERFLOW: u32 = 0;

pub struct TrafficCollector {
    maps: TrafficMaps,
    readings: Readings<u32, 4>,
}

impl TrafficCollector {
    /// Takes the first reading, so the first report covers its own interval only (maps
    /// adopted from an earlier tern hold what it counted).
    pub fn start(maps: TrafficMaps) -> Result<Self> {
        let mut collector = Self {
            maps,
            readings: Readings::default(),
        };
        let slots: HashSet<u32> = (1..IF_TRAFFIC_SLOTS).collect();
        collector
            .read(&slots)?
            .into_iter()
            .for_each(|(key, fields)| {
                // An unused slot reads zero, which is what no reading means.
                if fields != [0; 4] {
                    collector.readings.advance(key, fields);
                }
            });
        Ok(collector)
    }

    pub fn readings(&mut self) -> &mut Readings<u32, 4> {
        &mut self.readings
    }

    /// Traffic since the previous call on each of the interfaces `counted` now and those
    /// `gone` since (their last packets), and in the overflow slot. Array slots are read for those interfaces only; their
    /// readings are kept for good, so an index used again later continues from where its
    /// slot stands. Hash entries of interfaces no longer counted are removed from the kernel
    /// map once read. Nothing is recorded unless every read succeeds, so after an error the
    /// next call still counts this interval.
    pub fn collect(&mut self, counted: &HashSet<u32>, gone: &HashSet<u32>) -> Result<ByInterface> {
        let read = self.read(&counted.union(gone).copied().collect())?;
        let mut each = Vec::with_capacity(read.len());
        for &(key, fields) in &read {
            let mut stats = NetworkStats::default();
            stats.add(self.readings.advance(key, fields));
            each.push((key, stats));
        }
        let removed = read
            .iter()
            .map(|&(key, _)| key)
            .filter(|&key| key >= IF_TRAFFIC_SLOTS && !counted.contains(&key));
        for ifindex in removed {
            if let Err(err) = self.maps.per_interface.remove(&ifindex) {
                warn!("cannot drop the counters of removed interface {ifindex}: {err}");
                continue;
            }
            self.readings.forget(&ifindex);
        }
        Ok(each)
    }
}

impl TrafficCollector {
    /// The slots of interfaces `slots` and of the overflow, and every hash entry.
    fn read(&self, slots: &HashSet<u32>) -> Result<Vec<(u32, [u64; 4])>> {
        // No interface has the overflow's index 0.
        let slots = slots
            .iter()
            .copied()
            .filter(|&i| i < IF_TRAFFIC_SLOTS)
            .chain([OVERFLOW]);
        let mut read = Vec::new();
        for slot in slots {
            let per_cpu = self
                .maps
                .by_index
                .get(&slot, 0)
                .context("reading the IF_TRAFFIC_BY_INDEX map")?;
            read.push((slot, fields(per_cpu.iter())));
        }
        for entry in &self.maps.per_interface {
            let (ifindex, per_cpu) = entry.context("reading the IF_TRAFFIC map")?;
            read.push((ifindex, fields(per_cpu.iter())));
        }
        Ok(read)
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
