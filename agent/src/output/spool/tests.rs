// Over 400 lines: every way the spool keeps, bounds and sets aside its entries, reports and
// violations, each with its own world of files.
//! The spool's tests: entries on disk and in memory, their bounds, and what is set aside.

use super::*;
use crate::report::{Metrics, NetworkStats};

/// A report of `bytes_in` bytes of traffic.
pub fn report(id: u64, bytes_in: u64) -> Report {
    Report::new(
        id,
        Metrics {
            network_stats: Some(NetworkStats {
                bytes_in,
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

#[test]
fn fuzz_spool_entries() {
    let mut full = report(7, 1500);
    full.metrics.listening_tcp_ports = Some(crate::report::PortList {
        ports: vec![crate::report::Port {
            port: 22,
            interface: Some("eth0".into()),
        }],
        total: 1,
    });
    full.custom_metrics.insert(
        "interval_execs".into(),
        [crate::report::CustomMetric::from(3)],
    );
    let mut seeds = [report(1, 10), full]
        .map(|r| serde_json::to_vec(&r).unwrap())
        .to_vec();
    seeds.push(serde_json::to_vec(&violation("a", 1_000)).unwrap());
    crate::host::fuzz::run("spool", &seeds, |bytes| {
        let _ = parse(bytes);
        let _ = serde_json::from_slice::<Violation>(bytes);
    });
}

fn temp(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-spool-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn open(dir: &Path, max_bytes: u64) -> Spool {
    Spool::open(dir, max_bytes).0
}

/// The names in the spool directory of `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir.join(DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn name(id: u64, suffix: &str) -> String {
    format!("{id:020}{suffix}")
}

#[test]
fn reports_survive_a_reopen_in_order_until_removed() {
    let dir = temp("reopen");
    let mut spool = open(&dir, 1 << 20);
    for id in [30, 10, 20] {
        assert_eq!(spool.push(&report(id, id * 100), &[]).unwrap(), 0);
    }
    spool.remove(10);
    let mut again = open(&dir, 1 << 20);
    let ids: Vec<u64> = again.ids().collect();
    assert_eq!(ids, [20, 30]);
    assert_eq!(again.newest(), Some(30));
    assert_eq!(again.read(20).unwrap(), report(20, 2000));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_trailer_rides_with_its_report_and_is_no_part_of_it() {
    let dir = temp("trailer");
    let mut spool = open(&dir, 1 << 20);
    spool.push(&report(40, 1), b"{\"readings\":[1,2]}").unwrap();
    spool.push(&report(41, 2), &[]).unwrap();
    let mut again = open(&dir, 1 << 20);
    assert_eq!(again.read(40).unwrap(), report(40, 1));
    assert_eq!(again.trailer(40).unwrap(), b"{\"readings\":[1,2]}");
    assert_eq!(again.trailer(41), None);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn when_full_the_oldest_goes_first() {
    let dir = temp("full");
    let size = serde_json::to_vec(&report(1_000_000, 1)).unwrap().len() as u64;
    let mut spool = open(&dir, size * 3);
    let mut dropped = 0;
    for id in 1_000_000..1_000_005 {
        dropped += spool.push(&report(id, 1), &[]).unwrap();
    }
    assert_eq!(dropped, 2);
    let ids: Vec<u64> = spool.ids().collect();
    assert_eq!(ids, [1_000_002, 1_000_003, 1_000_004]);
    assert_eq!(fs::read_dir(dir.join(DIR)).unwrap().count(), 3);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_spool_over_its_bound_drops_its_oldest_at_open() {
    let dir = temp("over");
    let size = serde_json::to_vec(&report(1_000_000, 1)).unwrap().len() as u64;
    let mut spool = open(&dir, 1 << 20);
    for id in 1_000_000..1_000_005 {
        spool.push(&report(id, 1), &[]).unwrap();
    }
    let (again, dropped) = Spool::open(&dir, size * 3);
    assert_eq!(dropped, 2);
    assert_eq!(again.bytes, size * 3);
    assert_eq!(
        names(&dir),
        (1_000_002..1_000_005)
            .map(|id| name(id, ".json"))
            .collect::<Vec<_>>()
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn opening_reads_no_entry_and_sets_aside_names_no_report_could_have() {
    let dir = temp("names");
    fs::create_dir_all(dir.join(DIR)).unwrap();
    let planted = [
        (name(10, ".json"), 10),
        // Garbage in a well-named entry is found when it is read, not at open.
        (name(11, ".json"), 10),
        (name(u64::MAX - 1, ".json"), 10),
        (name(ids::ID_BOUND, ".json"), 10),
        ("12.5.json".into(), 10),
        (name(13, ".json"), 2000),
        (name(14, ".tmp"), 10),
    ];
    for (name, size) in &planted {
        fs::write(dir.join(DIR).join(name), vec![b'x'; *size]).unwrap();
    }
    let mut spool = open(&dir, 1000);
    assert_eq!(spool.ids().collect::<Vec<_>>(), [10, 11]);
    assert_eq!(spool.bytes, 20);
    let mut expected = vec![
        name(10, ".json"),
        name(11, ".json"),
        name(u64::MAX - 1, ".corrupt"),
        name(ids::ID_BOUND, ".corrupt"),
        "12.5.corrupt".into(),
        name(13, ".corrupt"),
    ];
    expected.sort();
    assert_eq!(names(&dir), expected);
    assert!(spool.read(11).is_none());
    assert_eq!(spool.ids().collect::<Vec<_>>(), [10]);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reports_the_disk_refuses_wait_in_memory_bounded_then_go_to_disk() {
    let dir = temp("held");
    let size = serde_json::to_vec(&report(1_000_000, 1)).unwrap().len() as u64;
    let mut spool = open(&dir, size * 3);
    spool.push(&report(1_000_000, 1), &[]).unwrap();
    // A file where the spool's directory was: every write fails.
    fs::remove_dir_all(dir.join(DIR)).unwrap();
    fs::write(dir.join(DIR), b"").unwrap();
    let mut dropped = 0;
    for id in 1_000_001..1_000_005 {
        dropped += spool.push(&report(id, id % 10), &[]).unwrap();
    }
    assert_eq!(dropped, 2, "one on disk and one in memory");
    assert!(spool.unwritable);
    assert_eq!(
        spool.ids().collect::<Vec<_>>(),
        [1_000_002, 1_000_003, 1_000_004]
    );
    assert_eq!(spool.read(1_000_003).unwrap(), report(1_000_003, 3));
    spool.remove(1_000_003);

    fs::remove_file(dir.join(DIR)).unwrap();
    spool.push(&report(1_000_005, 5), &[]).unwrap();
    assert!(!spool.unwritable);
    assert!(spool.entries.values().all(|e| matches!(e, Entry::Disk(_))));
    assert_eq!(
        names(&dir),
        [1_000_002, 1_000_004, 1_000_005].map(|id| name(id, ".json"))
    );
    let mut again = open(&dir, size * 3);
    assert_eq!(again.read(1_000_004).unwrap(), report(1_000_004, 4));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_spool_that_cannot_be_made_starts_in_memory() {
    let dir = temp("unmade");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(DIR), b"").unwrap();
    let (mut spool, dropped) = Spool::open(&dir, 1 << 20);
    assert_eq!(dropped, 0);
    assert!(spool.unwritable);
    spool.push(&report(1, 1), &[]).unwrap();
    assert_eq!(spool.read(1).unwrap(), report(1, 1));
    assert!(matches!(spool.entries[&Key(1, 0)], Entry::Held(_)));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn at_close_held_reports_go_to_disk_if_it_takes_them_now() {
    let dir = temp("close");
    let mut spool = open(&dir, 1 << 20);
    fs::remove_dir_all(dir.join(DIR)).unwrap();
    fs::write(dir.join(DIR), b"").unwrap();
    spool.push(&report(1, 1), &[]).unwrap();
    spool.push(&report(2, 1), &[]).unwrap();
    assert!(spool.unwritable);
    fs::remove_file(dir.join(DIR)).unwrap();
    spool.close();
    assert_eq!(names(&dir), [1, 2].map(|id| name(id, ".json")));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_entry_that_breaks_the_documents_rules_is_set_aside_not_sent() {
    let dir = temp("rules");
    fs::create_dir_all(dir.join(DIR)).unwrap();
    let planted = [
        (
            7,
            r#"{"header":{"report_id":7,"version":"2.0"},"metrics":{"network_stats":{"bytes_in":1,"bytes_out":1,"packets_in":1,"packets_out":1}}}"#,
        ),
        (
            8,
            r#"{"header":{"report_id":8,"version":"1.0"},"metrics":{"listening_tcp_ports":{"ports":[{"port":22}],"total":99999}}}"#,
        ),
        (
            9,
            r#"{"header":{"report_id":9,"version":"1.0"},"custom_metrics":{"aws:forged":[{"number":1}]}}"#,
        ),
        (
            10,
            r#"{"header":{"report_id":10,"version":"1.0"},"metrics":{"listening_tcp_ports":{"ports":[{"port":22}],"total":1}}}"#,
        ),
        (
            11,
            r#"{"header":{"report_id":12,"version":"1.0"},"metrics":{"listening_tcp_ports":{"ports":[{"port":22}],"total":1}}}"#,
        ),
    ];
    for (id, text) in planted {
        fs::write(dir.join(DIR).join(name(id, ".json")), text).unwrap();
    }
    let mut spool = open(&dir, 1 << 20);
    let sent: Vec<u64> = [7, 8, 9, 10, 11]
        .into_iter()
        .filter(|&id| spool.read(id).is_some())
        .collect();
    assert_eq!(sent, [10]);
    assert_eq!(spool.ids().collect::<Vec<_>>(), [10]);
    for id in [7, 8, 9, 11] {
        assert!(dir.join(DIR).join(name(id, ".corrupt")).exists(), "{id}");
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_entry_gone_bad_after_opening_is_set_aside_when_read() {
    let dir = temp("bad-later");
    let mut spool = open(&dir, 1 << 20);
    spool.push(&report(6, 1), &[]).unwrap();
    spool.push(&report(7, 1), &[]).unwrap();
    fs::write(spool.path(Key(6, 0)), b"{not json").unwrap();
    assert!(spool.read(6).is_none());
    assert_eq!(spool.ids().collect::<Vec<_>>(), [7]);
    assert!(dir.join(DIR).join(name(6, ".corrupt")).exists());
    assert_eq!(spool.read(7).unwrap(), report(7, 1));
    fs::remove_dir_all(&dir).unwrap();
}

/// An alarm of behaviour `name`, raised at `millis`.
pub fn violation(name: &str, millis: u64) -> Violation {
    Violation {
        violation_id: format!("gw-7/{name}/{millis}"),
        thing_name: "gw-7".into(),
        security_profile_name: "tern".into(),
        behavior: serde_json::json!({"name": name, "metric": "aws:num-listening-tcp-ports",
            "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 0}}}),
        metric_value: serde_json::json!({"count": 1}),
        violation_event_type: crate::detect::violation::EventType::InAlarm,
        violation_event_time: millis / 1000,
    }
}

#[test]
fn violations_survive_a_reopen_after_the_report_they_were_judged_on() {
    let dir = temp("violations");
    let mut spool = open(&dir, 1 << 20);
    spool.push(&report(10, 1), b"{\"readings\":[]}").unwrap();
    spool.push_violation(10, 1, &violation("a", 1_000)).unwrap();
    spool.push_violation(10, 2, &violation("b", 2_000)).unwrap();
    spool.push(&report(20, 2), &[]).unwrap();
    spool.push_violation(20, 1, &violation("a", 3_000)).unwrap();
    assert!(spool.push_violation(20, 0, &violation("c", 4_000)).is_err());
    let mut expected = [
        name(10, ".json"),
        name(10, "-1.violation"),
        name(10, "-2.violation"),
        name(20, ".json"),
        name(20, "-1.violation"),
    ];
    expected.sort();
    assert_eq!(names(&dir), expected);

    let mut again = open(&dir, 1 << 20);
    assert_eq!(again.ids().collect::<Vec<_>>(), [10, 20]);
    assert_eq!(again.newest(), Some(20));
    assert_eq!(again.trailer(10).unwrap(), b"{\"readings\":[]}");
    assert_eq!(again.counts(), (2, 3));
    assert_eq!(again.first_violation(), Some(Key(10, 1)));
    assert_eq!(
        again.read_violation(Key(10, 1)).unwrap(),
        violation("a", 1_000)
    );
    assert_eq!(
        again.read_violation(Key(10, 0)),
        None,
        "a report is no violation"
    );
    again.remove(Key(10, 1));
    again.remove(10);
    assert_eq!(again.first_violation(), Some(Key(10, 2)));
    assert_eq!(again.ids().collect::<Vec<_>>(), [20]);
    assert_eq!(again.counts(), (1, 2));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn when_full_the_oldest_entries_go_violations_too_never_the_newest_report() {
    let dir = temp("full-violations");
    let report_size = serde_json::to_vec(&report(1_000_000, 1)).unwrap().len() as u64;
    let violation_size = serde_json::to_vec(&violation("a", 1_000)).unwrap().len() as u64;
    assert!(violation_size > report_size, "the sums below take it");
    let mut spool = open(&dir, report_size * 2 + violation_size * 3);
    spool.push(&report(1_000_000, 1), &[]).unwrap();
    spool
        .push_violation(1_000_000, 1, &violation("a", 1_000))
        .unwrap();
    spool.push(&report(1_000_001, 1), &[]).unwrap();
    for n in 1..3 {
        let dropped = spool.push_violation(1_000_001, n, &violation("a", 2_000));
        assert_eq!(dropped.unwrap(), 0, "all within the bound");
    }
    // One more: the oldest entries, a report and a violation, go.
    let dropped = spool.push_violation(1_000_001, 3, &violation("b", 3_000));
    assert_eq!(dropped.unwrap(), 1, "one report");
    assert_eq!(spool.ids().collect::<Vec<_>>(), [1_000_001]);
    assert_eq!(spool.first_violation(), Some(Key(1_000_001, 1)));
    // One more: the oldest violation goes, never the newest report.
    let dropped = spool.push_violation(1_000_001, 4, &violation("c", 4_000));
    assert_eq!(dropped.unwrap(), 0, "no report");
    assert_eq!(spool.ids().collect::<Vec<_>>(), [1_000_001]);
    assert_eq!(spool.first_violation(), Some(Key(1_000_001, 2)));
    assert!(spool.bytes <= spool.max_bytes);
    let mut expected = [
        name(1_000_001, ".json"),
        name(1_000_001, "-2.violation"),
        name(1_000_001, "-3.violation"),
        name(1_000_001, "-4.violation"),
    ];
    expected.sort();
    assert_eq!(names(&dir), expected);
    fs::remove_dir_all(&dir).unwrap();

    // A violation bigger than the whole spool goes itself; the newest report stays.
    let dir = temp("tiny-violations");
    let mut tiny = open(&dir, report_size);
    tiny.push(&report(1_000_002, 1), &[]).unwrap();
    let dropped = tiny.push_violation(1_000_002, 1, &violation("a", 1_000));
    assert_eq!(dropped.unwrap(), 0);
    assert_eq!(tiny.counts(), (1, 0));
    assert_eq!(names(&dir), [name(1_000_002, ".json")]);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn violation_entries_that_are_not_one_are_set_aside() {
    let dir = temp("bad-violations");
    fs::create_dir_all(dir.join(DIR)).unwrap();
    let good = serde_json::to_vec(&violation("a", 1_000)).unwrap();
    let planted: [(String, &[u8]); 5] = [
        (name(10, "-1.violation"), &good),
        (name(10, "-2.violation"), b"{\"violationId\":1}"),
        (name(10, "-0.violation"), &good),
        (name(10, "-x.violation"), &good),
        (name(0, "-1.violation"), &good),
    ];
    for (name, bytes) in &planted {
        fs::write(dir.join(DIR).join(name), bytes).unwrap();
    }
    let mut spool = open(&dir, 1 << 20);
    assert_eq!(spool.counts(), (0, 2));
    assert_eq!(spool.read_violation(Key(10, 2)), None);
    assert_eq!(
        spool.read_violation(Key(10, 1)).unwrap(),
        violation("a", 1_000)
    );
    let mut expected = vec![
        name(10, "-1.violation"),
        name(10, "-2.corrupt"),
        name(10, "-0.corrupt"),
        name(10, "-x.corrupt"),
        name(0, "-1.corrupt"),
    ];
    expected.sort();
    assert_eq!(names(&dir), expected);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn violations_the_disk_refuses_wait_in_memory_then_go_to_disk() {
    let dir = temp("held-violations");
    let mut spool = open(&dir, 1 << 20);
    fs::remove_dir_all(dir.join(DIR)).unwrap();
    fs::write(dir.join(DIR), b"").unwrap();
    spool.push(&report(5, 1), &[]).unwrap();
    spool.push_violation(5, 1, &violation("a", 1_000)).unwrap();
    assert!(spool.unwritable);
    assert_eq!(
        spool.read_violation(Key(5, 1)).unwrap(),
        violation("a", 1_000)
    );
    fs::remove_file(dir.join(DIR)).unwrap();
    spool.push(&report(6, 1), &[]).unwrap();
    assert!(!spool.unwritable);
    let mut expected = [name(5, ".json"), name(5, "-1.violation"), name(6, ".json")];
    expected.sort();
    assert_eq!(names(&dir), expected);
    fs::remove_dir_all(&dir).unwrap();
}
