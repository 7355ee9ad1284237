//! How the kernel programs name a network namespace: tern opens a socket of its own in it,
//! the programs record that socket as they record every other, and tern reads the name they
//! gave it. The tracepoint programs name a namespace by the address of its `struct net`,
//! the cgroup hooks by its cookie; learning both this way needs neither SO_NETNS_COOKIE
//! (Linux 5.14) nor the kernel's BTF. The probe sockets bind to 127.0.0.1 with a kernel-chosen
//! port and close at once; whatever they left in the interval sets is removed.

use std::{
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result, bail};
use aya::maps::{HashMap, MapData};
use tern_common::sockets::{AF_INET, Seen, TCP_LISTENER};

use crate::kernel::maps::{NetnsNames, TcpMaps, UdpMaps};

const LOOPBACK: [u8; 4] = [127, 0, 0, 1];

/// Learns the names of this thread's network namespace from the programs attached: `tcp`
/// when the TCP tracepoint is, `udp` when the UDP hooks are.
pub fn learn(tcp: Option<&mut TcpMaps>, udp: Option<&mut UdpMaps>) -> Result<NetnsNames> {
    Ok(NetnsNames {
        by_address: tcp.map(learn_by_address).transpose()?,
        by_cookie: udp.map(learn_by_cookie).transpose()?,
    })
}

/// Whether the TCP programs give tern's namespace and one of tern's own making two names:
/// where no BTF located the namespace in `struct sock`, this checks the layout tern assumed.
pub fn check_layout(maps: &mut TcpMaps) -> Result<()> {
    let own = learn_by_address(maps)?;
    let other = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare changes this thread's network namespace only; the thread
                // ends, and the namespace with it, when the check is done.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    bail!("creating a network namespace to check in: {}", last_error());
                }
                learn_by_address(maps)
            })
            .join()
            .unwrap_or_else(|_| bail!("the namespace check's thread failed"))
    })?;
    if other == own {
        bail!(
            "without BTF, two namespaces got the same name: struct sock is not laid out as \
             tern assumes"
        );
    }
    Ok(())
}

/// A TCP listener: the tracepoint records it in `TCP_LISTENERS` under its namespace's
/// address.
fn learn_by_address(maps: &mut TcpMaps) -> Result<u64> {
    let listener = probe(libc::SOCK_STREAM)?;
    // SAFETY: a valid socket fd.
    if unsafe { libc::listen(listener.0.as_raw_fd(), 1) } != 0 {
        bail!("listening on the probe socket: {}", last_error());
    }
    let port = listener.1;
    let mut names = Vec::new();
    for key in maps.listeners.keys() {
        let key = key.context("reading the TCP_LISTENERS map")?;
        // By port alone: in a namespace whose loopback is down, the address the
        // tracepoint reads is not the one bound.
        if key.kind == TCP_LISTENER && key.family == AF_INET && key.local_port == port {
            names.push(key.netns);
        }
    }
    drop(listener);
    forget_seen(&mut maps.listened, port, &names);
    match names[..] {
        [name] if name != 0 => Ok(name),
        [0] => bail!("the TCP programs cannot read the namespace of a socket"),
        [] => bail!("the TCP programs did not record a listener tern opened"),
        // Another namespace listens on the same port: which one is tern's is unknown, so the
        // caller cannot follow only its own.
        _ => bail!("two namespaces listened on port {port} at once; try again"),
    }
}

/// A bound UDP socket: the hooks record it in `UDP_SOCKS` under its own cookie, with its
/// namespace's cookie.
fn learn_by_cookie(maps: &mut UdpMaps) -> Result<u64> {
    const SO_COOKIE: libc::c_int = 57;
    let (socket, port) = probe(libc::SOCK_DGRAM)?;
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len describe a writable u64.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        bail!("reading the probe socket's cookie: {}", last_error());
    }
    let sock = maps.socks.get(&cookie, 0);
    drop(socket);
    let sock = sock.context("the UDP hooks did not record a socket tern bound")?;
    forget_seen(&mut maps.listened, port, &[sock.netns]);
    if sock.netns == 0 {
        bail!("the UDP hooks cannot read the namespace of a socket");
    }
    Ok(sock.netns)
}

/// A socket of `kind` bound to 127.0.0.1 on a port the kernel picks, and that port. Bound
/// freely, so a namespace whose loopback is down works too.
fn probe(kind: libc::c_int) -> Result<(OwnedFd, u16)> {
    // SAFETY: socket() has no memory preconditions; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, kind | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("opening a probe socket: {}", last_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let on: libc::c_int = 1;
    // SAFETY: `on` is a readable int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_FREEBIND,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("setting IP_FREEBIND on the probe socket: {}", last_error());
    }
    let mut addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(LOOPBACK),
        },
        sin_zero: [0; 8],
    };
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_in of `len` bytes, readable and writable.
    let bound = unsafe {
        libc::bind(fd, (&raw const addr).cast(), len) == 0
            && libc::getsockname(fd, (&raw mut addr).cast(), &raw mut len) == 0
    };
    if !bound {
        bail!("binding the probe socket to 127.0.0.1: {}", last_error());
    }
    Ok((socket, u16::from_be(addr.sin_port)))
}

/// Removes what a probe on `port` in namespace `netns` left in an interval set, so no report
/// lists it.
fn forget_seen(set: &mut HashMap<MapData, Seen, u32>, port: u16, netns: &[u64]) {
    let probes: Vec<Seen> = set
        .keys()
        .flatten()
        .filter(|s| s.port == port && s.family == AF_INET && netns.contains(&s.netns))
        .collect();
    for seen in &probes {
        let _ = set.remove(seen);
    }
}

fn last_error() -> std::io::Error {
    std::io::Error::last_os_error()
}
