//! The capability ladder: for each group of metrics, the best source this kernel gives
//! (the kernel programs, else netlink and the kernel's own counters), what a weaker source
//! costs, and what would bring the better one back. Decided once at start from what could be
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
    /// The TCP tracepoint follows the TCP sockets (else sock_diag lists them).
    pub tcp: bool,
    /// The cgroup hooks follow the UDP sockets (else sock_diag lists them).
    pub udp: bool,
    /// Where each metric that has more than one source comes from.
    choices: Vec<(Metric, Source)>,
    /// The `collection_sources` value.
    sources: Vec<String>,
}

/// The TCP tracepoint's interval metrics, which only its events give.
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
    /// `tcp_unusable` says why the TCP tracepoint, though attached, cannot be used.
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
        let tcp = unusable.as_ref().or(attached.map(|a| &a.tcp));
        let udp = attached.map(|a| &a.udp);
        let signal = |name| attached.and_then(|a| a.signal(name));
        let mut ladder = Self {
            traffic: ok(traffic),
            tcp: ok(tcp),
            udp: ok(udp),
            choices: Vec::new(),
            sources: Vec::new(),
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
        ladder.group(ok(tcp), "tcp:tracepoint", "tcp:sock_diag", || {
            format!(
                "TCP sockets listed by sock_diag at each report, not followed by the tracepoint \
                 sock:inet_sock_set_state ({}); left out: {}; failed connects from the kernel's \
                 counter; brought back by {BPF_EVENTS}",
                why(tcp),
                metric_names(TCP_EVENTS)
            )
        });
        for &metric in TCP_EVENTS {
            ladder.choose(
                metric,
                if ok(tcp) {
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
        ladder.choose(catalog::FAILED, counted(ok(tcp)));
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
        if attached.is_some_and(|a| !a.btf && a.tcp.is_ok()) {
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
