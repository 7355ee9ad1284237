// Over 400 lines: starting, resuming and collecting share the ladder's decisions and the
// collectors it chose; apart, each would pass them to the others.
//! Collection: fills one `report::Interval` from the best source of each group of metrics
//! (`ladder`): the kernel maps where the programs run, else sock_diag, the links' 64-bit
//! counters and the kernel's own counters; for CPU and memory, /proc; for the operator's
//! metrics, their files. Never formats or sends.

mod baseline;
mod changes;
mod counters;
mod delta;
mod device;
mod diag;
mod files;
mod ladder;
mod links;
mod names;
mod ports;
mod seed;
mod sets;
mod shortlist;
mod signals;
mod tcp;
mod traffic;
mod udp;

use std::{
    collections::{BTreeSet, HashSet},
    net::IpAddr,
};

use anyhow::{Context, Result};
use log::{debug, error, info};
use tern_common::{
    changes::Changed,
    counters::Counter,
    sockets::{FOLLOWED_BY_ADDRESS, Seen, ip},
};

use crate::{
    host::netns,
    kernel::{
        maps::{self, Maps, NetnsNames, SharedMaps, SignalMaps, TcpMaps, UdpMaps},
        programs::Attached,
    },
    report::{
        CustomMetric, Interval, NetworkStats,
        catalog::{self, Metric},
    },
};
pub use baseline::Baseline;
use changes::Changes;
use counters::CounterSignals;
use delta::Readings;
use device::DeviceCollector;
pub use files::FileMetric;
use ladder::{Ladder, Source};
use links::LinkTraffic;
use signals::SignalCollector;
use tcp::{TcpCollector, TcpStart};
use traffic::TrafficCollector;
use udp::UdpCollector;

pub struct SocketOptions {
    /// Report the sockets of every namespace, not only tern's own.
    pub all_namespaces: bool,
    /// List every connection of the interval in `established_connections`, not only the
    /// ones established at report time.
    pub interval_connections: bool,
    /// The most connections a report can list (`encode::most_connections`): collectors keep
    /// no more.
    pub most_listed: usize,
}

/// One interval's traffic on each interface, by index; [`traffic::OVERFLOW`] holds that of
/// the interfaces the kernel's map had no room for.
pub type ByInterface = Vec<(u32, NetworkStats)>;

/// The traffic of every interface together.
pub fn total(each: &[(u32, NetworkStats)]) -> NetworkStats {
    let mut sum = NetworkStats::default();
    for (_, stats) in each {
        sum.add([
            stats.bytes_in,
            stats.packets_in,
            stats.bytes_out,
            stats.packets_out,
        ]);
    }
    sum
}

/// How much each kernel counter grew over the interval.
pub struct Growth([u64; Counter::ALL.len()]);

impl Growth {
    pub fn of(&self, counter: Counter) -> u64 {
        self.0[counter.index() as usize]
    }

    /// The interval counts `metrics` (of `COUNTED`), as the report carries them.
    fn counted(&self, metrics: &[Metric]) -> Vec<Own> {
        COUNTED
            .iter()
            .filter(|(metric, _)| metrics.contains(metric))
            .map(|(metric, counters)| (*metric, self.sum(counters).into()))
            .collect()
    }

    fn sum(&self, counters: &[Counter]) -> u64 {
        counters.iter().map(|c| self.of(*c)).sum()
    }
}

/// The interval counts that are the kernel programs' counters added up: reports carry them
/// at the end of each interval, and `Collectors::running` reads them as they grow.
const COUNTED: [(Metric, &[Counter]); 9] = [
    (
        catalog::OPENED,
        &[Counter::OpenedInbound, Counter::OpenedOutbound],
    ),
    (catalog::OPENED_INBOUND, &[Counter::OpenedInbound]),
    (catalog::OPENED_OUTBOUND, &[Counter::OpenedOutbound]),
    (catalog::SHORT_LIVED, &[Counter::ShortLived]),
    (catalog::RESETS, &[Counter::ResetsSent]),
    (catalog::CLOSED_PORTS, &[Counter::ClosedPortAttempts]),
    (catalog::FAILED, &[Counter::FailedConnects]),
    (catalog::RETRANSMITTED, &[Counter::Retransmits]),
    (catalog::EXECUTIONS, &[Counter::Execs]),
];

/// The interval lists that are what the programs' interval sets saw: reports carry them at
/// the end of each interval, and `Collectors::running` reads what the sets have seen so far.
const LISTED: [(Metric, Changed, Listed); 5] = [
    (catalog::TCP_PORTS, Changed::TcpListened, Listed::Ports),
    (catalog::UDP_PORTS, Changed::UdpListened, Listed::Ports),
    (catalog::REMOTES, Changed::RemotesSeen, Listed::Addresses),
    (catalog::PORTS_CONTACTED, Changed::Contacted, Listed::Ports),
    (
        catalog::ADDRESSES_CONTACTED,
        Changed::Contacted,
        Listed::Addresses,
    ),
];

/// What a list takes of each entry of its set.
#[derive(Clone, Copy)]
enum Listed {
    Ports,
    Addresses,
}

impl Listed {
    fn of(self, seen: &[Seen]) -> CustomMetric {
        match self {
            Self::Ports => {
                let ports: BTreeSet<u64> = seen.iter().map(|s| u64::from(s.port)).collect();
                CustomMetric::NumberList(ports.into_iter().collect())
            }
            Self::Addresses => {
                let addresses: BTreeSet<IpAddr> =
                    seen.iter().map(|s| ip(s.family, &s.addr)).collect();
                CustomMetric::IpList(addresses.iter().map(IpAddr::to_string).collect())
            }
        }
    }
}

/// One of tern's own custom metrics with its value.
type Own = (Metric, CustomMetric);

/// What the kernel programs saw over one interval.
struct Events {
    /// None where the programs do not follow that family.
    tcp: Option<tcp::Tcp>,
    udp: Option<udp::Udp>,
    signals: signals::Signals,
    /// Entries the kernel's sets could not take.
    dropped: u64,
}

/// Where the traffic is counted.
enum Traffic {
    Programs(Box<TrafficCollector>),
    Links(LinkTraffic),
}

/// The collectors that read the kernel programs' maps, when the programs run, and what
/// they share: the interval number the programs file their sets under, and the readings of
/// their event counters.
struct Programs {
    tcp: Option<TcpCollector>,
    udp: Option<UdpCollector>,
    signals: SignalCollector,
    shared: SharedMaps,
    epoch: u32,
    counters: Readings<(), { Counter::ALL.len() }>,
    changes: Changes,
    /// What `running` last read of each interval set, with the set's change count then.
    looked: Vec<(Changed, u64, Vec<Seen>)>,
}

/// Every collector: the kernel programs' where they run, and what stands in for them.
pub struct Collectors {
    ladder: Ladder,
    traffic: Traffic,
    programs: Option<Programs>,
    counters: CounterSignals,
    device: DeviceCollector,
    files: Vec<FileMetric>,
    most_listed: usize,
}

impl Collectors {
    /// Decides each group's source from what could be attached (`kernel`: None when no
    /// eBPF is usable), starts each source, and takes the first readings, so the first
    /// report covers its own interval only.
    pub fn start(
        kernel: Option<(Maps, &Attached)>,
        options: &SocketOptions,
        include_loopback: bool,
        files: Vec<FileMetric>,
    ) -> Result<Self> {
        let (mut maps, attached) = kernel.unzip();
        let tcp_unusable = match (&mut maps, attached) {
            (Some(maps), Some(attached)) if attached.tcp.is_ok() && !attached.btf => {
                names::check_layout(&mut maps.tcp)
                    .err()
                    .map(|e| format!("{e:#}"))
            }
            _ => None,
        };
        let ladder = Ladder::decide(attached, tcp_unusable);
        let (traffic, programs) = match maps {
            Some(maps) => {
                let traffic = match ladder.traffic {
                    true => Traffic::Programs(Box::new(TrafficCollector::start(maps.traffic)?)),
                    false => Traffic::Links(LinkTraffic::start(include_loopback)?),
                };
                let programs = Programs::start(
                    maps.tcp,
                    maps.udp,
                    maps.signals,
                    maps.shared,
                    &ladder,
                    options,
                )?;
                (traffic, Some(programs))
            }
            None => (Traffic::Links(LinkTraffic::start(include_loopback)?), None),
        };
        Ok(Self {
            ladder,
            traffic,
            programs,
            counters: CounterSignals::start()?,
            device: DeviceCollector::start(),
            files,
            most_listed: options.most_listed,
        })
    }

    /// The readings the next report's deltas will be taken from, once `report` is out;
    /// `maps` names the maps the programs' readings come from.
    pub fn baseline(&mut self, report: u64, boot: String, maps: Option<u32>) -> Baseline {
        let mut baseline = Baseline {
            report,
            boot,
            maps,
            kernel: Some(*self.counters.reading()),
            ..Baseline::default()
        };
        match &mut self.traffic {
            Traffic::Programs(programs) => {
                baseline.program_traffic = Some(programs.readings().entries());
            }
            Traffic::Links(links) => {
                baseline.link_traffic =
                    Some(links.readings().iter().map(|(k, v)| (*k, *v)).collect());
            }
        }
        baseline.program_counters = self.programs.as_ref().and_then(|programs| {
            let entries = programs.counters.entries();
            entries.first().map(|(_, counts)| counts.to_vec())
        });
        baseline
    }

    /// Continues from the readings of an earlier tern's last report, of this boot: the
    /// kernel's own counters always, the programs' where their maps are the ones `maps`
    /// (adopted) names.
    pub fn resume(&mut self, baseline: Baseline, maps: Option<u32>) {
        if let Some(kernel) = baseline.kernel {
            *self.counters.reading() = kernel;
        }
        let same_maps = maps.is_some() && baseline.maps == maps;
        match (
            &mut self.traffic,
            baseline.program_traffic,
            baseline.link_traffic,
        ) {
            (Traffic::Programs(programs), Some(readings), _) if same_maps => {
                programs.readings().restore(readings);
            }
            (Traffic::Links(links), _, Some(readings)) => {
                *links.readings() = readings.into_iter().collect();
            }
            _ => {}
        }
        if let Some(programs) = self.programs.as_mut().filter(|_| same_maps)
            && let Some(Ok(counts)) = baseline.program_counters.map(<[u64; _]>::try_from)
        {
            programs.counters.restore([((), counts)]);
        }
    }

    /// Whether `running` can read metric `name` as it grows: one of the programs' counts or
    /// lists that the report takes from them.
    pub fn runs(&self, name: &str) -> bool {
        let metrics = COUNTED
            .iter()
            .map(|(m, _)| m)
            .chain(LISTED.iter().map(|(m, ..)| m));
        self.programs.is_some()
            && metrics
                .filter(|metric| metric.name == name)
                .any(|metric| self.wanted(metric, Source::Programs))
    }

    /// The programs' interval counts and lists `names` so far, by name: what the report at
    /// the end of the interval would carry now (a list, what it would carry at least).
    /// Moves nothing on. A failed read gives nothing: the report judges them in any case.
    pub fn running<'a>(&mut self, names: &[&'a str]) -> Vec<(&'a str, CustomMetric)> {
        let Some(programs) = self.programs.as_mut() else {
            return Vec::new();
        };
        match programs.running(names) {
            Ok(running) => running,
            Err(err) => {
                debug!("{err:#}");
                Vec::new()
            }
        }
    }

    /// The interval since the previous call, on the interfaces `counted` now and those
    /// `gone` since. A failed read is logged and gives nothing: the kernel keeps counting,
    /// and the next interval carries what this one could not.
    pub fn collect(&mut self, counted: &HashSet<u32>, gone: &HashSet<u32>) -> Option<Interval> {
        self.collect_each(counted, gone)
            .map(|(interval, _)| interval)
    }

    /// As [`Self::collect`], with the interval's traffic on each interface.
    pub fn collect_each(
        &mut self,
        counted: &HashSet<u32>,
        gone: &HashSet<u32>,
    ) -> Option<(Interval, ByInterface)> {
        let traffic = match &mut self.traffic {
            Traffic::Programs(programs) => programs.collect(counted, gone),
            Traffic::Links(links) => links.collect(),
        };
        let each = match traffic {
            Ok(each) => each,
            Err(err) => {
                error!("{err:#}; this interval's traffic goes into the next report");
                return None;
            }
        };
        let (tcp, udp, mut own) = match self.sockets() {
            Ok(sockets) => sockets,
            Err(err) => {
                error!("{err:#}; this interval's sockets go into the next report");
                return None;
            }
        };
        match self.counters.collect() {
            Ok(counted) => own.extend(
                counted
                    .into_iter()
                    .filter(|(metric, _)| self.wanted(metric, Source::Counters)),
            ),
            Err(err) => error!("{err:#}; the kernel's counters go into the next report"),
        }
        own.extend(self.device.collect());
        own.push(self.ladder.sources_metric());
        let interval = Interval {
            network_stats: total(&each),
            listening_tcp_ports: tcp.listening_tcp_ports,
            listening_udp_ports: udp.listening_udp_ports,
            tcp_connections: tcp.tcp_connections,
            own,
            user: self
                .files
                .iter()
                .filter_map(|m| Some((m.name.clone(), m.read()?)))
                .collect(),
        };
        Some((interval, each))
    }

    /// The sockets, from the programs where they follow them and else from sock_diag, and
    /// the programs' own metrics of the interval.
    fn sockets(&mut self) -> Result<(tcp::Tcp, udp::Udp, Vec<Own>)> {
        let events = self.programs.as_mut().map(Programs::collect).transpose()?;
        let (tcp, udp, mut own) = match events {
            Some(events) => {
                let mut own = events.signals;
                // Every interval set and socket set counts what it could not take.
                own.push((catalog::DROPPED, events.dropped.into()));
                (events.tcp, events.udp, own)
            }
            None => (None, None, Vec::new()),
        };
        let (mut tcp, mut udp) = match (tcp, udp) {
            (Some(tcp), Some(udp)) => (tcp, udp),
            (tcp, udp) => {
                let (listed_tcp, listed_udp) = diag::collect(self.most_listed)?;
                (tcp.unwrap_or(listed_tcp), udp.unwrap_or(listed_udp))
            }
        };
        own.append(&mut tcp.custom);
        own.append(&mut udp.custom);
        own.retain(|(metric, _)| self.wanted(metric, Source::Programs));
        Ok((tcp, udp, own))
    }

    /// Whether `metric`, made by `source`, goes into the report: where the ladder chose a
    /// source for it, only from that one.
    fn wanted(&self, metric: &Metric, source: Source) -> bool {
        self.ladder
            .source(metric)
            .is_none_or(|chosen| chosen == source)
    }
}

impl Programs {
    /// Learns how the programs name tern's namespace and has them follow it alone (unless
    /// every namespace is reported), and seeds the kernel maps with the sockets that
    /// existed before the programs were attached (in every namespace when all are reported,
    /// which needs privilege).
    fn start(
        mut tcp: TcpMaps,
        mut udp: UdpMaps,
        signals: SignalMaps,
        mut shared: SharedMaps,
        ladder: &Ladder,
        options: &SocketOptions,
    ) -> Result<Self> {
        let learn = |tcp: &mut TcpMaps, udp: &mut UdpMaps, tcp_followed: bool| {
            names::learn(tcp_followed.then_some(tcp), ladder.udp.then_some(udp))
        };
        let own = learn(&mut tcp, &mut udp, ladder.tcp)
            .context("learning how the kernel programs name tern's network namespace")?;
        if !options.all_namespaces {
            shared.follow(own)?;
        }
        if !ladder.tcp {
            // Attached but of no use: it records nothing from now on.
            shared.follow_none(FOLLOWED_BY_ADDRESS)?;
        }
        let mut seeded = seed::seed(&mut tcp, &mut udp, own)?;
        if options.all_namespaces {
            for other in netns::in_other_namespaces(|| {
                // The sock_ops program sees no close of an older socket, and sock_diag answers
                // only for tern's own namespace once privileges are dropped: another
                // namespace's older TCP sockets are not seeded, as they would stay listed
                // after they close.
                let names = learn(&mut tcp, &mut udp, ladder.tcp && !ladder.tcp_hooks)?;
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
        let NetnsNames {
            by_address,
            by_cookie,
        } = match options.all_namespaces {
            true => NetnsNames::default(),
            false => own,
        };
        let mut programs = Self {
            tcp: match ladder.tcp {
                true => Some(TcpCollector::start(
                    tcp,
                    TcpStart {
                        netns: by_address,
                        own: own
                            .by_address
                            .context("the TCP programs gave tern's namespace no name")?,
                        interval_connections: options.interval_connections,
                        unwatched_seeds: ladder.tcp_hooks,
                        most_listed: options.most_listed,
                        untracked: seeded.tcp_untracked > 0,
                    },
                )?),
                false => None,
            },
            udp: match ladder.udp {
                true => Some(UdpCollector::start(udp, by_cookie)?),
                false => None,
            },
            signals: SignalCollector::new(signals, by_address),
            // Maps adopted from an earlier tern continue its interval numbers, so that the
            // sets it filled are drained as past intervals.
            epoch: shared.epoch.get(&0, 0).unwrap_or(0),
            shared,
            counters: Readings::default(),
            changes: Changes::default(),
            looked: Vec::new(),
        };
        programs.next_epoch()?;
        let first = programs.read_counters()?;
        programs.counters.advance((), first);
        Ok(programs)
    }

    fn collect(&mut self) -> Result<Events> {
        self.changes.read(&self.shared.changes)?;
        // Events from here on belong to the next interval; the sets of this one are drained.
        let epoch = self.next_epoch()?;
        let now = self.read_counters()?;
        let growth = Growth(self.counters.advance((), now));
        let owners = ports::owners();
        let tcp = self
            .tcp
            .as_mut()
            .map(|tcp| tcp.collect(epoch, &growth, &owners, &mut self.changes))
            .transpose()?;
        let udp = self
            .udp
            .as_mut()
            .map(|udp| udp.collect(epoch, &owners, &mut self.changes))
            .transpose()?;
        let signals = self.signals.collect(epoch, &growth, &mut self.changes)?;
        // While the TCP fallback lasts, the sockets the maps lack are details dropped too.
        let untracked = tcp.as_ref().map_or(0, |tcp| tcp.untracked);
        Ok(Events {
            tcp,
            udp,
            signals,
            dropped: growth.of(Counter::DetailsDropped).max(untracked),
        })
    }

    /// The counts and lists `names` of the interval so far (see `Collectors::running`).
    fn running<'a>(&mut self, names: &[&'a str]) -> Result<Vec<(&'a str, CustomMetric)>> {
        let mut running = Vec::new();
        if names
            .iter()
            .any(|n| COUNTED.iter().any(|(m, _)| m.name == *n))
        {
            let growth = Growth(self.counters.since(&(), self.read_counters()?));
            running.extend(names.iter().filter_map(|name| {
                let (_, counters) = COUNTED.iter().find(|(m, _)| m.name == *name)?;
                Some((*name, growth.sum(counters).into()))
            }));
        }
        let lists: Vec<(&str, Changed, Listed)> = names
            .iter()
            .filter_map(|name| {
                let (_, which, listed) = LISTED.iter().find(|(m, ..)| m.name == *name)?;
                Some((*name, *which, *listed))
            })
            .collect();
        if lists.is_empty() {
            return Ok(running);
        }
        let changes: [u64; Changed::COUNT as usize] =
            maps::per_cpu_sums(&self.shared.changes).context("reading the CHANGES map")?;
        for (name, which, listed) in lists {
            let count = changes[which.index() as usize];
            let look = self.looked.iter().position(|(w, ..)| *w == which);
            // A set whose count has not moved since it was last read holds what it held.
            let seen = match look.map(|i| &self.looked[i]) {
                Some((_, counted, seen)) if *counted == count => seen,
                _ => {
                    let seen = self.seen_so_far(which)?;
                    let entry = (which, count, seen);
                    match look {
                        Some(i) => self.looked[i] = entry,
                        None => self.looked.push(entry),
                    }
                    &self.looked[look.unwrap_or(self.looked.len() - 1)].2
                }
            };
            running.push((name, listed.of(seen)));
        }
        Ok(running)
    }

    /// What interval set `which` has seen so far of the interval now.
    fn seen_so_far(&self, which: Changed) -> Result<Vec<Seen>> {
        match (which, &self.tcp, &self.udp) {
            (Changed::TcpListened | Changed::RemotesSeen, Some(tcp), _) => {
                tcp.seen_so_far(which, self.epoch)
            }
            (Changed::UdpListened, _, Some(udp)) => udp.seen_so_far(self.epoch),
            (Changed::Contacted, ..) => self.signals.seen_so_far(self.epoch),
            _ => Ok(Vec::new()),
        }
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
        maps::per_cpu_sums(&self.shared.counters).context("reading the COUNTERS map")
    }
}
