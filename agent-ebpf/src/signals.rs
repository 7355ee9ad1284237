//! Security signals from kernel events, counted per event: TCP resets sent, probes of closed
//! ports (TCP resets without a socket, ICMP port unreachable), TCP retransmissions, and
//! process executions with the path of each executable.

use core::ptr::read_volatile;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_ANY, BPF_F_NO_PREALLOC},
    helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes},
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use tern_common::{
    counters::Counter,
    signals::{EXEC_PATH_LEN, SignalOffsets},
    sockets::{FOLLOWED_BY_ADDRESS, SEEN_MAX_ENTRIES},
};

use crate::shared::{count, followed, read, sock_netns_of, sock_state_offsets};

const ICMP_DEST_UNREACH: i32 = 3;
const ICMP_PORT_UNREACH: i32 = 3;

#[unsafe(no_mangle)]
static SIGNAL_OFFSETS: SignalOffsets = SignalOffsets {
    reset_skb: 0,
    reset_sk: 0,
    retransmit_sk: 0,
    icmp_skb: 0,
    icmp_type: 0,
    icmp_code: 0,
    exec_filename: 0,
    skb_dev: 0,
    dev_net: 0,
    reserved: 0,
};

/// Paths executed during the interval; user space takes and deletes them at each report.
#[map]
static EXECUTED: HashMap<[u8; EXEC_PATH_LEN], u32> =
    HashMap::with_max_entries(SEEN_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    let offsets = signal_offsets();
    let sk: u64 = read(&ctx, offsets.reset_sk).unwrap_or(0);
    let followed = if sk != 0 {
        followed(
            FOLLOWED_BY_ADDRESS,
            sock_netns_of(sk, &sock_state_offsets()),
        )
    } else {
        packet_followed(read(&ctx, offsets.reset_skb).unwrap_or(0), &offsets)
    };
    if followed {
        count(Counter::ResetsSent);
        if sk == 0 {
            count(Counter::ClosedPortAttempts);
        }
    }
    0
}

#[tracepoint]
pub fn icmp_send(ctx: TracePointContext) -> u32 {
    let offsets = signal_offsets();
    let kind: i32 = read(&ctx, offsets.icmp_type).unwrap_or(0);
    let code: i32 = read(&ctx, offsets.icmp_code).unwrap_or(0);
    if kind == ICMP_DEST_UNREACH && code == ICMP_PORT_UNREACH {
        if packet_followed(read(&ctx, offsets.icmp_skb).unwrap_or(0), &offsets) {
            count(Counter::ClosedPortAttempts);
        }
    }
    0
}

#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    let offsets = signal_offsets();
    let sk: u64 = read(&ctx, offsets.retransmit_sk).unwrap_or(0);
    if followed(
        FOLLOWED_BY_ADDRESS,
        sock_netns_of(sk, &sock_state_offsets()),
    ) {
        count(Counter::Retransmits);
    }
    0
}

/// Executions are counted on the whole host: a process is not in a network namespace's
/// business alone.
#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    count(Counter::Execs);
    let offsets = signal_offsets();
    // A __data_loc field: the data's offset in the record in the low 16 bits.
    let Some(loc) = read::<u32>(&ctx, offsets.exec_filename) else {
        return 0;
    };
    let mut path = [0u8; EXEC_PATH_LEN];
    let src = (ctx.as_ptr() as usize + (loc & 0xffff) as usize) as *const u8;
    // SAFETY: the helper checks the source address and bounds the copy to `path`.
    if unsafe { bpf_probe_read_kernel_str_bytes(src, &mut path) }.is_ok() {
        let _ = EXECUTED.insert(&path, &0, u64::from(BPF_ANY));
    }
    0
}

#[inline(always)]
fn signal_offsets() -> SignalOffsets {
    // SAFETY: set by user space before loading; volatile keeps the zeros from being folded.
    unsafe { read_volatile(&SIGNAL_OFFSETS) }
}

/// Whether the packet at `skb` belongs to a followed namespace, by its device's. A packet
/// whose namespace cannot be read (no BTF to find it) counts: an over-count that the start-up
/// line names is better than a blind signal.
#[inline(always)]
fn packet_followed(skb: u64, offsets: &SignalOffsets) -> bool {
    let netns = skb_netns(skb, offsets);
    netns == 0 || followed(FOLLOWED_BY_ADDRESS, netns)
}

/// The namespace of a packet's device, by address; 0 when the offsets are unknown or the
/// packet has none.
#[inline(always)]
fn skb_netns(skb: u64, offsets: &SignalOffsets) -> u64 {
    if skb == 0 || offsets.skb_dev == 0 || offsets.dev_net == 0 {
        return 0;
    }
    // SAFETY: bpf_probe_read_kernel checks each address; a bad one gives an error.
    unsafe {
        let Ok(dev) = bpf_probe_read_kernel((skb + u64::from(offsets.skb_dev)) as *const u64)
        else {
            return 0;
        };
        if dev == 0 {
            return 0;
        }
        bpf_probe_read_kernel((dev + u64::from(offsets.dev_net)) as *const u64).unwrap_or(0)
    }
}
