//! Traffic counters, checked against ground truth the kernel or the test itself provides.
//!
//! Every test runs tern in namespace `a` of a fresh veth pair; only the test's traffic
//! crosses the link (IPv6 off, static neighbours), so totals can be exact.

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream, UdpSocket},
    thread,
    time::Duration,
};

use serde_json::Value;
use tern_tests::{
    ADDR_A, DEV_A, LinkStats, Netns, Pair, Tern, UDP_OVERHEAD, sh, tcp_info, transfer,
};

/// Ethernet (14) + IPv4 (20) + TCP with the timestamp option (32) around each segment's
/// payload, when SACK is off (no SACK blocks in ACKs).
const TCP_OVERHEAD: u64 = 66;
/// SYN and SYN-ACK carry MSS, timestamp and window-scale options: 8 bytes more than a
/// segment with timestamps only.
const SYN_OPTIONS: u64 = 8;

const INTERVAL: &[&str] = &["--interval", "1"];

/// All traffic tern reported from start to stop: the reports' deltas add up.
fn stop_and_sum(tern: Tern, reports: &mut Vec<Value>) -> LinkStats {
    let stopped = tern.stop();
    assert_eq!(
        stopped.code,
        Some(0),
        "tern did not exit cleanly on SIGTERM: {:?}",
        stopped.log
    );
    assert!(
        !stopped.reports.is_empty(),
        "tern reported nothing: {:?}",
        stopped.log
    );
    reports.extend(stopped.reports);
    LinkStats::reported(reports.iter())
}

#[test]
fn udp_datagrams_are_counted_exactly_and_match_interface_statistics() {
    let pair = Pair::new();
    let before = pair.a.link_stats(DEV_A);
    let tern = Tern::start(&pair.a, INTERVAL);
    let (a, b) = pair.udp();

    transfer(&b, &a, 400, 1000);
    transfer(&a, &b, 250, 200);
    // Spread over several reports, to check that deltas add up across them.
    thread::sleep(Duration::from_millis(1500));
    transfer(&b, &a, 100, 1400);

    let counted = stop_and_sum(tern, &mut Vec::new());
    let sent = LinkStats {
        packets_in: 500,
        bytes_in: 400 * (1000 + UDP_OVERHEAD) + 100 * (1400 + UDP_OVERHEAD),
        packets_out: 250,
        bytes_out: 250 * (200 + UDP_OVERHEAD),
    };
    assert_eq!(counted, sent, "tern's counts against the datagrams sent");
    let interface = pair.a.link_stats(DEV_A).since(before);
    assert_eq!(counted, interface, "tern's counts against `ip -s link`");
}

#[test]
fn loopback_is_left_out_unless_asked_for() {
    let ns = Netns::new("lo");
    let send_on_loopback = |ns: &Netns| {
        ns.enter(|| {
            let rx = UdpSocket::bind("127.0.0.1:9100").unwrap();
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            transfer(&tx, &rx, 120, 300);
        });
    };

    let tern = Tern::start(&ns, INTERVAL);
    send_on_loopback(&ns);
    let counted = stop_and_sum(tern, &mut Vec::new());
    assert_eq!(counted, LinkStats::default(), "loopback counted by default");

    let tern = Tern::start(&ns, &["--interval", "1", "--include-loopback"]);
    send_on_loopback(&ns);
    let counted = stop_and_sum(tern, &mut Vec::new());
    // Each loopback packet leaves and enters `lo`.
    let one_way = 120 * (300 + UDP_OVERHEAD);
    assert_eq!(
        counted,
        LinkStats {
            bytes_in: one_way,
            packets_in: 120,
            bytes_out: one_way,
            packets_out: 120,
        }
    );
}

/// TCP bulk both ways over one connection. Ground truth is the kernel's own `tcp_info` of
/// the connection's two ends:
/// - packets out = segments a's socket sent + the SYN-ACK (sent by the listener);
///   packets in = segments a's socket received (the SYN included). Exact.
/// - bytes out = payload a sent (retransmissions included) + 66 header bytes per segment
///   + 8 for the SYN-ACK's options. Exact.
/// - bytes in lies between the payload a received once (the lower bound) and the payload
///   b sent, retransmissions included (its upper bound: a retransmitted segment may have
///   been dropped before reaching a), plus 66 bytes per segment and 8 for the SYN.
#[test]
fn tcp_bulk_is_counted_in_wire_segments_and_wire_bytes() {
    let pair = Pair::new();
    for ns in [&pair.a, &pair.b] {
        ns.exec(&["sysctl", "-qw", "net.ipv4.tcp_sack=0"]);
        ns.exec(&["sysctl", "-qw", "net.ipv4.tcp_timestamps=1"]);
    }
    let tern = Tern::start(&pair.a, INTERVAL);
    let listener = pair
        .a
        .enter(|| TcpListener::bind((ADDR_A, 9200)).expect("listen in a"));
    let upload = 8 << 20;
    let download = 3 << 20;
    let mut stream = pair
        .b
        .enter(|| TcpStream::connect((ADDR_A, 9200)).expect("connect from b"));
    let (mut server, _) = listener.accept().unwrap();
    let (local, peer) = thread::scope(|scope| {
        let client = scope.spawn(|| {
            stream.write_all(&vec![1u8; upload]).unwrap();
            let mut got = vec![0u8; download];
            stream.read_exact(&mut got).unwrap();
            stream.shutdown(Shutdown::Write).unwrap();
            assert_eq!(stream.read(&mut [0u8; 16]).unwrap(), 0);
            // The last ACKs settle; nothing is sent after this.
            thread::sleep(Duration::from_millis(300));
            tcp_info(&stream)
        });
        let mut got = vec![0u8; upload];
        server.read_exact(&mut got).unwrap();
        server.write_all(&vec![2u8; download]).unwrap();
        assert_eq!(server.read(&mut [0u8; 16]).unwrap(), 0);
        server.shutdown(Shutdown::Write).unwrap();
        let peer = client.join().expect("client");
        (tcp_info(&server), peer)
    });

    let counted = stop_and_sum(tern, &mut Vec::new());
    assert_eq!(counted.packets_out, local.segs_out + 1, "{local:?}");
    assert_eq!(counted.packets_in, local.segs_in, "{local:?}");
    assert_eq!(
        counted.bytes_out,
        local.bytes_sent + TCP_OVERHEAD * counted.packets_out + SYN_OPTIONS,
        "{local:?}"
    );
    let headers_in = TCP_OVERHEAD * counted.packets_in + SYN_OPTIONS;
    // The peer's FIN advanced bytes_received by one sequence number, not a byte.
    let low = local.bytes_received - 1 + headers_in;
    let high = peer.bytes_sent + headers_in;
    assert!(
        (low..=high).contains(&counted.bytes_in),
        "bytes in {} outside [{low}, {high}]; local {local:?}, peer {peer:?}",
        counted.bytes_in
    );
    // GSO/GRO must have been in play, or this test proves nothing about segments.
    let link = pair.a.link_stats(DEV_A);
    assert!(
        link.packets_in < counted.packets_in,
        "no GRO on the link: {link:?}"
    );
}

/// tern shares TC with other programs: a legacy cls_bpf filter (a CNI or firewall) attached
/// before it and a second tern attached after it all see every packet.
#[test]
fn coexists_with_other_tc_programs_on_the_same_interface() {
    let pair = Pair::new();
    // The filter's witness is its action's statistics; it mirrors to a device that is down,
    // so the copies go nowhere.
    pair.a.exec(&[
        "ip", "link", "add", "tm", "type", "veth", "peer", "name", "tn",
    ]);
    pair.a.exec(&["tc", "qdisc", "add", "dev", DEV_A, "clsact"]);
    for hook in ["ingress", "egress"] {
        pair.a.exec(&[
            "tc",
            "filter",
            "add",
            "dev",
            DEV_A,
            hook,
            "prio",
            "1",
            "bpf",
            "bytecode",
            "1,6 0 0 4294967295,",
            "action",
            "mirred",
            "egress",
            "mirror",
            "dev",
            "tm",
        ]);
    }
    let first = Tern::start(&pair.a, INTERVAL);
    let second = Tern::start(&pair.a, INTERVAL);
    let (a, b) = pair.udp();
    transfer(&b, &a, 300, 500);
    transfer(&a, &b, 200, 100);

    let expected = LinkStats {
        packets_in: 300,
        bytes_in: 300 * (500 + UDP_OVERHEAD),
        packets_out: 200,
        bytes_out: 200 * (100 + UDP_OVERHEAD),
    };
    assert_eq!(
        stop_and_sum(second, &mut Vec::new()),
        expected,
        "second tern"
    );
    assert_eq!(stop_and_sum(first, &mut Vec::new()), expected, "first tern");
    for (hook, packets) in [("ingress", 300), ("egress", 200)] {
        let out = pair
            .a
            .exec(&["tc", "-s", "-j", "filter", "show", "dev", DEV_A, hook]);
        let filters: Value = serde_json::from_str(&out).expect("tc -j output");
        let seen: u64 = filters
            .as_array()
            .expect("a filter list")
            .iter()
            .flat_map(|f| {
                f["options"]["actions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|a| a["stats"]["packets"].as_u64())
            .sum();
        assert_eq!(seen, packets, "the legacy {hook} filter's packets: {out}");
    }
}

/// Creates a veth link `a_dev` (in `a`, with `index` if given) to `b_dev` (in `b`) on
/// 10.`subnet`.0.0/24 while tern runs, waits until tern counts it, and returns a receiver
/// in `a` and a sender in `b` on it.
fn extra_link(
    pair: &Pair,
    tern: &Tern,
    (a_dev, b_dev): (&str, &str),
    subnet: u8,
    index: Option<u32>,
) -> (UdpSocket, UdpSocket) {
    let index = index.map(|i| i.to_string());
    let mut add = vec!["-n", &pair.a.name, "link", "add", a_dev];
    if let Some(index) = &index {
        add.extend(["index", index]);
    }
    add.extend(["type", "veth", "peer", "name", b_dev, "netns", &pair.b.name]);
    sh("ip", &add);
    tern.wait_log(
        &format!("counting traffic on {a_dev}"),
        Duration::from_secs(15),
    );
    let (addr_a, addr_b) = (format!("10.{subnet}.0.1"), format!("10.{subnet}.0.2"));
    pair.a
        .exec(&["ip", "addr", "add", &format!("{addr_a}/24"), "dev", a_dev]);
    pair.b
        .exec(&["ip", "addr", "add", &format!("{addr_b}/24"), "dev", b_dev]);
    pair.a.exec(&["ip", "link", "set", a_dev, "up"]);
    pair.b.exec(&["ip", "link", "set", b_dev, "up"]);
    let (mac_a, mac_b) = (pair.a.mac(a_dev), pair.b.mac(b_dev));
    for (ns, addr, mac, dev) in [
        (&pair.a, &addr_b, &mac_b, a_dev),
        (&pair.b, &addr_a, &mac_a, b_dev),
    ] {
        ns.neighbour(addr, mac, dev);
    }
    let rx = pair
        .a
        .enter(move || UdpSocket::bind((addr_a.as_str(), 9300)).unwrap());
    let tx = pair
        .b
        .enter(move || UdpSocket::bind((addr_b.as_str(), 0)).unwrap());
    (rx, tx)
}

/// An interface created while tern runs is counted from its first packet; one deleted
/// while tern runs keeps what it counted, and tern goes on.
#[test]
fn interfaces_that_come_and_go_are_followed() {
    let pair = Pair::new();
    let tern = Tern::start(&pair.a, INTERVAL);
    let (rx, tx) = extra_link(&pair, &tern, ("tj", "tk"), 78, None);
    transfer(&tx, &rx, 150, 700);
    thread::sleep(Duration::from_millis(1500));
    pair.a.exec(&["ip", "link", "del", "tj"]);
    tern.wait_log("interface tj is gone", Duration::from_secs(15));

    // Still counting on the interfaces that remain.
    let (a, b) = pair.udp();
    transfer(&b, &a, 50, 100);

    let counted = stop_and_sum(tern, &mut Vec::new());
    assert_eq!(counted.packets_in, 150 + 50);
    assert_eq!(
        counted.bytes_in,
        150 * (700 + UDP_OVERHEAD) + 50 * (100 + UDP_OVERHEAD)
    );
    assert_eq!(counted.packets_out, 0);
}

/// Interfaces that appear, carry traffic and go, all between two reports, are in the next
/// report: one with a small index and one with an index past the kernel array's slots.
#[test]
fn interfaces_that_live_between_two_reports_are_counted() {
    let pair = Pair::new();
    // The only report is the final one.
    let tern = Tern::start(&pair.a, &["--interval", "3600"]);
    let (rx_small, tx_small) = extra_link(&pair, &tern, ("tj", "tk"), 78, None);
    let (rx_large, tx_large) = extra_link(&pair, &tern, ("tm", "tn"), 79, Some(5000));
    transfer(&tx_small, &rx_small, 120, 500);
    transfer(&tx_large, &rx_large, 80, 900);
    for dev in ["tj", "tm"] {
        pair.a.exec(&["ip", "link", "del", dev]);
        tern.wait_log(&format!("interface {dev} is gone"), Duration::from_secs(15));
    }
    let (a, b) = pair.udp();
    transfer(&b, &a, 30, 100);

    let counted = stop_and_sum(tern, &mut Vec::new());
    assert_eq!(counted.packets_in, 120 + 80 + 30);
    assert_eq!(
        counted.bytes_in,
        120 * (500 + UDP_OVERHEAD) + 80 * (900 + UDP_OVERHEAD) + 30 * (100 + UDP_OVERHEAD)
    );
    assert_eq!(counted.packets_out, 0);
}

#[test]
fn the_first_report_has_no_spike_from_traffic_before_start() {
    let pair = Pair::new();
    let (a, b) = pair.udp();
    transfer(&b, &a, 200, 1200);
    let tern = Tern::start(&pair.a, INTERVAL);
    let first = tern.next_report(Duration::from_secs(10));
    // After start, traffic is counted as usual.
    transfer(&b, &a, 10, 100);
    let mut reports = vec![first.clone()];
    let counted = stop_and_sum(tern, &mut reports);
    assert_eq!(
        first["metrics"]["network_stats"],
        serde_json::json!({"bytes_in": 0, "bytes_out": 0, "packets_in": 0, "packets_out": 0}),
        "traffic from before the start leaked into the first report"
    );
    assert_eq!(
        counted,
        LinkStats {
            packets_in: 10,
            bytes_in: 10 * (100 + UDP_OVERHEAD),
            ..Default::default()
        }
    );
    let mut last_id = 0;
    for report in &reports {
        let header = &report["header"];
        assert_eq!(header["version"], "1.0");
        let id = header["report_id"].as_u64().expect("an integer report_id");
        assert!(id > last_id, "report_id {id} after {last_id}");
        last_id = id;
    }
}
