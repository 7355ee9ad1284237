//! The behaviours file (`--behaviors`, `tern.behaviors`): read once at start, checked against
//! the custom metrics the reports carry, each problem named with the file.

use std::path::Path;

use super::{ConfigArgs, Problem, file::TernSection, file::expand, problem};
use crate::{
    collect::FileMetric,
    detect::{Detector, Profile},
    host::files::{self, Links},
    report::catalog::Selection,
};

/// A security profile stays well under this, with its 100 behaviours at most.
const BEHAVIORS_MAX: u64 = 1 << 20;

/// The behaviours tern judges, and the thing name their violations carry.
#[derive(Debug)]
pub struct Detection {
    pub profile: Profile,
    pub thing_name: String,
}

impl Detection {
    /// What is judged on the device, then one line for each behaviour left to the cloud:
    /// check-config prints them, and a run logs them at start.
    pub fn lines(&self) -> Vec<String> {
        let profile = &self.profile;
        let mut lines = vec![format!(
            "judging {} behaviour(s) of security profile {:?} on the device as thing {:?}",
            profile.behaviors.len(),
            profile.name,
            self.thing_name
        )];
        lines.extend(profile.skipped.iter().map(ToString::to_string));
        lines
    }

    /// The detector of these behaviours, for reports `interval` seconds apart.
    pub fn detector(&self, interval: u64) -> Detector {
        Detector::new(self.profile.clone(), &self.thing_name, interval)
    }
}

/// The behaviours the flag or the file names, if any; none with their problems told.
/// `thing_name` is the configured one, which violations carry.
pub fn load(
    args: &ConfigArgs,
    tern: &TernSection,
    thing_name: &Option<String>,
    selection: &Selection,
    metrics: &[FileMetric],
    problems: &mut Vec<Problem>,
) -> Option<Detection> {
    let path = args
        .behaviors
        .clone()
        .or(tern.behaviors.as_deref().map(expand))?;
    Some(Detection {
        profile: read(&path, selection, metrics, problems)?,
        thing_name: device_name(thing_name.clone()),
    })
}

fn read(
    path: &Path,
    selection: &Selection,
    metrics: &[FileMetric],
    problems: &mut Vec<Problem>,
) -> Option<Profile> {
    let text = match files::read_text(path, BEHAVIORS_MAX, Links::Follow) {
        Ok((text, _)) => text,
        Err(e) => {
            problem(
                problems,
                format!(
                    "behaviours file {}: cannot read it ({e}); point tern.behaviors \
                     (--behaviors) at a readable JSON file",
                    path.display()
                ),
            );
            return None;
        }
    };
    let user: Vec<(&str, _)> = metrics.iter().map(|m| (m.name.as_str(), m.kind)).collect();
    crate::detect::behaviors::parse(&text, selection, &user)
        .map_err(|found| {
            for p in found {
                problem(problems, format!("behaviours file {}: {p}", path.display()));
            }
        })
        .ok()
}

/// The name violations give the device: the thing's, else the host's.
fn device_name(configured: Option<String>) -> String {
    configured
        .or_else(|| {
            files::read_text(Path::new("/proc/sys/kernel/hostname"), 256, Links::Follow)
                .ok()
                .map(|(name, _)| name.trim().to_owned())
                .filter(|name| !name.is_empty())
        })
        .unwrap_or_else(super::program_name)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::config::load as load_config;

    #[test]
    fn the_file_key_names_the_behaviours_and_the_flag_overrides_it() {
        let dir = std::env::temp_dir().join(format!("tern-behaviors-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        fs::write(
            &good,
            r#"{"securityProfileName": "gateways", "behaviors": [
                {"name": "ports", "metric": "aws:listening-tcp-ports",
                 "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22]}}},
                {"name": "p90", "metric": "aws:all-bytes-out",
                 "criteria": {"comparisonOperator": "less-than",
                              "statisticalThreshold": {"statistic": "p90"}}}]}"#,
        )
        .unwrap();
        let bad = dir.join("bad.json");
        fs::write(
            &bad,
            r#"[{"name": "resets", "metric": "interval_tcp_resets_sent",
                 "criteria": {"comparisonOperator": "less-than", "value": {"count": 5}}}]"#,
        )
        .unwrap();
        let config = dir.join("config.json");
        fs::write(
            &config,
            format!(
                r#"{{"thing-name": "gw-7", "tern": {{"behaviors": {:?},
                    "state-dir": "/tmp/tern-state-never-made"}}}}"#,
                good.display().to_string()
            ),
        )
        .unwrap();
        let mut args = ConfigArgs {
            config: Some(config),
            user: Some("nobody".into()),
            shared_user: true,
            ..Default::default()
        };
        let (settings, _) = load_config(&args).unwrap();
        let detection = settings.detection.unwrap();
        assert_eq!(detection.thing_name, "gw-7");
        assert_eq!(
            detection.lines(),
            [
                "judging 1 behaviour(s) of security profile \"gateways\" on the device as \
                 thing \"gw-7\"",
                "behaviour \"p90\" is left to the cloud: a statisticalThreshold ranks the \
                 device within its fleet",
            ]
        );
        args.behaviors = Some(bad.clone());
        let problems = load_config(&args).unwrap_err().0;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].0.starts_with(&format!(
                "behaviours file {}: behaviour \"resets\": interval_tcp_resets_sent with \
                 less-than is compared with a \"number\" value",
                bad.display()
            )),
            "{problems:?}"
        );
        args.behaviors = Some(dir.join("missing.json"));
        let problems = load_config(&args).unwrap_err().0;
        assert!(problems[0].0.contains("cannot read it"), "{problems:?}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
