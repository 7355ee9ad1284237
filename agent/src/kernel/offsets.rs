// Over 400 lines: one reader of this kernel's layout (tracepoint formats, BTF members,
// the pointer size); most of the length is its tests on real formats and this kernel's BTF.
//! Where this kernel keeps what tern's programs read: the fields of the tracepoint
//! `sock:inet_sock_set_state` (from its format file) and the namespace of a `struct sock`
//! (from the kernel's BTF, else from the layout of `struct sock_common`, which every kernel
//! since 4.x shares). Tracepoint offsets differ between kernels and architectures, so none
//! is compiled in.

use std::{
    fs::{self, File},
    io::{Read, Write},
    os::fd::FromRawFd,
    path::Path,
};

use anyhow::{Context, Result, bail};
use log::debug;
use tern_common::{signals::SignalOffsets, sockets::SockStateOffsets};

/// The tracepoint of TCP state changes, "category/name".
pub const SET_STATE: &str = "sock/inet_sock_set_state";
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The format file of tracepoint `event` ("category/name"), if this kernel has it.
pub fn tracepoint_format(event: &str) -> Option<String> {
    super::mounts::TRACEFS
        .iter()
        .map(|root| Path::new(root).join("events").join(event).join("format"))
        .find_map(|p| fs::read_to_string(p).ok())
}

/// `skc_net` in `struct sock_common`: after two addresses, a hash, two ports, the family,
/// state and flag bytes, the bound interface, a list node of two pointers and the protocol
/// pointer. The same from 4.x to 7.x; tern checks it at start where no BTF confirms it.
fn skc_net_by_layout(pointer_size: u32) -> u32 {
    24 + 3 * pointer_size
}

/// The size of the kernel's pointers: that of `skaddr` in the format of
/// `sock:inet_sock_set_state` where tracefs shows it, else 4 where uname names a 32-bit
/// machine (ARM before arm64, x86 before x86_64), else 8. Not this program's own: a 32-bit
/// tern may run on a 64-bit kernel.
pub fn pointer_size() -> u32 {
    if let Some(size) = tracepoint_format(SET_STATE).and_then(|f| field_size(&f, "skaddr")) {
        return size;
    }
    // SAFETY: uname fills the struct it is given; zeroed is a valid starting value.
    let mut names: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a valid, writable utsname.
    if unsafe { libc::uname(&mut names) } != 0 {
        return 8;
    }
    // SAFETY: uname leaves NUL-terminated strings.
    let machine = unsafe { std::ffi::CStr::from_ptr(names.machine.as_ptr()) };
    machine_pointer_size(&machine.to_string_lossy())
}

fn machine_pointer_size(machine: &str) -> u32 {
    let narrow = (machine.starts_with("arm") && machine != "arm64")
        || (machine.starts_with('i') && machine.ends_with("86"));
    if narrow { 4 } else { 8 }
}

/// Where the namespace of a socket was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockNet {
    Btf,
    Layout,
}

/// What the TCP state programs read, and where the namespace offset came from. `raw`: the
/// BTF gave every member of `struct sock` the raw tracepoint reads.
pub struct SockState {
    pub offsets: SockStateOffsets,
    pub sock_net: SockNet,
    pub raw: bool,
}

/// What tern takes from the kernel's BTF: the offsets of the members its programs read, 0
/// where the BTF lacks one or there is no BTF.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Members {
    skc_net: u32,
    /// The raw tracepoint's members of `struct sock`, where `raw` is 1: every one found and
    /// laid out as the program reads them.
    sock: SockStateOffsets,
    raw: u32,
    icmp_data: u32,
    skb_dev: u32,
    dev_net: u32,
    skb_head: u32,
    skb_transport_header: u32,
}

// SAFETY: repr(C), u32 fields and a struct of u32 fields only: no padding, and every bit
// pattern is valid.
unsafe impl aya::Pod for Members {}

impl Members {
    /// Reads the BTF in a child process where it can: the file is megabytes, which would
    /// otherwise set tern's peak memory for life.
    pub fn read() -> Self {
        in_child(Self::read_here).unwrap_or_else(Self::read_here)
    }

    fn read_here() -> Self {
        let btf = match fs::read(VMLINUX_BTF) {
            Ok(btf) => btf,
            Err(err) => {
                debug!("no BTF ({VMLINUX_BTF}: {err})");
                return Self::default();
            }
        };
        let member = |name: &str, member: &str| match member_offset(&btf, name, member) {
            Ok(offset) => offset,
            Err(err) => {
                debug!("no BTF for {name}.{member}: {err:#}");
                0
            }
        };
        let mut sock = SockStateOffsets::default();
        let raw = match sock_members(&btf, &mut sock) {
            Ok(()) => 1,
            Err(err) => {
                debug!("the raw tracepoint cannot read struct sock: {err:#}");
                0
            }
        };
        Self {
            skc_net: member("sock_common", "skc_net"),
            sock,
            raw,
            icmp_data: member("icmp_bxm", "data"),
            skb_dev: member("sk_buff", "dev"),
            dev_net: member("net_device", "nd_net"),
            skb_head: member("sk_buff", "head"),
            skb_transport_header: member("sk_buff", "transport_header"),
        }
    }
}

/// `f()`, computed in a child process whose memory goes with it. None where this process
/// runs other threads (a child of a threaded process must not allocate: another thread may
/// have held the allocator's lock at the fork), or where the child failed.
fn in_child<T: aya::Pod>(f: impl FnOnce() -> T) -> Option<T> {
    let threads = fs::read_to_string("/proc/self/status").ok()?;
    if !threads
        .lines()
        .any(|l| l.split_whitespace().eq(["Threads:", "1"]))
    {
        return None;
    }
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return None;
    }
    // SAFETY: two new descriptors that nothing else owns.
    let (from_child, to_parent) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    // SAFETY: this process has one thread, so the child may run any code.
    match unsafe { libc::fork() } {
        -1 => None,
        0 => {
            drop(from_child);
            let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let value = f();
                // SAFETY: a Pod value is plain bytes.
                let bytes = unsafe {
                    std::slice::from_raw_parts((&raw const value).cast::<u8>(), size_of::<T>())
                };
                (&to_parent).write_all(bytes).is_ok()
            }));
            // SAFETY: the child ends here, running none of the parent's exit handlers.
            unsafe { libc::_exit(if written.unwrap_or(false) { 0 } else { 1 }) }
        }
        child => {
            drop(to_parent);
            let mut bytes = vec![0u8; size_of::<T>()];
            let read = (&from_child).read_exact(&mut bytes).is_ok();
            let mut status = 0;
            // A signal (SIGINT, SIGTERM: no SA_RESTART) interrupts the wait; the child ends
            // soon, either way.
            for _ in 0..1000 {
                // SAFETY: waits for our own child.
                if unsafe { libc::waitpid(child, &mut status, 0) } == child
                    || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)
                {
                    break;
                }
            }
            let exited = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
            // SAFETY: the child wrote a whole Pod value, read unaligned from the buffer.
            (read && exited)
                .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
        }
    }
}

pub fn read(members: &Members) -> Result<SockState> {
    let text = tracepoint_format(SET_STATE).context(
        "the tracepoint sock:inet_sock_set_state is not visible: mount tracefs \
         (mount -t tracefs nodev /sys/kernel/tracing); it needs Linux 4.16 or later",
    )?;
    let mut offsets =
        tracepoint_offsets(&text).context("unexpected format of sock:inet_sock_set_state")?;
    offsets.pointer_size = field_size(&text, "skaddr").unwrap_or_else(pointer_size);
    let sock_net = match members.skc_net {
        0 => {
            offsets.sock_net = skc_net_by_layout(offsets.pointer_size);
            SockNet::Layout
        }
        skc_net => {
            offsets.sock_net = skc_net;
            SockNet::Btf
        }
    };
    let raw = members.raw != 0;
    if raw {
        let sock = &members.sock;
        offsets.sk_protocol = sock.sk_protocol;
        offsets.sk_saddr = sock.sk_saddr;
        offsets.sk_sport = sock.sk_sport;
        offsets.sk_daddr = sock.sk_daddr;
        offsets.sk_dport = sock.sk_dport;
        offsets.sk_family = sock.sk_family;
        offsets.sk_v6_daddr = sock.sk_v6_daddr;
        offsets.sk_v6_rcv_saddr = sock.sk_v6_rcv_saddr;
    }
    Ok(SockState {
        offsets,
        sock_net,
        raw,
    })
}

/// Fills the members of `struct sock` the raw tracepoint reads. The IPv6 addresses are
/// absent from a kernel without IPv6, which has no IPv6 socket to read them from.
fn sock_members(btf: &[u8], offsets: &mut SockStateOffsets) -> Result<()> {
    let types = Btf::parse(btf)?;
    let member = |name: &str, member: &str| -> Result<Member> {
        let id = types
            .struct_named(name)
            .with_context(|| format!("no struct {name}"))?;
        types
            .find_member(id, member, 0)?
            .with_context(|| format!("struct {name} has no member {member}"))
    };
    // The members of struct sock_common are the socket's own from where it sits in sock.
    let common = member("sock", "__sk_common")?.offset;
    let of_common = |name: &str| member("sock_common", name).map(|m| common + m.offset);
    let protocol = member("sock", "sk_protocol")?;
    if !types.whole_u16(&protocol)? {
        bail!("sk_protocol is not a whole 16-bit member (a bitfield before Linux 5.6)");
    }
    offsets.sk_protocol = protocol.offset;
    // struct inet_sock opens with its struct sock.
    if member("inet_sock", "sk")?.offset != 0 {
        bail!("struct inet_sock does not open with its struct sock");
    }
    offsets.sk_saddr = member("inet_sock", "inet_saddr")?.offset;
    offsets.sk_sport = member("inet_sock", "inet_sport")?.offset;
    offsets.sk_daddr = of_common("skc_daddr")?;
    offsets.sk_dport = of_common("skc_dport")?;
    offsets.sk_family = of_common("skc_family")?;
    offsets.sk_v6_daddr = of_common("skc_v6_daddr").unwrap_or(0);
    offsets.sk_v6_rcv_saddr = of_common("skc_v6_rcv_saddr").unwrap_or(0);
    raw_layout(offsets)
}

/// Whether the program can read the members as it does, a few at a time: the start of
/// `struct sock_common` in one read, inet_saddr with inet_sport (an even 4 to 22 bytes on)
/// in another, and the two IPv6 addresses side by side in a third.
fn raw_layout(offsets: &SockStateOffsets) -> Result<()> {
    if (offsets.sk_daddr, offsets.sk_dport, offsets.sk_family) != (0, 12, 16) {
        bail!("struct sock_common does not open with the addresses, ports and family");
    }
    let sport = offsets.sk_sport.checked_sub(offsets.sk_saddr);
    if !sport.is_some_and(|delta| delta % 2 == 0 && (4..=22).contains(&delta)) {
        bail!("inet_sport is not an even 4 to 22 bytes after inet_saddr");
    }
    if offsets.sk_v6_daddr != 0 && offsets.sk_v6_rcv_saddr != offsets.sk_v6_daddr + 16 {
        bail!("the two IPv6 addresses of struct sock_common are not side by side");
    }
    Ok(())
}

/// The tracepoints of resets sent and ICMP errors sent, "category/name".
pub const SEND_RESET: &str = "tcp/tcp_send_reset";
pub const ICMP_SEND: &str = "icmp/icmp_send";

/// Whether `tcp:tcp_send_reset` fires for every reset the kernel sends, those answering
/// segments that reached no socket included: from 6.10 on, where it also gained its
/// `reason` field (before, it skips every reset without a full socket).
pub fn reset_tracepoint_complete() -> bool {
    tracepoint_format(SEND_RESET).is_some_and(|f| field_offset(&f, "reason").is_ok())
}

/// Where the security signals' tracepoints keep their fields; a tracepoint this kernel lacks
/// keeps zeros, and its program is not attached. Without BTF the namespace and TCP header
/// offsets stay 0 (every namespace's events count, and so do resets the kernel does not
/// send because the segment carried RST itself), and `struct icmp_bxm` is taken to have
/// the layout it has had since Linux 2.6: a pointer and two ints before the ICMP header.
pub fn read_signals(members: &Members) -> SignalOffsets {
    let field = |event: &str, name: &str| {
        tracepoint_format(event)
            .and_then(|f| field_offset(&f, name).ok())
            .unwrap_or(0)
    };
    let icmp_param_header = match members.icmp_data {
        0 => pointer_size() + 2 * size_of::<u32>() as u32,
        offset => offset,
    };
    SignalOffsets {
        reset_skb: field(SEND_RESET, "skbaddr"),
        reset_sk: field(SEND_RESET, "skaddr"),
        retransmit_sk: field("tcp/tcp_retransmit_skb", "skaddr"),
        icmp_skb: field(ICMP_SEND, "skbaddr"),
        icmp_type: field(ICMP_SEND, "type"),
        icmp_code: field(ICMP_SEND, "code"),
        exec_filename: field("sched/sched_process_exec", "filename"),
        skb_dev: members.skb_dev,
        dev_net: members.dev_net,
        skb_head: members.skb_head,
        skb_transport_header: members.skb_transport_header,
        icmp_param_header,
    }
}

/// The `size:` of field `name` in a tracepoint's format.
fn field_size(format: &str, name: &str) -> Option<u32> {
    field_attribute(format, name, "size:")
}

fn field_offset(format: &str, name: &str) -> Result<u32> {
    field_attribute(format, name, "offset:").with_context(|| format!("no field {name}"))
}

/// `attribute` ("offset:", "size:") of field `name` in a tracepoint's format.
fn field_attribute(format: &str, name: &str, attribute: &str) -> Option<u32> {
    format
        .lines()
        .filter_map(|line| {
            let decl = line.trim().strip_prefix("field:")?.split(';').next()?;
            let field = decl.rsplit(' ').next()?.split('[').next()?;
            (field == name).then_some(line)
        })
        .find_map(|line| {
            line.split(';')
                .find_map(|part| part.trim().strip_prefix(attribute))
                .and_then(|n| n.parse().ok())
        })
}

fn tracepoint_offsets(format: &str) -> Result<SockStateOffsets> {
    let offset = |name: &str| field_offset(format, name);
    Ok(SockStateOffsets {
        skaddr: offset("skaddr")?,
        oldstate: offset("oldstate")?,
        newstate: offset("newstate")?,
        sport: offset("sport")?,
        dport: offset("dport")?,
        family: offset("family")?,
        protocol: offset("protocol")?,
        saddr: offset("saddr")?,
        daddr: offset("daddr")?,
        saddr_v6: offset("saddr_v6")?,
        daddr_v6: offset("daddr_v6")?,
        ..SockStateOffsets::default()
    })
}

/// Byte offset of `member` in the struct `name`, from raw BTF (the format is in the kernel's
/// Documentation/bpf/btf.rst: a header, then the type section, then the string section).
/// Members of anonymous structs and unions inside `name` count as its own, as in C.
fn member_offset(btf: &[u8], name: &str, member: &str) -> Result<u32> {
    let types = Btf::parse(btf)?;
    let id = types
        .struct_named(name)
        .with_context(|| format!("no struct {name}"))?;
    types
        .find_member(id, member, 0)?
        .map(|m| m.offset)
        .with_context(|| format!("struct {name} has no member {member}"))
}

/// A member of a struct, as the BTF places it.
struct Member {
    /// In bytes, from the start of the outermost struct searched.
    offset: u32,
    type_id: u32,
    /// The width of a bitfield member; 0 for a whole one.
    bits: u32,
}

const BTF_KIND_INT: u32 = 1;
const BTF_KIND_STRUCT: u32 = 4;
const BTF_KIND_UNION: u32 = 5;
const BTF_KIND_TYPEDEF: u32 = 8;
const BTF_KIND_VOLATILE: u32 = 9;
const BTF_KIND_CONST: u32 = 10;

struct Btf<'a> {
    bytes: &'a [u8],
    strings: usize,
    /// Where each type starts, by type id (id 0 is void and has no entry).
    starts: Vec<usize>,
}

impl<'a> Btf<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self> {
        if bytes.get(..2) != Some(&0xeb9f_u16.to_ne_bytes()[..]) {
            bail!("not BTF of this machine's byte order");
        }
        let at = |o: usize| u32_at(bytes, o);
        let header_len = at(4)? as usize;
        let (type_off, type_len) = (at(8)? as usize, at(12)? as usize);
        let strings = header_len + at(16)? as usize;
        let types = header_len + type_off;
        let mut starts = vec![0];
        let mut pos = types;
        while pos < types + type_len {
            starts.push(pos);
            let info = at(pos + 4)?;
            let vlen = (info & 0xffff) as usize;
            pos += 12
                + match (info >> 24) & 0x1f {
                    1 | 14 | 17 => 4,     // int, var, decl_tag
                    3 => 12,              // array
                    4 | 5 => vlen * 12,   // struct, union
                    6 | 13 => vlen * 8,   // enum, func_proto
                    15 | 19 => vlen * 12, // datasec, enum64
                    _ => 0,
                };
        }
        Ok(Self {
            bytes,
            strings,
            starts,
        })
    }

    fn u32(&self, at: usize) -> Result<u32> {
        u32_at(self.bytes, at)
    }

    fn string(&self, at: u32) -> &[u8] {
        let rest = self
            .bytes
            .get(self.strings + at as usize..)
            .unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    fn kind(&self, id: u32) -> Result<(usize, u32)> {
        let start = *self
            .starts
            .get(id as usize)
            .context("a BTF type id out of range")?;
        Ok((start, (self.u32(start + 4)? >> 24) & 0x1f))
    }

    fn struct_named(&self, name: &str) -> Option<u32> {
        (1..self.starts.len() as u32).find(|&id| {
            self.kind(id).is_ok_and(|(start, kind)| {
                kind == BTF_KIND_STRUCT
                    && self
                        .u32(start)
                        .is_ok_and(|n| self.string(n) == name.as_bytes())
            })
        })
    }

    /// `member` of struct or union `id`, which itself sits at `base`.
    fn find_member(&self, id: u32, member: &str, base: u32) -> Result<Option<Member>> {
        let (start, _) = self.kind(id)?;
        let info = self.u32(start + 4)?;
        let vlen = (info & 0xffff) as usize;
        let kind_flag = info >> 31 == 1;
        for i in 0..vlen {
            let m = start + 12 + i * 12;
            let placed = self.u32(m + 8)?;
            let (bit_offset, bits) = match kind_flag {
                true => (placed & 0x00ff_ffff, placed >> 24),
                false => (placed, 0),
            };
            let offset = base + bit_offset / 8;
            let name = self.string(self.u32(m)?);
            let type_id = self.u32(m + 4)?;
            if name == member.as_bytes() {
                return Ok(Some(Member {
                    offset,
                    type_id,
                    bits,
                }));
            }
            if name.is_empty() {
                let inner = self.resolve(type_id)?;
                if matches!(self.kind(inner)?.1, BTF_KIND_STRUCT | BTF_KIND_UNION)
                    && let Some(found) = self.find_member(inner, member, offset)?
                {
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
    }

    /// Whether `member` is a whole 16-bit integer: not a bitfield, by the member's own
    /// width or (older BTF) by its integer type's.
    fn whole_u16(&self, member: &Member) -> Result<bool> {
        let (start, kind) = self.kind(self.resolve(member.type_id)?)?;
        if kind != BTF_KIND_INT || self.u32(start + 8)? != 2 {
            return Ok(false);
        }
        let encoding = self.u32(start + 12)?;
        let (int_offset, int_bits) = ((encoding >> 16) & 0xff, encoding & 0xff);
        Ok(matches!(member.bits, 0 | 16) && int_offset == 0 && int_bits == 16)
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> Result<u32> {
        for _ in 0..32 {
            let (start, kind) = self.kind(id)?;
            if !matches!(kind, BTF_KIND_TYPEDEF | BTF_KIND_VOLATILE | BTF_KIND_CONST) {
                return Ok(id);
            }
            id = self.u32(start + 8)?;
        }
        bail!("a BTF typedef chain too long")
    }
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
        .context("BTF ends early")
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86_64_FORMAT: &str = "name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;
";

    #[test]
    fn reads_field_offsets_from_the_format_file() {
        let offsets = tracepoint_offsets(X86_64_FORMAT).unwrap();
        assert_eq!(
            (
                offsets.skaddr,
                offsets.oldstate,
                offsets.sport,
                offsets.saddr
            ),
            (8, 16, 24, 32)
        );
        assert_eq!((offsets.saddr_v6, offsets.daddr_v6), (40, 56));
    }

    #[test]
    fn a_32_bit_kernel_is_known_by_its_4_byte_pointers() {
        let arm = X86_64_FORMAT.replace("offset:8;\tsize:8", "offset:8;\tsize:4");
        assert_eq!(field_size(&arm, "skaddr"), Some(4));
        assert_eq!(field_size(X86_64_FORMAT, "skaddr"), Some(8));
        for (machine, size) in [
            ("armv7l", 4),
            ("armv6l", 4),
            ("i686", 4),
            ("aarch64", 8),
            ("arm64", 8),
            ("x86_64", 8),
        ] {
            assert_eq!(machine_pointer_size(machine), size, "{machine}");
        }
        assert_eq!(skc_net_by_layout(4), 36);
    }

    #[test]
    fn a_format_without_a_field_is_refused() {
        let broken = X86_64_FORMAT.replace("saddr_v6", "src6");
        assert!(tracepoint_offsets(&broken).is_err());
    }

    #[test]
    fn the_layout_of_sock_common_matches_this_kernels_btf() {
        let btf = fs::read(VMLINUX_BTF).expect("this machine's kernel has BTF");
        assert_eq!(
            member_offset(&btf, "sock_common", "skc_net").unwrap(),
            skc_net_by_layout(size_of::<usize>() as u32)
        );
    }

    #[test]
    fn the_raw_tracepoint_reads_struct_sock_where_this_kernels_btf_places_it() {
        let btf = fs::read(VMLINUX_BTF).expect("this machine's kernel has BTF");
        let mut offsets = SockStateOffsets::default();
        sock_members(&btf, &mut offsets).unwrap();
        // struct sock_common opens struct sock: the two IPv4 addresses, a hash, the two
        // ports and the family, the same on every kernel since 4.x.
        assert_eq!(
            (offsets.sk_daddr, offsets.sk_dport, offsets.sk_family),
            (0, 12, 16)
        );
        assert!(offsets.sk_v6_daddr > offsets.sk_family);
        assert_eq!(offsets.sk_v6_rcv_saddr, offsets.sk_v6_daddr + 16);
        assert!(offsets.sk_protocol > offsets.sk_v6_rcv_saddr);
        // struct inet_sock's own members follow its struct sock.
        assert!(offsets.sk_saddr > offsets.sk_protocol);
        assert!(offsets.sk_sport > offsets.sk_protocol);
        let types = Btf::parse(&btf).unwrap();
        let sock = types.struct_named("sock").unwrap();
        let whole = |name: &str| {
            let member = types.find_member(sock, name, 0).unwrap().unwrap();
            types.whole_u16(&member).unwrap()
        };
        assert!(whole("sk_protocol"));
        // sk_type is 16 bits too; sk_rcvbuf is an int.
        assert!(whole("sk_type"));
        assert!(!whole("sk_rcvbuf"));
        assert!(sock_members(&btf[..10], &mut offsets).is_err());
        for (delta, readable) in [(2, false), (6, true), (8, true), (20, true), (24, false)] {
            let mut moved = offsets;
            moved.sk_sport = moved.sk_saddr + delta;
            assert_eq!(
                raw_layout(&moved).is_ok(),
                readable,
                "inet_sport {delta} bytes on"
            );
        }
        let mut moved = offsets;
        moved.sk_v6_rcv_saddr += 8;
        assert!(raw_layout(&moved).is_err());
        assert!(raw_layout(&offsets).is_ok());
    }

    #[test]
    fn finds_struct_members_in_this_kernels_btf() {
        let Ok(btf) = fs::read(VMLINUX_BTF) else {
            panic!("{VMLINUX_BTF} is missing: this machine's kernel has BTF");
        };
        let net = member_offset(&btf, "sock_common", "skc_net").unwrap();
        assert!(net > 0 && net < 136, "skc_net at {net}");
        // `dev` sits in an anonymous union of sk_buff, after next and prev.
        assert_eq!(member_offset(&btf, "sk_buff", "dev").unwrap(), 16);
        assert!(member_offset(&btf, "net_device", "nd_net").unwrap() > 0);
        // The TCP header of a segment, and the ICMP header of a message being built.
        assert!(member_offset(&btf, "sk_buff", "head").unwrap() > 16);
        assert!(member_offset(&btf, "sk_buff", "transport_header").unwrap() > 16);
        assert_eq!(
            member_offset(&btf, "icmp_bxm", "data").unwrap() as usize,
            size_of::<usize>() + 8
        );
        assert!(member_offset(&btf, "net", "no_such_member").is_err());
        assert!(member_offset(&btf, "no_such_struct", "x").is_err());
        assert!(member_offset(&btf[..10], "net", "ns").is_err());
    }
}
