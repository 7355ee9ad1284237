// Over 400 lines: the socket scenarios share this file's churn, waits and readers of
// reported ports; split, each part would repeat them.
//! Listening ports, established connections and the interval's sockets, against `ss` and
//! against the sockets the tests themselves open. tern runs in namespace `a`; its peer `b`
//! is another namespace, whose sockets must never show up in `a`'s reports.

use std::{
    collections::BTreeSet,
    net::{TcpListener, TcpStream, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tern_tests::{
    ADDR_A, ADDR_B, ADDR6_A, ADDR6_B, DEV_A, Netns, Pair, Tern, custom_list, custom_metric,
    custom_names, custom_number, open_connections, reported_connections, reported_ports, ss,
    wait_until,
};

const REPORT_WAIT: Duration = Duration::from_secs(15);

fn numbers(report: &Value, name: &str) -> BTreeSet<u64> {
    custom_list(report, name, "number_list")
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect()
}

/// The first report collected after `since`, so it reflects everything done before.
fn report_after(tern: &Tern, since: Instant) -> Value {
    let reports = tern.reports_through(since, REPORT_WAIT);
    reports.into_iter().last().expect("a report")
}

/// Waits until `ss` shows no TCP connection of `ns` still open or half-open, so every
/// connection the test made has left ESTABLISHED in the kernel. Bounded to 10 s.
fn wait_connections_closed(ns: &Netns) {
    wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        let open = ns.exec(&["ss", "-Htn", "state", "established", "state", "syn-recv"]);
        if open.trim().is_empty() {
            Ok(())
        } else {
            Err(())
        }
    })
    .unwrap_or_else(|()| panic!("connections still open after 10 s"));
}

#[test]
fn listeners_and_connections_match_ss_for_sockets_old_and_new() {
    let pair = Pair::dual_stack();
    let (a, b) = (&pair.a, &pair.b);
    // Peers in b, for the connections a makes.
    let peer4 = b.enter(|| TcpListener::bind((ADDR_B, 7201)).unwrap());
    let peer6 = b.enter(|| TcpListener::bind((ADDR6_B, 7202)).unwrap());

    // Opened before tern starts: found by the start-up snapshot.
    let before = a.enter(|| {
        let tcp = vec![
            TcpListener::bind(("0.0.0.0", 7001)).unwrap(),
            TcpListener::bind((ADDR_A, 7002)).unwrap(),
            TcpListener::bind(("::", 7003)).unwrap(),
            TcpListener::bind((ADDR6_A, 7004)).unwrap(),
            TcpListener::bind(("127.0.0.1", 7005)).unwrap(),
        ];
        let udp = vec![
            UdpSocket::bind(("0.0.0.0", 7101)).unwrap(),
            UdpSocket::bind((ADDR_A, 7102)).unwrap(),
            UdpSocket::bind(("::", 7103)).unwrap(),
            UdpSocket::bind((ADDR6_A, 7104)).unwrap(),
            UdpSocket::bind(("127.0.0.1", 7105)).unwrap(),
        ];
        let connected = UdpSocket::bind((ADDR_A, 7106)).unwrap();
        connected.connect((ADDR_B, 9)).unwrap();
        let out6 = TcpStream::connect((ADDR6_B, 7202)).unwrap();
        (tcp, udp, connected, out6)
    });
    let in4 = b.enter(|| TcpStream::connect((ADDR_A, 7001)).unwrap());
    let accepted4 = before.0[0].accept().unwrap();
    let served6 = peer6.accept().unwrap();

    let tern = Tern::start(a, &["--interval", "1"]);

    // Opened after: followed by the kernel programs.
    let after = a.enter(|| {
        let tcp = TcpListener::bind(("0.0.0.0", 7011)).unwrap();
        let udp6 = UdpSocket::bind(("::1", 7111)).unwrap();
        let connected6 = UdpSocket::bind((ADDR6_A, 7112)).unwrap();
        connected6.connect((ADDR6_B, 9)).unwrap();
        let out4 = TcpStream::connect((ADDR_B, 7201)).unwrap();
        let implicit = send_unbound(ADDR_B, 9);
        (tcp, udp6, connected6, out4, implicit)
    });
    let served4 = peer4.accept().unwrap();
    let in6 = b.enter(|| TcpStream::connect((ADDR6_A, 7004)).unwrap());
    let accepted6 = before.0[3].accept().unwrap();
    let changed = Instant::now();

    let report = report_after(&tern, changed);
    let tcp_truth = ss::listening(a, 't');
    let udp_truth = ss::listening(a, 'u');
    let conn_truth = ss::established(a);

    let (tcp, tcp_total) = reported_ports(&report, "listening_tcp_ports");
    let (udp, udp_total) = reported_ports(&report, "listening_udp_ports");
    let (conns, conn_total) = reported_connections(&report);
    assert_eq!(tcp, tcp_truth, "TCP listeners against ss");
    assert_eq!(tcp_total, tcp_truth.len() as u64);
    assert_eq!(udp, udp_truth, "UDP listeners against ss");
    assert_eq!(udp_total, udp_truth.len() as u64);
    assert_eq!(conns, conn_truth, "established connections against ss");
    assert_eq!(conn_total, conn_truth.len() as u64);

    // The interface rule, spelled out.
    for (port, interface) in [
        (7001, None),
        (7002, Some(DEV_A)),
        (7003, None),
        (7004, Some(DEV_A)),
        (7005, Some("lo")),
        (7011, None),
    ] {
        assert!(
            tcp.contains(&(port, interface.map(str::to_owned))),
            "TCP {port} on {interface:?} in {tcp:?}"
        );
    }
    assert!(udp.contains(&(7111, Some("lo".to_owned()))));
    assert!(
        !udp.iter().any(|(p, _)| *p == 7106 || *p == 7112),
        "connected UDP listed"
    );
    assert!(conns.iter().any(|c| c.0 == format!("{ADDR_B}:7201")));
    assert!(conns.iter().any(|c| c.0 == format!("[{ADDR6_B}]:7202")));
    // b's sockets are b's: its listeners never appear in a's report.
    assert!(!tcp.iter().any(|(p, _)| *p == 7201 || *p == 7202));
    drop((
        before, after, in4, accepted4, served6, served4, in6, accepted6,
    ));
}

/// Reports equal to `ss` (listeners, UDP listeners, connections), each collected after
/// `since`.
fn assert_matches_ss(tern: &Tern, ns: &Netns, since: Instant, what: &str) -> Value {
    let report = report_after(tern, since);
    let (tcp, _) = reported_ports(&report, "listening_tcp_ports");
    let (udp, _) = reported_ports(&report, "listening_udp_ports");
    let (conns, total) = reported_connections(&report);
    assert_eq!(
        tcp,
        ss::listening(ns, 't'),
        "{what}: TCP listeners against ss"
    );
    assert_eq!(
        udp,
        ss::listening(ns, 'u'),
        "{what}: UDP listeners against ss"
    );
    let truth = ss::established(ns);
    assert_eq!(conns, truth, "{what}: connections against ss");
    assert_eq!(total, truth.len() as u64, "{what}");
    report
}

/// A map that did not change is not read again: sockets that open or close after reports
/// with no change are still in the very next report, and stay listed while they live.
#[test]
fn sockets_that_change_after_quiet_reports_are_in_the_next_report() {
    let pair = Pair::new();
    let (a, b) = (&pair.a, &pair.b);
    let peer = b.enter(|| TcpListener::bind((ADDR_B, 7403)).unwrap());
    let tern = Tern::start(a, &["--interval", "1"]);
    for _ in 0..3 {
        tern.next_report(REPORT_WAIT);
    }
    let opened = a.enter(|| {
        (
            TcpListener::bind((ADDR_A, 7401)).unwrap(),
            UdpSocket::bind((ADDR_A, 7402)).unwrap(),
            TcpStream::connect((ADDR_B, 7403)).unwrap(),
        )
    });
    let served = peer.accept().unwrap();
    let report = assert_matches_ss(&tern, a, Instant::now(), "opened");
    assert!(
        reported_ports(&report, "listening_tcp_ports")
            .0
            .contains(&(7401, Some(DEV_A.to_owned())))
    );
    assert!(numbers(&report, "interval_listening_udp_ports").contains(&7402));
    for quiet in 0..2 {
        let report = assert_matches_ss(&tern, a, Instant::now(), "quiet");
        assert_eq!(reported_connections(&report).1, 1, "quiet report {quiet}");
        assert!(numbers(&report, "interval_listening_tcp_ports").contains(&7401));
    }
    drop((opened, served));
    wait_connections_closed(a);
    let report = assert_matches_ss(&tern, a, Instant::now(), "closed");
    assert_eq!(reported_connections(&report).1, 0);
    assert!(reported_ports(&report, "listening_tcp_ports").0.is_empty());
}

/// The churn: 2,000 inbound connections opened and closed, a listener and a UDP socket that
/// live 100 ms, and one outbound connection to an address contacted only then.
fn churn(pair: &Pair, port: u16) {
    let listener = pair
        .a
        .enter(move || TcpListener::bind((ADDR_A, port)).unwrap());
    let server = thread::spawn(move || {
        for _ in 0..2_000 {
            drop(listener.accept().unwrap());
        }
    });
    pair.b.enter(move || {
        for _ in 0..2_000 {
            drop(TcpStream::connect((ADDR_A, port)).unwrap());
        }
    });
    server.join().unwrap();
    pair.b
        .exec(&["ip", "addr", "replace", "10.77.0.3/24", "dev", "tb"]);
    let brief = pair
        .b
        .enter(|| TcpListener::bind(("10.77.0.3", 7400)).unwrap());
    let mac = pair.b.mac("tb");
    pair.a.neighbour("10.77.0.3", &mac, DEV_A);
    pair.a.enter(|| {
        let tcp = TcpListener::bind(("0.0.0.0", 7301)).unwrap();
        let udp = UdpSocket::bind(("0.0.0.0", 7302)).unwrap();
        let contact = TcpStream::connect(("10.77.0.3", 7400)).unwrap();
        thread::sleep(Duration::from_millis(100));
        drop((tcp, udp, contact));
    });
    drop(brief.accept().unwrap());
    wait_connections_closed(&pair.a);
}

#[test]
fn churn_between_two_reports_is_counted_exactly() {
    let pair = Pair::new();
    // One interval from start to stop, however long the churn takes: the only report is the
    // final one tern sends on SIGTERM.
    let tern = Tern::start(&pair.a, &["--interval", "3600"]);
    churn(&pair, 7300);
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    let [report] = stopped.reports.as_slice() else {
        panic!("one final report expected: {:?}", stopped.reports);
    };
    // Were a count short, the kernel's own count of the runs it skipped says whether that
    // is where the events went.
    let skipped: Vec<_> = stopped
        .log
        .iter()
        .filter(|l| l.contains("skipped"))
        .collect();
    assert_eq!(
        custom_number(report, "interval_tcp_connections_opened_inbound"),
        2_000,
        "{skipped:?}"
    );
    // The one connection a made, to 10.77.0.3; b's 2,000 client sockets are b's.
    assert_eq!(
        custom_number(report, "interval_tcp_connections_opened_outbound"),
        1
    );
    assert_eq!(
        custom_number(report, "interval_tcp_connections_opened"),
        2_001
    );
    assert_eq!(
        custom_number(report, "interval_tcp_connections_short_lived"),
        2_001
    );
    assert_eq!(custom_number(report, "interval_details_dropped"), 0);
    let tcp_ports = numbers(report, "interval_listening_tcp_ports");
    assert!(
        tcp_ports.contains(&7300) && tcp_ports.contains(&7301),
        "{tcp_ports:?}"
    );
    assert!(numbers(report, "interval_listening_udp_ports").contains(&7302));
    let remotes = custom_metric(report, "interval_remote_addresses", "ip_list");
    assert!(
        remotes
            .as_array()
            .unwrap()
            .contains(&Value::from("10.77.0.3")),
        "{remotes}"
    );
    // At report time all of it is gone.
    let (now_tcp, _) = reported_ports(report, "listening_tcp_ports");
    assert!(!now_tcp.iter().any(|(p, _)| *p == 7301));
    let (conns, total) = reported_connections(report);
    assert_eq!((conns.len(), total), (0, 0), "{conns:?}");
}

#[test]
fn the_churn_over_many_intervals_adds_up_exactly_and_the_next_starts_empty() {
    let pair = Pair::new();
    let tern = Tern::start(&pair.a, &["--interval", "1"]);
    churn(&pair, 7310);
    let reports = tern.reports_through(Instant::now(), REPORT_WAIT);
    let sum = |name: &str| reports.iter().map(|r| custom_number(r, name)).sum::<u64>();
    // Each connection is counted in exactly one interval, wherever the boundaries fell.
    assert_eq!(sum("interval_tcp_connections_opened_inbound"), 2_000);
    assert_eq!(sum("interval_tcp_connections_opened_outbound"), 1);
    assert_eq!(sum("interval_details_dropped"), 0);
    let seen = |name: &str| {
        reports
            .iter()
            .flat_map(|r| numbers(r, name))
            .collect::<BTreeSet<_>>()
    };
    assert!(seen("interval_listening_tcp_ports").contains(&7301));
    assert!(seen("interval_listening_udp_ports").contains(&7302));

    // The next interval starts from what exists: nothing of the churn.
    let next = tern.next_report(REPORT_WAIT);
    assert_eq!(custom_number(&next, "interval_tcp_connections_opened"), 0);
    assert_eq!(
        custom_number(&next, "interval_tcp_connections_short_lived"),
        0
    );
    assert!(!numbers(&next, "interval_listening_tcp_ports").contains(&7301));
    assert!(!numbers(&next, "interval_listening_udp_ports").contains(&7302));
    assert!(
        !custom_metric(&next, "interval_remote_addresses", "ip_list")
            .as_array()
            .unwrap()
            .contains(&Value::from("10.77.0.3"))
    );
}

#[test]
fn with_interval_connections_every_connection_of_the_interval_is_listed() {
    let pair = Pair::new();
    let tern = Tern::start(&pair.a, &["--interval", "2", "--interval-connections"]);
    let listener = pair.a.enter(|| TcpListener::bind((ADDR_A, 7500)).unwrap());
    tern.next_report(REPORT_WAIT);
    let mut local_ports = BTreeSet::new();
    for _ in 0..5 {
        let client = pair.b.enter(|| TcpStream::connect((ADDR_A, 7500)).unwrap());
        local_ports.insert(client.local_addr().unwrap().port());
        drop(listener.accept().unwrap());
    }
    let report = tern.next_report(REPORT_WAIT);
    let (conns, total) = reported_connections(&report);
    let remotes: BTreeSet<String> = conns.iter().map(|c| c.0.clone()).collect();
    let expected: BTreeSet<String> = local_ports
        .iter()
        .map(|p| format!("{ADDR_B}:{p}"))
        .collect();
    assert_eq!(remotes, expected);
    assert_eq!(total, 5);
}

#[test]
fn other_namespaces_are_reported_only_when_asked_for() {
    let pair = Pair::new();
    let theirs = pair
        .b
        .enter(|| TcpListener::bind(("0.0.0.0", 7600)).unwrap());
    let own = Tern::start(&pair.a, &["--interval", "1"]);
    let all = Tern::start(&pair.a, &["--interval", "1", "--all-namespaces"]);
    let later = pair.b.enter(|| UdpSocket::bind(("0.0.0.0", 7601)).unwrap());
    let since = Instant::now();
    let own_report = report_after(&own, since);
    let all_report = report_after(&all, since);
    let (own_tcp, _) = reported_ports(&own_report, "listening_tcp_ports");
    let (own_udp, _) = reported_ports(&own_report, "listening_udp_ports");
    assert!(own_tcp.is_empty(), "{own_tcp:?}");
    assert!(own_udp.is_empty(), "{own_udp:?}");
    // Opened before start in another namespace: seeded from that namespace's snapshot.
    let (all_tcp, _) = reported_ports(&all_report, "listening_tcp_ports");
    assert!(all_tcp.contains(&(7600, None)), "{all_tcp:?}");
    // Opened after start: followed by the kernel programs.
    let (all_udp, _) = reported_ports(&all_report, "listening_udp_ports");
    assert!(all_udp.contains(&(7601, None)), "{all_udp:?}");
    drop((theirs, later));
}

#[test]
fn ten_thousand_connections_fit_the_budget_with_exact_totals() {
    const N: usize = 10_000;
    let pair = Pair::new();
    // The clients live in another process: one process may not hold both ends' fds.
    let (clients, served) = open_connections(&pair.a, &pair.b, ADDR_A, 7700, N);
    for args in [
        vec!["--interval", "1"],
        vec!["--interval", "1", "--names", "short", "--format", "cbor"],
    ] {
        let tern = Tern::start(&pair.a, &args);
        let report = tern.next_report(REPORT_WAIT);
        let size = tern.encoded_sizes()[0];
        let truth = ss::established(&pair.a).len() as u64;
        assert_eq!(truth, N as u64);
        let (conns, total) = reported_connections(&report);
        assert_eq!(total, truth, "{args:?}");
        assert!(!conns.is_empty() && (conns.len() as u64) < truth);
        assert!(size <= 128 * 1024, "{args:?}: {size} bytes");
    }
    drop((clients, served));
}

/// Not a test of its own: the client process of `Clients` (tests/src/traffic.rs).
#[test]
#[ignore = "run by ten_thousand_connections_fit_the_budget_with_exact_totals"]
fn hold_connections() {
    tern_tests::hold_connections();
}

/// A UDP socket never bound explicitly: its first unconnected send binds it to an
/// ephemeral port, where it then listens.
fn send_unbound(to: &str, port: u16) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let addr: std::net::Ipv4Addr = to.parse().unwrap();
    let dest = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: plain socket calls on a fresh fd and a valid sockaddr_in.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let sent = libc::sendto(
            fd,
            b"x".as_ptr().cast(),
            1,
            0,
            (&dest as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(sent, 1, "sendto: {}", std::io::Error::last_os_error());
        std::os::fd::OwnedFd::from_raw_fd(fd)
    }
}

#[test]
fn every_encoding_carries_the_same_document() {
    let pair = Pair::dual_stack();
    let sockets = pair.a.enter(|| {
        (
            TcpListener::bind(("::", 7800)).unwrap(),
            TcpListener::bind((ADDR_A, 7801)).unwrap(),
            UdpSocket::bind((ADDR6_A, 7802)).unwrap(),
        )
    });
    let modes: [&[&str]; 4] = [
        &["--names", "long", "--format", "json"],
        &["--names", "short", "--format", "json"],
        &["--names", "long", "--format", "cbor"],
        &["--names", "short", "--format", "cbor"],
    ];
    let terns: Vec<Tern> = modes
        .iter()
        .map(|mode| {
            let mut args = vec!["--interval", "1"];
            args.extend_from_slice(mode);
            Tern::start(&pair.a, &args)
        })
        .collect();
    // Every report is checked against the document rules as it is read (tests/src/schema.rs)
    // and comes back with long names, so the encodings compare field by field.
    let firsts: Vec<Value> = terns.iter().map(|t| t.next_report(REPORT_WAIT)).collect();
    for (mode, report) in modes.iter().zip(&firsts) {
        for list in ["listening_tcp_ports", "listening_udp_ports"] {
            assert_eq!(
                report["metrics"][list], firsts[0]["metrics"][list],
                "{list} differs in {mode:?}"
            );
        }
        assert_eq!(custom_names(report), custom_names(&firsts[0]), "{mode:?}");
    }
    let (tcp, _) = reported_ports(&firsts[0], "listening_tcp_ports");
    assert!(tcp.contains(&(7800, None)) && tcp.contains(&(7801, Some(DEV_A.to_owned()))));
    drop(sockets);
}
