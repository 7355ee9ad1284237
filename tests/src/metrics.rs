//! Metrics read out of a report document (long names, as every report reaches a test): the
//! standard metrics' port and connection lists, and custom metrics.

use std::collections::BTreeSet;

use serde_json::Value;

/// A standard port list (`listening_tcp_ports`, `listening_udp_ports`) as (port, interface)
/// pairs, with its total.
pub fn reported_ports(report: &Value, list: &str) -> (BTreeSet<(u16, Option<String>)>, u64) {
    let l = &report["metrics"][list];
    let ports = l["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["port"].as_u64().unwrap() as u16,
                p["interface"].as_str().map(str::to_owned),
            )
        })
        .collect();
    (ports, l["total"].as_u64().unwrap())
}

/// The established connections as (remote, local port, interface), sorted, with their total.
pub fn reported_connections(report: &Value) -> (Vec<(String, u16, Option<String>)>, u64) {
    let ec = &report["metrics"]["tcp_connections"]["established_connections"];
    let mut all: Vec<_> = ec["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| {
            (
                c["remote_addr"].as_str().unwrap().to_owned(),
                c["local_port"].as_u64().unwrap() as u16,
                c["local_interface"].as_str().map(str::to_owned),
            )
        })
        .collect();
    all.sort();
    (all, ec["total"].as_u64().unwrap())
}

/// The value custom metric `name` holds under its type `kind` (`number`, `number_list`,
/// `string_list`, `ip_list`); Null when the report does not carry it.
pub fn custom_metric<'a>(report: &'a Value, name: &str, kind: &str) -> &'a Value {
    &report["custom_metrics"][name][0][kind]
}

/// A `number` custom metric as an integer; panics when the report lacks it.
pub fn custom_number(report: &Value, name: &str) -> u64 {
    custom_metric(report, name, "number")
        .as_u64()
        .unwrap_or_else(|| panic!("custom metric {name} missing in {report}"))
}

/// The elements of a list custom metric of type `kind`; panics when the report lacks it.
pub fn custom_list<'a>(report: &'a Value, name: &str, kind: &str) -> &'a [Value] {
    custom_metric(report, name, kind)
        .as_array()
        .unwrap_or_else(|| panic!("custom metric {name} missing in {report}"))
}

/// The names of the custom metrics a report carries, in order.
pub fn custom_names(report: &Value) -> Vec<&str> {
    report["custom_metrics"]
        .as_object()
        .expect("custom metrics")
        .keys()
        .map(String::as_str)
        .collect()
}
