// Over 400 lines: the two encoders this one replaced live here whole, as the references
// every encoding is held to, beside the generators that compare them.
//! The encoding held to the encoders it replaced, which stay here as references: the
//! bisection over trial encodings (the cut), and the encoder that built the whole report as
//! a JSON value (the bytes).

use serde_json::{Value, json};

use super::*;
use crate::report::{
    Connection, Connections, Kind, Metrics, NetworkStats, Number, Port, PortList, TcpConnections,
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
    let first = &value["metrics"]["tcp_connections"]["established_connections"]["connections"][0];
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
fn a_budget_at_the_floor_holds_every_report_of_its_custom_metrics() {
    for seed in 0..48 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut report = generated(&mut rng);
        report.set_custom(
            "reading",
            CustomMetric::Number(Number::Reading(rng.f64() * -1e-300)),
        );
        let custom: Vec<(&str, Kind)> = report
            .custom_metrics
            .iter()
            .map(|(name, [value])| (name.as_str(), value.kind()))
            .collect();
        for names in [Names::Long, Names::Short] {
            for format in [Format::Json, Format::Cbor] {
                let encoding = Encoding {
                    names,
                    format,
                    budget: 0,
                };
                let floor = encoding.floor(custom.iter().copied()).unwrap();
                let within = encode_within(&report, names, format, floor);
                assert!(
                    within.is_ok(),
                    "seed {seed} {names:?} {format:?}: {within:?}"
                );
            }
        }
    }
}

#[test]
fn the_floor_is_the_widest_report_cut_to_nothing() {
    let ports = || {
        Some(PortList {
            ports: vec![Port {
                port: 22,
                interface: None,
            }],
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
            tcp_connections: with_connections(3).metrics.tcp_connections,
        },
    );
    if let Some(tcp) = &mut report.metrics.tcp_connections {
        tcp.established_connections.total = u64::MAX;
    }
    let widest = Number::Reading(-f64::MIN_POSITIVE);
    report.set_custom("widest", CustomMetric::Number(widest));
    report.set_custom("list", CustomMetric::IpList(vec!["10.0.0.1".into()]));
    let custom = [("widest", Kind::Number), ("list", Kind::IpList)];
    for names in [Names::Long, Names::Short] {
        for format in [Format::Json, Format::Cbor] {
            let encoding = Encoding {
                names,
                format,
                budget: 0,
            };
            let floor = encoding.floor(custom).unwrap();
            let (bytes, cut) = encode_within(&report, names, format, floor).unwrap();
            assert!(cut, "{names:?} {format:?}");
            assert_eq!(bytes.len(), floor, "{names:?} {format:?}");
            assert!(encode_within(&report, names, format, floor - 1).is_err());
        }
    }
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

#[test]
fn every_encoding_is_the_value_trees_byte_for_byte() {
    let mut outcomes = [0; 3];
    for seed in 0..64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut report = generated_up_to(&mut rng, [2, 30, 320, 3_000][seed as usize % 4]);
        let reading = [f64::NAN, f64::INFINITY, -0.0, 5.0, rng.f64() * 1e300][rng.usize(0..5)];
        report.set_custom(
            "a/b~\"\u{e9}",
            CustomMetric::Number(Number::Reading(reading)),
        );
        if seed % 8 == 7 {
            report.metrics = Metrics::default();
        }
        let custom: Vec<(&str, Kind)> = report
            .custom_metrics
            .iter()
            .map(|(name, [value])| (name.as_str(), value.kind()))
            .collect();
        for names in [Names::Long, Names::Short] {
            for format in [Format::Json, Format::Cbor] {
                let size = |report: &Report| {
                    let whole = value_tree::encode_within(report, names, format, usize::MAX);
                    whole.unwrap().0.len()
                };
                let (whole, empty) = (size(&report), size(&capped(&report, 0)));
                let encoding = Encoding {
                    names,
                    format,
                    budget: 0,
                };
                let floor = encoding.floor(custom.iter().copied()).unwrap();
                let budgets = [
                    usize::MAX,
                    whole,
                    whole - 1,
                    rng.usize(empty..=whole),
                    rng.usize(empty..=whole),
                    empty,
                    empty - 1,
                    floor,
                ];
                for budget in budgets {
                    let expected = value_tree::encode_within(&report, names, format, budget);
                    let got = encode_within(&report, names, format, budget);
                    let context = format!("seed {seed} {names:?} {format:?} budget {budget}");
                    match (expected, got) {
                        (Ok(expected), Ok(got)) => {
                            assert!(expected == got, "{context}: bytes differ");
                            outcomes[usize::from(got.1)] += 1;
                        }
                        (Err(expected), Err(got)) => {
                            assert_eq!(format!("{expected:#}"), format!("{got:#}"), "{context}");
                            outcomes[2] += 1;
                        }
                        (expected, got) => panic!(
                            "{context}: {:?} vs {:?}",
                            expected.map(|e| e.1),
                            got.map(|g| g.1)
                        ),
                    }
                }
            }
        }
    }
    assert!(outcomes.iter().all(|&n| n > 200), "{outcomes:?}");
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
    generated_up_to(rng, 320)
}

/// A generated report whose lists are shorter than `longest`.
fn generated_up_to(rng: &mut fastrand::Rng, longest: usize) -> Report {
    let len = |rng: &mut fastrand::Rng| match rng.u8(0..4) {
        0 => 0,
        1 => rng.usize(1..30.min(longest)),
        _ => rng.usize(1..longest),
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
            value_tree::shorten(&mut value);
        }
        match format {
            Format::Json => serde_json::to_vec(&value).context("encoding a report as JSON"),
            Format::Cbor => {
                let mut bytes = Vec::new();
                ciborium::into_writer(&value, &mut bytes).context("encoding a report as CBOR")?;
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

/// The encoder this one replaced, which built the whole report as a JSON value: the
/// reference every encoding is held to byte for byte.
mod value_tree {
    use std::mem;

    use serde_json::Map;

    use super::*;

    pub fn encode_within(
        report: &Report,
        names: Names,
        format: Format,
        budget: usize,
    ) -> Result<(Vec<u8>, bool)> {
        let encoding = Encoding {
            names,
            format,
            budget,
        };
        let mut doc = serde_json::to_value(report).context("serialising a report")?;
        if names == Names::Short {
            shorten(&mut doc);
        }
        let lists = lists(report, names);
        for list in &lists {
            if let (Some(order), Some(items)) = (&list.order, array(&mut doc, &list.pointer)) {
                let mut unsorted = mem::take(items);
                *items = order.iter().map(|&i| mem::take(&mut unsorted[i])).collect();
            }
        }
        let whole = bytes(&encoding, &doc)?;
        if whole.len() <= budget {
            return Ok((whole, false));
        }
        let mut entries: Vec<Vec<Value>> = lists
            .iter()
            .map(|list| {
                array(&mut doc, &list.pointer)
                    .map(mem::take)
                    .unwrap_or_default()
            })
            .collect();
        let mut size = encoding.size(&doc)?;
        if size > budget {
            bail!(
                "a report without any list entry takes {size} bytes, over the budget of {budget}"
            );
        }
        let longest = entries.iter().map(Vec::len).max().unwrap_or(0);
        let mut keep = 0;
        while keep < longest {
            let mut grown = size;
            for items in entries.iter().filter(|items| items.len() > keep) {
                grown +=
                    encoding.size(&items[keep])? + format.framing(keep + 1) - format.framing(keep);
            }
            if grown > budget {
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
        Ok((bytes(&encoding, &doc)?, true))
    }

    fn bytes(encoding: &Encoding, doc: &Value) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        encoding.write(doc, &mut bytes)?;
        Ok(bytes)
    }

    /// Renames long keys to short ones everywhere but inside `custom_metrics`.
    pub fn shorten(value: &mut Value) {
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

    /// A list of a report: where it sits in the report's document, as a JSON pointer, and
    /// the order that sorts its entries (none when they are sorted already).
    struct List {
        pointer: String,
        order: Option<Vec<usize>>,
    }

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
}

/// The smallest connection: the shortest address and port, no interface.
fn least_connections(n: usize) -> Report {
    let mut report = with_connections(0);
    let list = &mut report.metrics.tcp_connections.as_mut().unwrap();
    list.established_connections = Connections {
        connections: vec![
            Connection {
                remote_addr: "[::]:0".into(),
                local_port: 0,
                local_interface: None,
            };
            n
        ],
        total: n as u64,
    };
    report
}

#[test]
fn no_report_lists_more_connections_than_collectors_keep() {
    let grown = |names, format| {
        let size = |n| encode_within(&least_connections(n), names, format, 1 << 20).unwrap();
        size(1).0.len() - size(0).0.len()
    };
    // The smallest entry of all, the bound where none can be measured.
    assert_eq!(grown(Names::Short, Format::Cbor), CONNECTION_BYTES_LEAST);
    for names in [Names::Long, Names::Short] {
        for format in [Format::Json, Format::Cbor] {
            for budget in [1024, 4096, 131_072] {
                let encoding = Encoding {
                    names,
                    format,
                    budget,
                };
                let most = encoding.most_connections();
                assert_eq!(most, budget / grown(names, format), "{names:?} {format:?}");
                let (bytes, cut) =
                    encode_within(&least_connections(most + 50), names, format, budget).unwrap();
                let listed = match format {
                    Format::Json => serde_json::from_slice::<Value>(&bytes).unwrap(),
                    Format::Cbor => ciborium::from_reader::<Value, _>(&bytes[..]).unwrap(),
                };
                let pointer = match names {
                    Names::Long => "/metrics/tcp_connections/established_connections/connections",
                    Names::Short => "/met/tc/ec/cs",
                };
                let n = listed
                    .pointer(pointer)
                    .and_then(Value::as_array)
                    .unwrap()
                    .len();
                assert!(
                    cut && n <= most,
                    "{names:?} {format:?} {budget}: {n} > {most}"
                );
            }
        }
    }
}
