//! The socket snapshot: the sockets of tern's namespace as NETLINK_SOCK_DIAG lists them. At
//! start, so sockets opened before tern started are known; at each report, where no kernel
//! program follows sockets. Read-only; what the snapshot becomes is the collectors' job.

use std::net::IpAddr;

use anyhow::{Context, Result};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use super::netlink;

/// The kernel's numbers as sock_diag carries them. UDP sockets reuse the TCP states: a bound
/// unconnected UDP socket is CLOSE.
pub use netlink_packet_sock_diag::constants::{
    IPPROTO_TCP, IPPROTO_UDP, TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN,
};

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
    let mut all = Vec::new();
    each(protocol, states, |socket| all.push(socket))?;
    Ok(all)
}

/// Hands every socket of `protocol` (IPv4 and IPv6) in one of `states` to `f`, one at a
/// time as the kernel lists them.
pub fn each(protocol: u8, states: StateFlags, mut f: impl FnMut(DiagSocket)) -> Result<()> {
    let mut socket =
        Socket::new(NETLINK_SOCK_DIAG).context("opening a NETLINK_SOCK_DIAG socket")?;
    socket
        .bind_auto()
        .context("binding the NETLINK_SOCK_DIAG socket")?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("connecting the NETLINK_SOCK_DIAG socket")?;
    let mut buf = Vec::with_capacity(64 * 1024);
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
        netlink::each(&socket, &mut buf, request, |message| {
            let SockDiagMessage::InetResponse(response) = message else {
                return;
            };
            let id = &response.header.socket_id;
            let words = [&id.cookie[..4], &id.cookie[4..]]
                .map(|w| u64::from(u32::from_ne_bytes(w.try_into().expect("4 bytes"))));
            f(DiagSocket {
                state: response.header.state,
                local: id.source_address,
                local_port: id.source_port,
                remote: id.destination_address,
                remote_port: id.destination_port,
                cookie: words[0] | words[1] << 32,
            });
        })
        .context("listing the sockets (sock_diag)")?;
    }
    Ok(())
}

pub fn states(states: &[u8]) -> StateFlags {
    StateFlags::from_bits_truncate(states.iter().fold(0, |acc, s| acc | 1 << s))
}
