//! Which maps changed since they were last read: the kernel programs count every change to
//! the keys of a socket map or an interval set (`CHANGES`), after making it. A map whose
//! count has not moved since the read before its last walk holds what that walk found, and
//! is not walked again: a walk visits every bucket (16,384 to 65,536), however few entries
//! there are.

use anyhow::{Context, Result};
use aya::{
    Pod,
    maps::{HashMap, MapData, MapError, PerCpuArray},
};
use tern_common::changes::Changed;

use crate::kernel::{batch, maps};

const MAPS: usize = Changed::COUNT as usize;

#[derive(Default)]
pub struct Changes {
    /// Each map's count, summed over the CPUs, as read at the start of this report.
    now: [u64; MAPS],
    /// Each map's count as read before its last complete walk; None before the first, or
    /// once user space changed the map itself.
    walked: [Option<u64>; MAPS],
}

impl Changes {
    /// Reads the counts. Before the interval number moves on, so that every entry of the
    /// next interval is a change after this read.
    pub fn read(&mut self, counts: &PerCpuArray<MapData, u64>) -> Result<()> {
        self.now = maps::per_cpu_sums(counts).context("reading the CHANGES map")?;
        // The reads of the maps that follow see every change these counts include.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Whether `map` may hold what its last walk did not find.
    pub fn changed(&self, map: Changed) -> bool {
        let i = map.index() as usize;
        self.walked[i] != Some(self.now[i])
    }

    /// Records a complete walk of `map` in this report.
    pub fn walked(&mut self, map: Changed) {
        let i = map.index() as usize;
        self.walked[i] = Some(self.now[i]);
    }

    /// User space changed `map`, which the kernel's counts do not show: the next report
    /// walks it.
    pub fn forget(&mut self, map: Changed) {
        self.walked[map.index() as usize] = None;
    }
}

/// The entries of a socket map as its last walk found them, walked again only when the map
/// changed.
pub struct Entries<K, V> {
    map: Changed,
    entries: Vec<(K, V)>,
    /// How many times the map was walked: while it stays, so do the entries.
    walks: u64,
}

impl<K: Pod, V: Pod> Entries<K, V> {
    pub fn new(map: Changed) -> Self {
        Self {
            map,
            entries: Vec::new(),
            walks: 0,
        }
    }

    pub fn walks(&self) -> u64 {
        self.walks
    }

    /// The entries of the last walk.
    pub fn held(&self) -> &[(K, V)] {
        &self.entries
    }

    /// The entries `map` holds now.
    pub fn of(
        &mut self,
        map: &HashMap<MapData, K, V>,
        changes: &mut Changes,
    ) -> Result<&[(K, V)], MapError> {
        if changes.changed(self.map) {
            self.entries = batch::entries(map)?;
            self.walks += 1;
            changes.walked(self.map);
        }
        Ok(&self.entries)
    }
}
