//! tern's developer commands. `cargo xtask run` and `cargo xtask test` are the two a
//! newcomer needs; both set up the machine first.

mod bench;
mod dist;
mod kernels;
mod setup;

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "tern's developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks to build and test tern (idempotent).
    Setup,
    /// Build the eBPF object (target/bpfel-unknown-none/release/tern-ebpf).
    BuildEbpf,
    /// Set up, build, and run tern printing a report every few seconds until Ctrl-C.
    Run {
        /// Seconds between reports.
        #[arg(long, default_value_t = 5)]
        interval: u64,
        /// More arguments for `tern run`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, build tern with its terminal view, and run `tern watch` (root) until `q`.
    Watch {
        /// More arguments for `tern watch`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, then run every test: format, lints, unit tests, the kernel tests (root), the
    /// kernel matrix (QEMU) and the smallest case of every benchmark once.
    Test,
    /// Set up, then run the benchmarks (root): bench/results.json, bench/results.md and the
    /// README's table.
    Bench {
        /// Fewer repetitions and smaller sizes (under 2 minutes).
        #[arg(long)]
        quick: bool,
    },
    /// Boot Debian's kernels (amd64: 5.10, 6.1, 6.12, the newest backport; arm64: 6.12) under
    /// QEMU and compare tern's reports in each with the guest's own ss and ip: one row per
    /// kernel, each to be exact.
    TestKernels,
    /// Build the release artifacts (target/dist): a static binary for x86_64, aarch64 and
    /// armv7 Linux, a .deb for each, SHA256SUMS, and its signature given a key.
    Dist {
        /// OpenSSH private key to sign SHA256SUMS with (SHA256SUMS.sig, namespace "file").
        #[arg(long)]
        sign: Option<PathBuf>,
        /// Where the artifacts go (default: target/dist, emptied first).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Fuzz every parser that takes input from outside (config file, spool entries, broker
    /// replies, netlink messages, metric files) for SECONDS each; `cargo xtask test` runs
    /// each for two seconds.
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// The sockets of test-kernels' guest (it runs inside the guest).
    #[command(hide = true)]
    GuestSockets {
        #[command(subcommand)]
        sockets: kernels::Sockets,
    },
}

fn main() -> Result<()> {
    if let Some(flags) = env::var_os(dist::WRAPPER_FLAGS) {
        return dist::wrap_rustc(&flags);
    }
    match Cli::parse().command {
        Task::Setup => setup::run(),
        Task::BuildEbpf => build_ebpf(),
        Task::Run { interval, args } => run(interval, &args),
        Task::Watch { args } => watch(&args),
        Task::Test => test(),
        Task::Bench { quick } => bench_run(quick),
        Task::TestKernels => kernels::run(),
        Task::Dist { sign, out } => dist::run(sign.as_deref(), out.as_deref()),
        Task::Fuzz { seconds } => fuzz(seconds),
        Task::GuestSockets { sockets } => kernels::sockets(&sockets),
    }
}

fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// A command that runs from the workspace root.
fn cmd(program: &str, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command.args(args).current_dir(root_dir());
    command
}

/// Runs `command`, failing with its command line if it fails.
fn status(mut command: Command) -> Result<()> {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

fn build_ebpf() -> Result<()> {
    setup::require_toolchain()?;
    let mut command = cmd(
        "rustup",
        &[
            "run",
            "nightly",
            "cargo",
            "build",
            "--package",
            "tern-ebpf",
            "--bins",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ],
    );
    let arch = env::consts::ARCH;
    command.env(
        "CARGO_ENCODED_RUSTFLAGS",
        format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf"),
    );
    command
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    status(command)?;
    println!(
        "{}",
        root_dir()
            .join("target/bpfel-unknown-none/release/tern-ebpf")
            .display()
    );
    Ok(())
}

/// Cargo's own rule: CARGO_TARGET_DIR, relative to the workspace, else target/.
fn target_dir() -> PathBuf {
    let target = env::var_os("CARGO_TARGET_DIR").map_or_else(|| "target".into(), PathBuf::from);
    root_dir().join(target)
}

/// What a build of tern holds beyond the deployed agent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Build {
    /// The agent as the release artifacts hold it.
    Deployed,
    /// With `tern watch`, the terminal view (the `watch` feature).
    WithView,
}

fn build_agent(build: Build) -> Result<PathBuf> {
    let mut args = vec!["build", "--release", "--package", "tern"];
    if build == Build::WithView {
        args.extend(["--features", "watch"]);
    }
    status(cmd("cargo", &args))?;
    Ok(target_dir().join("release/tern"))
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root (it loads eBPF programs); run it again with sudo -E");
    }
    Ok(())
}

fn run(interval: u64, args: &[String]) -> Result<()> {
    setup::run()?;
    let tern = build_agent(Build::Deployed)?;
    require_root("tern")?;
    let mut command = Command::new(tern);
    command.args([
        "run",
        "--output",
        "stdout",
        "--interval",
        &interval.to_string(),
    ]);
    as_some_user(&mut command, args);
    // tern stops on Ctrl-C itself; the same SIGINT reaches this process, which just waits.
    status(command)
}

fn watch(args: &[String]) -> Result<()> {
    setup::run()?;
    let tern = build_agent(Build::WithView)?;
    require_root("tern watch")?;
    let mut command = Command::new(tern);
    command.arg("watch");
    as_some_user(&mut command, args);
    status(command)
}

/// Adds `args` to tern's command line. A development machine has no account of tern's own
/// (`tern install` creates one): nobody, accepted as shared, unless `args` name a user.
fn as_some_user(command: &mut Command, args: &[String]) {
    if !args.iter().any(|a| a == "--user") {
        command.args(["--user", "nobody", "--shared-user"]);
    }
    command.args(args);
}

fn test() -> Result<()> {
    setup::run()?;
    status(cmd("cargo", &["fmt", "--all", "--", "--check"]))?;
    let clippy = |selected: &[&str]| {
        let mut args = vec!["clippy", "--all-targets"];
        args.extend_from_slice(selected);
        args.extend(["--", "-D", "warnings"]);
        status(cmd("cargo", &args))
    };
    clippy(&[
        "--package",
        "tern",
        "--package",
        "tern-common",
        "--package",
        "xtask",
        "--package",
        "tern-tests",
        "--features",
        "tern/watch",
    ])?;
    // The deployed agent alone too: nothing in it may be there only for the view.
    clippy(&["--package", "tern"])?;
    // The kernel tests run the view too; the agent's code is the same in both builds.
    let tern = build_agent(Build::WithView)?;
    status(cmd(
        "cargo",
        &["test", "--release", "--features", "tern/watch"],
    ))?;
    require_root("the kernel tests")?;
    let mut kernel = cmd(
        "cargo",
        &[
            "test",
            "--release",
            "--package",
            "tern-tests",
            "--",
            "--test-threads=1",
        ],
    );
    kernel.env("TERN_BIN", &tern);
    status(kernel)?;
    kernels::run()?;
    dist::check()?;
    // The smallest case of every benchmark once, so the bench cannot rot unnoticed.
    let out = root_dir().join("target/bench-smoke");
    bench::run_tests(&tern, bench::Size::Smoke, &out)?;
    let figures = bench::figures(&out)?;
    println!("bench smoke run: {} figures", figures.len());
    Ok(())
}

fn fuzz(seconds: u64) -> Result<()> {
    setup::require_toolchain()?;
    let mut run = cmd(
        "cargo",
        &[
            "test",
            "--release",
            "--package",
            "tern",
            "fuzz_",
            "--",
            "--nocapture",
            "--test-threads=2",
        ],
    );
    run.env("TERN_FUZZ_SECONDS", seconds.to_string());
    status(run)
}

fn bench_run(quick: bool) -> Result<()> {
    setup::run()?;
    let tern = build_agent(Build::Deployed)?;
    require_root("the benchmarks")?;
    let out = root_dir().join("bench/.work/figures");
    let size = if quick {
        bench::Size::Quick
    } else {
        bench::Size::Full
    };
    bench::run_tests(&tern, size, &out)?;
    let command = if quick {
        "cargo xtask bench --quick"
    } else {
        "cargo xtask bench"
    };
    bench::publish(bench::figures(&out)?, command)
}
