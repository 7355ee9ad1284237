//! Encoding: a report as bytes in long or short field names, JSON or CBOR, never larger
//! than a byte budget.
//!
//! Budget rule: every list is sorted (ports by number then interface, connections by remote
//! address then local port, custom lists by value); when the encoded report is over budget,
//! all lists are cut to the same largest length N that fits (found by bisection), keeping
//! their first N entries. `total` fields and custom numbers are never changed.

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

/// Encodes `report` within `budget` bytes, cutting its lists by the module's rule if needed.
/// Returns the bytes and whether anything was cut.
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
    // Entries cost about the same bytes each: a first probe at the proportional guess
    // usually lands next to the answer, and bisection finishes from there.
    if longest > 1 {
        let guess = (budget - best.len()) as u128 * longest as u128
            / (whole.len() - best.len()).max(1) as u128;
        let guess = usize::try_from(guess)
            .unwrap_or(longest)
            .clamp(1, longest - 1);
        let bytes = encode(&capped(&sorted, guess), names, format)?;
        if bytes.len() <= budget {
            fits = guess;
            best = bytes;
            // The answer is rarely far above the guess: bracket it closely.
            let near = (guess + guess / 16 + 1).min(over);
            if near < over {
                let bytes = encode(&capped(&sorted, near), names, format)?;
                if bytes.len() <= budget {
                    fits = near;
                    best = bytes;
                } else {
                    over = near;
                }
            }
        } else {
            over = guess;
        }
    }
    while over - fits > 1 {
        let mid = fits + (over - fits) / 2;
        let bytes = encode(&capped(&sorted, mid), names, format)?;
        if bytes.len() <= budget {
            fits = mid;
            best = bytes;
        } else {
            over = mid;
        }
    }
    Ok((best, true))
}

fn encode(report: &Report, names: Names, format: Format) -> Result<Vec<u8>> {
    let mut value = serde_json::to_value(report).context("serialising a report")?;
    if names == Names::Short {
        shorten(&mut value);
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

/// Renames long keys to short ones everywhere but inside `custom_metrics`.
fn shorten(value: &mut Value) {
    let Value::Object(map) = value else {
        if let Value::Array(items) = value {
            items.iter_mut().for_each(shorten);
        }
        return;
    };
    let old = std::mem::take(map);
    let mut new = Map::with_capacity(old.len());
    for (key, mut inner) in old {
        if key != "custom_metrics" {
            shorten(&mut inner);
        }
        let short = SHORT
            .iter()
            .find(|(long, _)| *long == key)
            .map_or(key, |(_, short)| (*short).to_owned());
        new.insert(short, inner);
    }
    *map = new;
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

fn longest_list(report: &Report) -> usize {
    list_lengths(report).max().unwrap_or(0)
}

fn capped(report: &Report, cap: usize) -> Report {
    let mut out = report.clone();
    each_list(&mut out, ListOp::Truncate(cap));
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::report::{Connection, Connections, Metrics, NetworkStats, TcpConnections};

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

    fn sorted(report: &Report) -> Report {
        let mut report = report.clone();
        each_list(&mut report, ListOp::Sort);
        report
    }
}
