//! Interval sets: kernel hash maps of what was seen during each interval (keyed by the
//! interval number, `epoch`). Draining takes the entries of past intervals and deletes
//! them, keeping those of the namespaces tern reports.

use anyhow::{Context, Result};
use aya::{
    Pod,
    maps::{HashMap, MapData},
};
use tern_common::sockets::{Seen, TcpSock};

use crate::kernel::batch;

/// Whether a socket of namespace `netns` is reported when following `own` (None: every
/// namespace). The user-space half of the kernel programs' `followed`.
pub fn followed(own: Option<u64>, netns: u64) -> bool {
    own.is_none_or(|own| netns == own)
}

/// Takes and deletes the entries of past intervals from an interval set of `Seen` keys,
/// whose epoch is in the key: only the keys are read.
pub fn drain_seen(
    set: &mut HashMap<MapData, Seen, u32>,
    epoch: u32,
    netns: Option<u64>,
) -> Result<Vec<Seen>> {
    let past = past(set, |key, _| key.epoch != epoch)?;
    Ok(take(set, past, netns, |s| s.netns))
}

/// As `drain_seen` for the connections of an interval, whose epoch is the value.
pub fn drain_connections(
    set: &mut HashMap<MapData, TcpSock, u32>,
    epoch: u32,
    netns: Option<u64>,
) -> Result<Vec<TcpSock>> {
    let past = past(set, |_, seen_in| *seen_in != epoch)?;
    Ok(take(set, past, netns, |s| s.netns))
}

/// The keys of `set` whose entries `is_past` says are of past intervals.
fn past<K: Pod, V: Pod>(
    set: &HashMap<MapData, K, V>,
    is_past: impl Fn(&K, &V) -> bool,
) -> Result<Vec<K>> {
    let entries = batch::entries(set).context("reading an interval set")?;
    Ok(entries
        .into_iter()
        .filter(|(k, v)| is_past(k, v))
        .map(|(k, _)| k)
        .collect())
}

/// Deletes `past` from `set` and keeps the entries of the namespaces reported.
fn take<K: Pod, V: Pod>(
    set: &mut HashMap<MapData, K, V>,
    mut past: Vec<K>,
    netns: Option<u64>,
    netns_of: impl Fn(&K) -> u64,
) -> Vec<K> {
    // Already gone is fine: nothing else deletes, so it is not lost either.
    batch::delete(set, &past);
    past.retain(|k| followed(netns, netns_of(k)));
    past
}
