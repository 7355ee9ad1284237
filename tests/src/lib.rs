//! Harness for tern's kernel tests: throwaway network namespaces joined by veth pairs, a tern
//! process running in one of them, and ground truth read from the kernel (interface
//! statistics, `tcp_info`) or from the traffic a test sent itself.
//!
//! Everything a test creates is owned by a guard whose Drop removes it, so a failing test
//! leaves no namespace, interface, TC filter or process behind. `broker` holds the MQTT side:
//! PKI, mosquitto, a responder playing the cloud, and a proxy.

pub mod broker;

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::{BufRead, BufReader},
    net::UdpSocket,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod bench;
pub mod schema;

/// Runs a command and panics with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The tern binary under test, built by `cargo xtask test`.
pub fn tern_bin() -> PathBuf {
    let path = std::env::var_os("TERN_BIN")
        .expect("TERN_BIN is not set: run the kernel tests with `cargo xtask test`");
    let path = PathBuf::from(path);
    assert!(path.is_file(), "TERN_BIN={} is not a file", path.display());
    path
}

/// Sends `count` datagrams of `size` bytes from `from` to `to`, in small batches each
/// received before the next, so no socket buffer or backlog overflows and every datagram
/// sent is a datagram on the wire and received.
pub fn transfer(from: &UdpSocket, to: &UdpSocket, count: u64, size: usize) {
    let dest = to.local_addr().expect("receiver address");
    let payload = vec![0x5a; size];
    let mut buf = vec![0u8; size + 1];
    to.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sent = 0;
    while sent < count {
        let batch = (count - sent).min(16);
        for _ in 0..batch {
            from.send_to(&payload, dest).expect("send_to");
        }
        for _ in 0..batch {
            let n = to
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("datagram {sent} of {count} never arrived: {e}"));
            assert_eq!(n, size);
            sent += 1;
        }
    }
}

/// A network namespace that exists until dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A fresh namespace with loopback up and IPv6 off, so that no neighbour discovery or
    /// multicast report adds traffic the test did not send.
    pub fn new(tag: &str) -> Self {
        let ns = Self::create(tag);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        ns
    }

    /// A fresh namespace with loopback up and IPv6 on (::1 on loopback).
    pub fn dual_stack(tag: &str) -> Self {
        let ns = Self::create(tag);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0"]);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=0"]);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"]);
        ns
    }

    fn create(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tern-t{}-{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        sh("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn mac(&self, dev: &str) -> String {
        let out = sh("ip", &["-n", &self.name, "-j", "link", "show", "dev", dev]);
        let json: Value = serde_json::from_str(&out).expect("ip -j output");
        json[0]["address"].as_str().expect("a MAC").to_owned()
    }

    /// A permanent neighbour entry: `addr` is at `mac` on `dev`, so no ARP or ND packet
    /// crosses the link.
    pub fn neighbour(&self, addr: &str, mac: &str, dev: &str) {
        self.exec(&[
            "ip",
            "neigh",
            "replace",
            addr,
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ]);
    }

    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets made there stay in
    /// this namespace wherever they are used afterwards.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("the thread in the namespace panicked")
    }

    /// Interface statistics as the kernel keeps them (`ip -s link`).
    pub fn link_stats(&self, dev: &str) -> LinkStats {
        let out = sh(
            "ip",
            &["-n", &self.name, "-j", "-s", "link", "show", "dev", dev],
        );
        let json: Value = serde_json::from_str(&out).expect("ip -j output");
        let stats = &json[0]["stats64"];
        let n = |dir: &str, field: &str| stats[dir][field].as_u64().expect("a counter");
        LinkStats {
            bytes_in: n("rx", "bytes"),
            packets_in: n("rx", "packets"),
            bytes_out: n("tx", "bytes"),
            packets_out: n("tx", "packets"),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes first: a namespace with live processes outlives `ip netns del`.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub bytes_in: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub packets_out: u64,
}

impl LinkStats {
    /// The sum of the `network_stats` of `reports` (their deltas add up).
    pub fn reported<'a>(reports: impl IntoIterator<Item = &'a Value>) -> LinkStats {
        let mut total = LinkStats::default();
        for report in reports {
            let ns = &report["metrics"]["network_stats"];
            let n = |k: &str| ns[k].as_u64().unwrap_or_else(|| panic!("{k} in {report}"));
            total.bytes_in += n("bytes_in");
            total.packets_in += n("packets_in");
            total.bytes_out += n("bytes_out");
            total.packets_out += n("packets_out");
        }
        total
    }

    pub fn since(self, before: LinkStats) -> LinkStats {
        LinkStats {
            bytes_in: self.bytes_in - before.bytes_in,
            packets_in: self.packets_in - before.packets_in,
            bytes_out: self.bytes_out - before.bytes_out,
            packets_out: self.packets_out - before.packets_out,
        }
    }
}

/// Two namespaces joined by a veth pair: `a` (10.77.0.1, device `ta`) where tern runs and
/// `b` (10.77.0.2, device `tb`) as its peer. Static neighbour entries replace ARP, so the
/// link carries only what a test sends.
pub struct Pair {
    pub a: Netns,
    pub b: Netns,
}

pub const ADDR_A: &str = "10.77.0.1";
pub const ADDR_B: &str = "10.77.0.2";
pub const DEV_A: &str = "ta";
pub const DEV_B: &str = "tb";

/// Ethernet (14) + IPv4 (20) + UDP (8) bytes around each datagram's payload.
pub const UDP_OVERHEAD: u64 = 42;

pub const ADDR6_A: &str = "fd00:77::1";
pub const ADDR6_B: &str = "fd00:77::2";

impl Pair {
    pub fn new() -> Self {
        Self::join(Netns::new("a"), Netns::new("b"))
    }

    /// As `new`, with IPv6 too: fd00:77::1 on `ta`, fd00:77::2 on `tb`.
    pub fn dual_stack() -> Self {
        let pair = Self::join(Netns::dual_stack("a"), Netns::dual_stack("b"));
        let (mac_a, mac_b) = (pair.a.mac(DEV_A), pair.b.mac(DEV_B));
        for (ns, dev, addr, peer, mac) in [
            (&pair.a, DEV_A, ADDR6_A, ADDR6_B, &mac_b),
            (&pair.b, DEV_B, ADDR6_B, ADDR6_A, &mac_a),
        ] {
            ns.exec(&[
                "ip",
                "addr",
                "add",
                &format!("{addr}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            ns.neighbour(peer, mac, dev);
        }
        pair
    }

    /// A UDP socket on port 9000 at each end: a's first.
    pub fn udp(&self) -> (UdpSocket, UdpSocket) {
        let a = self
            .a
            .enter(|| UdpSocket::bind((ADDR_A, 9000)).expect("bind in a"));
        let b = self
            .b
            .enter(|| UdpSocket::bind((ADDR_B, 9000)).expect("bind in b"));
        (a, b)
    }

    fn join(a: Netns, b: Netns) -> Self {
        sh(
            "ip",
            &[
                "-n", &a.name, "link", "add", DEV_A, "type", "veth", "peer", "name", DEV_B,
                "netns", &b.name,
            ],
        );
        for (ns, dev, addr) in [(&a, DEV_A, ADDR_A), (&b, DEV_B, ADDR_B)] {
            ns.exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ns.exec(&["ip", "link", "set", dev, "up"]);
        }
        let (mac_a, mac_b) = (a.mac(DEV_A), b.mac(DEV_B));
        a.neighbour(ADDR_B, &mac_b, DEV_A);
        b.neighbour(ADDR_A, &mac_a, DEV_B);
        Self { a, b }
    }
}

impl Default for Pair {
    fn default() -> Self {
        Self::new()
    }
}

/// A running tern with its state directory; killed (and the directory removed, unless the
/// test owns it) when dropped.
pub struct Tern {
    child: Child,
    pub state_dir: PathBuf,
    owns_state: bool,
    /// Each report with the moment it was read from tern's stdout.
    reports: Receiver<(Instant, Result<Value, String>)>,
    log: Receiver<String>,
    sizes: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
}

impl Tern {
    /// Starts `tern run --output stdout` with `args` in `ns`, and waits until it has attached.
    pub fn start(ns: &Netns, args: &[&str]) -> Self {
        Self::start_with_env(ns, args, &[])
    }

    /// As `start`, with more environment variables for tern (e.g. TERN_LOG).
    pub fn start_with_env(ns: &Netns, args: &[&str], env: &[(&str, &str)]) -> Self {
        let tern = Self::spawn_env(ns, args, env);
        tern.wait_log("attached", Duration::from_secs(20));
        tern
    }

    /// Starts `tern run --output stdout` with `args` in `ns` without waiting for anything.
    pub fn spawn(ns: &Netns, args: &[&str]) -> Self {
        Self::spawn_env(ns, args, &[])
    }

    /// As [`Tern::spawn`], with extra environment variables.
    pub fn spawn_env(ns: &Netns, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut all = vec!["--output", "stdout"];
        all.extend_from_slice(args);
        Self::spawn_in(ns, None, &all, env)
    }

    /// Starts `tern run --state-dir STATE_DIR` with `args` (and no output of its own choosing)
    /// in `ns`, and waits until it has attached. The state directory outlives this tern (a
    /// restart can reuse it).
    pub fn launch(ns: &Netns, state_dir: &Path, args: &[&str]) -> Self {
        let tern = Self::spawn_in(ns, Some(state_dir), args, &[]);
        tern.wait_log("attached", Duration::from_secs(20));
        tern
    }

    /// Starts tern in `ns`, with `state_dir` or else a state directory of its own that goes
    /// when it does.
    fn spawn_in(ns: &Netns, state_dir: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let owns_state = state_dir.is_none();
        let state_dir = state_dir.map_or_else(
            || {
                std::env::temp_dir().join(format!(
                    "tern-test-state-{}-{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::SeqCst)
                ))
            },
            Path::to_path_buf,
        );
        // nsenter, not `ip netns exec`: the latter remounts /sys, which hides tracefs. Both
        // exec tern in place, so the child's pid is tern's.
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name))
            .arg(tern_bin())
            .args(["run", "--state-dir"])
            .arg(&state_dir)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tern");
        let (report_tx, reports) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let sizes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sizes_seen = sizes.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let bytes = if line.starts_with('{') {
                    line.len()
                } else {
                    line.len() / 2
                };
                sizes_seen.lock().expect("sizes").push(bytes);
                if report_tx.send((Instant::now(), decode(&line))).is_err() {
                    break;
                }
            }
        });
        let (log_tx, log) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("tern: {line}");
                if log_tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            state_dir,
            owns_state,
            reports,
            log,
            sizes,
        }
    }

    /// The pid of the tern process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Encoded size in bytes of every report printed so far (hex CBOR counted as bytes).
    pub fn encoded_sizes(&self) -> Vec<usize> {
        self.sizes.lock().expect("sizes").clone()
    }

    /// Waits for a log line containing `needle`; panics after `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("tern did not log {needle:?} within {timeout:?}"),
            }
        }
    }

    /// The next report, checked against the document rules and with long names whatever
    /// its encoding; panics after `timeout`.
    pub fn next_report(&self, timeout: Duration) -> Value {
        self.next_timed(timeout).1
    }

    fn next_timed(&self, timeout: Duration) -> (Instant, Value) {
        match self.reports.recv_timeout(timeout) {
            Ok((at, report)) => (at, report.unwrap_or_else(|e| panic!("{e}"))),
            Err(RecvTimeoutError::Timeout) => panic!("no report within {timeout:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("tern exited before reporting"),
        }
    }

    /// Every report not read yet, up to and including the first one collected after
    /// `since`: whatever happened before `since` is counted in these reports, however slow the
    /// machine. tern collects a report every interval and prints it as soon as it is built,
    /// so the report after the first one printed after `since` was collected after `since`. Panics when a
    /// report takes longer than `timeout` or 100 reports go by.
    pub fn reports_through(&self, since: Instant, timeout: Duration) -> Vec<Value> {
        let mut reports = Vec::new();
        let mut printed_after = false;
        for _ in 0..100 {
            let (at, report) = self.next_timed(timeout);
            reports.push(report);
            if printed_after {
                return reports;
            }
            printed_after = at > since;
        }
        panic!("100 reports went by without one collected after the moment asked for");
    }

    /// Stops tern with SIGTERM; returns its exit code and what it printed that the test
    /// had not read yet.
    pub fn stop(self) -> Stopped {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait_exit(Duration::from_secs(10))
    }

    /// Waits for tern to exit on its own; panics after `timeout`.
    pub fn wait_exit(mut self, timeout: Duration) -> Stopped {
        let deadline = Instant::now() + timeout;
        let code = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status.code();
            }
            assert!(
                Instant::now() < deadline,
                "tern did not exit within {timeout:?}"
            );
            thread::sleep(Duration::from_millis(20));
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        Stopped {
            code,
            reports: drain(&self.reports, deadline)
                .into_iter()
                .map(|(_, r)| r.unwrap_or_else(|e| panic!("{e}")))
                .collect(),
            log: drain(&self.log, deadline),
        }
    }
}

/// One line of tern's stdout: a JSON document, or a CBOR document in hex. Every report is
/// checked against the document rules.
fn decode(line: &str) -> Result<Value, String> {
    let doc: Value = if line.starts_with('{') {
        serde_json::from_str(line).map_err(|e| format!("not JSON ({e}): {line}"))?
    } else {
        let bytes = (0..line.len())
            .step_by(2)
            .map(|i| {
                line.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| format!("neither JSON nor hex: {line}"))?;
        ciborium::from_reader(bytes.as_slice()).map_err(|e| format!("not CBOR ({e}): {line}"))?
    };
    schema::validate(&doc)
}

/// Everything a channel yields until its sender is gone or `deadline` passes.
fn drain<T>(rx: &Receiver<T>, deadline: Instant) -> Vec<T> {
    let mut all = Vec::new();
    while let Ok(item) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        all.push(item);
    }
    all
}

pub struct Stopped {
    pub code: Option<i32>,
    pub reports: Vec<Value>,
    pub log: Vec<String>,
}

impl Drop for Tern {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.owns_state {
            let _ = std::fs::remove_dir_all(&self.state_dir);
        }
    }
}

/// A directory under the system's temporary directory, removed with its contents when dropped.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "tern-t{}-{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        // Open to traverse (0755): tern reaches a state directory inside as its own account.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        Self { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The fields of /proc/<pid>/status, by name.
pub fn proc_status(pid: u32) -> HashMap<String, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// Pids whose parent is `pid`, from /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // The parent pid is the second field after the parenthesised command name.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            found.push(child);
        }
    }
    found
}

/// The eBPF program and link ids `pid` holds fds of, read from /proc/<pid>/fdinfo.
pub fn bpf_ids(pid: u32) -> (HashSet<u64>, HashSet<u64>) {
    let (mut programs, mut links) = (HashSet::new(), HashSet::new());
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return (programs, links);
    };
    for entry in dir.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in info.lines() {
            let mut parts = line.split_whitespace();
            let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(value) = value.parse() else { continue };
            match key {
                "prog_id:" => programs.insert(value),
                "link_id:" => links.insert(value),
                _ => false,
            };
        }
    }
    (programs, links)
}

/// Every eBPF link in the kernel as (link id, program id), from `bpftool link show`.
pub fn kernel_links() -> Vec<(u64, u64)> {
    let out = sh("bpftool", &["-j", "link", "show"]);
    let json: Value = serde_json::from_str(&out).expect("bpftool -j output");
    json.as_array()
        .map(|links| {
            links
                .iter()
                .filter_map(|l| Some((l["id"].as_u64()?, l["prog_id"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Ids of every eBPF program loaded in the kernel, from `bpftool prog show`.
pub fn kernel_programs() -> HashSet<u64> {
    let out = sh("bpftool", &["-j", "prog", "show"]);
    let json: Value = serde_json::from_str(&out).expect("bpftool -j output");
    json.as_array()
        .map(|progs| progs.iter().filter_map(|p| p["id"].as_u64()).collect())
        .unwrap_or_default()
}

/// The kernel's `struct tcp_info` fields the tests compare against.
#[derive(Debug, Clone, Copy)]
pub struct TcpInfo {
    pub segs_out: u64,
    pub segs_in: u64,
    /// Payload bytes sent, retransmissions included.
    pub bytes_sent: u64,
    /// Payload bytes received, each byte once.
    pub bytes_received: u64,
}

pub fn tcp_info(socket: &impl AsRawFd) -> TcpInfo {
    let mut buf = [0u8; 232];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf and len describe a writable buffer of len bytes.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    assert!(
        len as usize >= 216,
        "this kernel's tcp_info lacks bytes_sent"
    );
    let u32_at = |o: usize| u64::from(u32::from_ne_bytes(buf[o..o + 4].try_into().unwrap()));
    let u64_at = |o: usize| u64::from_ne_bytes(buf[o..o + 8].try_into().unwrap());
    TcpInfo {
        segs_out: u32_at(136),
        segs_in: u32_at(140),
        bytes_sent: u64_at(200),
        bytes_received: u64_at(128),
    }
}

/// A child process in a namespace holding TCP connections open until dropped: one process
/// may not hold both ends of 10,000 connections. It is the calling test binary again,
/// running its ignored test `hold_connections`, which calls [`hold_connections`].
pub struct Clients(Child);

impl Clients {
    pub fn connect(ns: &Netns, host: &str, port: u16, count: usize) -> Self {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name))
            .arg(std::env::current_exe().expect("the test binary"))
            .args(["--exact", "hold_connections", "--ignored", "--nocapture"])
            .env("HOLD_CONNECTIONS", format!("{host} {port} {count}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the client process");
        let stdout = child.stdout.take().expect("stdout");
        let ready = BufReader::new(stdout)
            .lines()
            .take(100)
            .any(|l| l.is_ok_and(|l| l == "connected"));
        assert!(ready, "the client process did not connect");
        Self(child)
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The body of a test binary's `hold_connections`: connects as HOLD_CONNECTIONS says
/// ("host port count"), prints "connected", and holds until killed, stdin closes, or ten
/// minutes pass. Does nothing when run as an ordinary test.
pub fn hold_connections() {
    let Ok(spec) = std::env::var("HOLD_CONNECTIONS") else {
        return;
    };
    let parts: Vec<&str> = spec.split(' ').collect();
    let (host, port, count): (&str, u16, usize) = (
        parts[0],
        parts[1].parse().expect("a port"),
        parts[2].parse().expect("a count"),
    );
    let held: Vec<std::net::TcpStream> = (0..count)
        .map(|_| std::net::TcpStream::connect((host, port)).expect("connect"))
        .collect();
    println!("connected");
    thread::spawn(|| {
        thread::sleep(Duration::from_secs(600));
        std::process::exit(0);
    });
    let mut buf = [0u8; 1];
    let _ = std::io::Read::read(&mut std::io::stdin(), &mut buf);
    drop(held);
}

/// Ground truth from `ss` and `ip addr` in a namespace, for the socket tests.
pub mod ss {
    use std::{
        collections::{BTreeSet, HashMap},
        net::{IpAddr, Ipv4Addr},
    };

    use serde_json::Value;

    use super::{Netns, sh};

    /// (port, interface) of every listening socket: `ss -l` for TCP, `ss -l` (UNCONN) for
    /// UDP. The interface is the one `ip addr` lists the bound address on; none for a
    /// wildcard bind.
    pub fn listening(ns: &Netns, proto: char) -> BTreeSet<(u16, Option<String>)> {
        let owners = owners(ns);
        lines(ns, &[&format!("-H{proto}ln")])
            .iter()
            .map(|cols| {
                let (ip, port) = endpoint(&cols[3]);
                (port, interface(ip, &owners))
            })
            .collect()
    }

    /// (remote "ip:port", local port, local interface) of every established TCP connection.
    pub fn established(ns: &Netns) -> Vec<(String, u16, Option<String>)> {
        let owners = owners(ns);
        let mut all: Vec<_> = lines(ns, &["-Htan"])
            .iter()
            .filter(|cols| cols[0] == "ESTAB")
            .map(|cols| {
                let (local, local_port) = endpoint(&cols[3]);
                let (remote, remote_port) = endpoint(&cols[4]);
                let remote = std::net::SocketAddr::new(remote, remote_port).to_string();
                (remote, local_port, interface(local, &owners))
            })
            .collect();
        all.sort();
        all
    }

    fn lines(ns: &Netns, args: &[&str]) -> Vec<Vec<String>> {
        let mut full = vec!["ss"];
        full.extend_from_slice(args);
        ns.exec(&full)
            .lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .filter(|cols| cols.len() >= 5)
            .collect()
    }

    /// "10.0.0.1:80", "[fd00::1]:80", "*:80", "127.0.0.53%lo:53", "[::ffff:10.0.0.1]:80".
    fn endpoint(text: &str) -> (IpAddr, u16) {
        let (host, port) = text.rsplit_once(':').expect("address:port");
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = host.split('%').next().expect("a host");
        let ip = if host == "*" {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            host.parse::<IpAddr>()
                .unwrap_or_else(|_| panic!("ss address {text}"))
                .to_canonical()
        };
        (ip, port.parse().expect("a port"))
    }

    fn owners(ns: &Netns) -> HashMap<IpAddr, String> {
        let json: Value =
            serde_json::from_str(&sh("ip", &["-n", &ns.name, "-j", "addr", "show"])).unwrap();
        let mut owners = HashMap::new();
        for link in json.as_array().expect("a link list") {
            let name = link["ifname"].as_str().expect("ifname");
            for addr in link["addr_info"].as_array().into_iter().flatten() {
                if let Some(local) = addr["local"].as_str() {
                    owners.insert(local.parse().expect("an address"), name.to_owned());
                }
            }
        }
        owners
    }

    fn interface(ip: IpAddr, owners: &HashMap<IpAddr, String>) -> Option<String> {
        if ip.is_unspecified() {
            return None;
        }
        owners.get(&ip).cloned().or_else(|| {
            ip.is_loopback()
                .then(|| owners.get(&IpAddr::V4(Ipv4Addr::LOCALHOST)).cloned())
                .flatten()
        })
    }
}
