// Over 400 lines: resolving every setting and check-config are one pass over the same
// settings, which their tests load whole.
//! Configuration: reads an AWS IoT Device Client config file as it is (plus tern's own
//! `tern` section), applies command-line overrides, and checks everything a run depends on,
//! the account it runs as included, reporting every problem at once with the file or key and
//! the fix; `run` and `check-config` both load through here. Loads the TLS material
//! into memory so nothing is read from disk after setup. Never connects anywhere.

mod account;
mod args;
mod behaviors;
mod broker;
mod endpoint;
mod file;
mod reports;
pub mod state_dir;
mod tls;
mod topic;

use std::{
    fmt,
    ops::RangeInclusive,
    path::{Path, PathBuf},
    sync::Arc,
};

pub use account::Account;
use anyhow::{Result, bail};
pub use args::ConfigArgs;
pub use behaviors::Detection;
use broker::{AWS_MIN_INTERVAL, BrokerInputs};
use file::{File, expand, read_file};
use rustls::ClientConfig;

use crate::{
    collect::FileMetric,
    report::{Encoding, Format, Names, catalog::Selection},
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
    /// The behaviours judged on the device, when a behaviours file is given.
    pub detection: Option<Detection>,
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
    /// Where violation events are published.
    pub violations_topic: String,
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

/// Reads, resolves and checks the configuration, and the account tern would run as; on
/// failure every problem is listed. `run` and `check-config` both come here.
pub fn load(args: &ConfigArgs) -> std::result::Result<(Settings, Account), Problems> {
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

fn resolve(args: &ConfigArgs, problems: &mut Vec<Problem>) -> Option<(Settings, Account)> {
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
    let custom_metrics = match (&args.custom_metrics, &tern.custom_metrics) {
        (Some(selection), _) => selection.clone(),
        (None, Some(spec)) => spec.text().parse().unwrap_or_else(|e| {
            problem(problems, format!("{source}: tern.custom-metrics: {e:#}"));
            Selection::All
        }),
        (None, None) => Selection::All,
    };
    let metrics = reports::user_metrics(args, &tern, &source, problems);
    let names = args.names.or(tern.names).unwrap_or(Names::Long);
    let format = args.format.or(tern.format).unwrap_or(Format::Json);
    let encoding = Encoding {
        names,
        format,
        budget: usize::try_from(budget).unwrap_or(usize::MAX),
    };
    let thing = args.thing_name.clone().or(file.thing_name);
    let detection = behaviors::load(args, &tern, &thing, &custom_metrics, &metrics, problems);
    let key = args.key.clone().or(file.key.as_deref().map(expand));
    let endpoint = args.endpoint.clone().or(file.endpoint);
    let violations_topic = topic::given(args, &tern, &source, endpoint.is_none(), problems);
    // With an endpoint, reports carry the delivery counts too.
    let floor = reports::floor(
        encoding,
        &custom_metrics,
        &metrics,
        endpoint.is_some(),
        problems,
    );
    if let Some(floor) = floor {
        reports::check_budget(&source, budget, floor, problems);
    }
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
                thing_name: thing,
                cert: args.cert.clone().or(file.cert.as_deref().map(expand)),
                key,
                root_ca: args.root_ca.clone().or(file.root_ca.as_deref().map(expand)),
                interval,
                format,
                report_floor: floor,
                violations_topic,
                tern: &tern,
            };
            broker::broker(inputs, problems)
        }
    };
    let settings = Settings {
        interval,
        names,
        format,
        budget,
        state_dir,
        broker,
        custom_metrics,
        metrics,
        user: args.user.clone().or(tern.user),
        shared_user: args.shared_user || tern.shared_user.unwrap_or(false),
        detection,
    };
    // The account, and what it must reach: the state directory, the metric files.
    let account = Account::resolve(settings.user.as_deref(), settings.shared_user)
        .map_err(|e| problem(problems, format!("{e:#}")))
        .ok();
    let owners = account.as_ref().map(|a| [0, a.uid]);
    for found in state_dir::problems(&settings.state_dir, owners.as_ref().map(|o| &o[..])) {
        problem(problems, format!("{source}: {found}"));
    }
    reports::check_files(&source, &settings.metrics, account.as_ref(), problems);
    Some((settings, account?))
}

/// `tern check-config`: prints what would run, or every problem; Ok only if it would run.
pub fn check(args: &ConfigArgs) -> Result<()> {
    match load(args) {
        Ok((settings, account)) => {
            match &settings.broker {
                Some(b) => println!(
                    "configuration OK: reports every {} s to {}:{} as thing {:?}{}, running as \
                     {}\nviolations of the behaviours judged on the device go to topic {:?} \
                     (QoS 1)",
                    settings.interval,
                    b.host,
                    b.port,
                    b.thing_name,
                    if b.aws { " (AWS IoT Core)" } else { "" },
                    account.name,
                    b.violations_topic
                ),
                None => println!(
                    "configuration OK: reports every {} s on stdout (no endpoint), running as {}",
                    settings.interval, account.name
                ),
            }
            let detection = settings.detection.iter().flat_map(Detection::lines);
            detection.for_each(|line| println!("{line}"));
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

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

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
            user: Some("nobody".into()),
            shared_user: true,
            ..Default::default()
        };
        let (settings, account) = load(&args).unwrap();
        assert_eq!(account.name, "nobody");
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
