//! TCP: turns the kernel's TCP maps into the report's listening TCP ports and established
//! connections (what exists now), and its interval sets into the interval's TCP metrics
//! (what listened, opened or was connected to since the previous report). Counterpart of the
//! kernel's `tcp` program.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use anyhow::{Context, Result};
use tern_common::{
    counters::Counter,
    sockets::{TCP_CONNECTION, TCP_LISTENER, TcpSock, ip},
};

use super::{
    Growth,
    ports::{self, Owners},
    seed, sets,
};
use crate::{
    kernel::maps::TcpMaps,
    report::{
        Connection, Connections, CustomMetric, Port, PortList, TcpConnections,
        catalog::{self, Metric},
    },
};

/// One report's worth of TCP data.
pub struct Tcp {
    pub listening_tcp_ports: PortList,
    pub tcp_connections: TcpConnections,
    pub custom: Vec<(Metric, CustomMetric)>,
}

/// What existed at one moment: kept from one report to the next, because what existed at
/// the start of an interval existed during it.
#[derive(Default)]
struct Snapshot {
    ports: BTreeSet<u16>,
    remotes: BTreeSet<IpAddr>,
}

#[derive(Default)]
struct Current {
    ports: BTreeSet<Port>,
    connections: Vec<Connection>,
    connection_keys: BTreeSet<TcpSock>,
}

pub struct TcpCollector {
    maps: TcpMaps,
    /// The namespace cookie to report; None reports every namespace.
    netns: Option<u64>,
    /// List every connection of the interval in `established_connections`, not only the
    /// ones established at report time.
    interval_connections: bool,
    /// Where the programs see no close of a socket older than tern (the sock_ops program),
    /// the name of tern's namespace: its seeded sockets are checked against sock_diag at
    /// each report.
    unwatched_seeds: Option<u64>,
    previous: Snapshot,
}

impl TcpCollector {
    /// Takes the first snapshot; the maps are seeded already.
    pub fn start(
        maps: TcpMaps,
        netns: Option<u64>,
        interval_connections: bool,
        unwatched_seeds: Option<u64>,
    ) -> Result<Self> {
        let mut collector = Self {
            maps,
            netns,
            interval_connections,
            unwatched_seeds,
            previous: Snapshot::default(),
        };
        let (now, _) = collector.current(&Owners::new())?;
        collector.previous = now;
        Ok(collector)
    }

    /// The sockets now and those of the interval before `epoch`, whose counters grew by
    /// `growth`.
    pub fn collect(&mut self, epoch: u32, growth: &Growth, owners: &Owners) -> Result<Tcp> {
        if let Some(own) = self.unwatched_seeds {
            seed::forget_closed(&mut self.maps.socks, own)?;
        }
        let (now, current) = self.current(owners)?;
        let netns = self.netns;
        let listened = sets::drain_seen(&mut self.maps.listened, epoch, netns)?;
        let remotes_seen = sets::drain_seen(&mut self.maps.remotes_seen, epoch, netns)?;
        let connections_seen =
            sets::drain_connections(&mut self.maps.connections_seen, epoch, netns)?;

        let mut connections = current.connections;
        if self.interval_connections {
            let mut all: BTreeSet<TcpSock> = current.connection_keys;
            all.extend(connections_seen);
            connections = all.iter().map(|s| connection(s, owners)).collect();
        }
        let mut remotes: BTreeSet<IpAddr> =
            self.previous.remotes.union(&now.remotes).copied().collect();
        remotes.extend(remotes_seen.iter().map(|s| ip(s.family, &s.addr)));
        let inbound = growth.of(Counter::OpenedInbound);
        let outbound = growth.of(Counter::OpenedOutbound);
        let custom = vec![
            (catalog::OPENED, CustomMetric::from(inbound + outbound)),
            (catalog::OPENED_INBOUND, inbound.into()),
            (catalog::OPENED_OUTBOUND, outbound.into()),
            (catalog::SHORT_LIVED, growth.of(Counter::ShortLived).into()),
            (
                catalog::TCP_PORTS,
                CustomMetric::NumberList(ports::interval_ports(
                    &self.previous.ports,
                    &now.ports,
                    &listened,
                )),
            ),
            (
                catalog::REMOTES,
                CustomMetric::IpList(remotes.iter().map(IpAddr::to_string).collect()),
            ),
        ];
        self.previous = now;
        Ok(Tcp {
            listening_tcp_ports: ports::port_list(current.ports),
            tcp_connections: TcpConnections {
                established_connections: Connections {
                    total: connections.len() as u64,
                    connections,
                },
            },
            custom,
        })
    }

    /// The sockets that exist now.
    fn current(&self, owners: &Owners) -> Result<(Snapshot, Current)> {
        let mut snapshot = Snapshot::default();
        let mut current = Current::default();
        // Keys only: one syscall per socket instead of two.
        for sock in self.maps.socks.keys() {
            let sock = sock.context("reading the TCP_SOCKS map")?;
            if !sets::followed(self.netns, sock.netns) {
                continue;
            }
            if sock.kind == TCP_LISTENER {
                snapshot.ports.insert(sock.local_port);
                let local = ip(sock.family, &sock.local_addr);
                current
                    .ports
                    .insert(ports::port(sock.local_port, local, owners));
            } else if sock.kind == TCP_CONNECTION {
                snapshot.remotes.insert(ip(sock.family, &sock.remote_addr));
                current.connections.push(connection(&sock, owners));
                current.connection_keys.insert(sock);
            }
        }
        current.connections.sort_unstable();
        Ok((snapshot, current))
    }
}

pub(super) fn connection(sock: &TcpSock, owners: &Owners) -> Connection {
    let remote = SocketAddr::new(ip(sock.family, &sock.remote_addr), sock.remote_port);
    Connection {
        remote_addr: remote.to_string(),
        local_port: sock.local_port,
        local_interface: ports::interface(ip(sock.family, &sock.local_addr), owners),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;
    use crate::collect::ports::tests::owners;

    #[test]
    fn ipv4_mapped_ipv6_is_shown_as_ipv4() {
        let mapped: Ipv6Addr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            ip(tern_common::sockets::AF_INET6, &mapped.octets()).to_string(),
            "192.0.2.7"
        );
        let sock = TcpSock {
            family: tern_common::sockets::AF_INET6,
            remote_addr: mapped.octets(),
            remote_port: 443,
            local_addr: "::ffff:10.0.0.5".parse::<Ipv6Addr>().unwrap().octets(),
            local_port: 5000,
            ..TcpSock::default()
        };
        let c = connection(&sock, &owners());
        assert_eq!(c.remote_addr, "192.0.2.7:443");
        assert_eq!(c.local_interface.as_deref(), Some("eth0"));
        let v6 = TcpSock {
            family: tern_common::sockets::AF_INET6,
            remote_addr: "2001:db8::9".parse::<Ipv6Addr>().unwrap().octets(),
            remote_port: 22,
            ..TcpSock::default()
        };
        assert_eq!(connection(&v6, &owners()).remote_addr, "[2001:db8::9]:22");
    }
}
