// Over 400 lines: the sockets without eBPF and the tests that hold them to what the kernel
// programs report, sockets of every kind and form, side by side.
//! Sockets without eBPF: the report's listening TCP ports, established TCP connections and
//! listening UDP ports, read from sock_diag at report time. Each socket is put in the form
//! the kernel maps hold it and converted by the eBPF collectors' own helpers, so a report
//! built from here has the same entries as one built from the maps.

use std::{collections::BTreeSet, net::IpAddr};

use anyhow::Result;
use tern_common::sockets::{TCP_CONNECTION, TcpSock, ip, raw};

use super::{
    ports::{self, Owners},
    shortlist::Shortlist,
    tcp::{self, Tcp},
    udp::Udp,
};
use crate::{
    host::sockdiag::{self, DiagSocket},
    report::{Port, TcpConnections},
};

/// The TCP and UDP standard metrics of tern's namespace now, with no custom metrics.
///
/// Of the eBPF collectors' options, none applies here. `interval_connections` cannot: only
/// the connections that exist at report time are visible, not those that closed during the
/// interval. Nor can reporting every namespace: sock_diag answers for the namespace of the
/// socket asking, and entering the others at each report needs CAP_SYS_ADMIN, which tern
/// gives up after start.
///
/// A report lists at most `most_listed` connections: only those are kept, however many
/// sockets sock_diag lists.
pub fn collect(most_listed: usize) -> Result<(Tcp, Udp)> {
    let owners = ports::owners();
    let mut tcp = TcpMetrics::new(most_listed, &owners);
    sockdiag::each(
        sockdiag::IPPROTO_TCP,
        sockdiag::states(&[sockdiag::TCP_LISTEN, sockdiag::TCP_ESTABLISHED]),
        |s| tcp.add(&s),
    )?;
    // A bound unconnected UDP socket is CLOSE; a connected one is ESTABLISHED and left out,
    // as the kernel programs leave it out.
    let udp = sockdiag::dump(
        sockdiag::IPPROTO_UDP,
        sockdiag::states(&[sockdiag::TCP_CLOSE]),
    )?;
    Ok((tcp.finish(), udp_metrics(&udp, &owners)))
}

/// The TCP metrics, taken in one socket at a time.
struct TcpMetrics<'a> {
    owners: &'a Owners,
    listening: BTreeSet<Port>,
    connections: Shortlist,
}

impl<'a> TcpMetrics<'a> {
    fn new(most_listed: usize, owners: &'a Owners) -> Self {
        Self {
            owners,
            listening: BTreeSet::new(),
            connections: Shortlist::new(most_listed),
        }
    }

    fn add(&mut self, s: &DiagSocket) {
        if s.state == sockdiag::TCP_LISTEN {
            self.listening
                .insert(ports::port(s.local_port, as_read(s.local), self.owners));
        } else if s.state == sockdiag::TCP_ESTABLISHED {
            self.connections
                .add(tcp::connection(&connection_key(s), self.owners));
        }
    }

    fn finish(self) -> Tcp {
        Tcp {
            listening_tcp_ports: ports::port_list(self.listening),
            tcp_connections: TcpConnections {
                established_connections: self.connections.connections(),
            },
            custom: Vec::new(),
            untracked: 0,
        }
    }
}

fn udp_metrics(sockets: &[DiagSocket], owners: &Owners) -> Udp {
    let listening = sockets
        .iter()
        .filter(|s| s.state == sockdiag::TCP_CLOSE && s.local_port != 0)
        .map(|s| ports::port(s.local_port, as_read(s.local), owners))
        .collect();
    Udp {
        listening_udp_ports: ports::port_list(listening),
        custom: Vec::new(),
    }
}

/// An address as the collectors read it back from a kernel map: an IPv4-mapped IPv6
/// address becomes IPv4.
fn as_read(addr: IpAddr) -> IpAddr {
    let (family, bytes) = raw(addr);
    ip(family, &bytes)
}

/// The connection's key as the kernel's TCP program writes it.
fn connection_key(s: &DiagSocket) -> TcpSock {
    let (family, local_addr) = raw(s.local);
    TcpSock {
        local_addr,
        local_port: s.local_port,
        remote_addr: raw(s.remote).1,
        remote_port: s.remote_port,
        family,
        kind: TCP_CONNECTION,
        ..TcpSock::default()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeSet, HashMap},
        net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    };

    use serde_json::Value;

    use super::*;
    use crate::{
        collect::ports::tests::owners,
        host::test_netns::{in_fresh_netns, sh, veth, wait_for},
        report::{Connection, Port},
    };

    fn socket(
        state: u8,
        local: &str,
        local_port: u16,
        remote: &str,
        remote_port: u16,
    ) -> DiagSocket {
        DiagSocket {
            state,
            local: local.parse().unwrap(),
            local_port,
            remote: remote.parse().unwrap(),
            remote_port,
            cookie: u64::from(local_port),
        }
    }

    fn port(port: u16, interface: Option<&str>) -> Port {
        Port {
            port,
            interface: interface.map(str::to_owned),
        }
    }

    #[test]
    fn sockets_convert_as_the_kernel_maps_convert_them() {
        use sockdiag::{TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN};
        let owners = owners();
        // Keeps two of three connections: the first two in report order.
        let mut tcp = TcpMetrics::new(2, &owners);
        for s in [
            socket(TCP_LISTEN, "0.0.0.0", 80, "0.0.0.0", 0),
            socket(TCP_LISTEN, "::", 80, "::", 0),
            socket(TCP_LISTEN, "::ffff:10.0.0.5", 81, "::", 0),
            socket(TCP_LISTEN, "2001:db8::5", 82, "::", 0),
            socket(
                TCP_ESTABLISHED,
                "::ffff:10.0.0.5",
                5000,
                "::ffff:192.0.2.7",
                443,
            ),
            socket(TCP_ESTABLISHED, "2001:db8::5", 5001, "2001:db8::9", 22),
            socket(TCP_ESTABLISHED, "127.0.0.1", 5002, "127.0.0.1", 80),
        ] {
            tcp.add(&s);
        }
        let tcp = tcp.finish();
        assert_eq!(
            tcp.listening_tcp_ports.ports,
            [
                port(80, None),
                port(81, Some("eth0")),
                port(82, Some("eth0"))
            ]
        );
        assert_eq!(tcp.listening_tcp_ports.total, 3);
        let connection = |remote: &str, local_port, interface: &str| Connection {
            remote_addr: remote.to_owned(),
            local_port,
            local_interface: Some(interface.to_owned()),
        };
        let established = &tcp.tcp_connections.established_connections;
        assert_eq!(
            established.connections,
            [
                connection("127.0.0.1:80", 5002, "lo"),
                connection("192.0.2.7:443", 5000, "eth0"),
            ]
        );
        assert_eq!(established.total, 3, "every connection is counted");
        assert!(tcp.custom.is_empty());

        let udp = udp_metrics(
            &[
                socket(TCP_CLOSE, "::1", 53, "::", 0),
                socket(TCP_CLOSE, "127.0.0.53", 53, "0.0.0.0", 0),
                socket(TCP_CLOSE, "0.0.0.0", 0, "0.0.0.0", 0),
                socket(TCP_ESTABLISHED, "10.0.0.5", 4000, "192.0.2.7", 53),
                socket(TCP_CLOSE, "::ffff:10.0.0.5", 4001, "::", 0),
            ],
            &owners,
        );
        assert_eq!(
            udp.listening_udp_ports.ports,
            [port(53, Some("lo")), port(4001, Some("eth0"))]
        );
        assert_eq!(udp.listening_udp_ports.total, 2);
        assert!(udp.custom.is_empty());
    }

    /// "10.0.0.1:80", "[fd00::1]:80", "*:80", "127.0.0.53%lo:53", "[::ffff:10.0.0.1]:80", as
    /// `ss` prints them.
    fn endpoint(text: &str) -> (IpAddr, u16) {
        let (host, port) = text.rsplit_once(':').expect("address:port");
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = host.split('%').next().expect("a host");
        let ip = if host == "*" {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            host.parse::<IpAddr>().expect("an address").to_canonical()
        };
        (ip, port.parse().expect("a port"))
    }

    /// Local and peer endpoints of each socket `ss` lists: the last two columns, whichever
    /// columns come before. A listener's peer is "*" or "0.0.0.0:*".
    fn ss(args: &[&str]) -> Vec<(String, String)> {
        sh("ss", args)
            .lines()
            .map(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                let n = cols.len();
                assert!(n >= 4, "ss line {line:?}");
                (cols[n - 2].to_owned(), cols[n - 1].to_owned())
            })
            .collect()
    }

    /// The interface `ip addr` lists the address on; none for a wildcard; 127.0.0.0/8 is
    /// loopback's.
    fn interfaces() -> impl Fn(IpAddr) -> Option<String> {
        let json: Value = serde_json::from_str(&sh("ip", &["-j", "addr", "show"])).unwrap();
        let mut owners = HashMap::new();
        for link in json.as_array().expect("a link list") {
            let name = link["ifname"].as_str().expect("ifname");
            for addr in link["addr_info"].as_array().into_iter().flatten() {
                let local: IpAddr = addr["local"].as_str().unwrap().parse().unwrap();
                owners.insert(local, name.to_owned());
            }
        }
        move |ip: IpAddr| {
            let ip = match ip {
                IpAddr::V4(v4) if v4.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                other => other,
            };
            (!ip.is_unspecified())
                .then(|| owners.get(&ip).cloned())
                .flatten()
        }
    }

    fn listening(args: &[&str]) -> BTreeSet<(u16, Option<String>)> {
        let interface = interfaces();
        ss(args)
            .into_iter()
            .map(|(local, _)| {
                let (ip, port) = endpoint(&local);
                (port, interface(ip))
            })
            .collect()
    }

    fn reported(list: &crate::report::PortList) -> BTreeSet<(u16, Option<String>)> {
        assert_eq!(list.total, list.ports.len() as u64);
        list.ports
            .iter()
            .map(|p| (p.port, p.interface.clone()))
            .collect()
    }

    #[test]
    fn standard_metrics_match_ss_in_a_fresh_namespace() {
        // A listener of the namespace the test starts in: never in the fresh one's report.
        let outside = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let outside_port = outside.local_addr().unwrap().port();
        in_fresh_netns(move || {
            veth("v0", "v1");
            sh("ip", &["addr", "add", "10.9.0.1/24", "dev", "v0"]);
            sh("ip", &["addr", "add", "fd00:9::1/64", "dev", "v0", "nodad"]);
            // The kernel makes an IPv6 address local in a work item of its own.
            wait_for("fd00:9::1 to be local", || {
                sh("ip", &["-6", "route", "show", "table", "local"]).contains("fd00:9::1 ")
            });
            let binds = [
                ("0.0.0.0", 1),
                ("10.9.0.1", 2),
                ("::", 3),
                ("fd00:9::1", 4),
                ("127.0.0.1", 5),
                ("::1", 6),
                ("127.0.0.2", 7),
            ];
            let listeners: Vec<TcpListener> = binds
                .iter()
                .map(|&(a, p)| TcpListener::bind((a, 7000 + p)).unwrap())
                .collect();
            let udp: Vec<UdpSocket> = binds
                .iter()
                .map(|&(a, p)| UdpSocket::bind((a, 7100 + p)).unwrap())
                .collect();
            let connected = UdpSocket::bind(("127.0.0.1", 7108)).unwrap();
            connected.connect(("127.0.0.1", 7101)).unwrap();
            // IPv4 to the dual-stack listener on 7003 is an IPv4-mapped connection.
            let clients: Vec<TcpStream> = [
                ("10.9.0.1", 7002),
                ("::1", 7003),
                ("127.0.0.1", 7003),
                ("fd00:9::1", 7004),
                ("127.0.0.1", 7005),
                ("::1", 7006),
                ("127.0.0.2", 7007),
            ]
            .iter()
            .map(|&a| TcpStream::connect(a).unwrap_or_else(|e| panic!("connecting to {a:?}: {e}")))
            .collect();

            let (tcp, udp_metrics) = collect(usize::MAX).unwrap();
            let tcp_truth = listening(&["-Htln"]);
            let udp_truth = listening(&["-Huln"]);
            let interface = interfaces();
            let mut connection_truth: Vec<_> = ss(&["-Htn", "state", "established"])
                .into_iter()
                .map(|(local, remote)| {
                    let ((local, local_port), remote) = (endpoint(&local), endpoint(&remote));
                    let remote = SocketAddr::from(remote).to_string();
                    (remote, local_port, interface(local))
                })
                .collect();
            connection_truth.sort();

            assert_eq!(reported(&tcp.listening_tcp_ports), tcp_truth);
            assert_eq!(reported(&udp_metrics.listening_udp_ports), udp_truth);
            let established = &tcp.tcp_connections.established_connections;
            let connections: Vec<_> = established
                .connections
                .iter()
                .map(|c| {
                    (
                        c.remote_addr.clone(),
                        c.local_port,
                        c.local_interface.clone(),
                    )
                })
                .collect();
            assert_eq!(connections, connection_truth);
            assert_eq!(established.total, connections.len() as u64);

            // What the test opened, so an empty answer from both sides cannot pass.
            assert_eq!(tcp_truth.len(), listeners.len());
            assert_eq!(
                udp_truth.len(),
                udp.len(),
                "the connected socket is not listed"
            );
            assert_eq!(connections.len(), 2 * clients.len(), "both ends of each");
            let v0 = Some("v0".to_owned());
            for truth in [&tcp_truth, &udp_truth] {
                assert!(truth.iter().any(|p| p.1 == v0), "{truth:?}");
                assert!(truth.iter().any(|p| p.1.is_none()), "{truth:?}");
            }
            assert!(
                connections
                    .iter()
                    .any(|c| c.0.starts_with("127.0.0.1:") && c.1 == 7003),
                "the IPv4-mapped connection is shown as IPv4: {connections:?}"
            );
            assert!(
                !tcp_truth.iter().any(|p| p.0 == outside_port),
                "{tcp_truth:?}"
            );
            drop((listeners, udp, connected, clients));
        });
        drop(outside);
    }
}
