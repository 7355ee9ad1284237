//! What every program shares: the load-time globals more than one program reads, the event
//! counters, the interval number, and the helpers that read and fill them.
//!
//! Interval sets are keyed with the epoch (report number) user space publishes in `EPOCH`;
//! user space takes and deletes the entries of past epochs at each report.

use core::ptr::read_volatile;

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_ANY,
    helpers::bpf_probe_read_kernel,
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
    programs::{ProbeContext, TracePointContext},
};
use tern_common::{
    changes::Changed,
    counters::Counter,
    sockets::{FOLLOWED_SLOTS, Seen, SockStateOffsets},
};

use crate::trouble::{Trouble, report};

/// Where `sock:inet_sock_set_state` keeps its fields and `struct sock` its namespace and the
/// members the raw tracepoint reads; user space reads them from the tracepoint's format and
/// the BTF.
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
    pointer_size: 0,
    sk_daddr: 0,
    sk_saddr: 0,
    sk_sport: 0,
    sk_dport: 0,
    sk_family: 0,
    sk_protocol: 0,
    sk_v6_daddr: 0,
    sk_v6_rcv_saddr: 0,
};

#[map(name = "m11")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[map(name = "m15")]
static CHANGES: PerCpuArray<u64> = PerCpuArray::with_max_entries(Changed::COUNT, 0);

#[map(name = "m12")]
static EPOCH: Array<u32> = Array::with_max_entries(1, 0);

/// The namespace to record, by each naming (`FOLLOWED_BY_*`); user space sets it once it
/// has learnt how the programs name its own.
#[map(name = "m13")]
static FOLLOWED: Array<u64> = Array::with_max_entries(FOLLOWED_SLOTS, 0);

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

/// Whether the kernel's pointers are 4 bytes: read as 8, one would take in its neighbour.
#[inline(always)]
fn narrow_pointers() -> bool {
    sock_state_offsets().pointer_size == 4
}

/// The kernel pointer at `offset` of the tracepoint's record.
#[inline(always)]
pub(crate) fn read_pointer(ctx: &TracePointContext, offset: u32) -> Option<u64> {
    if narrow_pointers() {
        read::<u32>(ctx, offset).map(u64::from)
    } else {
        read::<u64>(ctx, offset)
    }
}

/// The kernel pointer stored at kernel address `at`.
#[inline(always)]
pub(crate) fn probe_pointer(at: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one yields an error, not a
    // fault.
    unsafe {
        if narrow_pointers() {
            bpf_probe_read_kernel(at as *const u32).ok().map(u64::from)
        } else {
            bpf_probe_read_kernel(at as *const u64).ok()
        }
    }
}

/// Argument `n` (0 to 6) of a kprobe's function: a register slot of `struct pt_regs`,
/// which on a 32-bit kernel holds 4 bytes where the BPF target's `long` is 8.
#[inline(always)]
pub(crate) fn probe_arg(ctx: &ProbeContext, n: usize) -> u64 {
    if narrow_pointers() {
        // SAFETY: a kprobe's context is its `struct pt_regs`, whose first slots are the
        // argument registers; the verifier checks the read against its size.
        u64::from(unsafe { *(ctx.as_ptr() as *const u32).add(n) })
    } else {
        ctx.arg(n).unwrap_or(0)
    }
}

/// The namespace of the socket at `sk`, by address; 0 when unknown.
#[inline(always)]
pub(crate) fn sock_netns_of(sk: u64, offsets: &SockStateOffsets) -> u64 {
    if offsets.sock_net == 0 || sk == 0 {
        return 0;
    }
    let Some(net) = probe_pointer(sk + u64::from(offsets.sock_net)) else {
        report(Trouble::SockNetns);
        return 0;
    };
    net
}

/// Whether to record what happens in namespace `netns`, named as slot `naming` of
/// `FOLLOWED` names it.
#[inline(always)]
pub(crate) fn followed(naming: u32, netns: u64) -> bool {
    let filter = FOLLOWED.get(naming).copied().unwrap_or(0);
    filter == 0 || netns == filter
}

#[inline(always)]
pub(crate) fn epoch() -> u32 {
    EPOCH.get(0).copied().unwrap_or(0)
}

/// Adds `seen` to an interval set. Most events repeat an entry already there (one peer,
/// many connections): a lookup takes no lock, where an update would lock the bucket and
/// replace the element, contending with every CPU that sees the same peer.
#[inline(always)]
pub(crate) fn remember(set: &HashMap<Seen, u32>, which: Changed, seen: &Seen, full: Trouble) {
    if set.get_ptr(seen).is_some() {
        return;
    }
    if set.insert(seen, &0, u64::from(BPF_ANY)).is_err() {
        count(Counter::DetailsDropped);
        report(full);
    } else {
        changed(which);
    }
}

/// Counts a change to the keys of `map`, after it is made: a count user space has read
/// was made after every change it counts.
#[inline(always)]
pub(crate) fn changed(map: Changed) {
    if let Some(changes) = CHANGES.get_ptr_mut(map.index()) {
        // SAFETY: a per-CPU slot, touched by this CPU only.
        unsafe { *changes += 1 };
    }
}

#[inline(always)]
pub(crate) fn count(counter: Counter) {
    if let Some(counter) = COUNTERS.get_ptr_mut(counter.index()) {
        // SAFETY: a per-CPU slot, touched by this CPU only.
        unsafe { *counter += 1 };
    }
}
