//! The config file as written: an AWS IoT Device Client configuration, whose keys tern reads
//! as they are, plus tern's own `tern` section. Parses; never checks values or merges flags.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Problem, problem};
use crate::{
    collect::FileMetric,
    host::files::{self, Links},
    report::{Format, Kind, Names},
};

/// The file as written: Device Client keys, and tern's section. Other sections are ignored.
#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct File {
    pub endpoint: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub root_ca: Option<String>,
    pub thing_name: Option<String>,
    pub device_defender: Option<DeviceDefender>,
    pub tern: Option<TernSection>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct DeviceDefender {
    pub enabled: Option<bool>,
    pub interval: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TernSection {
    pub port: Option<u16>,
    pub alpn: Option<String>,
    pub format: Option<Format>,
    pub names: Option<Names>,
    pub budget: Option<u64>,
    pub state_dir: Option<String>,
    pub spool_bytes: Option<u64>,
    pub client_id: Option<String>,
    pub aws: Option<bool>,
    pub keep_alive: Option<u64>,
    pub reconnect_max: Option<u64>,
    pub reply_timeout: Option<u64>,
    pub packet_limit: Option<u64>,
    pub system_roots: Option<bool>,
    pub user: Option<String>,
    pub shared_user: Option<bool>,
    pub custom_metrics: Option<SelectionSpec>,
    pub metrics: Option<Vec<MetricSpec>>,
    pub behaviors: Option<String>,
    pub violations_topic: Option<String>,
}

/// `"all"`, `"none"`, `"a,b"` or `["a", "b"]`.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum SelectionSpec {
    Text(String),
    Names(Vec<String>),
}

impl SelectionSpec {
    /// The selection as `--custom-metrics` writes it.
    pub fn text(&self) -> String {
        match self {
            Self::Text(text) => text.clone(),
            Self::Names(names) if names.is_empty() => "none".to_owned(),
            Self::Names(names) => names.join(","),
        }
    }
}

/// A user-defined metric: `{"name": ..., "type": ..., "file": ...}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    pub name: String,
    #[serde(rename = "type")]
    kind: String,
    file: String,
}

impl MetricSpec {
    pub fn metric(&self) -> anyhow::Result<FileMetric> {
        let kind = self.kind.parse::<Kind>()?;
        FileMetric::new(&self.name, kind, expand(&self.file))
    }
}

/// A configuration file stays well under this.
const CONFIG_MAX: u64 = 1 << 20;

pub fn read_file(path: &Path, problems: &mut Vec<Problem>) -> Option<File> {
    let text = match files::read_text(path, CONFIG_MAX, Links::Follow) {
        Ok((text, _)) => text,
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
pub fn expand(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => PathBuf::from(path),
    }
}
