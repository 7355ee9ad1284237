//! A full TCP socket map: more loopback connections in tern's namespace than `TCP_SOCKS`
//! holds (65,536 entries, two per loopback connection). A listener older than tern and one
//! opened while the map is full are still reported, the totals match `ss`, and
//! `interval_details_dropped` says the maps were short of room for as long as they are;
//! once the connections close, reports come from the maps again, exact, with nothing
//! dropped. The ground truth is `ss` and the sockets the test made.

use std::{
    io::{BufRead, BufReader, Read},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tern_tests::{
    Launch, Netns, Tern, custom_list, custom_number, raise_fd_limit, reported_connections,
    reported_ports, ss, wait_until,
};

/// Connections opened: both ends in tern's namespace, 67,000 sockets for 65,536 entries.
const CONNECTIONS: usize = 33_500;
const OLD_LISTENER: u16 = 7801;
const NEW_LISTENER: u16 = 7802;
const REPORT_WAIT: Duration = Duration::from_secs(60);
/// How a `Pairs` process learns its count.
const PAIRS_VAR: &str = "TERN_TEST_LOOPBACK_PAIRS";
const FULL: &str = "the TCP socket maps are full";
const HELD_AGAIN: &str = "the TCP socket maps hold every socket again";

/// A child process in a namespace holding both ends of loopback connections until dropped:
/// the test binary again, running its ignored test `hold_loopback_pairs`.
struct Pairs(Child);

impl Pairs {
    fn open(ns: &Netns, count: usize) -> Self {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path()))
            .arg(std::env::current_exe().expect("the test binary"))
            .args(["--exact", "hold_loopback_pairs", "--ignored", "--nocapture"])
            .env(PAIRS_VAR, count.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting a process to hold connections");
        let stdout = child.stdout.take().expect("stdout");
        let ready = BufReader::new(stdout)
            .lines()
            .take(100)
            .any(|l| l.is_ok_and(|l| l == "connected"));
        assert!(ready, "the process holding connections did not connect");
        Self(child)
    }
}

impl Drop for Pairs {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Not a test of its own: the body of a `Pairs` process. Connects as many times as
/// `PAIRS_VAR` says to a listener of its own on loopback, accepting in batches smaller than
/// any backlog, prints "connected", and holds the listener and both ends until killed,
/// stdin closes, or ten minutes pass: no socket closes to leave room in a map. Opening is
/// bounded to two minutes.
#[test]
#[ignore = "run by the tests of a full map"]
fn hold_loopback_pairs() {
    const BATCH: usize = 64;
    let Ok(count) = std::env::var(PAIRS_VAR) else {
        return;
    };
    let count: usize = count.parse().expect("a count");
    let deadline = Instant::now() + Duration::from_secs(120);
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut ends = Vec::with_capacity(2 * count);
    while ends.len() < 2 * count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} connections within two minutes",
            ends.len() / 2
        );
        let batch = BATCH.min(count - ends.len() / 2);
        for _ in 0..batch {
            ends.push(TcpStream::connect(addr).expect("connect"));
        }
        for _ in 0..batch {
            ends.push(listener.accept().expect("accept").0);
        }
    }
    println!("connected");
    thread::spawn(|| {
        thread::sleep(Duration::from_secs(600));
        std::process::exit(0);
    });
    let _ = std::io::stdin().read(&mut [0u8; 1]);
    drop((listener, ends));
}

/// Established connections in `ns`, as `ss` counts them.
fn established(ns: &Netns) -> u64 {
    ns.exec(&["ss", "-Htn", "state", "established"])
        .lines()
        .count() as u64
}

fn dropped(report: &Value) -> u64 {
    custom_number(report, "interval_details_dropped")
}

/// The first report collected after `since`.
fn report_after(tern: &Tern, since: Instant) -> Value {
    let reports = tern.reports_through(since, REPORT_WAIT);
    reports.into_iter().last().expect("a report")
}

/// The report's listening ports, established total and listed connections against `ss`
/// now: a report cut to its budget lists the first connections in its order.
fn assert_exact(ns: &Netns, report: &Value) {
    let (ports, total) = reported_ports(report, "listening_tcp_ports");
    let truth = ss::listening(ns, 't');
    assert_eq!(ports, truth, "TCP listeners against ss");
    assert_eq!(total, truth.len() as u64);
    let (listed, connections) = reported_connections(report);
    let truth = ss::established(ns);
    assert_eq!(
        connections,
        truth.len() as u64,
        "established total against ss"
    );
    assert!(
        listed.len() <= truth.len() && listed[..] == truth[..listed.len()],
        "the connections listed are not the first {} of ss's in report order",
        listed.len()
    );
}

#[test]
fn a_full_socket_map_hides_no_listener_and_breaks_no_total() {
    full_map(Launch::Nsenter);
}

/// The same where the sock_ops program follows TCP (perf_event_open denied, so no
/// tracepoint), which also checks the seeded sockets against sock_diag at each report.
#[test]
fn a_full_socket_map_hides_no_listener_with_the_sock_ops_program() {
    full_map(Launch::DenyPerfEvents);
}

fn full_map(launch: Launch) {
    // Where one process may not hold every end (no CAP_SYS_RESOURCE), several share them.
    let fds = raise_fd_limit(2 * CONNECTIONS as u64 + 256);
    let per_process = usize::try_from(fds.saturating_sub(256) / 2)
        .unwrap_or(CONNECTIONS)
        .clamp(1_000, CONNECTIONS);
    let ns = Netns::new("full");
    // Room for every client port to one listener.
    ns.exec(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=10000 65000"]);
    let old = ns.enter(|| TcpListener::bind(("127.0.0.1", OLD_LISTENER)).unwrap());
    let (tern, lines) = Tern::start_launched(&ns, launch, &["--interval", "2"]);
    let source = match launch {
        Launch::DenyPerfEvents => "tcp:sock_ops",
        _ => "tcp:raw_tracepoint",
    };
    assert!(
        lines.iter().any(|l| l.contains(source)),
        "{source} in {lines:?}"
    );

    let opening = Instant::now();
    let mut holders = Vec::new();
    let mut left = CONNECTIONS;
    while left > 0 {
        let count = left.min(per_process);
        holders.push(Pairs::open(&ns, count));
        left -= count;
    }
    let opened_in = opening.elapsed();
    let holders_count = holders.len();
    let new = ns.enter(|| TcpListener::bind(("127.0.0.1", NEW_LISTENER)).unwrap());
    let changed = Instant::now();

    let lo = Some("lo".to_owned());
    let mut dropped_while_full = Vec::new();
    for since in [changed, Instant::now()] {
        let report = report_after(&tern, since);
        let (ports, _) = reported_ports(&report, "listening_tcp_ports");
        assert!(ports.contains(&(OLD_LISTENER, lo.clone())), "{ports:?}");
        assert!(ports.contains(&(NEW_LISTENER, lo.clone())), "{ports:?}");
        assert_exact(&ns, &report);
        let (_, total) = reported_connections(&report);
        assert_eq!(total, 2 * CONNECTIONS as u64, "both ends of each");
        let interval_ports: Vec<u64> =
            custom_list(&report, "interval_listening_tcp_ports", "number_list")
                .iter()
                .map(|p| p.as_u64().unwrap())
                .collect();
        for port in [OLD_LISTENER, NEW_LISTENER] {
            assert!(
                interval_ports.contains(&u64::from(port)),
                "{interval_ports:?}"
            );
        }
        assert!(dropped(&report) > 0, "every report while the map is full");
        dropped_while_full.push(dropped(&report));
    }
    tern.wait_log(FULL, Duration::from_secs(5));

    let closing = Instant::now();
    drop(holders);
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || match established(&ns) {
            0 => Ok(()),
            left => Err(left),
        },
    )
    .unwrap_or_else(|left| panic!("{left} connections still established after 60 s"));
    let closed_in = closing.elapsed();
    let report = report_after(&tern, Instant::now());
    assert_exact(&ns, &report);
    assert_eq!(reported_connections(&report).1, 0);
    assert_eq!(dropped(&report), 0, "the maps hold every socket again");
    tern.wait_log(HELD_AGAIN, Duration::from_secs(5));
    eprintln!(
        "{CONNECTIONS} connections opened by {holders_count} processes in {opened_in:?}, \
         closed in {closed_in:?}; details dropped while full: {dropped_while_full:?}"
    );

    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    drop((old, new));
}
