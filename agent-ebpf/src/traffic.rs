//! Traffic counters: TC ingress and egress programs on every interface.
//!
//! Each packet adds its wire segments and wire bytes to its interface's per-CPU entry. A
//! GSO/GRO skb carries many segments but its headers once: each further segment repeats the
//! link, network and transport headers on the wire, so they are added back.

use aya_ebpf::{
    bindings::{__sk_buff, BPF_NOEXIST, TC_ACT_UNSPEC, bpf_hdr_start_off::BPF_HDR_START_NET},
    helpers::bpf_skb_load_bytes_relative,
    macros::{classifier, map},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::TcContext,
};
use tern_common::traffic::{IF_TRAFFIC_MAX_ENTRIES, IF_TRAFFIC_SLOTS, IfTraffic};

use crate::trouble::{Trouble, report};

/// Interfaces with an index under `IF_TRAFFIC_SLOTS`, the common case, by index: an array
/// lookup, which the verifier inlines, instead of hashing on every packet. Slot 0, which no
/// interface has, takes the traffic of interfaces that found `IF_TRAFFIC` full, so totals
/// stay exact.
#[map(name = "m00")]
static IF_TRAFFIC_BY_INDEX: PerCpuArray<IfTraffic> =
    PerCpuArray::with_max_entries(IF_TRAFFIC_SLOTS, 0);

/// Interfaces with larger indexes (hosts that have created many interfaces).
#[map(name = "m01")]
static IF_TRAFFIC: PerCpuHashMap<u32, IfTraffic> =
    PerCpuHashMap::with_max_entries(IF_TRAFFIC_MAX_ENTRIES, 0);

/// `names::TC_INGRESS`: counts packets and bytes entering an interface (TC ingress).
#[classifier]
pub fn p00(ctx: TcContext) -> i32 {
    add::<false>(&ctx)
}

/// `names::TC_EGRESS`: counts packets and bytes leaving an interface (TC egress).
#[classifier]
pub fn p01(ctx: TcContext) -> i32 {
    add::<true>(&ctx)
}

/// Adds the packet to its interface's entry, in the direction `EGRESS` says; never ends the
/// TC chain.
#[inline(always)]
fn add<const EGRESS: bool>(ctx: &TcContext) -> i32 {
    let (ifindex, bytes, packets) = wire_size(ctx.skb.skb);
    if let Some(entry) = entry(ifindex) {
        // SAFETY: a per-CPU map value is only touched by this CPU, and TC programs on one
        // CPU do not interleave (they run with bottom halves disabled).
        unsafe {
            if EGRESS {
                (*entry).bytes_out += bytes;
                (*entry).packets_out += packets;
            } else {
                (*entry).bytes_in += bytes;
                (*entry).packets_in += packets;
            }
        }
    }
    TC_ACT_UNSPEC
}

#[inline(always)]
fn wire_size(skb: *mut __sk_buff) -> (u32, u64, u64) {
    // SAFETY: the context pointer is valid for the whole program run.
    let (ifindex, len, wire_len, segs) =
        unsafe { ((*skb).ifindex, (*skb).len, (*skb).wire_len, (*skb).gso_segs) };
    if segs <= 1 {
        return (ifindex, len as u64, 1);
    }
    // On egress the kernel has already counted every segment's headers (qdisc_pkt_len_init);
    // on ingress (GRO) tern parses them.
    if wire_len > len {
        return (ifindex, wire_len as u64, segs as u64);
    }
    let bytes = match segment_header_len(skb, len) {
        Some(header) => len as u64 + (segs as u64 - 1) * header as u64,
        // Headers not parsed (IPv6 extension headers, BIG TCP): the skb length.
        None => len as u64,
    };
    (ifindex, bytes, segs as u64)
}

/// Bytes of link, network and transport header that every segment of a GSO/GRO skb carries.
/// The link-layer length is what the skb holds beyond the IP length field, which covers the
/// whole aggregate.
#[inline(always)]
fn segment_header_len(skb: *mut __sk_buff, len: u32) -> Option<u32> {
    let mut ip = [0u8; 40];
    load_net(skb, 0, &mut ip[..20])?;
    let (network_len, total, protocol) = match ip[0] >> 4 {
        4 => (
            u32::from(ip[0] & 0x0f) * 4,
            u32::from(u16::from_be_bytes([ip[2], ip[3]])),
            ip[9],
        ),
        6 => {
            load_net(skb, 0, &mut ip)?;
            (
                40,
                40 + u32::from(u16::from_be_bytes([ip[4], ip[5]])),
                ip[6],
            )
        }
        _ => return None,
    };
    let transport_len = match protocol {
        6 => {
            let mut offset = [0u8; 1];
            load_net(skb, network_len + 12, &mut offset)?;
            u32::from(offset[0] >> 4) * 4
        }
        17 => 8,
        _ => return None,
    };
    if total <= network_len || total > len {
        return None;
    }
    Some(len - total + network_len + transport_len)
}

#[inline(always)]
fn load_net(skb: *mut __sk_buff, offset: u32, to: &mut [u8]) -> Option<()> {
    // SAFETY: the helper writes at most `to.len()` bytes into `to`.
    let ret = unsafe {
        bpf_skb_load_bytes_relative(
            skb as *const _,
            offset,
            to.as_mut_ptr() as *mut _,
            to.len() as u32,
            BPF_HDR_START_NET,
        )
    };
    (ret == 0).then_some(())
}

#[inline(always)]
fn entry(ifindex: u32) -> Option<*mut IfTraffic> {
    if ifindex < IF_TRAFFIC_SLOTS {
        return IF_TRAFFIC_BY_INDEX.get_ptr_mut(ifindex);
    }
    if let Some(entry) = IF_TRAFFIC.get_ptr_mut(ifindex) {
        return Some(entry);
    }
    // Another CPU may have created the entry meanwhile; either way it exists, unless the
    // map is full.
    let _ = IF_TRAFFIC.insert(ifindex, IfTraffic::default(), u64::from(BPF_NOEXIST));
    IF_TRAFFIC.get_ptr_mut(ifindex).or_else(|| {
        report(Trouble::IfTrafficFull);
        IF_TRAFFIC_BY_INDEX.get_ptr_mut(0)
    })
}
