//! tern: counts a Linux device's network activity in eBPF and reports it as AWS IoT Device
//! Defender metrics.
//!
//! Data flows one way: kernel maps (probes) -> collection (collect) -> report model
//! (report) -> output (stdout, or `spool` then `publish` to a broker). `interfaces` tells
//! which interfaces exist; `config` reads and checks the settings; `run` drives the loop.

mod collect;
mod config;
mod delta;
mod install;
mod interfaces;
mod kernel;
mod layout;
mod linker;
mod netlink;
mod notify;
mod privilege;
mod probes;
mod publish;
mod report;
mod run;
mod signals;
mod sockdiag;
mod spool;
mod state;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use config::ConfigArgs;

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
    /// Check a configuration and report every problem at once; exit 0 only if it would run.
    CheckConfig(ConfigArgs),
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Exit after this many reports (default: run until stopped).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Where reports go (default: the broker when an endpoint is configured, else stdout).
    #[arg(long, value_enum)]
    pub output: Option<Output>,
    /// Count loopback traffic too (each loopback packet is then both in and out).
    #[arg(long)]
    pub include_loopback: bool,
    /// Report the sockets of every network namespace (containers too), not only tern's own.
    #[arg(long)]
    pub all_namespaces: bool,
    /// List in `established_connections` every connection that existed during the interval,
    /// not only those established at report time.
    #[arg(long)]
    pub interval_connections: bool,
    /// Attach at start only: no privileged helper stays, and interfaces added later are not
    /// counted.
    #[arg(long)]
    pub static_interfaces: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    /// One JSON report per line on stdout; logs go to stderr.
    Stdout,
    /// Published to the configured MQTT broker.
    Mqtt,
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
        Command::CheckConfig(args) => config::check(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}
