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
mod layout;
mod linker;
mod netlink;
mod notify;
mod privilege;
mod probes;
mod report;
mod run;
mod signals;
mod sockdiag;
mod state;

use std::process::ExitCode;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use report::{Format, Names};

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
    /// Field names of the report: the document's long names or its short ones.
    #[arg(long, value_enum, default_value_t = Names::Long)]
    pub names: Names,
    /// Encoding of the report (on stdout, CBOR is printed as one hex line per report).
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// Largest encoded report, in bytes; lists are cut to fit, totals stay exact.
    #[arg(long, default_value_t = 128 * 1024, value_parser = clap::value_parser!(u64).range(1024..=16 * 1024 * 1024))]
    pub budget: u64,
    /// Report the sockets of every network namespace (containers too), not only tern's own.
    #[arg(long)]
    pub all_namespaces: bool,
    /// List in `established_connections` every connection that existed during the interval,
    /// not only those established at report time.
    #[arg(long)]
    pub interval_connections: bool,
    /// Which of tern's own custom metrics to send: all, none, or a comma-separated list of
    /// names (see the README).
    #[arg(long, default_value = "all")]
    pub custom_metrics: collect::Selection,
    /// A custom metric read from a file at every report: NAME=TYPE:PATH, TYPE one of number,
    /// number_list, string_list, ip_list. Repeat for more.
    #[arg(long = "metric", value_name = "NAME=TYPE:PATH")]
    pub metrics: Vec<collect::FileMetric>,
    /// Where tern keeps its state (the last report id), owned by the agent's account, 0700
    /// [default: /var/lib/NAME, NAME being this binary's name, as `install` creates it].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
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
