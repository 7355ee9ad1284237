//! The Device Defender document rules, checked on every report a test reads: allowed keys
//! (long or short, never mixed), types, ranges, one-element custom metric arrays, metric
//! name pattern, value rules. Written from the published document format, not from tern.

use std::net::{IpAddr, SocketAddr};

use serde_json::{Map, Value};

/// (long, short) names of the document's fields.
const NAMES: &[(&str, &str)] = &[
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

/// Checks `doc` and returns it with long names, so tests read every encoding alike.
pub fn validate(doc: &Value) -> Result<Value, String> {
    let top = doc.as_object().ok_or("the report is not an object")?;
    let short = top.contains_key("hed");
    let long = to_long(doc, short)?;
    check(&long).map_err(|e| format!("{e} in {doc}"))?;
    Ok(long)
}

fn to_long(value: &Value, short: bool) -> Result<Value, String> {
    Ok(match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, inner) in map {
                let long = if short {
                    NAMES
                        .iter()
                        .find(|(_, s)| s == key)
                        .map(|(l, _)| *l)
                        .ok_or_else(|| format!("unknown short key {key:?}"))?
                } else {
                    NAMES
                        .iter()
                        .find(|(l, _)| l == key)
                        .map(|(l, _)| *l)
                        .ok_or_else(|| format!("unknown key {key:?}"))?
                };
                let inner = if long == "custom_metrics" {
                    inner.clone()
                } else {
                    to_long(inner, short)?
                };
                out.insert(long.to_owned(), inner);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| to_long(i, short))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

fn keys(value: &Value, allowed: &[&str], required: &[&str], at: &str) -> Result<(), String> {
    let map = value.as_object().ok_or(format!("{at} is not an object"))?;
    if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("{at} has an unexpected key {k:?}"));
    }
    if let Some(k) = required.iter().find(|k| !map.contains_key(**k)) {
        return Err(format!("{at} lacks {k:?}"));
    }
    Ok(())
}

fn uint(value: &Value, at: &str) -> Result<u64, String> {
    value
        .as_u64()
        .ok_or(format!("{at} is not a non-negative integer: {value}"))
}

fn port(value: &Value, at: &str) -> Result<u64, String> {
    let p = uint(value, at)?;
    if !(1..=65535).contains(&p) {
        return Err(format!("{at} out of 1..65535: {p}"));
    }
    Ok(p)
}

fn name(value: &Value, at: &str) -> Result<(), String> {
    match value.as_str() {
        Some(s) if !s.is_empty() && s != "0.0.0.0" && s != "::" => Ok(()),
        _ => Err(format!("{at} is not an interface name: {value}")),
    }
}

fn check(doc: &Value) -> Result<(), String> {
    keys(
        doc,
        &["header", "metrics", "custom_metrics"],
        &["header"],
        "report",
    )?;
    let map = doc.as_object().expect("checked");
    if !map.contains_key("metrics") && !map.contains_key("custom_metrics") {
        return Err("neither metrics nor custom_metrics".into());
    }
    let header = &doc["header"];
    keys(
        header,
        &["report_id", "version"],
        &["report_id", "version"],
        "header",
    )?;
    if uint(&header["report_id"], "report_id")? == 0 {
        return Err("report_id is 0".into());
    }
    if header["version"] != "1.0" {
        return Err(format!("version is {}", header["version"]));
    }
    if let Some(metrics) = map.get("metrics") {
        check_metrics(metrics)?;
    }
    if let Some(custom) = map.get("custom_metrics") {
        check_custom(custom)?;
    }
    Ok(())
}

fn check_metrics(metrics: &Value) -> Result<(), String> {
    let allowed = [
        "listening_tcp_ports",
        "listening_udp_ports",
        "network_stats",
        "tcp_connections",
    ];
    keys(metrics, &allowed, &[], "metrics")?;
    for list in ["listening_tcp_ports", "listening_udp_ports"] {
        let Some(ports) = metrics.get(list) else {
            continue;
        };
        keys(ports, &["ports", "total"], &["ports", "total"], list)?;
        let items = ports["ports"].as_array().ok_or(format!("{list}.ports"))?;
        for item in items {
            keys(item, &["port", "interface"], &["port"], "port")?;
            port(&item["port"], "port")?;
            if let Some(i) = item.get("interface") {
                name(i, "interface")?;
            }
        }
        if uint(&ports["total"], "total")? < items.len() as u64 {
            return Err(format!("{list}.total below its list's length"));
        }
    }
    if let Some(ns) = metrics.get("network_stats") {
        let all = ["bytes_in", "bytes_out", "packets_in", "packets_out"];
        keys(ns, &all, &all, "network_stats")?;
        for k in all {
            uint(&ns[k], k)?;
        }
    }
    if let Some(tc) = metrics.get("tcp_connections") {
        keys(
            tc,
            &["established_connections"],
            &["established_connections"],
            "tcp_connections",
        )?;
        let ec = &tc["established_connections"];
        keys(
            ec,
            &["connections", "total"],
            &["connections", "total"],
            "ec",
        )?;
        let items = ec["connections"].as_array().ok_or("connections")?;
        for c in items {
            keys(
                c,
                &["remote_addr", "local_port", "local_interface"],
                &["remote_addr", "local_port"],
                "connection",
            )?;
            let remote = c["remote_addr"].as_str().ok_or("remote_addr")?;
            let parsed: SocketAddr = remote
                .parse()
                .map_err(|_| format!("remote_addr {remote:?} is not ip:port"))?;
            if let SocketAddr::V6(v6) = parsed
                && v6.ip().to_ipv4_mapped().is_some()
            {
                return Err(format!("{remote} is IPv4-mapped; it must be shown as IPv4"));
            }
            port(&c["local_port"], "local_port")?;
            if let Some(i) = c.get("local_interface") {
                name(i, "local_interface")?;
            }
        }
        if uint(&ec["total"], "total")? < items.len() as u64 {
            return Err("established_connections.total below its list's length".into());
        }
    }
    Ok(())
}

fn check_custom(custom: &Value) -> Result<(), String> {
    let map = custom
        .as_object()
        .ok_or("custom_metrics is not an object")?;
    for (metric, value) in map {
        let valid_name = (1..=128).contains(&metric.len())
            && metric
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-'))
            && !metric.starts_with("aws:");
        if !valid_name {
            return Err(format!("custom metric name {metric:?}"));
        }
        let items = value
            .as_array()
            .filter(|a| a.len() == 1)
            .ok_or(format!("{metric} is not a one-element array"))?;
        let inner = items[0]
            .as_object()
            .filter(|o| o.len() == 1)
            .ok_or(format!("{metric}'s element is not an object of one key"))?;
        let (kind, v) = inner.iter().next().expect("one key");
        match kind.as_str() {
            "number" => number(v, metric)?,
            "number_list" => {
                for n in v.as_array().ok_or(format!("{metric} number_list"))? {
                    number(n, metric)?;
                }
            }
            "string_list" => {
                for s in v.as_array().ok_or(format!("{metric} string_list"))? {
                    let s = s.as_str().ok_or(format!("{metric} holds a non-string"))?;
                    if !s.chars().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-' | '/' | '.')
                    }) {
                        return Err(format!("{metric} string {s:?}"));
                    }
                }
            }
            "ip_list" => {
                for ip in v.as_array().ok_or(format!("{metric} ip_list"))? {
                    let ip = ip.as_str().ok_or(format!("{metric} holds a non-string"))?;
                    ip.parse::<IpAddr>()
                        .map_err(|_| format!("{metric} holds {ip:?}, not an IP"))?;
                }
            }
            other => return Err(format!("{metric} has value type {other:?}")),
        }
    }
    Ok(())
}

/// At most 15 significant digits.
fn number(value: &Value, at: &str) -> Result<(), String> {
    let text = match value {
        Value::Number(n) => n.to_string(),
        _ => return Err(format!("{at} holds {value}, not a number")),
    };
    let digits: String = text
        .split(['e', 'E'])
        .next()
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    if digits.trim_start_matches('0').trim_end_matches('0').len() > 15 {
        return Err(format!("{at} = {text} has more than 15 significant digits"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn accepts_a_valid_report_in_both_name_sets() {
        let long = json!({"header": {"report_id": 5, "version": "1.0"},
            "metrics": {"listening_tcp_ports": {"ports": [{"port": 22, "interface": "eth0"}], "total": 1}},
            "custom_metrics": {"a:b_c-1": [{"number": 3}], "ips": [{"ip_list": ["::1", "10.0.0.1"]}]}});
        assert_eq!(validate(&long).unwrap(), long);
        let short = json!({"hed": {"rid": 5, "v": "1.0"},
            "met": {"tp": {"pts": [{"pt": 22, "if": "eth0"}], "t": 1}},
            "cmet": {"a:b_c-1": [{"number": 3}], "ips": [{"ip_list": ["::1", "10.0.0.1"]}]}});
        assert_eq!(validate(&short).unwrap(), long);
    }

    #[test]
    fn refuses_what_breaks_the_rules() {
        let bad = [
            json!({"header": {"report_id": 0, "version": "1.0"}, "metrics": {}}),
            json!({"header": {"report_id": 1, "version": "1.1"}, "metrics": {}}),
            json!({"header": {"report_id": 1, "version": "1.0"}}),
            json!({"hed": {"rid": 1, "v": "1.0"}, "metrics": {}}),
            json!({"header": {"report_id": 1, "version": "1.0"}, "custom_metrics": {"x": {"number": 1}}}),
            json!({"header": {"report_id": 1, "version": "1.0"}, "custom_metrics": {"aws:x": [{"number": 1}]}}),
            json!({"header": {"report_id": 1, "version": "1.0"}, "custom_metrics": {"x y": [{"number": 1}]}}),
            json!({"header": {"report_id": 1, "version": "1.0"}, "custom_metrics": {"x": [{"number": 1234567890123456_u64}]}}),
            json!({"header": {"report_id": 1, "version": "1.0"}, "custom_metrics": {"x": [{"ip_list": ["10.0.0.300"]}]}}),
            json!({"header": {"report_id": 1, "version": "1.0"}, "metrics": {"listening_udp_ports": {"ports": [{"port": 0}], "total": 1}}}),
            json!({"header": {"report_id": 1, "version": "1.0"}, "metrics": {"listening_udp_ports": {"ports": [{"port": 53, "interface": "0.0.0.0"}], "total": 1}}}),
            json!({"header": {"report_id": 1, "version": "1.0"}, "metrics": {"tcp_connections": {"established_connections": {"connections": [{"remote_addr": "[::ffff:10.0.0.1]:80", "local_port": 5}], "total": 1}}}}),
        ];
        for doc in bad {
            assert!(validate(&doc).is_err(), "accepted {doc}");
        }
    }
}
