//! Machine setup: installs what a fresh Debian 12 machine lacks to build and test tern.
//! Every step checks first and does nothing when its piece is present, so a set-up machine
//! passes in seconds.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

/// Debian packages: LLVM 22 for bpf-linker, the tools the kernel, broker and install tests
/// use (systemd-analyze, useradd, setpriv, readelf, tmux for the terminal view's), and the
/// benchmarks' traffic generator and Python virtual environments.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libclang-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "bpftool",
    "iproute2",
    "mosquitto",
    "openssl",
    "systemd",
    "passwd",
    "util-linux",
    "binutils",
    "iperf3",
    "python3-venv",
    "tmux",
];

/// What the kernel matrix (`cargo xtask test-kernels`, part of `cargo xtask test`) adds to
/// what the release artifacts need (the guests run them): QEMU for every architecture, and
/// busybox, cpio and kmod for the amd64 guests' initramfs.
const MATRIX_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-arm",
    "busybox-static",
    "cpio",
    "kmod",
];

/// What `cargo xtask dist` adds: the cross compilers of the release's ARM targets (ring's C
/// code, and the link's driver), readelf to check the binaries, dpkg-deb for the packages
/// and ssh-keygen for the signature.
const DIST_PACKAGES: &[&str] = &[
    "gcc-aarch64-linux-gnu",
    "gcc-arm-linux-gnueabihf",
    "binutils",
    "dpkg",
    "openssh-client",
];
/// The musl targets Rust ships a std for; armv7's std is built from rust-src.
const DIST_TARGETS: &[&str] = &["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
const TRACEFS: &str = "/sys/kernel/tracing";

pub fn run() -> Result<()> {
    if !Path::new("/etc/debian_version").exists() {
        bail!(
            "setup installs with apt on Debian 12; on this system install by hand: {}, \
             rust-src for the nightly toolchain, and bpf-linker {BPF_LINKER_VERSION} built \
             with --features llvm-22",
            PACKAGES.join(" ")
        );
    }
    packages(PACKAGES)?;
    rust_src()?;
    bpf_linker()?;
    tracefs()?;
    matrix()
}

/// What the kernel matrix needs: its packages, and what the release artifacts need.
pub fn matrix() -> Result<()> {
    packages(MATRIX_PACKAGES)?;
    dist_tools()
}

/// What the release artifacts need: the eBPF toolchain, cross compilers and Rust targets.
pub fn dist() -> Result<()> {
    packages(PACKAGES)?;
    rust_src()?;
    bpf_linker()?;
    dist_tools()
}

fn dist_tools() -> Result<()> {
    packages(DIST_PACKAGES)?;
    DIST_TARGETS.iter().try_for_each(|t| rust_target(t))
}

/// The nightly toolchain and bpf-linker, without installing anything.
pub fn require_toolchain() -> Result<()> {
    if !has_rust_src()? {
        bail!("rust-src for the nightly toolchain is missing: run `cargo xtask setup`");
    }
    if !has_bpf_linker() {
        bail!("bpf-linker is missing: run `cargo xtask setup`");
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Installs those of `list` that dpkg does not list as installed.
pub fn packages(list: &[&str]) -> Result<()> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Status}\n"])
        .args(list)
        .output()
        .context("running dpkg-query")?;
    let listed = String::from_utf8_lossy(&output.stdout);
    let missing: Vec<&str> = list
        .iter()
        .copied()
        .filter(|p| !listed.lines().any(|l| l == format!("{p} installed")))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing packages: {}; install them as root (sudo apt-get install {}) or run \
             this command again with sudo -E",
            missing.join(" "),
            missing.join(" ")
        );
    }
    eprintln!("setup: installing {}", missing.join(" "));
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(&missing);
    apt(&install)
}

fn apt(args: &[&str]) -> Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get {} failed: {status}", args.join(" "));
    }
    Ok(())
}

fn has_rust_src() -> Result<bool> {
    let output = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("running rustup")?;
    if !output.status.success() {
        bail!(
            "the nightly toolchain is missing; this machine kind ships it as `nightly` \
             (rustup toolchain list); tern's eBPF programs need it"
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src")))
}

fn rust_src() -> Result<()> {
    if has_rust_src()? {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain");
    let status = Command::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", "nightly"])
        .status()
        .context("running rustup")?;
    if !status.success() {
        bail!("rustup component add rust-src --toolchain nightly failed: {status}");
    }
    Ok(())
}

/// Adds `target` to the toolchain cargo uses in the workspace, unless it is there.
fn rust_target(target: &str) -> Result<()> {
    let output = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(crate::root_dir())
        .output()
        .context("running rustup")?;
    if !output.status.success() {
        bail!(
            "rustup target list failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    if String::from_utf8_lossy(&output.stdout)
        .lines()
        .any(|l| l.trim() == target)
    {
        return Ok(());
    }
    eprintln!("setup: adding the Rust target {target}");
    let status = Command::new("rustup")
        .args(["target", "add", target])
        .current_dir(crate::root_dir())
        .status()
        .context("running rustup")?;
    if !status.success() {
        bail!("rustup target add {target} failed: {status}");
    }
    Ok(())
}

fn has_bpf_linker() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
}

fn bpf_linker() -> Result<()> {
    if has_bpf_linker() {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)");
    // Its build script takes the first llvm-config on PATH, which must be LLVM 22's.
    let path = format!("{LLVM_BIN}:{}", std::env::var("PATH").unwrap_or_default());
    let status = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("PATH", path)
        .status()
        .context("running cargo install")?;
    if !status.success() {
        bail!("cargo install bpf-linker failed: {status}");
    }
    if !has_bpf_linker() {
        bail!("bpf-linker was installed but is not on PATH: add ~/.cargo/bin to PATH");
    }
    Ok(())
}

fn tracefs() -> Result<()> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(());
    }
    if !is_root() {
        bail!("tracefs is not mounted: sudo mount -t tracefs nodev {TRACEFS}");
    }
    eprintln!("setup: mounting tracefs at {TRACEFS}");
    let status = Command::new("mount")
        .args(["-t", "tracefs", "nodev", TRACEFS])
        .status()
        .context("running mount")?;
    if !status.success() {
        bail!("mount -t tracefs nodev {TRACEFS} failed: {status}");
    }
    Ok(())
}
