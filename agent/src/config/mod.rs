//! Configuration: reads an AWS IoT Device Client config file as it is (plus tern's own
//! `tern` section), applies command-line overrides, and checks everything a run depends on,
//! reporting every problem at once with the file or key and the fix. Loads the TLS material
//! into memory so nothing is read from disk after setup. Never connects anywhere.

use std::{
    fmt, fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Result, bail};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use serde::Deserialize;

use crate::{
    collect::FileMetric,
    report::{
        Format, Kind, Names,
        catalog::{self, Selection},
    },
};

/// Device Defender refuses reports more often than this from one thing.
const AWS_MIN_INTERVAL: u64 = 300;
const DEFAULT_INTERVAL: u64 = 300;
const DEFAULT_PORT: u16 = 8883;
const DEFAULT_BUDGET: u64 = 128 * 1024;
const DEFAULT_SPOOL_BYTES: u64 = 8 * 1024 * 1024;
const DEFAULT_KEEP_ALIVE: u64 = 60;
const DEFAULT_RECONNECT_MAX: u64 = 120;
const DEFAULT_REPLY_TIMEOUT: u64 = 60;
/// AWS IoT Core's largest MQTT packet is 128 KB; the same limit serves other brokers.
const DEFAULT_PACKET_LIMIT: u64 = 128 * 1024;
/// ALPN protocol AWS IoT Core needs for MQTT with a client certificate on port 443.
const AWS_ALPN: &str = "x-amzn-mqtt-ca";
const MAX_THING_NAME: usize = 128;

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
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub interval: Option<u64>,
    /// Field names of the report: the document's long names or its short ones.
    #[arg(long, value_enum)]
    pub names: Option<Names>,
    /// Encoding of the report (on stdout, CBOR is printed as one hex line per report).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Largest encoded report, in bytes (default 131072); lists are cut to fit, totals stay
    /// exact.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1024..=16 * 1024 * 1024))]
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
    /// number_list, string_list, ip_list. Repeat for more; replaces a file metric of the same
    /// name.
    #[arg(long = "metric", value_name = "NAME=TYPE:PATH")]
    pub metrics: Vec<FileMetric>,
    /// Unprivileged user to run as once the programs are attached (default: the user
    /// `install` created, named like this binary, or nobody).
    #[arg(long)]
    pub user: Option<String>,
}

/// The file as written: Device Client keys, and tern's section. Other sections are ignored.
#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct File {
    endpoint: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    root_ca: Option<String>,
    thing_name: Option<String>,
    device_defender: Option<DeviceDefender>,
    tern: Option<TernSection>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct DeviceDefender {
    enabled: Option<bool>,
    interval: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct TernSection {
    port: Option<u16>,
    alpn: Option<String>,
    format: Option<Format>,
    names: Option<Names>,
    budget: Option<u64>,
    state_dir: Option<String>,
    spool_bytes: Option<u64>,
    client_id: Option<String>,
    aws: Option<bool>,
    keep_alive: Option<u64>,
    reconnect_max: Option<u64>,
    reply_timeout: Option<u64>,
    packet_limit: Option<u64>,
    system_roots: Option<bool>,
    user: Option<String>,
    custom_metrics: Option<SelectionSpec>,
    metrics: Option<Vec<MetricSpec>>,
}

/// `"all"`, `"none"`, `"a,b"` or `["a", "b"]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum SelectionSpec {
    Text(String),
    Names(Vec<String>),
}

/// A user-defined metric: `{"name": ..., "type": ..., "file": ...}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricSpec {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    file: String,
}

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

/// Reads, resolves and checks the configuration; on failure every problem is listed.
pub fn load(args: &ConfigArgs) -> std::result::Result<Settings, Problems> {
    let mut problems = Vec::new();
    let settings = resolve(args, &mut problems);
    match settings {
        Some(settings) if problems.is_empty() => Ok(settings),
        _ => Err(Problems(problems)),
    }
}

fn problem(problems: &mut Vec<Problem>, text: String) {
    problems.push(Problem(text));
}

fn read_file(path: &Path, problems: &mut Vec<Problem>) -> Option<File> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            problem(
                problems,
                format!(
                    "config file {}: cannot read it ({e}); point --config at a readable JSON file",
                    path.display()
                ),
            );
            return None;
        }
    };
    match serde_json::from_str(&text) {
        Ok(file) => Some(file),
        Err(e) => {
            problem(
                problems,
                format!(
                    "config file {}: not a valid config ({e}); fix the JSON at that line",
                    path.display()
                ),
            );
            None
        }
    }
}

/// A leading `~/` means the home directory, as in the Device Client's own files.
fn expand(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => PathBuf::from(path),
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
    if !(1..=86_400).contains(&interval) {
        problem(
            problems,
            format!("{source}: device-defender.interval {interval} is out of range; use 1..86400"),
        );
    }
    let budget = args.budget.or(tern.budget).unwrap_or(DEFAULT_BUDGET);
    if !(1024..=16 * 1024 * 1024).contains(&budget) {
        problem(
            problems,
            format!("{source}: tern.budget {budget} is out of range; use 1024..16777216"),
        );
    }
    let state_dir = args
        .state_dir
        .clone()
        .or(tern.state_dir.as_deref().map(expand))
        // Where `tern install` creates it: /var/lib/ and the binary's (installed) name.
        .unwrap_or_else(|| Path::new("/var/lib").join(crate::process::program_name()));
    let endpoint = args.endpoint.clone().or(file.endpoint);
    let broker = match endpoint {
        None => {
            // Unused without an endpoint, a key others can read is still a leak to refuse.
            let key = args.key.clone().or(file.key.as_deref().map(expand));
            if let Some(key) = key
                && let Err(e) = crate::process::check_private_key(&key)
            {
                problem(problems, format!("{source}: {e:#}"));
            }
            None
        }
        Some(endpoint) => {
            let inputs = BrokerInputs {
                source: &source,
                endpoint: &endpoint,
                thing_name: args.thing_name.clone().or(file.thing_name),
                cert: args.cert.clone().or(file.cert.as_deref().map(expand)),
                key: args.key.clone().or(file.key.as_deref().map(expand)),
                root_ca: args.root_ca.clone().or(file.root_ca.as_deref().map(expand)),
                interval,
                tern: &tern,
            };
            broker(inputs, problems)
        }
    };
    let custom_metrics = match (&args.custom_metrics, &tern.custom_metrics) {
        (Some(selection), _) => selection.clone(),
        (None, Some(spec)) => {
            let text = match spec {
                SelectionSpec::Text(text) => text.clone(),
                SelectionSpec::Names(names) if names.is_empty() => "none".to_owned(),
                SelectionSpec::Names(names) => names.join(","),
            };
            text.parse().unwrap_or_else(|e| {
                problem(problems, format!("{source}: tern.custom-metrics: {e:#}"));
                Selection::All
            })
        }
        (None, None) => Selection::All,
    };
    let mut metrics = Vec::new();
    for spec in tern.metrics.iter().flatten() {
        let metric = spec
            .kind
            .parse::<Kind>()
            .and_then(|kind| FileMetric::new(&spec.name, kind, expand(&spec.file)));
        match metric {
            Ok(metric) => metrics.push(metric),
            Err(e) => problem(
                problems,
                format!("{source}: tern.metrics {:?}: {e:#}", spec.name),
            ),
        }
    }
    for metric in &args.metrics {
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
    })
}

struct BrokerInputs<'a> {
    source: &'a str,
    endpoint: &'a str,
    thing_name: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    root_ca: Option<PathBuf>,
    interval: u64,
    tern: &'a TernSection,
}

fn broker(inputs: BrokerInputs<'_>, problems: &mut Vec<Problem>) -> Option<Broker> {
    let BrokerInputs {
        source,
        endpoint,
        tern,
        ..
    } = inputs;
    let (host, port) = match split_endpoint(endpoint) {
        Ok((host, port)) => (host, port.or(tern.port).unwrap_or(DEFAULT_PORT)),
        Err(why) => {
            problem(
                problems,
                format!("{source}: endpoint {endpoint:?} {why}; write a host name or host:port"),
            );
            (String::new(), DEFAULT_PORT)
        }
    };
    let aws = tern.aws.unwrap_or_else(|| is_aws_host(&host));
    if aws && inputs.interval < AWS_MIN_INTERVAL {
        problem(
            problems,
            format!(
                "{source}: interval {} s is under {AWS_MIN_INTERVAL} s, which AWS IoT Device \
                 Defender throttles; set device-defender.interval (or --interval) to at least \
                 {AWS_MIN_INTERVAL}",
                inputs.interval
            ),
        );
    }
    let thing_name = match inputs.thing_name {
        Some(name) => {
            if let Some(why) = thing_name_problem(&name) {
                problem(
                    problems,
                    format!("{source}: thing-name {name:?} {why}; use the thing's registered name"),
                );
            }
            name
        }
        None => {
            problem(
                problems,
                format!("{source}: thing-name is missing; set it to the thing's name"),
            );
            String::new()
        }
    };
    let mut require = |key: &str, value: Option<PathBuf>, what: &str| {
        if value.is_none() {
            problem(
                problems,
                format!("{source}: {key} is missing; set it to the path of {what}"),
            );
        }
        value
    };
    let cert = require("cert", inputs.cert, "the device certificate (PEM)");
    let key = require("key", inputs.key, "the device private key (PEM)");
    let system_roots = tern.system_roots.unwrap_or(false);
    let root_ca = match inputs.root_ca {
        None if system_roots => None,
        root_ca => require("root-ca", root_ca, "the broker's CA certificate (PEM)"),
    };
    let chain = cert.as_deref().and_then(|p| load_cert(p, problems));
    let private = key.as_deref().and_then(|p| load_key(p, problems));
    let mut roots = match &root_ca {
        Some(path) => load_roots(path, problems),
        None => Some(RootCertStore::empty()),
    };
    if system_roots && let Some(roots) = &mut roots {
        add_system_roots(roots, source, problems);
    }
    let spool_bytes = tern.spool_bytes.unwrap_or(DEFAULT_SPOOL_BYTES);
    let keep_alive = tern.keep_alive.unwrap_or(DEFAULT_KEEP_ALIVE);
    let reconnect_max = tern.reconnect_max.unwrap_or(DEFAULT_RECONNECT_MAX);
    let reply_timeout = tern.reply_timeout.unwrap_or(DEFAULT_REPLY_TIMEOUT);
    let packet_limit = tern.packet_limit.unwrap_or(DEFAULT_PACKET_LIMIT);
    for (key, value, range) in [
        ("tern.spool-bytes", spool_bytes, 4096..=1 << 34),
        ("tern.keep-alive", keep_alive, 1..=1200),
        ("tern.reconnect-max", reconnect_max, 1..=3600),
        ("tern.reply-timeout", reply_timeout, 1..=86_400),
        ("tern.packet-limit", packet_limit, 1024..=256 * 1024 * 1024),
    ] {
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
    if aws && !(30..=1200).contains(&keep_alive) {
        problem(
            problems,
            format!("{source}: tern.keep-alive {keep_alive} s is outside AWS IoT Core's 30..1200"),
        );
    }
    let alpn = alpn(tern.alpn.as_deref(), port);
    let (chain, private, roots) = (chain?, private?, roots?);
    let tls = client_config(chain, private, roots, alpn, cert.as_deref()?, problems)?;
    Some(Broker {
        host,
        port,
        aws,
        client_id: tern.client_id.clone().unwrap_or_else(|| thing_name.clone()),
        thing_name,
        keep_alive,
        reconnect_max,
        reply_timeout,
        packet_limit: usize::try_from(packet_limit).unwrap_or(usize::MAX),
        spool_bytes,
        tls: Arc::new(tls),
    })
}

/// The ALPN protocol to offer: the configured one (`""` for none), else on port 443 the one
/// AWS IoT Core needs there for MQTT with a client certificate.
fn alpn(configured: Option<&str>, port: u16) -> Option<String> {
    match configured {
        Some("") => None,
        Some(alpn) => Some(alpn.to_owned()),
        None if port == 443 => Some(AWS_ALPN.to_owned()),
        None => None,
    }
}

/// `host`, `host:port` or `[v6]:port`.
fn split_endpoint(endpoint: &str) -> std::result::Result<(String, Option<u16>), &'static str> {
    let endpoint = endpoint.trim();
    if endpoint.is_empty() {
        return Err("is empty");
    }
    if endpoint.contains("://") {
        return Err("has a scheme");
    }
    let (host, port) = if let Some(rest) = endpoint.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("has an unclosed [")?;
        (host, after.strip_prefix(':'))
    } else {
        match endpoint.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host, Some(port)),
            _ => (endpoint, None),
        }
    };
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or("has a bad port")
        })
        .transpose()?;
    if host.is_empty() {
        return Err("has no host");
    }
    Ok((host.to_owned(), port))
}

/// An AWS IoT Core endpoint is a host under `amazonaws.com` (`tern.aws` overrides this,
/// e.g. for a custom domain name that points at AWS IoT Core).
fn is_aws_host(host: &str) -> bool {
    host.to_ascii_lowercase().ends_with(".amazonaws.com")
}

fn thing_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.len() > MAX_THING_NAME {
        Some("is longer than 128 bytes")
    } else if name.chars().any(char::is_control) {
        Some("contains control characters")
    } else if name.contains(['/', '#', '+']) {
        Some("contains an MQTT topic character (/ # +)")
    } else {
        None
    }
}

fn load_cert(path: &Path, problems: &mut Vec<Problem>) -> Option<Vec<CertificateDer<'static>>> {
    let chain = read_certs(path, "cert", "the device certificate", problems)?;
    check_validity(path, "cert", &chain[0], problems);
    Some(chain)
}

fn read_certs(
    path: &Path,
    key: &str,
    what: &str,
    problems: &mut Vec<Problem>,
) -> Option<Vec<CertificateDer<'static>>> {
    if let Err(e) = fs::metadata(path) {
        problem(
            problems,
            format!(
                "{key} {}: cannot read it ({e}); set {key} to {what}",
                path.display()
            ),
        );
        return None;
    }
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<std::result::Result<Vec<_>, _>>());
    match certs {
        Ok(certs) if !certs.is_empty() => {
            for cert in &certs {
                if let Err(e) = x509_parser::parse_x509_certificate(cert) {
                    problem(
                        problems,
                        format!(
                            "{key} {}: a certificate in it does not parse ({e}); set {key} to \
                             {what} as PEM",
                            path.display()
                        ),
                    );
                    return None;
                }
            }
            Some(certs)
        }
        Ok(_) => {
            problem(
                problems,
                format!(
                    "{key} {}: holds no PEM certificate; set {key} to {what} as PEM",
                    path.display()
                ),
            );
            None
        }
        Err(e) => {
            problem(
                problems,
                format!(
                    "{key} {}: cannot read a PEM certificate from it ({e}); set {key} to {what} \
                     as PEM",
                    path.display()
                ),
            );
            None
        }
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn check_validity(path: &Path, key: &str, cert: &CertificateDer<'_>, problems: &mut Vec<Problem>) {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
        return;
    };
    let validity = parsed.validity();
    let now = now_secs();
    if now < validity.not_before.timestamp() {
        problem(
            problems,
            format!(
                "{key} {}: the certificate is not valid before {}; check the system clock or \
                 issue a new certificate",
                path.display(),
                validity.not_before
            ),
        );
    } else if now > validity.not_after.timestamp() {
        problem(
            problems,
            format!(
                "{key} {}: the certificate expired on {}; issue a new certificate",
                path.display(),
                validity.not_after
            ),
        );
    }
}

fn load_key(path: &Path, problems: &mut Vec<Problem>) -> Option<PrivateKeyDer<'static>> {
    let mode = match fs::metadata(path) {
        Ok(meta) => meta.permissions().mode(),
        Err(e) => {
            problem(
                problems,
                format!(
                    "key {}: cannot read it ({e}); set key to the device private key",
                    path.display()
                ),
            );
            return None;
        }
    };
    if mode & 0o077 != 0 {
        problem(
            problems,
            format!(
                "key {}: the private key is readable by group or others (mode {:o}); run \
                 chmod 600 {}",
                path.display(),
                mode & 0o777,
                path.display()
            ),
        );
    }
    match PrivateKeyDer::from_pem_file(path) {
        Ok(key) => Some(key),
        Err(e) => {
            problem(
                problems,
                format!(
                    "key {}: holds no PEM private key ({e}); set key to the device private key \
                     (PKCS#8, PKCS#1 or SEC1 PEM)",
                    path.display()
                ),
            );
            None
        }
    }
}

fn load_roots(path: &Path, problems: &mut Vec<Problem>) -> Option<RootCertStore> {
    let what = "the CA certificate the broker's certificate chains to";
    let certs = read_certs(path, "root-ca", what, problems)?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        if let Err(e) = roots.add(cert) {
            problem(
                problems,
                format!(
                    "root-ca {}: not a usable CA certificate ({e}); set root-ca to {what}",
                    path.display()
                ),
            );
            return None;
        }
    }
    Some(roots)
}

/// The operating system's trusted CAs, only when `tern.system-roots` asks for them.
fn add_system_roots(roots: &mut RootCertStore, source: &str, problems: &mut Vec<Problem>) {
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_owned(), ToString::to_string);
        problem(
            problems,
            format!(
                "{source}: tern.system-roots is true but no system CA certificate loads ({why}); \
                 install the system's CA bundle or set root-ca"
            ),
        );
    }
}

/// The TLS client configuration with ring as the only crypto provider: the configured CA
/// only, the device certificate and key, TLS 1.2 and 1.3. Host-name checks stay on; there is
/// no way to turn them off.
fn client_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: RootCertStore,
    alpn: Option<String>,
    cert_path: &Path,
    problems: &mut Vec<Problem>,
) -> Option<ClientConfig> {
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(roots);
    match builder.with_client_auth_cert(chain, key) {
        Ok(mut config) => {
            config.alpn_protocols = alpn.into_iter().map(String::into_bytes).collect();
            Some(config)
        }
        Err(rustls::Error::InconsistentKeys(_)) => {
            problem(
                problems,
                format!(
                    "cert {} and key do not match: the key is not the certificate's private \
                     key; set key to the key the certificate was issued for",
                    cert_path.display()
                ),
            );
            None
        }
        Err(e) => {
            problem(
                problems,
                format!(
                    "cert {} with key: unusable ({e}); use an RSA, ECDSA or Ed25519 key",
                    cert_path.display()
                ),
            );
            None
        }
    }
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
    fn endpoints_split_into_host_and_port() {
        assert_eq!(
            split_endpoint("example.com"),
            Ok(("example.com".into(), None))
        );
        assert_eq!(
            split_endpoint("example.com:443"),
            Ok(("example.com".into(), Some(443)))
        );
        assert_eq!(split_endpoint("[::1]:8883"), Ok(("::1".into(), Some(8883))));
        assert_eq!(split_endpoint("::1"), Ok(("::1".into(), None)));
        assert!(split_endpoint("example.com:http").is_err());
        assert!(split_endpoint("mqtts://example.com").is_err());
        assert!(split_endpoint("").is_err());
        assert!(split_endpoint(":8883").is_err());
    }

    #[test]
    fn port_443_offers_the_aws_alpn_unless_configured_otherwise() {
        assert_eq!(alpn(None, 443).as_deref(), Some(AWS_ALPN));
        assert_eq!(alpn(None, 8883), None);
        assert_eq!(alpn(Some(""), 443), None);
        assert_eq!(alpn(Some("mqtt"), 8883).as_deref(), Some("mqtt"));
    }

    #[test]
    fn aws_endpoints_are_hosts_under_amazonaws_com() {
        assert!(is_aws_host("abc-ats.iot.eu-west-1.amazonaws.com"));
        assert!(is_aws_host("ABC-ats.iot.eu-west-1.AmazonAWS.com"));
        assert!(!is_aws_host("broker.example.com"));
        assert!(!is_aws_host("amazonaws.com.example.org"));
    }

    #[test]
    fn thing_names_follow_the_document_rules() {
        assert_eq!(thing_name_problem("gateway-7"), None);
        assert_eq!(thing_name_problem(&"x".repeat(128)), None);
        assert!(thing_name_problem(&"x".repeat(129)).is_some());
        assert!(thing_name_problem("bad\nname").is_some());
        assert!(thing_name_problem("").is_some());
        assert!(thing_name_problem("a/b").is_some());
    }

    #[test]
    fn without_an_endpoint_reports_go_to_stdout_with_the_file_settings() {
        let dir = std::env::temp_dir().join(format!("tern-config-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        fs::write(
            &path,
            r#"{"logging": {"level": "DEBUG"}, "device-defender": {"enabled": true,
                "interval": 60}, "tern": {"names": "short", "state-dir": "/tmp/x"}}"#,
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
        assert_eq!(settings.state_dir, PathBuf::from("/tmp/x"));
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
