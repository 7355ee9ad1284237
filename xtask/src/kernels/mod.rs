//! `cargo xtask test-kernels`: tern on other kernels than this machine's, amd64 and arm64.
//! Debian's kernels come through a private apt configuration under target/kernels (the
//! system's sources stay untouched), each boots under QEMU with an initramfs of busybox, ip,
//! ss, tc and kmod (this machine's for amd64, Debian's arm64 packages for arm64) and the
//! release tern built for its architecture, and runs `guest/init.sh`. The guest's ground
//! truth (ss, ip -s link, /proc/net/snmp, tc) is compared here with tern's reports: one table
//! row per kernel, and every kernel must be exact. What each run builds (the initramfs, the
//! logs) goes to target/kernel-runs, apart from the downloads, which worktrees may share.

use std::{
    env,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use clap::Subcommand;

mod apt;
mod arch;
mod custom;
mod image;
mod truth;
mod userland;

use apt::Apt;
use arch::Arch;
use image::{Kernel, common_archive};
use userland::Userland;

use crate::{build_agent, cmd, root_dir, setup, status, target_dir};

/// The suites apt knows, oldest first.
const SUITES: &[&str] = &["bullseye", "bookworm", "trixie", "trixie-backports"];

/// The kernels booted: each suite's newest `linux-image-ARCH`.
const MATRIX: &[(&str, Arch)] = &[
    ("bullseye", Arch::Amd64),
    ("bookworm", Arch::Amd64),
    ("trixie", Arch::Amd64),
    ("trixie-backports", Arch::Amd64),
    ("trixie", Arch::Arm64),
];

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

const GUEST_INIT: &str = include_str!("../../guest/init.sh");

const INTERVAL_S: u64 = 2;
const COUNT: u64 = 8;
/// Datagrams the guest sends to the peer's open port, as `init.sh` says: checks that the
/// scenario happened.
const DATAGRAMS: u64 = 20;
/// Connection attempts the peer makes to a closed TCP port of tern's namespace: each is
/// one reset sent and one closed-port attempt.
const SYNS: u64 = 8;
/// Datagrams the peer sends to a closed UDP port of tern's namespace: each is one ICMP port
/// unreachable and one closed-port attempt.
const PROBES: u64 = 6;
/// How many of each the guest sends that tern must not count: datagrams to an open port,
/// bare resets to a closed port (never answered), and the same scan towards the peer
/// (answered from the peer's namespace).
const OTHERS: u64 = 3;
/// Executions of one program the guest makes in a burst while tern counts.
const EXECS: u64 = 20;
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
    /// Send COUNT bare TCP segments with RST set from FROM to ADDR through a raw socket: a
    /// reset that reaches no socket, which the kernel must not answer.
    Reset {
        from: Ipv4Addr,
        addr: SocketAddrV4,
        count: u64,
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
        Udp::Reset { from, addr, count } => send_resets(*from, *addr, *count),
    }
}

/// Source port of the bare resets.
const RESET_PORT: u16 = 40_000;
const TCP_RST: u8 = 0x04;

fn send_resets(from: Ipv4Addr, to: SocketAddrV4, count: u64) -> Result<()> {
    // SAFETY: socket() with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
    ensure!(
        fd >= 0,
        "opening a raw TCP socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd is a fresh descriptor this function owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let address = |ip: Ipv4Addr| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // The source the checksum covers is the one the segments leave with.
    let local = address(from);
    // SAFETY: a valid sockaddr_in of the length given, alive for the call.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&raw const local).cast::<libc::sockaddr>(),
            len,
        )
    };
    ensure!(
        rc == 0,
        "binding the raw socket to {from}: {}",
        std::io::Error::last_os_error()
    );
    let segment = reset_segment(from, to);
    let remote = address(*to.ip());
    for _ in 0..count {
        // SAFETY: the segment and the address are valid for the call's lengths.
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                segment.as_ptr().cast::<libc::c_void>(),
                segment.len(),
                0,
                (&raw const remote).cast::<libc::sockaddr>(),
                len,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error()).context("sending a bare reset");
        }
    }
    Ok(())
}

/// A 20-byte TCP header with only RST set, its checksum over the IPv4 pseudo-header.
fn reset_segment(from: Ipv4Addr, to: SocketAddrV4) -> [u8; 20] {
    let mut segment = [0u8; 20];
    segment[0..2].copy_from_slice(&RESET_PORT.to_be_bytes());
    segment[2..4].copy_from_slice(&to.port().to_be_bytes());
    segment[4..8].copy_from_slice(&1u32.to_be_bytes());
    segment[12] = 5 << 4;
    segment[13] = TCP_RST;
    let checksum = tcp_checksum(from, *to.ip(), &segment);
    segment[16..18].copy_from_slice(&checksum.to_be_bytes());
    segment
}

/// The Internet checksum of `segment` (its checksum field zero) and the pseudo-header.
fn tcp_checksum(from: Ipv4Addr, to: Ipv4Addr, segment: &[u8; 20]) -> u16 {
    let mut pseudo = Vec::with_capacity(12 + segment.len());
    pseudo.extend_from_slice(&from.octets());
    pseudo.extend_from_slice(&to.octets());
    pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(segment);
    let mut sum: u32 = pseudo
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub fn run() -> Result<()> {
    ensure!(
        env::consts::ARCH == "x86_64",
        "the kernel matrix runs on x86_64 machines (its amd64 guests take this machine's own \
         ip, ss and tc); this one is {}",
        env::consts::ARCH
    );
    setup::matrix()?;
    let started = Instant::now();
    let downloads = root_dir().join("target/kernels");
    let apt = Apt::new(&downloads.join("apt"))?;
    let mut kernels = Vec::new();
    for (suite, arch) in MATRIX {
        kernels.push(Kernel::fetch(&apt, suite, *arch, &downloads)?);
    }
    let work = root_dir().join("target/kernel-runs");
    let mut commons = Vec::new();
    for arch in Arch::ALL {
        let userland = Userland::fetch(&apt, arch, &downloads)?;
        let (tern, helper) = build_guest(arch)?;
        let common = common_archive(&work.join(arch.debian()), &userland, &tern, &helper)?;
        commons.push((arch, common));
    }
    println!("| kernel | arch | result | seconds |\n|---|---|---|---|");
    let mut failed = 0;
    for kernel in &kernels {
        let common = commons
            .iter()
            .find_map(|(arch, common)| (*arch == kernel.arch).then_some(common))
            .expect("a common archive for every architecture");
        let booted = Instant::now();
        let result = kernel.boot(&work, common);
        let seconds = booted.elapsed().as_secs();
        let result = result.unwrap_or_else(|e| format!("error: {e:#}"));
        if result != "exact" {
            failed += 1;
        }
        println!(
            "| {} | {} | {result} | {seconds} |",
            kernel.release,
            kernel.arch.debian()
        );
    }
    eprintln!(
        "test-kernels: {} kernels in {} s",
        kernels.len(),
        started.elapsed().as_secs()
    );
    if failed > 0 {
        bail!("{failed} of {} kernels not exact", kernels.len());
    }
    Ok(())
}

/// The release tern and the guest's UDP helper (the xtask) for `arch`: this machine's own
/// build, or a cross build with the cross compiler as C compiler (ring) and linker, set for
/// this build alone. The eBPF object inside is the same bpfel one either way.
fn build_guest(arch: Arch) -> Result<(PathBuf, PathBuf)> {
    let Some(target) = arch.rust_target() else {
        return Ok((build_agent()?, env::current_exe()?));
    };
    let mut build = cmd(
        "cargo",
        &[
            "build",
            "--release",
            "--package",
            "tern",
            "--package",
            "xtask",
            "--target",
            target,
        ],
    );
    build
        .env(
            format!(
                "CARGO_TARGET_{}_LINKER",
                target.to_uppercase().replace('-', "_")
            ),
            setup::CROSS_GCC,
        )
        .env(format!("CC_{}", target.replace('-', "_")), setup::CROSS_GCC);
    status(build)?;
    let out = target_dir().join(target).join("release");
    Ok((out.join("tern"), out.join("xtask")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_reset_carries_rst_alone_and_a_checksum_that_sums_to_ones() {
        let (from, to) = (
            Ipv4Addr::new(10, 0, 0, 2),
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 7002),
        );
        let segment = reset_segment(from, to);
        assert_eq!(segment[13], TCP_RST);
        assert_eq!(u16::from_be_bytes([segment[2], segment[3]]), 7002);
        // A receiver sums the segment with its checksum and the pseudo-header: all ones.
        let mut zeroed = segment;
        zeroed[16..18].copy_from_slice(&[0, 0]);
        let checksum = tcp_checksum(from, *to.ip(), &zeroed);
        assert_eq!(checksum.to_be_bytes(), [segment[16], segment[17]]);
        assert_eq!(tcp_checksum(from, *to.ip(), &segment), 0);
    }
}
