//! Report ids across restarts and clock steps, with the state directory as the only memory;
//! and what tern does once its reports can get nowhere.

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

/// `tern run | head -1`: once stdout's reader is gone no report can get anywhere, and tern
/// says so and stops instead of losing them one by one.
#[test]
fn with_stdout_closed_tern_says_so_and_stops() {
    let ns = Netns::new("closed");
    let state = TempDir::new("closed");
    let mut tern = std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.path()))
        .arg(tern_tests::tern_bin())
        .args([
            "run",
            "--user",
            "nobody",
            "--shared-user",
            "--interval",
            "1",
        ])
        .arg("--state-dir")
        .arg(state.path.join("state"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tern");
    let mut stdout = std::io::BufReader::new(tern.stdout.take().expect("stdout"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).expect("a first report");
    assert!(first.starts_with('{'), "{first}");
    drop(stdout);
    let status = tern_tests::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        tern.try_wait().ok().flatten().ok_or(())
    });
    let Ok(status) = status else {
        let _ = tern.kill();
        panic!("tern went on with stdout closed");
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut tern.stderr.take().expect("stderr"), &mut log).unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("stdout is closed") && log.contains("stopping"),
        "{log}"
    );
}
