//! A crash loses nothing and repeats nothing: what the kernel counted before `kill -9` is in
//! the next tern's reports, once, while the programs still die with the process. Ground
//! truth: the datagrams the test sent and `ip -s link`.
//!
//! Tern keeps its counts in bpffs at /sys/fs/bpf, where systemd mounts it; on a host without
//! one the test mounts it for its own run and unmounts it after.

use std::{thread, time::Duration};

use tern_tests::{
    Bpffs, DEV_A, LinkStats, Pair, TempDir, Tern, UDP_OVERHEAD, kernel_programs, pins_of, transfer,
    wait_until,
};

const INTERVAL: &[&str] = &["--interval", "1"];

#[test]
fn what_a_killed_tern_counted_is_reported_once_by_the_next() {
    let _bpffs = Bpffs::ensure();
    let pair = Pair::new();
    let state = TempDir::new("crash");
    let state_dir = state.join("state");
    let programs_before = kernel_programs();
    let before = pair.a.link_stats(DEV_A);
    let (a, b) = pair.udp();

    let first = Tern::launch(&pair.a, &state_dir, INTERVAL);
    transfer(&b, &a, 300, 100);
    // Some of it reported by the first tern, so that a repeat would show.
    let mut reports = vec![first.next_report(Duration::from_secs(10))];
    thread::sleep(Duration::from_millis(1200));
    transfer(&b, &a, 1000, 100);
    transfer(&a, &b, 400, 60);
    reports.extend(first.kill().reports);
    let pins = pins_of(&state_dir);
    let kept = pins.is_dir();
    // The programs go with the process: only the maps stay.
    let gone = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let left: Vec<u64> = kernel_programs()
            .difference(&programs_before)
            .copied()
            .collect();
        if left.is_empty() { Ok(()) } else { Err(left) }
    });
    assert_eq!(
        gone,
        Ok(()),
        "programs of the killed tern left in the kernel"
    );

    let second = Tern::launch(&pair.a, &state_dir, INTERVAL);
    transfer(&b, &a, 200, 100);
    reports.push(second.next_report(Duration::from_secs(10)));
    let stopped = second.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    reports.extend(stopped.reports);

    let sent = LinkStats {
        packets_in: 1500,
        bytes_in: 1500 * (100 + UDP_OVERHEAD),
        packets_out: 400,
        bytes_out: 400 * (60 + UDP_OVERHEAD),
    };
    let counted = LinkStats::reported(reports.iter());
    assert_eq!(
        counted, sent,
        "both terns' reports against the datagrams sent"
    );
    assert_eq!(
        counted,
        pair.a.link_stats(DEV_A).since(before),
        "both terns' reports against `ip -s link`"
    );
    assert!(
        kept,
        "the counts were not kept in {} after the kill",
        pins.display()
    );
    assert!(
        !pins.exists(),
        "a graceful stop reports everything and keeps no maps, yet {} is there",
        pins.display()
    );
}
