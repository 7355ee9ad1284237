//! The command-line flags of `run` and `check-config`: each overrides the config file's
//! setting of the same name. The ranges clap checks here are the ones `resolve` checks the
//! file's values against, so a value is refused the same way from either place.

use std::{ffi::OsString, ops::RangeInclusive, path::PathBuf};

use crate::{
    collect::FileMetric,
    report::{Format, Names, catalog::Selection},
};

/// Seconds between two reports: at least one, at most a day.
pub const INTERVAL: RangeInclusive<u64> = 1..=86_400;
/// Bytes of an encoded report: room for the totals, at most 16 MiB.
pub const BUDGET: RangeInclusive<u64> = 1024..=16 * 1024 * 1024;

/// Settings that can come from the config file, each overridden by its flag.
#[derive(clap::Args, Debug, Default)]
pub struct ConfigArgs {
    /// JSON config file: an AWS IoT Device Client config, optionally with a `tern` section.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Broker host name or host:port (default port 8883); without one, reports go to stdout.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Thing name: the MQTT client id and part of the report topic.
    #[arg(long)]
    pub thing_name: Option<String>,
    /// Device certificate (PEM).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Device private key (PEM); must not be readable by group or others.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// CA certificate(s) the broker's certificate must chain to (PEM).
    #[arg(long)]
    pub root_ca: Option<PathBuf>,
    /// Seconds between two reports (default 300; at least 300 for an AWS endpoint).
    #[arg(long, value_parser = clap::value_parser!(u64).range(INTERVAL))]
    pub interval: Option<u64>,
    /// Field names of the report: the document's long names or its short ones.
    #[arg(long, value_enum)]
    pub names: Option<Names>,
    /// Encoding of the report (on stdout, CBOR is printed as one hex line per report).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Largest encoded report, in bytes (default 131072); lists are cut to fit, totals stay
    /// exact.
    #[arg(long, value_parser = clap::value_parser!(u64).range(BUDGET))]
    pub budget: Option<u64>,
    /// Where tern keeps its state and spool [default: /var/lib/NAME, NAME being this binary's
    /// name]; created 0700 if missing.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Which of tern's own custom metrics to send: all, none, or a comma-separated list of
    /// names (see the README).
    #[arg(long)]
    pub custom_metrics: Option<Selection>,
    /// A custom metric read from a file at every report: NAME=TYPE:PATH, TYPE one of number,
    /// number_list, string_list, ip_list. Repeat for more (each name once); replaces a file
    /// metric of the same name.
    #[arg(long = "metric", value_name = "NAME=TYPE:PATH")]
    pub metrics: Vec<FileMetric>,
    /// Device Defender behaviours to judge on the device at every report: a security
    /// profile as describe-security-profile prints it, or its list of behaviours.
    #[arg(long, value_name = "FILE")]
    pub behaviors: Option<PathBuf>,
    /// MQTT topic the violations of the behaviours judged on the device are published to
    /// [default: tern/things/THING/violations].
    #[arg(long, value_name = "TOPIC")]
    pub violations_topic: Option<OsString>,
    /// Unprivileged user to run as once the programs are attached (default: the user
    /// `install` created, named like this binary).
    #[arg(long)]
    pub user: Option<String>,
    /// Run as a user that other processes share (nobody, or one a process runs as at
    /// start): any of them could then signal tern's processes and write its state.
    #[arg(long)]
    pub shared_user: bool,
}
