// Over 400 lines: the document's types, their folding and their rules in one place, so a
// field and the rule that checks it cannot drift apart.
//! The report model: a Device Defender metrics report with the document's long field names.
//! Builds, merges and checks reports; `encode` turns one into bytes. Knows nothing of where
//! the numbers come from or where the bytes go.

mod assemble;
pub mod catalog;
mod encode;
pub mod ids;

use std::{collections::BTreeMap, str::FromStr};

use anyhow::bail;

use serde::{Deserialize, Serialize};

pub use assemble::Interval;
pub use encode::{Encoded, Encoding, Format, Names};
pub use ids::ReportIds;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub header: Header,
    #[serde(default, skip_serializing_if = "Metrics::is_empty")]
    pub metrics: Metrics,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_metrics: BTreeMap<String, [CustomMetric; 1]>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub report_id: u64,
    pub version: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listening_tcp_ports: Option<PortList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listening_udp_ports: Option<PortList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_stats: Option<NetworkStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_connections: Option<TcpConnections>,
}

impl Metrics {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The document's one version.
pub const VERSION: &str = "1.0";
/// The largest whole number Device Defender keeps: 15 significant digits.
const MAX_COUNT: u64 = 999_999_999_999_999;

impl Report {
    /// Whether the report keeps the document's rules as tern builds reports, its lists whole
    /// (cutting them to fit is the encoding's): a report read back from disk is sent only if
    /// tern could have built it.
    pub fn check(&self) -> Result<(), String> {
        if self.header.version != VERSION {
            return Err(format!(
                "version {:?}, not {VERSION:?}",
                self.header.version
            ));
        }
        if self.header.report_id == 0 {
            return Err("report id 0".into());
        }
        if self.metrics.is_empty() && self.custom_metrics.is_empty() {
            return Err("neither metrics nor custom metrics".into());
        }
        let ports = [
            ("listening_tcp_ports", &self.metrics.listening_tcp_ports),
            ("listening_udp_ports", &self.metrics.listening_udp_ports),
        ];
        for (name, list) in ports {
            let Some(list) = list else { continue };
            if list.total != list.ports.len() as u64 {
                return Err(format!(
                    "{name}: total {} for {} ports",
                    list.total,
                    list.ports.len()
                ));
            }
            if list.ports.iter().any(|p| p.port == 0) {
                return Err(format!("{name}: port 0"));
            }
        }
        if let Some(tcp) = &self.metrics.tcp_connections {
            let established = &tcp.established_connections;
            if established.total != established.connections.len() as u64 {
                return Err(format!(
                    "established_connections: total {} for {} connections",
                    established.total,
                    established.connections.len()
                ));
            }
            if let Some(bad) = established
                .connections
                .iter()
                .find(|c| c.remote_addr.parse::<std::net::SocketAddr>().is_err())
            {
                return Err(format!("remote_addr {:?}", bad.remote_addr));
            }
        }
        for (name, [value]) in &self.custom_metrics {
            catalog::valid_name(name).map_err(|why| format!("custom metric {name:?} {why}"))?;
            value
                .check()
                .map_err(|why| format!("custom metric {name}: {why}"))?;
        }
        Ok(())
    }
}

/// Listening ports; `total` is the full count even when `ports` is cut to fit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortList {
    pub ports: Vec<Port>,
    pub total: u64,
}

#[cfg(test)]
impl PortList {
    /// `ports`, each bound to every address.
    pub fn wildcards(ports: &[u16]) -> Self {
        Self {
            ports: ports
                .iter()
                .map(|&port| Port {
                    port,
                    interface: None,
                })
                .collect(),
            total: ports.len() as u64,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Port {
    pub port: u16,
    /// Absent for a wildcard bind, which has no single interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpConnections {
    pub established_connections: Connections,
}

/// Established TCP connections; `total` is the full count even when the list is cut.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connections {
    pub connections: Vec<Connection>,
    pub total: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Connection {
    /// "ip:port", or "[ipv6]:port".
    pub remote_addr: String,
    pub local_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_interface: Option<String>,
}

/// Traffic since the previous report, in wire segments and wire bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStats {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub packets_out: u64,
}

impl NetworkStats {
    /// Adds growth given as [bytes_in, packets_in, bytes_out, packets_out].
    pub fn add(&mut self, growth: [u64; 4]) {
        self.bytes_in = self.bytes_in.saturating_add(growth[0]);
        self.packets_in = self.packets_in.saturating_add(growth[1]);
        self.bytes_out = self.bytes_out.saturating_add(growth[2]);
        self.packets_out = self.packets_out.saturating_add(growth[3]);
    }

    fn absorb(&mut self, older: &NetworkStats) {
        self.add([
            older.bytes_in,
            older.packets_in,
            older.bytes_out,
            older.packets_out,
        ]);
    }
}

/// A custom metric value; in the document it is always wrapped in a one-element array.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CustomMetric {
    Number(Number),
    NumberList(Vec<u64>),
    StringList(Vec<String>),
    IpList(Vec<String>),
}

impl CustomMetric {
    /// Whether Device Defender keeps the value: numbers of at most 15 significant digits,
    /// strings of letters, digits and `: _ - / .`, valid IP addresses.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Self::Number(Number::Count(n)) if *n > MAX_COUNT => {
                Err(format!("{n}, over 15 significant digits"))
            }
            Self::Number(Number::Reading(r)) if !r.is_finite() => Err(format!("{r}")),
            Self::NumberList(list) => match list.iter().find(|n| **n > MAX_COUNT) {
                Some(n) => Err(format!("{n}, over 15 significant digits")),
                None => Ok(()),
            },
            Self::StringList(list) => match list.iter().find(|s| {
                !s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-' | '/' | '.'))
            }) {
                Some(s) => Err(format!("{s:?}, with characters Device Defender drops")),
                None => Ok(()),
            },
            Self::IpList(list) => {
                match list.iter().find(|s| s.parse::<std::net::IpAddr>().is_err()) {
                    Some(s) => Err(format!("{s:?}, not an IP address")),
                    None => Ok(()),
                }
            }
            Self::Number(_) => Ok(()),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Self::Number(_) => Kind::Number,
            Self::NumberList(_) => Kind::NumberList,
            Self::StringList(_) => Kind::StringList,
            Self::IpList(_) => Kind::IpList,
        }
    }
}

/// The type of a custom metric, as Device Defender names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Number,
    NumberList,
    StringList,
    IpList,
}

impl FromStr for Kind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "number" => Self::Number,
            "number_list" | "number-list" => Self::NumberList,
            "string_list" | "string-list" => Self::StringList,
            "ip_list" | "ip-list" | "ip-address-list" => Self::IpList,
            other => bail!(
                "unknown metric type {other:?}: use number, number_list, string_list or ip_list"
            ),
        })
    }
}

/// A `number` value: a count stays an integer in the document; a reading may have decimals.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Number {
    Count(u64),
    Reading(f64),
}

impl Number {
    /// The sum of two values: a count while both are counts.
    fn plus(self, other: Number) -> Number {
        match (self, other) {
            (Number::Count(a), Number::Count(b)) => Number::Count(a.saturating_add(b)),
            (a, b) => Number::Reading(a.as_f64() + b.as_f64()),
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Number::Count(n) => n as f64,
            Number::Reading(r) => r,
        }
    }
}

impl From<u64> for CustomMetric {
    fn from(count: u64) -> Self {
        Self::Number(Number::Count(count))
    }
}

/// How a custom metric of an older, undelivered report folds into a newer one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    /// A count over the interval: the merged report counts both intervals.
    Sum,
    /// A set seen over the interval: the merged report holds both sets.
    Union,
    /// A reading at report time: the newer one stands.
    Latest,
}

impl Report {
    pub fn new(report_id: u64, metrics: Metrics) -> Self {
        Self {
            header: Header {
                report_id,
                version: VERSION.to_owned(),
            },
            metrics,
            custom_metrics: BTreeMap::new(),
        }
    }

    pub fn set_custom(&mut self, name: &str, value: CustomMetric) {
        self.custom_metrics.insert(name.to_owned(), [value]);
    }

    /// Folds an older report that was never delivered into this one, so this report
    /// accounts for both intervals: traffic adds up, interval counts add up, interval sets
    /// unite, and snapshots (ports, connections, readings) are this report's.
    pub fn absorb(&mut self, older: &Report, rule: impl Fn(&str) -> Merge) {
        if let Some(old) = &older.metrics.network_stats {
            self.metrics
                .network_stats
                .get_or_insert_with(NetworkStats::default)
                .absorb(old);
        }
        for (name, [old]) in &older.custom_metrics {
            let rule = rule(name);
            match self.custom_metrics.get_mut(name) {
                None if rule != Merge::Latest => {
                    self.custom_metrics.insert(name.clone(), [old.clone()]);
                }
                None => {}
                Some([new]) => merge_custom(new, old, rule),
            }
        }
    }
}

fn merge_custom(new: &mut CustomMetric, old: &CustomMetric, rule: Merge) {
    use CustomMetric::*;
    match (rule, new, old) {
        (Merge::Sum, Number(n), Number(o)) => *n = n.plus(*o),
        (Merge::Union, NumberList(n), NumberList(o)) => union(n, o),
        (Merge::Union, StringList(n), StringList(o)) | (Merge::Union, IpList(n), IpList(o)) => {
            union(n, o);
        }
        _ => {}
    }
}

fn union<T: Ord + Clone>(new: &mut Vec<T>, old: &[T]) {
    new.extend(old.iter().cloned());
    new.sort_unstable();
    new.dedup();
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn stats(bytes_in: u64, packets_in: u64) -> Metrics {
        Metrics {
            network_stats: Some(NetworkStats {
                bytes_in,
                packets_in,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn serialises_with_the_document_field_names() {
        let mut report = Report::new(
            42,
            Metrics {
                listening_tcp_ports: Some(PortList {
                    ports: vec![
                        Port {
                            port: 22,
                            interface: Some("eth0".into()),
                        },
                        Port {
                            port: 80,
                            interface: None,
                        },
                    ],
                    total: 2,
                }),
                network_stats: Some(NetworkStats {
                    bytes_in: 1_000,
                    bytes_out: 2_000,
                    packets_in: 3,
                    packets_out: 4,
                }),
                tcp_connections: Some(TcpConnections {
                    established_connections: Connections {
                        connections: vec![Connection {
                            remote_addr: "[2001:db8::1]:443".into(),
                            local_port: 50_000,
                            local_interface: Some("eth0".into()),
                        }],
                        total: 1,
                    },
                }),
                ..Default::default()
            },
        );
        report.set_custom("opened", CustomMetric::from(7));
        report.set_custom("ports", CustomMetric::NumberList(vec![22, 80]));
        report.set_custom("addrs", CustomMetric::IpList(vec!["10.0.0.1".into()]));
        let value: Value = serde_json::to_value(&report).unwrap();
        assert_eq!(
            value,
            json!({
                "header": {"report_id": 42, "version": "1.0"},
                "metrics": {
                    "listening_tcp_ports": {"ports": [
                        {"port": 22, "interface": "eth0"}, {"port": 80}], "total": 2},
                    "network_stats": {
                        "bytes_in": 1000, "bytes_out": 2000, "packets_in": 3, "packets_out": 4},
                    "tcp_connections": {"established_connections": {"connections": [
                        {"remote_addr": "[2001:db8::1]:443", "local_port": 50000,
                         "local_interface": "eth0"}], "total": 1}}
                },
                "custom_metrics": {
                    "addrs": [{"ip_list": ["10.0.0.1"]}],
                    "opened": [{"number": 7}],
                    "ports": [{"number_list": [22, 80]}]
                }
            })
        );
        let back: Report = serde_json::from_value(value).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn counters_beyond_32_bits_stay_exact() {
        let report = Report::new(1, stats(u64::from(u32::MAX) * 3, 1));
        let value = serde_json::to_value(&report).unwrap();
        assert_eq!(
            value["metrics"]["network_stats"]["bytes_in"].as_u64(),
            Some(u64::from(u32::MAX) * 3)
        );
    }

    #[test]
    fn growth_saturates_instead_of_wrapping() {
        let mut stats = NetworkStats {
            bytes_in: u64::MAX - 1,
            ..Default::default()
        };
        stats.add([5, 1, 2, 3]);
        assert_eq!(stats.bytes_in, u64::MAX);
        assert_eq!(
            (stats.packets_in, stats.bytes_out, stats.packets_out),
            (1, 2, 3)
        );
    }

    #[test]
    fn absorbing_an_undelivered_report_accounts_for_both_intervals() {
        let mut older = Report::new(1, stats(100, 2));
        older.set_custom("count", CustomMetric::from(3));
        older.set_custom("seen", CustomMetric::NumberList(vec![80, 443]));
        older.set_custom("reading", CustomMetric::from(50));
        older.set_custom("only_old", CustomMetric::from(4));
        let mut newer = Report::new(2, stats(10, 1));
        newer.set_custom("count", CustomMetric::from(5));
        newer.set_custom("seen", CustomMetric::NumberList(vec![22, 80]));
        newer.set_custom("reading", CustomMetric::from(60));
        let rule = |name: &str| match name {
            "count" | "only_old" => Merge::Sum,
            "seen" => Merge::Union,
            _ => Merge::Latest,
        };
        newer.absorb(&older, rule);
        assert_eq!(newer.header.report_id, 2);
        let ns = newer.metrics.network_stats.unwrap();
        assert_eq!((ns.bytes_in, ns.packets_in), (110, 3));
        let custom = |name: &str| newer.custom_metrics[name][0].clone();
        assert_eq!(custom("count"), CustomMetric::from(8));
        assert_eq!(custom("only_old"), CustomMetric::from(4));
        assert_eq!(custom("seen"), CustomMetric::NumberList(vec![22, 80, 443]));
        assert_eq!(custom("reading"), CustomMetric::from(60));
    }
}
