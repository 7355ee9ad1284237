//! The capability ladder: for each group of metrics, the best source this kernel gives
//! (the kernel programs, else netlink and the kernel's own counters; for TCP sockets, the
//! tracepoint, else the sock_ops program, else sock_diag), what a weaker source costs, and
//! what would bring the better one back. Decided once at start from what could be
//! attached; said in one start-up line per degraded source, and in the `collection_sources`
//! metric, so a fleet can find its blind devices.

use log::{info, warn};
use tern_common::names;

use crate::{
    kernel::programs::Attached,
    report::{
        CustomMetric,
        catalog::{self, Metric},
    },
};

/// Where a metric comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The kernel programs' events.
    Programs,
    /// The kernel's own counters (/proc/net/snmp, /proc/stat).
    Counters,
    /// Nowhere: left out of the report.
    Absent,
}

/// What the ladder decided.
pub struct Ladder {
    /// TC programs count the traffic (else the links' 64-bit counters do).
    pub traffic: bool,
    /// The TCP programs follow the TCP sockets (else sock_diag lists them).
    pub tcp: bool,
    /// The program that follows them is the sock_ops program, not the tracepoint: it sees no
    /// close of a socket older than tern.
    pub tcp_hooks: bool,
    /// The cgroup hooks follow the UDP sockets (else sock_diag lists them).
    pub udp: bool,
    /// Where each metric that has more than one source comes from.
    choices: Vec<(Metric, Source)>,
    /// The `collection_sources` value.
    sources: Vec<String>,
}

/// The TCP programs' interval metrics, which only their events give.
const TCP_EVENTS: &[Metric] = &[
    catalog::OPENED,
    catalog::OPENED_INBOUND,
    catalog::OPENED_OUTBOUND,
    catalog::SHORT_LIVED,
    catalog::TCP_PORTS,
    catalog::REMOTES,
    catalog::PORTS_CONTACTED,
    catalog::ADDRESSES_CONTACTED,
];

const BPF_EVENTS: &str = "a kernel with CONFIG_BPF_EVENTS (tracepoint programs), tracefs, and \
                          perf_event_open allowed to tern";

impl Ladder {
    /// The ladder for programs attached as `attached` (None: no eBPF is usable at all);
    /// `tcp_unusable` says why the TCP tracepoint, though attached, cannot be used (the
    /// sock_ops program was then not tried).
    pub fn decide(attached: Option<&Attached>, tcp_unusable: Option<String>) -> Self {
        fn ok<T>(outcome: Option<&Result<T, String>>) -> bool {
            outcome.is_some_and(Result::is_ok)
        }
        fn why<T>(outcome: Option<&Result<T, String>>) -> String {
            match outcome {
                Some(Err(why)) => why.clone(),
                Some(Ok(_)) => "attached".to_owned(),
                None => "no eBPF".to_owned(),
            }
        }
        let traffic = attached.map(|a| &a.traffic);
        let unusable = tcp_unusable.map(Err);
        let tracepoint = unusable.as_ref().or(attached.map(|a| &a.tcp));
        let hooks = attached.and_then(|a| a.tcp_hooks.as_ref());
        let tcp = ok(tracepoint) || ok(hooks);
        let udp = attached.map(|a| &a.udp);
        let mut ladder = Self {
            traffic: ok(traffic),
            tcp,
            tcp_hooks: !ok(tracepoint) && ok(hooks),
            udp: ok(udp),
            choices: Vec::new(),
            sources: Vec::new(),
        };
        // The signals' tracepoints name a socket's namespace as the TCP tracepoint does,
        // from which tern learns its own: where that is not in use, what they count cannot be
        // told apart by namespace.
        let namespaces_unknown: Result<&str, String> = Err(format!(
            "attached, but it names a socket's namespace as the TCP tracepoint does, which is \
             not in use: {}",
            why(tracepoint)
        ));
        let signal = |name| {
            let outcome = attached.and_then(|a| a.signal(name));
            match outcome {
                Some(Ok(_)) if !ok(tracepoint) && name != names::SCHED_PROCESS_EXEC => {
                    Some(&namespaces_unknown)
                }
                _ => outcome,
            }
        };

        ladder.group(ok(traffic), "traffic:tc", "traffic:link_counters", || {
            format!(
                "traffic from the interfaces' own 64-bit counters, not TC programs ({}); \
                     loopback bytes then leave out link-layer headers, and what an interface \
                     counted between the last report and its removal is lost; brought back \
                     by a kernel with CONFIG_NET_CLS_BPF and CONFIG_NET_SCH_INGRESS",
                why(traffic)
            )
        });
        if let Some(Ok(kind)) = tracepoint {
            ladder.sources.push(format!("tcp:{kind}"));
        } else if ok(hooks) {
            ladder.sources.push("tcp:sock_ops".to_owned());
            warn!(
                "degraded: TCP sockets followed by a sock_ops program on the cgroup-v2 root, \
                 not the tracepoint sock:inet_sock_set_state ({}); every TCP metric is kept, \
                 but the program sees no close of a socket older than tern: those are checked \
                 against sock_diag at each report, and with --all-namespaces those of other \
                 namespaces are left out; a connect the kernel refuses before its SYN (no \
                 local port free) is not counted as failed; brought back by {BPF_EVENTS}",
                why(tracepoint)
            );
        } else {
            ladder.sources.push("tcp:sock_diag".to_owned());
            // The sock_ops program is tried only where the tracepoint could not be attached.
            let (hooks_why, hooks_back) = match hooks {
                Some(_) => (
                    format!("; sock_ops program: {}", why(hooks)),
                    ", or for the sock_ops program by Linux 5.15 or later with CONFIG_CGROUP_BPF \
                     and a cgroup v2 hierarchy",
                ),
                None => (String::new(), ""),
            };
            warn!(
                "degraded: TCP sockets listed by sock_diag at each report, not followed by the \
                 tracepoint sock:inet_sock_set_state ({}{hooks_why}); left out: {}; failed \
                 connects from the kernel's counter; brought back by {BPF_EVENTS}{hooks_back}",
                why(tracepoint),
                metric_names(TCP_EVENTS)
            );
        }
        for &metric in TCP_EVENTS {
            ladder.choose(
                metric,
                if tcp {
                    Source::Programs
                } else {
                    Source::Absent
                },
            );
        }
        ladder.group(ok(udp), "udp:cgroup_hooks", "udp:sock_diag", || {
            format!(
                "UDP sockets listed by sock_diag at each report, not followed by the cgroup \
                 hooks ({}); left out: {}; brought back by a kernel with CONFIG_CGROUP_BPF",
                why(udp),
                catalog::UDP_PORTS.name
            )
        });
        ladder.choose(
            catalog::UDP_PORTS,
            if ok(udp) {
                Source::Programs
            } else {
                Source::Absent
            },
        );

        // The signals each tracepoint gives; a counter of the kernel's stands in where
        // there is one.
        let counted = |program: bool| match program {
            true => Source::Programs,
            false => Source::Counters,
        };
        let resets = signal(names::TCP_SEND_RESET);
        let icmp = signal(names::ICMP_SEND);
        let retransmits = signal(names::TCP_RETRANSMIT_SKB);
        let execs = signal(names::SCHED_PROCESS_EXEC);
        ladder.choose(catalog::RESETS, counted(ok(resets)));
        ladder.choose(catalog::FAILED, counted(tcp));
        ladder.choose(catalog::RETRANSMITTED, counted(ok(retransmits)));
        let scans = ok(resets) && ok(icmp);
        ladder.choose(
            catalog::CLOSED_PORTS,
            if scans {
                Source::Programs
            } else {
                Source::Absent
            },
        );
        for metric in [catalog::EXECUTIONS, catalog::NEW_EXECUTABLES] {
            ladder.choose(
                metric,
                if ok(execs) {
                    Source::Programs
                } else {
                    Source::Absent
                },
            );
        }
        for (name, outcome, costs) in [
            (
                "tcp:tcp_send_reset",
                resets,
                "interval_tcp_resets_sent from the kernel's counter (every RST segment); \
                 interval_closed_port_attempts left out",
            ),
            (
                "icmp:icmp_send",
                icmp,
                "interval_closed_port_attempts left out (interval_udp_datagrams_to_closed_ports \
                 still counts the UDP probes)",
            ),
            (
                "tcp:tcp_retransmit_skb",
                retransmits,
                "interval_tcp_retransmits from the kernel's counter",
            ),
            (
                "sched:sched_process_exec",
                execs,
                "interval_execs and interval_new_executables left out",
            ),
        ] {
            let program = name.split_once(':').map_or(name, |(_, p)| p);
            if let Some(Ok(kind)) = outcome {
                ladder.sources.push(format!("{program}:{kind}"));
            } else {
                ladder.sources.push(format!("{program}:none"));
                // Without eBPF at all, the one line above says it for every signal.
                if attached.is_some() {
                    warn!(
                        "degraded: no program counts {name} ({}); {costs}; brought back by \
                         {BPF_EVENTS}",
                        why(outcome)
                    );
                }
            }
        }
        if attached.is_some_and(|a| !a.btf) && ok(tracepoint) {
            ladder.sources.push("namespaces:layout".to_owned());
            warn!(
                "degraded: no BTF; a socket's namespace is found by the layout of struct \
                 sock_common (checked against a namespace of tern's), a packet's not at all: \
                 resets and ICMP errors that no socket sent count for every namespace; \
                 brought back by a kernel with CONFIG_DEBUG_INFO_BTF"
            );
        }
        info!("collection sources: {}", ladder.sources.join(" "));
        ladder
    }

    /// Where `metric` comes from; a metric of one source only is from wherever it is made.
    pub fn source(&self, metric: &Metric) -> Option<Source> {
        self.choices
            .iter()
            .find_map(|(m, source)| (m == metric).then_some(*source))
    }

    /// The `collection_sources` metric.
    pub fn sources_metric(&self) -> (Metric, CustomMetric) {
        (
            catalog::SOURCES,
            CustomMetric::StringList(self.sources.clone()),
        )
    }

    fn choose(&mut self, metric: Metric, source: Source) {
        self.choices.push((metric, source));
    }

    /// A group with a better and a weaker source: names the one used, and says what the
    /// weaker one costs.
    fn group(&mut self, better: bool, name: &str, weaker: &str, costs: impl FnOnce() -> String) {
        if better {
            self.sources.push(name.to_owned());
        } else {
            self.sources.push(weaker.to_owned());
            warn!("degraded: {}", costs());
        }
    }
}

fn metric_names(metrics: &[Metric]) -> String {
    metrics
        .iter()
        .map(|m| m.name)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::programs::Outcome;

    fn attached(tracepoint: Outcome, hooks: Option<Outcome>) -> Attached {
        Attached {
            traffic: Ok(()),
            tcp: tracepoint.map(|()| "tracepoint"),
            tcp_hooks: hooks,
            udp: Ok(()),
            signals: [
                names::TCP_SEND_RESET,
                names::ICMP_SEND,
                names::TCP_RETRANSMIT_SKB,
                names::SCHED_PROCESS_EXEC,
            ]
            .map(|name| (name, Ok("tracepoint")))
            .to_vec(),
            btf: true,
        }
    }

    fn sources(ladder: &Ladder) -> Vec<&str> {
        ladder.sources.iter().map(String::as_str).collect()
    }

    #[test]
    fn tcp_comes_from_the_tracepoint_else_the_sock_ops_program_else_sock_diag() {
        let refused = || Err("refused".to_owned());
        let tracepoint = Ladder::decide(Some(&attached(Ok(()), None)), None);
        assert!(tracepoint.tcp && !tracepoint.tcp_hooks);
        assert!(sources(&tracepoint).contains(&"tcp:tracepoint"));

        let hooks = Ladder::decide(Some(&attached(refused(), Some(Ok(())))), None);
        assert!(hooks.tcp && hooks.tcp_hooks);
        assert!(sources(&hooks).contains(&"tcp:sock_ops"));
        for metric in TCP_EVENTS.iter().chain([&catalog::FAILED]) {
            assert_eq!(
                hooks.source(metric),
                Some(Source::Programs),
                "{}",
                metric.name
            );
        }

        let neither = Ladder::decide(Some(&attached(refused(), Some(refused()))), None);
        assert!(!neither.tcp && !neither.tcp_hooks);
        assert!(sources(&neither).contains(&"tcp:sock_diag"));
        assert_eq!(neither.source(&catalog::OPENED), Some(Source::Absent));
        assert_eq!(neither.source(&catalog::FAILED), Some(Source::Counters));

        // A tracepoint attached but of no use is not made up for.
        let unusable = Ladder::decide(Some(&attached(Ok(()), None)), Some("layout".to_owned()));
        assert!(!unusable.tcp && sources(&unusable).contains(&"tcp:sock_diag"));
    }

    #[test]
    fn signals_named_by_the_tcp_tracepoint_need_it() {
        let hooks = Ladder::decide(
            Some(&attached(Err("refused".to_owned()), Some(Ok(())))),
            None,
        );
        for metric in [catalog::RESETS, catalog::RETRANSMITTED] {
            assert_eq!(
                hooks.source(&metric),
                Some(Source::Counters),
                "{}",
                metric.name
            );
        }
        assert_eq!(hooks.source(&catalog::CLOSED_PORTS), Some(Source::Absent));
        // Executions belong to no namespace.
        assert_eq!(hooks.source(&catalog::EXECUTIONS), Some(Source::Programs));
        let tracepoint = Ladder::decide(Some(&attached(Ok(()), None)), None);
        assert_eq!(tracepoint.source(&catalog::RESETS), Some(Source::Programs));
    }
}
