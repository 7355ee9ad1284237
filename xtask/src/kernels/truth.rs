// Over 400 lines: every comparison of the guest's sections with tern's reports reads the
// same parsed sections; custom metrics have their own file (custom.rs).
//! The guest's ground truth (ss, ip -s link, /proc/net/snmp, tc) against tern's reports,
//! and the TC state tern leaves behind on kernels where it attaches netlink filters.

use std::collections::{BTreeSet, HashMap};

use anyhow::{Context, Result};
use serde_json::Value;
use tern_common::names;

use super::{CONNECTIONS, COUNT, DATAGRAMS, OTHERS, PROBES, SYNS, custom};

/// The interfaces whose TC state the guest records: tern adds a clsact qdisc to all but
/// `other0`, which had one before tern, with another program's filter.
const TERNS_OWN: [&str; 3] = ["veth0", "other1", "late0"];
const OTHER: &str = "other0";
/// What `tc filter show` names tern's filters by (its programs' names).
const TERN_FILTERS: [&str; 2] = [names::TC_INGRESS, names::TC_EGRESS];

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

    pub(super) fn get(&self, name: &str) -> &str {
        self.sections.get(name).map_or("", String::as_str)
    }

    /// The section whose name starts with `prefix`: the rest of its name, and its body.
    fn find(&self, prefix: &str) -> Option<(&str, &str)> {
        self.sections
            .iter()
            .find_map(|(k, v)| Some((k.strip_prefix(prefix)?, v.as_str())))
    }

    /// Whether the guest's init ran: its first section names the kernel.
    pub(super) fn started(&self) -> bool {
        self.find("kernel ").is_some()
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
    // Datagrams to the peer: to its open port, and the probes of its closed one.
    let sent = snmp_delta(s, "Udp", "OutDatagrams");
    if sent != (DATAGRAMS + OTHERS) as i64 {
        differs.push(format!(
            "scenario sent {sent} datagrams, not {}",
            DATAGRAMS + OTHERS
        ));
    }
    differs.extend(port_scan(s, &reports));
    differs.extend(custom::compare(s, &reports));
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
    differs.extend(tc_left(s));
    if differs.is_empty() {
        "exact".into()
    } else {
        format!("differs: {}", differs.join("; "))
    }
}

/// The port-scan signals summed over the reports against what the peer sent, with the
/// kernel's own counters of what tern's namespace answered as the check that it happened.
fn port_scan(s: &Sections, reports: &[Value]) -> Vec<String> {
    let mut differs = Vec::new();
    let answered = [
        ("Tcp", "OutRsts", SYNS, "resets"),
        ("Icmp", "OutDestUnreachs", PROBES, "port unreachables"),
    ];
    for (proto, name, expected, what) in answered {
        let sent = snmp_delta(s, proto, name);
        if sent != expected as i64 {
            differs.push(format!(
                "scenario: the kernel sent {sent} {what}, not {expected}"
            ));
        }
    }
    let total = |name: &str| -> u64 {
        reports
            .iter()
            .filter_map(|r| r["custom_metrics"][name][0]["number"].as_u64())
            .sum()
    };
    // Without BTF a packet's namespace is unknown, and tern counts (as it says at start)
    // the resets and port unreachables that answer no socket in every namespace: here the
    // peer's answers to this side's scan as well.
    let everywhere = if s.get("features").lines().any(|l| l == "btf") {
        0
    } else {
        OTHERS
    };
    for (name, expected) in [
        ("interval_tcp_resets_sent", SYNS + everywhere),
        (
            "interval_closed_port_attempts",
            SYNS + PROBES + 2 * everywhere,
        ),
    ] {
        let tern = total(name);
        if tern != expected {
            differs.push(format!("{name} {tern} vs {expected} sent"));
        }
    }
    differs
}

/// What the guest measured in its memory mode.
pub(super) struct MemoryFacts {
    pub(super) idle_kib: u64,
    pub(super) idle_peak_kib: u64,
    pub(super) connected_kib: u64,
    pub(super) established: u64,
    pub(super) reported: u64,
}

pub(super) fn memory(s: &Sections) -> Result<MemoryFacts> {
    let field = |section: &str, name: &str| -> Option<u64> {
        s.get(section).lines().find_map(|l| {
            let (n, kib) = l.split_once(' ')?;
            (n == name).then(|| kib.trim().parse().ok())?
        })
    };
    let last: Value = serde_json::from_str(s.get("reports").trim()).unwrap_or_default();
    let facts = (|| {
        Some(MemoryFacts {
            idle_kib: field("rss-idle", "VmRSS")?,
            idle_peak_kib: field("rss-idle", "VmHWM")?,
            connected_kib: field("rss-connections", "VmRSS")?,
            established: s.get("established").trim().parse().ok()?,
            reported: last["metrics"]["tcp_connections"]["established_connections"]["total"]
                .as_u64()?,
        })
    })();
    facts.with_context(|| {
        format!(
            "the guest measured no memory; tern said: {}",
            s.get("tern-stderr")
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("nothing")
        )
    })
}

/// What tern left on the interfaces after each run (its exit after --count, SIGTERM, and
/// kill -9 of the main process), and the proof that it had attached there while it ran.
fn tc_left(s: &Sections) -> Vec<String> {
    let mut differs = Vec::new();
    let tcx = s
        .find("kernel ")
        .and_then(|(release, _)| kernel_version(release))
        .is_some_and(|version| version >= (6, 6));
    differs.extend(tc_running(s.get("tc-running"), tcx));
    differs.extend(
        tc_after(s.get("tc-after-count"))
            .into_iter()
            .map(|d| format!("after --count: {d}")),
    );
    match s.find("sigterm-run ") {
        Some((run, state)) => {
            let words: Vec<&str> = run.split_whitespace().collect();
            if words.first().is_none_or(|n| *n == "0") || words.last() != Some(&"0") {
                differs.push(format!("the SIGTERM run: {run}"));
            }
            differs.extend(
                tc_after(state)
                    .into_iter()
                    .map(|d| format!("after SIGTERM: {d}")),
            );
        }
        None => differs.push("no SIGTERM run".into()),
    }
    match s.find("kill-run ") {
        Some((run, state)) => {
            let words: Vec<&str> = run.split_whitespace().collect();
            if words.first().is_none_or(|n| *n == "0") || words.get(2) != Some(&"0") {
                differs.push(format!("the kill -9 run: {run}"));
            }
            differs.extend(
                tc_after(state)
                    .into_iter()
                    .map(|d| format!("after kill -9: {d}")),
            );
        }
        None => differs.push("no kill -9 run".into()),
    }
    match s.find("resume-run ") {
        Some((run, _)) if run.starts_with("adopted, exit 0") => {}
        Some((run, _)) => differs.push(format!("the run after kill -9: {run}")),
        None => differs.push("no run after kill -9".into()),
    }
    differs
}

/// Lines of the guest's `tc_state` for one interface and one question (qdisc, ingress,
/// egress).
fn tc_lines<'a>(state: &'a str, dev: &str, kind: &str) -> Vec<&'a str> {
    state
        .lines()
        .filter_map(|line| {
            let (d, rest) = line.split_once(' ')?;
            let (k, rest) = rest.split_once(' ')?;
            (d == dev && k == kind).then_some(rest)
        })
        .collect()
}

fn has_clsact(state: &str, dev: &str) -> bool {
    tc_lines(state, dev, "qdisc")
        .iter()
        .any(|l| l.starts_with("qdisc clsact"))
}

fn names_filter(lines: &[&str], name: &str) -> bool {
    lines
        .iter()
        .any(|l| l.split_whitespace().any(|w| w == name))
}

/// While tern ran: netlink filters on a clsact qdisc before 6.6, TCX links (no qdisc of
/// tern's) from 6.6 on. Without this the checks of what is left could not fail.
fn tc_running(state: &str, tcx: bool) -> Vec<String> {
    let mut differs = Vec::new();
    for dev in TERNS_OWN.iter().chain([&OTHER]) {
        let attached = has_clsact(state, dev)
            && names_filter(&tc_lines(state, dev, "ingress"), TERN_FILTERS[0])
            && names_filter(&tc_lines(state, dev, "egress"), TERN_FILTERS[1]);
        if tcx && *dev != OTHER && has_clsact(state, dev) {
            differs.push(format!("{dev} had a clsact qdisc while tern ran on TCX"));
        }
        if !tcx && !attached {
            differs.push(format!("{dev} had no filter of tern's while it ran"));
        }
    }
    differs
}

/// After tern: none of its filters anywhere, none of the qdiscs it added, and `other0` as
/// it was before tern (its clsact qdisc, and the one filter on its ingress).
fn tc_after(state: &str) -> Vec<String> {
    let mut differs = Vec::new();
    for dev in TERNS_OWN {
        if has_clsact(state, dev) {
            differs.push(format!("{dev} keeps the clsact qdisc tern added"));
        }
    }
    for dev in TERNS_OWN.iter().chain([&OTHER]) {
        for hook in ["ingress", "egress"] {
            let lines = tc_lines(state, dev, hook);
            if TERN_FILTERS.iter().any(|name| names_filter(&lines, name)) {
                differs.push(format!("a filter of tern's is left on {dev} {hook}"));
            }
        }
    }
    if !has_clsact(state, OTHER) {
        differs.push(format!("{OTHER} lost the clsact qdisc it had before tern"));
    }
    let theirs = tc_lines(state, OTHER, "ingress");
    if !theirs.iter().any(|l| l.contains("bytecode")) {
        differs.push(format!("{OTHER} lost the filter it had before tern"));
    }
    differs
}

/// (major, minor) of a release such as "6.1.0-50-amd64 x86_64".
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', ' ']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// How much a counter of /proc/net/snmp grew over tern's first run.
pub(super) fn snmp_delta(s: &Sections, proto: &str, name: &str) -> i64 {
    snmp(s.get("snmp-after"), proto, name) - snmp(s.get("snmp-before"), proto, name)
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
pub(super) fn ss_listening(text: &str) -> HashMap<&str, BTreeSet<u64>> {
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
pub(super) fn ss_established(text: &str) -> BTreeSet<(u64, String)> {
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
