//! What someone else on the device puts in tern's way: a FIFO or a device as a metric file,
//! a symbolic link, a system directory or a directory they prepared as the state directory.
//! tern neither hangs nor reads without end, and gives nothing away.

use std::{
    ffi::CString,
    fs,
    os::unix::{
        ffi::OsStrExt,
        fs::{MetadataExt, PermissionsExt},
    },
    path::Path,
    process::Command,
    time::Duration,
};

use tern_tests::{Launch, Netns, TempDir, Tern, tern_bin};

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
    // Whatever the umask: the account tern drops to must be able to open it.
    fs::set_permissions(path, fs::Permissions::from_mode(0o666)).unwrap();
}

#[test]
fn a_fifo_or_a_device_as_a_metric_file_is_refused_and_tern_goes_on() {
    let ns = Netns::new("hostfifo");
    let dir = TempDir::new("fifo");
    let fifo = dir.path.join("fifo");
    mkfifo(&fifo);
    let zero = dir.path.join("zero");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let from_fifo = format!("from_fifo=number:{}", fifo.display());
    let from_zero = format!("from_zero=number:{}", zero.display());
    let tern = Tern::start(
        &ns,
        &[
            "--interval",
            "1",
            "--metric",
            &from_fifo,
            "--metric",
            &from_zero,
        ],
    );
    let line = tern.wait_log("a FIFO, not a regular file", Duration::from_secs(10));
    assert!(line.contains("from_fifo"), "{line}");
    let line = tern.wait_log("a device, not a regular file", Duration::from_secs(10));
    assert!(line.contains("from_zero"), "{line}");
    for _ in 0..2 {
        let report = tern.next_report(Duration::from_secs(10));
        let custom = &report["custom_metrics"];
        assert!(
            custom.get("from_fifo").is_none() && custom.get("from_zero").is_none(),
            "{report}"
        );
    }
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
}

/// Runs `tern ARGS` to its end (each refusal comes before anything is loaded).
fn tern(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(tern_bin())
        .args(args)
        .output()
        .expect("running tern");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `tern run` with `--state-dir DIR` refuses, naming `why`, and so does `tern check-config`
/// where `checked` (the owner's account is known only to run).
fn refused(dir: &Path, why: &str, checked: bool) {
    let dir = dir.to_str().unwrap();
    let run = [
        "run",
        "--output",
        "stdout",
        "--count",
        "1",
        "--interval",
        "1",
        "--user",
        "nobody",
        "--shared-user",
        "--state-dir",
        dir,
    ];
    let check = ["check-config", "--state-dir", dir];
    let commands = if checked {
        vec![&run[..], &check[..]]
    } else {
        vec![&run[..]]
    };
    for args in commands {
        let (code, stderr) = tern(args);
        assert_ne!(code, Some(0), "{args:?}: {stderr}");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
}

#[test]
fn a_link_a_system_directory_or_a_prepared_one_never_becomes_the_state_directory() {
    let dir = TempDir::new("statedir");
    let target = dir.path.join("target");
    fs::create_dir(&target).unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).unwrap();
    let link = dir.path.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    refused(&link, "symbolic link", true);
    let meta = fs::metadata(&target).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o755, 0));

    let before = fs::metadata("/var/lib").unwrap();
    refused(Path::new("/var/lib"), "system directory", true);
    let after = fs::metadata("/var/lib").unwrap();
    assert_eq!(
        (after.mode(), after.uid(), after.gid()),
        (before.mode(), before.uid(), before.gid())
    );

    // Prepared by someone else, with a world-writable spool and a report planted in it.
    let prepared = dir.path.join("prepared");
    fs::create_dir_all(prepared.join("spool")).unwrap();
    fs::set_permissions(prepared.join("spool"), fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::chown(&prepared, Some(65_432), Some(65_432)).unwrap();
    refused(&prepared, "someone else prepared it", false);
    fs::write(prepared.join("notes.txt"), "not tern's").unwrap();
    std::os::unix::fs::chown(&prepared, Some(0), Some(0)).unwrap();
    refused(&prepared, "not tern's (notes.txt)", true);
}

/// `ip link add NAME type veth peer name PEER` in `ns`, NAME any bytes, both ends up.
fn veth_named(ns: &Netns, name: &[u8], peer: &str) {
    let name = std::ffi::OsStr::from_bytes(name);
    for args in [
        vec![
            "ip".as_ref(),
            "link".as_ref(),
            "add".as_ref(),
            name,
            "type".as_ref(),
            "veth".as_ref(),
            "peer".as_ref(),
            "name".as_ref(),
            peer.as_ref(),
        ],
        vec![
            "ip".as_ref(),
            "link".as_ref(),
            "set".as_ref(),
            name,
            "up".as_ref(),
        ],
        vec![
            "ip".as_ref(),
            "link".as_ref(),
            "set".as_ref(),
            peer.as_ref(),
            "up".as_ref(),
        ],
    ] {
        let status = Command::new("nsenter")
            .arg(format!("--net={}", ns.path()))
            .args(&args)
            .status()
            .expect("nsenter");
        assert!(status.success(), "{args:?}");
    }
}

/// TC attaches by name, which such a name cannot be given as: its traffic is not counted,
/// and tern says why, under the lossy name.
#[test]
fn an_interface_whose_name_is_not_utf8_is_named_lossily_and_never_fatal() {
    let ns = Netns::new("badname");
    veth_named(&ns, b"bad\xffA", "badpeer");
    let (tern, started) = Tern::start_launched(&ns, Launch::Nsenter, &["--interval", "1"]);
    assert!(
        started
            .iter()
            .any(|l| l.contains("cannot count traffic on bad?A") && l.contains("not UTF-8")),
        "{started:?}"
    );
    // One that appears while tern runs.
    veth_named(&ns, b"late\xfeB", "latepeer");
    let line = tern.wait_log("cannot count traffic on late?B", Duration::from_secs(10));
    assert!(line.contains("not UTF-8"), "{line}");
    tern.next_report(Duration::from_secs(10));
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
}
