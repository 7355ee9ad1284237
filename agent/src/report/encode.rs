//! Encoding: a report as bytes in long or short field names, JSON or CBOR, never larger
//! than a byte budget.
//!
//! Budget rule: every list is sorted (ports by number then interface, connections by remote
//! address then local port, custom lists by value); when the encoded report is over budget,
//! all lists are cut to the same largest length N that fits, keeping their first N entries.
//! `total` fields and custom numbers are never changed. N comes from sizes, not from trial
//! encodings: a document with its lists cut to N is the document with empty lists plus, for
//! each list, its first N entries as each encodes alone and the list's framing (JSON's
//! commas, CBOR's array header).

use std::{io, mem};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

use super::{
    Connections, CustomMetric, Kind, Metrics, NetworkStats, Number, PortList, Report,
    TcpConnections,
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

pub struct Encoded {
    pub bytes: Vec<u8>,
    /// Whether the report's lists were cut to fit the budget.
    pub cut: bool,
}

impl Encoding {
    /// Encodes `report` within the budget, cutting its lists by the module's rule if needed.
    pub fn encode(&self, report: &Report) -> Result<Encoded> {
        let mut doc = serde_json::to_value(report).context("serialising a report")?;
        if self.names == Names::Short {
            shorten(&mut doc);
        }
        let lists = lists(report, self.names);
        for list in &lists {
            if let (Some(order), Some(items)) = (&list.order, array(&mut doc, &list.pointer)) {
                let mut unsorted = mem::take(items);
                *items = order.iter().map(|&i| mem::take(&mut unsorted[i])).collect();
            }
        }
        let whole = self.bytes(&doc)?;
        if whole.len() <= self.budget {
            return Ok(Encoded {
                bytes: whole,
                cut: false,
            });
        }
        // Over budget: every list grows from empty, one entry at a time, while it fits.
        let mut entries: Vec<Vec<Value>> = lists
            .iter()
            .map(|list| {
                array(&mut doc, &list.pointer)
                    .map(mem::take)
                    .unwrap_or_default()
            })
            .collect();
        let mut size = self.size(&doc)?;
        if size > self.budget {
            bail!(
                "a report without any list entry takes {size} bytes, over the budget of {}",
                self.budget
            );
        }
        let longest = entries.iter().map(Vec::len).max().unwrap_or(0);
        let mut keep = 0;
        while keep < longest {
            let mut grown = size;
            for items in entries.iter().filter(|items| items.len() > keep) {
                grown += self.size(&items[keep])? + self.format.framing(keep + 1)
                    - self.format.framing(keep);
            }
            if grown > self.budget {
                break;
            }
            (size, keep) = (grown, keep + 1);
        }
        for (list, items) in lists.iter().zip(&mut entries) {
            if let Some(cut) = array(&mut doc, &list.pointer) {
                items.truncate(keep);
                *cut = mem::take(items);
            }
        }
        let bytes = self.bytes(&doc)?;
        Ok(Encoded { bytes, cut: true })
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
        let mut doc = serde_json::to_value(&report).context("serialising a report")?;
        if self.names == Names::Short {
            shorten(&mut doc);
        }
        self.size(&doc)
    }

    fn bytes(&self, doc: &Value) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.write(doc, &mut bytes)?;
        Ok(bytes)
    }

    /// The encoded size of `value`, written nowhere.
    fn size(&self, value: &Value) -> Result<usize> {
        let mut count = Count(0);
        self.write(value, &mut count)?;
        Ok(count.0)
    }

    fn write(&self, value: &Value, out: impl io::Write) -> Result<()> {
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

/// Renames long keys to short ones everywhere but inside `custom_metrics`.
fn shorten(value: &mut Value) {
    let Value::Object(map) = value else {
        if let Value::Array(items) = value {
            items.iter_mut().for_each(shorten);
        }
        return;
    };
    let old = mem::take(map);
    let mut new = Map::with_capacity(old.len());
    for (key, mut inner) in old {
        if key != "custom_metrics" {
            shorten(&mut inner);
        }
        let key = short(&key).map_or(key, str::to_owned);
        new.insert(key, inner);
    }
    *map = new;
}

fn short(long: &str) -> Option<&'static str> {
    SHORT
        .iter()
        .find(|(l, _)| *l == long)
        .map(|(_, short)| *short)
}

/// A list of a report: where it sits in the report's document, as a JSON pointer, and the
/// order that sorts its entries (none when they are sorted already).
struct List {
    pointer: String,
    order: Option<Vec<usize>>,
}

/// The lists of `report`: its ports, connections and custom-metric lists.
fn lists(report: &Report, names: Names) -> Vec<List> {
    fn list<T: Ord>(pointer: String, entries: &[T]) -> List {
        let order = (!entries.is_sorted()).then(|| {
            let mut order: Vec<usize> = (0..entries.len()).collect();
            order.sort_unstable_by(|&a, &b| entries[a].cmp(&entries[b]));
            order
        });
        List { pointer, order }
    }
    let key = |long: &'static str| match names {
        Names::Long => long,
        Names::Short => short(long).unwrap_or(long),
    };
    let metrics = key("metrics");
    let m = &report.metrics;
    let mut out = Vec::new();
    for (field, ports) in [
        ("listening_tcp_ports", &m.listening_tcp_ports),
        ("listening_udp_ports", &m.listening_udp_ports),
    ] {
        if let Some(ports) = ports {
            let pointer = format!("/{metrics}/{}/{}", key(field), key("ports"));
            out.push(list(pointer, &ports.ports));
        }
    }
    if let Some(tcp) = &m.tcp_connections {
        let pointer = format!(
            "/{metrics}/{}/{}/{}",
            key("tcp_connections"),
            key("established_connections"),
            key("connections")
        );
        out.push(list(pointer, &tcp.established_connections.connections));
    }
    let custom = key("custom_metrics");
    for (name, [metric]) in &report.custom_metrics {
        // A custom metric's name is the user's: escaped as a JSON pointer escapes.
        let name = name.replace('~', "~0").replace('/', "~1");
        let pointer = |kind: &str| format!("/{custom}/{name}/0/{kind}");
        out.push(match metric {
            CustomMetric::NumberList(l) => list(pointer("number_list"), l),
            CustomMetric::StringList(l) => list(pointer("string_list"), l),
            CustomMetric::IpList(l) => list(pointer("ip_list"), l),
            CustomMetric::Number(_) => continue,
        });
    }
    out
}

fn array<'a>(doc: &'a mut Value, pointer: &str) -> Option<&'a mut Vec<Value>> {
    doc.pointer_mut(pointer).and_then(Value::as_array_mut)
}

#[cfg(test)]
mod tests;
