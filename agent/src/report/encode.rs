// Over 400 lines: the document is written from the report beside the rule that sizes its
// entries, so what is sized and what is written cannot drift apart.
//! Encoding: a report as bytes in long or short field names, JSON or CBOR, never larger
//! than a byte budget.
//!
//! Budget rule: every list is sorted (ports by number then interface, connections by remote
//! address then local port, custom lists by value); when the encoded report is over budget,
//! all lists are cut to the same largest length N that fits, keeping their first N entries.
//! `total` fields and custom numbers are never changed. N comes from sizes, not from trial
//! encodings: a document with its lists cut to N is the document with empty lists plus, for
//! each list, its first N entries as each encodes alone and the list's framing (JSON's
//! commas, CBOR's array header). The document is written straight from the report, keys
//! in the order a JSON value sorts them: only entries up to the first that does not fit are
//! sized, and only those kept are written.

use std::io;

use anyhow::{Context, Result, bail};
use serde::{
    Serialize, Serializer,
    ser::{SerializeMap, SerializeSeq},
};

use super::{
    Connection, Connections, CustomMetric, Kind, Metrics, NetworkStats, Number, Port, PortList,
    Report, TcpConnections,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Names {
    Long,
    Short,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Cbor,
}

/// The document's short name for each long field name. Custom metric names and the keys of
/// their values have no short form.
const SHORT: &[(&str, &str)] = &[
    ("header", "hed"),
    ("report_id", "rid"),
    ("version", "v"),
    ("metrics", "met"),
    ("custom_metrics", "cmet"),
    ("listening_tcp_ports", "tp"),
    ("listening_udp_ports", "up"),
    ("ports", "pts"),
    ("port", "pt"),
    ("interface", "if"),
    ("total", "t"),
    ("network_stats", "ns"),
    ("bytes_in", "bi"),
    ("bytes_out", "bo"),
    ("packets_in", "pi"),
    ("packets_out", "po"),
    ("tcp_connections", "tc"),
    ("established_connections", "ec"),
    ("connections", "cs"),
    ("remote_addr", "rad"),
    ("local_port", "lp"),
    ("local_interface", "li"),
];

/// How reports are encoded: field names, format, and the largest document in bytes.
#[derive(Clone, Copy, Debug)]
pub struct Encoding {
    pub names: Names,
    pub format: Format,
    pub budget: usize,
}

/// The fewest bytes one connection takes in a report, whatever its names and format: in
/// short CBOR, `{"rad": "[::]:0", "lp": 0}` is a map header (1), the key "rad" (4), the
/// address (7), the key "lp" (3) and the port (1).
const CONNECTION_BYTES_LEAST: usize = 16;

pub struct Encoded {
    pub bytes: Vec<u8>,
    /// Whether the report's lists were cut to fit the budget.
    pub cut: bool,
}

impl Encoding {
    /// The most connections a report within the budget can list: a collector need keep no
    /// more. Each connection takes at least what the smallest one does (the shortest address
    /// and port, no interface) in these names and this format.
    pub fn most_connections(&self) -> usize {
        let with = |n: usize| {
            let connections = vec![
                Connection {
                    remote_addr: "[::]:0".into(),
                    local_port: 0,
                    local_interface: None,
                };
                n
            ];
            let report = Report::new(
                1,
                Metrics {
                    tcp_connections: Some(TcpConnections {
                        established_connections: Connections {
                            total: n as u64,
                            connections,
                        },
                    }),
                    ..Metrics::default()
                },
            );
            let whole = Self {
                budget: usize::MAX,
                ..*self
            };
            whole.encode(&report).map(|e| e.bytes.len())
        };
        let least = match (with(1), with(0)) {
            (Ok(one), Ok(none)) if one > none => one - none,
            _ => CONNECTION_BYTES_LEAST,
        };
        self.budget / least
    }

    /// Encodes `report` within the budget, cutting its lists by the module's rule if needed.
    pub fn encode(&self, report: &Report) -> Result<Encoded> {
        let doc = Doc::new(report, self.names);
        let empty = self.size(&doc.cut(0))?;
        if empty > self.budget {
            bail!(
                "a report without any list entry takes {empty} bytes, over the budget of {}",
                self.budget
            );
        }
        // Every list grows from empty, one entry at a time, while it fits; only the entries
        // up to the first that does not fit are ever sized.
        let longest = doc.lists.iter().map(Entries::len).max().unwrap_or(0);
        let (mut size, mut keep) = (empty, 0);
        while keep < longest {
            let mut grown = size;
            for entries in doc.lists.iter().filter(|entries| entries.len() > keep) {
                grown += self.size(&doc.entry(entries, keep))? + self.format.framing(keep + 1)
                    - self.format.framing(keep);
            }
            if grown > self.budget {
                break;
            }
            (size, keep) = (grown, keep + 1);
        }
        let mut bytes = Vec::with_capacity(size);
        self.write(&doc.cut(keep), &mut bytes)?;
        Ok(Encoded {
            bytes,
            cut: keep < longest,
        })
    }

    /// The size of the largest report that has every list cut to nothing, carrying the
    /// custom metrics `custom` (by name and type): every number as wide as it can encode. A
    /// budget under it cannot hold every report such a configuration builds.
    pub fn floor<'a>(&self, custom: impl IntoIterator<Item = (&'a str, Kind)>) -> Result<usize> {
        // The widest number either way: 24 characters of JSON (a 17-digit mantissa with its
        // sign and a 3-digit exponent), 9 bytes of CBOR, as wide as any whole number.
        let number = || Number::Reading(-f64::MIN_POSITIVE);
        let ports = || {
            Some(PortList {
                ports: Vec::new(),
                total: u64::MAX,
            })
        };
        let mut report = Report::new(
            u64::MAX,
            Metrics {
                listening_tcp_ports: ports(),
                listening_udp_ports: ports(),
                network_stats: Some(NetworkStats {
                    bytes_in: u64::MAX,
                    bytes_out: u64::MAX,
                    packets_in: u64::MAX,
                    packets_out: u64::MAX,
                }),
                tcp_connections: Some(TcpConnections {
                    established_connections: Connections {
                        connections: Vec::new(),
                        total: u64::MAX,
                    },
                }),
            },
        );
        for (name, kind) in custom {
            let value = match kind {
                Kind::Number => CustomMetric::Number(number()),
                Kind::NumberList => CustomMetric::NumberList(Vec::new()),
                Kind::StringList => CustomMetric::StringList(Vec::new()),
                Kind::IpList => CustomMetric::IpList(Vec::new()),
            };
            report.set_custom(name, value);
        }
        self.size(&Doc::new(&report, self.names).cut(0))
    }

    /// The encoded size of `value`, written nowhere.
    fn size(&self, value: &impl Serialize) -> Result<usize> {
        let mut count = Count(0);
        self.write(value, &mut count)?;
        Ok(count.0)
    }

    fn write(&self, value: &impl Serialize, out: impl io::Write) -> Result<()> {
        match self.format {
            Format::Json => serde_json::to_writer(out, value).context("encoding a report as JSON"),
            Format::Cbor => ciborium::into_writer(value, out).context("encoding a report as CBOR"),
        }
    }
}

impl Format {
    /// The bytes a list of `n` entries takes beyond its entries that vary with `n`: JSON's
    /// commas (its brackets are always there), CBOR's array header.
    fn framing(self, n: usize) -> usize {
        match self {
            Format::Json => n.saturating_sub(1),
            Format::Cbor => match n {
                0..24 => 1,
                24..=0xff => 2,
                0x100..=0xffff => 3,
                0x1_0000..=0xffff_ffff => 5,
                _ => 9,
            },
        }
    }
}

/// Counts the bytes written to it.
struct Count(usize);

impl io::Write for Count {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn short(long: &str) -> Option<&'static str> {
    SHORT
        .iter()
        .find(|(l, _)| *l == long)
        .map(|(_, short)| *short)
}

/// The report's document, built from the report without copying it: what a JSON value of
/// the report would hold, its objects' keys sorted as a JSON value sorts them, and each list
/// sorted by the module's rule.
struct Doc<'a> {
    root: Node<'a>,
    lists: Vec<Entries<'a>>,
    keys: Keys,
}

/// A part of the document other than a list's entries.
enum Node<'a> {
    Count(u64),
    /// Written as a JSON value holds a float: null when it is not finite.
    Reading(f64),
    Text(&'a str),
    /// An object, its keys sorted.
    Object(Vec<(&'a str, Node<'a>)>),
    /// A one-element array: a custom metric's value.
    One(Box<Node<'a>>),
    /// The document's list `lists[i]`.
    List(usize),
}

/// A list's entries, sorted.
enum Entries<'a> {
    Ports(Vec<&'a Port>),
    Connections(Vec<&'a Connection>),
    Numbers(Vec<u64>),
    Texts(Vec<&'a str>),
}

/// The field names of list entries, in the document's names.
struct Keys {
    port: &'static str,
    interface: &'static str,
    remote_addr: &'static str,
    local_port: &'static str,
    local_interface: &'static str,
}

impl Entries<'_> {
    fn len(&self) -> usize {
        match self {
            Entries::Ports(l) => l.len(),
            Entries::Connections(l) => l.len(),
            Entries::Numbers(l) => l.len(),
            Entries::Texts(l) => l.len(),
        }
    }
}

fn sorted<T: Ord>(mut entries: Vec<T>) -> Vec<T> {
    entries.sort_unstable();
    entries
}

impl<'a> Doc<'a> {
    fn new(report: &'a Report, names: Names) -> Self {
        let key = |long: &'static str| match names {
            Names::Long => long,
            Names::Short => short(long).unwrap_or(long),
        };
        let object = |mut fields: Vec<(&'a str, Node<'a>)>| {
            fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
            Node::Object(fields)
        };
        let mut lists = Vec::new();
        let mut list = |entries: Entries<'a>| {
            lists.push(entries);
            Node::List(lists.len() - 1)
        };
        let m = &report.metrics;
        let mut metrics = Vec::new();
        for (field, ports) in [
            ("listening_tcp_ports", &m.listening_tcp_ports),
            ("listening_udp_ports", &m.listening_udp_ports),
        ] {
            if let Some(ports) = ports {
                let entries = Entries::Ports(sorted(ports.ports.iter().collect()));
                let fields = vec![
                    (key("ports"), list(entries)),
                    (key("total"), Node::Count(ports.total)),
                ];
                metrics.push((key(field), object(fields)));
            }
        }
        if let Some(stats) = &m.network_stats {
            let fields = [
                ("bytes_in", stats.bytes_in),
                ("bytes_out", stats.bytes_out),
                ("packets_in", stats.packets_in),
                ("packets_out", stats.packets_out),
            ];
            let fields = fields.map(|(field, n)| (key(field), Node::Count(n)));
            metrics.push((key("network_stats"), object(fields.into())));
        }
        if let Some(tcp) = &m.tcp_connections {
            let established = &tcp.established_connections;
            let entries = Entries::Connections(sorted(established.connections.iter().collect()));
            let fields = vec![
                (key("connections"), list(entries)),
                (key("total"), Node::Count(established.total)),
            ];
            let fields = vec![(key("established_connections"), object(fields))];
            metrics.push((key("tcp_connections"), object(fields)));
        }
        let mut custom = Vec::new();
        for (name, [metric]) in &report.custom_metrics {
            let (kind, value) = match metric {
                CustomMetric::Number(Number::Count(n)) => ("number", Node::Count(*n)),
                CustomMetric::Number(Number::Reading(r)) => ("number", Node::Reading(*r)),
                CustomMetric::NumberList(l) => {
                    ("number_list", list(Entries::Numbers(sorted(l.clone()))))
                }
                CustomMetric::StringList(l) => (
                    "string_list",
                    list(Entries::Texts(sorted(
                        l.iter().map(String::as_str).collect(),
                    ))),
                ),
                CustomMetric::IpList(l) => (
                    "ip_list",
                    list(Entries::Texts(sorted(
                        l.iter().map(String::as_str).collect(),
                    ))),
                ),
            };
            custom.push((
                name.as_str(),
                Node::One(Box::new(object(vec![(kind, value)]))),
            ));
        }
        let header = vec![
            (key("report_id"), Node::Count(report.header.report_id)),
            (key("version"), Node::Text(&report.header.version)),
        ];
        let mut root = vec![(key("header"), object(header))];
        if !metrics.is_empty() {
            root.push((key("metrics"), object(metrics)));
        }
        if !custom.is_empty() {
            root.push((key("custom_metrics"), object(custom)));
        }
        Doc {
            root: object(root),
            lists,
            keys: Keys {
                port: key("port"),
                interface: key("interface"),
                remote_addr: key("remote_addr"),
                local_port: key("local_port"),
                local_interface: key("local_interface"),
            },
        }
    }

    /// The document with every list cut to its first `keep` entries.
    fn cut(&self, keep: usize) -> Part<'_, 'a> {
        Part {
            doc: self,
            node: &self.root,
            keep,
        }
    }

    /// Entry `i` of `entries`, alone.
    fn entry<'d>(&'d self, entries: &'d Entries<'a>, i: usize) -> Entry<'d, 'a> {
        Entry {
            keys: &self.keys,
            entries,
            i,
        }
    }
}

/// A node of a document whose lists are cut to `keep` entries.
struct Part<'d, 'a> {
    doc: &'d Doc<'a>,
    node: &'d Node<'a>,
    keep: usize,
}

impl Serialize for Part<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let part = |node| Part { node, ..*self };
        match self.node {
            Node::Count(n) => serializer.serialize_u64(*n),
            Node::Reading(r) if r.is_finite() => serializer.serialize_f64(*r),
            Node::Reading(_) => serializer.serialize_unit(),
            Node::Text(text) => serializer.serialize_str(text),
            Node::Object(fields) => {
                let mut map = serializer.serialize_map(Some(fields.len()))?;
                for (key, node) in fields {
                    map.serialize_entry(key, &part(node))?;
                }
                map.end()
            }
            Node::One(node) => {
                let mut seq = serializer.serialize_seq(Some(1))?;
                seq.serialize_element(&part(node))?;
                seq.end()
            }
            Node::List(i) => {
                let entries = &self.doc.lists[*i];
                let kept = entries.len().min(self.keep);
                let mut seq = serializer.serialize_seq(Some(kept))?;
                for i in 0..kept {
                    seq.serialize_element(&self.doc.entry(entries, i))?;
                }
                seq.end()
            }
        }
    }
}

/// One entry of a list, as the document writes it.
struct Entry<'d, 'a> {
    keys: &'d Keys,
    entries: &'d Entries<'a>,
    i: usize,
}

impl Serialize for Entry<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let k = self.keys;
        // Fields in sorted key order, which is the same in long and short names.
        match self.entries {
            Entries::Numbers(l) => serializer.serialize_u64(l[self.i]),
            Entries::Texts(l) => serializer.serialize_str(l[self.i]),
            Entries::Ports(l) => {
                let port = l[self.i];
                let len = 1 + usize::from(port.interface.is_some());
                let mut map = serializer.serialize_map(Some(len))?;
                if let Some(interface) = &port.interface {
                    map.serialize_entry(k.interface, interface)?;
                }
                map.serialize_entry(k.port, &u64::from(port.port))?;
                map.end()
            }
            Entries::Connections(l) => {
                let c = l[self.i];
                let len = 2 + usize::from(c.local_interface.is_some());
                let mut map = serializer.serialize_map(Some(len))?;
                if let Some(interface) = &c.local_interface {
                    map.serialize_entry(k.local_interface, interface)?;
                }
                map.serialize_entry(k.local_port, &u64::from(c.local_port))?;
                map.serialize_entry(k.remote_addr, &c.remote_addr)?;
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests;
