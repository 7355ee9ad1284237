//! User-defined metrics read from files, and the choice of tern's own custom metrics.

use std::{
    fs,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tern_tests::{Netns, TempDir, Tern, custom_names};

const REPORT_WAIT: Duration = Duration::from_secs(15);

/// A directory of metric files of one test, removed when dropped.
struct Files(TempDir);

impl Files {
    fn new() -> Self {
        Self(TempDir::new("metric-files"))
    }

    fn write(&self, name: &str, content: &str) -> String {
        let path = self.0.join(name);
        // Replaced whole, as a well-behaved exporter does.
        let tmp = self.0.join(&format!("{name}.tmp"));
        fs::write(&tmp, content).unwrap();
        fs::rename(&tmp, &path).unwrap();
        path.to_str().unwrap().to_owned()
    }
}

/// Custom metric `name` as the report encodes it, type name and all (Null when absent), so
/// the assertions check the encoding too.
fn custom(report: &Value, name: &str) -> Value {
    report["custom_metrics"][name].clone()
}

#[test]
fn a_file_metric_follows_the_file_and_a_bad_value_is_dropped_with_a_log_line() {
    let ns = Netns::new("files");
    let files = Files::new();
    let temp = files.write("temp", "41000\n");
    let peers = files.write("peers", "10.0.0.1\n2001:db8::7\n");
    let tags = files.write("tags", "edge-7 rack:b\n");
    let args = [
        "--interval".to_owned(),
        "1".to_owned(),
        "--metric".to_owned(),
        format!("board_temp=number:{temp}"),
        "--metric".to_owned(),
        format!("allowed_peers=ip_list:{peers}"),
        "--metric".to_owned(),
        format!("site_tags=string_list:{tags}"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tern = Tern::start(&ns, &args);

    let first = tern.next_report(REPORT_WAIT);
    assert_eq!(custom(&first, "board_temp"), json!([{"number": 41000}]));
    assert_eq!(
        custom(&first, "allowed_peers"),
        json!([{"ip_list": ["10.0.0.1", "2001:db8::7"]}])
    );
    assert_eq!(
        custom(&first, "site_tags"),
        json!([{"string_list": ["edge-7", "rack:b"]}])
    );

    files.write("temp", "42.5\n");
    files.write("peers", "10.0.0.1\nnot-an-address\n");
    // Read at each report: take the first one collected after the change.
    let report = tern
        .reports_through(Instant::now(), REPORT_WAIT)
        .pop()
        .expect("a report");
    assert_eq!(custom(&report, "board_temp"), json!([{"number": 42.5}]));
    assert_eq!(
        custom(&report, "allowed_peers"),
        Value::Null,
        "an invalid list was sent"
    );
    assert!(
        report["metrics"]["network_stats"].is_object(),
        "the rest must still be sent"
    );
    tern.wait_log("allowed_peers", Duration::from_secs(5));
}

#[test]
fn only_the_chosen_custom_metrics_are_sent() {
    let ns = Netns::new("select");
    let tern = Tern::start(
        &ns,
        &[
            "--interval",
            "1",
            "--custom-metrics",
            "cpu_usage,interval_execs",
        ],
    );
    let report = tern.next_report(REPORT_WAIT);
    assert_eq!(custom_names(&report), ["cpu_usage", "interval_execs"]);

    let tern = Tern::start(&ns, &["--interval", "1", "--custom-metrics", "none"]);
    let report = tern.next_report(REPORT_WAIT);
    assert!(report.get("custom_metrics").is_none(), "{report}");
}

#[test]
fn a_bad_metric_definition_stops_tern_before_it_loads_anything() {
    for (arg, expected) in [
        ("aws:x=number:/tmp/x", "aws:"),
        ("x=float:/tmp/x", "unknown metric type"),
        ("interval_execs=number:/tmp/x", "one of tern's own"),
    ] {
        let out = std::process::Command::new(tern_tests::tern_bin())
            .args(["run", "--output", "stdout", "--metric", arg])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{arg}: {stderr}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn the_config_file_chooses_custom_metrics_and_defines_file_metrics() {
    let ns = Netns::new("cfgmetrics");
    let files = Files::new();
    let load = files.write("load", "7\n");
    let config = files.write(
        "config.json",
        &json!({
            "device-defender": {"enabled": true, "interval": 1},
            "tern": {
                "custom-metrics": ["memory_used"],
                "metrics": [{"name": "queue_depth", "type": "number", "file": load}]
            }
        })
        .to_string(),
    );
    let tern = Tern::start(&ns, &["--config", &config]);
    let report = tern.next_report(REPORT_WAIT);
    assert_eq!(custom_names(&report), ["memory_used", "queue_depth"]);
    assert_eq!(custom(&report, "queue_depth"), json!([{"number": 7}]));

    // A metric of the file that breaks the rules is named by check-config, with the key.
    let bad = files.write(
        "bad.json",
        &json!({"tern": {"metrics": [{"name": "aws:x", "type": "number", "file": load}]}})
            .to_string(),
    );
    let out = std::process::Command::new(tern_tests::tern_bin())
        .args(["check-config", "--config", &bad])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tern.metrics") && stderr.contains("aws:"),
        "{stderr}"
    );
}
