//! What someone else on the device puts in tern's way: a FIFO or a device as a metric file,
//! a symbolic link, a system directory or a directory they prepared as the state directory.
//! tern neither hangs nor reads without end, and gives nothing away.

use std::{
    ffi::CString,
    fs,
    net::UdpSocket,
    os::unix::{
        ffi::OsStrExt,
        fs::{MetadataExt, PermissionsExt},
    },
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use tern_tests::{Launch, LinkStats, Netns, TempDir, Tern, UDP_OVERHEAD, tern_bin, transfer};

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
    // Whatever the umask: the account tern drops to must be able to open it.
    fs::set_permissions(path, fs::Permissions::from_mode(0o666)).unwrap();
}

/// At start such a file is refused outright (tests/tests/messages.rs); one that becomes a FIFO
/// or a device later is refused at each read while the reports go on.
#[test]
fn a_fifo_or_a_device_as_a_metric_file_is_refused_and_tern_goes_on() {
    let ns = Netns::new("hostfifo");
    let dir = TempDir::new("fifo");
    let fifo = dir.path.join("fifo");
    let zero = dir.path.join("zero");
    for file in [&fifo, &zero] {
        fs::write(file, "1\n").unwrap();
        fs::set_permissions(file, fs::Permissions::from_mode(0o644)).unwrap();
    }
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
    fs::remove_file(&fifo).unwrap();
    mkfifo(&fifo);
    fs::remove_file(&zero).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let swapped = Instant::now();
    let line = tern.wait_log("a FIFO, not a regular file", Duration::from_secs(10));
    assert!(line.contains("from_fifo"), "{line}");
    let line = tern.wait_log("a device, not a regular file", Duration::from_secs(10));
    assert!(line.contains("from_zero"), "{line}");
    let reports = tern.reports_through(swapped, Duration::from_secs(10));
    let report = reports.last().expect("a report");
    let custom = &report["custom_metrics"];
    assert!(
        custom.get("from_fifo").is_none() && custom.get("from_zero").is_none(),
        "{report}"
    );
    tern.next_report(Duration::from_secs(10));
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

/// Runs `ip ARGS`, any bytes among them; returns its output, made UTF-8 lossily.
fn ip(args: &[&[u8]]) -> String {
    let output = Command::new("ip")
        .args(args.iter().map(|a| std::ffi::OsStr::from_bytes(a)))
        .output()
        .expect("running ip");
    assert!(
        output.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A veth pair from `ns` to `peer_ns`: NAME (any bytes) with `addr` in `ns`, PEER with
/// `peer_addr` in `peer_ns`, both up, each end's neighbour static so that only what the test
/// sends crosses it. Returns NAME's index.
fn veth_named(
    ns: &Netns,
    name: &[u8],
    addr: &str,
    peer_ns: &Netns,
    peer: &str,
    peer_addr: &str,
) -> u64 {
    let (here, there) = (ns.name.as_bytes(), peer_ns.name.as_bytes());
    let peer = peer.as_bytes();
    ip(&[
        b"-n", here, b"link", b"add", name, b"type", b"veth", b"peer", b"name", peer, b"netns",
        there,
    ]);
    for (ns, dev, addr) in [(here, name, addr), (there, peer, peer_addr)] {
        let addr = format!("{addr}/24");
        ip(&[b"-n", ns, b"addr", b"add", addr.as_bytes(), b"dev", dev]);
        ip(&[b"-n", ns, b"link", b"set", dev, b"up"]);
    }
    let link = |ns: &[u8], dev: &[u8]| -> Value {
        let out = ip(&[b"-n", ns, b"-j", b"link", b"show", b"dev", dev]);
        serde_json::from_str::<Value>(&out).expect("ip -j output")[0].clone()
    };
    let (near, far) = (link(here, name), link(there, peer));
    for (ns, neighbour, end, dev) in [(here, peer_addr, &far, name), (there, addr, &near, peer)] {
        let mac = end["address"].as_str().expect("a MAC").as_bytes();
        ip(&[
            b"-n",
            ns,
            b"neigh",
            b"replace",
            neighbour.as_bytes(),
            b"lladdr",
            mac,
            b"dev",
            dev,
            b"nud",
            b"permanent",
        ]);
    }
    near["ifindex"].as_u64().expect("an index")
}

/// The kernel's counters (`ip -s link`) of interface `index` in `ns`, whatever its name.
fn stats_of(ns: &Netns, index: u64) -> LinkStats {
    let out = ip(&[b"-n", ns.name.as_bytes(), b"-j", b"-s", b"link", b"show"]);
    let links: Value = serde_json::from_str(&out).expect("ip -j output");
    let link = links
        .as_array()
        .and_then(|links| links.iter().find(|l| l["ifindex"] == index))
        .unwrap_or_else(|| panic!("no interface {index}: {out}"));
    let n = |dir: &str, field: &str| link["stats64"][dir][field].as_u64().expect("a counter");
    LinkStats {
        bytes_in: n("rx", "bytes"),
        packets_in: n("rx", "packets"),
        bytes_out: n("tx", "bytes"),
        packets_out: n("tx", "packets"),
    }
}

fn add(a: LinkStats, b: LinkStats) -> LinkStats {
    LinkStats {
        bytes_in: a.bytes_in + b.bytes_in,
        packets_in: a.packets_in + b.packets_in,
        bytes_out: a.bytes_out + b.bytes_out,
        packets_out: a.packets_out + b.packets_out,
    }
}

/// UDP across the pair at `addr` (in `ns`) and `peer_addr` (in `peer_ns`): `inbound`
/// datagrams of `size_in` bytes to `addr`, `outbound` of `size_out` from it. Returns what
/// that puts on the wire as seen from `ns`.
fn udp_across(
    ns: &Netns,
    addr: &'static str,
    peer_ns: &Netns,
    peer_addr: &'static str,
    (inbound, size_in): (u64, usize),
    (outbound, size_out): (u64, usize),
) -> LinkStats {
    let near = ns.enter(move || UdpSocket::bind((addr, 9000)).expect("bind"));
    let far = peer_ns.enter(move || UdpSocket::bind((peer_addr, 9000)).expect("bind"));
    transfer(&far, &near, inbound, size_in);
    transfer(&near, &far, outbound, size_out);
    LinkStats {
        bytes_in: inbound * (size_in as u64 + UDP_OVERHEAD),
        packets_in: inbound,
        bytes_out: outbound * (size_out as u64 + UDP_OVERHEAD),
        packets_out: outbound,
    }
}

/// TC programs attach by index, so an interface whose name is not UTF-8 is counted like any
/// other, under its lossy name: one there at start and one that appears while tern runs
/// (which the link child attaches), against the datagrams sent and the kernel's counters.
#[test]
fn an_interface_whose_name_is_not_utf8_is_counted_under_a_lossy_name_and_never_fatal() {
    let ns = Netns::new("badname");
    let peers = Netns::new("badpeer");
    let bad = veth_named(
        &ns,
        b"bad\xffA",
        "10.78.1.1",
        &peers,
        "badpeer",
        "10.78.1.2",
    );
    let bad_before = stats_of(&ns, bad);
    let (tern, started) = Tern::start_launched(&ns, Launch::Nsenter, &["--interval", "1"]);
    assert!(
        started
            .iter()
            .any(|l| l.contains("counting 1 interfaces: bad?A")),
        "{started:?}"
    );
    let mut sent = udp_across(
        &ns,
        "10.78.1.1",
        &peers,
        "10.78.1.2",
        (200, 1000),
        (100, 300),
    );

    // One that appears while tern runs.
    let late = veth_named(
        &ns,
        b"late\xfeB",
        "10.78.2.1",
        &peers,
        "latepeer",
        "10.78.2.2",
    );
    tern.wait_log("counting traffic on late?B", Duration::from_secs(10));
    let late_before = stats_of(&ns, late);
    sent = add(
        sent,
        udp_across(&ns, "10.78.2.1", &peers, "10.78.2.2", (150, 500), (50, 700)),
    );

    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    assert!(
        !stopped.log.iter().any(|l| l.contains("cannot count")),
        "{:?}",
        stopped.log
    );
    let counted = LinkStats::reported(stopped.reports.iter());
    assert_eq!(counted, sent, "tern's counts against the datagrams sent");
    let interfaces = add(
        stats_of(&ns, bad).since(bad_before),
        stats_of(&ns, late).since(late_before),
    );
    assert_eq!(counted, interfaces, "tern's counts against `ip -s link`");

    // Nothing of tern's is left on either interface.
    let tc = |args: &[&[u8]]| {
        let output = Command::new("ip")
            .args(["netns", "exec", &ns.name, "tc"])
            .args(args.iter().map(|a| std::ffi::OsStr::from_bytes(a)))
            .output()
            .expect("running tc");
        assert!(output.status.success(), "tc {args:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let qdiscs = tc(&[b"qdisc", b"show"]);
    assert!(!qdiscs.contains("clsact"), "{qdiscs}");
    for name in [&b"bad\xffA"[..], b"late\xfeB"] {
        for hook in [&b"ingress"[..], b"egress"] {
            let filters = tc(&[b"filter", b"show", b"dev", name, hook]);
            assert!(filters.trim().is_empty(), "{filters}");
        }
    }
}
