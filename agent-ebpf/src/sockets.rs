//! Sockets: the TCP listeners and connections that exist now, the bound unconnected UDP
//! sockets that exist now, and what appeared during the current interval.
//!
//! - TCP: the tracepoint `sock:inet_sock_set_state` sees every state change of every TCP
//!   socket. Its field offsets and the offsets of the namespace cookie in `struct sock` come
//!   from user space (`LAYOUT`), which reads them from the tracepoint's format and the BTF.
//! - UDP: cgroup hooks on the cgroup-v2 root see explicit binds (post_bind), implicit ones
//!   (the first unconnected send), connects (a connected socket is not listening) and
//!   releases. Sockets are keyed by their cookie, as the start-up snapshot reports them.
//!
//! Interval sets are keyed with the epoch (report number) user space publishes in `EPOCH`;
//! user space takes and deletes the entries of past epochs at each report.

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, bpf_sock},
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_probe_read_kernel},
    macros::{cgroup_sock, cgroup_sock_addr, map, tracepoint},
    maps::{Array, HashMap, PerCpuArray},
    programs::{SockAddrContext, SockContext, TracePointContext},
};
use tern_common::{
    AF_INET, AF_INET6, Counter, Layout, OPENED_INBOUND, OPENED_OUTBOUND, SEEN_MAX_ENTRIES,
    SOCKS_MAX_ENTRIES, Seen, TCP_CONNECTION, TCP_LISTENER, TcpSock, TcpState, UdpSock,
};

const IPPROTO_TCP: u16 = 6;
const IPPROTO_UDP: u32 = 17;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
/// An outbound connection attempt: entering SYN_SENT, or leaving it for CLOSE.
const ATTEMPT: u16 = 0;
const TCP_LISTEN: i32 = 10;
/// bpf_map_update_elem flags.
const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;

#[unsafe(no_mangle)]
pub(crate) static LAYOUT: Layout = Layout {
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

/// Non-zero when user space lists every connection of an interval, which then costs one
/// more map update per connection.
#[unsafe(no_mangle)]
static RECORD_CONNECTIONS: u32 = 0;

#[map]
static TCP_SOCKS: HashMap<TcpSock, TcpState> =
    HashMap::with_max_entries(SOCKS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
static UDP_SOCKS: HashMap<u64, UdpSock> =
    HashMap::with_max_entries(SOCKS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
static TCP_LISTENED: HashMap<Seen, u32> =
    HashMap::with_max_entries(SEEN_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
static UDP_LISTENED: HashMap<Seen, u32> =
    HashMap::with_max_entries(SEEN_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Remote address and port of every outbound connection attempt.
#[map]
static CONTACTED: HashMap<Seen, u32> =
    HashMap::with_max_entries(SEEN_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
static REMOTES_SEEN: HashMap<Seen, u32> =
    HashMap::with_max_entries(SEEN_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Connections established during an interval; the value is the epoch.
#[map]
static CONNECTIONS_SEEN: HashMap<TcpSock, u32> =
    HashMap::with_max_entries(SEEN_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
static SOCK_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[map]
static EPOCH: Array<u32> = Array::with_max_entries(1, 0);

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = on_state_change(&ctx);
    0
}

#[inline(always)]
fn on_state_change(ctx: &TracePointContext) -> Option<()> {
    // SAFETY: user space sets LAYOUT before loading; volatile keeps the compiler from
    // folding the zeros it was declared with.
    let layout = unsafe { read_volatile(&LAYOUT) };
    let protocol: u16 = read(ctx, layout.protocol)?;
    if protocol != IPPROTO_TCP {
        return None;
    }
    let old: i32 = read(ctx, layout.oldstate)?;
    let new: i32 = read(ctx, layout.newstate)?;
    // A listener closes with LISTEN -> CLOSE. LISTEN -> SYN_RECV is a new connection's socket
    // cloned from its listener, which leaves the listener as it was.
    let kind = if new == TCP_LISTEN || (old == TCP_LISTEN && new == TCP_CLOSE) {
        TCP_LISTENER
    } else if old == TCP_LISTEN {
        return None;
    } else if new == TCP_ESTABLISHED || old == TCP_ESTABLISHED {
        TCP_CONNECTION
    } else if new == TCP_SYN_SENT || (old == TCP_SYN_SENT && new == TCP_CLOSE) {
        ATTEMPT
    } else {
        return None;
    };
    let netns = sock_netns(ctx, &layout);
    if !followed(netns) {
        return None;
    }
    let family: u16 = read(ctx, layout.family)?;
    let mut sock = TcpSock {
        netns,
        family,
        kind,
        local_port: read(ctx, layout.sport)?,
        remote_port: read(ctx, layout.dport)?,
        ..TcpSock::default()
    };
    if family == AF_INET {
        let local: [u8; 4] = read(ctx, layout.saddr)?;
        let remote: [u8; 4] = read(ctx, layout.daddr)?;
        sock.local_addr[..4].copy_from_slice(&local);
        sock.remote_addr[..4].copy_from_slice(&remote);
    } else if family == AF_INET6 {
        sock.local_addr = read(ctx, layout.saddr_v6)?;
        sock.remote_addr = read(ctx, layout.daddr_v6)?;
    } else {
        return None;
    }
    let epoch = epoch();
    if kind == ATTEMPT {
        if new == TCP_SYN_SENT {
            let contacted = Seen {
                netns,
                addr: sock.remote_addr,
                epoch,
                port: sock.remote_port,
                family,
            };
            remember(&CONTACTED, &contacted);
        } else {
            count(Counter::FailedConnects);
        }
    } else if kind == TCP_LISTENER {
        sock.remote_addr = [0; 16];
        sock.remote_port = 0;
        if new == TCP_LISTEN {
            listener_opened(&sock, epoch);
        } else {
            listener_closed(&sock);
        }
    } else if new == TCP_ESTABLISHED {
        let flags = if old == TCP_SYN_SENT {
            OPENED_OUTBOUND
        } else {
            OPENED_INBOUND
        };
        connection_opened(&sock, flags, epoch);
    } else {
        connection_closed(&sock, epoch);
    }
    Some(())
}

#[inline(always)]
fn listener_opened(sock: &TcpSock, epoch: u32) {
    let state = TcpState {
        opened_epoch: epoch,
        count: 1,
        ..TcpState::default()
    };
    // Another socket may share the key (SO_REUSEPORT): then it is one more on it.
    if TCP_SOCKS.insert(sock, &state, BPF_NOEXIST).is_err() {
        match TCP_SOCKS.get_ptr_mut(sock) {
            // SAFETY: a valid map value. Not atomic (the BPF target has no read-modify-write
            // atomics in core): two sockets of one reuse group changing state on two CPUs
            // in the same instant could miss one count.
            Some(existing) => unsafe { (*existing).count += 1 },
            None => count(Counter::DetailsDropped),
        }
    }
    let seen = Seen {
        netns: sock.netns,
        addr: sock.local_addr,
        epoch,
        port: sock.local_port,
        family: sock.family,
    };
    remember(&TCP_LISTENED, &seen);
}

#[inline(always)]
fn listener_closed(sock: &TcpSock) {
    if let Some(existing) = TCP_SOCKS.get_ptr_mut(sock) {
        // SAFETY: a valid map value (see listener_opened).
        let left = unsafe {
            (*existing).count = (*existing).count.saturating_sub(1);
            (*existing).count
        };
        if left == 0 {
            let _ = TCP_SOCKS.remove(sock);
        }
    }
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
    if TCP_SOCKS.insert(sock, &state, BPF_ANY).is_err() {
        count(Counter::DetailsDropped);
    }
    let remote = Seen {
        netns: sock.netns,
        addr: sock.remote_addr,
        epoch,
        port: 0,
        family: sock.family,
    };
    remember(&REMOTES_SEEN, &remote);
    // SAFETY: as for LAYOUT.
    if unsafe { read_volatile(&RECORD_CONNECTIONS) } != 0
        && CONNECTIONS_SEEN.insert(sock, &epoch, BPF_ANY).is_err()
    {
        count(Counter::DetailsDropped);
    }
}

#[inline(always)]
fn connection_closed(sock: &TcpSock, epoch: u32) {
    // SAFETY: a valid map value, read once.
    if let Some(state) = unsafe { TCP_SOCKS.get(sock) } {
        if state.opened_epoch == epoch {
            count(Counter::ShortLived);
        }
        let _ = TCP_SOCKS.remove(sock);
    }
}

#[cgroup_sock(post_bind4)]
pub fn udp_post_bind4(ctx: SockContext) -> i32 {
    udp_bound::<false>(&ctx);
    1
}

#[cgroup_sock(post_bind6)]
pub fn udp_post_bind6(ctx: SockContext) -> i32 {
    udp_bound::<true>(&ctx);
    1
}

#[inline(always)]
/// `V6` picks the address field: the verifier lets each hook read its own family's only.
fn udp_bound<const V6: bool>(ctx: &SockContext) {
    let sk = ctx.sock;
    // SAFETY: the context's socket is valid for the program run.
    if unsafe { (*sk).protocol } != IPPROTO_UDP {
        return;
    }
    // SAFETY: as above; both helpers take the context.
    let (cookie, netns) = unsafe {
        (
            bpf_get_socket_cookie(sk.cast()),
            bpf_get_netns_cookie(sk.cast()),
        )
    };
    if !followed(netns) {
        return;
    }
    udp_listening::<V6>(cookie, netns, sk);
}

/// The first send of an unbound, unconnected socket binds it to an ephemeral port: from then
/// on it receives on that port like any bound socket.
#[cgroup_sock_addr(sendmsg4)]
pub fn udp_sendmsg4(ctx: SockAddrContext) -> i32 {
    udp_sent::<false>(&ctx);
    1
}

#[cgroup_sock_addr(sendmsg6)]
pub fn udp_sendmsg6(ctx: SockAddrContext) -> i32 {
    udp_sent::<true>(&ctx);
    1
}

#[inline(always)]
fn udp_sent<const V6: bool>(ctx: &SockAddrContext) {
    let addr = ctx.sock_addr;
    // SAFETY: the context is valid for the program run.
    let cookie = unsafe { bpf_get_socket_cookie(addr.cast()) };
    // SAFETY: a valid map value, only tested for presence.
    if unsafe { UDP_SOCKS.get(&cookie) }.is_some() {
        return;
    }
    // SAFETY: as above.
    let netns = unsafe { bpf_get_netns_cookie(addr.cast()) };
    if !followed(netns) {
        return;
    }
    // SAFETY: the context's socket is valid for the program run.
    let sk = unsafe { (*addr).__bindgen_anon_1.sk };
    if sk.is_null() {
        return;
    }
    // SAFETY: checked non-null; the verifier allows reading a socket's fields.
    if unsafe { (*sk).src_port } != 0 {
        udp_listening::<V6>(cookie, netns, sk);
    }
}

#[inline(always)]
fn udp_listening<const V6: bool>(cookie: u64, netns: u64, sk: *const bpf_sock) {
    // SAFETY: callers pass the program's own, valid socket.
    let (family, port) = unsafe { ((*sk).family as u16, (*sk).src_port as u16) };
    let mut sock = UdpSock {
        netns,
        family,
        local_port: port,
        ..UdpSock::default()
    };
    if V6 {
        // SAFETY: as above.
        let ip6 = unsafe { (*sk).src_ip6 };
        for (i, word) in ip6.iter().enumerate() {
            sock.local_addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
    } else {
        // SAFETY: as above.
        let ip4 = unsafe { (*sk).src_ip4 };
        sock.local_addr[..4].copy_from_slice(&ip4.to_ne_bytes());
    }
    if UDP_SOCKS.insert(&cookie, &sock, BPF_ANY).is_err() {
        count(Counter::DetailsDropped);
    }
    let seen = Seen {
        netns,
        addr: sock.local_addr,
        epoch: epoch(),
        port,
        family,
    };
    remember(&UDP_LISTENED, &seen);
}

/// A connected UDP socket is not listening.
#[cgroup_sock_addr(connect4)]
pub fn udp_connect4(ctx: SockAddrContext) -> i32 {
    udp_forget(ctx.sock_addr.cast(), unsafe { (*ctx.sock_addr).protocol });
    1
}

#[cgroup_sock_addr(connect6)]
pub fn udp_connect6(ctx: SockAddrContext) -> i32 {
    udp_forget(ctx.sock_addr.cast(), unsafe { (*ctx.sock_addr).protocol });
    1
}

#[cgroup_sock(sock_release)]
pub fn udp_release(ctx: SockContext) -> i32 {
    udp_forget(ctx.sock.cast(), unsafe { (*ctx.sock).protocol });
    1
}

#[inline(always)]
fn udp_forget(ctx: *mut core::ffi::c_void, protocol: u32) {
    if protocol != IPPROTO_UDP {
        return;
    }
    // SAFETY: `ctx` is the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx) };
    let _ = UDP_SOCKS.remove(&cookie);
}

#[inline(always)]
pub(crate) fn read<T>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    // SAFETY: bounds are checked by the helper the read goes through.
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

/// The namespace cookie of the tracepoint's socket, 0 when the layout is unknown.
#[inline(always)]
fn sock_netns(ctx: &TracePointContext, layout: &Layout) -> u64 {
    read::<u64>(ctx, layout.skaddr).map_or(0, sock_netns_of)
}

/// The namespace cookie of the socket at `sk`, 0 when unknown.
#[inline(always)]
pub(crate) fn sock_netns_of(sk: u64) -> u64 {
    // SAFETY: as for LAYOUT.
    let layout = unsafe { read_volatile(&LAYOUT) };
    if layout.sock_net == 0 || sk == 0 {
        return 0;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one yields an error, not a
    // fault.
    unsafe {
        let Ok(net) = bpf_probe_read_kernel((sk + u64::from(layout.sock_net)) as *const u64) else {
            return 0;
        };
        bpf_probe_read_kernel((net + u64::from(layout.net_cookie)) as *const u64).unwrap_or(0)
    }
}

/// Whether to record a socket of namespace `netns`; 0 is a namespace that could not be read,
/// which user space sorts out.
#[inline(always)]
pub(crate) fn followed(netns: u64) -> bool {
    // SAFETY: as for LAYOUT.
    let filter = unsafe { read_volatile(&NETNS_FILTER) };
    filter == 0 || netns == filter || netns == 0
}

#[inline(always)]
pub(crate) fn epoch() -> u32 {
    EPOCH.get(0).copied().unwrap_or(0)
}

#[inline(always)]
pub(crate) fn remember(set: &HashMap<Seen, u32>, seen: &Seen) {
    if set.insert(seen, &0, BPF_ANY).is_err() {
        count(Counter::DetailsDropped);
    }
}

#[inline(always)]
pub(crate) fn count(counter: Counter) {
    if let Some(counter) = SOCK_COUNTERS.get_ptr_mut(counter.index()) {
        // SAFETY: a per-CPU slot, touched by this CPU only.
        unsafe { *counter += 1 };
    }
}
