// Over 400 lines: one test per benchmark figure, sharing the workloads and the peers.
// Long by design: one test per figure, each read top to bottom, and the README names this file.
//! Benchmarks: figures, not pass/fail. `cargo xtask bench [--quick]` runs them (they are
//! ignored by a plain test run) and gathers the figure files each writes into
//! `bench/results.json` and `bench/results.md`; `cargo xtask test` runs the smallest case
//! of each once. tern, the Python sample agent's collector, a `/proc` poller and no agent
//! are measured in the same run, interleaved, so ratios compare like with like.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tern_common::names;
use tern_tests::{
    ADDR_A, ADDR_B, ADDR6_A, ADDR6_B, Accepted, Clients, DEV_A, Netns, Pair, Tern,
    bench::{
        BpfStats, Figure, ProgStat, Size, churn,
        floor::{self, Attached},
        fmt, median,
        peers::{self, PythonCollector, Sample},
        process_cpu_ns, prog_delta, prog_ids_of, prog_stats, programs_loaded_by, rss_kib,
    },
    custom_metric, custom_number, open_connections, raise_fd_limit, reported_connections, ss,
    tern_bin,
};

/// Not a benchmark: the client process of `Clients` (tests/src/traffic.rs).
#[test]
#[ignore = "run by the benchmarks"]
fn hold_connections() {
    tern_tests::hold_connections();
}

/// Not a benchmark: the accepting process of `Accepted` (tests/src/traffic.rs).
#[test]
#[ignore = "run by the benchmarks"]
fn hold_accepted() {
    tern_tests::hold_accepted();
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// iperf3 from `pair.b` to a one-shot server in `pair.a`: received Gbit/s for TCP bulk, or
/// received thousands of 64-byte UDP packets per second.
fn iperf(pair: &Pair, udp: bool, secs: u64) -> f64 {
    struct Server(Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Server(
        Command::new("ip")
            .args(["netns", "exec", &pair.a.name, "iperf3", "-s", "-B", ADDR_A])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 (cargo xtask setup installs it)"),
    );
    let secs = secs.to_string();
    let mut args = vec!["netns", "exec", &pair.b.name, "iperf3", "-J", "-c", ADDR_A];
    args.extend(["--connect-timeout", "1000"]);
    args.extend(["-t", &secs]);
    if udp {
        args.extend(["-u", "-b", "0", "-l", "64"]);
    }
    for _ in 0..50 {
        let out = Command::new("ip").args(&args).output().expect("iperf3");
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if out.status.success() && doc.get("error").is_none() {
            let sum = &doc["end"]["sum_received"];
            let seconds = sum["seconds"]
                .as_f64()
                .unwrap_or_else(|| panic!("iperf3 printed {doc}"));
            return if udp {
                sum["bytes"].as_f64().expect("bytes") / 64.0 / seconds / 1e3
            } else {
                sum["bits_per_second"].as_f64().expect("bits") / 1e9
            };
        }
        // The server is not listening yet.
        thread::sleep(Duration::from_millis(100));
    }
    panic!("iperf3 did not run");
}

fn cols(names: &[&str]) -> Vec<String> {
    names.iter().map(|&n| n.to_owned()).collect()
}

fn ratio_pct(with: &[f64], without: &[f64]) -> f64 {
    let ratios: Vec<f64> = with
        .iter()
        .zip(without)
        .map(|(w, n)| w / n * 100.0)
        .collect();
    median(&ratios)
}

/// Figure 1: throughput over a veth pair with tern attached versus no agent, interleaved
/// repetitions, the ratio taken within each repetition. Kernel statistics stay off here:
/// they add two clock reads to every program run.
#[test]
#[ignore = "a benchmark: cargo xtask bench"]
fn fig1a_throughput() {
    let size = Size::from_env();
    let (reps, secs) = (size.pick(1, 3, 5), size.pick(1, 2, 3));
    let pair = Pair::new();
    let _stats_off = BpfStats::set(false);
    let mut runs: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    for rep in 0..reps {
        // Alternating the order keeps a drift in the machine's load out of the ratio.
        let order = if rep % 2 == 0 {
            ["none", "tern"]
        } else {
            ["tern", "none"]
        };
        for agent in order {
            let tern = (agent == "tern").then(|| {
                let tern = Tern::start(&pair.a, &["--interval", "300"]);
                // Its start-up work (the socket snapshot) is done before traffic starts.
                thread::sleep(Duration::from_millis(300));
                tern
            });
            for (test, udp) in [("tcp", false), ("udp", true)] {
                runs.entry((test, agent))
                    .or_default()
                    .push(iperf(&pair, udp, secs));
            }
            drop(tern);
        }
    }
    let row = |label: &str, test: &str| {
        let (none, tern) = (&runs[&(test, "none")], &runs[&(test, "tern")]);
        vec![
            label.to_owned(),
            fmt(median(none), 2),
            fmt(median(tern), 2),
            format!("{} %", fmt(ratio_pct(tern, none), 1)),
        ]
    };
    Figure {
        id: "1a-throughput",
        title: "1a. Data path: throughput with tern attached vs no agent (veth pair between namespaces)",
        columns: cols(&["traffic", "no agent", "tern", "tern / no agent (goal >= 97 %)"]),
        rows: vec![
            row("TCP bulk, Gbit/s", "tcp"),
            row("UDP 64-byte packets, thousand received/s", "udp"),
        ],
        notes: vec![format!(
            "iperf3, {reps} interleaved repetitions of {secs} s each (the order alternates); medians, the ratio is the median of per-repetition ratios"
        )],
        raw: json!(runs.iter().map(|((t, a), v)| (format!("{t}/{a}"), v.clone())).collect::<BTreeMap<_, _>>()),
    }
    .write();
}

/// Figure 1b: nanoseconds per run of each of tern's kernel programs, from the kernel's own
/// statistics, over bulk TCP, small UDP packets and connection churn, next to an empty TC
/// program that measures what the statistics themselves cost.
#[test]
#[ignore = "a benchmark: cargo xtask bench"]
fn fig1b_program_cost() {
    let size = Size::from_env();
    let (reps, secs) = size.pick((1, 1), (3, 1), (5, 2));
    let pair = Pair::dual_stack();
    let (_tern, terns) = programs_loaded_by(|| Tern::start(&pair.a, &["--interval", "300"]));
    let floor = (Attached::tc_empty(&pair.a, DEV_A), Attached::state());
    let floors = prog_ids_of(std::process::id());
    let stats = BpfStats::set(true);
    let mut per_rep: BTreeMap<String, Vec<ProgStat>> = BTreeMap::new();
    for _ in 0..reps {
        // tern's TC programs first on their hooks, as where they run alone.
        let before = (prog_stats(&terns), prog_stats(&floors));
        program_workload(&pair, secs);
        let tern_delta = prog_delta(&before.0, &prog_stats(&terns));
        let floor_delta = prog_delta(&before.1, &prog_stats(&floors));
        assert!(
            tern_delta.values().any(|s| s.run_cnt > 0),
            "none of tern's programs ran: {tern_delta:?}"
        );
        // Then the least TC programs first, over the same workload.
        let least = Attached::tc_least(&pair.a, DEV_A);
        let leasts: HashSet<u64> = prog_ids_of(std::process::id())
            .difference(&floors)
            .copied()
            .collect();
        let before = prog_stats(&leasts);
        program_workload(&pair, secs);
        let least_delta = prog_delta(&before, &prog_stats(&leasts));
        drop(least);
        for (name, stat) in tern_delta.into_iter().chain(floor_delta).chain(least_delta) {
            per_rep.entry(name).or_default().push(stat);
        }
    }
    drop(stats);
    drop(floor);
    let median_ns = |name: &str| {
        let runs: Vec<f64> = per_rep[name]
            .iter()
            .filter(|s| s.run_cnt > 0)
            .map(|s| s.run_time_ns as f64 / s.run_cnt as f64)
            .collect();
        median(&runs)
    };
    let floor_of = |name: &str| match name {
        names::TC_INGRESS | floor::LEAST_INGRESS => Some(median_ns(floor::INGRESS)),
        names::TC_EGRESS | floor::LEAST_EGRESS => Some(median_ns(floor::EGRESS)),
        names::INET_SOCK_SET_STATE_RAW | floor::LEAST_STATE => Some(median_ns(floor::STATE)),
        _ => None,
    };
    let rows = per_rep
        .iter()
        .map(|(name, reps)| {
            let ns = median_ns(name);
            let above = if [floor::INGRESS, floor::EGRESS, floor::STATE].contains(&name.as_str()) {
                "0".to_owned()
            } else {
                floor_of(name).map_or_else(|| "-".to_owned(), |floor| fmt(ns - floor, 0))
            };
            // The kernel's name, and what the program does.
            let label = names::ROLES
                .iter()
                .find(|(kernel, _, _)| kernel == name)
                .map_or_else(|| name.clone(), |(_, _, role)| format!("{name}: {role}"));
            vec![
                label,
                reps.iter().map(|s| s.run_cnt).sum::<u64>().to_string(),
                fmt(ns, 0),
                above,
            ]
        })
        .collect();
    Figure {
        id: "1b-program-cost",
        title: "1b. Data path: cost of each tern kernel program per event (kernel BPF statistics)",
        columns: cols(&[
            "program",
            "runs",
            "ns per run, as measured",
            "ns per run above the floor (goal: TC <= 15)",
        ]),
        rows,
        notes: vec![format!(
            "run_time_ns / run_cnt, median of {reps} repetitions of {secs} s TCP bulk, {secs} s 64-byte UDP, {secs} s of 1,000 connections/s and 800 UDP sockets (IPv4 and IPv6); a TC run is one packet (a GSO packet once). The kernel's statistics add two clock reads to every run: floor_ingress, floor_egress and floor_state are empty programs attached after tern's on the same hooks, seeing the same events, so a program's own cost is its figure above its hook's floor. least_ingress and least_egress are the least program that counts packets and bytes per interface (the skb's length and segments added to a per-CPU slot, no header parsing for the wire bytes of GRO packets), measured in repetitions of their own where they run first on their hooks, as tern's run first in theirs (the first program pays the first touch of each packet's memory); least_state is the least that keeps an exact set of established sockets (one hash insert and one delete per socket, every namespace, nothing else); the bench writes them in raw BPF"        )],
        raw: json!(per_rep.iter().map(|(n, reps)| (n.clone(), reps.iter().map(|s| json!({"run_time_ns": s.run_time_ns, "run_cnt": s.run_cnt})).collect::<Vec<_>>())).collect::<BTreeMap<_, _>>()),
    }
    .write();
}

/// Traffic that runs every one of tern's programs: TCP bulk, small UDP packets, connection
/// churn, and UDP sockets of both families that bind, send unbound, connect and close.
fn program_workload(pair: &Pair, secs: u64) {
    iperf(pair, false, secs);
    iperf(pair, true, secs);
    let server = churn::Server::start(&pair.a, addr(ADDR_A, 7901));
    churn::run(
        &pair.b,
        addr(ADDR_A, 7901),
        1000,
        Duration::from_secs(secs),
        Duration::ZERO,
        1,
    );
    pair.a.enter(move || {
        for port in 0..200u16 {
            for (local, remote) in [(ADDR_A, ADDR_B), (ADDR6_A, ADDR6_B)] {
                let bound = UdpSocket::bind((local, 31000 + port)).unwrap();
                let _ = bound.connect((remote, 9));
                let unbound = UdpSocket::bind(if local == ADDR_A {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                })
                .unwrap();
                let _ = unbound.send_to(b"x", (remote, 9));
            }
        }
    });
    drop(server);
}

/// Listeners on `ports` in `ns`, each living `life`, opened `gap` apart. Returns the ports.
fn short_listeners(ns: &Netns, count: u16, life: Duration, gap: Duration) -> BTreeSet<u16> {
    let ports: BTreeSet<u16> = (0..count).map(|i| 32000 + i).collect();
    let list = ports.clone();
    ns.enter(move || {
        for port in list {
            let started = Instant::now();
            let listener = TcpListener::bind((ADDR_A, port)).unwrap();
            thread::sleep(life);
            drop(listener);
            thread::sleep(gap.saturating_sub(started.elapsed()));
        }
    });
    ports
}

/// Snapshots by the `/proc` poller in `ns`, `interval` apart until `stop` is set.
fn poll_until(ns: &Netns, interval: Duration, stop: Arc<AtomicBool>) -> Vec<Sample> {
    ns.enter(move || {
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            samples.push(peers::proc_poll());
            thread::sleep(interval);
        }
        samples
    })
}

/// Figure 2: what each agent reports of short-lived connections and listeners that live
/// 100 ms, against the ground truth the bench created. The snapshot agents sample every
/// second, 300 times more often than Device Defender's 5-minute interval, to favour them.
#[test]
#[ignore = "a benchmark: cargo xtask bench"]
fn fig2_accuracy_under_churn() {
    let size = Size::from_env();
    let window = Duration::from_secs(size.pick(2, 4, 10));
    let (rate, hold) = (200, Duration::from_millis(10));
    let pair = Pair::new();
    let port = 7902;
    let server = churn::Server::start(&pair.a, addr(ADDR_A, port));
    let tern = Tern::start(&pair.a, &["--interval", "3600"]);
    let mut python = peers::python()
        .map(|p| PythonCollector::start(&p, &pair.a, 1.0, window.as_secs() as usize + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let (opened, listeners, polled) = thread::scope(|scope| {
        let poller = scope.spawn(|| poll_until(&pair.a, Duration::from_secs(1), stop.clone()));
        if let Some(p) = python.as_mut() {
            p.go();
        }
        let churner =
            scope.spawn(|| churn::run(&pair.b, addr(ADDR_A, port), rate, window, hold, 1));
        let listeners = short_listeners(
            &pair.a,
            (window.as_millis() / 250) as u16,
            Duration::from_millis(100),
            Duration::from_millis(250),
        );
        let opened = churner.join().unwrap();
        thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        (opened, listeners, poller.join().unwrap())
    });
    let accepted = server.accepted();
    let stopped = tern.stop();
    // A metric a report lacks counts as nothing: a figure reports what tern sent.
    let sum = |name: &str| -> u64 {
        stopped
            .reports
            .iter()
            .map(|r| custom_metric(r, name, "number").as_u64().unwrap_or(0))
            .sum()
    };
    let inbound = sum("interval_tcp_connections_opened_inbound");
    let short = sum("interval_tcp_connections_short_lived");
    let tern_ports: BTreeSet<u16> = stopped
        .reports
        .iter()
        .flat_map(|r| {
            custom_metric(r, "interval_listening_tcp_ports", "number_list")
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|p| p.as_u64().map(|p| p as u16))
        .filter(|p| listeners.contains(p))
        .collect();
    let seen = |samples: &[Sample]| {
        let conns: BTreeSet<&(String, u16)> = samples
            .iter()
            .flat_map(|s| &s.connections)
            .filter(|c| c.1 == port)
            .collect();
        let ports: BTreeSet<u16> = samples
            .iter()
            .flat_map(|s| s.tcp_ports.iter().copied())
            .filter(|p| listeners.contains(p))
            .collect();
        (conns.len() as u64, ports.len() as u64)
    };
    let pct = |n: u64, of: u64| fmt(n as f64 * 100.0 / of.max(1) as f64, 1);
    let truth = (accepted, listeners.len() as u64);
    let mut rows = vec![vec![
        "tern (interval metrics, one report)".to_owned(),
        format!("{inbound} (short-lived {short})"),
        pct(inbound.min(short), truth.0),
        tern_ports.len().to_string(),
        pct(tern_ports.len() as u64, truth.1),
    ]];
    let mut raw = json!({
        "connections_opened": opened, "connections_accepted": accepted,
        "listeners": truth.1, "window_s": window.as_secs(), "rate_per_s": rate,
        "tern": {"opened_inbound": inbound, "short_lived": short, "listeners": tern_ports.len()},
    });
    let mut add = |label: &str, key: &str, samples: &[Sample]| {
        let (c, l) = seen(samples);
        rows.push(vec![
            label.to_owned(),
            c.to_string(),
            pct(c, truth.0),
            l.to_string(),
            pct(l, truth.1),
        ]);
        raw[key] = json!({"connections": c, "listeners": l, "snapshots": samples.len()});
    };
    add("/proc poller (1 s snapshots)", "proc_poller", &polled);
    match python.as_mut() {
        Some(p) => {
            let samples: Vec<Sample> = (0..=window.as_secs()).map(|_| p.sample()).collect();
            add("Python sample agent (1 s snapshots)", "python", &samples);
        }
        None => rows.push(vec![
            "Python sample agent".to_owned(),
            "not run: TERN_BENCH_PYTHON unset".to_owned(),
            "-".into(),
            "-".into(),
            "-".into(),
        ]),
    }
    Figure {
        id: "2-accuracy",
        title: "2. Accuracy under churn: share of short-lived connections and 100 ms listeners each agent reports",
        columns: vec![
            "agent".to_owned(),
            format!("connections reported (of {})", truth.0),
            "% (goal: tern 100)".to_owned(),
            format!("listeners reported (of {})", truth.1),
            "%".to_owned(),
        ],
        rows,
        notes: vec![format!(
            "{rate} connections/s held {} ms each for {} s, and a listener every 250 ms living 100 ms; ground truth is what the server accepted and the listeners the bench opened",
            hold.as_millis(),
            window.as_secs()
        )],
        raw,
    }
    .write();
}

/// Figure 3: wall and CPU time to build one report with N established connections and
/// 1,000 listeners: tern (its own log, its threads' CPU time), the Python collector and the
/// `/proc` poller, all in the same namespace with the same sockets.
#[test]
#[ignore = "a benchmark: cargo xtask bench"]
fn fig3_collection_cost() {
    let size = Size::from_env();
    let sizes: &[usize] = size.pick(&[100], &[100, 1000], &[100, 1000, 10_000]);
    let listeners = size.pick(100, 1000, 1000);
    let reports = size.pick(2, 3, 5);
    let pair = Pair::new();
    let held: Vec<TcpListener> = pair.a.enter(move || {
        (0..listeners)
            .map(|i| TcpListener::bind((ADDR_A, 20000 + i as u16)).unwrap())
            .collect()
    });
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    for &n in sizes {
        let (clients, served) = open_connections(&pair.a, &pair.b, ADDR_A, 7903, n);

        let tern = Tern::start_with_env(&pair.a, &["--interval", "1"], &[("TERN_LOG", "debug")]);
        let (tern_wall, tern_cpu) = report_costs(&tern, reports);
        // The same, with a connection opened and closed every 100 ms: every report then reads
        // the socket maps and sets again and builds every connection anew.
        let stop = Arc::new(AtomicBool::new(false));
        let churner = {
            let stop = stop.clone();
            let server = pair.a.enter(|| TcpListener::bind((ADDR_A, 7904)).unwrap());
            pair.b.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let client = TcpStream::connect((ADDR_A, 7904)).unwrap();
                    let served = server.accept().unwrap();
                    drop((client, served));
                    thread::sleep(Duration::from_millis(100));
                }
            })
        };
        let (changing_wall, changing_cpu) = report_costs(&tern, reports);
        stop.store(true, Ordering::Relaxed);
        churner.join().expect("the churn thread");
        let (rss, _) = rss_kib(tern.pid());
        drop(tern);

        let poller: Vec<Sample> = pair
            .a
            .enter(move || (0..reports).map(|_| peers::proc_poll()).collect());
        let python: Option<Vec<Sample>> = peers::python().map(|p| {
            let count = if n >= 10_000 { 1 } else { reports };
            let mut collector = PythonCollector::start(&p, &pair.a, 0.0, count);
            collector.go();
            (0..count).map(|_| collector.sample()).collect()
        });
        drop((clients, served));

        let ms = |v: f64| fmt(v / 1e3, 2);
        let med =
            |s: &[Sample], f: fn(&Sample) -> f64| median(&s.iter().map(f).collect::<Vec<_>>());
        let tern_ms = median(&tern_wall);
        let (py_wall, py_cpu) = python.as_deref().map_or((f64::NAN, f64::NAN), |s| {
            (med(s, |x| x.wall_us), med(s, |x| x.cpu_us))
        });
        rows.push(vec![
            n.to_string(),
            ms(tern_ms),
            ms(tern_cpu),
            ms(changing_cpu),
            fmt(rss as f64 / 1024.0, 1),
            ms(py_wall),
            ms(py_cpu),
            ms(med(&poller, |x| x.wall_us)),
            ms(med(&poller, |x| x.cpu_us)),
            format!("{} %", fmt(tern_ms / py_wall * 100.0, 1)),
        ]);
        raw.push(json!({
            "connections": n, "listeners": listeners,
            "tern_wall_us": tern_wall, "tern_cpu_us_per_report": tern_cpu, "tern_rss_kib": rss,
            "changing_wall_us": changing_wall, "changing_cpu_us_per_report": changing_cpu,
            "python_wall_us": python.as_deref().map(|s| s.iter().map(|x| x.wall_us).collect::<Vec<_>>()),
            "python_cpu_us": python.as_deref().map(|s| s.iter().map(|x| x.cpu_us).collect::<Vec<_>>()),
            "proc_wall_us": poller.iter().map(|x| x.wall_us).collect::<Vec<_>>(),
            "proc_cpu_us": poller.iter().map(|x| x.cpu_us).collect::<Vec<_>>(),
        }));
    }
    drop(held);
    let mut notes = vec![format!(
        "one report = read, build and encode; {listeners} TCP listeners present; tern's time from its log, its CPU from the scheduler per report; medians of {reports} reports (the Python collector once at 10,000). tern reads a kernel map again only when the programs counted a change to it, and builds the connections anew only then: \"sockets changing\" is the CPU of the same reports with a connection opened and closed every 100 ms, so that every report reads and builds everything"
    )];
    if peers::python().is_none() {
        notes.push("Python collector not run: TERN_BENCH_PYTHON unset".to_owned());
    }
    Figure {
        id: "3-collection-cost",
        title: "3. Collection cost at scale: one report with N established connections",
        columns: cols(&[
            "connections",
            "tern wall ms",
            "tern CPU ms",
            "tern CPU ms, sockets changing",
            "tern RSS MiB",
            "Python wall ms",
            "Python CPU ms",
            "/proc poller wall ms",
            "/proc poller CPU ms",
            "tern / Python (goal <= 10 %)",
        ]),
        rows,
        notes,
        raw: json!(raw),
    }
    .write();
}

/// Each of the `reports` reports after the one in progress: the microseconds it took, from
/// tern's log, and the CPU tern used per report, in microseconds.
fn report_costs(tern: &Tern, reports: usize) -> (Vec<f64>, f64) {
    built(tern.wait_log("built in", Duration::from_secs(30)));
    let cpu_before = process_cpu_ns(tern.pid());
    let wall = (0..reports)
        .map(|_| built(tern.wait_log("built in", Duration::from_secs(30))))
        .collect();
    let cpu = (process_cpu_ns(tern.pid()) - cpu_before) as f64 / 1e3 / reports as f64;
    (wall, cpu)
}

/// The microseconds a report took, from tern's debug line "report N built in US us".
fn built(line: String) -> f64 {
    line.split("built in ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|us| us.parse().ok())
        .unwrap_or_else(|| panic!("no time in {line:?}"))
}

/// Figure 7: tern at the limits of its maps. N established connections, more than
/// `TCP_SOCKS` holds (65,536) at the full size, and outbound attempts to more closed ports
/// than the contacted set holds (16,384): what reports say, what they cost, and tern's memory.
#[test]
#[ignore = "a benchmark: cargo xtask bench"]
fn fig7_at_the_limits_of_the_maps() {
    let size = Size::from_env();
    let n: usize = size.pick(1_000, 20_000, 100_000);
    let attempts: u16 = size.pick(500, 5_000, 20_000);
    let reports = size.pick(2, 3, 3);
    // Each end in processes of their own, as many connections each as one may hold.
    let per_process =
        (raise_fd_limit(n as u64 + 1024).saturating_sub(1024) as usize).clamp(1_000, 25_000);
    let pair = Pair::new();
    let tern = Tern::start_with_env(&pair.a, &["--interval", "2"], &[("TERN_LOG", "debug")]);
    let contacted = pair.a.enter(move || {
        (0..attempts)
            .filter(|i| {
                TcpStream::connect_timeout(&addr(ADDR_B, 40_000 + i), Duration::from_secs(1))
                    .is_err()
            })
            .count()
    });
    let held: Vec<(Accepted, Clients)> = (0..n.div_ceil(per_process))
        .map(|i| {
            let count = per_process.min(n - i * per_process);
            let port = 7910 + i as u16;
            let mut accepted = Accepted::listen(&pair.b, ADDR_B, port, count);
            let clients = Clients::connect(&pair.a, ADDR_B, port, count);
            accepted.wait();
            (accepted, clients)
        })
        .collect();
    let opened = Instant::now();
    let mut seen = tern.reports_through(opened, Duration::from_secs(120));
    let cpu_before = process_cpu_ns(tern.pid());
    let mut wall = Vec::new();
    for _ in 0..reports {
        wall.push(built(tern.wait_log("built in", Duration::from_secs(120))));
        seen.push(tern.next_report(Duration::from_secs(60)));
    }
    let cpu = (process_cpu_ns(tern.pid()) - cpu_before) as f64 / 1e3 / f64::from(reports);
    let (rss, peak) = rss_kib(tern.pid());
    let truth = ss::established(&pair.a).len();
    let last = seen.last().expect("a report");
    let (listed, total) = reported_connections(last);
    let dropped: Vec<u64> = seen
        .iter()
        .map(|r| custom_number(r, "interval_details_dropped"))
        .collect();
    drop((tern, held));
    let ms = |us: f64| fmt(us / 1e3, 2);
    Figure {
        id: "7-at-the-limits",
        title: "7. At the limits of the maps: N established connections and a contacted set overflowing",
        columns: cols(&[
            "connections (ss)",
            "reported total",
            "listed (budget)",
            "closed ports contacted",
            "interval_details_dropped, highest",
            "interval_details_dropped, last",
            "tern wall ms",
            "tern CPU ms",
            "tern RSS MiB (peak)",
        ]),
        rows: vec![vec![
            truth.to_string(),
            total.to_string(),
            listed.len().to_string(),
            contacted.to_string(),
            dropped.iter().max().copied().unwrap_or(0).to_string(),
            dropped.last().copied().unwrap_or(0).to_string(),
            ms(median(&wall)),
            ms(cpu),
            format!("{} ({})", fmt(rss as f64 / 1024.0, 1), fmt(peak as f64 / 1024.0, 1)),
        ]],
        notes: vec![format!(
            "{n} connections asked for from tern's namespace to the peer's, opened after tern started (the first column is what the kernel held, by ss), each end in processes of at most {per_process}, and {attempts} connection attempts to closed ports just before; reports every 2 s; the CPU is per report over {reports} reports after the connections opened, the wall time their median; the TCP socket map holds 65,536 sockets and the contacted set 16,384 entries: what the socket map cannot take, reports take from sock_diag, which reads every socket at every report, and interval_details_dropped counts what neither could take"
        )],
        raw: json!({
            "connections": n, "ss": truth, "reported_total": total, "listed": listed.len(),
            "attempts": attempts, "refused": contacted, "dropped": dropped,
            "wall_us": wall, "cpu_us_per_report": cpu, "rss_kib": rss, "peak_kib": peak,
        }),
    }
    .write();
}

/// Figure 4: tern's footprint: binary size, time from start to attach, resident memory,
/// CPU at a 1 s interval (measured) and at 300 s (idle measured, plus one report's CPU
/// spread over 300 s, since a window of 300 s would not fit the run).
#[test]
#[ignore = "a benchmark: cargo xtask bench"]
fn fig4_footprint() {
    let size = Size::from_env();
    let (starts, window) = (size.pick(1, 3, 5), Duration::from_secs(size.pick(2, 5, 10)));
    let pair = Pair::new();
    let binary = std::fs::metadata(tern_bin()).expect("tern").len();
    let start_ms: Vec<f64> = (0..starts)
        .map(|_| {
            let t = Instant::now();
            let tern = Tern::start(&pair.a, &["--interval", "300"]);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            drop(tern);
            ms
        })
        .collect();
    let cpu_share = |interval: &str| {
        let tern = Tern::start(&pair.a, &["--interval", interval]);
        thread::sleep(Duration::from_millis(300));
        let before = process_cpu_ns(tern.pid());
        thread::sleep(window);
        let used = process_cpu_ns(tern.pid()) - before;
        let rss = rss_kib(tern.pid());
        (used as f64 / window.as_nanos() as f64 * 100.0, rss)
    };
    let (idle_pct, (rss, peak)) = cpu_share("300");
    let (busy_pct, _) = cpu_share("1");
    // At 1 s, each second holds one report: the excess over idle is one report's CPU.
    let report_pct_s = (busy_pct - idle_pct).max(0.0);
    let at_300 = idle_pct + report_pct_s / 300.0;
    let mib = |k: u64| fmt(k as f64 / 1024.0, 1);
    let rows = vec![
        vec![
            "resident memory (VmRSS), idle".to_owned(),
            format!("{} MiB (peak {})", mib(rss), mib(peak)),
            "<= 15 MB".to_owned(),
        ],
        vec![
            "CPU at a 300 s interval".to_owned(),
            format!("{} % of one core", fmt(at_300, 4)),
            "< 0.1 %".to_owned(),
        ],
        vec![
            "CPU at a 1 s interval".to_owned(),
            format!("{} % of one core", fmt(busy_pct, 3)),
            "-".to_owned(),
        ],
        vec![
            "release binary size".to_owned(),
            format!("{} MiB", fmt(binary as f64 / 1048576.0, 2)),
            "-".to_owned(),
        ],
        vec![
            "start to attached".to_owned(),
            format!("{} ms (median of {starts})", fmt(median(&start_ms), 0)),
            "< 300 ms".to_owned(),
        ],
    ];
    Figure {
        id: "4-footprint",
        title: "4. Footprint of tern (an idle namespace: a veth pair, loopback)",
        columns: cols(&["measure", "tern", "goal"]),
        rows,
        notes: vec![format!(
            "CPU over a {} s window from the scheduler's accounting; at 300 s no report falls in the window, so one report's CPU (measured at 1 s) is added spread over 300 s; resident memory with 10,000 connections is in figure 3",
            window.as_secs()
        )],
        raw: json!({
            "binary_bytes": binary, "start_ms": start_ms, "rss_kib": rss, "peak_rss_kib": peak,
            "cpu_pct_idle_300s": idle_pct, "cpu_pct_1s": busy_pct, "cpu_pct_300s": at_300,
            "window_s": window.as_secs(),
        }),
    }
    .write();
}

/// Figure 5: CPU tern costs while the system opens and closes connections at a fixed rate:
/// its process (user and system) and its kernel programs, which run in the connecting
/// threads' context and are counted by the kernel's BPF statistics.
#[test]
#[ignore = "a benchmark: cargo xtask bench"]
fn fig5_churn_cost() {
    let size = Size::from_env();
    let rates: &[u32] = size.pick(&[1000], &[1000, 10_000], &[1000, 10_000, 50_000]);
    let window = Duration::from_secs(size.pick(1, 2, 3));
    let pair = Pair::new();
    pair.b
        .exec(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"]);
    let port = 7905;
    let server = churn::Server::start(&pair.a, addr(ADDR_A, port));
    let (tern, terns) = programs_loaded_by(|| Tern::start(&pair.a, &["--interval", "300"]));
    let floor = (Attached::tc_empty(&pair.a, DEV_A), Attached::state());
    let floors = prog_ids_of(std::process::id());
    let stats = BpfStats::set(true);
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    for &rate in rates {
        let (cpu, progs) = (process_cpu_ns(tern.pid()), prog_stats(&terns));
        let floors_before = prog_stats(&floors);
        let started = Instant::now();
        let opened = churn::run(&pair.b, addr(ADDR_A, port), rate, window, Duration::ZERO, 2);
        let elapsed = started.elapsed().as_secs_f64();
        let user = (process_cpu_ns(tern.pid()) - cpu) as f64;
        let delta = prog_delta(&progs, &prog_stats(&terns));
        let kernel: ProgStat = delta.values().fold(ProgStat::default(), |a, s| ProgStat {
            run_time_ns: a.run_time_ns + s.run_time_ns,
            run_cnt: a.run_cnt + s.run_cnt,
        });
        assert!(
            kernel.run_cnt >= opened,
            "tern's programs ran {} times for {opened} connections: not found or not attached",
            kernel.run_cnt
        );
        let floor_delta = prog_delta(&floors_before, &prog_stats(&floors));
        let per_connection = |name: &str| {
            floor_delta
                .get(name)
                .map_or(f64::NAN, |s| s.run_time_ns as f64 / opened.max(1) as f64)
        };
        let total = user + kernel.run_time_ns as f64;
        rows.push(vec![
            rate.to_string(),
            fmt(opened as f64 / elapsed, 0),
            fmt(user / 1e6, 2),
            fmt(kernel.run_time_ns as f64 / 1e6, 2),
            fmt(kernel.run_time_ns as f64 / opened.max(1) as f64, 0),
            fmt(
                [floor::INGRESS, floor::EGRESS, floor::STATE]
                    .map(per_connection)
                    .iter()
                    .sum(),
                0,
            ),
            fmt(per_connection(floor::LEAST_STATE), 0),
            fmt(total / (elapsed * 1e9) * 100.0, 3),
        ]);
        raw.push(json!({
            "rate": rate, "opened": opened, "seconds": elapsed, "tern_process_ns": user,
            "floors": floor_delta.iter().map(|(n, s)| (n.clone(), json!({"run_time_ns": s.run_time_ns, "run_cnt": s.run_cnt}))).collect::<BTreeMap<_, _>>(),
            "programs": delta.iter().map(|(n, s)| (n.clone(), json!({"run_time_ns": s.run_time_ns, "run_cnt": s.run_cnt}))).collect::<BTreeMap<_, _>>(),
        }));
    }
    drop((stats, server, tern, floor));
    Figure {
        id: "5-churn-cost",
        title: "5. Connection-churn cost: CPU tern uses while connections open and close",
        columns: cols(&[
            "target connections/s",
            "achieved/s",
            "tern process CPU ms",
            "tern kernel programs ms",
            "kernel ns per connection (goal <= 1000)",
            "empty programs ns per connection",
            "least_state ns per connection",
            "% of one core",
        ]),
        rows,
        notes: vec![format!(
            "{} s per rate, 2 client threads, every connection reset on close; the achieved rate is what this machine's 2 shared cores sustain; kernel time counts every packet and state change of the churn (TC and socket programs); the empty programs are figure 1b's floors on the TC hooks of tern's interface and on the TCP state tracepoint: what measuring alone costs per connection on the hooks where tern's programs run most; least_state is figure 1b's least exact set of established sockets (least_state keeps both ends of each connection, in every namespace; tern's programs see both ends and keep the one in tern's namespace)",
            window.as_secs()
        )],
        raw: json!(raw),
    }
    .write();
}

/// The 20 behaviours of figure 8: the scan's bound on resets, eight more counts that the
/// programs keep (read between reports too), and eleven judged at the report.
fn twenty_behaviours() -> Value {
    let bound = |name: &str, metric: &str, kind: &str, limit: u64| {
        json!({"name": name, "metric": metric, "criteria": {
            "comparisonOperator": "less-than-equals", "value": {kind: limit}}})
    };
    let not_in = |name: &str, metric: &str, kind: &str, value: Value| {
        let operator = if kind == "ports" {
            "not-in-port-set"
        } else {
            "not-in-cidr-set"
        };
        json!({"name": name, "metric": metric, "criteria": {
            "comparisonOperator": operator, "value": {kind: value}}})
    };
    let mut all = vec![bound("resets", "interval_tcp_resets_sent", "number", 50)];
    for metric in [
        "interval_closed_port_attempts",
        "interval_tcp_failed_connects",
        "interval_tcp_retransmits",
        "interval_execs",
        "interval_tcp_connections_opened",
        "interval_tcp_connections_opened_inbound",
        "interval_tcp_connections_opened_outbound",
        "interval_tcp_connections_short_lived",
    ] {
        all.push(bound(metric, metric, "number", 1_000_000));
    }
    for metric in [
        "aws:all-bytes-in",
        "aws:all-bytes-out",
        "aws:all-packets-in",
        "aws:all-packets-out",
        "aws:num-listening-tcp-ports",
        "aws:num-established-tcp-connections",
    ] {
        all.push(bound(&metric.replace(':', "-"), metric, "count", 1 << 40));
    }
    all.push(not_in(
        "telnet",
        "aws:listening-tcp-ports",
        "ports",
        json!([23]),
    ));
    all.push(not_in(
        "tftp",
        "aws:listening-udp-ports",
        "ports",
        json!([69]),
    ));
    all.push(
        json!({"name": "interval-telnet", "metric": "interval_listening_tcp_ports",
        "criteria": {"comparisonOperator": "not-in-set", "value": {"numbers": [23]}}}),
    );
    all.push(
        json!({"name": "interval-documentation", "metric": "interval_remote_addresses",
        "criteria": {"comparisonOperator": "not-in-cidr-set",
            "value": {"cidrs": ["192.0.2.0/24"]}}}),
    );
    all.push(not_in(
        "documentation",
        "aws:destination-ip-addresses",
        "cidrs",
        json!(["192.0.2.0/24"]),
    ));
    assert_eq!(all.len(), 20);
    Value::Array(all)
}

/// Figure 8: behaviours judged on the device. How soon a scan's alarm comes after the reset
/// that breaks `interval_tcp_resets_sent less-than-equals 50`, and what judging 20 behaviours
/// costs tern while idle, next to no behaviours.
#[test]
#[ignore = "a benchmark: cargo xtask bench"]
fn fig8_behaviours_judged_on_the_device() {
    let size = Size::from_env();
    let (scans, window) = (
        size.pick(2, 5, 20),
        Duration::from_secs(size.pick(2, 5, 10)),
    );
    let ns = Netns::new("bench-detect");
    let dir = tern_tests::TempDir::new("bench-detect");
    let file = dir.join("behaviours.json");
    std::fs::write(&file, twenty_behaviours().to_string()).expect("writing the behaviours");
    let file = file.to_string_lossy().into_owned();
    let with = ["--behaviors", file.as_str()];

    // A burst of 60 closed ports early in an interval of 2 s: the alarm, then its clearing
    // by the report of the next interval.
    let tern = Tern::start(&ns, &[&["--interval", "2"][..], &with].concat());
    let mut latency_ms = Vec::new();
    for _ in 0..scans {
        tern.next_report(Duration::from_secs(10));
        thread::sleep(Duration::from_millis(50));
        let breaking = ns.enter(|| {
            let mut breaking = None;
            for (n, port) in (21_000..21_060).enumerate() {
                let refused = TcpStream::connect(("127.0.0.1", port));
                assert!(refused.is_err(), "port {port} is open");
                if n == 50 {
                    breaking = Some(Instant::now());
                }
            }
            breaking.expect("51 attempts")
        });
        let (at, event) = tern.next_violation(Duration::from_secs(10));
        assert_eq!(event["violationEventType"], "in-alarm", "{event}");
        latency_ms.push(at.saturating_duration_since(breaking).as_secs_f64() * 1e3);
        let (_, event) = tern.next_violation(Duration::from_secs(10));
        assert_eq!(event["violationEventType"], "alarm-cleared", "{event}");
    }
    drop(tern);

    let idle_cpu = |args: &[&str]| {
        let tern = Tern::start(&ns, &[&["--interval", "300"][..], args].concat());
        thread::sleep(Duration::from_millis(300));
        let before = process_cpu_ns(tern.pid());
        thread::sleep(window);
        let used = process_cpu_ns(tern.pid()) - before;
        used as f64 / window.as_nanos() as f64 * 100.0
    };
    let (without, with) = (idle_cpu(&[]), idle_cpu(&with));
    let max = latency_ms.iter().copied().fold(0.0, f64::max);
    Figure {
        id: "8-detect",
        title: "8. Behaviours judged on the device: alarm latency and cost",
        columns: cols(&["measure", "tern", "goal"]),
        rows: vec![
            vec![
                format!("alarm after the reset that breaks the bound, median of {scans} scans"),
                format!("{} ms", fmt(median(&latency_ms), 0)),
                "< 1000 ms".to_owned(),
            ],
            vec![
                format!("alarm after the reset that breaks the bound, max of {scans} scans"),
                format!("{} ms", fmt(max, 0)),
                "< 1000 ms".to_owned(),
            ],
            vec![
                "CPU at a 300 s interval, idle, 20 behaviours".to_owned(),
                format!("{} % of one core", fmt(with, 4)),
                "< 0.1 %".to_owned(),
            ],
            vec![
                "CPU at a 300 s interval, idle, no behaviour".to_owned(),
                format!("{} % of one core", fmt(without, 4)),
                "-".to_owned(),
            ],
        ],
        notes: vec![format!(
            "20 behaviours, 11 of them on what the programs keep (9 counts, 2 interval lists), which tern reads every 250 ms between reports (a list only when its set changed); a scan is 60 connection attempts to closed ports on loopback in tern's namespace, made 50 ms after a report with a 2 s interval; latency from the 51st refused attempt to the violation event read from tern's stdout; CPU over a {} s window from the scheduler's accounting, with no report in it",
            window.as_secs()
        )],
        raw: json!({"latency_ms": latency_ms, "cpu_pct_idle_with": with, "cpu_pct_idle_without": without}),
    }
    .write();
}
