//! Report ids across restarts and clock steps, with the state directory as the only memory.

use std::{
    fs,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tern_tests::{Netns, TempDir, Tern};

fn ids(tern: Tern, at_least: usize) -> Vec<u64> {
    let mut ids: Vec<u64> = (0..at_least)
        .map(|_| {
            tern.next_report(Duration::from_secs(10))["header"]["report_id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    ids.extend(
        stopped
            .reports
            .iter()
            .map(|r| r["header"]["report_id"].as_u64().unwrap()),
    );
    ids
}

#[test]
fn report_ids_keep_increasing_across_restarts_and_a_clock_behind_them() {
    let ns = Netns::new("ids");
    let dir = TempDir::new("ids");
    let args = ["--output", "stdout", "--interval", "1"];

    let first = ids(Tern::launch(&ns, &dir.path, &args), 2);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(first.windows(2).all(|w| w[0] < w[1]), "{first:?}");
    assert!(
        first[0] >= now_ms - 60_000 && first[0] <= now_ms,
        "epoch milliseconds: {first:?}"
    );

    let second = ids(Tern::launch(&ns, &dir.path, &args), 2);
    assert!(
        second[0] > *first.last().unwrap(),
        "{first:?} then {second:?}"
    );

    // As after a reboot with the clock a day behind the last report: ids go on from the last.
    let ahead = now_ms + 86_400_000;
    fs::write(dir.path.join("last_report_id"), format!("{ahead}\n")).unwrap();
    let third = ids(Tern::launch(&ns, &dir.path, &args), 2);
    assert_eq!(third[0], ahead + 1, "{third:?}");
    assert!(third.windows(2).all(|w| w[0] < w[1]), "{third:?}");
}

#[test]
fn a_state_directory_made_read_only_is_named_and_reports_go_on() {
    let ns = Netns::new("rostate");
    let dir = TempDir::new("rostate");
    let tern = Tern::launch(&ns, &dir.path, &["--output", "stdout", "--interval", "1"]);
    tern.next_report(Duration::from_secs(10));
    // Read-only for its owner (the agent's account) too.
    fs::set_permissions(
        &dir.path,
        std::os::unix::fs::PermissionsExt::from_mode(0o500),
    )
    .unwrap();
    let line = tern.wait_log("report ids may not continue", Duration::from_secs(10));
    assert!(line.contains(dir.path.to_str().unwrap()), "{line}");
    let ids: Vec<u64> = (0..3)
        .map(|_| {
            tern.next_report(Duration::from_secs(10))["header"]["report_id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
}
