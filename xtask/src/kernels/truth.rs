//! The guest's ground truth (ss, ip -s link, /proc/net/snmp) against tern's reports.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use super::{CONNECTIONS, COUNT, DATAGRAMS};

/// The guest's result channel, split at its `@@ NAME` lines.
pub(super) struct Sections {
    sections: HashMap<String, String>,
}

impl Sections {
    pub(super) fn parse(text: &str) -> Self {
        let mut sections = HashMap::new();
        let mut name = String::new();
        for line in text.lines() {
            if let Some(next) = line.strip_prefix("@@ ") {
                name = next.to_owned();
                sections.insert(name.clone(), String::new());
            } else if let Some(body) = sections.get_mut(&name) {
                body.push_str(line);
                body.push('\n');
            }
        }
        Self { sections }
    }

    fn get(&self, name: &str) -> &str {
        self.sections.get(name).map_or("", String::as_str)
    }

    /// tern's exit status, from the `exit N` section's name.
    fn exit(&self) -> Option<&str> {
        self.sections.keys().find_map(|k| k.strip_prefix("exit "))
    }

    fn has(&self, name: &str) -> bool {
        self.sections.contains_key(name)
    }
}

/// The row's result: exact, differs (with what), or refused (with tern's error line).
pub(super) fn compare(s: &Sections) -> String {
    if !s.has("end") {
        return "incomplete: the guest stopped before its end (see console.log)".into();
    }
    let reports: Vec<Value> = s
        .get("reports")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if reports.is_empty() {
        let error = s
            .get("tern-stderr")
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        // tern names what it lacks and exits with 1; anything else is no refusal.
        return match s.exit() {
            Some("1") => format!("refused: {error}"),
            exit => format!("no reports, exit {}: {error}", exit.unwrap_or("unknown")),
        };
    }
    let mut differs = Vec::new();
    if reports.len() as u64 != COUNT {
        differs.push(format!("{} reports of {COUNT}", reports.len()));
    }
    let sent = snmp(s.get("snmp-after"), "Udp", "OutDatagrams")
        - snmp(s.get("snmp-before"), "Udp", "OutDatagrams");
    if sent != DATAGRAMS as i64 {
        differs.push(format!("scenario sent {sent} datagrams, not {DATAGRAMS}"));
    }
    let last = &reports[reports.len() - 1]["metrics"];
    let listening = ss_listening(s.get("ss-listening"));
    for (proto, key) in [
        ("tcp", "listening_tcp_ports"),
        ("udp", "listening_udp_ports"),
    ] {
        let tern: BTreeSet<u64> = last[key]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["port"].as_u64())
            .collect();
        let truth = listening.get(proto).cloned().unwrap_or_default();
        if tern != truth {
            differs.push(format!("{key} {tern:?} vs ss {truth:?}"));
        }
    }
    let tern: BTreeSet<(u64, String)> =
        last["tcp_connections"]["established_connections"]["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                Some((
                    c["local_port"].as_u64()?,
                    c["remote_addr"].as_str()?.to_owned(),
                ))
            })
            .collect();
    let truth = ss_established(s.get("ss-established"));
    if truth.len() != CONNECTIONS {
        differs.push(format!(
            "scenario: ss shows {} established connections, not {CONNECTIONS}",
            truth.len()
        ));
    }
    if tern != truth {
        differs.push(format!("established {tern:?} vs ss {truth:?}"));
    }
    let before = link_stats(s.get("link-before"));
    let after = link_stats(s.get("link-after"));
    for (key, truth_key) in [
        ("bytes_in", ("rx", "bytes")),
        ("bytes_out", ("tx", "bytes")),
        ("packets_in", ("rx", "packets")),
        ("packets_out", ("tx", "packets")),
    ] {
        let tern: u64 = reports
            .iter()
            .filter_map(|r| r["metrics"]["network_stats"][key].as_u64())
            .sum();
        let truth = after
            .get(&truth_key)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(&truth_key).copied().unwrap_or(0));
        if tern != truth {
            differs.push(format!("{key} {tern} vs ip {truth}"));
        }
    }
    if differs.is_empty() {
        "exact".into()
    } else {
        format!("differs: {}", differs.join("; "))
    }
}

/// A counter of /proc/net/snmp: a header line and a value line per protocol.
fn snmp(text: &str, proto: &str, name: &str) -> i64 {
    let prefix = format!("{proto}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Ports of `ss -H -tlnu` by protocol.
fn ss_listening(text: &str) -> HashMap<&str, BTreeSet<u64>> {
    let mut ports: HashMap<&str, BTreeSet<u64>> = HashMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let (Some(proto), Some(local)) = (fields.first(), fields.get(4))
            && let Some(port) = local.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
        {
            ports.entry(proto).or_default().insert(port);
        }
    }
    ports
}

/// (local port, remote address) of `ss -H -tn state established`.
fn ss_established(text: &str) -> BTreeSet<(u64, String)> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(2)?;
            let remote = fields.get(3)?;
            let port = local.rsplit_once(':')?.1.parse().ok()?;
            // A dual-stack listener's IPv4 peers, which tern reports as IPv4.
            let remote = match remote.strip_prefix("[::ffff:") {
                Some(mapped) => mapped.replacen("]:", ":", 1),
                None => (*remote).to_owned(),
            };
            Some((port, remote))
        })
        .collect()
}

/// rx/tx bytes/packets of `ip -j -s link show dev veth0`.
fn link_stats(text: &str) -> HashMap<(&'static str, &'static str), u64> {
    let mut stats = HashMap::new();
    let Ok(json) = serde_json::from_str::<Value>(text) else {
        return stats;
    };
    for dir in ["rx", "tx"] {
        for counter in ["bytes", "packets"] {
            if let Some(v) = json[0]["stats64"][dir][counter].as_u64() {
                stats.insert((dir, counter), v);
            }
        }
    }
    stats
}
