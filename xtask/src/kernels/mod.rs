//! `cargo xtask test-kernels`: tern on other kernels than this machine's. Debian's kernels
//! come through a private apt configuration under target/kernels (the system's sources stay
//! untouched), each boots under QEMU with an initramfs of busybox, the release tern and the
//! host's ip and ss, and runs `guest/init.sh`. The guest's ground truth (ss, ip -s link,
//! /proc/net/snmp) is compared here with tern's reports: one table row per kernel.

use std::{
    io::ErrorKind,
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use clap::Subcommand;

mod apt;
mod image;
mod truth;

use apt::Apt;
use image::{Kernel, common_archive};

use crate::{build_agent, root_dir, setup};

const HOST_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "cpio", "kmod"];

/// The suites whose newest `linux-image-amd64` is tested, oldest first.
const SUITES: &[&str] = &["bullseye", "bookworm", "trixie", "trixie-backports"];

const MIRROR: &str = "http://deb.debian.org/debian";
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// What the scenario loads (their dependencies come along); the kernel would autoload the
/// TC and diag ones on demand, but loading them up front makes a missing one fail early.
const MODULES: &[&str] = &[
    "veth",
    "sch_ingress",
    "cls_bpf",
    "inet_diag",
    "tcp_diag",
    "udp_diag",
    "raw_diag",
    "netlink_diag",
];

/// The host binaries the guest runs besides busybox: tern and the xtask (the UDP helper) are
/// added apart, from the build.
const HOST_TOOLS: &[(&str, &str)] = &[
    ("/usr/sbin/ip", "usr/sbin/ip"),
    ("/usr/bin/ss", "usr/bin/ss"),
    ("/usr/bin/kmod", "sbin/modprobe"),
];

const GUEST_INIT: &str = include_str!("../../guest/init.sh");

const INTERVAL_S: u64 = 2;
const COUNT: u64 = 5;
/// Datagrams the guest sends, as `init.sh` says: checks that the scenario happened.
const DATAGRAMS: u64 = 20;
/// The connections it holds open: one to each side.
const CONNECTIONS: usize = 2;
/// A whole boot under TCG takes about 20 s, the guest's own limits about 80 s; this
/// bounds a hung guest.
const BOOT_LIMIT: Duration = Duration::from_secs(180);

/// The guest's UDP sockets: busybox's nc speaks only TCP.
#[derive(Subcommand)]
pub enum Udp {
    /// Bind 0.0.0.0:PORT and keep the socket (unconnected) for up to ten minutes.
    Bind { port: u16 },
    /// Send COUNT datagrams of SIZE bytes to ADDR.
    Send {
        addr: SocketAddr,
        count: u64,
        size: usize,
    },
}

pub fn udp(udp: &Udp) -> Result<()> {
    match udp {
        Udp::Bind { port } => {
            let socket = UdpSocket::bind(("0.0.0.0", *port))?;
            socket.set_read_timeout(Some(Duration::from_secs(1)))?;
            let until = Instant::now() + Duration::from_secs(600);
            let mut buf = [0u8; 2048];
            while Instant::now() < until {
                match socket.recv_from(&mut buf) {
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        }
        Udp::Send { addr, count, size } => {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            let payload = vec![0x5au8; *size];
            for _ in 0..*count {
                socket.send_to(&payload, addr)?;
            }
            Ok(())
        }
    }
}

pub fn run() -> Result<()> {
    setup::packages(HOST_PACKAGES)?;
    let work = root_dir().join("target/kernels");
    let apt = Apt::new(&work.join("apt"))?;
    let mut kernels = Vec::new();
    for suite in SUITES {
        kernels.push(Kernel::fetch(&apt, suite, &work)?);
    }
    let tern = build_agent()?;
    let common = common_archive(&work, &tern)?;
    println!("| kernel | arch | result | seconds |\n|---|---|---|---|");
    let mut failed = 0;
    for kernel in &kernels {
        let started = Instant::now();
        let result = kernel.boot(&work, &common);
        let seconds = started.elapsed().as_secs();
        let result = result.unwrap_or_else(|e| format!("error: {e:#}"));
        // A refusal is tern's answer to a kernel it cannot serve, not a failure.
        if !result.starts_with("exact") && !result.starts_with("refused") {
            failed += 1;
        }
        println!("| {} | amd64 | {result} | {seconds} |", kernel.release);
    }
    if failed > 0 {
        bail!(
            "{failed} of {} kernels neither exact nor refused",
            kernels.len()
        );
    }
    Ok(())
}
