//! The kernel programs' own log: trouble they meet shows in tern's log, rate-limited, and the
//! line after a quiet period counts what was kept quiet.
//!
//! The trouble provoked is the cheapest real one: a full interval set. Binding and closing
//! a UDP socket on a new port puts one entry in `UDP_LISTENED` (16,384 entries, README), so
//! more binds than that in one interval overflow it, and the test knows exactly how many
//! entries did not fit. tern runs in a namespace of its own, where nothing else binds.

use std::{net::UdpSocket, ops::Range, thread, time::Duration};

use tern_tests::{Netns, Tern, custom_number};

/// Capacity of each interval set, as the README states it.
const SET_CAPACITY: u16 = 16_384;
/// The shortest time between two lines of one kind of trouble, as the README states it.
const QUIET: Duration = Duration::from_secs(10);
const FULL: &str = "kernel programs: UDP_LISTENED is full";

/// Binds and closes a UDP socket on each of `ports` of 127.0.0.1, on one CPU: the kernel
/// programs limit their lines per CPU, so the count a line carries covers what this CPU kept
/// quiet.
fn bind_each(ns: &Netns, cpu: usize, ports: Range<u16>) {
    ns.enter(move || {
        // SAFETY: cpu_set_t is a plain bit array; all zeros is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `cpu` is below CPU_SETSIZE (it came from a set of this size).
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: a valid set of the size given, for the calling thread (0).
        let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
        for port in ports {
            drop(UdpSocket::bind(("127.0.0.1", port)).unwrap_or_else(|e| panic!("{port}: {e}")));
        }
    });
}

/// The first CPU this process may run on.
fn some_cpu() -> usize {
    // SAFETY: as in bind_each.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: a valid set of the size given, filled for this process (0).
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(
        rc,
        0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    (0..libc::CPU_SETSIZE as usize)
        .find(|&cpu| {
            // SAFETY: reads a valid set, at an index below its size.
            unsafe { libc::CPU_ISSET(cpu, &set) }
        })
        .expect("this process may run on some CPU")
}

#[test]
fn a_full_map_is_logged_once_per_quiet_period_and_the_next_line_counts_the_rest() {
    let ns = Netns::new("klog");
    let tern = Tern::start(&ns, &["--interval", "3600"]);
    let cpu = some_cpu();
    let first = 10_000;
    let filled = first + SET_CAPACITY;
    bind_each(&ns, cpu, first..filled);
    // Three bursts of failures, each far faster than a line a second: the programs let the
    // first of each through, a second apart, and tern shows only the very first.
    let (burst, bursts, later) = (1_500, 3, 10);
    let storm = burst * bursts;
    for start in (filled..filled + storm).step_by(usize::from(burst)) {
        bind_each(&ns, cpu, start..start + burst);
        thread::sleep(Duration::from_millis(1_200));
    }
    let line = tern.wait_log(FULL, Duration::from_secs(10));
    assert!(
        !line.contains("more since"),
        "the first line follows nothing: {line}"
    );
    // Once the quiet period has passed, the next failure is let through with the count of
    // the storm's others; had any other line gone out meanwhile, it would be the one found.
    thread::sleep(QUIET + Duration::from_secs(1));
    bind_each(&ns, cpu, filled + storm..filled + storm + later);
    let line = tern.wait_log(FULL, Duration::from_secs(10));
    assert!(
        line.ends_with(&format!("({} more since the last such line)", storm - 1)),
        "{line}"
    );
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0));
    let more: Vec<_> = stopped
        .log
        .iter()
        .filter(|l| l.contains("kernel programs:"))
        .collect();
    assert!(more.is_empty(), "lines within the quiet period: {more:?}");
    // What the kernel counted agrees with what did not fit.
    let dropped: u64 = stopped
        .reports
        .iter()
        .map(|r| custom_number(r, "interval_details_dropped"))
        .sum();
    assert_eq!(dropped, u64::from(storm + later));
}
