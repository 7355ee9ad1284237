//! The byte limits on a report: a budget or packet limit that no report of the configuration
//! could fit is refused by check-config and run, naming the least that fits; at that least,
//! every report is sent (to stdout, or through a real broker) and `--count` ends the run.

use std::{fs, os::unix::fs::PermissionsExt, path::Path, time::Duration};

use serde_json::{Value, json};
use tern_tests::{
    Netns, Pair, TempDir, Tern,
    broker::{Mosquitto, Pki, Responder, Verdicts},
    refusal::{AS_NOBODY, Finished, both_refuse, finish, least},
};

const REPORT_WAIT: Duration = Duration::from_secs(10);

/// `tern check-config ARGS` as nobody, with `state` as the state directory.
fn check(state: &Path, args: &[&str]) -> Finished {
    let mut all = vec!["check-config", "--state-dir", state.to_str().unwrap()];
    all.extend(AS_NOBODY);
    all.extend_from_slice(args);
    finish(&all)
}

/// The least budget check-config names for `args`, after refusing 1024 bytes.
fn least_budget(state: &Path, args: &[&str]) -> u64 {
    let mut all = vec!["--budget", "1024"];
    all.extend_from_slice(args);
    let checked = check(state, &all);
    assert_eq!(checked.code, Some(1), "{}", checked.stderr);
    assert!(
        checked.stderr.contains("tern.budget 1024 is under"),
        "{}",
        checked.stderr
    );
    least(&checked.stderr, "tern.budget")
}

#[test]
fn a_budget_no_report_fits_in_is_refused_naming_the_least_that_does() {
    let dir = TempDir::new("limits-budget");
    let state = dir.join("state");
    let value = dir.join("value");
    fs::write(&value, "1\n").unwrap();
    fs::set_permissions(&value, fs::Permissions::from_mode(0o644)).unwrap();
    let metric = format!("a_rather_long_metric_name=number:{}", value.display());
    let cbor = ["--format", "cbor", "--names", "short"];
    let json = least_budget(&state, &[]);
    assert!(least_budget(&state, &cbor) < json);
    // A metric of the user's needs room of its own.
    assert!(least_budget(&state, &["--metric", &metric]) > json);
    for args in [&[][..], &cbor] {
        let at = least_budget(&state, args);
        let under = (at - 1).to_string();
        let mut refused = vec!["--budget", &under];
        refused.extend_from_slice(args);
        both_refuse(
            &state,
            &refused,
            &[
                &format!("tern.budget {under} is under {at} bytes"),
                "set tern.budget (--budget) to at least",
            ],
        );
        let fits = at.to_string();
        let mut all = vec!["--budget", &fits];
        all.extend_from_slice(args);
        let checked = check(&state, &all);
        assert_eq!(checked.code, Some(0), "{}", checked.stderr);
    }
}

/// `value` with every list cut to nothing (but a custom metric's one-element wrapper when
/// `wrapper`) and every number as wide as its kind writes: a whole number (counts, totals,
/// ids are u64) at u64::MAX, a reading as a negative 17-digit mantissa with a 3-digit
/// exponent.
fn widest_cut(value: &Value, wrapper: bool) -> Value {
    match value {
        Value::Number(n) if n.is_u64() => json!(u64::MAX),
        Value::Number(_) => json!(-f64::MIN_POSITIVE),
        Value::Array(items) if wrapper => {
            Value::Array(items.iter().map(|v| widest_cut(v, false)).collect())
        }
        Value::Array(_) => json!([]),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), widest_cut(v, false)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The most `report` could take with its lists cut, whatever its numbers.
fn widest(report: &Value) -> Value {
    let mut out = widest_cut(report, false);
    if let Some(custom) = report["custom_metrics"].as_object() {
        out["custom_metrics"] = Value::Object(
            custom
                .iter()
                .map(|(name, value)| (name.clone(), widest_cut(value, true)))
                .collect(),
        );
    }
    out
}

#[test]
fn at_the_least_budget_every_report_is_sent_and_count_ends_the_run() {
    let dir = TempDir::new("limits-run");
    let at = least_budget(&dir.join("state"), &[]);
    let ns = Netns::new("budget");
    let budget = at.to_string();
    let tern = Tern::start(
        &ns,
        &["--interval", "1", "--count", "2", "--budget", &budget],
    );
    let reports = [tern.next_report(REPORT_WAIT), tern.next_report(REPORT_WAIT)];
    let sizes = tern.encoded_sizes();
    assert!(
        sizes.iter().all(|&size| size as u64 <= at),
        "{sizes:?} over {at}"
    );
    for report in &reports {
        let cut = serde_json::to_vec(&widest(report)).unwrap();
        assert!(cut.len() as u64 <= at, "{} over {at}: {report}", cut.len());
    }
    let stopped = tern.wait_exit(REPORT_WAIT);
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
}

const BROKER: u16 = 18885;

/// The least packet limit check-config names for `config`, after refusing 1024 bytes.
fn least_packet_limit(dir: &TempDir, config: &Value) -> u64 {
    let mut config = config.clone();
    config["tern"]["packet-limit"] = json!(1024);
    let path = dir.join("limit.json");
    fs::write(&path, config.to_string()).unwrap();
    let checked = check(&dir.join("state"), &["--config", path.to_str().unwrap()]);
    assert_eq!(checked.code, Some(1), "{}", checked.stderr);
    assert!(
        checked.stderr.contains("tern.packet-limit 1024 is under"),
        "{}",
        checked.stderr
    );
    least(&checked.stderr, "tern.packet-limit")
}

/// A long thing name makes a long topic: the packet limit must leave room for it.
#[test]
fn a_packet_limit_no_report_fits_in_is_refused_and_the_least_delivers() {
    let pair = Pair::new();
    let pki = Pki::new("limits");
    let broker = Mosquitto::start(&pair.a, &pki, BROKER);
    let responder = Responder::start(&pair.a, &pki, BROKER, Verdicts::Judge);
    let dir = TempDir::new("limits-packet");
    // The certificate's common name is the thing name, at most 64 characters.
    let thing = format!("gw-{}", "x".repeat(61));
    let id = pki.client(&thing);
    let config = |thing: &str| {
        json!({
            "endpoint": format!("localhost:{BROKER}"),
            "cert": id.cert, "key": id.key, "root-ca": pki.ca, "thing-name": thing,
            "device-defender": {"interval": 1},
            "tern": {"keep-alive": 1, "reconnect-max": 2, "reply-timeout": 5}
        })
    };
    let at = least_packet_limit(&dir, &config(&thing));
    // Each byte of the thing name is a byte of the topic.
    assert_eq!(at - least_packet_limit(&dir, &config("gw-1")), 64 - 4);
    let mut under = config(&thing);
    under["tern"]["packet-limit"] = json!(at - 1);
    let path = dir.join("under.json");
    fs::write(&path, under.to_string()).unwrap();
    both_refuse(
        &dir.join("state"),
        &["--config", path.to_str().unwrap()],
        &[
            &format!("tern.packet-limit {} is under {at} bytes", at - 1),
            "shorten thing-name",
        ],
    );
    let mut fits = config(&thing);
    fits["tern"]["packet-limit"] = json!(at);
    let path = dir.join("fits.json");
    fs::write(&path, fits.to_string()).unwrap();
    let tern = Tern::launch(
        &pair.a,
        &dir.join("state"),
        &["--config", path.to_str().unwrap()],
    );
    let received = responder.wait_for(2, Duration::from_secs(20));
    for got in &received {
        assert_eq!(got.thing, thing);
        assert_eq!(got.rejected, None, "{}", got.report);
    }
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    drop((responder, broker));
}
