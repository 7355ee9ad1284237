// Over 400 lines: the tracepoint and the sock_ops program feed the same socket maps and
// interval sets through the same helpers; split, each half would need the other's.
//! TCP: the listeners and connections that exist now, and what listened, connected or was
//! contacted during the current interval. Counterpart of the loader's `collect::sockets`.
//!
//! The tracepoint `sock:inet_sock_set_state` sees every state change of every TCP socket.
//! Its field offsets and the offset of the namespace in `struct sock` come from user space
//! (`SOCK_STATE_OFFSETS`), which reads them from the tracepoint's format and the BTF.
//!
//! Where the BTF describes `struct sock`, the same tracepoint is followed raw instead: the
//! program reads the socket itself, and the kernel skips it only when it is already running
//! on that CPU. A tracepoint program is skipped whenever any tracing program, or a map
//! access from user space (tern's own reads at each report among them), is under way on
//! its CPU: every state change of a softirq that interrupts one would be lost.
//!
//! Where tracepoint programs cannot run, a sock_ops program on the cgroup-v2 root stands in
//! (never both: each would count every socket). It is called as a socket connects, is
//! established or listens, and asks then for that socket's state changes, which give its
//! close. It names a namespace by its cookie (Linux 5.15 for the helper in sock_ops).
//! Both fill the same maps with the same meaning.

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_F_NO_PREALLOC, BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_SOCK_OPS_TCP_LISTEN_CB, BPF_TCP_CLOSE,
        BPF_TCP_ESTABLISHED, BPF_TCP_LISTEN, BPF_TCP_SYN_SENT,
    },
    helpers::{bpf_get_netns_cookie, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint, sock_ops, tracepoint},
    maps::HashMap,
    programs::{RawTracePointContext, SockOpsContext, TracePointContext},
};
use tern_common::{
    changes::Changed,
    counters::Counter,
    sockets::{
        AF_INET, AF_INET6, FOLLOWED_BY_ADDRESS, OPENED_INBOUND, OPENED_OUTBOUND, SEEN_MAX_ENTRIES,
        SOCKS_MAX_ENTRIES, Seen, SockStateOffsets, TCP_CONNECTION, TCP_LISTENER,
        TCP_LISTENERS_MAX_ENTRIES, TcpSock, TcpState,
    },
};

use crate::{
    shared::{
        changed, count, epoch, followed, read, read_pointer, remember, sock_netns_of,
        sock_state_offsets,
    },
    trouble::{Trouble, report},
};

/// The tracepoint's `protocol` field of a TCP socket.
const IPPROTO_TCP: u16 = 6;

/// Non-zero when user space lists every connection of an interval, which then costs one
/// more map update per connection.
#[unsafe(no_mangle)]
static RECORD_CONNECTIONS: u32 = 0;

/// Listeners apart from connections: a flood of connections cannot crowd a listener out.
#[map(name = "m02")]
static TCP_LISTENERS: HashMap<TcpSock, TcpState> =
    HashMap::with_max_entries(TCP_LISTENERS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Established connections.
#[map(name = "m03")]
static TCP_SOCKS: HashMap<TcpSock, TcpState> =
    HashMap::with_max_entries(SOCKS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "m05")]
static TCP_LISTENED: HashMap<Seen, u32> =
    HashMap::with_max_entries(SEEN_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Remote address and port of every outbound connection attempt.
#[map(name = "m09")]
static CONTACTED: HashMap<Seen, u32> =
    HashMap::with_max_entries(SEEN_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "m07")]
static REMOTES_SEEN: HashMap<Seen, u32> =
    HashMap::with_max_entries(SEEN_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Connections established during an interval; the value is the epoch.
#[map(name = "m08")]
static CONNECTIONS_SEEN: HashMap<TcpSock, u32> =
    HashMap::with_max_entries(SEEN_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// What a change of a TCP socket means to tern.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    /// An outbound connection attempt: its SYN is about to leave.
    Attempt,
    /// An outbound attempt closed without being established.
    Failed,
    ListenerOpened,
    ListenerClosed,
    /// A connection established, opened as `OPENED_*` says.
    Opened(u32),
    Closed,
}

/// What a move from state `old` to `new` means, if anything. LISTEN -> SYN_RECV is a new
/// connection's socket cloned from its listener, which leaves the listener as it was.
#[inline(always)]
fn change(old: u32, new: u32) -> Option<Change> {
    if new == BPF_TCP_LISTEN {
        Some(Change::ListenerOpened)
    } else if old == BPF_TCP_LISTEN {
        (new == BPF_TCP_CLOSE).then_some(Change::ListenerClosed)
    } else if new == BPF_TCP_ESTABLISHED {
        Some(Change::Opened(if old == BPF_TCP_SYN_SENT {
            OPENED_OUTBOUND
        } else {
            OPENED_INBOUND
        }))
    } else if old == BPF_TCP_ESTABLISHED {
        Some(Change::Closed)
    } else if new == BPF_TCP_SYN_SENT {
        Some(Change::Attempt)
    } else if old == BPF_TCP_SYN_SENT && new == BPF_TCP_CLOSE {
        Some(Change::Failed)
    } else {
        None
    }
}

/// `names::INET_SOCK_SET_STATE`: follows TCP sockets' states (tracepoint sock:inet_sock_set_state).
#[tracepoint]
pub fn p02(ctx: TracePointContext) -> u32 {
    let _ = on_state_change(&ctx);
    0
}

#[inline(always)]
fn on_state_change(ctx: &TracePointContext) -> Option<()> {
    let offsets = sock_state_offsets();
    let protocol: u16 = field(ctx, offsets.protocol, Trouble::StateProtocol)?;
    if protocol != IPPROTO_TCP {
        return None;
    }
    let change = change(
        field(ctx, offsets.oldstate, Trouble::StateOldstate)?,
        field(ctx, offsets.newstate, Trouble::StateNewstate)?,
    )?;
    let netns = sock_netns(ctx, &offsets);
    if !followed(FOLLOWED_BY_ADDRESS, netns) {
        return None;
    }
    let family: u16 = field(ctx, offsets.family, Trouble::StateFamily)?;
    let mut sock = TcpSock {
        netns,
        family,
        local_port: field(ctx, offsets.sport, Trouble::StateSport)?,
        remote_port: field(ctx, offsets.dport, Trouble::StateDport)?,
        ..TcpSock::default()
    };
    if family == AF_INET {
        let local: [u8; 4] = field(ctx, offsets.saddr, Trouble::StateSaddr)?;
        let remote: [u8; 4] = field(ctx, offsets.daddr, Trouble::StateDaddr)?;
        sock.local_addr[..4].copy_from_slice(&local);
        sock.remote_addr[..4].copy_from_slice(&remote);
    } else if family == AF_INET6 {
        sock.local_addr = field(ctx, offsets.saddr_v6, Trouble::StateSaddrV6)?;
        sock.remote_addr = field(ctx, offsets.daddr_v6, Trouble::StateDaddrV6)?;
    } else {
        return None;
    }
    record(&mut sock, change);
    Some(())
}

/// `names::INET_SOCK_SET_STATE_RAW`: follows TCP sockets' states where the BTF describes struct sock (raw tracepoint inet_sock_set_state).
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn p18(ctx: RawTracePointContext) -> u32 {
    let _ = on_raw_state_change(&ctx);
    0
}

/// The raw tracepoint's arguments are the socket and its old and new states; the socket's
/// members read are those the tracepoint's record takes, in as few reads as their layout
/// allows (user space checked it): each read is a helper call.
#[inline(always)]
fn on_raw_state_change(ctx: &RawTracePointContext) -> Option<()> {
    let sk: u64 = ctx.arg(0);
    let old: u64 = ctx.arg(1);
    let new: u64 = ctx.arg(2);
    let change = change(old as u32, new as u32)?;
    let offsets = sock_state_offsets();
    let protocol: u16 = member(sk, offsets.sk_protocol)?;
    if protocol != IPPROTO_TCP {
        return None;
    }
    let netns = sock_netns_of(sk, &offsets);
    if !followed(FOLLOWED_BY_ADDRESS, netns) {
        return None;
    }
    let head: SockHead = member(sk, 0)?;
    let inet: [u8; 24] = member(sk, offsets.sk_saddr)?;
    // inet_sport follows inet_saddr by an even 4 to 22 bytes (6 in Linux 6.12, 8 in 5.10,
    // 20 in 6.1 on 64 bits). Each index a constant: a variable one into the stack is refused
    // by older verifiers.
    let sport = match offsets.sk_sport - offsets.sk_saddr {
        4 => [inet[4], inet[5]],
        6 => [inet[6], inet[7]],
        8 => [inet[8], inet[9]],
        10 => [inet[10], inet[11]],
        12 => [inet[12], inet[13]],
        14 => [inet[14], inet[15]],
        16 => [inet[16], inet[17]],
        18 => [inet[18], inet[19]],
        20 => [inet[20], inet[21]],
        _ => [inet[22], inet[23]],
    };
    let mut sock = TcpSock {
        netns,
        family: head.family,
        local_port: u16::from_be_bytes(sport),
        remote_port: u16::from_be(head.dport),
        ..TcpSock::default()
    };
    if head.family == AF_INET {
        sock.local_addr[..4].copy_from_slice(&inet[..4]);
        sock.remote_addr[..4].copy_from_slice(&head.daddr);
    } else if head.family == AF_INET6 {
        let [remote, local]: [[u8; 16]; 2] = member(sk, offsets.sk_v6_daddr)?;
        sock.local_addr = local;
        sock.remote_addr = remote;
    } else {
        return None;
    }
    record(&mut sock, change);
    Some(())
}

/// The start of `struct sock_common`, which opens every socket: the same from Linux 4.x on.
#[repr(C)]
struct SockHead {
    daddr: [u8; 4],
    /// skc_rcv_saddr and skc_hash.
    _between: [u8; 8],
    /// In network order.
    dport: u16,
    /// skc_num, cleared before a socket's last change is traced: inet_sport is read instead.
    _num: u16,
    family: u16,
}

/// The member at `offset` of the socket at `sk`; a read that fails is reported.
#[inline(always)]
fn member<T>(sk: u64, offset: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one yields an error, not a
    // fault.
    let value = unsafe { bpf_probe_read_kernel((sk + u64::from(offset)) as *const T) }.ok();
    if value.is_none() {
        report(Trouble::StateSock);
    }
    value
}

/// Where the tracepoint cannot run. Returns 1: the operation goes on as it would without
/// tern.
/// `names::TCP_SOCK_OPS`: follows TCP sockets where tracepoints cannot run (sock_ops, cgroup-v2 root).
#[sock_ops]
pub fn p03(ctx: SockOpsContext) -> u32 {
    let _ = on_sock_op(&ctx);
    1
}

#[inline(always)]
fn on_sock_op(ctx: &SockOpsContext) -> Option<()> {
    let ops = ctx.ops.cast_const();
    // SAFETY: the context is valid for the program run, here and in every read of it below.
    let op = unsafe { whole(&raw const (*ops).op) };
    let change = match op {
        BPF_SOCK_OPS_TCP_CONNECT_CB => Change::Attempt,
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => Change::Opened(OPENED_OUTBOUND),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => Change::Opened(OPENED_INBOUND),
        BPF_SOCK_OPS_TCP_LISTEN_CB => Change::ListenerOpened,
        BPF_SOCK_OPS_STATE_CB => {
            // SAFETY: as above; a state change's arguments are the old and new states.
            let (old, new) = unsafe {
                (
                    whole(&raw const (*ops).__bindgen_anon_1.args[0]),
                    whole(&raw const (*ops).__bindgen_anon_1.args[1]),
                )
            };
            // Attempts, listeners and connections open through their own callbacks above;
            // state changes give only their ends.
            match change(old, new)? {
                end @ (Change::Failed | Change::ListenerClosed | Change::Closed) => end,
                _ => return None,
            }
        }
        _ => return None,
    };
    // SAFETY: the helper takes the program's context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.ops.cast()) };
    if !followed(FOLLOWED_BY_ADDRESS, netns) {
        return None;
    }
    if op != BPF_SOCK_OPS_STATE_CB {
        // The kernel calls this program on the socket's state changes only once asked; the
        // flags of other programs on the hook stay as they are.
        // SAFETY: as above.
        let flags = unsafe { whole(&raw const (*ops).bpf_sock_ops_cb_flags) };
        let _ = ctx.set_cb_flags((flags | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    }
    // SAFETY: as above.
    let (family, local_port, remote_port) = unsafe {
        (
            whole(&raw const (*ops).family),
            whole(&raw const (*ops).local_port),
            whole(&raw const (*ops).remote_port),
        )
    };
    let family = family as u16;
    let mut sock = TcpSock {
        netns,
        family,
        // In host order already.
        local_port: local_port as u16,
        // The port as a 32-bit number in network order (the kernel shifts the 16-bit port up
        // on little-endian machines), whatever the byte order of the machine.
        remote_port: u32::from_be(remote_port) as u16,
        ..TcpSock::default()
    };
    if family == AF_INET {
        // SAFETY: as above.
        let (local, remote) = unsafe {
            (
                whole(&raw const (*ops).local_ip4),
                whole(&raw const (*ops).remote_ip4),
            )
        };
        sock.local_addr[..4].copy_from_slice(&local.to_ne_bytes());
        sock.remote_addr[..4].copy_from_slice(&remote.to_ne_bytes());
    } else if family == AF_INET6 {
        // SAFETY: as above.
        unsafe {
            sock.local_addr = address6(&raw const (*ops).local_ip6);
            sock.remote_addr = address6(&raw const (*ops).remote_ip6);
        }
    } else {
        return None;
    }
    record(&mut sock, change);
    Some(())
}

/// A field of the sock_ops context, read whole: the kernel refuses a narrower load, which the
/// compiler would otherwise be free to make.
///
/// # Safety
/// `field` points into the program's context.
#[inline(always)]
unsafe fn whole(field: *const u32) -> u32 {
    // SAFETY: the caller's.
    unsafe { read_volatile(field) }
}

/// An IPv6 address of the sock_ops context, as on the wire.
///
/// # Safety
/// `words` points into the program's context.
#[inline(always)]
unsafe fn address6(words: *const [u32; 4]) -> [u8; 16] {
    let words = words.cast::<u32>();
    let mut addr = [0; 16];
    // SAFETY: the caller's; four words, each read whole.
    unsafe {
        addr[..4].copy_from_slice(&whole(words).to_ne_bytes());
        addr[4..8].copy_from_slice(&whole(words.add(1)).to_ne_bytes());
        addr[8..12].copy_from_slice(&whole(words.add(2)).to_ne_bytes());
        addr[12..].copy_from_slice(&whole(words.add(3)).to_ne_bytes());
    }
    addr
}

/// Records `change` of `sock`, whose namespace, family, addresses and ports are filled in.
#[inline(always)]
fn record(sock: &mut TcpSock, change: Change) {
    let epoch = epoch();
    match change {
        Change::Attempt => {
            let contacted = Seen {
                netns: sock.netns,
                addr: sock.remote_addr,
                epoch,
                port: sock.remote_port,
                family: sock.family,
            };
            remember(
                &CONTACTED,
                Changed::Contacted,
                &contacted,
                Trouble::ContactedFull,
            );
        }
        Change::Failed => count(Counter::FailedConnects),
        Change::ListenerOpened | Change::ListenerClosed => {
            sock.kind = TCP_LISTENER;
            sock.remote_addr = [0; 16];
            sock.remote_port = 0;
            if change == Change::ListenerOpened {
                listener_opened(sock, epoch);
            } else {
                listener_closed(sock);
            }
        }
        Change::Opened(flags) => {
            sock.kind = TCP_CONNECTION;
            connection_opened(sock, flags, epoch);
        }
        Change::Closed => {
            sock.kind = TCP_CONNECTION;
            connection_closed(sock, epoch);
        }
    }
}

/// Field `offset` of the tracepoint's record; a read that fails is reported as `trouble`.
#[inline(always)]
fn field<T>(ctx: &TracePointContext, offset: u32, trouble: Trouble) -> Option<T> {
    let value = read(ctx, offset);
    if value.is_none() {
        report(trouble);
    }
    value
}

/// The namespace of the tracepoint's socket, by address; 0 when unknown.
#[inline(always)]
fn sock_netns(ctx: &TracePointContext, offsets: &SockStateOffsets) -> u64 {
    let sk = read_pointer(ctx, offsets.skaddr);
    if sk.is_none() {
        report(Trouble::StateSkaddr);
    }
    sk.map_or(0, |sk| sock_netns_of(sk, offsets))
}

#[inline(always)]
fn listener_opened(sock: &TcpSock, epoch: u32) {
    let state = TcpState {
        opened_epoch: epoch,
        count: 1,
        ..TcpState::default()
    };
    // Another socket may share the key (SO_REUSEPORT): then it is one more on it.
    if TCP_LISTENERS
        .insert(sock, &state, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        changed(Changed::TcpListeners);
    } else {
        match TCP_LISTENERS.get_ptr_mut(sock) {
            // SAFETY: a valid map value. Not atomic (the BPF target has no read-modify-write
            // atomics in core): two sockets of one reuse group changing state on two CPUs
            // in the same instant could miss one count.
            Some(existing) => unsafe { (*existing).count += 1 },
            None => untracked(Trouble::TcpListenersFull),
        }
    }
    let seen = Seen {
        netns: sock.netns,
        addr: sock.local_addr,
        epoch,
        port: sock.local_port,
        family: sock.family,
    };
    remember(
        &TCP_LISTENED,
        Changed::TcpListened,
        &seen,
        Trouble::TcpListenedFull,
    );
}

#[inline(always)]
fn listener_closed(sock: &TcpSock) {
    if let Some(existing) = TCP_LISTENERS.get_ptr_mut(sock) {
        // SAFETY: a valid map value (see listener_opened).
        let left = unsafe {
            (*existing).count = (*existing).count.saturating_sub(1);
            (*existing).count
        };
        if left == 0 && TCP_LISTENERS.remove(sock).is_ok() {
            changed(Changed::TcpListeners);
        }
    }
}

/// A socket that a full map could not take: user space reads sockets from sock_diag until
/// the maps hold every one again.
#[inline(always)]
fn untracked(trouble: Trouble) {
    count(Counter::DetailsDropped);
    count(Counter::TcpSocksFull);
    report(trouble);
}

#[inline(always)]
fn connection_opened(sock: &TcpSock, flags: u32, epoch: u32) {
    count(if flags == OPENED_OUTBOUND {
        Counter::OpenedOutbound
    } else {
        Counter::OpenedInbound
    });
    let state = TcpState {
        opened_epoch: epoch,
        flags,
        count: 1,
    };
    match TCP_SOCKS.insert(sock, &state, u64::from(BPF_ANY)) {
        Ok(()) => changed(Changed::TcpSocks),
        Err(_) => untracked(Trouble::TcpSocksFull),
    }
    let remote = Seen {
        netns: sock.netns,
        addr: sock.remote_addr,
        epoch,
        port: 0,
        family: sock.family,
    };
    remember(
        &REMOTES_SEEN,
        Changed::RemotesSeen,
        &remote,
        Trouble::RemotesSeenFull,
    );
    if record_connections() {
        match CONNECTIONS_SEEN.insert(sock, &epoch, u64::from(BPF_ANY)) {
            Ok(()) => changed(Changed::ConnectionsSeen),
            Err(_) => {
                count(Counter::DetailsDropped);
                report(Trouble::ConnectionsSeenFull);
            }
        }
    }
}

#[inline(always)]
fn connection_closed(sock: &TcpSock, epoch: u32) {
    // SAFETY: a valid map value, read once.
    if let Some(state) = unsafe { TCP_SOCKS.get(sock) } {
        if state.opened_epoch == epoch {
            count(Counter::ShortLived);
        }
        if TCP_SOCKS.remove(sock).is_ok() {
            changed(Changed::TcpSocks);
        }
    }
}

#[inline(always)]
fn record_connections() -> bool {
    // SAFETY: user space sets RECORD_CONNECTIONS before loading; volatile keeps the compiler
    // from folding the zero it was declared with.
    unsafe { read_volatile(&RECORD_CONNECTIONS) != 0 }
}
