// Over 400 lines: loading, resolving and checking share one list of problems, so that every
// problem of a configuration is named at once; the TLS and broker rules have their own files.
//! Configuration: reads an AWS IoT Device Client config file as it is (plus tern's own
//! `tern` section), applies command-line overrides, and checks everything a run depends on,
//! reporting every problem at once with the file or key and the fix. Loads the TLS material
//! into memory so nothing is read from disk after setup. Never connects anywhere.

mod args;
mod broker;
mod file;
pub mod state_dir;
mod tls;

use std::{
    fmt,
    ops::RangeInclusive,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Result, bail};
pub use args::ConfigArgs;
use broker::{AWS_MIN_INTERVAL, BrokerInputs};
use file::{File, expand, read_file};
use rustls::ClientConfig;

use crate::{
    collect::FileMetric,
    report::{
        Format, Names,
        catalog::{self, Selection},
    },
};

/// The shortest interval AWS IoT Device Defender accepts, so the default works there too.
const DEFAULT_INTERVAL: u64 = AWS_MIN_INTERVAL;
const DEFAULT_BUDGET: u64 = 128 * 1024;

/// Everything a run needs, resolved and checked.
#[derive(Debug)]
pub struct Settings {
    pub interval: u64,
    pub names: Names,
    pub format: Format,
    pub budget: u64,
    pub state_dir: PathBuf,
    pub broker: Option<Broker>,
    pub custom_metrics: Selection,
    pub metrics: Vec<FileMetric>,
    pub user: Option<String>,
    /// Whether a user other processes share is accepted (`--shared-user`).
    pub shared_user: bool,
}

#[derive(Clone, Debug)]
pub struct Broker {
    pub host: String,
    pub port: u16,
    pub aws: bool,
    pub thing_name: String,
    pub client_id: String,
    pub keep_alive: u64,
    pub reconnect_max: u64,
    pub reply_timeout: u64,
    pub packet_limit: usize,
    pub spool_bytes: u64,
    /// TLS client configuration: the device certificate and key, the configured CA only.
    pub tls: Arc<ClientConfig>,
}

/// One thing wrong with the configuration: where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem(pub String);

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// All the problems of one configuration, shown one per line.
#[derive(Debug)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "the configuration has {} problem(s):", self.0.len())?;
        for problem in &self.0 {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

impl Problems {
    fn check<T>(value: Option<T>, problems: Vec<Problem>) -> std::result::Result<T, Self> {
        match value {
            Some(value) if problems.is_empty() => Ok(value),
            _ => Err(Self(problems)),
        }
    }
}

/// The name tern runs under: its binary's file name, which `tern install` chooses.
pub fn program_name() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .map(Path::new)
        .and_then(Path::file_name)
        .map_or_else(|| "tern".to_owned(), |n| n.to_string_lossy().into_owned())
}

/// The state directory of the service named `name`, where `tern install` creates it.
pub fn default_state_dir(name: &str) -> PathBuf {
    Path::new("/var/lib").join(name)
}

/// Reads, resolves and checks the configuration; on failure every problem is listed.
pub fn load(args: &ConfigArgs) -> std::result::Result<Settings, Problems> {
    let mut problems = Vec::new();
    let settings = resolve(args, &mut problems);
    Problems::check(settings, problems)
}

/// `tern install`: the private key a Device Client configuration names, checked as `run`
/// checks it. Paths in the file are the device's; `root` is where that file system is mounted
/// (`/` on the device itself).
pub fn check_config_key(config: &Path, root: &Path) -> std::result::Result<(), Problems> {
    let mut problems = Vec::new();
    let checked = read_file(config, &mut problems).map(|file| {
        if let Some(key) = file.key {
            tls::check_private_key(&root.join(key.trim_start_matches('/')), &mut problems);
        }
    });
    Problems::check(checked, problems)
}

fn problem(problems: &mut Vec<Problem>, text: String) {
    problems.push(Problem(text));
}

/// Names `key` when its `value` is outside `range`.
fn check_range(
    problems: &mut Vec<Problem>,
    source: &str,
    key: &str,
    value: u64,
    range: &RangeInclusive<u64>,
) {
    if !range.contains(&value) {
        problem(
            problems,
            format!(
                "{source}: {key} {value} is out of range; use {}..{}",
                range.start(),
                range.end()
            ),
        );
    }
}

fn resolve(args: &ConfigArgs, problems: &mut Vec<Problem>) -> Option<Settings> {
    let file = match &args.config {
        Some(path) => read_file(path, problems)?,
        None => File::default(),
    };
    let source = args.config.as_ref().map_or_else(
        || "the command line".to_owned(),
        |p| p.display().to_string(),
    );
    let tern = file.tern.unwrap_or_default();
    let defender = file.device_defender.unwrap_or_default();
    if defender.enabled == Some(false) {
        problem(
            problems,
            format!(
                "{source}: device-defender.enabled is false; set it to true for tern to report"
            ),
        );
    }
    let interval = args
        .interval
        .or(defender.interval)
        .unwrap_or(DEFAULT_INTERVAL);
    check_range(
        problems,
        &source,
        "device-defender.interval",
        interval,
        &args::INTERVAL,
    );
    let budget = args.budget.or(tern.budget).unwrap_or(DEFAULT_BUDGET);
    check_range(problems, &source, "tern.budget", budget, &args::BUDGET);
    let state_dir = args
        .state_dir
        .clone()
        .or(tern.state_dir.as_deref().map(expand))
        .unwrap_or_else(|| default_state_dir(&program_name()));
    for found in state_dir::problems(&state_dir, None) {
        problem(problems, format!("{source}: {found}"));
    }
    let key = args.key.clone().or(file.key.as_deref().map(expand));
    let endpoint = args.endpoint.clone().or(file.endpoint);
    let broker = match endpoint {
        None => {
            // Unused without an endpoint, a key others can read is still a leak to refuse.
            if let Some(key) = key {
                tls::check_private_key(&key, problems);
            }
            None
        }
        Some(endpoint) => {
            let inputs = BrokerInputs {
                source: &source,
                endpoint: &endpoint,
                thing_name: args.thing_name.clone().or(file.thing_name),
                cert: args.cert.clone().or(file.cert.as_deref().map(expand)),
                key,
                root_ca: args.root_ca.clone().or(file.root_ca.as_deref().map(expand)),
                interval,
                tern: &tern,
            };
            broker::broker(inputs, problems)
        }
    };
    let custom_metrics = match (&args.custom_metrics, &tern.custom_metrics) {
        (Some(selection), _) => selection.clone(),
        (None, Some(spec)) => spec.text().parse().unwrap_or_else(|e| {
            problem(problems, format!("{source}: tern.custom-metrics: {e:#}"));
            Selection::All
        }),
        (None, None) => Selection::All,
    };
    let mut metrics = Vec::new();
    for spec in tern.metrics.iter().flatten() {
        match spec.metric() {
            Ok(metric) => metrics.push(metric),
            Err(e) => problem(
                problems,
                format!("{source}: tern.metrics {:?}: {e:#}", spec.name),
            ),
        }
    }
    for (i, metric) in args.metrics.iter().enumerate() {
        // A flag replaces the file's metric of its name, but not an earlier flag's.
        if args.metrics[..i].iter().any(|m| m.name == metric.name) {
            problem(
                problems,
                format!("--metric {}: given more than once; keep one", metric.name),
            );
        }
        metrics.retain(|m| m.name != metric.name);
        metrics.push(metric.clone());
    }
    if let Err(e) = check_user_metrics(&metrics) {
        problem(problems, format!("{source}: {e:#}"));
    }
    Some(Settings {
        interval,
        names: args.names.or(tern.names).unwrap_or(Names::Long),
        format: args.format.or(tern.format).unwrap_or(Format::Json),
        budget,
        state_dir,
        broker,
        custom_metrics,
        metrics,
        user: args.user.clone().or(tern.user),
        shared_user: args.shared_user || tern.shared_user.unwrap_or(false),
    })
}

/// `tern check-config`: prints what would run, or every problem; Ok only if it would run.
pub fn check(args: &ConfigArgs) -> Result<()> {
    match load(args) {
        Ok(settings) => {
            match &settings.broker {
                Some(b) => println!(
                    "configuration OK: reports every {} s to {}:{} as thing {:?}{}",
                    settings.interval,
                    b.host,
                    b.port,
                    b.thing_name,
                    if b.aws { " (AWS IoT Core)" } else { "" }
                ),
                None => println!(
                    "configuration OK: reports every {} s on stdout (no endpoint)",
                    settings.interval
                ),
            }
            Ok(())
        }
        Err(problems) => {
            for p in &problems.0 {
                eprintln!("{p}");
            }
            bail!("{} problem(s) in the configuration", problems.0.len())
        }
    }
}

/// Refuses user-defined metrics whose names clash with tern's own or with each other.
fn check_user_metrics(metrics: &[FileMetric]) -> anyhow::Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for m in metrics {
        if catalog::lookup(&m.name).is_some() {
            bail!(
                "custom metric {:?} is one of tern's own; give yours another name",
                m.name
            );
        }
        if !seen.insert(m.name.as_str()) {
            bail!("custom metric {:?} is defined twice", m.name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn user_metrics_may_not_shadow_tern_metrics_or_repeat() {
        let m = |s: &str| s.parse::<FileMetric>().unwrap();
        assert!(check_user_metrics(&[m("t=number:/a"), m("u=number:/b")]).is_ok());
        assert!(check_user_metrics(&[m("cpu_usage=number:/a")]).is_err());
        assert!(check_user_metrics(&[m("reports_accepted=number:/a")]).is_err());
        assert!(check_user_metrics(&[m("t=number:/a"), m("t=number:/b")]).is_err());
    }

    #[test]
    fn fuzz_config_files() {
        let dir = std::env::temp_dir().join(format!("tern-config-fuzz-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        let seeds = [
            r#"{"endpoint": "a.iot.eu-west-1.amazonaws.com", "thing-name": "t",
                "logging": {"level": "DEBUG"}, "device-defender": {"enabled": true,
                "interval": 300}, "tern": {"names": "short", "format": "cbor",
                "budget": 65536, "custom-metrics": [{"name": "m", "type": "number",
                "file": "/tmp/m"}]}}"#,
            r#"{"device-defender": {"interval": 60}, "tern": {"user": "nobody"}}"#,
        ]
        .map(|s| s.as_bytes().to_vec());
        let args = ConfigArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        crate::host::fuzz::run("config", &seeds, |bytes| {
            fs::write(&path, bytes).unwrap();
            let _ = load(&args);
        });
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_an_endpoint_reports_go_to_stdout_with_the_file_settings() {
        let dir = std::env::temp_dir().join(format!("tern-config-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        fs::write(
            &path,
            r#"{"logging": {"level": "DEBUG"}, "device-defender": {"enabled": true,
                "interval": 60}, "tern": {"names": "short", "state-dir": "/tmp/tern-state-never-made"}}"#,
        )
        .unwrap();
        let args = ConfigArgs {
            config: Some(path.clone()),
            interval: Some(30),
            ..Default::default()
        };
        let settings = load(&args).unwrap();
        assert_eq!(settings.interval, 30);
        assert_eq!(settings.names, Names::Short);
        assert_eq!(settings.format, Format::Json);
        assert_eq!(
            settings.state_dir,
            PathBuf::from("/tmp/tern-state-never-made")
        );
        assert!(settings.broker.is_none());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let args = ConfigArgs {
            endpoint: Some("x.iot.us-east-1.amazonaws.com".into()),
            thing_name: Some("t\u{7}".into()),
            interval: Some(60),
            cert: Some("/nonexistent/cert.pem".into()),
            ..Default::default()
        };
        let problems = load(&args).unwrap_err().0;
        let text: Vec<String> = problems.iter().map(|p| p.0.clone()).collect();
        let has = |needle: &str| text.iter().any(|t| t.contains(needle));
        assert!(has("under 300 s"), "{text:?}");
        assert!(has("control characters"), "{text:?}");
        assert!(has("key is missing"), "{text:?}");
        assert!(has("root-ca is missing"), "{text:?}");
        assert!(has("cert /nonexistent/cert.pem: cannot read"), "{text:?}");
    }
}
