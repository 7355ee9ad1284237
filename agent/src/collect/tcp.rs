// Over 400 lines: the collector keeps the maps, the fallback to sock_diag and what it built
// from them as one state, and the fallback's merge is tested beside it.
//! TCP: turns the kernel's TCP maps into the report's listening TCP ports and established
//! connections (what exists now), and its interval sets into the interval's TCP metrics
//! (what listened, opened or was connected to since the previous report). Counterpart of the
//! kernel's `tcp` program.
//!
//! A full map cannot hide a socket: once the programs count one a map could not take,
//! tern's namespace's listeners and connections come from sock_diag (the fallback), and
//! `interval_details_dropped` stays above 0, until the maps hold exactly what sock_diag
//! lists. sock_diag answers for tern's own namespace only: where every namespace is
//! reported, the others' sockets that a full map missed stay missing until they close.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use anyhow::{Context, Result};
use log::{info, warn};
use tern_common::{
    changes::Changed,
    counters::Counter,
    sockets::{Seen, TCP_CONNECTION, TCP_LISTENER, TcpSock, TcpState, ip},
};

use super::{
    Growth,
    changes::{Changes, Entries},
    ports::{self, Owners},
    seed, sets,
    shortlist::Shortlist,
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
    /// Sockets the maps lack now, which the report took from sock_diag instead: at least 1
    /// while the fallback lasts, else 0.
    pub untracked: u64,
}

/// What existed at one moment: kept from one report to the next, because what existed at
/// the start of an interval existed during it.
#[derive(Clone, Default)]
struct Snapshot {
    ports: BTreeSet<u16>,
    remotes: BTreeSet<IpAddr>,
}

#[derive(Clone)]
struct Current {
    ports: BTreeSet<Port>,
    /// The connections now, unless the report lists the interval's.
    connections: Connections,
    /// The connections now, when the report lists the interval's.
    connection_keys: BTreeSet<TcpSock>,
    untracked: u64,
}

pub struct TcpCollector {
    maps: TcpMaps,
    /// The namespace to report, as the programs name it; None reports every namespace.
    netns: Option<u64>,
    /// tern's own namespace, as the programs name it: the one sock_diag answers for.
    own: u64,
    /// List every connection of the interval in `established_connections`, not only the
    /// ones established at report time.
    interval_connections: bool,
    /// Whether the programs see no close of a socket older than tern (the sock_ops
    /// program): then its seeded sockets are checked against sock_diag at each report.
    unwatched_seeds: bool,
    /// Whether a map could not take a socket and does not hold every socket again yet.
    fallback: bool,
    /// The most connections a report can list.
    most_listed: usize,
    previous: Snapshot,
    listeners: Entries<TcpSock, TcpState>,
    socks: Entries<TcpSock, TcpState>,
    built: Option<Built>,
}

/// What `current` built from the maps, kept while neither map is walked again and the
/// addresses' owners stay: formatting and sorting thousands of connections is most of what
/// a report costs.
struct Built {
    walks: [u64; 2],
    owners: Owners,
    snapshot: Snapshot,
    current: Current,
}

/// How the collector starts, besides its maps.
pub struct TcpStart {
    pub netns: Option<u64>,
    pub own: u64,
    pub interval_connections: bool,
    pub unwatched_seeds: bool,
    /// The most connections a report can list.
    pub most_listed: usize,
    /// Whether seeding left sockets out of a full map.
    pub untracked: bool,
}

impl TcpCollector {
    /// Takes the first snapshot; the maps are seeded already.
    pub fn start(maps: TcpMaps, how: TcpStart) -> Result<Self> {
        let mut collector = Self {
            maps,
            netns: how.netns,
            own: how.own,
            interval_connections: how.interval_connections,
            unwatched_seeds: how.unwatched_seeds,
            fallback: false,
            most_listed: how.most_listed,
            previous: Snapshot::default(),
            listeners: Entries::new(Changed::TcpListeners),
            socks: Entries::new(Changed::TcpSocks),
            built: None,
        };
        if how.untracked {
            collector.fall_back();
        }
        let (now, _) = collector.current(&Owners::new(), &mut Changes::default())?;
        collector.previous = now;
        Ok(collector)
    }

    /// The sockets now and those of the interval before `epoch`, whose counters grew by
    /// `growth`.
    pub fn collect(
        &mut self,
        epoch: u32,
        growth: &Growth,
        owners: &Owners,
        changes: &mut Changes,
    ) -> Result<Tcp> {
        if self.unwatched_seeds && seed::forget_closed(&mut self.maps, self.own)? {
            changes.forget(Changed::TcpListeners);
            changes.forget(Changed::TcpSocks);
        }
        if growth.of(Counter::TcpSocksFull) > 0 {
            self.fall_back();
        }
        let (now, current) = self.current(owners, changes)?;
        let netns = self.netns;
        let maps = &mut self.maps;
        let listened = sets::drain_seen(
            &mut maps.listened,
            Changed::TcpListened,
            changes,
            epoch,
            netns,
        )?;
        let remotes_seen = sets::drain_seen(
            &mut maps.remotes_seen,
            Changed::RemotesSeen,
            changes,
            epoch,
            netns,
        )?;
        let connections_seen =
            sets::drain_connections(&mut maps.connections_seen, changes, epoch, netns)?;

        let connections = match self.interval_connections {
            true => {
                let mut all: BTreeSet<TcpSock> = current.connection_keys;
                all.extend(connections_seen);
                let mut list = Shortlist::new(self.most_listed);
                all.iter().for_each(|s| list.add(connection(s, owners)));
                list.connections()
            }
            false => current.connections,
        };
        let mut remotes: BTreeSet<IpAddr> =
            self.previous.remotes.union(&now.remotes).copied().collect();
        remotes.extend(remotes_seen.iter().map(|s| ip(s.family, &s.addr)));
        let mut custom = growth.counted(&[
            catalog::OPENED,
            catalog::OPENED_INBOUND,
            catalog::OPENED_OUTBOUND,
            catalog::SHORT_LIVED,
        ]);
        custom.extend([
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
        ]);
        self.previous = now;
        Ok(Tcp {
            listening_tcp_ports: ports::port_list(current.ports),
            tcp_connections: TcpConnections {
                established_connections: connections,
            },
            custom,
            untracked: current.untracked,
        })
    }

    /// What set `which` (the listeners or the remote addresses of the interval) has seen
    /// so far of interval `epoch`.
    pub fn seen_so_far(&self, which: Changed, epoch: u32) -> Result<Vec<Seen>> {
        let set = match which {
            Changed::TcpListened => &self.maps.listened,
            _ => &self.maps.remotes_seen,
        };
        sets::seen_so_far(set, epoch, self.netns)
    }

    /// Starts the fallback unless it runs already.
    fn fall_back(&mut self) {
        if self.fallback {
            return;
        }
        self.fallback = true;
        let scope = match self.netns {
            Some(_) => "",
            None => {
                " (tern's own namespace only: sockets of other namespaces that the maps could \
                 not take are missing from reports until they close)"
            }
        };
        warn!(
            "the TCP socket maps are full: listening ports and connections come from sock_diag \
             until the maps hold every socket again{scope}"
        );
    }

    /// The sockets that exist now: from the maps, or during the fallback from sock_diag for
    /// tern's namespace; the fallback ends here once the maps hold what sock_diag lists.
    fn current(&mut self, owners: &Owners, changes: &mut Changes) -> Result<(Snapshot, Current)> {
        for (entries, map, name) in [
            (&mut self.listeners, &self.maps.listeners, "TCP_LISTENERS"),
            (&mut self.socks, &self.maps.socks, "TCP_SOCKS"),
        ] {
            entries
                .of(map, changes)
                .with_context(|| format!("reading the {name} map"))?;
        }
        let walks = [self.listeners.walks(), self.socks.walks()];
        if let Some(built) = self
            .built
            .as_ref()
            .filter(|b| !self.fallback && b.walks == walks && b.owners == *owners)
        {
            return Ok((built.snapshot.clone(), built.current.clone()));
        }
        let mut build = Build::new(self.interval_connections, self.most_listed, owners);
        let held = [&self.listeners, &self.socks]
            .into_iter()
            .flat_map(Entries::held)
            .map(|(sock, _)| *sock)
            .filter(|sock| sets::followed(self.netns, sock.netns));
        let mut untracked = 0;
        if self.fallback {
            let mut own = BTreeSet::new();
            for sock in held {
                if sock.netns == self.own {
                    own.insert(sock);
                } else {
                    build.add(sock);
                }
            }
            let mut compare = Compare::new(own);
            seed::each_open_tcp(self.own, |sock| {
                if compare.listed(&sock) {
                    build.add(sock);
                }
            })?;
            untracked = compare.untracked();
            if untracked == 0 {
                self.fallback = false;
                info!(
                    "the TCP socket maps hold every socket again: listening ports and \
                     connections come from them again"
                );
            }
        } else {
            held.for_each(|sock| build.add(sock));
        }
        let (snapshot, current) = build.finish(untracked);
        self.built = (!self.fallback).then(|| Built {
            walks,
            owners: owners.clone(),
            snapshot: snapshot.clone(),
            current: current.clone(),
        });
        Ok((snapshot, current))
    }
}

/// The sockets that exist now, turned into a snapshot and a report's ports and connections
/// one at a time.
struct Build<'a> {
    owners: &'a Owners,
    interval_connections: bool,
    snapshot: Snapshot,
    ports: BTreeSet<Port>,
    connections: Shortlist,
    connection_keys: BTreeSet<TcpSock>,
}

impl<'a> Build<'a> {
    fn new(interval_connections: bool, most_listed: usize, owners: &'a Owners) -> Self {
        Self {
            owners,
            interval_connections,
            snapshot: Snapshot::default(),
            ports: BTreeSet::new(),
            connections: Shortlist::new(most_listed),
            connection_keys: BTreeSet::new(),
        }
    }

    fn add(&mut self, sock: TcpSock) {
        if sock.kind == TCP_LISTENER {
            self.snapshot.ports.insert(sock.local_port);
            let local = ip(sock.family, &sock.local_addr);
            self.ports
                .insert(ports::port(sock.local_port, local, self.owners));
        } else if sock.kind == TCP_CONNECTION {
            self.snapshot
                .remotes
                .insert(ip(sock.family, &sock.remote_addr));
            // A report lists the connections now or those of the interval, never both: only
            // the one it lists is built.
            if self.interval_connections {
                self.connection_keys.insert(sock);
            } else {
                self.connections.add(connection(&sock, self.owners));
            }
        }
    }

    fn finish(self, untracked: u64) -> (Snapshot, Current) {
        let current = Current {
            ports: self.ports,
            connections: self.connections.connections(),
            connection_keys: self.connection_keys,
            untracked,
        };
        (self.snapshot, current)
    }
}

/// During the fallback, what the maps held of tern's namespace against what sock_diag lists
/// of it, one listed socket at a time.
struct Compare {
    held: BTreeSet<TcpSock>,
    /// Listeners listed so far: sock_diag lists a reuse group's listener once per socket.
    listeners: BTreeSet<TcpSock>,
    matched: usize,
    missing: u64,
}

impl Compare {
    fn new(held: BTreeSet<TcpSock>) -> Self {
        Self {
            held,
            listeners: BTreeSet::new(),
            matched: 0,
            missing: 0,
        }
    }

    /// Takes in a listed socket; whether it is one not listed before.
    fn listed(&mut self, sock: &TcpSock) -> bool {
        if sock.kind == TCP_LISTENER && !self.listeners.insert(*sock) {
            return false;
        }
        match self.held.contains(sock) {
            true => self.matched += 1,
            false => self.missing += 1,
        }
        true
    }

    /// How many sockets the maps lack: 0 when they hold exactly what sock_diag listed, else
    /// at least 1 (a socket held but not listed means the two reads saw different moments,
    /// and the next report looks again).
    fn untracked(&self) -> u64 {
        match self.missing == 0 && self.matched == self.held.len() {
            true => 0,
            false => self.missing.max(1),
        }
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

    fn sock(netns: u64, kind: u16, local_port: u16) -> TcpSock {
        TcpSock {
            netns,
            kind,
            local_port,
            ..TcpSock::default()
        }
    }

    #[test]
    fn the_fallback_counts_what_the_maps_lack_of_what_sock_diag_lists() {
        let listener = sock(7, TCP_LISTENER, 22);
        let (held_conn, missing_conn) =
            (sock(7, TCP_CONNECTION, 5000), sock(7, TCP_CONNECTION, 5001));
        let listed = [listener, listener, held_conn, missing_conn];
        let compare = |held: &[TcpSock]| {
            let mut compare = Compare::new(held.iter().copied().collect());
            let new: Vec<bool> = listed.iter().map(|s| compare.listed(s)).collect();
            assert_eq!(
                new,
                [true, false, true, true],
                "a reuse group's listener is one socket"
            );
            compare.untracked()
        };
        assert_eq!(
            compare(&[held_conn]),
            2,
            "the listener and one connection are missing"
        );
        assert_eq!(
            compare(&[listener, held_conn, missing_conn]),
            0,
            "the maps hold every socket again"
        );
        // Held but no longer listed: it closed between the two reads, or the maps are stale;
        // either way, not over yet.
        let closed = sock(7, TCP_CONNECTION, 5002);
        assert_eq!(compare(&[listener, held_conn, missing_conn, closed]), 1);
    }
}
