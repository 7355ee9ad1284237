//! Interval sets: kernel hash maps of what was seen during each interval (keyed by the
//! interval number, `epoch`). Draining takes the entries of past intervals and deletes
//! them, keeping those of the namespaces tern reports. A set that did not change since the
//! read before its last drain holds only entries of the interval now, and is left alone.

use anyhow::{Context, Result};
use aya::{
    Pod,
    maps::{HashMap, MapData},
};
use tern_common::{
    changes::Changed,
    sockets::{Seen, TcpSock},
};

use super::changes::Changes;
use crate::kernel::batch;

/// Whether a socket of namespace `netns` is reported when following `own` (None: every
/// namespace). The user-space half of the kernel programs' `followed`.
pub fn followed(own: Option<u64>, netns: u64) -> bool {
    own.is_none_or(|own| netns == own)
}

/// Takes and deletes the entries of intervals before `epoch` from interval set `which`, of
/// `Seen` keys, whose epoch is in the key: only the keys are read.
pub fn drain_seen(
    set: &mut HashMap<MapData, Seen, u32>,
    which: Changed,
    changes: &mut Changes,
    epoch: u32,
    netns: Option<u64>,
) -> Result<Vec<Seen>> {
    let past = |key: &Seen, _: &u32| key.epoch != epoch;
    drain(set, which, changes, past, netns, |s| s.netns)
}

/// What interval set `set` has seen so far of the interval now (`epoch`), of the namespaces
/// reported; nothing is deleted.
pub fn seen_so_far(
    set: &HashMap<MapData, Seen, u32>,
    epoch: u32,
    netns: Option<u64>,
) -> Result<Vec<Seen>> {
    Ok(batch::entries(set)
        .context("reading an interval set")?
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| key.epoch == epoch && followed(netns, key.netns))
        .collect())
}

/// As `drain_seen` for the connections of an interval, whose epoch is the value.
pub fn drain_connections(
    set: &mut HashMap<MapData, TcpSock, u32>,
    changes: &mut Changes,
    epoch: u32,
    netns: Option<u64>,
) -> Result<Vec<TcpSock>> {
    let past = |_: &TcpSock, seen_in: &u32| *seen_in != epoch;
    drain(set, Changed::ConnectionsSeen, changes, past, netns, |s| {
        s.netns
    })
}

fn drain<K: Pod>(
    set: &mut HashMap<MapData, K, u32>,
    which: Changed,
    changes: &mut Changes,
    is_past: impl Fn(&K, &u32) -> bool,
    netns: Option<u64>,
    netns_of: impl Fn(&K) -> u64,
) -> Result<Vec<K>> {
    if !changes.changed(which) {
        return Ok(Vec::new());
    }
    let entries = batch::entries(set).context("reading an interval set")?;
    let mut past: Vec<K> = entries
        .into_iter()
        .filter(|(k, v)| is_past(k, v))
        .map(|(k, _)| k)
        .collect();
    // Already gone is fine: nothing else deletes, so it is not lost either.
    batch::delete(set, &past);
    changes.walked(which);
    past.retain(|k| followed(netns, netns_of(k)));
    Ok(past)
}
