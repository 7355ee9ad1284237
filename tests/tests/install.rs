//! `tern install` and `tern uninstall` into a throwaway root: owners and modes from the file
//! system, the unit checked by `systemd-analyze verify`, and nothing left after uninstall.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
    process::{Command, Output},
};

use tern_tests::{Netns, TempDir, sh, tern_bin};

/// A device root with the host's account files, systemd's units and the usual directories,
/// as useradd and systemd-analyze need them.
fn device_root() -> TempDir {
    let root = TempDir::new("root");
    fs::create_dir_all(root.path.join("etc")).unwrap();
    for file in ["passwd", "group", "shadow", "gshadow"] {
        fs::copy(
            Path::new("/etc").join(file),
            root.path.join("etc").join(file),
        )
        .unwrap();
    }
    for dir in [
        "usr/lib/systemd",
        "usr/local/lib",
        "var/lib",
        "etc/systemd/system",
    ] {
        fs::create_dir_all(root.path.join(dir)).unwrap();
    }
    sh(
        "cp",
        &[
            "-a",
            "/lib/systemd/system",
            root.path.join("usr/lib/systemd/").to_str().unwrap(),
        ],
    );
    root
}

fn tern(args: &[&str]) -> Output {
    Command::new(tern_bin())
        .args(args)
        .output()
        .expect("running tern")
}

/// Every path under `dir`, relative to it.
fn tree(dir: &Path) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in fs::read_dir(&next).unwrap().flatten() {
            let path = entry.path();
            all.insert(path.strip_prefix(dir).unwrap().display().to_string());
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            }
        }
    }
    all
}

fn owner_mode(path: &Path) -> (u32, u32, u32) {
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.uid(), meta.gid(), meta.permissions().mode() & 0o7777)
}

/// uid and gid of `user` in the passwd file under `root`.
fn account(root: &Path, user: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f[0] == user).then(|| (f[2].parse().unwrap(), f[3].parse().unwrap()))
    })
}

/// A device root whose private key has `mode`, and a config naming that key: the root, the
/// config's own directory and the config's path.
fn root_with_key(mode: u32) -> (TempDir, TempDir, String) {
    let root = device_root();
    let key = root.path.join("etc/device.key");
    fs::write(&key, "key").unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
    let cfg_dir = TempDir::new("cfg");
    let path = cfg_dir.path.join("device.json");
    fs::write(
        &path,
        r#"{"endpoint":"example-ats.iot.eu-west-1.amazonaws.com","key":"/etc/device.key"}"#,
    )
    .unwrap();
    let cfg = path.to_str().unwrap().to_owned();
    (root, cfg_dir, cfg)
}

const NAME: &str = "edgeinstalltest";

#[test]
fn install_writes_a_unit_systemd_accepts_and_uninstall_removes_what_install_created() {
    let (root, _cfg_dir, cfg) = root_with_key(0o600);
    let before = tree(&root.path);
    let r = root.path.to_str().unwrap();

    let out = tern(&["install", "--root", r, "--name", NAME, "--config", &cfg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        account(Path::new("/"), NAME).is_none(),
        "created in the host"
    );
    let (uid, gid) = account(&root.path, NAME).expect("the service's user");

    let at = |p: &str| root.path.join(p);
    let bin = format!("usr/local/lib/{NAME}/{NAME}");
    assert_eq!(owner_mode(&at(&bin)), (0, 0, 0o755));
    assert_eq!(
        fs::read(at(&bin)).unwrap(),
        fs::read(tern_bin()).unwrap(),
        "the installed binary is not tern"
    );
    assert_eq!(owner_mode(&at(&format!("etc/{NAME}"))), (0, gid, 0o750));
    assert_eq!(
        owner_mode(&at(&format!("etc/{NAME}/config.json"))),
        (0, gid, 0o640)
    );
    assert_eq!(
        owner_mode(&at(&format!("var/lib/{NAME}"))),
        (uid, gid, 0o700)
    );
    let unit_path = at(&format!("etc/systemd/system/{NAME}.service"));
    assert_eq!(owner_mode(&unit_path), (0, 0, 0o644));
    let unit = fs::read_to_string(&unit_path).unwrap();
    for line in [
        format!(
            "ExecStart=/usr/local/lib/{NAME}/{NAME} run --user {NAME} --config /etc/{NAME}/config.json"
        ),
        "Restart=always".to_owned(),
        "NoNewPrivileges=yes".to_owned(),
        "CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_SETUID CAP_SETGID CAP_SETPCAP"
            .to_owned(),
        "ProtectSystem=strict".to_owned(),
        "ProtectHome=yes".to_owned(),
        "PrivateTmp=yes".to_owned(),
        "RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6".to_owned(),
        "SystemCallFilter=@system-service bpf perf_event_open".to_owned(),
        format!("ReadWritePaths=/var/lib/{NAME}"),
        "Type=notify".to_owned(),
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "missing {line:?} in:\n{unit}"
        );
    }
    assert!(unit.lines().any(|l| l.starts_with("WatchdogSec=")));

    let verify = Command::new("systemd-analyze")
        .args(["verify", "--root", r, &format!("{NAME}.service")])
        .output()
        .unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );

    let out = tern(&["uninstall", "--root", r, "--name", NAME]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        account(&root.path, NAME).is_none(),
        "the user is still there"
    );
    let group = fs::read_to_string(at("etc/group")).unwrap();
    assert!(!group.lines().any(|l| l.starts_with(&format!("{NAME}:"))));
    // useradd leaves backups of the account files (passwd- ...): not install's.
    let after: BTreeSet<String> = tree(&root.path)
        .into_iter()
        .filter(|p| !p.ends_with('-'))
        .collect();
    let created: Vec<_> = after.difference(&before).collect();
    let removed: Vec<_> = before.difference(&after).collect();
    assert!(created.is_empty(), "left behind: {created:?}");
    assert!(removed.is_empty(), "removed: {removed:?}");
}

#[test]
fn install_refuses_a_private_key_others_can_read_and_creates_nothing() {
    let (root, _cfg_dir, cfg) = root_with_key(0o644);
    let before = tree(&root.path);
    let r = root.path.to_str().unwrap();
    let out = tern(&["install", "--root", r, "--name", NAME, "--config", &cfg]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("mode 644") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    assert_eq!(tree(&root.path), before);
}

#[test]
fn run_refuses_a_private_key_others_can_read() {
    let dir = TempDir::new("key");
    let key = dir.path.join("device.key");
    fs::write(&key, "key").unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
    let cfg = dir.path.join("device.json");
    fs::write(&cfg, format!(r#"{{"key":"{}"}}"#, key.display())).unwrap();
    let out = tern(&["run", "--count", "1", "--config", cfg.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(stderr.contains("chmod 600"), "{stderr}");
}

/// Uninstalls the service named `0` from the real root when dropped, so a failing test leaves
/// no account, file or unit behind.
struct Installed(&'static str);

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = tern(&["uninstall", "--name", self.0]);
    }
}

#[test]
fn install_on_a_system_without_systemd_writes_the_service_and_says_it_did_not_start_it() {
    const THROWAWAY: &str = "edgeinstallreal";
    assert!(
        !Path::new("/run/systemd/system").exists(),
        "systemd runs here: this test would start a real service"
    );
    let cfg_dir = TempDir::new("cfg");
    let cfg = cfg_dir.path.join("device.json");
    fs::write(&cfg, r#"{"endpoint":"example"}"#).unwrap();
    let guard = Installed(THROWAWAY);
    let out = tern(&[
        "install",
        "--name",
        THROWAWAY,
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("did not start it")
            && stderr.contains(&format!("systemctl enable --now {THROWAWAY}")),
        "{stderr}"
    );
    let (uid, gid) = account(Path::new("/"), THROWAWAY).expect("the service's user");
    assert_eq!(
        owner_mode(Path::new(&format!("/var/lib/{THROWAWAY}"))),
        (uid, gid, 0o700)
    );
    let installed = format!("/usr/local/lib/{THROWAWAY}/{THROWAWAY}");
    // Without --user, the installed binary runs as the account named like it.
    let ns = Netns::new("inst");
    let out = Command::new("timeout")
        .args([
            "20",
            "nsenter",
            &format!("--net=/run/netns/{}", ns.name),
            &installed,
        ])
        .args(["run", "--interval", "1", "--count", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("running as {THROWAWAY}")),
        "{stderr}"
    );
    // uninstall as the installed binary runs it: the name comes from the binary's own name.
    let out = Command::new(&installed).arg("uninstall").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(account(Path::new("/"), THROWAWAY).is_none());
    for path in [
        installed.as_str(),
        &format!("/etc/{THROWAWAY}"),
        &format!("/var/lib/{THROWAWAY}"),
        &format!("/etc/systemd/system/{THROWAWAY}.service"),
    ] {
        assert!(!Path::new(path).exists(), "{path} is still there");
    }
    drop(guard);
}

#[test]
fn the_installed_binary_carries_no_symbols_or_debug_information() {
    let sections = sh("readelf", &["-S", "-W", tern_bin().to_str().unwrap()]);
    assert!(
        sections.contains(".text"),
        "not an ELF listing:\n{sections}"
    );
    for name in [".symtab", ".debug_", ".strtab"] {
        assert!(
            !sections.contains(name),
            "section {name} is in the binary:\n{sections}"
        );
    }
}
