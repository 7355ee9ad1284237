//! tern: counts a Linux device's network activity in eBPF and reports it as AWS IoT Device
//! Defender metrics. This file is the command line; `agent` is the agent's life.
//!
//! Data flows one way: `kernel` (programs and maps) -> `collect` -> `report` -> `output`
//! (stdout, or the spool and an MQTT broker), with `detect` judging behaviours on each
//! report on the way, `agent` and `process` (privilege, lifecycle) above and `host`
//! (netlink, namespaces) below. ARCHITECTURE.md states the
//! dependency rule.

mod agent;
mod collect;
mod config;
mod detect;
mod host;
mod install;
mod kernel;
mod output;
mod process;
mod report;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
    Run(agent::RunArgs),
    /// Install as a hardened systemd service, enable and start it.
    Install(install::InstallArgs),
    /// Stop and remove what install created.
    Uninstall(install::UninstallArgs),
    /// Check a configuration and report every problem at once; exit 0 only if it would run.
    CheckConfig(ConfigArgs),
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
        Command::Run(args) => agent::run(&args),
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
