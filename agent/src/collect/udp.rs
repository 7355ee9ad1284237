//! UDP: turns the kernel's UDP maps into the report's listening UDP ports (bound sockets
//! now) and the interval's UDP ports (what was bound since the previous report).
//! Counterpart of the kernel's `udp` programs.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use tern_common::sockets::ip;

use super::{
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
}

impl UdpCollector {
    /// Takes the first snapshot; the maps are seeded already.
    pub fn start(maps: UdpMaps, netns: Option<u64>) -> Result<Self> {
        let mut collector = Self {
            maps,
            netns,
            previous: BTreeSet::new(),
        };
        collector.previous = collector.current(&Owners::new())?.0;
        Ok(collector)
    }

    /// The sockets now and the ports of the interval before `epoch`.
    pub fn collect(&mut self, epoch: u32, owners: &Owners) -> Result<Udp> {
        let (now, current) = self.current(owners)?;
        let listened = sets::drain_seen(&mut self.maps.listened, epoch, self.netns)?;
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

    /// The bound sockets now: their port numbers, and their ports with interfaces.
    fn current(&self, owners: &Owners) -> Result<(BTreeSet<u16>, BTreeSet<Port>)> {
        let mut numbers = BTreeSet::new();
        let mut current = BTreeSet::new();
        for entry in &self.maps.socks {
            let (_, sock) = entry.context("reading the UDP_SOCKS map")?;
            if !sets::followed(self.netns, sock.netns) {
                continue;
            }
            numbers.insert(sock.local_port);
            let local = ip(sock.family, &sock.local_addr);
            current.insert(ports::port(sock.local_port, local, owners));
        }
        Ok((numbers, current))
    }
}
