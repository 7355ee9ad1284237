//! TCP: the listeners and connections that exist now, and what listened, connected or was
//! contacted during the current interval. Counterpart of the loader's `collect::sockets`.
//!
//! The tracepoint `sock:inet_sock_set_state` sees every state change of every TCP socket.
//! Its field offsets and the offset of the namespace in `struct sock` come from user space
//! (`SOCK_STATE_OFFSETS`), which reads them from the tracepoint's format and the BTF.

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_F_NO_PREALLOC, BPF_NOEXIST, BPF_TCP_CLOSE, BPF_TCP_ESTABLISHED,
        BPF_TCP_LISTEN, BPF_TCP_SYN_SENT,
    },
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use tern_common::{
    counters::Counter,
    sockets::{
        AF_INET, AF_INET6, FOLLOWED_BY_ADDRESS, OPENED_INBOUND, OPENED_OUTBOUND, SEEN_MAX_ENTRIES,
        SOCKS_MAX_ENTRIES, Seen, SockStateOffsets, TCP_CONNECTION, TCP_LISTENER, TcpSock, TcpState,
    },
};

use crate::{
    shared::{count, epoch, followed, read, remember, sock_netns_of, sock_state_offsets},
    trouble::{Trouble, report},
};

/// The tracepoint's `protocol` field of a TCP socket.
const IPPROTO_TCP: u16 = 6;
/// An outbound connection attempt: entering SYN_SENT, or leaving it for CLOSE.
const ATTEMPT: u16 = 0;

/// Non-zero when user space lists every connection of an interval, which then costs one
/// more map update per connection.
#[unsafe(no_mangle)]
static RECORD_CONNECTIONS: u32 = 0;

#[map]
static TCP_SOCKS: HashMap<TcpSock, TcpState> =
    HashMap::with_max_entries(SOCKS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
static TCP_LISTENED: HashMap<Seen, u32> =
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

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
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
    let old: u32 = field(ctx, offsets.oldstate, Trouble::StateOldstate)?;
    let new: u32 = field(ctx, offsets.newstate, Trouble::StateNewstate)?;
    // A listener closes with LISTEN -> CLOSE. LISTEN -> SYN_RECV is a new connection's socket
    // cloned from its listener, which leaves the listener as it was.
    let kind = if new == BPF_TCP_LISTEN || (old == BPF_TCP_LISTEN && new == BPF_TCP_CLOSE) {
        TCP_LISTENER
    } else if old == BPF_TCP_LISTEN {
        return None;
    } else if new == BPF_TCP_ESTABLISHED || old == BPF_TCP_ESTABLISHED {
        TCP_CONNECTION
    } else if new == BPF_TCP_SYN_SENT || (old == BPF_TCP_SYN_SENT && new == BPF_TCP_CLOSE) {
        ATTEMPT
    } else {
        return None;
    };
    let netns = sock_netns(ctx, &offsets);
    if !followed(FOLLOWED_BY_ADDRESS, netns) {
        return None;
    }
    let family: u16 = field(ctx, offsets.family, Trouble::StateFamily)?;
    let mut sock = TcpSock {
        netns,
        family,
        kind,
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
    let epoch = epoch();
    if kind == ATTEMPT {
        if new == BPF_TCP_SYN_SENT {
            let contacted = Seen {
                netns,
                addr: sock.remote_addr,
                epoch,
                port: sock.remote_port,
                family,
            };
            remember(&CONTACTED, &contacted, Trouble::ContactedFull);
        } else {
            count(Counter::FailedConnects);
        }
    } else if kind == TCP_LISTENER {
        sock.remote_addr = [0; 16];
        sock.remote_port = 0;
        if new == BPF_TCP_LISTEN {
            listener_opened(&sock, epoch);
        } else {
            listener_closed(&sock);
        }
    } else if new == BPF_TCP_ESTABLISHED {
        let flags = if old == BPF_TCP_SYN_SENT {
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
    field::<u64>(ctx, offsets.skaddr, Trouble::StateSkaddr)
        .map_or(0, |sk| sock_netns_of(sk, offsets))
}

#[inline(always)]
fn listener_opened(sock: &TcpSock, epoch: u32) {
    let state = TcpState {
        opened_epoch: epoch,
        count: 1,
        ..TcpState::default()
    };
    // Another socket may share the key (SO_REUSEPORT): then it is one more on it.
    if TCP_SOCKS
        .insert(sock, &state, u64::from(BPF_NOEXIST))
        .is_err()
    {
        match TCP_SOCKS.get_ptr_mut(sock) {
            // SAFETY: a valid map value. Not atomic (the BPF target has no read-modify-write
            // atomics in core): two sockets of one reuse group changing state on two CPUs
            // in the same instant could miss one count.
            Some(existing) => unsafe { (*existing).count += 1 },
            None => {
                count(Counter::DetailsDropped);
                report(Trouble::TcpSocksFull);
            }
        }
    }
    let seen = Seen {
        netns: sock.netns,
        addr: sock.local_addr,
        epoch,
        port: sock.local_port,
        family: sock.family,
    };
    remember(&TCP_LISTENED, &seen, Trouble::TcpListenedFull);
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
    if TCP_SOCKS.insert(sock, &state, u64::from(BPF_ANY)).is_err() {
        count(Counter::DetailsDropped);
        report(Trouble::TcpSocksFull);
    }
    let remote = Seen {
        netns: sock.netns,
        addr: sock.remote_addr,
        epoch,
        port: 0,
        family: sock.family,
    };
    remember(&REMOTES_SEEN, &remote, Trouble::RemotesSeenFull);
    if record_connections()
        && CONNECTIONS_SEEN
            .insert(sock, &epoch, u64::from(BPF_ANY))
            .is_err()
    {
        count(Counter::DetailsDropped);
        report(Trouble::ConnectionsSeenFull);
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

#[inline(always)]
fn record_connections() -> bool {
    // SAFETY: user space sets RECORD_CONNECTIONS before loading; volatile keeps the compiler
    // from folding the zero it was declared with.
    unsafe { read_volatile(&RECORD_CONNECTIONS) != 0 }
}
