//! tern's custom metrics against the guest's ground truth: the kernel's own counters
//! (/proc/net/snmp, /proc/stat), ss, the connections and executions the scenario made, and
//! the features the guest's files show. A metric may be absent only where tern's log says
//! why; on a kernel whose files show a feature, the source using it must be in use.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{
    EXECS, OTHERS, PROBES,
    truth::{Sections, snmp_delta, ss_established, ss_listening},
};

/// The peer, the one remote address of every connection and contact the scenario makes.
const PEER: &str = "10.0.0.2";
/// Remote ports of the connections tern's namespace opens (`init.sh`): the one held open,
/// the short-lived one, and the closed port it probes.
const CONTACTED_PORTS: [u64; 3] = [9090, 9091, 7000];
/// Paths the scenario runs while tern counts: its burst, and ss, first run then.
const RUN_PATHS: [&str; 2] = ["/usr/sbin/ip", "/usr/bin/ss"];

/// The values of one custom metric over the reports; None when no report has it.
struct Values<'a> {
    values: Vec<&'a Value>,
}

impl<'a> Values<'a> {
    fn of(reports: &'a [Value], name: &'static str) -> Option<Self> {
        let values: Vec<&Value> = reports
            .iter()
            .filter_map(|r| r["custom_metrics"][name].get(0))
            .collect();
        (!values.is_empty()).then_some(Self { values })
    }

    fn sum(&self) -> i64 {
        self.values
            .iter()
            .filter_map(|v| v["number"].as_i64())
            .sum()
    }

    /// The union of a list metric's values, each shown as text.
    fn union(&self, kind: &str) -> BTreeSet<String> {
        self.values
            .iter()
            .filter_map(|v| v[kind].as_array())
            .flatten()
            .map(|item| match item {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect()
    }
}

pub(super) fn compare(s: &Sections, reports: &[Value]) -> Vec<String> {
    let mut differs = Vec::new();
    let mut unexplained = Vec::new();
    let stderr = s.get("tern-stderr");
    // An absent metric is a difference unless a degraded line of tern's names it.
    let mut present = |name: &'static str| -> Option<Values> {
        let values = Values::of(reports, name);
        if values.is_none()
            && !stderr
                .lines()
                .any(|l| l.contains("degraded:") && l.contains(name))
        {
            unexplained.push(format!("{name} absent, and no degraded line says why"));
        }
        values
    };
    let mut checks: Vec<(&str, i64, i64)> = Vec::new();
    let failed = snmp_delta(s, "Tcp", "AttemptFails");
    let inbound = snmp_delta(s, "Tcp", "PassiveOpens");
    let outbound = snmp_delta(s, "Tcp", "ActiveOpens") - failed;
    let still_open = ss_established(s.get("ss-established")).len() as i64;
    let counted = [
        ("interval_tcp_failed_connects", failed),
        (
            "interval_tcp_retransmits",
            snmp_delta(s, "Tcp", "RetransSegs"),
        ),
        (
            "interval_udp_datagrams_to_closed_ports",
            snmp_delta(s, "Udp", "NoPorts"),
        ),
        ("interval_tcp_connections_opened_inbound", inbound),
        ("interval_tcp_connections_opened_outbound", outbound),
        ("interval_tcp_connections_opened", inbound + outbound),
        // Every connection of the scenario that closed lived well under an interval.
        (
            "interval_tcp_connections_short_lived",
            inbound + outbound - still_open,
        ),
        ("interval_details_dropped", 0),
    ];
    for (name, truth) in counted {
        if let Some(values) = present(name) {
            checks.push((name, values.sum(), truth));
        }
    }
    for (name, tern, truth) in checks {
        if tern != truth {
            differs.push(format!("{name} {tern} vs {truth} from the kernel"));
        }
    }
    // The scenario's own counts, so that the checks above compare something.
    for (what, got, expected) in [
        ("failed connects", failed, OTHERS as i64),
        (
            "datagrams to closed ports",
            snmp_delta(s, "Udp", "NoPorts"),
            PROBES as i64,
        ),
        (
            "short-lived connections",
            inbound + outbound - still_open,
            1,
        ),
    ] {
        if got != expected {
            differs.push(format!(
                "scenario: the kernel counted {got} {what}, not {expected}"
            ));
        }
    }

    // Ports that listened at any moment: at the start and the end of the traffic, and the
    // ports the UDP helper was bound to while it sent (it prints them).
    let start = ss_listening(s.get("ss-listening-start"));
    let end = ss_listening(s.get("ss-listening"));
    let listening = |proto: &str| -> BTreeSet<String> {
        [start.get(proto), end.get(proto)]
            .into_iter()
            .flatten()
            .flatten()
            .map(u64::to_string)
            .collect()
    };
    let mut udp = listening("udp");
    udp.extend(s.get("udp-bound").lines().map(|l| l.trim().to_owned()));
    let established = ss_established(s.get("ss-established"));
    let mut remotes: BTreeSet<String> = established
        .iter()
        .filter_map(|(_, remote)| Some(remote.rsplit_once(':')?.0.to_owned()))
        .collect();
    remotes.insert(PEER.to_owned());
    let sets = [
        (
            "interval_listening_tcp_ports",
            "number_list",
            listening("tcp"),
        ),
        ("interval_listening_udp_ports", "number_list", udp),
        ("interval_remote_addresses", "ip_list", remotes),
        (
            "interval_remote_ports_contacted",
            "number_list",
            CONTACTED_PORTS.iter().map(u64::to_string).collect(),
        ),
        (
            "interval_remote_addresses_contacted",
            "ip_list",
            BTreeSet::from([PEER.to_owned()]),
        ),
    ];
    for (name, kind, truth) in sets {
        if let Some(values) = present(name) {
            let tern = values.union(kind);
            if tern != truth {
                differs.push(format!("{name} {tern:?} vs {truth:?}"));
            }
        }
    }

    // Executions and processes: the kernel keeps no count of executions, and the guest's
    // shell forks around tern's intervals, so the scenario's burst is the floor and
    // /proc/stat over tern's whole run the ceiling.
    let created = stat_delta(s);
    if let Some(values) = present("interval_execs")
        && values.sum() < EXECS as i64
    {
        differs.push(format!(
            "interval_execs {} below the {EXECS} executions of the burst",
            values.sum()
        ));
    }
    if let Some(values) = present("interval_processes_created")
        && !(EXECS as i64..=created).contains(&values.sum())
    {
        differs.push(format!(
            "interval_processes_created {} outside {EXECS}..={created} (the burst, \
             /proc/stat over the run)",
            values.sum()
        ));
    }
    if let Some(values) = present("interval_new_executables") {
        let files: BTreeSet<&str> = s.get("files").lines().collect();
        let tern = values.union("string_list");
        for path in &tern {
            if !files.contains(path.as_str()) {
                differs.push(format!(
                    "interval_new_executables names {path}, no file of the guest"
                ));
            }
        }
        for path in RUN_PATHS {
            if !tern.contains(path) {
                differs.push(format!("interval_new_executables lacks {path}"));
            }
        }
    }
    differs.extend(unexplained);
    differs.extend(sources(s, reports));
    differs
}

/// The processes /proc/stat counted over tern's first run.
fn stat_delta(s: &Sections) -> i64 {
    let processes = |name: &str| -> i64 {
        s.get(name)
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    processes("stat-after") - processes("stat-before")
}

/// `collection_sources` against the features the guest's files show: each feature there
/// must be in use, and every source short of the best must have its degraded line.
fn sources(s: &Sections, reports: &[Value]) -> Vec<String> {
    let mut differs = Vec::new();
    let Some(last) = reports.last() else {
        return differs;
    };
    let used: BTreeSet<&str> = last["custom_metrics"]["collection_sources"][0]["string_list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if used.is_empty() {
        differs.push("collection_sources absent".into());
        return differs;
    }
    let features: BTreeSet<&str> = s.get("features").lines().collect();
    let expected = [
        ("cls_bpf", "traffic:tc"),
        ("cgroup2", "udp:cgroup_hooks"),
        ("tcp/tcp_retransmit_skb", "tcp_retransmit_skb:tracepoint"),
        ("sched/sched_process_exec", "sched_process_exec:tracepoint"),
    ];
    // The TCP state tracepoint is followed raw where the BTF describes struct sock.
    let tcp = match features.contains("btf") {
        true => "tcp:raw_tracepoint",
        false => "tcp:tracepoint",
    };
    for (feature, source) in expected
        .into_iter()
        .chain([("sock/inet_sock_set_state", tcp)])
    {
        if features.contains(feature) && !used.contains(source) {
            differs.push(format!(
                "{feature} is there but {source} not in use: {used:?}"
            ));
        }
    }
    // The port-scan signals may come from a tracepoint or a kprobe, never from nothing.
    for signal in ["tcp_send_reset", "icmp_send"] {
        if used.contains(format!("{signal}:none").as_str()) {
            differs.push(format!("no program counts {signal}"));
        }
    }
    if features.contains("btf") && used.contains("namespaces:layout") {
        differs.push("the kernel has BTF, yet tern guessed struct layouts".into());
    }
    let degraded = s
        .get("tern-stderr")
        .lines()
        .filter(|l| l.contains("degraded:"))
        .count();
    let short = used
        .iter()
        .filter(|u| {
            u.ends_with(":none")
                || u.ends_with(":sock_diag")
                || u.ends_with(":link_counters")
                || u.ends_with(":sock_ops")
                || **u == "namespaces:layout"
        })
        .count();
    // Without eBPF at all one line stands for every source.
    if (short == 0) != (degraded == 0) {
        differs.push(format!(
            "{short} sources short of the best ({used:?}) but {degraded} degraded lines"
        ));
    }
    differs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(custom: Value) -> Value {
        serde_json::json!({ "custom_metrics": custom })
    }

    #[test]
    fn a_metric_absent_without_a_degraded_line_differs_and_with_one_does_not() {
        let reports = [report(serde_json::json!({
            "collection_sources": [{"string_list": ["tcp:tracepoint"]}],
        }))];
        let silent = Sections::parse("@@ tern-stderr\n[INFO ] started\n");
        let said = Sections::parse(
            "@@ tern-stderr\n[WARN ] degraded: no program counts sched:sched_process_exec; \
             interval_execs and interval_new_executables left out\n",
        );
        let absent = |s: &Sections| -> Vec<String> {
            compare(s, &reports)
                .into_iter()
                .filter(|d| d.starts_with("interval_execs absent"))
                .collect()
        };
        assert_eq!(absent(&silent).len(), 1, "{:?}", compare(&silent, &reports));
        assert!(absent(&said).is_empty());
    }

    #[test]
    fn a_feature_the_guest_has_must_be_in_use() {
        let reports = [report(serde_json::json!({
            "collection_sources": [{"string_list": ["tcp:sock_diag", "traffic:tc"]}],
        }))];
        let s = Sections::parse(
            "@@ features\nsock/inet_sock_set_state\n@@ tern-stderr\n[WARN ] degraded: x\n",
        );
        let differs = sources(&s, &reports);
        assert!(
            differs
                .iter()
                .any(|d| d.contains("tcp:tracepoint not in use")),
            "{differs:?}"
        );
    }
}
