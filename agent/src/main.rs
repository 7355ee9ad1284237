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
#[cfg(feature = "watch")]
mod watch;

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
    /// Show, full screen and live, what the kernel programs see (loads programs of its own).
    #[cfg(feature = "watch")]
    Watch(watch::WatchArgs),
    /// Not in this build: the release artifacts leave the terminal view out.
    #[cfg(not(feature = "watch"))]
    #[command(hide = true, disable_help_flag = true)]
    Watch {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The view holds the terminal: its log is kept and shown within it.
    let target = match cli.command {
        #[cfg(feature = "watch")]
        Command::Watch(_) => env_logger::Target::Pipe(Box::new(watch::LogLines)),
        _ => env_logger::Target::Stderr,
    };
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Info)
        .parse_env("TERN_LOG")
        .format_target(false)
        .target(target)
        .init();
    let result = match cli.command {
        Command::Run(args) => agent::run(&args),
        Command::Install(args) => install::install(&args),
        Command::Uninstall(args) => install::uninstall(&args),
        Command::CheckConfig(args) => config::check(&args),
        #[cfg(feature = "watch")]
        Command::Watch(args) => watch::watch(&args),
        #[cfg(not(feature = "watch"))]
        Command::Watch { .. } => Err(anyhow::anyhow!(
            "this tern is built without tern watch: the release artifacts leave the terminal \
             view out, so that the deployed agent does not carry it; build it with \
             cargo build --release --features watch"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}
