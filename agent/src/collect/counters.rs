//! Security signals without eBPF: the counts the kernel keeps itself, as growth over the
//! interval. TCP resets sent, failed connection attempts and retransmitted segments, and
//! datagrams to closed UDP ports, of tern's namespace; processes created, on the whole host.

use anyhow::Result;

use super::delta::delta;
use crate::{
    host::snmp::{self, KernelCounters},
    report::{
        CustomMetric,
        catalog::{self, Metric},
    },
};

/// The kernel's counters at the previous report.
///
/// The counts are the kernel's, not the kernel programs': `interval_tcp_resets_sent` counts
/// every segment sent with RST, `interval_tcp_failed_connects` counts failed handshakes of
/// inbound connections as well as outbound ones, and `interval_processes_created` counts
/// threads too, on the whole host. The TCP and UDP counts are those of tern's namespace only,
/// even when tern reports the sockets of every namespace.
pub struct CounterSignals {
    last: KernelCounters,
}

impl CounterSignals {
    /// Takes the first reading, so the first report covers its own interval only.
    pub fn start() -> Result<Self> {
        Ok(Self {
            last: snmp::read()?,
        })
    }

    /// The reading the next delta is taken from.
    pub fn reading(&mut self) -> &mut KernelCounters {
        &mut self.last
    }

    /// The signals since the previous call. A failed read changes nothing, so the next call
    /// still counts this interval.
    pub fn collect(&mut self) -> Result<Vec<(Metric, CustomMetric)>> {
        Ok(self.advance(snmp::read()?))
    }

    fn advance(&mut self, now: KernelCounters) -> Vec<(Metric, CustomMetric)> {
        let before = std::mem::replace(&mut self.last, now);
        let grown = |field: fn(&KernelCounters) -> u64| delta(field(&before), field(&now));
        let closed_udp = grown(|c| c.udp_no_ports).saturating_add(grown(|c| c.udp6_no_ports));
        vec![
            (catalog::RESETS, grown(|c| c.tcp_out_rsts).into()),
            (catalog::FAILED, grown(|c| c.tcp_attempt_fails).into()),
            (catalog::RETRANSMITTED, grown(|c| c.tcp_retrans_segs).into()),
            (catalog::CLOSED_UDP_PORTS, closed_udp.into()),
            (catalog::PROCESSES_CREATED, grown(|c| c.processes).into()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        io::ErrorKind,
        net::{TcpListener, TcpStream, UdpSocket},
        os::fd::AsRawFd,
        process::Command,
        time::Duration,
    };

    use super::*;
    use crate::{
        host::test_netns::{in_fresh_netns, sh, veth},
        report::Number,
    };

    fn value(signals: &[(Metric, CustomMetric)], metric: Metric) -> u64 {
        match signals.iter().find(|(m, _)| *m == metric) {
            Some((_, CustomMetric::Number(Number::Count(n)))) => *n,
            other => panic!("{}: {other:?}", metric.name),
        }
    }

    #[test]
    fn signals_are_the_growth_of_the_kernels_counters() {
        let mut signals = CounterSignals {
            last: KernelCounters {
                tcp_out_rsts: 10,
                tcp_attempt_fails: 20,
                tcp_retrans_segs: 30,
                udp_no_ports: 40,
                udp6_no_ports: 50,
                processes: 60,
            },
        };
        let grown = signals.advance(KernelCounters {
            tcp_out_rsts: 11,
            tcp_attempt_fails: 22,
            tcp_retrans_segs: 33,
            udp_no_ports: 44,
            udp6_no_ports: 55,
            processes: 66,
        });
        let names: Vec<&str> = grown.iter().map(|(m, _)| m.name).collect();
        assert_eq!(
            names,
            [
                "interval_tcp_resets_sent",
                "interval_tcp_failed_connects",
                "interval_tcp_retransmits",
                "interval_udp_datagrams_to_closed_ports",
                "interval_processes_created",
            ]
        );
        assert_eq!(value(&grown, catalog::RESETS), 1);
        assert_eq!(value(&grown, catalog::FAILED), 2);
        assert_eq!(value(&grown, catalog::RETRANSMITTED), 3);
        assert_eq!(value(&grown, catalog::CLOSED_UDP_PORTS), 4 + 5);
        assert_eq!(value(&grown, catalog::PROCESSES_CREATED), 6);
    }

    /// The counters `nstat` reads, by its names (TcpOutRsts, Udp6NoPorts, ...).
    fn nstat() -> HashMap<String, u64> {
        sh("nstat", &["-asz"])
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                Some((words.next()?.to_owned(), words.next()?.parse().ok()?))
            })
            .collect()
    }

    fn nstat_growth(
        before: &HashMap<String, u64>,
        after: &HashMap<String, u64>,
        name: &str,
    ) -> u64 {
        after[name] - before[name]
    }

    /// A port nothing listens on: one that was bound, then closed.
    fn closed_port(address: &str) -> u16 {
        UdpSocket::bind((address, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn datagrams_to_closed_port(address: &str, count: u64) {
        let port = closed_port(address);
        let sender = UdpSocket::bind((address, 0)).unwrap();
        for _ in 0..count {
            sender.send_to(b"probe", (address, port)).unwrap();
        }
    }

    /// Connects to a port nothing listens on `count` times: each SYN gets one reset, and
    /// each attempt fails.
    fn connects_to_closed_port(address: &str, count: u64) {
        let listener = TcpListener::bind((address, 0)).unwrap();
        // Shut down, a listener stops listening but keeps its port, so no other socket can
        // take the port and answer while the test connects to it.
        // SAFETY: shutdown on a socket this function owns.
        let shut = unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RD) };
        assert_eq!(shut, 0, "{}", std::io::Error::last_os_error());
        let port = listener.local_addr().unwrap().port();
        for _ in 0..count {
            let err = TcpStream::connect((address, port)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
        }
    }

    #[test]
    fn closed_ports_resets_and_failed_connects_are_exact() {
        in_fresh_netns(|| {
            // Before start: never in a report.
            datagrams_to_closed_port("127.0.0.1", 3);
            connects_to_closed_port("127.0.0.1", 2);
            let mut signals = CounterSignals::start().unwrap();
            let before = nstat();

            datagrams_to_closed_port("127.0.0.1", 7);
            datagrams_to_closed_port("::1", 5);
            connects_to_closed_port("127.0.0.1", 4);
            connects_to_closed_port("::1", 3);
            let spawned = 6;
            for _ in 0..spawned {
                assert!(Command::new("true").status().unwrap().success());
            }
            let after = nstat();
            let grown = signals.collect().unwrap();

            assert_eq!(value(&grown, catalog::CLOSED_UDP_PORTS), 7 + 5);
            assert_eq!(value(&grown, catalog::RESETS), 4 + 3);
            assert_eq!(value(&grown, catalog::FAILED), 4 + 3);
            assert_eq!(value(&grown, catalog::RETRANSMITTED), 0);
            // Host-wide: other processes may start too, and nstat is one more.
            assert!(value(&grown, catalog::PROCESSES_CREATED) > spawned);
            let truth = |name| nstat_growth(&before, &after, name);
            assert_eq!(
                value(&grown, catalog::CLOSED_UDP_PORTS),
                truth("UdpNoPorts") + truth("Udp6NoPorts")
            );
            assert_eq!(value(&grown, catalog::RESETS), truth("TcpOutRsts"));
            assert_eq!(value(&grown, catalog::FAILED), truth("TcpAttemptFails"));

            let quiet = signals.collect().unwrap();
            for metric in [
                catalog::CLOSED_UDP_PORTS,
                catalog::RESETS,
                catalog::FAILED,
                catalog::RETRANSMITTED,
            ] {
                assert_eq!(value(&quiet, metric), 0, "{}", metric.name);
            }
        });
    }

    #[test]
    fn retransmits_are_the_kernels() {
        in_fresh_netns(|| {
            // A SYN to a neighbour whose address nothing holds: the other end of the pair
            // drops it, and it is sent again after the initial retransmission timeout (1 s).
            veth("v0", "v1");
            sh("ip", &["addr", "add", "10.8.0.1/24", "dev", "v0"]);
            sh(
                "ip",
                &[
                    "neigh",
                    "replace",
                    "10.8.0.2",
                    "lladdr",
                    "02:00:00:00:00:09",
                    "dev",
                    "v0",
                    "nud",
                    "permanent",
                ],
            );
            let mut signals = CounterSignals::start().unwrap();
            let before = nstat();
            let err = TcpStream::connect_timeout(
                &"10.8.0.2:80".parse().unwrap(),
                Duration::from_millis(1500),
            )
            .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::TimedOut);
            let after = nstat();
            let grown = signals.collect().unwrap();
            let retransmitted = value(&grown, catalog::RETRANSMITTED);
            assert!(retransmitted >= 1, "{grown:?}");
            assert_eq!(
                retransmitted,
                nstat_growth(&before, &after, "TcpRetransSegs")
            );
        });
    }
}
