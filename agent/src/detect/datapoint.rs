//! Datapoints: what one report says of one metric, in the shapes Device Defender compares
//! behaviours with, and as a violation's `metricValue`. The device-side `aws:` metrics are
//! derived from the report as the service derives them; custom metrics are taken as sent.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use serde_json::{Value, json};

use crate::report::{CustomMetric, Kind, Number, Report};

/// The shape of a metric's datapoints, which decides the operators and the value kind that
/// apply to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// An `aws:` count: compared with `count`.
    Count,
    /// A custom `number`: compared with `number`.
    Number,
    /// Listening ports: compared with `ports`.
    Ports,
    /// Addresses: compared with `cidrs`.
    Addresses,
    /// A custom `number_list`: compared with `numbers`.
    Numbers,
    /// A custom `string_list`: compared with `strings`.
    Strings,
}

impl Shape {
    pub fn of_custom(kind: Kind) -> Self {
        match kind {
            Kind::Number => Self::Number,
            Kind::NumberList => Self::Numbers,
            Kind::StringList => Self::Strings,
            Kind::IpList => Self::Addresses,
        }
    }
}

/// A device-side metric: its shape, and whether it counts over the interval (so that
/// `durationSeconds` adds reports up) rather than being a reading at report time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Device {
    pub name: &'static str,
    pub shape: Shape,
    pub counts: bool,
}

const fn device(name: &'static str, shape: Shape, counts: bool) -> Device {
    Device {
        name,
        shape,
        counts,
    }
}

/// Every device-side metric Device Defender derives from a report.
pub const DEVICE: [Device; 10] = [
    device("aws:all-bytes-in", Shape::Count, true),
    device("aws:all-bytes-out", Shape::Count, true),
    device("aws:all-packets-in", Shape::Count, true),
    device("aws:all-packets-out", Shape::Count, true),
    device("aws:listening-tcp-ports", Shape::Ports, false),
    device("aws:listening-udp-ports", Shape::Ports, false),
    device("aws:num-listening-tcp-ports", Shape::Count, false),
    device("aws:num-listening-udp-ports", Shape::Count, false),
    device("aws:num-established-tcp-connections", Shape::Count, false),
    device("aws:destination-ip-addresses", Shape::Addresses, false),
];

/// One metric's value in one report.
#[derive(Clone, Debug, PartialEq)]
pub enum Datapoint {
    Count(u64),
    Number(f64),
    Ports(BTreeSet<u16>),
    Addresses(BTreeSet<IpAddr>),
    Numbers(Vec<f64>),
    Strings(BTreeSet<String>),
}

impl Datapoint {
    /// `metric`'s datapoint in `report`; none when the report does not carry it.
    pub fn of(report: &Report, metric: &str) -> Option<Self> {
        let m = &report.metrics;
        let stats = m.network_stats.as_ref();
        let ports = |list: Option<&crate::report::PortList>| {
            list.map(|l| Self::Ports(l.ports.iter().map(|p| p.port).collect()))
        };
        let established = m
            .tcp_connections
            .as_ref()
            .map(|t| &t.established_connections);
        Some(match metric {
            "aws:all-bytes-in" => Self::Count(stats?.bytes_in),
            "aws:all-bytes-out" => Self::Count(stats?.bytes_out),
            "aws:all-packets-in" => Self::Count(stats?.packets_in),
            "aws:all-packets-out" => Self::Count(stats?.packets_out),
            "aws:listening-tcp-ports" => ports(m.listening_tcp_ports.as_ref())?,
            "aws:listening-udp-ports" => ports(m.listening_udp_ports.as_ref())?,
            "aws:num-listening-tcp-ports" => Self::Count(m.listening_tcp_ports.as_ref()?.total),
            "aws:num-listening-udp-ports" => Self::Count(m.listening_udp_ports.as_ref()?.total),
            "aws:num-established-tcp-connections" => Self::Count(established?.total),
            "aws:destination-ip-addresses" => Self::Addresses(
                established?
                    .connections
                    .iter()
                    .filter_map(|c| c.remote_addr.parse::<SocketAddr>().ok())
                    .map(|a| canonical(a.ip()))
                    .collect(),
            ),
            custom => Self::of_custom(&report.custom_metrics.get(custom)?[0]),
        })
    }

    /// The sum of two datapoints of a metric that counts, for `durationSeconds`.
    /// A custom metric's value as a datapoint.
    pub fn of_custom(value: &CustomMetric) -> Self {
        match value {
            CustomMetric::Number(Number::Count(n)) => Self::Number(*n as f64),
            CustomMetric::Number(Number::Reading(r)) => Self::Number(*r),
            CustomMetric::NumberList(list) => {
                Self::Numbers(list.iter().map(|n| *n as f64).collect())
            }
            CustomMetric::StringList(list) => Self::Strings(list.iter().cloned().collect()),
            CustomMetric::IpList(list) => Self::Addresses(
                list.iter()
                    .filter_map(|a| a.parse().ok())
                    .map(canonical)
                    .collect(),
            ),
        }
    }

    pub fn plus(&self, other: &Self) -> Option<Self> {
        match (self, other) {
            (Self::Count(a), Self::Count(b)) => Some(Self::Count(a.saturating_add(*b))),
            (Self::Number(a), Self::Number(b)) => Some(Self::Number(a + b)),
            _ => None,
        }
    }

    /// The datapoint as a violation's `metricValue`.
    pub fn metric_value(&self) -> Value {
        match self {
            Self::Count(n) => json!({ "count": n }),
            Self::Number(x) => json!({ "number": number(*x) }),
            Self::Ports(ports) => json!({ "ports": ports }),
            Self::Addresses(addresses) => json!({ "cidrs": addresses }),
            Self::Numbers(list) => {
                json!({ "numbers": list.iter().map(|x| number(*x)).collect::<Vec<_>>() })
            }
            Self::Strings(list) => json!({ "strings": list }),
        }
    }
}

/// An IPv4 peer of an IPv6 socket (`::ffff:a.b.c.d`) is an IPv4 address to a CIDR set.
pub fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// A whole number is written as one, as the report writes it.
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9_007_199_254_740_992.0 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{
        Connection, Connections, Metrics, NetworkStats, Port, PortList, TcpConnections,
    };

    #[test]
    fn every_device_metric_comes_from_the_report_as_the_service_derives_it() {
        let mut report = Report::new(
            1,
            Metrics {
                listening_tcp_ports: Some(PortList {
                    ports: vec![
                        Port {
                            port: 22,
                            interface: None,
                        },
                        Port {
                            port: 22,
                            interface: Some("eth0".into()),
                        },
                        Port {
                            port: 8080,
                            interface: None,
                        },
                    ],
                    total: 3,
                }),
                listening_udp_ports: Some(PortList::default()),
                network_stats: Some(NetworkStats {
                    bytes_in: 1,
                    bytes_out: 2,
                    packets_in: 3,
                    packets_out: 4,
                }),
                tcp_connections: Some(TcpConnections {
                    established_connections: Connections {
                        connections: vec![
                            Connection {
                                remote_addr: "[::ffff:192.0.2.7]:443".into(),
                                local_port: 5000,
                                local_interface: None,
                            },
                            Connection {
                                remote_addr: "[2001:db8::9]:22".into(),
                                local_port: 5001,
                                local_interface: None,
                            },
                        ],
                        total: 2,
                    },
                }),
            },
        );
        report.set_custom("resets", CustomMetric::from(7));
        report.set_custom("cpu", CustomMetric::Number(Number::Reading(12.5)));
        report.set_custom("seen", CustomMetric::NumberList(vec![23, 80]));
        report.set_custom("exe", CustomMetric::StringList(vec!["/bin/sh".into()]));
        report.set_custom("ips", CustomMetric::IpList(vec!["10.0.0.1".into()]));
        let of = |metric| Datapoint::of(&report, metric).map(|d| d.metric_value());
        assert_eq!(of("aws:all-bytes-in"), Some(json!({"count": 1})));
        assert_eq!(of("aws:all-bytes-out"), Some(json!({"count": 2})));
        assert_eq!(of("aws:all-packets-in"), Some(json!({"count": 3})));
        assert_eq!(of("aws:all-packets-out"), Some(json!({"count": 4})));
        assert_eq!(
            of("aws:listening-tcp-ports"),
            Some(json!({"ports": [22, 8080]}))
        );
        assert_eq!(of("aws:listening-udp-ports"), Some(json!({"ports": []})));
        assert_eq!(of("aws:num-listening-tcp-ports"), Some(json!({"count": 3})));
        assert_eq!(of("aws:num-listening-udp-ports"), Some(json!({"count": 0})));
        assert_eq!(
            of("aws:num-established-tcp-connections"),
            Some(json!({"count": 2}))
        );
        assert_eq!(
            of("aws:destination-ip-addresses"),
            Some(json!({"cidrs": ["192.0.2.7", "2001:db8::9"]}))
        );
        assert_eq!(of("resets"), Some(json!({"number": 7})));
        assert_eq!(of("cpu"), Some(json!({"number": 12.5})));
        assert_eq!(of("seen"), Some(json!({"numbers": [23, 80]})));
        assert_eq!(of("exe"), Some(json!({"strings": ["/bin/sh"]})));
        assert_eq!(of("ips"), Some(json!({"cidrs": ["10.0.0.1"]})));
        assert_eq!(of("not_sent"), None);
    }
}
