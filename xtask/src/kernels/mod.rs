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
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

pub(crate) mod apt;
mod arch;
mod custom;
mod image;
mod sockets;
mod truth;
mod userland;

pub use sockets::{Sockets, run as sockets};

use apt::Apt;
use arch::Arch;
use image::{Kernel, common_archive};
use truth::{Sections, compare};
use userland::Userland;

use crate::{dist, root_dir, setup};

/// The suites apt knows, oldest first, each with the architectures fetched from it: those of
/// the matrix's kernels there, and trixie's userland and musl for the foreign ones. No more:
/// the lists of every architecture of every suite must agree with their Release file for
/// an update to succeed, and a mirror does not always have that.
const SUITES: &[(&str, &[Arch])] = &[
    ("bullseye", &[Arch::Amd64]),
    ("bookworm", &[Arch::Amd64]),
    ("trixie", &Arch::ALL),
    ("trixie-backports", &[Arch::Amd64]),
];

/// The kernels booted: each suite's newest `linux-image-FLAVOUR`, FLAVOUR being Debian's
/// name of the kernel's build: arm64-16k has 16 KiB pages (as a Raspberry Pi 5 runs),
/// armmp is the 32-bit ARM one.
const MATRIX: &[(&str, Arch, &str)] = &[
    ("bullseye", Arch::Amd64, "amd64"),
    ("bookworm", Arch::Amd64, "amd64"),
    ("trixie", Arch::Amd64, "amd64"),
    ("trixie-backports", Arch::Amd64, "amd64"),
    ("trixie", Arch::Arm64, "arm64"),
    ("trixie", Arch::Arm64, "arm64-16k"),
    ("trixie", Arch::Armhf, "armmp"),
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

pub const INTERVAL_S: u64 = 2;
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

pub fn run() -> Result<()> {
    let started = Instant::now();
    let (apt, downloads) = prepare()?;
    let mut kernels = Vec::new();
    for (suite, arch, flavour) in MATRIX {
        kernels.push(Kernel::fetch(&apt, suite, *arch, flavour, &downloads)?);
    }
    let guests = Guests::build(&apt, &downloads, &Arch::ALL)?;
    let parameters = format!(
        "tern_interval={INTERVAL_S} tern_count={COUNT} tern_syns={SYNS} tern_probes={PROBES} \
         tern_others={OTHERS} tern_execs={EXECS}"
    );
    println!("| kernel | arch | result | seconds |\n|---|---|---|---|");
    let mut failed = 0;
    for kernel in &kernels {
        let booted = Instant::now();
        let result = guests.boot(kernel, &parameters).map(|s| compare(&s));
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

/// tern's resident memory in a guest of each ARM architecture (trixie's kernel, the release
/// artifact): idle, and holding MEMORY_CONNECTIONS connections.
pub struct Memory {
    pub arch: &'static str,
    pub kernel: String,
    pub idle_kib: u64,
    pub idle_peak_kib: u64,
    pub connected_kib: u64,
    /// The connections ss showed in tern's namespace, and those in tern's last report.
    pub established: u64,
    pub reported: u64,
}

/// Connections held for the memory figure.
pub const MEMORY_CONNECTIONS: u64 = 1000;

pub fn memory() -> Result<Vec<Memory>> {
    let (apt, downloads) = prepare()?;
    let arches = [Arch::Arm64, Arch::Armhf];
    let guests = Guests::build(&apt, &downloads, &arches)?;
    let parameters = format!(
        "tern_mode=memory tern_interval={INTERVAL_S} tern_connections={MEMORY_CONNECTIONS}"
    );
    arches
        .iter()
        .map(|arch| {
            let (suite, _, flavour) = MATRIX
                .iter()
                .find(|(suite, a, _)| a == arch && *suite == "trixie")
                .expect("a trixie kernel of every architecture in the matrix");
            let kernel = Kernel::fetch(&apt, suite, *arch, flavour, &downloads)?;
            let s = guests.boot(&kernel, &parameters)?;
            truth::memory(&s).map(|m| Memory {
                arch: arch.debian(),
                kernel: kernel.release.clone(),
                idle_kib: m.idle_kib,
                idle_peak_kib: m.idle_peak_kib,
                connected_kib: m.connected_kib,
                established: m.established,
                reported: m.reported,
            })
        })
        .collect()
}

/// Setup and the private apt, with the downloads' folder.
fn prepare() -> Result<(Apt, PathBuf)> {
    ensure!(
        env::consts::ARCH == "x86_64",
        "the kernel matrix runs on x86_64 machines (its amd64 guests take this machine's own \
         ip, ss and tc); this one is {}",
        env::consts::ARCH
    );
    setup::matrix()?;
    let downloads = root_dir().join("target/kernels");
    let apt = Apt::new(&downloads.join("apt"))?;
    Ok((apt, downloads))
}

/// The guests' common archives (userland, tern and the helper), one per architecture.
struct Guests {
    work: PathBuf,
    commons: Vec<(Arch, PathBuf)>,
}

impl Guests {
    fn build(apt: &Apt, downloads: &Path, arches: &[Arch]) -> Result<Self> {
        let work = root_dir().join("target/kernel-runs");
        let mut commons = Vec::new();
        for &arch in arches {
            let userland = Userland::fetch(apt, arch, downloads)?;
            let tern = dist::build(arch.release(), "tern")?;
            let helper = dist::build(arch.release(), "xtask")?;
            let common = common_archive(&work.join(arch.debian()), &userland, &tern, &helper)?;
            commons.push((arch, common));
        }
        Ok(Self { work, commons })
    }

    /// Boots `kernel`, twice where the first boot never reached the guest's init: TCG
    /// has been seen to crash a kernel while it patches its own code at boot, which says
    /// nothing of tern.
    fn boot(&self, kernel: &Kernel, parameters: &str) -> Result<Sections> {
        let common = self
            .commons
            .iter()
            .find_map(|(arch, common)| (*arch == kernel.arch).then_some(common))
            .context("no guest built for the kernel's architecture")?;
        let first = kernel.boot(&self.work, common, parameters)?;
        if first.started() {
            return Ok(first);
        }
        eprintln!(
            "test-kernels: {} stopped before the guest's init ran (its console.log is kept \
             as console-first.log); booting it again",
            kernel.release
        );
        kernel.keep_console(&self.work, "console-first.log")?;
        kernel.boot(&self.work, common, parameters)
    }
}
