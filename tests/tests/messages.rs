//! Every refusal and failure names its actual cause and the fix, and `check-config` refuses
//! what `run` refuses: the account, the endpoint, the metric files and their names. A TLS
//! broker of an older version is told as a version mismatch, not as a refused certificate.

use std::{
    ffi::CString,
    fs,
    os::unix::{ffi::OsStrExt, fs::PermissionsExt},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::json;
use tern_tests::{
    Pair, TempDir, Tern,
    broker::Pki,
    refusal::{AS_NOBODY, both_refuse, finish},
    tern_bin, wait_until,
};

#[test]
fn root_an_unknown_user_or_no_account_of_its_own_is_refused_by_check_config_too() {
    let dir = TempDir::new("msg-account");
    let state = dir.join("state");
    both_refuse(
        &state,
        &["--user", "root"],
        &["\"root\" is root", "name an unprivileged user"],
    );
    both_refuse(
        &state,
        &["--user", "tern-no-such-user"],
        &["\"tern-no-such-user\"", "does not exist", "useradd"],
    );
    // Named like no account of this machine: its default account does not exist.
    let name = format!("tern{}m", std::process::id());
    let lone = dir.join(&name);
    fs::copy(tern_bin(), &lone).unwrap();
    let state = state.to_str().unwrap();
    for args in [
        &["check-config", "--state-dir", state][..],
        &[
            "run",
            "--state-dir",
            state,
            "--output",
            "stdout",
            "--count",
            "1",
        ],
    ] {
        let out = Command::new(&lone).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        for needle in [format!("no user \"{name}\""), format!("`{name} install`")] {
            assert!(stderr.contains(&needle), "{args:?}: {needle}: {stderr}");
        }
    }
}

#[test]
fn malformed_endpoints_are_refused_by_check_config_and_run() {
    let pki = Pki::new("endpoints");
    let id = pki.client("gw-1");
    let dir = TempDir::new("msg-endpoints");
    let state = dir.join("state");
    let files = [
        "--thing-name",
        "gw-1",
        "--cert",
        id.cert.to_str().unwrap(),
        "--key",
        id.key.to_str().unwrap(),
        "--root-ca",
        pki.ca.to_str().unwrap(),
    ];
    for (endpoint, why) in [
        ("my broker", "has spaces in it"),
        (" broker.example", "has spaces in it"),
        ("broker.example:", "has a bad port"),
        ("broker.example:0", "has a bad port"),
        ("broker.example:65536", "has a bad port"),
        ("broker.example:+8883", "has a bad port"),
        ("[::1]x", "has more after ]"),
        ("[broker.example]:8883", "holds no IPv6 address"),
        ("broker.example/mqtt", "has a character no host name holds"),
        ("user@broker.example", "has a character no host name holds"),
        ("broker..example", "has an empty part"),
    ] {
        let mut args = vec!["--endpoint", endpoint];
        args.extend(files);
        both_refuse(
            &state,
            &args,
            &[&format!("endpoint {endpoint:?} {why}"), "write a host name"],
        );
    }
    let config = dir.join("port0.json");
    fs::write(&config, json!({"tern": {"port": 0}}).to_string()).unwrap();
    let mut args = vec![
        "--config",
        config.to_str().unwrap(),
        "--endpoint",
        "localhost",
    ];
    args.extend(files);
    both_refuse(&state, &args, &["tern.port 0 is no port"]);
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
}

/// A metric file that is missing, not a regular file, or that the account tern drops to
/// cannot read would never be sent: check-config and run refuse it at once.
#[test]
fn metric_files_tern_could_never_read_are_refused_by_check_config_and_run() {
    let dir = TempDir::new("msg-metric-files");
    let state = dir.join("state");
    let fifo = dir.join("fifo");
    mkfifo(&fifo);
    let private = dir.join("private");
    fs::write(&private, "1\n").unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
    let closed = dir.join("closed");
    fs::create_dir(&closed).unwrap();
    fs::set_permissions(&closed, fs::Permissions::from_mode(0o700)).unwrap();
    let inside = closed.join("value");
    fs::write(&inside, "1\n").unwrap();
    fs::set_permissions(&inside, fs::Permissions::from_mode(0o644)).unwrap();
    let missing = dir.join("missing");
    let show = |p: &Path| p.to_str().unwrap().to_owned();
    for (path, why) in [
        (show(&missing), "cannot read it (No such file".to_owned()),
        (
            show(&dir.path),
            "cannot read it (it is a directory".to_owned(),
        ),
        (show(&fifo), "cannot read it (it is a FIFO".to_owned()),
        (
            show(&private),
            "user \"nobody\" cannot read it (mode 600".to_owned(),
        ),
        (
            show(&inside),
            format!("user \"nobody\" cannot enter {}", closed.display()),
        ),
    ] {
        let metric = format!("board_temp=number:{path}");
        both_refuse(
            &state,
            &["--metric", &metric],
            &[&format!("custom metric board_temp reads {path}: {why}")],
        );
    }
    // Readable to nobody: accepted.
    fs::set_permissions(&private, fs::Permissions::from_mode(0o644)).unwrap();
    let metric = format!("board_temp=number:{}", show(&private));
    let mut args = vec!["check-config", "--state-dir", state.to_str().unwrap()];
    args.extend(AS_NOBODY);
    args.extend(["--metric", &metric]);
    let checked = finish(&args);
    assert_eq!(checked.code, Some(0), "{}", checked.stderr);
}

/// A user metric named like one of tern's own would be overwritten by it in every report.
#[test]
fn metric_names_tern_uses_itself_are_refused_naming_the_clash() {
    let dir = TempDir::new("msg-reserved");
    let state = dir.join("state");
    let value = dir.join("value");
    fs::write(&value, "1\n").unwrap();
    fs::set_permissions(&value, fs::Permissions::from_mode(0o644)).unwrap();
    let config = dir.join("config.json");
    fs::write(
        &config,
        json!({"tern": {"metrics": [
            {"name": "reports_accepted", "type": "number", "file": value}
        ]}})
        .to_string(),
    )
    .unwrap();
    let flag = format!("reports_dropped=number:{}", value.display());
    let own = format!("interval_execs=number:{}", value.display());
    both_refuse(
        &state,
        &[
            "--config",
            config.to_str().unwrap(),
            "--metric",
            &flag,
            "--metric",
            &own,
        ],
        &[
            "custom metric \"reports_accepted\" has the name of one of tern's delivery counts",
            "custom metric \"reports_dropped\" has the name of one of tern's delivery counts",
            "custom metric \"interval_execs\" has the name of one of tern's own custom metrics",
            "give yours another name",
        ],
    );
}

/// A thing name outside AWS IoT's rules is said, not refused: another broker may take it.
#[test]
fn a_thing_name_aws_iot_would_not_know_is_warned_about() {
    let pki = Pki::new("thing-warn");
    let id = pki.client("gw-1");
    let dir = TempDir::new("msg-thing");
    let state = dir.join("state");
    let mut args = vec![
        "check-config",
        "--state-dir",
        state.to_str().unwrap(),
        "--endpoint",
        "broker.example",
        "--thing-name",
        "gw 7.lab",
        "--cert",
        id.cert.to_str().unwrap(),
        "--key",
        id.key.to_str().unwrap(),
        "--root-ca",
        pki.ca.to_str().unwrap(),
    ];
    args.extend(AS_NOBODY);
    let checked = finish(&args);
    assert_eq!(checked.code, Some(0), "{}", checked.stderr);
    assert!(
        checked.stderr.contains(
            "thing-name \"gw 7.lab\" has characters AWS IoT does not allow in a thing name"
        ),
        "{}",
        checked.stderr
    );
}

#[test]
fn a_directory_given_as_key_cert_or_ca_is_said_to_be_one() {
    let dir = TempDir::new("msg-dirs");
    let state = dir.join("state");
    let d = dir.path.to_str().unwrap();
    let args = [
        "--endpoint",
        "broker.example",
        "--thing-name",
        "gw-1",
        "--cert",
        d,
        "--key",
        d,
        "--root-ca",
        d,
    ];
    let expected = ["cert", "key", "root-ca"]
        .map(|key| format!("{key} {d}: cannot read it (it is a directory, not a regular file)"));
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    both_refuse(&state, &args, &expected);
    let checked = finish(&[
        "check-config",
        "--state-dir",
        state.to_str().unwrap(),
        "--key",
        d,
    ]);
    assert!(!checked.stderr.contains("chmod"), "{}", checked.stderr);
}

/// `openssl s_server` speaking one old TLS version only, in a namespace; stopped when dropped.
struct OldTls(Child);

impl OldTls {
    fn start(pair: &Pair, pki: &Pki, port: u16, version: &str) -> Self {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &pair.a.name,
                "openssl",
                "s_server",
                version,
            ])
            .args(["-cipher", "DEFAULT:@SECLEVEL=0", "-accept"])
            .arg(port.to_string())
            .arg("-cert")
            .arg(&pki.server.cert)
            .arg("-key")
            .arg(&pki.server.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let server = Self(child);
        let listening = format!(":{port} ");
        wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            let ss = pair.a.exec(&["ss", "-ltn"]);
            if ss.contains(&listening) {
                Ok(())
            } else {
                Err(ss)
            }
        })
        .unwrap_or_else(|ss| panic!("s_server {version} is not listening: {ss}"));
        server
    }
}

impl Drop for OldTls {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A broker that speaks only TLS 1.0 or 1.1 is a version mismatch, named with the versions,
/// not a refused certificate (which would also slow the retries as if the identity were bad).
#[test]
fn a_broker_of_an_older_tls_version_is_told_as_a_version_mismatch() {
    let pair = Pair::new();
    let pki = Pki::new("oldtls");
    let dir = TempDir::new("msg-oldtls");
    let id = pki.client("gw-1");
    let config = dir.join("config.json");
    for (version, port) in [("-tls1", 18993), ("-tls1_1", 18994)] {
        let _server = OldTls::start(&pair, &pki, port, version);
        fs::write(
            &config,
            json!({
                "endpoint": format!("localhost:{port}"),
                "cert": id.cert, "key": id.key, "root-ca": pki.ca, "thing-name": "gw-1",
                "device-defender": {"interval": 1},
                "tern": {"reconnect-max": 1}
            })
            .to_string(),
        )
        .unwrap();
        let tern = Tern::launch(
            &pair.a,
            &dir.join("state"),
            &["--config", config.to_str().unwrap()],
        );
        let line = tern.wait_log("retrying in", Duration::from_secs(15));
        assert!(
            line.contains("TLS version mismatch")
                && line.contains("TLS 1.2")
                && line.contains("TLS 1.3")
                && line.contains("TLS 1.0 or 1.1")
                && !line.contains("certificate refused"),
            "{version}: {line}"
        );
        let stopped = tern.stop();
        assert_eq!(stopped.code, Some(0), "{version}: {:?}", stopped.log);
    }
}
