//! tern: counts a Linux device's network activity in eBPF and reports it as AWS IoT Device
//! Defender metrics.
//!
//! Data flows one way: kernel maps (probes) -> collection (collect) -> report model
//! (report) -> output. `interfaces` tells which interfaces exist; `run` drives the loop.

mod collect;
mod delta;
mod install;
mod interfaces;
mod kernel;
mod linker;
mod notify;
mod privilege;
mod probes;
mod report;
mod run;
mod signals;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(version, about = "Device Defender metrics from eBPF counters")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the eBPF programs and report every interval.
    Run(RunArgs),
    /// Install as a hardened systemd service, enable and start it.
    Install(install::InstallArgs),
    /// Stop and remove what install created.
    Uninstall(install::UninstallArgs),
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Seconds between two reports.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub interval: u64,
    /// Exit after this many reports (default: run until stopped).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Where reports go.
    #[arg(long, value_enum, default_value_t = Output::Stdout)]
    pub output: Output,
    /// Count loopback traffic too (each loopback packet is then both in and out).
    #[arg(long)]
    pub include_loopback: bool,
    /// Unprivileged user to run as once the programs are attached (default: the user `install`
    /// created, named like this binary, or nobody).
    #[arg(long)]
    pub user: Option<String>,
    /// Attach at start only: no privileged helper stays, and interfaces added later are not
    /// counted.
    #[arg(long)]
    pub static_interfaces: bool,
    /// AWS IoT Device Client configuration; the private key it names must be closed to group
    /// and others.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    /// One JSON report per line on stdout; logs go to stderr.
    Stdout,
}

fn main() -> ExitCode {
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Info)
        .parse_env("TERN_LOG")
        .format_target(false)
        .target(env_logger::Target::Stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(&args),
        Command::Install(args) => install::install(&args),
        Command::Uninstall(args) => install::uninstall(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}
