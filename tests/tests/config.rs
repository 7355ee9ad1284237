//! `tern check-config` (and `tern run`, which makes the same checks before it loads
//! anything) on broken configurations: each names the file or key and the fix, every
//! problem is reported at once, and only a config that would run exits 0.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::{Value, json};
use tern_tests::{
    TempDir,
    broker::{Identity, Pki},
    refusal::{AS_NOBODY, Finished, assert_refused, finish as tern},
    tern_bin,
};

fn check(config: &Path) -> Finished {
    let mut args = vec!["check-config", "--config", config.to_str().unwrap()];
    args.extend(AS_NOBODY);
    tern(&args)
}

fn device_client_config(endpoint: &str, id: &Identity, ca: &Path, thing: &str) -> Value {
    json!({
        "endpoint": endpoint,
        "cert": id.cert,
        "key": id.key,
        "root-ca": ca,
        "thing-name": thing,
        "logging": {"level": "INFO", "type": "FILE", "file": "/var/log/aws-iot-device-client.log"},
        "jobs": {"enabled": true, "handler-directory": "~/.aws-iot-device-client/jobs"},
        "device-defender": {"enabled": true, "interval": 300}
    })
}

fn write(dir: &TempDir, name: &str, config: &Value) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
    path
}

#[test]
fn a_good_device_client_config_passes() {
    let pki = Pki::new("good");
    let dir = TempDir::new("config-good");
    let config = write(
        &dir,
        "good.json",
        &device_client_config(
            "abc123-ats.iot.eu-west-1.amazonaws.com",
            &pki.client("gw-1"),
            &pki.ca,
            "gw-1",
        ),
    );
    let checked = check(&config);
    assert_eq!(checked.code, Some(0), "stderr: {}", checked.stderr);
    assert!(
        checked.stdout.contains("configuration OK")
            && checked
                .stdout
                .contains("abc123-ats.iot.eu-west-1.amazonaws.com:8883")
            && checked.stdout.contains("AWS IoT Core"),
        "{}",
        checked.stdout
    );
}

#[test]
fn a_missing_or_unreadable_file_is_named() {
    let dir = TempDir::new("config-missing");
    let missing = dir.join("nowhere.json");
    assert_refused(
        &check(&missing),
        &[&format!(
            "config file {}: cannot read it",
            missing.display()
        )],
    );
    let broken = dir.join("broken.json");
    fs::write(&broken, "{\"endpoint\": ").unwrap();
    assert_refused(&check(&broken), &["not a valid config", "fix the JSON"]);
}

#[test]
fn a_private_key_readable_by_others_is_refused() {
    let pki = Pki::new("mode");
    let id = pki.client("gw-1");
    fs::set_permissions(&id.key, fs::Permissions::from_mode(0o644)).unwrap();
    let dir = TempDir::new("config-mode");
    let config = write(
        &dir,
        "c.json",
        &device_client_config("broker.example:8883", &id, &pki.ca, "gw-1"),
    );
    assert_refused(
        &check(&config),
        &[
            "readable by group or others (mode 644)",
            &format!("chmod 600 {}", id.key.display()),
        ],
    );
}

#[test]
fn a_certificate_and_key_that_do_not_match_are_refused() {
    let pki = Pki::new("mismatch");
    let one = pki.client("gw-1");
    let other = pki.client("gw-2");
    let dir = TempDir::new("config-mismatch");
    let id = Identity {
        cert: one.cert,
        key: other.key,
    };
    let config = write(
        &dir,
        "c.json",
        &device_client_config("broker.example", &id, &pki.ca, "gw-1"),
    );
    assert_refused(&check(&config), &["and key do not match"]);
}

#[test]
fn expired_and_not_yet_valid_certificates_are_refused() {
    let pki = Pki::new("dates");
    let dir = TempDir::new("config-dates");
    let expired = pki.dated_client("gw-1", "20200101000000Z", "20210101000000Z");
    let config = write(
        &dir,
        "expired.json",
        &device_client_config("broker.example", &expired, &pki.ca, "gw-1"),
    );
    assert_refused(
        &check(&config),
        &["the certificate expired on", "issue a new"],
    );
    let future = pki.dated_client("gw-1", "20400101000000Z", "20410101000000Z");
    let config = write(
        &dir,
        "future.json",
        &device_client_config("broker.example", &future, &pki.ca, "gw-1"),
    );
    assert_refused(&check(&config), &["not valid before", "system clock"]);
}

#[test]
fn a_ca_that_does_not_parse_is_refused() {
    let pki = Pki::new("badca");
    let dir = TempDir::new("config-badca");
    let garbage = dir.join("ca.pem");
    fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let config = write(
        &dir,
        "c.json",
        &device_client_config("broker.example", &pki.client("gw-1"), &garbage, "gw-1"),
    );
    assert_refused(&check(&config), &["root-ca", "does not parse"]);
    let empty = dir.join("empty.pem");
    fs::write(&empty, "no PEM here\n").unwrap();
    let config = write(
        &dir,
        "c2.json",
        &device_client_config("broker.example", &pki.client("gw-1"), &empty, "gw-1"),
    );
    assert_refused(&check(&config), &["holds no PEM certificate"]);
}

#[test]
fn bad_thing_names_are_refused() {
    let pki = Pki::new("names");
    let dir = TempDir::new("config-names");
    let id = pki.client("gw-1");
    let long = "t".repeat(129);
    let config = write(
        &dir,
        "long.json",
        &device_client_config("broker.example", &id, &pki.ca, &long),
    );
    assert_refused(&check(&config), &["is longer than 128 bytes"]);
    let config = write(
        &dir,
        "ctl.json",
        &device_client_config("broker.example", &id, &pki.ca, "gw\u{1}1"),
    );
    assert_refused(&check(&config), &["contains control characters"]);
}

#[test]
fn a_metric_flag_given_twice_is_refused() {
    let checked = tern(&[
        "check-config",
        "--metric",
        "temp=number:/tmp/a",
        "--metric",
        "temp=number:/tmp/b",
    ]);
    assert_refused(&checked, &["--metric temp: given more than once"]);
}

/// What a broker would refuse, or TLS could not carry, is refused before anything runs.
#[test]
fn bad_client_ids_and_alpn_names_are_refused() {
    let pki = Pki::new("client-ids");
    let dir = TempDir::new("config-client-ids");
    let id = pki.client("gw-1");
    for (client_id, alpn, expected) in [
        ("", "x-amzn-mqtt-ca", "tern.client-id is empty"),
        (
            "c".repeat(129).as_str(),
            "x-amzn-mqtt-ca",
            "tern.client-id is longer than 128 bytes",
        ),
        (
            "gw\u{1b}[2J",
            "x-amzn-mqtt-ca",
            "tern.client-id contains control characters",
        ),
        (
            "gw-1",
            "a".repeat(300).as_str(),
            "tern.alpn must be at most 255",
        ),
    ] {
        let mut config = device_client_config("broker.example", &id, &pki.ca, "gw-1");
        config["tern"] = json!({"client-id": client_id, "alpn": alpn});
        let path = write(&dir, "client.json", &config);
        assert_refused(&check(&path), &[expected]);
        let run = tern(&["run", "--config", path.to_str().unwrap()]);
        assert_refused(&run, &[expected]);
    }
}

#[test]
fn an_interval_under_300_s_is_refused_for_aws_only() {
    let pki = Pki::new("interval");
    let dir = TempDir::new("config-interval");
    let id = pki.client("gw-1");
    let mut aws = device_client_config("x-ats.iot.us-east-1.amazonaws.com", &id, &pki.ca, "gw-1");
    aws["device-defender"]["interval"] = json!(60);
    let config = write(&dir, "aws.json", &aws);
    assert_refused(
        &check(&config),
        &["interval 60 s is under 300 s", "device-defender.interval"],
    );
    // The flag overrides the file.
    let checked = tern(&[
        "check-config",
        "--config",
        config.to_str().unwrap(),
        "--interval",
        "600",
        "--user",
        "nobody",
        "--shared-user",
    ]);
    assert_eq!(checked.code, Some(0), "stderr: {}", checked.stderr);

    let mut other = aws.clone();
    other["endpoint"] = json!("mqtt.example.net:8883");
    let config = write(&dir, "other.json", &other);
    let checked = check(&config);
    assert_eq!(checked.code, Some(0), "stderr: {}", checked.stderr);
    assert!(checked.stdout.contains("every 60 s"), "{}", checked.stdout);
}

#[test]
fn every_problem_is_reported_at_once_and_run_refuses_to_start() {
    let pki = Pki::new("many");
    let dir = TempDir::new("config-many");
    let id = pki.client("gw-1");
    fs::set_permissions(&id.key, fs::Permissions::from_mode(0o640)).unwrap();
    let mut config = device_client_config(
        "x-ats.iot.us-east-1.amazonaws.com",
        &id,
        &dir.join("no-ca.pem"),
        &"n".repeat(200),
    );
    config["device-defender"]["interval"] = json!(10);
    let path = write(&dir, "many.json", &config);
    let expected = [
        "readable by group or others",
        "no-ca.pem: cannot read it",
        "longer than 128 bytes",
        "under 300 s",
    ];
    assert_refused(&check(&path), &expected);
    // `run` checks the same way before it loads anything.
    let run = tern(&["run", "--config", path.to_str().unwrap()]);
    assert_refused(&run, &expected);
}

/// `tern.system-roots` trusts the system's CA certificates (read here from SSL_CERT_FILE and
/// SSL_CERT_DIR, as on any system that sets them), so `root-ca` may be left out; without it, `root-ca` is
/// required and only that CA is trusted.
#[test]
fn system_roots_only_when_asked_for() {
    let pki = Pki::new("system");
    let dir = TempDir::new("config-system");
    let mut config = device_client_config("broker.example", &pki.client("gw-1"), &pki.ca, "gw-1");
    config.as_object_mut().unwrap().remove("root-ca");
    let path = write(&dir, "no-ca.json", &config);
    assert_refused(&check(&path), &["root-ca is missing"]);

    config["tern"] = json!({"system-roots": true});
    let path = write(&dir, "system.json", &config);
    let no_dir = dir.join("no-certs");
    fs::create_dir(&no_dir).unwrap();
    let with_bundle = |bundle: &Path| {
        let output = Command::new(tern_bin())
            .args(["check-config", "--config", path.to_str().unwrap()])
            .args(AS_NOBODY)
            .env("SSL_CERT_FILE", bundle)
            .env("SSL_CERT_DIR", &no_dir)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stderr) = with_bundle(&pki.ca);
    assert_eq!(code, Some(0), "{stderr}");
    let empty = dir.join("empty-bundle.pem");
    fs::write(&empty, "").unwrap();
    let (code, stderr) = with_bundle(&empty);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("no system CA certificate loads"),
        "{stderr}"
    );
}

#[test]
fn the_violations_topic_is_printed_and_one_no_broker_takes_is_refused() {
    use std::os::unix::ffi::OsStrExt;
    let pki = Pki::new("topic");
    let dir = TempDir::new("config-topic");
    let mut config = device_client_config(
        "abc123-ats.iot.eu-west-1.amazonaws.com",
        &pki.client("gw-1"),
        &pki.ca,
        "gw-1",
    );
    for (section, topic) in [
        (json!({}), "tern/things/gw-1/violations"),
        (
            json!({"violations-topic": "fleet/gw-1/alarms"}),
            "fleet/gw-1/alarms",
        ),
    ] {
        config["tern"] = section;
        let checked = check(&write(&dir, "topic.json", &config));
        assert_eq!(checked.code, Some(0), "stderr: {}", checked.stderr);
        let line = format!("go to topic {topic:?} (QoS 1)");
        assert!(checked.stdout.contains(&line), "{}", checked.stdout);
    }
    let path = dir.join("topic.json");
    let path = path.to_str().unwrap();
    let long = "t".repeat(257);
    for (topic, why) in [
        ("tern/#", "holds an MQTT wildcard"),
        ("tern/+/violations", "holds an MQTT wildcard"),
        ("", "is empty"),
        ("$aws/things/gw-1/violations", "starts with $"),
        (long.as_str(), "is 257 bytes, over the 256"),
        ("a/b/c/d/e/f/g/h/i", "has 8 slashes"),
    ] {
        let mut args = vec![
            "check-config",
            "--config",
            path,
            "--violations-topic",
            topic,
        ];
        args.extend(AS_NOBODY);
        assert_refused(
            &tern(&args),
            &[
                &format!("--violations-topic {topic:?} {why}"),
                "tern/things/<thing>/violations",
            ],
        );
    }
    let output = Command::new(tern_bin())
        .args(["check-config", "--config", path, "--violations-topic"])
        .arg(std::ffi::OsStr::from_bytes(b"tern/\xff"))
        .args(AS_NOBODY)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is not UTF-8"), "{stderr}");
}
