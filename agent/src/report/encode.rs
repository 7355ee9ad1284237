// Over 400 lines: its tests keep the earlier bisection, the reference the cut is held to.
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

use super::{CustomMetric, Report};

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
mod tests {
    use serde_json::json;

    use super::*;
    use crate::report::{
        Connection, Connections, Metrics, NetworkStats, Port, PortList, TcpConnections,
    };
    use bisection::{capped, encode, sorted};

    fn encode_within(
        report: &Report,
        names: Names,
        format: Format,
        budget: usize,
    ) -> Result<(Vec<u8>, bool)> {
        let encoded = Encoding {
            names,
            format,
            budget,
        }
        .encode(report)?;
        Ok((encoded.bytes, encoded.cut))
    }

    fn with_connections(n: u16) -> Report {
        let connections = (0..n)
            .rev()
            .map(|i| Connection {
                remote_addr: format!("10.0.{}.{}:443", i / 250, i % 250),
                local_port: 40_000 + i,
                local_interface: Some("eth0".into()),
            })
            .collect();
        Report::new(
            7,
            Metrics {
                tcp_connections: Some(TcpConnections {
                    established_connections: Connections {
                        connections,
                        total: u64::from(n),
                    },
                }),
                network_stats: Some(NetworkStats::default()),
                ..Default::default()
            },
        )
    }

    #[test]
    fn short_names_rename_every_field_but_custom_metrics() {
        let mut report = with_connections(1);
        report
            .custom_metrics
            .insert("bytes_in".into(), [CustomMetric::from(1)]);
        let (bytes, cut) = encode_within(&report, Names::Short, Format::Json, 1 << 17).unwrap();
        assert!(!cut);
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            value,
            json!({
                "hed": {"rid": 7, "v": "1.0"},
                "met": {
                    "ns": {"bi": 0, "bo": 0, "pi": 0, "po": 0},
                    "tc": {"ec": {"cs": [{"rad": "10.0.0.0:443", "lp": 40000, "li": "eth0"}], "t": 1}}
                },
                "cmet": {"bytes_in": [{"number": 1}]}
            })
        );
    }

    #[test]
    fn cbor_carries_the_same_document() {
        let report = with_connections(3);
        let (json, _) = encode_within(&report, Names::Long, Format::Json, 1 << 17).unwrap();
        let (cbor, _) = encode_within(&report, Names::Long, Format::Cbor, 1 << 17).unwrap();
        let from_cbor: Value = ciborium::from_reader(cbor.as_slice()).unwrap();
        let from_json: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(from_cbor, from_json);
        assert!(cbor.len() < json.len());
    }

    #[test]
    fn an_oversized_report_is_cut_to_the_budget_with_exact_totals() {
        let report = with_connections(5_000);
        for (names, format) in [
            (Names::Long, Format::Json),
            (Names::Short, Format::Json),
            (Names::Short, Format::Cbor),
        ] {
            let (bytes, cut) = encode_within(&report, names, format, 20_000).unwrap();
            assert!(cut);
            assert!(bytes.len() <= 20_000);
            let value: Value = match format {
                Format::Json => serde_json::from_slice(&bytes).unwrap(),
                Format::Cbor => ciborium::from_reader(bytes.as_slice()).unwrap(),
            };
            let (met, tc, ec, cs, t) = match names {
                Names::Long => (
                    "metrics",
                    "tcp_connections",
                    "established_connections",
                    "connections",
                    "total",
                ),
                Names::Short => ("met", "tc", "ec", "cs", "t"),
            };
            let ec = &value[met][tc][ec];
            assert_eq!(ec[t], 5_000);
            let kept = ec[cs].as_array().unwrap();
            assert!(!kept.is_empty() && kept.len() < 5_000);
            // One more entry would not have fitted: the cut is as small as it can be.
            let more = encode(&capped(&sorted(&report), kept.len() + 1), names, format).unwrap();
            assert!(more.len() > 20_000);
        }
    }

    #[test]
    fn the_cut_is_deterministic_and_keeps_the_lowest_entries() {
        let report = with_connections(2_000);
        let (a, _) = encode_within(&report, Names::Long, Format::Json, 10_000).unwrap();
        let (b, _) = encode_within(&report, Names::Long, Format::Json, 10_000).unwrap();
        assert_eq!(a, b);
        let value: Value = serde_json::from_slice(&a).unwrap();
        let first =
            &value["metrics"]["tcp_connections"]["established_connections"]["connections"][0];
        assert_eq!(first["remote_addr"], "10.0.0.0:443");
    }

    #[test]
    fn a_single_entry_over_budget_is_cut_to_none() {
        let report = with_connections(1);
        let (empty, _) =
            encode_within(&capped(&report, 0), Names::Long, Format::Json, 1 << 17).unwrap();
        let (bytes, cut) = encode_within(&report, Names::Long, Format::Json, empty.len()).unwrap();
        assert!(cut);
        assert_eq!(bytes, empty);
    }

    #[test]
    fn a_budget_too_small_for_any_report_is_an_error() {
        let report = with_connections(10);
        assert!(encode_within(&report, Names::Long, Format::Json, 20).is_err());
    }

    #[test]
    fn the_cut_is_the_one_bisection_finds() {
        let mut outcomes = [0; 3];
        for seed in 0..48 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let counted = same_as_bisection(&generated(&mut rng), &mut rng);
            outcomes = std::array::from_fn(|i| outcomes[i] + counted[i]);
        }
        assert!(outcomes.iter().all(|&n| n > 100), "{outcomes:?}");
    }

    #[test]
    fn the_cut_is_the_one_bisection_finds_across_cbor_array_headers() {
        let mut report = with_connections(300);
        let numbers = (0..70_000).map(|i| i % 20).collect();
        report.set_custom("seen", CustomMetric::NumberList(numbers));
        same_as_bisection(&report, &mut fastrand::Rng::with_seed(1));
    }

    /// Compares the cut with bisection's at budgets around its steps; counts the encodings
    /// that fitted whole, were cut, and could not fit.
    fn same_as_bisection(report: &Report, rng: &mut fastrand::Rng) -> [usize; 3] {
        let mut outcomes = [0; 3];
        let sorted = sorted(report);
        let longest = bisection::longest_list(&sorted);
        for names in [Names::Long, Names::Short] {
            for format in [Format::Json, Format::Cbor] {
                let size = |keep| encode(&capped(&sorted, keep), names, format).unwrap().len();
                let mut keeps = vec![0, longest, rng.usize(0..=longest)];
                keeps.extend([23, 24, 255, 256, 65_535, 65_536].map(|k| k.min(longest)));
                for keep in keeps {
                    let at = size(keep);
                    for budget in [at - 1, at, at + 1, rng.usize(at / 2..=at)] {
                        let expected = bisection::encode_within(report, names, format, budget);
                        let got = encode_within(report, names, format, budget);
                        match (expected, got) {
                            (Ok(expected), Ok(got)) => {
                                assert!(
                                    expected == got,
                                    "{names:?} {format:?} budget {budget}: cut differs"
                                );
                                outcomes[usize::from(got.1)] += 1;
                            }
                            (Err(_), Err(_)) => outcomes[2] += 1,
                            (expected, got) => panic!(
                                "{names:?} {format:?} budget {budget}: {:?} vs {:?}",
                                expected.map(|e| e.1),
                                got.map(|g| g.1)
                            ),
                        }
                    }
                }
            }
        }
        outcomes
    }

    /// A report with lists of varied lengths (across CBOR's 24 and 256), entries of varied
    /// sizes, repeats and escapes, unsorted.
    fn generated(rng: &mut fastrand::Rng) -> Report {
        let len = |rng: &mut fastrand::Rng| match rng.u8(0..4) {
            0 => 0,
            1 => rng.usize(1..30),
            _ => rng.usize(1..320),
        };
        let interface = |rng: &mut fastrand::Rng| {
            (rng.u8(0..3) > 0).then(|| ["eth0", "wlan12", "br-lan\"\u{e9}"][rng.usize(0..3)].into())
        };
        let ports = |rng: &mut fastrand::Rng, n| {
            (rng.bool()).then(|| PortList {
                ports: (0..n)
                    .map(|_| Port {
                        port: rng.u16(..) >> rng.u32(0..16),
                        interface: interface(rng),
                    })
                    .collect(),
                total: rng.u64(..),
            })
        };
        let (tcp, udp) = (len(rng), len(rng));
        let connections = (0..len(rng))
            .map(|_| Connection {
                remote_addr: match rng.u8(0..3) {
                    0 => format!("10.0.{}.{}:{}", rng.u8(..), rng.u8(0..4), rng.u16(..)),
                    1 => format!(
                        "[2001:db8::{:x}]:{}",
                        rng.u64(..) >> rng.u32(0..64),
                        rng.u16(..)
                    ),
                    _ => "192.168.1.1:443".into(),
                },
                local_port: rng.u16(..) >> rng.u32(0..16),
                local_interface: interface(rng),
            })
            .collect();
        let mut report = Report::new(
            rng.u64(..),
            Metrics {
                listening_tcp_ports: ports(rng, tcp),
                listening_udp_ports: ports(rng, udp),
                network_stats: Some(NetworkStats::default()),
                tcp_connections: rng.bool().then(|| TcpConnections {
                    established_connections: Connections {
                        connections,
                        total: rng.u64(..1 << 40),
                    },
                }),
            },
        );
        report.set_custom("count", CustomMetric::from(rng.u64(..)));
        let numbers = (0..len(rng))
            .map(|_| rng.u64(..) >> rng.u32(0..64))
            .collect();
        report.set_custom("ports/seen~", CustomMetric::NumberList(numbers));
        let strings = |rng: &mut fastrand::Rng, n| {
            (0..n)
                .map(|_| "x\"é".repeat(rng.usize(0..4)) + &rng.u32(..).to_string())
                .collect()
        };
        let (names, addresses) = (len(rng), len(rng));
        report.set_custom("names", CustomMetric::StringList(strings(rng, names)));
        report.set_custom("addresses", CustomMetric::IpList(strings(rng, addresses)));
        report
    }

    /// The earlier bisection over trial encodings, the reference the cut is held to.
    mod bisection {
        use super::*;

        pub fn encode_within(
            report: &Report,
            names: Names,
            format: Format,
            budget: usize,
        ) -> Result<(Vec<u8>, bool)> {
            let mut sorted = report.clone();
            each_list(&mut sorted, ListOp::Sort);
            let whole = encode(&sorted, names, format)?;
            if whole.len() <= budget {
                return Ok((whole, false));
            }
            let longest = longest_list(&sorted);
            // Invariant: a cap of `fits` fits (0 is checked below), a cap of `over` does not.
            let (mut fits, mut over) = (0, longest);
            let empty = encode(&capped(&sorted, 0), names, format)?;
            if empty.len() > budget {
                bail!(
                    "a report without any list entry takes {} bytes, over the budget of {budget}",
                    empty.len()
                );
            }
            let mut best = empty;
            // A cap tried becomes `fits` (its bytes the best so far) or `over`.
            let try_cap = |cap, fits: &mut usize, over: &mut usize, best: &mut Vec<u8>| {
                let bytes = encode(&capped(&sorted, cap), names, format)?;
                let fit = bytes.len() <= budget;
                if fit {
                    (*fits, *best) = (cap, bytes);
                } else {
                    *over = cap;
                }
                anyhow::Ok(fit)
            };
            // Entries cost about the same bytes each: a first probe at the proportional guess
            // usually lands next to the answer, and bisection finishes from there.
            if longest > 1 {
                let guess = (budget - best.len()) as u128 * longest as u128
                    / (whole.len() - best.len()).max(1) as u128;
                let guess = usize::try_from(guess)
                    .unwrap_or(longest)
                    .clamp(1, longest - 1);
                if try_cap(guess, &mut fits, &mut over, &mut best)? {
                    // The answer is rarely far above the guess: bracket it closely.
                    let near = (guess + guess / 16 + 1).min(over);
                    if near < over {
                        try_cap(near, &mut fits, &mut over, &mut best)?;
                    }
                }
            }
            while over - fits > 1 {
                let mid = fits + (over - fits) / 2;
                try_cap(mid, &mut fits, &mut over, &mut best)?;
            }
            Ok((best, true))
        }

        pub fn encode(report: &Report, names: Names, format: Format) -> Result<Vec<u8>> {
            let mut value = serde_json::to_value(report).context("serialising a report")?;
            if names == Names::Short {
                shorten(&mut value);
            }
            match format {
                Format::Json => serde_json::to_vec(&value).context("encoding a report as JSON"),
                Format::Cbor => {
                    let mut bytes = Vec::new();
                    ciborium::into_writer(&value, &mut bytes)
                        .context("encoding a report as CBOR")?;
                    Ok(bytes)
                }
            }
        }

        /// What `each_list` does to every list of a report.
        #[derive(Clone, Copy)]
        enum ListOp {
            Sort,
            Truncate(usize),
        }

        /// Applies `op` to every list of `report`: its ports, connections and custom-metric lists.
        fn each_list(report: &mut Report, op: ListOp) {
            fn apply<T: Ord>(list: &mut Vec<T>, op: ListOp) {
                match op {
                    ListOp::Sort => list.sort_unstable(),
                    ListOp::Truncate(cap) => list.truncate(cap),
                }
            }
            let m = &mut report.metrics;
            for ports in [&mut m.listening_tcp_ports, &mut m.listening_udp_ports]
                .into_iter()
                .flatten()
            {
                apply(&mut ports.ports, op);
            }
            if let Some(tcp) = &mut m.tcp_connections {
                apply(&mut tcp.established_connections.connections, op);
            }
            for [metric] in report.custom_metrics.values_mut() {
                match metric {
                    CustomMetric::NumberList(list) => apply(list, op),
                    CustomMetric::StringList(list) | CustomMetric::IpList(list) => apply(list, op),
                    CustomMetric::Number(_) => {}
                }
            }
        }

        fn list_lengths(report: &Report) -> impl Iterator<Item = usize> + '_ {
            let m = &report.metrics;
            let ports = [&m.listening_tcp_ports, &m.listening_udp_ports]
                .into_iter()
                .flatten()
                .map(|p| p.ports.len());
            let connections = m
                .tcp_connections
                .iter()
                .map(|t| t.established_connections.connections.len());
            let custom = report.custom_metrics.values().map(|[metric]| match metric {
                CustomMetric::NumberList(list) => list.len(),
                CustomMetric::StringList(list) | CustomMetric::IpList(list) => list.len(),
                CustomMetric::Number(_) => 0,
            });
            ports.chain(connections).chain(custom)
        }

        pub fn longest_list(report: &Report) -> usize {
            list_lengths(report).max().unwrap_or(0)
        }

        pub fn capped(report: &Report, cap: usize) -> Report {
            let mut out = report.clone();
            each_list(&mut out, ListOp::Truncate(cap));
            out
        }

        pub fn sorted(report: &Report) -> Report {
            let mut report = report.clone();
            each_list(&mut report, ListOp::Sort);
            report
        }
    }
}
