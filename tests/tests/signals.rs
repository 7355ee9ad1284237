//! Security signals counted by kernel programs, against what the tests themselves do: port
//! scans, failed connects, process executions. tern runs in namespace `a` of a veth pair;
//! `b` plays the scanner or the peer.

use std::{
    net::{SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tern_tests::{
    ADDR_A, ADDR_B, DEV_A, Pair, TempDir, Tern, custom_list, custom_metric, custom_number,
};

const REPORT_WAIT: Duration = Duration::from_secs(15);

/// Sums `name` over the reports that count everything done before `done`, and returns the
/// report after them, an interval in which the test did nothing.
fn total_through(tern: &Tern, name: &str, done: Instant) -> (u64, Value) {
    let total = tern
        .reports_through(done, REPORT_WAIT)
        .iter()
        .map(|r| custom_number(r, name))
        .sum();
    (total, tern.next_report(REPORT_WAIT))
}

#[test]
fn a_scan_of_closed_ports_shows_as_resets_sent_and_closed_port_attempts() {
    let pair = Pair::new();
    let tern = Tern::start(&pair.a, &["--interval", "2"]);
    let quiet = tern.next_report(REPORT_WAIT);
    pair.b.enter(|| {
        for port in 30_000..30_200 {
            let addr = SocketAddr::from(([10, 77, 0, 1], port));
            let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
            assert!(refused.is_err(), "port {port} is open");
        }
    });
    let (resets, quiet_after) = total_through(&tern, "interval_tcp_resets_sent", Instant::now());
    // One reset per SYN to a closed port, and nothing else resets in this namespace.
    assert_eq!(resets, 200);
    assert_eq!(custom_number(&quiet_after, "interval_tcp_resets_sent"), 0);
    assert_eq!(custom_number(&quiet, "interval_tcp_resets_sent"), 0);
    assert_eq!(custom_number(&quiet, "interval_closed_port_attempts"), 0);
}

#[test]
fn datagrams_to_closed_udp_ports_are_closed_port_attempts() {
    let pair = Pair::new();
    let tern = Tern::start(&pair.a, &["--interval", "2"]);
    tern.next_report(REPORT_WAIT);
    let sender = pair.b.enter(|| UdpSocket::bind((ADDR_B, 0)).unwrap());
    for port in 40_000..40_010 {
        sender.send_to(b"probe", (ADDR_A, port)).unwrap();
        // Spaced out: the kernel rate-limits ICMP errors per peer.
        thread::sleep(Duration::from_millis(150));
    }
    let (attempts, _) = total_through(&tern, "interval_closed_port_attempts", Instant::now());
    assert!((1..=10).contains(&attempts), "{attempts}");
}

#[test]
fn connection_attempts_that_never_establish_are_failed_connects() {
    let pair = Pair::new();
    // An address on the link that nobody holds: b's namespace receives and drops the SYNs.
    let mac_b = pair.b.mac("tb");
    pair.a.neighbour("10.77.0.99", &mac_b, DEV_A);
    let tern = Tern::start(&pair.a, &["--interval", "2"]);
    tern.next_report(REPORT_WAIT);
    pair.a.enter(|| {
        for port in 31_000..31_040 {
            let closed = SocketAddr::from(([10, 77, 0, 2], port));
            assert!(TcpStream::connect_timeout(&closed, Duration::from_secs(2)).is_err());
        }
        for port in 31_100..31_110 {
            let unreachable = SocketAddr::from(([10, 77, 0, 99], port));
            let attempt = TcpStream::connect_timeout(&unreachable, Duration::from_millis(100));
            assert!(attempt.is_err());
        }
    });
    let done = Instant::now();
    let mut failed = 0;
    let mut ports = std::collections::BTreeSet::new();
    let mut addresses = std::collections::BTreeSet::new();
    for report in tern.reports_through(done, REPORT_WAIT) {
        failed += custom_number(&report, "interval_tcp_failed_connects");
        for p in custom_list(&report, "interval_remote_ports_contacted", "number_list") {
            ports.insert(p.as_u64().unwrap());
        }
        for a in custom_list(&report, "interval_remote_addresses_contacted", "ip_list") {
            addresses.insert(a.as_str().unwrap().to_owned());
        }
    }
    assert_eq!(failed, 50);
    assert_eq!(ports.len(), 50, "{ports:?}");
    assert_eq!(
        addresses,
        ["10.77.0.2", "10.77.0.99"]
            .map(String::from)
            .into_iter()
            .collect()
    );
}

/// A copy of /bin/true under a name no one has run, removed when dropped.
struct FreshBinary {
    path: PathBuf,
    _dir: TempDir,
}

impl FreshBinary {
    fn new() -> Self {
        let dir = TempDir::new("exec");
        let path = dir.join("never-seen-probe");
        std::fs::copy("/bin/true", &path).unwrap();
        Self { path, _dir: dir }
    }

    fn run(&self) {
        assert!(Command::new(&self.path).status().unwrap().success());
    }
}

#[test]
fn executions_are_counted_and_a_new_executable_is_named_once() {
    let pair = Pair::new();
    let tern = Tern::start(&pair.a, &["--interval", "2"]);
    tern.next_report(REPORT_WAIT);
    let fresh = FreshBinary::new();
    for _ in 0..30 {
        assert!(Command::new("/bin/true").status().unwrap().success());
    }
    fresh.run();
    let name = fresh.path.to_str().unwrap().to_owned();
    let executions = |reports: &[Value]| -> u64 {
        reports
            .iter()
            .map(|r| custom_number(r, "interval_execs"))
            .sum()
    };
    let names_it = |r: &Value| {
        custom_list(r, "interval_new_executables", "string_list")
            .contains(&Value::from(name.as_str()))
    };
    let reports = tern.reports_through(Instant::now(), REPORT_WAIT);
    // Executions are counted host-wide: other processes may add to them.
    let execs = executions(&reports);
    assert!(execs >= 31, "{execs}");
    let named = reports.iter().filter(|r| names_it(r)).count();
    assert_eq!(named, 1, "{name} in {reports:?}");

    fresh.run();
    let reports = tern.reports_through(Instant::now(), REPORT_WAIT);
    let execs = executions(&reports);
    assert!(execs >= 1, "{execs}");
    assert!(!reports.iter().any(names_it), "{name} named again");
}

#[test]
fn device_readings_are_in_range() {
    let pair = Pair::new();
    let tern = Tern::start(&pair.a, &["--interval", "1"]);
    let report = tern.next_report(REPORT_WAIT);
    let cpu = custom_metric(&report, "cpu_usage", "number")
        .as_f64()
        .expect("cpu_usage");
    assert!((0.0..=100.0).contains(&cpu), "{cpu}");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    let used = custom_number(&report, "memory_used");
    assert!(used > 0 && used < total_kb * 1024, "{used}");
}
