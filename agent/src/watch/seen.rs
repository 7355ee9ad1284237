//! What the view shows, kept from one second's report to the next: each interface's traffic
//! (the last second, the total since the view started, the last minute), the listeners with
//! those that appeared since the start, the established connections by remote address, the
//! security signals' counts, and the collection sources. Fed reports; draws nothing.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use crate::{
    collect::ByInterface,
    report::{
        CustomMetric, Merge, NetworkStats, Number, Port, Report,
        catalog::{self, Origin},
    },
};

/// How many seconds the sparklines span.
pub const MINUTE: usize = 60;

/// One interface's traffic.
#[derive(Default)]
pub struct Interface {
    pub name: String,
    /// Over the last second.
    pub last: NetworkStats,
    /// Since the view started.
    pub total: NetworkStats,
    /// Bytes in, and out, of each of the last seconds, oldest first.
    pub minute_in: VecDeque<u64>,
    pub minute_out: VecDeque<u64>,
}

/// A listening socket.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Listener {
    pub protocol: &'static str,
    pub port: u16,
    /// The interface of the address it is bound to; none for a wildcard.
    pub interface: Option<String>,
}

/// A remote address with the established connections to it.
pub struct Remote {
    pub address: IpAddr,
    pub connections: u64,
}

/// A security signal: one of the catalog's interval counts.
pub struct Signal {
    pub name: &'static str,
    /// Per second, over the last second.
    pub rate: f64,
    /// Since the view started.
    pub total: u64,
}

/// How the interface and remote address tables are ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    /// The busiest first.
    #[default]
    Busiest,
    /// By name, or by address.
    Name,
}

impl Order {
    pub fn next(self) -> Self {
        match self {
            Self::Busiest => Self::Name,
            Self::Name => Self::Busiest,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Busiest => "busiest",
            Self::Name => "name",
        }
    }
}

#[derive(Default)]
pub struct Seen {
    /// Seconds of reports taken in.
    pub seconds: u64,
    pub interfaces: BTreeMap<u32, Interface>,
    pub listeners: Vec<Listener>,
    /// The listeners of the first report: any other is new.
    first_listeners: Option<HashSet<Listener>>,
    pub established: u64,
    /// The remote addresses of the connections listed (all of them, up to the collectors'
    /// limit), with their connection counts.
    pub remotes: Vec<Remote>,
    pub signals: Vec<Signal>,
    pub sources: Vec<String>,
}

impl Seen {
    /// Takes in one report covering `elapsed`, with its traffic on each interface and the
    /// interfaces' names by index.
    pub fn take(
        &mut self,
        report: &Report,
        each: &ByInterface,
        names: &HashMap<u32, String>,
        elapsed: Duration,
    ) {
        self.seconds += 1;
        self.traffic(each, names);
        let metrics = &report.metrics;
        let ports = [
            ("tcp", &metrics.listening_tcp_ports),
            ("udp", &metrics.listening_udp_ports),
        ];
        self.listeners = ports
            .into_iter()
            .flat_map(|(protocol, list)| {
                list.iter()
                    .flat_map(|l| &l.ports)
                    .map(move |Port { port, interface }| Listener {
                        protocol,
                        port: *port,
                        interface: interface.clone(),
                    })
            })
            .collect();
        self.listeners.sort();
        if self.first_listeners.is_none() {
            self.first_listeners = Some(self.listeners.iter().cloned().collect());
        }
        let established = metrics
            .tcp_connections
            .as_ref()
            .map(|t| &t.established_connections);
        self.established = established.map_or(0, |e| e.total);
        let mut remotes: HashMap<IpAddr, u64> = HashMap::new();
        for connection in established.iter().flat_map(|e| &e.connections) {
            if let Ok(remote) = connection.remote_addr.parse::<SocketAddr>() {
                *remotes.entry(remote.ip()).or_default() += 1;
            }
        }
        self.remotes = remotes
            .into_iter()
            .map(|(address, connections)| Remote {
                address,
                connections,
            })
            .collect();
        self.signals(report, elapsed);
        if let Some([CustomMetric::StringList(sources)]) =
            report.custom_metrics.get(catalog::SOURCES.name)
        {
            self.sources.clone_from(sources);
        }
    }

    /// Whether `listener` appeared after the view started.
    pub fn is_new(&self, listener: &Listener) -> bool {
        self.first_listeners
            .as_ref()
            .is_some_and(|first| !first.contains(listener))
    }

    /// The interfaces in `order`.
    pub fn interfaces(&self, order: Order) -> Vec<&Interface> {
        let mut interfaces: Vec<&Interface> = self.interfaces.values().collect();
        match order {
            Order::Busiest => interfaces.sort_by_key(|i| {
                std::cmp::Reverse(i.last.bytes_in.saturating_add(i.last.bytes_out))
            }),
            Order::Name => interfaces.sort_by(|a, b| a.name.cmp(&b.name)),
        }
        interfaces
    }

    /// The remote addresses in `order`.
    pub fn remotes(&self, order: Order) -> Vec<&Remote> {
        let mut remotes: Vec<&Remote> = self.remotes.iter().collect();
        match order {
            Order::Busiest => remotes.sort_by(|a, b| {
                b.connections
                    .cmp(&a.connections)
                    .then(a.address.cmp(&b.address))
            }),
            Order::Name => remotes.sort_by_key(|r| r.address),
        }
        remotes
    }

    fn traffic(&mut self, each: &ByInterface, names: &HashMap<u32, String>) {
        let mut counted = HashSet::new();
        for (index, stats) in each {
            counted.insert(*index);
            let interface = self.interfaces.entry(*index).or_default();
            interface.name = match (index, names.get(index)) {
                (_, Some(name)) => clean(name),
                // The kernel's map slot of the interfaces it had no room for.
                (0, None) => "(others)".to_owned(),
                (index, None) => format!("#{index}"),
            };
            interface.last = *stats;
            interface.total.add([
                stats.bytes_in,
                stats.packets_in,
                stats.bytes_out,
                stats.packets_out,
            ]);
            record(&mut interface.minute_in, stats.bytes_in);
            record(&mut interface.minute_out, stats.bytes_out);
        }
        // The overflow slot is shown only once something landed there.
        self.interfaces.retain(|index, i| {
            counted.contains(index) && (*index != 0 || i.total != NetworkStats::default())
        });
    }

    fn signals(&mut self, report: &Report, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64().max(0.001);
        let counts = catalog::CATALOG
            .iter()
            .filter(|m| m.origin == Origin::Collected && m.merge == Merge::Sum);
        let mut signals = Vec::new();
        for metric in counts {
            let Some([CustomMetric::Number(Number::Count(count))]) =
                report.custom_metrics.get(metric.name)
            else {
                continue;
            };
            let total = self
                .signals
                .iter()
                .find(|s| s.name == metric.name)
                .map_or(0, |s| s.total);
            signals.push(Signal {
                name: metric.name,
                rate: *count as f64 / seconds,
                total: total.saturating_add(*count),
            });
        }
        self.signals = signals;
    }
}

/// Adds one second to a minute of seconds.
fn record(minute: &mut VecDeque<u64>, value: u64) {
    if minute.len() == MINUTE {
        minute.pop_front();
    }
    minute.push_back(value);
}

/// A name as the terminal may print it: any byte an interface name may hold, but no control
/// character that would move the cursor or change the terminal.
pub fn clean(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Connection, Connections, Metrics, PortList, TcpConnections};

    fn stats(packets: u64, bytes: u64) -> NetworkStats {
        NetworkStats {
            bytes_in: bytes,
            bytes_out: bytes,
            packets_in: packets,
            packets_out: packets,
        }
    }

    fn report(ports: &[u16], remotes: &[&str]) -> Report {
        let mut report = Report::new(
            1,
            Metrics {
                listening_tcp_ports: Some(PortList::wildcards(ports)),
                tcp_connections: Some(TcpConnections {
                    established_connections: Connections {
                        connections: remotes
                            .iter()
                            .map(|r| Connection {
                                remote_addr: (*r).to_owned(),
                                local_port: 22,
                                local_interface: None,
                            })
                            .collect(),
                        total: remotes.len() as u64,
                    },
                }),
                ..Metrics::default()
            },
        );
        report.set_custom(catalog::RESETS.name, CustomMetric::from(4));
        report
    }

    #[test]
    fn totals_add_up_and_the_minute_keeps_sixty_seconds() {
        let mut seen = Seen::default();
        let names = HashMap::from([(2, "eth0".to_owned())]);
        for _ in 0..70 {
            seen.take(
                &report(&[], &[]),
                &vec![(2, stats(3, 300))],
                &names,
                Duration::from_secs(1),
            );
        }
        let eth0 = &seen.interfaces[&2];
        assert_eq!(eth0.total, stats(210, 21_000));
        assert_eq!(eth0.last, stats(3, 300));
        assert_eq!(eth0.minute_in.len(), MINUTE);
        assert!(eth0.minute_out.iter().all(|&b| b == 300));
        let resets = &seen.signals[0];
        assert_eq!((resets.name, resets.total), (catalog::RESETS.name, 280));
        assert!((resets.rate - 4.0).abs() < 1e-9);
    }

    #[test]
    fn listeners_after_the_first_report_are_new() {
        let mut seen = Seen::default();
        let none = HashMap::new();
        seen.take(
            &report(&[22], &[]),
            &Vec::new(),
            &none,
            Duration::from_secs(1),
        );
        seen.take(
            &report(&[22, 8080], &[]),
            &Vec::new(),
            &none,
            Duration::from_secs(1),
        );
        let new: Vec<u16> = seen
            .listeners
            .iter()
            .filter(|l| seen.is_new(l))
            .map(|l| l.port)
            .collect();
        assert_eq!(new, [8080]);
    }

    #[test]
    fn remotes_are_counted_by_address_and_ordered() {
        let mut seen = Seen::default();
        let remotes = [
            "10.0.0.9:1",
            "10.0.0.2:5",
            "10.0.0.9:2",
            "[2001:db8::1]:443",
        ];
        seen.take(
            &report(&[], &remotes),
            &Vec::new(),
            &HashMap::new(),
            Duration::from_secs(1),
        );
        let busiest: Vec<String> = seen
            .remotes(Order::Busiest)
            .iter()
            .map(|r| format!("{} {}", r.address, r.connections))
            .collect();
        assert_eq!(busiest, ["10.0.0.9 2", "10.0.0.2 1", "2001:db8::1 1"]);
        let by_name: Vec<IpAddr> = seen
            .remotes(Order::Name)
            .iter()
            .map(|r| r.address)
            .collect();
        assert_eq!(by_name[0], "10.0.0.2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn control_characters_do_not_reach_the_terminal() {
        assert_eq!(clean("eth\u{1b}[2J0"), "eth?[2J0");
    }
}
