// Over 400 lines: each way the state directory goes wrong (ids stored wrong or lost, a
// read-only, unwritable or full file system, a spool of 40 MB) needs its own world set up.
//! The spool and report ids when the state directory misbehaves. A real mosquitto with
//! mutual TLS and the responder playing the cloud receive what tern publishes; the test
//! makes the trouble itself (planted files, a read-only bind mount, a directory the account
//! may not write, a tiny tmpfs) and reads the truth from what the responder got, the UDP
//! traffic it sent across the veth pair, the files on disk and /proc.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};
use tern_tests::{
    Datagrams, LinkStats, Netns, TempDir, Tern,
    broker::{Cloud, Received, THING, Verdicts},
    proc_status, sh, spooled, wait_until,
};

/// The largest integer a JSON number (an IEEE double) holds exactly.
const ID_BOUND: u64 = (1 << 53) - 1;
/// The account tests run tern as (`--user nobody`).
const NOBODY: u32 = 65534;

/// THING's config straight to the broker, a report a second, with the keys of `tern` set
/// over the test defaults.
fn config(cloud: &Cloud, tern: Value) -> PathBuf {
    let mut keys = json!({"reconnect-max": 1});
    for (key, value) in tern.as_object().expect("tern keys") {
        keys[key] = value.clone();
    }
    cloud.direct_config(keys)
}

/// tern with `config` and `state`, once attached, with what it logged until then.
fn launch(cloud: &Cloud, config: &Path, state: &Path) -> (Tern, Vec<String>) {
    Tern::launch_logged(
        &cloud.pair.a,
        state,
        &["--config", config.to_str().unwrap()],
    )
}

/// THING's reports in arrival order, each once.
fn reports(cloud: &Cloud) -> Vec<(u64, Value)> {
    distinct(&cloud.responder.received())
}

fn ids(cloud: &Cloud) -> Vec<u64> {
    reports(cloud).into_iter().map(|(id, _)| id).collect()
}

/// Waits up to `timeout` until `n` distinct reports have arrived; returns their ids.
fn wait_ids(cloud: &Cloud, n: usize, timeout: Duration) -> Vec<u64> {
    wait_until(timeout, Duration::from_millis(50), || {
        let ids = ids(cloud);
        if ids.len() >= n { Ok(ids) } else { Err(ids) }
    })
    .unwrap_or_else(|ids| panic!("{} report(s) within {timeout:?}: {ids:?}", ids.len()))
}

/// Waits up to 30 s until the delivered reports account for `sent`: nothing lost.
fn wait_totals(cloud: &Cloud, sent: LinkStats) {
    let counted = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let reports = reports(cloud);
        let counted = LinkStats::reported(reports.iter().map(|(_, r)| r));
        if counted == sent {
            Ok(())
        } else {
            Err(counted)
        }
    });
    if let Err(counted) = counted {
        panic!("delivered reports add up to {counted:?}, the test sent {sent:?}");
    }
}

/// THING's reports in arrival order, each id once; panics on two different reports with one
/// id, or a copy the broker did not mark as its own redelivery.
fn distinct(received: &[Received]) -> Vec<(u64, Value)> {
    let mut seen: BTreeMap<u64, Value> = BTreeMap::new();
    let mut order = Vec::new();
    for r in received.iter().filter(|r| r.thing == THING) {
        let id = r.report["header"]["report_id"]
            .as_u64()
            .unwrap_or_else(|| panic!("report_id not an integer: {}", r.report));
        match seen.get(&id) {
            Some(copy) => {
                assert!(r.redelivered, "report {id} published twice");
                assert_eq!(copy, &r.report, "two different reports share id {id}");
            }
            None => {
                seen.insert(id, r.report.clone());
                order.push((id, r.report.clone()));
            }
        }
    }
    order
}

/// Strictly increasing in the order they arrived, and exactly representable as a JSON
/// number.
fn assert_sendable(ids: &[u64]) {
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "not increasing: {ids:?}"
    );
    assert!(ids.iter().all(|&id| id <= ID_BOUND), "over 2^53-1: {ids:?}");
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The account's own, as tern leaves it.
fn give_to_account(path: &Path, mode: u32) {
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A state directory as tern leaves it: the account's, 0700, with its spool.
fn state_dir(path: &Path) {
    fs::create_dir_all(path.join("spool")).unwrap();
    give_to_account(path, 0o700);
    give_to_account(&path.join("spool"), 0o700);
}

/// A report as tern spools it: long names, `connections` established connections.
fn spool_entry(id: u64, connections: u32) -> Vec<u8> {
    let list: Vec<Value> = (0..connections)
        .map(|i| {
            json!({"remote_addr": format!("10.{}.{}.{}:443", i / 62_500, i / 250 % 250, i % 250),
                   "local_port": 1 + i % 60_000, "local_interface": "ta"})
        })
        .collect();
    serde_json::to_vec(&json!({
        "header": {"report_id": id, "version": "1.0"},
        "metrics": {
            "network_stats": {"bytes_in": 100, "bytes_out": 0, "packets_in": 1,
                              "packets_out": 0},
            "tcp_connections": {"established_connections": {
                "connections": list, "total": connections}}
        }
    }))
    .unwrap()
}

/// Plants report `id` in the spool of `state`, as tern would have written it.
fn plant(state: &Path, id: u64, bytes: &[u8]) {
    let path = state.join("spool").join(format!("{id:020}.json"));
    fs::write(&path, bytes).unwrap();
    give_to_account(&path, 0o600);
}

/// Files in `state` and its spool that a failed write left: `*.tmp`, or empty.
fn leftovers(state: &Path) -> Vec<String> {
    [state.to_path_buf(), state.join("spool")]
        .iter()
        .filter_map(|dir| fs::read_dir(dir).ok())
        .flatten()
        .map(|e| e.unwrap())
        .filter(|e| {
            let meta = e.metadata().unwrap();
            meta.is_file() && (e.file_name().to_string_lossy().ends_with(".tmp") || meta.len() == 0)
        })
        .map(|e| e.path().display().to_string())
        .collect()
}

/// The lines of `log` containing `needle`.
fn said<'a>(log: &'a [String], needle: &str) -> Vec<&'a String> {
    log.iter().filter(|l| l.contains(needle)).collect()
}

/// A mount the test made, lazily unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    /// `dir` bind-mounted on itself, read-only.
    fn read_only(dir: &Path) -> Self {
        let path = dir.to_str().unwrap();
        sh("mount", &["--bind", path, path]);
        let mount = Self(dir.to_path_buf());
        mount.remount("ro");
        mount
    }

    /// A tmpfs of `bytes` on `dir`, the account's.
    fn tmpfs(dir: &Path, bytes: u64) -> Self {
        let options = format!("size={bytes},mode=0700,uid={NOBODY},gid={NOBODY}");
        sh(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &options,
                "tern-test",
                dir.to_str().unwrap(),
            ],
        );
        Self(dir.to_path_buf())
    }

    /// A bind mount made read-only (`ro`) or writable again (`rw`).
    fn remount(&self, how: &str) {
        let options = format!("remount,bind,{how}");
        sh("mount", &["-o", &options, self.0.to_str().unwrap()]);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A stored id near 2^64 made every report share one id, and their spool files overwrite
/// each other. The id is set aside with a log line, and the clock takes over: distinct,
/// increasing ids a JSON number holds exactly.
#[test]
fn a_stored_id_near_2_64_is_set_aside_and_ids_stay_distinct_and_under_2_53() {
    let cloud = Cloud::start("id-max", Verdicts::Judge);
    let state = cloud.state();
    state_dir(&state);
    let stored = u64::MAX - 2;
    fs::write(state.join("last_report_id"), format!("{stored}\n")).unwrap();
    give_to_account(&state.join("last_report_id"), 0o600);
    let started = now_ms();
    let (tern, log) = launch(&cloud, &config(&cloud, json!({})), &state);
    let ids = wait_ids(&cloud, 5, Duration::from_secs(20));
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    assert_sendable(&ids);
    assert!(
        ids[0] >= started - 1000 && *ids.last().unwrap() <= now_ms(),
        "not the clock's: {ids:?}"
    );
    let lines = said(&log, "last_report_id holds");
    assert_eq!(lines.len(), 1, "{log:?}");
    assert!(
        lines[0].contains(&stored.to_string())
            && lines[0].contains("2^53")
            && lines[0].contains("last_report_id.corrupt"),
        "{}",
        lines[0]
    );
    assert_eq!(
        fs::read_to_string(state.join("last_report_id.corrupt")).unwrap(),
        format!("{stored}\n")
    );
}

/// An id more than 10 years ahead of a set clock is not one tern gave: set aside, said.
#[test]
fn a_stored_id_far_ahead_of_the_clock_is_set_aside_and_the_clock_takes_over() {
    let ns = Netns::new("id-ahead");
    let dir = TempDir::new("id-ahead");
    let stored = now_ms() + 20 * 31_557_600_000;
    fs::write(dir.join("last_report_id"), format!("{stored}\n")).unwrap();
    let started = now_ms();
    let (tern, log) =
        Tern::launch_logged(&ns, &dir.path, &["--output", "stdout", "--interval", "1"]);
    let ids: Vec<u64> = (0..3)
        .map(|_| {
            tern.next_report(Duration::from_secs(10))["header"]["report_id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    assert_sendable(&ids);
    assert!(
        ids[0] >= started - 1000 && ids[2] <= now_ms(),
        "not the clock's: {ids:?}"
    );
    let lines = said(&log, "more than 10 years ahead of the clock");
    assert_eq!(lines.len(), 1, "{log:?}");
    assert!(lines[0].contains("last_report_id.corrupt"), "{}", lines[0]);
    assert!(dir.join("last_report_id.corrupt").exists());
}

/// With the stored id lost and reports of a clock an hour ahead still spooled, new reports
/// go on above the spooled ones: the broker sees ids increase.
#[test]
fn with_the_stored_id_lost_new_ids_go_on_above_the_spooled_ones() {
    let cloud = Cloud::start("id-lost", Verdicts::Judge);
    let state = cloud.state();
    state_dir(&state);
    let base = now_ms() + 3_600_000;
    let planted = [base, base + 1, base + 2];
    for id in planted {
        plant(&state, id, &spool_entry(id, 1));
    }
    let (tern, log) = launch(&cloud, &config(&cloud, json!({})), &state);
    let ids = wait_ids(&cloud, 6, Duration::from_secs(20));
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    assert_eq!(ids[..3], planted, "the spooled reports first");
    assert_sendable(&ids);
    let lines = said(&log, &format!("report ids go on above {}", base + 2));
    assert_eq!(lines.len(), 1, "{log:?}");
}

/// A read-only state directory with the broker up: reports go out from memory, the trouble
/// is said once with its fix, and once it is writable again reports are spooled again;
/// nothing is lost and no write leaves a file behind.
#[test]
fn with_the_state_directory_read_only_reports_go_out_from_memory_until_it_is_writable() {
    let mut cloud = Cloud::start("read-only", Verdicts::Judge);
    let state = cloud.state();
    state_dir(&state);
    let mount = Mount::read_only(&state);
    let mut udp = Datagrams::new(&cloud.pair);
    let (tern, mut log) = launch(&cloud, &config(&cloud, json!({})), &state);
    udp.send(100, 500, 0, 0);
    let first = wait_ids(&cloud, 3, Duration::from_secs(15));
    assert_sendable(&first);

    // The broker away: reports wait in memory; the directory writable: they go to disk.
    cloud.broker.stop();
    udp.send(50, 700, 0, 0);
    thread::sleep(Duration::from_millis(2500));
    mount.remount("rw");
    log.extend(tern.log_until("held in memory are in it", Duration::from_secs(10)));
    let on_disk = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let n = spooled(&state);
        if n >= 2 { Ok(n) } else { Err(n) }
    });
    assert!(on_disk.is_ok(), "{on_disk:?} report(s) spooled");
    cloud.broker.restart();
    udp.send(30, 900, 0, 0);
    wait_totals(&cloud, udp.sent);
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    log.extend(stopped.log);

    assert_sendable(&ids(&cloud));
    let lines = said(&log, "cannot write the spool");
    assert_eq!(lines.len(), 1, "said once: {lines:?}");
    let spool = state.join("spool");
    for words in [
        spool.to_str().unwrap(),
        "Read-only file system",
        "remount it read-write",
    ] {
        assert!(lines[0].contains(words), "{words:?} in {}", lines[0]);
    }
    // The last report's readings, kept beside the spool, are said once too, and their return.
    let lines = said(&log, "until it can be written, a crash would report again");
    assert_eq!(lines.len(), 1, "said once: {lines:?}");
    assert_eq!(
        said(&log, "readings of the last report are kept again").len(),
        1
    );
    assert_eq!(leftovers(&state), Vec::<String>::new());
}

/// The spool's directory turned unwritable for the account (EACCES) with the broker away:
/// reports wait in memory, and at stop the log says how many are lost rather than nothing.
#[test]
fn reports_held_in_memory_at_stop_are_counted_in_the_log() {
    let mut cloud = Cloud::start("held", Verdicts::Judge);
    cloud.broker.stop();
    let state = cloud.state();
    state_dir(&state);
    let (tern, _) = launch(&cloud, &config(&cloud, json!({})), &state);
    give_to_account(&state.join("spool"), 0o500);
    thread::sleep(Duration::from_millis(3500));
    let stopped = tern.stop();
    give_to_account(&state.join("spool"), 0o700);
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    let lines = said(&stopped.log, "held in memory are lost");
    assert_eq!(lines.len(), 1, "{:?}", stopped.log);
    let held: u64 = lines[0]
        .split("] ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {}", lines[0]));
    assert!(held >= 2, "{}", lines[0]);
    let lines = said(&stopped.log, "cannot write the spool");
    assert_eq!(lines.len(), 1, "said once: {lines:?}");
    assert!(
        lines[0].contains("Permission denied") && lines[0].contains("may not write there"),
        "{}",
        lines[0]
    );
    assert_eq!(leftovers(&state), Vec::<String>::new());
}

/// A full disk (a 16 kB tmpfs as the state directory) with the broker away: writes that
/// fail leave nothing behind, the trouble is said with its fix, and every report reaches
/// the broker once it is back.
#[test]
fn a_full_disk_leaves_no_temporary_file_and_every_report_still_goes_out() {
    let mut cloud = Cloud::start("full-disk", Verdicts::Judge);
    cloud.broker.stop();
    let state = cloud.state();
    fs::create_dir_all(&state).unwrap();
    let _mount = Mount::tmpfs(&state, 4 * 4096);
    let mut udp = Datagrams::new(&cloud.pair);
    let (tern, _) = launch(&cloud, &config(&cloud, json!({})), &state);
    udp.send(80, 600, 0, 0);
    let full = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        let avail = sh("df", &["-B1", "--output=avail", state.to_str().unwrap()]);
        match avail.lines().nth(1).map(str::trim) {
            Some("0") => Ok(()),
            other => Err(other.map(str::to_owned)),
        }
    });
    assert!(full.is_ok(), "the tmpfs did not fill: {full:?}");
    udp.send(40, 800, 0, 0);
    thread::sleep(Duration::from_millis(2500));
    assert_eq!(leftovers(&state), Vec::<String>::new());

    cloud.broker.restart();
    wait_totals(&cloud, udp.sent);
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    assert_sendable(&ids(&cloud));
    assert_eq!(leftovers(&state), Vec::<String>::new());
    // Said once, unless the disk filled again after the broker came back.
    let lines = said(&stopped.log, "cannot write the spool");
    assert!(!lines.is_empty(), "{:?}", stopped.log);
    assert!(
        lines[0].contains("No space left on device") && lines[0].contains("free space there"),
        "{}",
        lines[0]
    );
}

/// A kB figure of /proc/<pid>/status, or of /proc/<pid>/io in bytes.
fn proc_figure(pid: u32, file: &str, field: &str) -> u64 {
    let value = match file {
        "status" => proc_status(pid).remove(field),
        _ => fs::read_to_string(format!("/proc/{pid}/{file}"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}: ")).map(str::to_owned)),
    }
    .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/{file}"));
    value
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{field}: {value}"))
}

/// Resident memory (VmRSS) and bytes read (rchar) of `tern` once it has run 2 s.
fn settled(tern: &Tern) -> (u64, u64) {
    thread::sleep(Duration::from_secs(2));
    (
        proc_figure(tern.pid(), "status", "VmRSS"),
        proc_figure(tern.pid(), "io", "rchar"),
    )
}

/// A 40 MB spool (spool-bytes 40 MB) is opened from its names and sizes alone: neither read
/// nor held, so tern's resident memory stays that of an empty spool; and once a spool of
/// 40 MB has drained, what is left resident is far below its size.
#[test]
fn a_40_mb_spool_is_not_read_at_open_nor_held_after_it_drains() {
    const SPOOL: u64 = 40 << 20;
    let mut cloud = Cloud::start("memory", Verdicts::Judge);
    cloud.broker.stop();
    let config = config(&cloud, json!({"spool-bytes": SPOOL}));
    let empty = cloud.dir.join("empty");
    state_dir(&empty);
    let (tern, _) = launch(&cloud, &config, &empty);
    let (rss_empty, read_empty) = settled(&tern);
    drop(tern);

    // Entries of 60,000 connections, about as large as tern's reports get.
    let big = cloud.dir.join("big");
    state_dir(&big);
    let first = now_ms() - 3_600_000;
    let entry = spool_entry(first, 60_000);
    for n in 0..SPOOL / entry.len() as u64 {
        plant(&big, first + n, &spool_entry(first + n, 60_000));
    }
    let (tern, _) = launch(&cloud, &config, &big);
    let (rss_big, read_big) = settled(&tern);
    drop(tern);
    eprintln!(
        "empty spool: {rss_empty} kB resident, {read_empty} bytes read; 40 MB spool of {} \
         byte entries: {rss_big} kB, {read_big} bytes",
        entry.len()
    );
    let one = entry.len() as u64;
    assert!(
        read_big < read_empty + one,
        "opening read {read_big} bytes, an empty spool {read_empty}"
    );
    assert!(
        rss_big < rss_empty + one / 1024,
        "opening took {rss_big} kB resident, an empty spool {rss_empty} kB"
    );

    // Entries of about 100 kB, within the packet limit: drained, the spool leaves little.
    let state = cloud.state();
    state_dir(&state);
    let entry = spool_entry(first, 1300);
    let count = SPOOL / entry.len() as u64;
    for n in 0..count {
        plant(&state, first + n, &spool_entry(first + n, 1300));
    }
    let (tern, _) = launch(&cloud, &config, &state);
    cloud.broker.restart();
    let drained = wait_until(
        Duration::from_secs(120),
        Duration::from_millis(200),
        || match spooled(&state) {
            0 => Ok(()),
            left => Err(left),
        },
    );
    assert!(drained.is_ok(), "{drained:?} report(s) still spooled");
    let (rss_drained, _) = settled(&tern);
    eprintln!(
        "40 MB spool of {} byte entries drained: {rss_drained} kB",
        entry.len()
    );
    assert!(
        rss_drained < rss_empty + (SPOOL >> 10) / 5,
        "after draining: {rss_drained} kB resident, an empty spool {rss_empty} kB"
    );
    assert!(ids(&cloud).len() as u64 >= count);
    assert_sendable(&ids(&cloud));
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
}
