//! Harness for tern's kernel tests: throwaway network namespaces joined by veth pairs, a tern
//! process running in one of them, and ground truth read from the kernel (interface
//! statistics, `tcp_info`) or from the traffic a test sent itself.
//!
//! Everything a test creates is owned by a guard whose Drop removes it, so a failing test
//! leaves no namespace, interface, TC filter or process behind. `broker` holds the MQTT side:
//! PKI, mosquitto, a responder playing the cloud, and a proxy.

pub mod broker;

use std::{
    fs::File,
    io::{BufRead, BufReader},
    net::UdpSocket,
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

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
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tern-t{}-{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        sh("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn mac(&self, dev: &str) -> String {
        let out = sh("ip", &["-n", &self.name, "-j", "link", "show", "dev", dev]);
        let json: Value = serde_json::from_str(&out).expect("ip -j output");
        json[0]["address"].as_str().expect("a MAC").to_owned()
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

impl Pair {
    pub fn new() -> Self {
        let a = Netns::new("a");
        let b = Netns::new("b");
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
        a.exec(&[
            "ip",
            "neigh",
            "replace",
            ADDR_B,
            "lladdr",
            &mac_b,
            "dev",
            DEV_A,
            "nud",
            "permanent",
        ]);
        b.exec(&[
            "ip",
            "neigh",
            "replace",
            ADDR_A,
            "lladdr",
            &mac_a,
            "dev",
            DEV_B,
            "nud",
            "permanent",
        ]);
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
    own_state: bool,
    reports: Receiver<Value>,
    log: Receiver<String>,
}

impl Tern {
    /// Starts `tern run --output stdout` with `args` in `ns`, and waits until it has attached.
    pub fn start(ns: &Netns, args: &[&str]) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let state_dir = std::env::temp_dir().join(format!(
            "tern-test-state-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let mut all = vec!["--output", "stdout"];
        all.extend_from_slice(args);
        let mut tern = Self::launch(ns, &state_dir, &all);
        tern.own_state = true;
        tern
    }

    /// Starts `tern run --state-dir STATE_DIR` with `args` in `ns`, and waits until it has
    /// attached. The state directory outlives this tern (a restart can reuse it).
    pub fn launch(ns: &Netns, state_dir: &std::path::Path, args: &[&str]) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(tern_bin())
            .args(["run", "--state-dir"])
            .arg(state_dir)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tern");
        let (report_tx, reports) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let report: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("tern printed a line that is not JSON ({e}): {line}")
                });
                if report_tx.send(report).is_err() {
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
        let tern = Self {
            child,
            state_dir: state_dir.to_path_buf(),
            own_state: false,
            reports,
            log,
        };
        tern.wait_log("attached", Duration::from_secs(20));
        tern
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

    /// The next report; panics after `timeout`.
    pub fn next_report(&self, timeout: Duration) -> Value {
        match self.reports.recv_timeout(timeout) {
            Ok(report) => report,
            Err(RecvTimeoutError::Timeout) => panic!("no report within {timeout:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("tern exited before reporting"),
        }
    }

    /// Stops tern with SIGTERM; returns its exit code and what it printed that the test
    /// had not read yet.
    pub fn stop(mut self) -> Stopped {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let code = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status.code();
            }
            assert!(
                Instant::now() < deadline,
                "tern did not stop within 10 s of SIGTERM"
            );
            thread::sleep(Duration::from_millis(20));
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        Stopped {
            code,
            reports: drain(&self.reports, deadline),
            log: drain(&self.log, deadline),
        }
    }
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
        if self.own_state {
            let _ = std::fs::remove_dir_all(&self.state_dir);
        }
    }
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
