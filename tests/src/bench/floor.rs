//! The floors of figures 1b and 5, attached next to tern's programs and seeing the same
//! events:
//! - empty programs on TC and on the TCP state tracepoint: what the kernel's statistics
//!   report for them is the cost of measuring (two clock reads and the call), which every
//!   program's figure includes;
//! - the least programs that do tern's work: `least_ingress` and `least_egress` add each
//!   packet's length and segments to its interface's per-CPU slot (no wire size of a
//!   GRO packet's headers), and `least_state` keeps the set of established TCP sockets of
//!   every namespace (one hash insert and one delete per socket, keyed by its address, in a
//!   map allocated as tern's are), and nothing else.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::Netns;

/// Names of the programs in `bpftool prog show`.
pub const INGRESS: &str = "floor_ingress";
pub const EGRESS: &str = "floor_egress";
pub const LEAST_INGRESS: &str = "least_ingress";
pub const LEAST_EGRESS: &str = "least_egress";
pub const STATE: &str = "floor_state";
pub const LEAST_STATE: &str = "least_state";

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_F_NO_PREALLOC: u32 = 1;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
const BPF_F_BEFORE: u32 = 1 << 3;
const TCP_ESTABLISHED: i32 = 1;
/// `__sk_buff` offsets: len, ifindex, gso_segs.
const SKB_LEN: i16 = 0;
const SKB_IFINDEX: i16 = 40;
const SKB_GSO_SEGS: i16 = 164;

/// Programs, maps and links: all of it goes when dropped (each dies with its fd).
pub struct Attached {
    _fds: Vec<OwnedFd>,
}

impl Attached {
    /// The empty TC programs, attached after the programs already there at ingress and
    /// egress of `dev` in `ns`.
    pub fn tc_empty(ns: &Netns, dev: &str) -> Self {
        let fds = on_interface(ns, dev, |ifindex| {
            [(INGRESS, BPF_TCX_INGRESS), (EGRESS, BPF_TCX_EGRESS)]
                .into_iter()
                .flat_map(|(name, hook)| {
                    let prog = load(name, BPF_PROG_TYPE_SCHED_CLS, &[mov(0, -1), exit()]);
                    let link = tcx_link(&prog, ifindex, hook, 0);
                    [prog, link]
                })
                .collect()
        });
        Self { _fds: fds }
    }

    /// The least TC programs, attached before the programs already there, which pays the
    /// first touch of each packet's memory as tern's programs pay it where they run alone.
    pub fn tc_least(ns: &Netns, dev: &str) -> Self {
        let fds = on_interface(ns, dev, |ifindex| {
            let slots = map(BPF_MAP_TYPE_PERCPU_ARRAY, 4, 32, 256, 0);
            let mut fds: Vec<OwnedFd> = [
                (LEAST_INGRESS, BPF_TCX_INGRESS, 0),
                (LEAST_EGRESS, BPF_TCX_EGRESS, 16),
            ]
            .into_iter()
            .flat_map(|(name, hook, at)| {
                let prog = load(name, BPF_PROG_TYPE_SCHED_CLS, &least_tc(&slots, at));
                let link = tcx_link(&prog, ifindex, hook, BPF_F_BEFORE);
                [prog, link]
            })
            .collect();
            fds.push(slots);
            fds
        });
        Self { _fds: fds }
    }

    /// The empty and the least programs on the raw tracepoint `inet_sock_set_state`.
    pub fn state() -> Self {
        let socks = map(BPF_MAP_TYPE_HASH, 8, 8, 65_536, BPF_F_NO_PREALLOC);
        let mut fds = Vec::new();
        for prog in [
            load(STATE, BPF_PROG_TYPE_RAW_TRACEPOINT, &[mov(0, 0), exit()]),
            load(
                LEAST_STATE,
                BPF_PROG_TYPE_RAW_TRACEPOINT,
                &least_state(&socks),
            ),
        ] {
            let link = raw_tracepoint(&prog, c"inet_sock_set_state");
            fds.extend([prog, link]);
        }
        fds.push(socks);
        Self { _fds: fds }
    }
}

/// What `attach` attaches to interface `dev` of `ns`, given its index.
fn on_interface(
    ns: &Netns,
    dev: &str,
    attach: impl FnOnce(u32) -> Vec<OwnedFd> + Send + 'static,
) -> Vec<OwnedFd> {
    let dev = dev.to_owned();
    ns.enter(move || {
        let name = std::ffi::CString::new(dev.as_str()).expect("an interface name");
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(ifindex, 0, "no interface {dev}");
        attach(ifindex)
    })
}

/// Adds the packet's length and segments (at least 1) to `[bytes, packets]` at `at` (0 in,
/// 16 out) of its interface's slot, `[bytes_in, packets_in, bytes_out, packets_out]`;
/// returns TC_ACT_UNSPEC.
fn least_tc(slots: &OwnedFd, at: i16) -> Vec<u64> {
    let mut insns = vec![
        ldx(W, 6, 1, SKB_IFINDEX),
        ldx(W, 7, 1, SKB_LEN),
        ldx(W, 8, 1, SKB_GSO_SEGS),
        jne_imm(8, 0, 1),
        mov(8, 1),
        stx(W, 10, 6, -4),
    ];
    insns.extend(ld_map(1, slots));
    insns.extend([
        mov_reg(2, 10),
        add_imm(2, -4),
        call(BPF_FUNC_MAP_LOOKUP_ELEM),
        jeq_imm(0, 0, 6),
        ldx(DW, 1, 0, at),
        add_reg(1, 7),
        stx(DW, 0, 1, at),
        ldx(DW, 1, 0, at + 8),
        add_reg(1, 8),
        stx(DW, 0, 1, at + 8),
        mov(0, -1),
        exit(),
    ]);
    insns
}

/// Inserts the socket (`args[0]`) when its new state (`args[2]`) is ESTABLISHED, deletes it
/// when its old state (`args[1]`) is.
fn least_state(socks: &OwnedFd) -> Vec<u64> {
    let mut insns = vec![
        ldx(DW, 6, 1, 0),
        ldx(DW, 7, 1, 8),
        ldx(DW, 8, 1, 16),
        stx(DW, 10, 6, -8),
        stx_imm(DW, 10, -16, 0),
        jne_imm(8, TCP_ESTABLISHED, 9),
    ];
    insns.extend(ld_map(1, socks));
    insns.extend([
        mov_reg(2, 10),
        add_imm(2, -8),
        mov_reg(3, 10),
        add_imm(3, -16),
        mov(4, 0),
        call(BPF_FUNC_MAP_UPDATE_ELEM),
        ja(6),
        jne_imm(7, TCP_ESTABLISHED, 5),
    ]);
    insns.extend(ld_map(1, socks));
    insns.extend([
        mov_reg(2, 10),
        add_imm(2, -8),
        call(BPF_FUNC_MAP_DELETE_ELEM),
        mov(0, 0),
        exit(),
    ]);
    insns
}

const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_FUNC_MAP_UPDATE_ELEM: i32 = 2;
const BPF_FUNC_MAP_DELETE_ELEM: i32 = 3;
/// Load and store sizes.
const W: u8 = 0x00;
const DW: u8 = 0x18;

fn insn(op: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let [o0, o1] = off.to_le_bytes();
    let [i0, i1, i2, i3] = imm.to_le_bytes();
    u64::from_le_bytes([op, dst | src << 4, o0, o1, i0, i1, i2, i3])
}

fn ldx(size: u8, dst: u8, src: u8, off: i16) -> u64 {
    insn(0x61 | size, dst, src, off, 0)
}

fn stx(size: u8, dst: u8, src: u8, off: i16) -> u64 {
    insn(0x63 | size, dst, src, off, 0)
}

fn stx_imm(size: u8, dst: u8, off: i16, imm: i32) -> u64 {
    insn(0x62 | size, dst, 0, off, imm)
}

fn mov(dst: u8, imm: i32) -> u64 {
    insn(0xb7, dst, 0, 0, imm)
}

fn mov_reg(dst: u8, src: u8) -> u64 {
    insn(0xbf, dst, src, 0, 0)
}

fn add_imm(dst: u8, imm: i32) -> u64 {
    insn(0x07, dst, 0, 0, imm)
}

fn add_reg(dst: u8, src: u8) -> u64 {
    insn(0x0f, dst, src, 0, 0)
}

fn ja(off: i16) -> u64 {
    insn(0x05, 0, 0, off, 0)
}

fn jeq_imm(dst: u8, imm: i32, off: i16) -> u64 {
    insn(0x15, dst, 0, off, imm)
}

fn jne_imm(dst: u8, imm: i32, off: i16) -> u64 {
    insn(0x55, dst, 0, off, imm)
}

fn call(helper: i32) -> u64 {
    insn(0x85, 0, 0, 0, helper)
}

fn exit() -> u64 {
    insn(0x95, 0, 0, 0, 0)
}

/// `dst = map`: a 16-byte load of the map's fd, which the kernel turns into its address.
fn ld_map(dst: u8, map: &OwnedFd) -> [u64; 2] {
    const BPF_PSEUDO_MAP_FD: u8 = 1;
    [insn(0x18, dst, BPF_PSEUDO_MAP_FD, 0, map.as_raw_fd()), 0]
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> OwnedFd {
    // SAFETY: `attr` is a zero-padded bpf_attr of the size passed.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    assert!(
        fd >= 0,
        "bpf command {cmd}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn map(kind: u32, key: u32, value: u32, entries: u32, flags: u32) -> OwnedFd {
    let mut attr = [0u8; 128];
    for (at, field) in [kind, key, value, entries, flags].into_iter().enumerate() {
        attr[at * 4..at * 4 + 4].copy_from_slice(&field.to_ne_bytes());
    }
    bpf(BPF_MAP_CREATE, &mut attr)
}

/// Program `insns` of type `kind`, named `name`.
fn load(name: &str, kind: u32, insns: &[u64]) -> OwnedFd {
    let license = c"GPL";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&kind.to_ne_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[48..48 + name.len()].copy_from_slice(name.as_bytes());
    bpf(BPF_PROG_LOAD, &mut attr)
}

/// A TCX link at the end of the hook's chain, or its start with `BPF_F_BEFORE`.
fn tcx_link(prog: &OwnedFd, ifindex: u32, hook: u32, flags: u32) -> OwnedFd {
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    attr[8..12].copy_from_slice(&hook.to_ne_bytes());
    attr[12..16].copy_from_slice(&flags.to_ne_bytes());
    bpf(BPF_LINK_CREATE, &mut attr)
}

fn raw_tracepoint(prog: &OwnedFd, name: &std::ffi::CStr) -> OwnedFd {
    let mut attr = [0u8; 128];
    attr[0..8].copy_from_slice(&(name.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr)
}
