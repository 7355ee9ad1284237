//! Benchmarks: figures, not pass/fail. `cargo xtask bench` runs them (they are ignored by a
//! plain test run); each prints its figures on stdout.

use std::{net::TcpListener, thread, time::Duration};

use tern_tests::{ADDR_A, Clients, Pair, Tern};

/// Not a benchmark: the client process of `Clients` (tests/src/lib.rs).
#[test]
#[ignore = "run by the benchmarks"]
fn hold_connections() {
    tern_tests::hold_connections();
}

/// Time tern takes to build and encode one report (read the maps, resolve interfaces,
/// encode within the budget) with 10,000 established connections, over several reports.
#[test]
#[ignore = "a benchmark: cargo xtask bench"]
fn report_with_10000_connections() {
    const N: usize = 10_000;
    let pair = Pair::new();
    let listener = pair.a.enter(|| TcpListener::bind((ADDR_A, 7900)).unwrap());
    let server = thread::spawn(move || {
        (0..N)
            .map(|_| listener.accept().unwrap().0)
            .collect::<Vec<_>>()
    });
    let clients = Clients::connect(&pair.b, ADDR_A, 7900, N);
    let served = server.join().unwrap();
    let tern = Tern::start_with_env(&pair.a, &["--interval", "1"], &[("TERN_LOG", "debug")]);
    let mut micros: Vec<u64> = (0..7)
        .map(|_| {
            let line = tern.wait_log("built in", Duration::from_secs(15));
            line.split("built in ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no time in {line:?}"))
        })
        .collect();
    micros.sort_unstable();
    println!(
        "report with {N} connections: median {:.1} ms (min {:.1}, max {:.1}) over {} reports",
        micros[micros.len() / 2] as f64 / 1000.0,
        micros[0] as f64 / 1000.0,
        micros[micros.len() - 1] as f64 / 1000.0,
        micros.len()
    );
    drop((clients, served));
}
