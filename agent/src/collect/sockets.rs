//! Sockets and kernel events: turns the kernel's socket maps into the report's listening
//! ports and established connections (what exists now), and its event counters and sets into
//! the interval's custom metrics (what existed or happened since the previous report). Seeds
//! the maps at start from the sock_diag snapshot, so sockets older than tern are known too.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use anyhow::{Context, Result};
use aya::{
    Pod,
    maps::{HashMap as BpfHashMap, MapData},
};
use log::{info, warn};
use tern_common::{
    AF_INET, AF_INET6, CLOSED_PORT_ATTEMPTS, DETAILS_DROPPED, EXEC_PATH_LEN, EXECS,
    FAILED_CONNECTS, OPENED_INBOUND_COUNT, OPENED_OUTBOUND_COUNT, RESETS_SENT, RETRANSMITS, SEEDED,
    SHORT_LIVED_COUNT, Seen, TCP_CONNECTION, TCP_LISTENER, TcpSock, TcpState, UdpSock,
};

use crate::{
    delta::Readings,
    interfaces,
    probes::SocketMaps,
    report::{Connection, Connections, CustomMetric, Port, PortList, TcpConnections},
    sockdiag::{self, DiagSocket},
};

/// bpf_map_update_elem flag: only if the key is absent.
const BPF_NOEXIST: u64 = 1;

/// Names of the interval metrics, in the report's `custom_metrics`.
pub const OPENED: &str = "interval_tcp_connections_opened";
pub const OPENED_INBOUND: &str = "interval_tcp_connections_opened_inbound";
pub const OPENED_OUTBOUND: &str = "interval_tcp_connections_opened_outbound";
pub const SHORT_LIVED: &str = "interval_tcp_connections_short_lived";
pub const TCP_PORTS: &str = "interval_listening_tcp_ports";
pub const UDP_PORTS: &str = "interval_listening_udp_ports";
pub const REMOTES: &str = "interval_remote_addresses";
pub const DROPPED: &str = "interval_details_dropped";
pub const RESETS: &str = "interval_tcp_resets_sent";
pub const CLOSED_PORTS: &str = "interval_closed_port_attempts";
pub const FAILED: &str = "interval_tcp_failed_connects";
pub const RETRANSMITTED: &str = "interval_tcp_retransmits";
pub const EXECUTIONS: &str = "interval_execs";
pub const NEW_EXECUTABLES: &str = "interval_new_executables";
pub const PORTS_CONTACTED: &str = "interval_remote_ports_contacted";
pub const ADDRESSES_CONTACTED: &str = "interval_remote_addresses_contacted";

/// Executables remembered as seen; past this, older ones may be reported as new again.
const KNOWN_EXECUTABLES: usize = 65_536;

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
    pub custom: Vec<(&'static str, CustomMetric)>,
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
    epoch: u32,
    counters: Readings<(), 9>,
    previous: Snapshot,
    known_executables: std::collections::HashSet<String>,
}

impl SocketCollector {
    /// Seeds the kernel maps with the sockets that existed before the programs were
    /// attached, and takes the first snapshot.
    pub fn start(mut maps: SocketMaps, options: SocketOptions, own_netns: u64) -> Result<Self> {
        let mut seeded = seed(&mut maps, own_netns)?;
        if options.netns.is_none() {
            let others = sockdiag::in_other_namespaces(|| {
                let cookie = sockdiag::own_netns_cookie()?;
                seed(&mut maps, cookie)
            })?;
            for (listeners, connections, udp) in others {
                seeded = (seeded.0 + listeners, seeded.1 + connections, seeded.2 + udp);
            }
        }
        info!(
            "found {} TCP listeners, {} TCP connections and {} UDP sockets open before start",
            seeded.0, seeded.1, seeded.2
        );
        let mut collector = Self {
            maps,
            options,
            epoch: 1,
            counters: Readings::default(),
            previous: Snapshot::default(),
            known_executables: std::collections::HashSet::new(),
        };
        collector.publish_epoch()?;
        let (now, _) = collector.current(&HashMap::new())?;
        collector.previous = now;
        collector.counters.advance((), collector.read_counters()?);
        Ok(collector)
    }

    pub fn collect(&mut self) -> Result<Sockets> {
        // Events from here on belong to the next interval; the sets of this one are drained.
        self.epoch = self.epoch.wrapping_add(1);
        self.publish_epoch()?;
        let owners = interfaces::address_owners().unwrap_or_else(|err| {
            warn!("cannot read the interfaces' addresses: {err:#}; interfaces are left out");
            HashMap::new()
        });
        let (now, current) = self.current(&owners)?;
        let epoch = self.epoch;
        let netns = self.options.netns;
        let tcp_listened = drain_seen(&mut self.maps.tcp_listened, epoch, netns)?;
        let udp_listened = drain_seen(&mut self.maps.udp_listened, epoch, netns)?;
        let remotes_seen = drain_seen(&mut self.maps.remotes_seen, epoch, netns)?;
        let connections_seen = drain_connections(&mut self.maps.connections_seen, epoch, netns)?;
        let contacted = drain_seen(&mut self.maps.contacted, epoch, netns)?;
        let new_executables = self.new_executables()?;
        let growth = self.counters.advance((), self.read_counters()?);

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
        let ports_contacted: BTreeSet<u64> = contacted.iter().map(|s| u64::from(s.port)).collect();
        let addresses_contacted: BTreeSet<IpAddr> =
            contacted.iter().map(|s| ip(s.family, &s.addr)).collect();
        let custom = vec![
            (OPENED, CustomMetric::from(growth[0] + growth[1])),
            (OPENED_INBOUND, growth[0].into()),
            (OPENED_OUTBOUND, growth[1].into()),
            (SHORT_LIVED, growth[2].into()),
            (
                TCP_PORTS,
                union_ports(&self.previous.tcp_ports, &now.tcp_ports, &tcp_listened),
            ),
            (
                UDP_PORTS,
                union_ports(&self.previous.udp_ports, &now.udp_ports, &udp_listened),
            ),
            (
                REMOTES,
                CustomMetric::IpList(remotes.iter().map(IpAddr::to_string).collect()),
            ),
            (DROPPED, growth[3].into()),
            (RESETS, growth[4].into()),
            (CLOSED_PORTS, growth[5].into()),
            (FAILED, growth[6].into()),
            (RETRANSMITTED, growth[7].into()),
            (EXECUTIONS, growth[8].into()),
            (NEW_EXECUTABLES, CustomMetric::StringList(new_executables)),
            (
                PORTS_CONTACTED,
                CustomMetric::NumberList(ports_contacted.into_iter().collect()),
            ),
            (
                ADDRESSES_CONTACTED,
                CustomMetric::IpList(addresses_contacted.iter().map(IpAddr::to_string).collect()),
            ),
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

    fn publish_epoch(&mut self) -> Result<()> {
        self.maps
            .epoch
            .set(0, self.epoch, 0)
            .context("publishing the interval number to the kernel")
    }

    /// Executables run during the interval that were never seen since start, as Device
    /// Defender string values (see `sanitize`).
    fn new_executables(&mut self) -> Result<Vec<String>> {
        let mut paths = Vec::new();
        for key in self.maps.executed.keys() {
            paths.push(key.context("reading the EXECUTED map")?);
        }
        let mut new = BTreeSet::new();
        for path in &paths {
            let _ = self.maps.executed.remove(path);
            let name = sanitize(path);
            if self.known_executables.len() >= KNOWN_EXECUTABLES {
                self.known_executables.clear();
            }
            if self.known_executables.insert(name.clone()) {
                new.insert(name);
            }
        }
        Ok(new.into_iter().collect())
    }

    /// The kernel's cumulative counters, in the order of the `growth` array of `collect`,
    /// each summed over all CPUs.
    fn read_counters(&self) -> Result<[u64; 9]> {
        let mut out = [0; 9];
        let indexes = [
            OPENED_INBOUND_COUNT,
            OPENED_OUTBOUND_COUNT,
            SHORT_LIVED_COUNT,
            DETAILS_DROPPED,
            RESETS_SENT,
            CLOSED_PORT_ATTEMPTS,
            FAILED_CONNECTS,
            RETRANSMITS,
            EXECS,
        ];
        for (index, slot) in indexes.iter().zip(out.iter_mut()) {
            let per_cpu = self
                .maps
                .counters
                .get(index, 0)
                .context("reading the SOCK_COUNTERS map")?;
            *slot = per_cpu.iter().fold(0u64, |a, v| a.wrapping_add(*v));
        }
        Ok(out)
    }

    /// The sockets that exist now.
    fn current(&self, owners: &HashMap<IpAddr, String>) -> Result<(Snapshot, Current)> {
        let mut snapshot = Snapshot::default();
        let mut current = Current::default();
        // Keys only: one syscall per socket instead of two.
        for sock in self.maps.tcp_socks.keys() {
            let sock = sock.context("reading the TCP_SOCKS map")?;
            if !reported(self.options.netns, sock.netns) {
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
        for entry in self.maps.udp_socks.iter() {
            let (_, sock) = entry.context("reading the UDP_SOCKS map")?;
            if !reported(self.options.netns, sock.netns) {
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

/// The address as reported: an IPv4-mapped IPv6 address is shown as the IPv4 address.
fn ip(family: u16, bytes: &[u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes)).to_canonical()
    }
}

/// Takes and deletes the entries of past intervals from an interval set of `Seen` keys,
/// whose epoch is in the key: only the keys are read. Entries of namespaces not reported
/// are dropped too.
fn drain_seen(
    set: &mut BpfHashMap<MapData, Seen, u32>,
    epoch: u32,
    netns: Option<u64>,
) -> Result<Vec<Seen>> {
    let mut past = Vec::new();
    for key in set.keys() {
        let key = key.context("reading an interval set")?;
        if key.epoch != epoch {
            past.push(key);
        }
    }
    Ok(take(set, past, netns, |s| s.netns))
}

/// As `drain_seen` for the connections of an interval, whose epoch is the value.
fn drain_connections(
    set: &mut BpfHashMap<MapData, TcpSock, u32>,
    epoch: u32,
    netns: Option<u64>,
) -> Result<Vec<TcpSock>> {
    let mut past = Vec::new();
    for entry in set.iter() {
        let (key, seen_in) = entry.context("reading an interval set")?;
        if seen_in != epoch {
            past.push(key);
        }
    }
    Ok(take(set, past, netns, |s| s.netns))
}

/// Deletes `past` from `set` and keeps the entries of the namespaces reported.
fn take<K: Pod, V: Pod>(
    set: &mut BpfHashMap<MapData, K, V>,
    mut past: Vec<K>,
    netns: Option<u64>,
    netns_of: impl Fn(&K) -> u64,
) -> Vec<K> {
    for key in &past {
        // Already gone is fine: nothing else deletes, so it is not lost either.
        let _ = set.remove(key);
    }
    past.retain(|k| reported(netns, netns_of(k)));
    past
}

/// Whether a socket of namespace `netns` is reported when following `own` (None: every
/// namespace); 0 is a namespace the kernel program could not read.
fn reported(own: Option<u64>, netns: u64) -> bool {
    own.is_none_or(|own| netns == own || netns == 0)
}

/// Puts the sockets that existed before the programs were attached into the kernel maps.
/// A socket that closes between the snapshot and its insertion would stay forever, so a
/// second snapshot afterwards removes seeded sockets it no longer lists.
fn seed(maps: &mut SocketMaps, netns: u64) -> Result<(usize, usize, usize)> {
    let snapshot = || -> Result<_> {
        let tcp_states = [sockdiag::TCP_LISTEN, sockdiag::TCP_ESTABLISHED];
        let udp_states = [sockdiag::TCP_CLOSE];
        Ok((
            tcp_seeds(
                &sockdiag::dump(sockdiag::IPPROTO_TCP, sockdiag::states(&tcp_states))?,
                netns,
            ),
            udp_seeds(
                &sockdiag::dump(sockdiag::IPPROTO_UDP, sockdiag::states(&udp_states))?,
                netns,
            ),
        ))
    };
    let (tcp, udp) = snapshot()?;
    for (key, state) in &tcp {
        let _ = maps.tcp_socks.insert(key, state, BPF_NOEXIST);
    }
    for (cookie, sock) in &udp {
        let _ = maps.udp_socks.insert(cookie, sock, BPF_NOEXIST);
    }

    let (tcp_again, udp_again) = snapshot()?;
    for key in tcp.keys().filter(|k| !tcp_again.contains_key(k)) {
        if maps
            .tcp_socks
            .get(key, 0)
            .is_ok_and(|s| s.flags & SEEDED != 0)
        {
            let _ = maps.tcp_socks.remove(key);
        }
    }
    for cookie in udp.keys().filter(|c| !udp_again.contains_key(c)) {
        if maps
            .udp_socks
            .get(cookie, 0)
            .is_ok_and(|s| s.flags & SEEDED != 0)
        {
            let _ = maps.udp_socks.remove(cookie);
        }
    }
    let listeners = tcp.keys().filter(|k| k.kind == TCP_LISTENER).count();
    Ok((listeners, tcp.len() - listeners, udp.len()))
}

fn tcp_seeds(sockets: &[DiagSocket], netns: u64) -> HashMap<TcpSock, TcpState> {
    let mut seeds: HashMap<TcpSock, TcpState> = HashMap::new();
    for s in sockets {
        let listener = s.state == sockdiag::TCP_LISTEN;
        let (family, local) = raw(s.local);
        let mut key = TcpSock {
            netns,
            local_addr: local,
            local_port: s.local_port,
            family,
            kind: if listener {
                TCP_LISTENER
            } else {
                TCP_CONNECTION
            },
            ..TcpSock::default()
        };
        if !listener {
            key.remote_addr = raw(s.remote).1;
            key.remote_port = s.remote_port;
        }
        seeds
            .entry(key)
            .and_modify(|state| state.count += 1)
            .or_insert(TcpState {
                opened_epoch: u32::MAX,
                flags: SEEDED,
                count: 1,
            });
    }
    seeds
}

fn udp_seeds(sockets: &[DiagSocket], netns: u64) -> HashMap<u64, UdpSock> {
    sockets
        .iter()
        .filter(|s| s.local_port != 0)
        .map(|s| {
            let (family, local_addr) = raw(s.local);
            let sock = UdpSock {
                netns,
                local_addr,
                local_port: s.local_port,
                family,
                flags: SEEDED,
            };
            (s.cookie, sock)
        })
        .collect()
}

/// An executable's path as a Device Defender string-list value, which keeps only letters,
/// digits and `: _ - / .`: any other character becomes `_`.
fn sanitize(path: &[u8; EXEC_PATH_LEN]) -> String {
    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
    path[..end]
        .iter()
        .map(|&b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b':' | b'_' | b'-' | b'/' | b'.' => {
                char::from(b)
            }
            _ => '_',
        })
        .collect()
}

/// An address as the kernel programs store it: IPv4 in the first four bytes.
fn raw(addr: IpAddr) -> (u16, [u8; 16]) {
    let mut bytes = [0; 16];
    match addr {
        IpAddr::V4(v4) => {
            bytes[..4].copy_from_slice(&v4.octets());
            (AF_INET, bytes)
        }
        IpAddr::V6(v6) => (AF_INET6, v6.octets()),
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(ip(AF_INET6, &mapped.octets()).to_string(), "192.0.2.7");
        let sock = TcpSock {
            family: AF_INET6,
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
            family: AF_INET6,
            remote_addr: "2001:db8::9".parse::<Ipv6Addr>().unwrap().octets(),
            remote_port: 22,
            ..TcpSock::default()
        };
        assert_eq!(connection(&v6, &owners()).remote_addr, "[2001:db8::9]:22");
    }

    #[test]
    fn executable_paths_keep_only_the_characters_device_defender_keeps() {
        let mut path = [0u8; EXEC_PATH_LEN];
        let raw = b"/opt/my app/run+x\xff.sh";
        path[..raw.len()].copy_from_slice(raw);
        assert_eq!(sanitize(&path), "/opt/my_app/run_x_.sh");
    }

    #[test]
    fn reuseport_listeners_seed_as_one_key_with_a_count() {
        let listener = DiagSocket {
            state: sockdiag::TCP_LISTEN,
            local: "0.0.0.0".parse().unwrap(),
            local_port: 80,
            remote: "0.0.0.0".parse().unwrap(),
            remote_port: 0,
            cookie: 1,
        };
        let seeds = tcp_seeds(
            &[
                listener.clone(),
                DiagSocket {
                    cookie: 2,
                    ..listener
                },
            ],
            9,
        );
        assert_eq!(seeds.len(), 1);
        let (key, state) = seeds.iter().next().unwrap();
        assert_eq!((key.kind, key.netns, state.count), (TCP_LISTENER, 9, 2));
        assert_eq!(state.flags, SEEDED);
    }
}
