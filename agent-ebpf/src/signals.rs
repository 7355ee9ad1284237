//! Security signals from kernel events, counted per event: TCP resets sent, probes of closed
//! ports (TCP resets without a socket, ICMP port unreachable), TCP retransmissions, and
//! process executions with the path of each executable.
//!
//! Resets and port unreachables come from tracepoints where the kernel's own see every one
//! sent, and from kprobes on the functions that send them where they do not (user space
//! attaches one set or the other): before 6.10 `tcp:tcp_send_reset` skips resets without a
//! full socket, and before `icmp:icmp_send` existed there was none. Neither kind of hook
//! is on the per-packet path.

use core::ptr::read_volatile;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_ANY, BPF_F_NO_PREALLOC},
    helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes},
    macros::{kprobe, map, tracepoint},
    maps::HashMap,
    programs::{ProbeContext, TracePointContext},
};
use tern_common::{
    changes::Changed,
    counters::Counter,
    signals::{EXEC_PATH_LEN, SignalOffsets},
    sockets::{FOLLOWED_BY_ADDRESS, SEEN_MAX_ENTRIES},
};

use crate::{
    shared::{
        changed, count, followed, probe_arg, probe_pointer, read, read_pointer, sock_netns_of,
        sock_state_offsets,
    },
    trouble::{Trouble, report},
};

const ICMP_DEST_UNREACH: i32 = 3;
const ICMP_PORT_UNREACH: i32 = 3;
/// The RST bit in the flags byte, byte 13 of a TCP header.
const TCP_FLAGS_BYTE: u64 = 13;
const TCP_FLAG_RST: u8 = 0x04;

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
    skb_head: 0,
    skb_transport_header: 0,
    icmp_param_header: 0,
};

/// Paths executed during the interval; user space takes and deletes them at each report.
#[map(name = "m10")]
static EXECUTED: HashMap<[u8; EXEC_PATH_LEN], u32> =
    HashMap::with_max_entries(SEEN_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// `names::TCP_SEND_RESET`: TCP resets sent (tracepoint tcp:tcp_send_reset).
#[tracepoint]
pub fn p11(ctx: TracePointContext) -> u32 {
    let offsets = signal_offsets();
    let sk = read_pointer(&ctx, offsets.reset_sk).unwrap_or(0);
    let skb = read_pointer(&ctx, offsets.reset_skb).unwrap_or(0);
    count_reset(reset_followed(sk, skb, &offsets), sk == 0);
    0
}

/// `tcp_v4_send_reset` and `tcp_v6_send_reset` (sk, skb): a reset answering segment `skb`,
/// which reached socket `sk` (a listener, a time-wait or request socket) or none. The kernel
/// sends none in answer to a segment that carries RST itself.
/// `names::TCP_SEND_RESET_PROBE`: TCP resets sent without a socket (kprobe).
#[kprobe]
pub fn p12(ctx: ProbeContext) -> u32 {
    let sk = probe_arg(&ctx, 0);
    let skb = probe_arg(&ctx, 1);
    let offsets = signal_offsets();
    if !carries_reset(skb, &offsets) {
        count_reset(reset_followed(sk, skb, &offsets), sk == 0);
    }
    0
}

/// `tcp_send_active_reset` (sk, ...): a reset a socket sends on its own (an abort, a close
/// with unread data).
/// `names::TCP_ACTIVE_RESET_PROBE`: TCP resets sent on a socket (kprobe).
#[kprobe]
pub fn p13(ctx: ProbeContext) -> u32 {
    let sk = probe_arg(&ctx, 0);
    count_reset(reset_followed(sk, 0, &signal_offsets()), false);
    0
}

/// Whether a reset answering segment `skb` from socket `sk` (0: none) is in a followed
/// namespace: the socket's, else the segment's device's.
#[inline(always)]
fn reset_followed(sk: u64, skb: u64, offsets: &SignalOffsets) -> bool {
    if sk != 0 {
        followed(
            FOLLOWED_BY_ADDRESS,
            sock_netns_of(sk, &sock_state_offsets()),
        )
    } else {
        packet_followed(skb, offsets)
    }
}

#[inline(always)]
fn count_reset(followed: bool, without_socket: bool) {
    if followed {
        count(Counter::ResetsSent);
        if without_socket {
            count(Counter::ClosedPortAttempts);
        }
    }
}

/// `names::ICMP_SEND`: ICMP errors sent (tracepoint icmp:icmp_send).
#[tracepoint]
pub fn p14(ctx: TracePointContext) -> u32 {
    let offsets = signal_offsets();
    let kind: i32 = read(&ctx, offsets.icmp_type).unwrap_or(0);
    let code: i32 = read(&ctx, offsets.icmp_code).unwrap_or(0);
    if kind == ICMP_DEST_UNREACH && code == ICMP_PORT_UNREACH {
        count_port_unreachable(read_pointer(&ctx, offsets.icmp_skb).unwrap_or(0), &offsets);
    }
    0
}

/// `icmp_glue_bits` (param, to, offset, ...): copies an ICMP message's payload once its
/// sending is decided (after the rate limits), in one call with offset 0 for a message
/// the size of an error. `param` is the kernel's `struct icmp_bxm`: the offending packet
/// first, the ICMP header at `icmp_param_header`.
/// `names::ICMP_GLUE_BITS_PROBE`: ICMP errors sent where the tracepoint is missing (kprobe).
#[kprobe]
pub fn p15(ctx: ProbeContext) -> u32 {
    let param = probe_arg(&ctx, 0);
    // An int: the low half of its register slot.
    let offset = probe_arg(&ctx, 2) as u32;
    let offsets = signal_offsets();
    if param == 0 || offset != 0 {
        return 0;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one gives an error.
    let header = unsafe {
        bpf_probe_read_kernel((param + u64::from(offsets.icmp_param_header)) as *const [u8; 2])
    };
    if let (Ok([kind, code]), Some(skb)) = (header, probe_pointer(param))
        && i32::from(kind) == ICMP_DEST_UNREACH
        && i32::from(code) == ICMP_PORT_UNREACH
    {
        count_port_unreachable(skb, &offsets);
    }
    0
}

#[inline(always)]
fn count_port_unreachable(skb: u64, offsets: &SignalOffsets) {
    if packet_followed(skb, offsets) {
        count(Counter::ClosedPortAttempts);
    }
}

/// `names::TCP_RETRANSMIT_SKB`: TCP retransmissions (tracepoint tcp:tcp_retransmit_skb).
#[tracepoint]
pub fn p16(ctx: TracePointContext) -> u32 {
    let offsets = signal_offsets();
    let sk = read_pointer(&ctx, offsets.retransmit_sk).unwrap_or(0);
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
/// `names::SCHED_PROCESS_EXEC`: programs executed (tracepoint sched:sched_process_exec).
#[tracepoint]
pub fn p17(ctx: TracePointContext) -> u32 {
    count(Counter::Execs);
    let offsets = signal_offsets();
    // A __data_loc field: the data's offset in the record in the low 16 bits.
    let Some(loc) = read::<u32>(&ctx, offsets.exec_filename) else {
        report(Trouble::ExecFilename);
        return 0;
    };
    let mut path = [0u8; EXEC_PATH_LEN];
    let src = (ctx.as_ptr() as usize + (loc & 0xffff) as usize) as *const u8;
    // SAFETY: the helper checks the source address and bounds the copy to `path`.
    if unsafe { bpf_probe_read_kernel_str_bytes(src, &mut path) }.is_err() {
        report(Trouble::ExecPath);
    // Looked up first, as `remember` does: the same programs run again and again.
    } else if EXECUTED.get_ptr(&path).is_none() {
        match EXECUTED.insert(&path, &0, u64::from(BPF_ANY)) {
            Ok(()) => changed(Changed::Executed),
            Err(_) => report(Trouble::ExecutedFull),
        }
    }
    0
}

#[inline(always)]
fn signal_offsets() -> SignalOffsets {
    // SAFETY: set by user space before loading; volatile keeps the zeros from being folded.
    unsafe { read_volatile(&SIGNAL_OFFSETS) }
}

/// Whether the TCP segment `skb` carries RST; false when unknown (no BTF), so the reset is
/// counted.
#[inline(always)]
fn carries_reset(skb: u64, offsets: &SignalOffsets) -> bool {
    if skb == 0 || offsets.skb_head == 0 || offsets.skb_transport_header == 0 {
        return false;
    }
    let Some(head) = probe_pointer(skb + u64::from(offsets.skb_head)) else {
        return false;
    };
    // SAFETY: bpf_probe_read_kernel checks each address; a bad one gives an error.
    unsafe {
        let Ok(transport) =
            bpf_probe_read_kernel((skb + u64::from(offsets.skb_transport_header)) as *const u16)
        else {
            return false;
        };
        let flags = head + u64::from(transport) + TCP_FLAGS_BYTE;
        bpf_probe_read_kernel(flags as *const u8).is_ok_and(|f| f & TCP_FLAG_RST != 0)
    }
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
    let Some(dev) = probe_pointer(skb + u64::from(offsets.skb_dev)) else {
        report(Trouble::SkbNetns);
        return 0;
    };
    if dev == 0 {
        return 0;
    }
    let Some(net) = probe_pointer(dev + u64::from(offsets.dev_net)) else {
        report(Trouble::SkbNetns);
        return 0;
    };
    net
}
