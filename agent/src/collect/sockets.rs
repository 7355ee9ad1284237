//! Sockets: turns the kernel's socket maps into the report's listening ports and established
//! connections (what exists now), and its interval sets into the interval's socket metrics
//! (what listened or connected since the previous report). Counterpart of the kernel's `tcp`
//! and `udp` programs.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use anyhow::{Context, Result};
use log::warn;
use tern_common::{
    counters::Counter,
    sockets::{Seen, TCP_CONNECTION, TCP_LISTENER, TcpSock, ip},
};

use super::{Growth, sets};
use crate::{
    host::links,
    kernel::maps::SocketMaps,
    report::{
        Connection, Connections, CustomMetric, Port, PortList, TcpConnections,
        catalog::{self, Metric},
    },
};

pub struct SocketOptions {
    /// The namespace cookie to report; None reports every namespace.
    pub netns: Option<u64>,
    /// List every connection of the interval in `established_connections`, not only the
    /// ones established at report time.
    pub interval_connections: bool,
}

/// One report's worth of socket data.
pub struct Sockets {
    pub listening_tcp_ports: PortList,
    pub listening_udp_ports: PortList,
    pub tcp_connections: TcpConnections,
    pub custom: Vec<(Metric, CustomMetric)>,
}

/// What existed at one moment: kept from one report to the next, because what existed at
/// the start of an interval existed during it.
#[derive(Default)]
struct Snapshot {
    tcp_ports: BTreeSet<u16>,
    udp_ports: BTreeSet<u16>,
    remotes: BTreeSet<IpAddr>,
}

pub struct SocketCollector {
    maps: SocketMaps,
    options: SocketOptions,
    previous: Snapshot,
}

impl SocketCollector {
    /// Takes the first snapshot; the maps are seeded already.
    pub fn start(maps: SocketMaps, options: SocketOptions) -> Result<Self> {
        let mut collector = Self {
            maps,
            options,
            previous: Snapshot::default(),
        };
        let (now, _) = collector.current(&HashMap::new())?;
        collector.previous = now;
        Ok(collector)
    }

    /// The sockets now and those of the interval before `epoch`, whose counters grew by
    /// `growth`.
    pub fn collect(&mut self, epoch: u32, growth: &Growth) -> Result<Sockets> {
        let owners = links::address_owners().unwrap_or_else(|err| {
            warn!("cannot read the interfaces' addresses: {err:#}; interfaces are left out");
            HashMap::new()
        });
        let (now, current) = self.current(&owners)?;
        let netns = self.options.netns;
        let tcp_listened = sets::drain_seen(&mut self.maps.tcp_listened, epoch, netns)?;
        let udp_listened = sets::drain_seen(&mut self.maps.udp_listened, epoch, netns)?;
        let remotes_seen = sets::drain_seen(&mut self.maps.remotes_seen, epoch, netns)?;
        let connections_seen =
            sets::drain_connections(&mut self.maps.connections_seen, epoch, netns)?;

        let mut connections = current.connections;
        if self.options.interval_connections {
            let mut all: BTreeSet<TcpSock> = current.connection_keys;
            all.extend(connections_seen);
            connections = all.iter().map(|s| connection(s, &owners)).collect();
        }
        let union_ports = |before: &BTreeSet<u16>, after: &BTreeSet<u16>, seen: &[Seen]| {
            let mut ports: BTreeSet<u16> = before.union(after).copied().collect();
            ports.extend(seen.iter().map(|s| s.port));
            CustomMetric::NumberList(ports.into_iter().map(u64::from).collect())
        };
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
                union_ports(&self.previous.tcp_ports, &now.tcp_ports, &tcp_listened),
            ),
            (
                catalog::UDP_PORTS,
                union_ports(&self.previous.udp_ports, &now.udp_ports, &udp_listened),
            ),
            (
                catalog::REMOTES,
                CustomMetric::IpList(remotes.iter().map(IpAddr::to_string).collect()),
            ),
            (catalog::DROPPED, growth.of(Counter::DetailsDropped).into()),
        ];
        self.previous = now;
        Ok(Sockets {
            listening_tcp_ports: port_list(current.tcp_ports),
            listening_udp_ports: port_list(current.udp_ports),
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
    fn current(&self, owners: &HashMap<IpAddr, String>) -> Result<(Snapshot, Current)> {
        let mut snapshot = Snapshot::default();
        let mut current = Current::default();
        // Keys only: one syscall per socket instead of two.
        for sock in self.maps.tcp_socks.keys() {
            let sock = sock.context("reading the TCP_SOCKS map")?;
            if !sets::followed(self.options.netns, sock.netns) {
                continue;
            }
            let local = ip(sock.family, &sock.local_addr);
            if sock.kind == TCP_LISTENER {
                snapshot.tcp_ports.insert(sock.local_port);
                current
                    .tcp_ports
                    .insert(port(sock.local_port, local, owners));
            } else if sock.kind == TCP_CONNECTION {
                snapshot.remotes.insert(ip(sock.family, &sock.remote_addr));
                current.connections.push(connection(&sock, owners));
                current.connection_keys.insert(sock);
            }
        }
        for entry in &self.maps.udp_socks {
            let (_, sock) = entry.context("reading the UDP_SOCKS map")?;
            if !sets::followed(self.options.netns, sock.netns) {
                continue;
            }
            snapshot.udp_ports.insert(sock.local_port);
            let local = ip(sock.family, &sock.local_addr);
            current
                .udp_ports
                .insert(port(sock.local_port, local, owners));
        }
        current.connections.sort_unstable();
        Ok((snapshot, current))
    }
}

#[derive(Default)]
struct Current {
    tcp_ports: BTreeSet<Port>,
    udp_ports: BTreeSet<Port>,
    connections: Vec<Connection>,
    connection_keys: BTreeSet<TcpSock>,
}

fn port_list(ports: BTreeSet<Port>) -> PortList {
    PortList {
        total: ports.len() as u64,
        ports: ports.into_iter().collect(),
    }
}

fn port(number: u16, local: IpAddr, owners: &HashMap<IpAddr, String>) -> Port {
    Port {
        port: number,
        interface: interface(local, owners),
    }
}

fn connection(sock: &TcpSock, owners: &HashMap<IpAddr, String>) -> Connection {
    let remote = SocketAddr::new(ip(sock.family, &sock.remote_addr), sock.remote_port);
    Connection {
        remote_addr: remote.to_string(),
        local_port: sock.local_port,
        local_interface: interface(ip(sock.family, &sock.local_addr), owners),
    }
}

/// The interface that holds `addr`. A wildcard address has no single interface; any
/// 127.0.0.0/8 address is loopback's, though only 127.0.0.1 is listed on it.
fn interface(addr: IpAddr, owners: &HashMap<IpAddr, String>) -> Option<String> {
    if addr.is_unspecified() {
        return None;
    }
    owners.get(&addr).cloned().or_else(|| match addr {
        IpAddr::V4(v4) if v4.is_loopback() => owners.get(&IpAddr::V4(Ipv4Addr::LOCALHOST)).cloned(),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    fn owners() -> HashMap<IpAddr, String> {
        HashMap::from([
            ("127.0.0.1".parse().unwrap(), "lo".to_owned()),
            ("::1".parse().unwrap(), "lo".to_owned()),
            ("10.0.0.5".parse().unwrap(), "eth0".to_owned()),
            ("2001:db8::5".parse().unwrap(), "eth0".to_owned()),
        ])
    }

    #[test]
    fn a_wildcard_bind_has_no_interface() {
        for wildcard in ["0.0.0.0", "::"] {
            assert_eq!(interface(wildcard.parse().unwrap(), &owners()), None);
        }
    }

    #[test]
    fn a_bound_address_reports_the_interface_holding_it() {
        let o = owners();
        assert_eq!(
            interface("10.0.0.5".parse().unwrap(), &o).as_deref(),
            Some("eth0")
        );
        assert_eq!(
            interface("2001:db8::5".parse().unwrap(), &o).as_deref(),
            Some("eth0")
        );
        assert_eq!(
            interface("127.0.0.53".parse().unwrap(), &o).as_deref(),
            Some("lo")
        );
        assert_eq!(interface("::1".parse().unwrap(), &o).as_deref(), Some("lo"));
        assert_eq!(interface("192.0.2.1".parse().unwrap(), &o), None);
    }

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
