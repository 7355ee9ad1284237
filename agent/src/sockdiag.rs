//! The start-up snapshot: the sockets of tern's namespace as NETLINK_SOCK_DIAG lists them,
//! so sockets opened before tern started are known. Read-only; seeding the kernel maps
//! with it is the collector's job.

use std::net::IpAddr;

use anyhow::{Context, Result, bail};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use crate::netlink;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// Kernel TCP states, which UDP sockets reuse: a bound unconnected UDP socket is CLOSE.
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_LISTEN: u8 = 10;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    pub state: u8,
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    pub cookie: u64,
}

/// Every socket of `protocol` (IPv4 and IPv6) in one of `states`.
pub fn dump(protocol: u8, states: StateFlags) -> Result<Vec<DiagSocket>> {
    let mut socket =
        Socket::new(NETLINK_SOCK_DIAG).context("opening a NETLINK_SOCK_DIAG socket")?;
    socket
        .bind_auto()
        .context("binding the NETLINK_SOCK_DIAG socket")?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("connecting the NETLINK_SOCK_DIAG socket")?;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut all = Vec::new();
    for family in [AF_INET, AF_INET6] {
        let socket_id = if family == AF_INET {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        };
        let request = SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol,
            extensions: ExtensionFlags::empty(),
            states: states.clone(),
            socket_id,
        });
        for message in netlink::dump(&socket, &mut buf, request)? {
            let SockDiagMessage::InetResponse(response) = message else {
                continue;
            };
            let id = &response.header.socket_id;
            let words = [&id.cookie[..4], &id.cookie[4..]]
                .map(|w| u64::from(u32::from_ne_bytes(w.try_into().expect("4 bytes"))));
            all.push(DiagSocket {
                state: response.header.state,
                local: id.source_address,
                local_port: id.source_port,
                remote: id.destination_address,
                remote_port: id.destination_port,
                cookie: words[0] | words[1] << 32,
            });
        }
    }
    Ok(all)
}

/// The cookie of tern's own network namespace, as the kernel programs see it.
pub fn own_netns_cookie() -> Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // An unbound socket is enough: the cookie is the namespace's, and nothing listens.
    // SAFETY: socket() has no memory preconditions; a valid fd is owned right away.
    let socket = unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!(
                "cannot open a socket to learn the namespace cookie: {}",
                std::io::Error::last_os_error()
            );
        }
        <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
    };
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len describe a writable u64.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        bail!(
            "cannot read this network namespace's cookie (SO_NETNS_COOKIE needs Linux 5.14): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(cookie)
}

/// Runs `f` in every other network namespace (that a process is in, or named under
/// /run/netns or Docker's directory), on this thread, and
/// returns to tern's own namespace after each. The thread's namespace is the only state
/// changed, and it is restored before returning, also on error.
pub fn in_other_namespaces<T>(mut f: impl FnMut() -> Result<T>) -> Result<Vec<T>> {
    use std::{collections::HashSet, fs::File, os::fd::AsRawFd, os::unix::fs::MetadataExt};

    let own = File::open("/proc/self/ns/net").context("opening /proc/self/ns/net")?;
    let own_id = own.metadata().map(|m| (m.dev(), m.ino()))?;
    let mut seen = HashSet::from([own_id]);
    let mut results = Vec::new();
    // Namespaces that processes are in, and named ones that may have none (iproute2's,
    // container runtimes').
    let processes = std::fs::read_dir("/proc")
        .context("reading /proc")?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|e| e.path().join("ns/net"));
    let named = ["/run/netns", "/var/run/docker/netns"]
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|dir| dir.flatten().map(|e| e.path()));
    for path in processes.chain(named) {
        // Processes come and go: one that vanished or is not ours to see is skipped.
        let Ok(ns) = File::open(&path) else {
            continue;
        };
        let Ok(id) = ns.metadata().map(|m| (m.dev(), m.ino())) else {
            continue;
        };
        if !seen.insert(id) {
            continue;
        }
        // SAFETY: setns on valid namespace fds; only this thread's namespace changes.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            continue;
        }
        let result = f();
        // SAFETY: as above, back to the namespace tern started in.
        if unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!(
                "cannot return to tern's own network namespace: {}",
                std::io::Error::last_os_error()
            );
        }
        results.push(result?);
    }
    Ok(results)
}

pub fn states(states: &[u8]) -> StateFlags {
    StateFlags::from_bits_truncate(states.iter().fold(0, |acc, s| acc | 1 << s))
}
