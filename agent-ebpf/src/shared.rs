//! What every program shares: the load-time globals more than one program reads, the event
//! counters, the interval number, and the helpers that read and fill them.
//!
//! Interval sets are keyed with the epoch (report number) user space publishes in `EPOCH`;
//! user space takes and deletes the entries of past epochs at each report.

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::bpf_probe_read_kernel,
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
    programs::TracePointContext,
};
use tern_common::{
    counters::Counter,
    sockets::{Seen, SockStateOffsets},
};

/// Where `sock:inet_sock_set_state` keeps its fields and `struct sock` its namespace cookie;
/// user space reads them from the tracepoint's format and the BTF.
#[unsafe(no_mangle)]
static SOCK_STATE_OFFSETS: SockStateOffsets = SockStateOffsets {
    skaddr: 0,
    oldstate: 0,
    newstate: 0,
    sport: 0,
    dport: 0,
    family: 0,
    protocol: 0,
    saddr: 0,
    daddr: 0,
    saddr_v6: 0,
    daddr_v6: 0,
    sock_net: 0,
    net_cookie: 0,
    reserved: 0,
};

/// The namespace cookie to follow; 0 follows every namespace.
#[unsafe(no_mangle)]
static NETNS_FILTER: u64 = 0;

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[map]
static EPOCH: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
pub(crate) fn sock_state_offsets() -> SockStateOffsets {
    // SAFETY: user space sets SOCK_STATE_OFFSETS before loading; volatile keeps the compiler
    // from folding the zeros it was declared with.
    unsafe { read_volatile(&SOCK_STATE_OFFSETS) }
}

#[inline(always)]
pub(crate) fn read<T>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    // SAFETY: bounds are checked by the helper the read goes through.
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

/// The namespace cookie of the socket at `sk`, 0 when unknown.
#[inline(always)]
pub(crate) fn sock_netns_of(sk: u64, offsets: &SockStateOffsets) -> u64 {
    if offsets.sock_net == 0 || sk == 0 {
        return 0;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one yields an error, not a
    // fault.
    unsafe {
        let Ok(net) = bpf_probe_read_kernel((sk + u64::from(offsets.sock_net)) as *const u64)
        else {
            return 0;
        };
        bpf_probe_read_kernel((net + u64::from(offsets.net_cookie)) as *const u64).unwrap_or(0)
    }
}

/// Whether to record a socket of namespace `netns`; 0 is a namespace that could not be read,
/// which user space sorts out.
#[inline(always)]
pub(crate) fn followed(netns: u64) -> bool {
    // SAFETY: as for SOCK_STATE_OFFSETS.
    let filter = unsafe { read_volatile(&NETNS_FILTER) };
    filter == 0 || netns == filter || netns == 0
}

#[inline(always)]
pub(crate) fn epoch() -> u32 {
    EPOCH.get(0).copied().unwrap_or(0)
}

#[inline(always)]
pub(crate) fn remember(set: &HashMap<Seen, u32>, seen: &Seen) {
    if set.insert(seen, &0, u64::from(BPF_ANY)).is_err() {
        count(Counter::DetailsDropped);
    }
}

#[inline(always)]
pub(crate) fn count(counter: Counter) {
    if let Some(counter) = COUNTERS.get_ptr_mut(counter.index()) {
        // SAFETY: a per-CPU slot, touched by this CPU only.
        unsafe { *counter += 1 };
    }
}
