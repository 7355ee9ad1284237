//! Throwaway network namespaces, the veth pair tests run across, and entering a namespace.

use std::{
    fs::File,
    net::UdpSocket,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread::{self, JoinHandle},
};

use serde_json::Value;

use crate::sh;

/// Starts `f` on a new thread that has entered the network namespace at `path`. Sockets made
/// there stay in that namespace wherever they are used afterwards.
pub fn spawn_in<T: Send + 'static>(
    path: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = path.to_owned();
    thread::spawn(move || {
        let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns on a valid namespace fd affects only this thread.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
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

    /// Where the namespace is mounted, for `nsenter --net=` and [`spawn_in`].
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Starts `f` on a new thread that has entered this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        spawn_in(&self.path(), f)
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets made there stay in
    /// this namespace wherever they are used afterwards.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f)
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
