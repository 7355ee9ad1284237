//! UDP: the bound unconnected sockets that exist now, and the ports that listened during the
//! current interval.
//!
//! Cgroup hooks on the cgroup-v2 root see explicit binds (post_bind), implicit ones (the
//! first unconnected send), connects (a connected socket is not listening) and releases.
//! Sockets are keyed by their cookie, as the start-up snapshot reports them.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_NO_PREALLOC, bpf_sock},
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::{cgroup_sock, cgroup_sock_addr, map},
    maps::HashMap,
    programs::{SockAddrContext, SockContext},
};
use tern_common::{
    changes::Changed,
    counters::Counter,
    sockets::{FOLLOWED_BY_COOKIE, SEEN_MAX_ENTRIES, SOCKS_MAX_ENTRIES, Seen, UdpSock},
};

use crate::{
    shared::{changed, count, epoch, followed, remember},
    trouble::{Trouble, report},
};

/// `bpf_sock::protocol` of a UDP socket.
const IPPROTO_UDP: u32 = 17;

#[map(name = "m04")]
static UDP_SOCKS: HashMap<u64, UdpSock> =
    HashMap::with_max_entries(SOCKS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "m06")]
static UDP_LISTENED: HashMap<Seen, u32> =
    HashMap::with_max_entries(SEEN_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// `names::UDP_POST_BIND4`: UDP sockets bound, IPv4 (cgroup post_bind4).
#[cgroup_sock(post_bind4)]
pub fn p04(ctx: SockContext) -> i32 {
    udp_bound::<false>(&ctx);
    1
}

/// `names::UDP_POST_BIND6`: UDP sockets bound, IPv6 (cgroup post_bind6).
#[cgroup_sock(post_bind6)]
pub fn p05(ctx: SockContext) -> i32 {
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
    if !followed(FOLLOWED_BY_COOKIE, netns) {
        return;
    }
    udp_listening::<V6>(cookie, netns, sk);
}

/// The first send of an unbound, unconnected socket binds it to an ephemeral port: from then
/// on it receives on that port like any bound socket.
/// `names::UDP_SENDMSG4`: UDP datagrams sent unconnected, IPv4 (cgroup sendmsg4).
#[cgroup_sock_addr(sendmsg4)]
pub fn p06(ctx: SockAddrContext) -> i32 {
    udp_sent::<false>(&ctx);
    1
}

/// `names::UDP_SENDMSG6`: UDP datagrams sent unconnected, IPv6 (cgroup sendmsg6).
#[cgroup_sock_addr(sendmsg6)]
pub fn p07(ctx: SockAddrContext) -> i32 {
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
    if !followed(FOLLOWED_BY_COOKIE, netns) {
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
    match UDP_SOCKS.insert(&cookie, &sock, u64::from(BPF_ANY)) {
        Ok(()) => changed(Changed::UdpSocks),
        Err(_) => {
            count(Counter::DetailsDropped);
            report(Trouble::UdpSocksFull);
        }
    }
    let seen = Seen {
        netns,
        addr: sock.local_addr,
        epoch: epoch(),
        port,
        family,
    };
    remember(
        &UDP_LISTENED,
        Changed::UdpListened,
        &seen,
        Trouble::UdpListenedFull,
    );
}

/// A connected UDP socket is not listening.
/// `names::UDP_CONNECT4`: UDP sockets connected, IPv4 (cgroup connect4).
#[cgroup_sock_addr(connect4)]
pub fn p08(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context is valid for the program run.
    udp_forget(ctx.sock_addr.cast(), unsafe { (*ctx.sock_addr).protocol });
    1
}

/// `names::UDP_CONNECT6`: UDP sockets connected, IPv6 (cgroup connect6).
#[cgroup_sock_addr(connect6)]
pub fn p09(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context is valid for the program run.
    udp_forget(ctx.sock_addr.cast(), unsafe { (*ctx.sock_addr).protocol });
    1
}

/// `names::UDP_RELEASE`: UDP sockets closed (cgroup sock_release).
#[cgroup_sock(sock_release)]
pub fn p10(ctx: SockContext) -> i32 {
    // SAFETY: the context's socket is valid for the program run.
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
    if UDP_SOCKS.remove(&cookie).is_ok() {
        changed(Changed::UdpSocks);
    }
}
