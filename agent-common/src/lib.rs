//! Types shared by tern's eBPF programs and its user-space loader.
//!
//! Everything here crosses the kernel boundary as raw bytes, so each type is `#[repr(C)]`
//! with explicit integer fields only: no bool, enum or implicit padding.
#![no_std]

/// Per-interface traffic, one value per CPU in the `IF_TRAFFIC` per-CPU hash map, keyed by
/// ifindex. Packets are wire segments (max(1, gso_segs)) and bytes are the frame bytes those
/// segments carry on the wire, link-layer header included.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfTraffic {
    pub bytes_in: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub packets_out: u64,
}

/// Capacity of `IF_TRAFFIC`. Entries of deleted interfaces are removed by user space once
/// their last counts are read.
pub const IF_TRAFFIC_MAX_ENTRIES: u32 = 4096;

#[cfg(feature = "user")]
mod user {
    // SAFETY: IfTraffic is repr(C), all fields are u64, so there is no padding and every
    // bit pattern is valid.
    unsafe impl aya::Pod for super::IfTraffic {}
}
