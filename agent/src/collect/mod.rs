//! Collection: reads the kernel maps (and, for CPU and memory, which no kernel program
//! counts, /proc; for the operator's metrics, their files) and fills one
//! `report::Interval`. Never formats or sends; never reads network counters from /proc or
//! /sys: those are ground truth for the tests.

// Wired by the source ladder.
#[allow(dead_code)]
mod counters;
mod delta;
mod device;
// Wired by the source ladder.
#[allow(dead_code)]
mod diag;
mod files;
// Wired by the source ladder.
#[allow(dead_code)]
mod links;
mod names;
mod ports;
mod seed;
mod sets;
mod signals;
mod tcp;
mod traffic;
mod udp;

use std::collections::HashSet;

use anyhow::{Context, Result};
use log::{error, info};
use tern_common::counters::Counter;

use crate::{
    host::netns,
    kernel::maps::{Maps, SharedMaps},
    report::{Interval, catalog},
};
use delta::Readings;
use device::DeviceCollector;
pub use files::FileMetric;
use signals::SignalCollector;
use tcp::TcpCollector;
use traffic::TrafficCollector;
use udp::UdpCollector;

pub struct SocketOptions {
    /// Report the sockets of every namespace, not only tern's own.
    pub all_namespaces: bool,
    /// List every connection of the interval in `established_connections`, not only the
    /// ones established at report time.
    pub interval_connections: bool,
}

/// How much each kernel counter grew over the interval.
pub struct Growth([u64; Counter::ALL.len()]);

impl Growth {
    pub fn of(&self, counter: Counter) -> u64 {
        self.0[counter.index() as usize]
    }
}

/// What the kernel programs saw over one interval.
struct Events {
    tcp: tcp::Tcp,
    udp: udp::Udp,
    signals: signals::Signals,
    /// Entries the kernel's sets could not take.
    dropped: u64,
}

/// Every collector, and what they share: the interval number the kernel programs file
/// their sets under, and the readings of the kernel's event counters.
pub struct Collectors {
    traffic: TrafficCollector,
    tcp: TcpCollector,
    udp: UdpCollector,
    signals: SignalCollector,
    device: DeviceCollector,
    files: Vec<FileMetric>,
    shared: SharedMaps,
    epoch: u32,
    counters: Readings<(), { Counter::ALL.len() }>,
}

impl Collectors {
    /// Learns how the kernel programs name tern's namespace and has them follow it alone
    /// (unless every namespace is reported), seeds the kernel maps with the sockets that
    /// existed before the programs were attached (in every namespace when all are reported,
    /// which needs privilege), and takes the first readings, so the first report covers its
    /// own interval only.
    pub fn start(maps: Maps, options: SocketOptions, files: Vec<FileMetric>) -> Result<Self> {
        let Maps {
            traffic,
            mut tcp,
            mut udp,
            signals,
            mut shared,
        } = maps;
        let own = names::learn(Some(&mut tcp), Some(&mut udp))
            .context("learning how the kernel programs name tern's network namespace")?;
        if !options.all_namespaces {
            shared.follow(own)?;
        }
        let mut seeded = seed::seed(&mut tcp, &mut udp, own)?;
        if options.all_namespaces {
            for other in netns::in_other_namespaces(|| {
                let names = names::learn(Some(&mut tcp), Some(&mut udp))?;
                seed::seed(&mut tcp, &mut udp, names)
            })? {
                seeded += other;
            }
        }
        info!(
            "found {} TCP listeners, {} TCP connections and {} UDP sockets open before start",
            seeded.listeners, seeded.connections, seeded.udp
        );
        // The names each collector keeps: None reports every namespace.
        let (by_address, by_cookie) = match options.all_namespaces {
            true => (None, None),
            false => (own.by_address, own.by_cookie),
        };
        let mut collectors = Self {
            traffic: TrafficCollector::new(traffic),
            tcp: TcpCollector::start(tcp, by_address, options.interval_connections)?,
            udp: UdpCollector::start(udp, by_cookie)?,
            signals: SignalCollector::new(signals, by_address),
            device: DeviceCollector::start(),
            files,
            shared,
            epoch: 0,
            counters: Readings::default(),
        };
        collectors.next_epoch()?;
        let first = collectors.read_counters()?;
        collectors.counters.advance((), first);
        Ok(collectors)
    }

    /// The interval since the previous call, on the interfaces `counted` now and those
    /// `gone` since. A failed read is logged and gives nothing: the kernel keeps counting,
    /// and the next interval carries what this one could not.
    pub fn collect(&mut self, counted: &HashSet<u32>, gone: &HashSet<u32>) -> Option<Interval> {
        let network_stats = match self.traffic.collect(counted, gone) {
            Ok(stats) => stats,
            Err(err) => {
                error!("{err:#}; this interval's traffic goes into the next report");
                return None;
            }
        };
        let Events {
            tcp,
            udp,
            signals,
            dropped,
        } = match self.collect_events() {
            Ok(collected) => collected,
            Err(err) => {
                error!("{err:#}; this interval's sockets go into the next report");
                return None;
            }
        };
        let mut own = tcp.custom;
        own.extend(udp.custom);
        own.extend(signals);
        // Every interval set and socket set counts what it could not take.
        own.push((catalog::DROPPED, dropped.into()));
        own.extend(self.device.collect());
        Some(Interval {
            network_stats,
            listening_tcp_ports: tcp.listening_tcp_ports,
            listening_udp_ports: udp.listening_udp_ports,
            tcp_connections: tcp.tcp_connections,
            own,
            user: self
                .files
                .iter()
                .filter_map(|m| Some((m.name.clone(), m.read()?)))
                .collect(),
        })
    }

    fn collect_events(&mut self) -> Result<Events> {
        // Events from here on belong to the next interval; the sets of this one are drained.
        let epoch = self.next_epoch()?;
        let now = self.read_counters()?;
        let growth = Growth(self.counters.advance((), now));
        let owners = ports::owners();
        let tcp = self.tcp.collect(epoch, &growth, &owners)?;
        let udp = self.udp.collect(epoch, &owners)?;
        let signals = self.signals.collect(epoch, &growth)?;
        Ok(Events {
            tcp,
            udp,
            signals,
            dropped: growth.of(Counter::DetailsDropped),
        })
    }

    /// Starts the next interval in the kernel programs; returns its number.
    fn next_epoch(&mut self) -> Result<u32> {
        self.epoch = self.epoch.wrapping_add(1);
        self.shared
            .epoch
            .set(0, self.epoch, 0)
            .context("publishing the interval number to the kernel")?;
        Ok(self.epoch)
    }

    /// The kernel's cumulative counters, each summed over all CPUs.
    fn read_counters(&self) -> Result<[u64; Counter::ALL.len()]> {
        let mut out = [0; Counter::ALL.len()];
        for counter in Counter::ALL {
            let per_cpu = self
                .shared
                .counters
                .get(&counter.index(), 0)
                .context("reading the COUNTERS map")?;
            out[counter.index() as usize] = per_cpu.iter().fold(0u64, |a, v| a.wrapping_add(*v));
        }
        Ok(out)
    }
}
