// Over 400 lines: one test per promise of least privilege, each read top to bottom, sharing
// the helpers that read credentials, capabilities, programs and links from outside tern.
//! Least privilege and attachment lifetime, checked from outside tern: /proc/<pid>/status for
//! credentials and capabilities, `ss` for sockets, /proc/<pid>/fdinfo and bpftool for
//! programs and links.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use tern_tests::{
    Pair, TempDir, Tern, bpf_ids, children_of, kernel_links, kernel_programs, proc_status, sh,
    transfer, wait_until,
};

const INTERVAL: &[&str] = &["--interval", "1"];
const CAP_NET_ADMIN: u64 = 1 << 12;
const CAP_BPF: u64 = 1 << 39;

fn id_of(flag: &str, user: &str) -> String {
    sh("id", &[flag, user]).trim().to_owned()
}

fn packets_in(reports: &[serde_json::Value]) -> u64 {
    reports
        .iter()
        .map(|r| {
            r["metrics"]["network_stats"]["packets_in"]
                .as_u64()
                .unwrap()
        })
        .sum()
}

/// The one link child of `tern` once it has dropped its privileges, waiting briefly for
/// the fork and the drop.
fn link_child(tern: &Tern) -> u32 {
    only_child(tern.pid())
}

/// The link worker of the link child `supervisor`, once it has installed its own filter.
fn link_worker(supervisor: u32) -> u32 {
    only_child_with(supervisor, "2")
}

/// The one child of `parent` once it has dropped its privileges: of the main process, the
/// link child (its supervisor).
fn only_child(parent: u32) -> u32 {
    only_child_with(parent, "1")
}

/// The one child of `parent` once it has dropped its privileges and holds `filters` seccomp
/// filters.
fn only_child_with(parent: u32, filters: &str) -> u32 {
    wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        let children = children_of(parent);
        match children[..] {
            [child]
                if proc_status(child)["NoNewPrivs"] == "1"
                    && proc_status(child)["Seccomp_filters"] == filters =>
            {
                Ok(child)
            }
            _ => Err(children),
        }
    })
    .unwrap_or_else(|children| {
        panic!("process {parent} has children {children:?}, expected exactly one")
    })
}

fn assert_credentials(pid: u32, caps: u64) {
    let status = proc_status(pid);
    let (uid, gid) = (id_of("-u", "nobody"), id_of("-g", "nobody"));
    assert_eq!(status["Uid"], [uid.as_str(); 4].join("\t"), "{status:?}");
    assert_eq!(status["Gid"], [gid.as_str(); 4].join("\t"), "{status:?}");
    assert_eq!(status["Groups"], "", "{status:?}");
    assert_eq!(status["NoNewPrivs"], "1", "{status:?}");
    for set in ["CapInh", "CapAmb"] {
        assert_eq!(status[set], format!("{:016x}", 0), "{set}: {status:?}");
    }
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(status[set], format!("{caps:016x}"), "{set}: {status:?}");
    }
}

#[test]
fn after_the_drop_tern_holds_no_capability_and_still_counts_and_reports() {
    let pair = Pair::new();
    let tern = Tern::start(&pair.a, INTERVAL);
    assert_credentials(tern.pid(), 0);
    let first = tern.next_report(Duration::from_secs(5));
    let (a, b) = pair.udp();
    transfer(&b, &a, 40, 200);
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    let mut reports = vec![first];
    reports.extend(stopped.reports);
    assert_eq!(packets_in(&reports), 40, "{reports:?}");
}

/// The link child's capabilities as the README documents them: none with TCX (6.6+), where
/// attaching a loaded program needs none; CAP_NET_ADMIN for netlink filters before that.
fn link_child_caps() -> u64 {
    let release = sh("uname", &["-r"]);
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let version = (numbers.next().unwrap(), numbers.next().unwrap());
    let mut caps = 0;
    if version < (6, 6) {
        caps |= CAP_NET_ADMIN;
    }
    if version < (5, 19) {
        caps |= CAP_BPF;
    }
    caps
}

#[test]
fn the_link_child_holds_only_what_attaching_needs() {
    let pair = Pair::new();
    let tern = Tern::start(&pair.a, INTERVAL);
    let child = link_child(&tern);
    let worker = link_worker(child);
    // The worker's filter stacks on the supervisor's.
    for (pid, filters) in [(tern.pid(), "1"), (child, "1"), (worker, "2")] {
        let status = proc_status(pid);
        assert_eq!(status["Seccomp"], "2", "no seccomp filter: {status:?}");
        assert_eq!(status["Seccomp_filters"], filters, "{status:?}");
    }
    assert_credentials(child, link_child_caps());
    assert_credentials(worker, link_child_caps());
    assert!(
        children_of(worker).is_empty(),
        "the link worker started processes"
    );
}

/// Processes that run as the test's account until dropped: `sleep` under setpriv.
struct RunningAs(std::process::Child);

impl RunningAs {
    fn new(user: &str) -> Self {
        let child = std::process::Command::new("setpriv")
            .args([
                &format!("--reuid={user}"),
                &format!("--regid={user}"),
                "--clear-groups",
                "sleep",
                "60",
            ])
            .spawn()
            .expect("setpriv");
        Self(child)
    }
}

impl Drop for RunningAs {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_user_other_processes_share_is_refused_unless_accepted() {
    let pair = Pair::new();
    // nobody: every daemon's fallback.
    let log = refused_as(&pair, "nobody");
    assert!(
        log.iter().any(|l| l.contains("\"nobody\" is shared")
            && l.contains("fallback")
            && l.contains("--shared-user")),
        "{log:?}"
    );
    // An account another process already runs as: named by that process's pid (this
    // test's, or one the machine already ran as daemon).
    let other = RunningAs::new("daemon");
    let daemon = id_of("-u", "daemon");
    let runs_as_daemon = |pid: u32| {
        let status = proc_status(pid);
        status
            .get("Uid")
            .is_some_and(|uids| uids.split('\t').any(|u| *u == daemon))
    };
    wait_until(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || match runs_as_daemon(other.0.id()) {
            true => Ok(()),
            false => Err(()),
        },
    )
    .expect("setpriv did not switch to daemon");
    let named = |log: &[String]| -> Option<u32> {
        let line = log.iter().find(|l| l.contains(" runs as it"))?;
        let after = line.split("process ").nth(1)?;
        after.split(' ').next()?.parse().ok()
    };
    let log = refused_as(&pair, "daemon");
    let pid = named(&log).unwrap_or_else(|| panic!("no process named: {log:?}"));
    assert!(runs_as_daemon(pid), "process {pid} does not run as daemon");
    // Accepted: it runs, and says what that costs.
    let accepted = Tern::spawn(
        &pair.a,
        &["--interval", "1", "--user", "daemon", "--shared-user"],
    );
    let warning = accepted.wait_log("\"daemon\" is shared (", Duration::from_secs(10));
    assert!(warning.contains(" runs as it"), "{warning}");
    accepted.next_report(Duration::from_secs(10));
    let stopped = accepted.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
}

#[test]
fn without_an_account_of_its_own_tern_says_how_to_make_one() {
    let dir = TempDir::new("lone");
    // Named like no account of this machine: its default account does not exist.
    let name = format!("tern{}x", std::process::id());
    assert!(
        !std::process::Command::new("id")
            .arg(&name)
            .output()
            .unwrap()
            .status
            .success()
    );
    let lone = dir.path.join(&name);
    std::fs::copy(tern_tests::tern_bin(), &lone).unwrap();
    let out = std::process::Command::new(&lone)
        .args([
            "run",
            "--output",
            "stdout",
            "--count",
            "1",
            "--interval",
            "1",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    for needle in [
        format!("no user \"{name}\""),
        format!("`{name} install`"),
        "useradd --system".to_owned(),
        "--user".to_owned(),
    ] {
        assert!(stderr.contains(&needle), "{needle}: {stderr}");
    }
}

#[test]
fn a_killed_link_worker_is_started_again_and_a_killed_link_child_is_said() {
    let pair = Pair::new();
    let tern = Tern::start(&pair.a, INTERVAL);
    let child = link_child(&tern);
    let worker = link_worker(child);
    // SAFETY: SIGKILL to a process of the tern this test started.
    unsafe { libc::kill(worker as i32, libc::SIGKILL) };
    tern.wait_log(
        "worker was killed by signal 9; starting it again",
        Duration::from_secs(5),
    );
    let again = link_worker(child);
    assert_ne!(again, worker);
    assert_eq!(proc_status(again)["Seccomp_filters"], "2");
    // What appears now is attached by the new worker, and counted.
    add_veth(&pair, "tr", "ts");
    tern.wait_log("counting traffic on tr", Duration::from_secs(10));
    // The link child itself: tern says new interfaces go uncounted, and why.
    // SAFETY: as above.
    unsafe { libc::kill(child as i32, libc::SIGKILL) };
    tern.wait_log("the link child exited", Duration::from_secs(5));
    add_veth(&pair, "tu", "tv");
    let line = tern.wait_log("tu is not counted", Duration::from_secs(5));
    assert!(line.contains("the link child is gone"), "{line}");
    tern.next_report(Duration::from_secs(5));
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    // Gone, or a zombie left to whoever adopted it.
    let state = std::fs::read_to_string(format!("/proc/{again}/stat")).unwrap_or_default();
    assert!(
        state.is_empty() || state.contains(") Z "),
        "the link worker outlived the link child: {state}"
    );
}

#[test]
fn with_static_interfaces_no_process_keeps_a_capability() {
    let pair = Pair::new();
    let tern = Tern::start(&pair.a, &["--interval", "1", "--static-interfaces"]);
    assert_credentials(tern.pid(), 0);
    assert!(children_of(tern.pid()).is_empty(), "a child was started");
    add_veth(&pair, "ts", "tu");
    tern.wait_log("ts is not counted", Duration::from_secs(5));
    tern.next_report(Duration::from_secs(5));
}

/// `ip link add NAME type veth peer name PEER` in `pair`'s first namespace.
fn add_veth(pair: &Pair, name: &str, peer: &str) {
    sh(
        "ip",
        &[
            "-n",
            &pair.a.name,
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            peer,
        ],
    );
}

/// The log of a tern that `--user USER` stopped before it attached or reported anything.
fn refused_as(pair: &Pair, user: &str) -> Vec<String> {
    let tern = Tern::spawn(&pair.a, &["--interval", "1", "--user", user]);
    let stopped = tern.wait_exit(Duration::from_secs(10));
    assert_eq!(stopped.code, Some(1), "{:?}", stopped.log);
    assert!(stopped.reports.is_empty(), "{:?}", stopped.reports);
    assert!(
        !stopped.log.iter().any(|l| l.contains("attached")),
        "{:?}",
        stopped.log
    );
    stopped.log
}

#[test]
fn an_unknown_user_stops_tern_before_it_reports() {
    let pair = Pair::new();
    let log = refused_as(&pair, "tern-no-such-user");
    assert!(
        log.iter()
            .any(|l| l.contains("\"tern-no-such-user\"") && l.contains("does not exist")),
        "{log:?}"
    );
}

#[test]
fn tern_listens_on_no_socket_of_any_kind() {
    let pair = Pair::new();
    let tern = Tern::start(&pair.a, INTERVAL);
    let child = link_child(&tern);
    let worker = link_worker(child);
    tern.next_report(Duration::from_secs(5));
    let pids = [tern.pid(), child, worker];
    // Every family ss knows, listening sockets only, with their processes.
    let listening = pair.a.exec(&["ss", "-l", "-n", "-p", "-A", "all"]);
    let root_listening = sh("ss", &["-l", "-n", "-p", "-A", "all"]);
    for pid in pids {
        let needle = format!("pid={pid},");
        for (where_, out) in [
            ("its namespace", &listening),
            ("the root namespace", &root_listening),
        ] {
            assert!(
                !out.contains(&needle),
                "process {pid} listens in {where_}:\n{out}"
            );
        }
        // Ground truth from /proc: no socket it holds can accept or receive from others.
        for socket in socket_inodes(pid) {
            assert!(
                unreachable_from_outside(pid, &socket),
                "process {pid} holds socket {socket}, which listens or receives"
            );
        }
    }
}

fn socket_inodes(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            let target = target.to_string_lossy();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect()
}

/// True for a netlink socket, a TCP socket not in LISTEN, or a unix socket without the
/// accepting flag; false for anything else (listening, UDP, raw, packet).
fn unreachable_from_outside(pid: u32, inode: &str) -> bool {
    let table =
        |name: &str| std::fs::read_to_string(format!("/proc/{pid}/net/{name}")).unwrap_or_default();
    let row = |text: &str, inode_column: usize| -> Option<Vec<String>> {
        text.lines().skip(1).find_map(|l| {
            let cols: Vec<String> = l.split_whitespace().map(str::to_owned).collect();
            (cols.get(inode_column).map(String::as_str) == Some(inode)).then_some(cols)
        })
    };
    if table("netlink")
        .lines()
        .any(|l| l.split_whitespace().last() == Some(inode))
    {
        return true;
    }
    for tcp in ["tcp", "tcp6"] {
        if let Some(cols) = row(&table(tcp), 9) {
            // State 0A is TCP_LISTEN.
            return cols[3] != "0A";
        }
    }
    if let Some(cols) = row(&table("unix"), 6) {
        // Flag 00010000 is __SO_ACCEPTCON: a listening unix socket.
        let flags = u32::from_str_radix(&cols[3], 16).unwrap_or(u32::MAX);
        return flags & 0x10000 == 0;
    }
    false
}

/// Waits until none of `programs` is loaded and no link of theirs exists.
fn assert_released(programs: &HashSet<u64>, links: &HashSet<u64>) {
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let loaded: Vec<u64> = kernel_programs().intersection(programs).copied().collect();
        let linked: Vec<(u64, u64)> = kernel_links()
            .into_iter()
            .filter(|(link, prog)| links.contains(link) || programs.contains(prog))
            .collect();
        if loaded.is_empty() && linked.is_empty() {
            Ok(())
        } else {
            Err((loaded, linked))
        }
    })
    .unwrap_or_else(|(loaded, linked)| {
        panic!("still loaded: programs {loaded:?}, links {linked:?}")
    });
}

/// Programs and links held by tern and its link child.
fn held(tern: &Tern) -> (HashSet<u64>, HashSet<u64>) {
    let child = link_child(tern);
    let (mut programs, mut links) = bpf_ids(tern.pid());
    let (child_programs, child_links) = bpf_ids(child);
    programs.extend(child_programs);
    links.extend(child_links);
    // The two TC programs, the 5 tracepoint programs, the 7 cgroup hooks.
    assert_eq!(programs.len(), 14, "{programs:?}");
    // Each one linked once: TC ingress and egress on ta, every tracepoint, every hook.
    assert_eq!(links.len(), 14, "{links:?}");
    (programs, links)
}

/// How many descriptors of each kind (as /proc names their files) `pid` holds.
fn descriptor_kinds(pid: u32) -> std::collections::HashMap<String, usize> {
    let mut kinds = std::collections::HashMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            *kinds
                .entry(target.to_string_lossy().into_owned())
                .or_default() += 1;
        }
    }
    kinds
}

#[test]
fn the_main_process_keeps_the_maps_and_no_program() {
    let pair = Pair::new();
    let tern = Tern::start(&pair.a, INTERVAL);
    let (programs, links) = held(&tern);
    let kinds = descriptor_kinds(tern.pid());
    for kind in [
        "anon_inode:bpf-prog",
        "anon_inode:bpf_link",
        "anon_inode:btf",
        "anon_inode:[perf_event]",
    ] {
        assert_eq!(kinds.get(kind), None, "{kind}: {kinds:?}");
    }
    assert!(kinds["anon_inode:bpf-map"] >= 10, "{kinds:?}");
    // The link child keeps them: every one is still loaded and linked, and counts.
    assert!(programs.is_subset(&kernel_programs()));
    let linked: HashSet<u64> = kernel_links().into_iter().map(|(id, _)| id).collect();
    assert!(links.is_subset(&linked));
    let (a, b) = pair.udp();
    transfer(&b, &a, 10, 100);
    drop((a, b));
    let stopped = tern.stop();
    assert_eq!(packets_in(&stopped.reports), 10, "{:?}", stopped.log);
    // With no link child, the main process keeps the links, and still no program.
    let tern = Tern::start(&pair.a, &["--interval", "1", "--static-interfaces"]);
    let kinds = descriptor_kinds(tern.pid());
    assert_eq!(kinds.get("anon_inode:bpf-prog"), None, "{kinds:?}");
    assert!(kinds["anon_inode:bpf_link"] >= 12, "{kinds:?}");
    let (a, b) = pair.udp();
    transfer(&b, &a, 10, 100);
    let stopped = tern.stop();
    assert_eq!(packets_in(&stopped.reports), 10, "{:?}", stopped.log);
}

#[test]
fn descriptors_tern_inherits_are_closed_at_start() {
    let pair = Pair::new();
    let state = TempDir::new("inherited");
    let tern = tern_tests::tern_bin();
    let marker = state.path.join("marker");
    std::fs::write(&marker, "left open").unwrap();
    // Descriptor 7, open on a file only this test opens, as a careless parent would leave it.
    let script = format!(
        "exec 7< {}; exec nsenter --net={} {} run --user nobody --shared-user \
         --output stdout --interval 1 --count 2 --state-dir {}/state",
        marker.display(),
        pair.a.path(),
        tern.display(),
        state.path.display()
    );
    let mut child = std::process::Command::new("sh")
        .args(["-c", &script])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("sh");
    let pid = child.id();
    // Once tern holds maps, its start is past the point where it closes what it inherited.
    let kinds = wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        let kinds = descriptor_kinds(pid);
        match kinds.contains_key("anon_inode:bpf-map") {
            true => Ok(kinds),
            false => Err(kinds),
        }
    })
    .unwrap_or_else(|kinds| panic!("tern loaded nothing: {kinds:?}"));
    assert_eq!(kinds.get(marker.to_str().unwrap()), None, "{kinds:?}");
    assert!(child.wait().expect("tern").success());
}

/// A name of tern's in the kernel: `p` or `m` and two digits.
fn neutral(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 3 && matches!(b[0], b'p' | b'm') && b[1..].iter().all(u8::is_ascii_digit)
}

#[test]
fn bpftool_and_ps_show_nothing_that_says_what_tern_watches() {
    let pair = Pair::new();
    let tern = Tern::start(&pair.a, INTERVAL);
    let (programs, _) = held(&tern);
    let child = link_child(&tern);
    let worker = link_worker(child);
    let shown = |what: &str| -> Vec<serde_json::Value> {
        let out = sh("bpftool", &["-j", what, "show"]);
        let json: serde_json::Value = serde_json::from_str(&out).expect("bpftool -j output");
        json.as_array().cloned().unwrap_or_default()
    };
    let mut maps = HashSet::new();
    for program in shown("prog")
        .iter()
        .filter(|p| p["id"].as_u64().is_some_and(|id| programs.contains(&id)))
    {
        let name = program["name"].as_str().unwrap_or_default();
        assert!(neutral(name), "program {name}: {program}");
        // No BTF: no function names, types or source lines in the kernel.
        assert!(
            program.get("btf_id").is_none(),
            "program {name} carries BTF"
        );
        maps.extend(
            program["map_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_u64),
        );
    }
    let maps: Vec<serde_json::Value> = shown("map")
        .into_iter()
        .filter(|m| m["id"].as_u64().is_some_and(|id| maps.contains(&id)))
        .collect();
    assert!(maps.len() >= 10, "{maps:?}");
    for map in &maps {
        let name = map["name"].as_str().unwrap_or_default();
        // aya-log finds its ring by name; a global's map is named by its section.
        assert!(
            neutral(name) || name == "AYA_LOGS" || name.starts_with('.'),
            "map {name}: {map}"
        );
        assert!(map.get("btf_id").is_none(), "map {name} carries BTF");
    }
    // Every thread of every process carries the binary's name.
    let binary = tern_tests::tern_bin();
    let binary = binary.file_name().unwrap().to_str().unwrap();
    for pid in [tern.pid(), child, worker] {
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
        {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap();
            assert_eq!(comm.trim(), &binary[..binary.len().min(15)], "{pid}");
        }
    }
}

#[test]
fn sigterm_leaves_none_of_terns_programs_attached() {
    let pair = Pair::new();
    let tern = Tern::start(&pair.a, INTERVAL);
    let (programs, links) = held(&tern);
    let attached: HashSet<u64> = kernel_links()
        .into_iter()
        .filter(|(_, prog)| programs.contains(prog))
        .map(|(link, _)| link)
        .collect();
    assert_eq!(attached, links, "bpftool disagrees with tern's fds");
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    assert_released(&programs, &links);
}

#[test]
fn kill_9_then_restart_leaves_no_duplicate_attachment() {
    let pair = Pair::new();
    let tern = Tern::start(&pair.a, INTERVAL);
    let (old_programs, old_links) = held(&tern);
    let child = link_child(&tern);
    // SAFETY: SIGKILL to the tern process this test started.
    unsafe { libc::kill(tern.pid() as i32, libc::SIGKILL) };
    let _ = tern.wait_exit(Duration::from_secs(5));
    wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        if std::path::Path::new(&format!("/proc/{child}")).exists() {
            Err(())
        } else {
            Ok(())
        }
    })
    .unwrap_or_else(|()| panic!("the link child outlived its parent"));
    assert_released(&old_programs, &old_links);

    let tern = Tern::start(&pair.a, INTERVAL);
    let (programs, links) = held(&tern);
    let on_hooks: Vec<(u64, u64)> = kernel_links()
        .into_iter()
        .filter(|(_, prog)| programs.contains(prog) || old_programs.contains(prog))
        .collect();
    // The new run's 14 links, none of the old run's.
    assert_eq!(on_hooks.len(), 14, "{on_hooks:?} (held: {links:?})");
    let (a, b) = pair.udp();
    transfer(&b, &a, 25, 100);
    let stopped = tern.stop();
    assert_eq!(packets_in(&stopped.reports), 25, "{:?}", stopped.log);
}

#[test]
fn an_interface_deleted_under_tern_is_let_go_and_tern_keeps_reporting() {
    let pair = Pair::new();
    let tern = Tern::start(&pair.a, INTERVAL);
    sh(
        "ip",
        &["-n", &pair.a.name, "link", "del", tern_tests::DEV_A],
    );
    tern.wait_log("interface ta is gone", Duration::from_secs(5));
    let before = tern.next_report(Duration::from_secs(5));
    let after = tern.next_report(Duration::from_secs(5));
    assert!(before["header"]["report_id"].as_u64() < after["header"]["report_id"].as_u64());
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
}

/// Runs tern in `ns` under `setpriv` with the given bounding set, to its end, with a state
/// directory that already belongs to nobody, as `tern install` leaves it for its account.
fn run_bounded(pair: &Pair, bounding: &str) -> std::process::Output {
    let tern = tern_tests::tern_bin();
    let state = TempDir::new("bounded-state");
    std::fs::set_permissions(
        &state.path,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod");
    std::os::unix::fs::chown(&state.path, Some(65534), Some(65534)).expect("chown");
    std::process::Command::new("timeout")
        .args([
            "20",
            "nsenter",
            &format!("--net=/run/netns/{}", pair.a.name),
            "setpriv",
        ])
        .args(["--bounding-set", bounding])
        .arg(tern)
        .args([
            "run",
            "--output",
            "stdout",
            "--interval",
            "1",
            "--count",
            "1",
            "--user",
            "nobody",
            "--shared-user",
            "--state-dir",
        ])
        .arg(&state.path)
        .output()
        .expect("running tern under setpriv")
}

#[test]
fn tern_starts_with_only_the_capabilities_its_unit_grants() {
    let pair = Pair::new();
    let out = run_bounded(
        &pair,
        "-all,+bpf,+perfmon,+net_admin,+setuid,+setgid,+setpcap",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        1,
        "{stderr}"
    );
}

#[test]
fn a_missing_capability_is_named_before_anything_is_attached() {
    let pair = Pair::new();
    let out = run_bounded(&pair, "-net_admin");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    // One error, after the warning that nobody is shared.
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        stderr.contains("CAP_NET_ADMIN") && stderr.contains("nothing was attached"),
        "{stderr}"
    );
}

#[test]
fn systemd_hears_ready_then_watchdog_pings_between_reports_then_stopping() {
    let dir = TempDir::new("notify");
    let path = dir.path.join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    // As systemd's own socket: tern sends after dropping to an unprivileged user.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let pair = Pair::new();
    // Reports every 5 minutes, a 1 s watchdog: pings must come from the wait, not reports.
    let tern = Tern::spawn_env(
        &pair.a,
        &["--interval", "300"],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let mut buf = [0u8; 256];
    let mut next = || {
        let n = socket.recv(&mut buf).expect("a notification within 5 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next(), "READY=1");
    // Credentials are final before READY=1.
    assert_credentials(tern.pid(), 0);
    let start = Instant::now();
    for _ in 0..5 {
        assert_eq!(next(), "WATCHDOG=1");
    }
    // Pings every half watchdog period give 2.5 s; pings tied to reports would give none.
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_millis(4500),
        "5 pings took {elapsed:?}"
    );
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    let mut states = Vec::new();
    for _ in 0..10 {
        let state = next();
        let done = state == "STOPPING=1";
        states.push(state);
        if done {
            break;
        }
    }
    assert_eq!(
        states.last().map(String::as_str),
        Some("STOPPING=1"),
        "{states:?}"
    );
}
