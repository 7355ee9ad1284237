//! The capability ladder on this kernel: tern denied bpf() and perf_event_open (the netlink
//! floor), denied perf_event_open alone (no tracepoint programs: TCP from the sock_ops
//! program), started under `ip netns exec` (no tracefs or cgroup2 under its /sys), and
//! without the kernel's BTF beside a busy namespace. Each time the standard metrics must
//! equal `ss`, `ip -s link` and the traffic the test sent.

use std::{
    collections::BTreeSet,
    net::{TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use serde_json::Value;
use tern_tests::{
    ADDR_A, ADDR_B, ADDR6_A, ADDR6_B, DEV_A, Launch, LinkStats, Netns, Pair, Tern, UDP_OVERHEAD,
    custom_list, custom_names, custom_number, reported_connections, reported_ports, ss, transfer,
    wait_until,
};

const REPORT_WAIT: Duration = Duration::from_secs(15);

fn sources(report: &Value) -> BTreeSet<String> {
    custom_list(report, "collection_sources", "string_list")
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// The reports up to the first collected after `since`, the last checked against `ss` in
/// `ns`.
fn check_sockets_against_ss(tern: &Tern, ns: &Netns, since: Instant) -> Vec<Value> {
    let reports = tern.reports_through(since, REPORT_WAIT);
    let report = reports.last().expect("a report");
    assert_eq!(
        reported_ports(report, "listening_tcp_ports").0,
        ss::listening(ns, 't'),
        "TCP listeners against ss"
    );
    assert_eq!(
        reported_ports(report, "listening_udp_ports").0,
        ss::listening(ns, 'u'),
        "UDP listeners against ss"
    );
    assert_eq!(
        reported_connections(report).0,
        ss::established(ns),
        "established connections against ss"
    );
    reports
}

/// Connects from inside `ns` to `addr:port`, where nothing listens, `count` times.
fn refused(ns: &Netns, addr: &'static str, port: u16, count: usize) {
    ns.enter(move || {
        for _ in 0..count {
            assert!(
                TcpStream::connect((addr, port)).is_err(),
                "{addr}:{port} open"
            );
        }
    });
}

#[test]
fn without_bpf_the_standard_metrics_and_the_kernels_counters_stay_exact() {
    // IPv6 off: its neighbour discovery would cross the link at moments of its own.
    let pair = Pair::new();
    let (a, b) = (&pair.a, &pair.b);
    let before_start = a.enter(|| {
        (
            TcpListener::bind(("0.0.0.0", 7501)).unwrap(),
            UdpSocket::bind(("0.0.0.0", 7502)).unwrap(),
        )
    });
    let peer = b.enter(|| TcpListener::bind((ADDR_B, 7503)).unwrap());
    let link_before = a.link_stats(DEV_A);
    let (tern, started) = Tern::start_launched(a, Launch::DenyBpf, &["--interval", "1"]);
    assert!(
        started
            .iter()
            .any(|l| l.contains("degraded: no eBPF") && l.contains("bpf()")),
        "the start-up line names what is missing: {started:?}"
    );

    let after_start = a.enter(|| {
        (
            TcpListener::bind((ADDR_A, 7511)).unwrap(),
            UdpSocket::bind(("127.0.0.1", 7512)).unwrap(),
            TcpStream::connect((ADDR_B, 7503)).unwrap(),
        )
    });
    let served = peer.accept().unwrap();
    let (udp_a, udp_b) = pair.udp();
    transfer(&udp_b, &udp_a, 300, 700);
    transfer(&udp_a, &udp_b, 200, 100);
    // Resets a sends (b connects to a closed port of a), connections of a that fail, and
    // datagrams to a port of a where nothing listens.
    refused(b, ADDR_A, 7599, 5);
    refused(a, ADDR_B, 7598, 3);
    let closed = b.enter(|| UdpSocket::bind((ADDR_B, 0)).unwrap());
    for _ in 0..9 {
        closed.send_to(b"probe", (ADDR_A, 7597)).unwrap();
    }
    let changed = Instant::now();
    let mut reports = check_sockets_against_ss(&tern, a, changed);
    let report = reports.last().expect("a report").clone();
    assert_eq!(
        sources(&report),
        BTreeSet::from(
            [
                "traffic:link_counters",
                "tcp:sock_diag",
                "udp:sock_diag",
                "tcp_send_reset:none",
                "icmp_send:none",
                "tcp_retransmit_skb:none",
                "sched_process_exec:none",
            ]
            .map(str::to_owned)
        )
    );
    // What only events give is left out, never sent as zero.
    let names = custom_names(&report);
    for absent in [
        "interval_listening_tcp_ports",
        "interval_listening_udp_ports",
        "interval_tcp_connections_opened",
        "interval_closed_port_attempts",
        "interval_execs",
        "interval_new_executables",
        "interval_details_dropped",
    ] {
        assert!(!names.contains(&absent), "{absent} sent without its source");
    }

    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    reports.extend(stopped.reports);
    let sum = |name: &str| -> u64 { reports.iter().map(|r| custom_number(r, name)).sum() };
    assert_eq!(sum("interval_tcp_resets_sent"), 5, "resets a sent");
    assert_eq!(
        sum("interval_tcp_failed_connects"),
        3,
        "a's failed connects"
    );
    assert_eq!(sum("interval_udp_datagrams_to_closed_ports"), 9);
    let counted = LinkStats::reported(reports.iter());
    assert_eq!(
        counted,
        a.link_stats(DEV_A).since(link_before),
        "traffic against `ip -s link`"
    );
    assert!(counted.packets_in >= 300 && counted.bytes_in >= 300 * (700 + UDP_OVERHEAD));
    drop((before_start, after_start, served));
}

#[test]
fn under_ip_netns_exec_tern_mounts_what_it_needs_for_itself_alone() {
    let ns = Netns::dual_stack("ipx");
    let mounts = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(" - tracefs ") || l.contains(" - cgroup2 "))
            .count()
    };
    let host_mounts = mounts();
    let before = ns.enter(|| TcpListener::bind(("::", 7601)).unwrap());
    let (tern, started) = Tern::start_launched(&ns, Launch::IpNetnsExec, &["--interval", "1"]);
    assert!(
        started.iter().any(|l| l.contains("mounted tracefs")),
        "{started:?}"
    );
    let after = ns.enter(|| {
        (
            TcpListener::bind(("127.0.0.1", 7602)).unwrap(),
            UdpSocket::bind(("0.0.0.0", 7603)).unwrap(),
        )
    });
    let changed = Instant::now();
    let reports = check_sockets_against_ss(&tern, &ns, changed);
    let report = reports.last().expect("a report");
    let sources = sources(report);
    assert!(
        sources.contains("tcp:raw_tracepoint") && sources.contains("udp:cgroup_hooks"),
        "{sources:?}"
    );
    assert_eq!(
        custom_list(report, "interval_listening_tcp_ports", "number_list").len(),
        2,
        "the tracepoint followed the listeners"
    );
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    assert_eq!(mounts(), host_mounts, "tern's mounts showed on the host");
    drop((before, after));
}

#[test]
fn without_btf_tern_follows_its_own_namespace_beside_a_busy_one() {
    let pair = Pair::new();
    let (a, b) = (&pair.a, &pair.b);
    let (tern, started) = Tern::start_launched(a, Launch::HideBtf, &["--interval", "1"]);
    assert!(
        started.iter().any(|l| l.contains("degraded: no BTF")),
        "{started:?}"
    );
    // b is busy: listeners, and connections to a, opened and closed.
    let listener = a.enter(|| TcpListener::bind((ADDR_A, 7701)).unwrap());
    let busy = b.enter(|| {
        let own = (7710..7720)
            .map(|port| TcpListener::bind(("0.0.0.0", port)).unwrap())
            .collect::<Vec<_>>();
        for _ in 0..20 {
            drop(TcpStream::connect((ADDR_A, 7701)).unwrap());
        }
        let held = TcpStream::connect((ADDR_A, 7701)).unwrap();
        (own, held)
    });
    let mut accepted = Vec::new();
    for _ in 0..21 {
        accepted.push(listener.accept().unwrap());
    }
    let changed = Instant::now();
    let mut reports = check_sockets_against_ss(&tern, a, changed);
    assert!(sources(reports.last().expect("a report")).contains("namespaces:layout"));
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    reports.extend(stopped.reports);
    let opened: u64 = reports
        .iter()
        .map(|r| custom_number(r, "interval_tcp_connections_opened_inbound"))
        .sum();
    assert_eq!(opened, 21, "a's inbound connections, none of b's");
    let listened: BTreeSet<u64> = reports
        .iter()
        .flat_map(|r| custom_list(r, "interval_listening_tcp_ports", "number_list"))
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert_eq!(listened, BTreeSet::from([7701]), "b's listeners stay b's");
    drop((busy, accepted));
}

#[test]
fn without_tracepoints_the_sock_ops_program_follows_tcp_beside_a_busy_namespace() {
    let pair = Pair::dual_stack();
    let (a, b) = (&pair.a, &pair.b);
    let peer4 = b.enter(|| TcpListener::bind((ADDR_B, 7903)).unwrap());
    let peer6 = b.enter(|| TcpListener::bind((ADDR6_B, 7904)).unwrap());
    // Older than tern: the program never sees these open, nor close the two that close.
    let (older_listener, older_closing, older_out, older_out_closing) = a.enter(|| {
        (
            TcpListener::bind(("0.0.0.0", 7901)).unwrap(),
            TcpListener::bind(("::", 7902)).unwrap(),
            TcpStream::connect((ADDR_B, 7903)).unwrap(),
            TcpStream::connect((ADDR6_B, 7904)).unwrap(),
        )
    });
    let older_served = (peer4.accept().unwrap(), peer6.accept().unwrap());
    // One interval from start to stop: the final report holds every count.
    let (tern, started) = Tern::start_launched(a, Launch::DenyPerfEvents, &["--interval", "3600"]);
    assert!(
        started
            .iter()
            .any(|l| l.contains("degraded: TCP sockets followed by a sock_ops program")),
        "the start-up line says what the sock_ops program costs: {started:?}"
    );

    // b is busy with its own: listeners, connections to itself, refused connects.
    let busy = b.enter(|| {
        let own = (7910..7915)
            .map(|port| TcpListener::bind(("0.0.0.0", port)).unwrap())
            .collect::<Vec<_>>();
        let local = TcpListener::bind(("127.0.0.1", 7920)).unwrap();
        for _ in 0..10 {
            drop(TcpStream::connect(("127.0.0.1", 7920)).unwrap());
        }
        let held = TcpStream::connect(("127.0.0.1", 7920)).unwrap();
        let served = (0..11).map(|_| local.accept().unwrap()).collect::<Vec<_>>();
        (own, local, held, served)
    });
    refused(b, "127.0.0.1", 7999, 4);

    // a: two listeners; five connections in from b (four closed at once), three out to b
    // (two closed at once), five refused connects; one older listener and one older
    // connection closed.
    let (in4, in6) = a.enter(|| {
        (
            TcpListener::bind((ADDR_A, 7931)).unwrap(),
            TcpListener::bind((ADDR6_A, 7932)).unwrap(),
        )
    });
    let held_in = b.enter(|| {
        for _ in 0..3 {
            drop(TcpStream::connect((ADDR_A, 7931)).unwrap());
        }
        drop(TcpStream::connect((ADDR6_A, 7932)).unwrap());
        TcpStream::connect((ADDR6_A, 7932)).unwrap()
    });
    let accepted = (0..3)
        .map(|_| in4.accept().unwrap())
        .chain((0..2).map(|_| in6.accept().unwrap()))
        .collect::<Vec<_>>();
    let held_out = a.enter(|| {
        drop(TcpStream::connect((ADDR_B, 7903)).unwrap());
        drop(TcpStream::connect((ADDR6_B, 7904)).unwrap());
        TcpStream::connect((ADDR_B, 7903)).unwrap()
    });
    let served = (
        peer4.accept().unwrap(),
        peer6.accept().unwrap(),
        peer4.accept().unwrap(),
    );
    refused(a, ADDR_B, 7998, 3);
    refused(a, ADDR6_B, 7997, 2);
    drop((older_closing, older_out_closing));

    // Established now in a: the older connection out, and the ones held in and out.
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || match ss::established(a).len() {
            3 => Ok(()),
            _ => Err(()),
        },
    )
    .unwrap_or_else(|()| panic!("a's connections did not settle: {:?}", ss::established(a)));
    let (listening, established) = (ss::listening(a, 't'), ss::established(a));
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    let [report] = stopped.reports.as_slice() else {
        panic!("one final report expected: {:?}", stopped.reports);
    };
    assert_eq!(
        reported_ports(report, "listening_tcp_ports").0,
        listening,
        "TCP listeners against ss"
    );
    assert_eq!(
        reported_connections(report).0,
        established,
        "established connections against ss"
    );
    let sources = sources(report);
    assert!(
        sources.contains("tcp:sock_ops")
            && !sources.contains("tcp:tracepoint")
            && !sources.contains("tcp:raw_tracepoint"),
        "{sources:?}"
    );
    for (name, made) in [
        ("interval_tcp_connections_opened_inbound", 5),
        ("interval_tcp_connections_opened_outbound", 3),
        ("interval_tcp_connections_opened", 8),
        ("interval_tcp_connections_short_lived", 6),
        ("interval_tcp_failed_connects", 5),
        ("interval_details_dropped", 0),
    ] {
        assert_eq!(custom_number(report, name), made, "{name}: a's alone");
    }
    let numbers = |name: &str| -> BTreeSet<u64> {
        custom_list(report, name, "number_list")
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect()
    };
    let addresses = |name: &str| -> BTreeSet<String> {
        custom_list(report, name, "ip_list")
            .iter()
            .map(|p| p.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        numbers("interval_listening_tcp_ports"),
        BTreeSet::from([7901, 7902, 7931, 7932]),
        "a's listeners of the interval, none of b's"
    );
    assert_eq!(
        numbers("interval_remote_ports_contacted"),
        BTreeSet::from([7903, 7904, 7997, 7998]),
        "the ports a connected to"
    );
    let b_addresses = BTreeSet::from([ADDR_B.to_owned(), ADDR6_B.to_owned()]);
    assert_eq!(
        addresses("interval_remote_addresses_contacted"),
        b_addresses
    );
    assert_eq!(addresses("interval_remote_addresses"), b_addresses);
    drop((
        older_listener,
        older_out,
        older_served,
        busy,
        held_in,
        accepted,
        held_out,
        served,
    ));
}
