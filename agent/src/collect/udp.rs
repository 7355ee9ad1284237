//! UDP: turns the kernel's UDP maps into the report's listening UDP ports (bound sockets
//! now) and the interval's UDP ports (what was bound since the previous report).
//! Counterpart of the kernel's `udp` programs.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use tern_common::{
    changes::Changed,
    sockets::{Seen, UdpSock, ip},
};

use super::{
    changes::{Changes, Entries},
    ports::{self, Owners},
    sets,
};
use crate::{
    kernel::maps::UdpMaps,
    report::{
        CustomMetric, Port, PortList,
        catalog::{self, Metric},
    },
};

/// One report's worth of UDP data.
pub struct Udp {
    pub listening_udp_ports: PortList,
    pub custom: Vec<(Metric, CustomMetric)>,
}

pub struct UdpCollector {
    maps: UdpMaps,
    /// The namespace cookie to report; None reports every namespace.
    netns: Option<u64>,
    /// Ports bound at the previous report: they were bound at the start of this interval.
    previous: BTreeSet<u16>,
    socks: Entries<u64, UdpSock>,
}

impl UdpCollector {
    /// Takes the first snapshot; the maps are seeded already.
    pub fn start(maps: UdpMaps, netns: Option<u64>) -> Result<Self> {
        let mut collector = Self {
            maps,
            netns,
            previous: BTreeSet::new(),
            socks: Entries::new(Changed::UdpSocks),
        };
        collector.previous = numbers(&collector.current(&Owners::new(), &mut Changes::default())?);
        Ok(collector)
    }

    /// The ports set `UdpListened` has seen so far of interval `epoch`.
    pub fn seen_so_far(&self, epoch: u32) -> Result<Vec<Seen>> {
        sets::seen_so_far(&self.maps.listened, epoch, self.netns)
    }

    /// The sockets now and the ports of the interval before `epoch`.
    pub fn collect(&mut self, epoch: u32, owners: &Owners, changes: &mut Changes) -> Result<Udp> {
        let current = self.current(owners, changes)?;
        let now = numbers(&current);
        let listened = sets::drain_seen(
            &mut self.maps.listened,
            Changed::UdpListened,
            changes,
            epoch,
            self.netns,
        )?;
        let custom = vec![(
            catalog::UDP_PORTS,
            CustomMetric::NumberList(ports::interval_ports(&self.previous, &now, &listened)),
        )];
        self.previous = now;
        Ok(Udp {
            listening_udp_ports: ports::port_list(current),
            custom,
        })
    }

    /// The ports of the bound sockets now, with their interfaces.
    fn current(&mut self, owners: &Owners, changes: &mut Changes) -> Result<BTreeSet<Port>> {
        let mut current = BTreeSet::new();
        let socks = self
            .socks
            .of(&self.maps.socks, changes)
            .context("reading the UDP_SOCKS map")?;
        for (_, sock) in socks {
            if !sets::followed(self.netns, sock.netns) {
                continue;
            }
            let local = ip(sock.family, &sock.local_addr);
            current.insert(ports::port(sock.local_port, local, owners));
        }
        Ok(current)
    }
}

fn numbers(ports: &BTreeSet<Port>) -> BTreeSet<u16> {
    ports.iter().map(|p| p.port).collect()
}
