//! Debian's kernel packages through apt with its own sources, lists and cache under
//! target/kernels: the system's sources stay untouched.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use super::{LISTS_MAX_AGE, MIRROR, SUITES};
use crate::status;

/// apt with its own sources, lists and cache.
pub(super) struct Apt {
    options: Vec<String>,
    lists: PathBuf,
}

impl Apt {
    pub(super) fn new(dir: &Path) -> Result<Self> {
        let lists = dir.join("lists");
        let cache = dir.join("cache");
        fs::create_dir_all(lists.join("partial"))?;
        fs::create_dir_all(cache.join("archives/partial"))?;
        let sources = dir.join("sources.list");
        let text: String = SUITES
            .iter()
            .map(|s| format!("deb {MIRROR} {s} main\n"))
            .collect();
        if fs::read_to_string(&sources).ok().as_deref() != Some(text.as_str()) {
            fs::write(&sources, text)?;
        }
        Ok(Self {
            options: vec![
                format!("Dir::Etc::sourcelist={}", sources.display()),
                "Dir::Etc::sourceparts=-".into(),
                format!("Dir::State::Lists={}", lists.display()),
                format!("Dir::Cache={}", cache.display()),
                "APT::Architectures::=amd64".into(),
            ],
            lists,
        })
    }

    /// Updates the lists unless an update succeeded within a day: the archive drops the
    /// packages its newer lists no longer name.
    pub(super) fn refresh(&self) -> Result<()> {
        let stamp = self.lists.join("tern-updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < LISTS_MAX_AGE));
        if !fresh {
            eprintln!(
                "test-kernels: apt update (private lists in {})",
                self.lists.display()
            );
            status(self.command("apt-get", &["-q", "update"]))?;
            fs::write(&stamp, "")?;
        }
        Ok(())
    }

    pub(super) fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new(program);
        for option in &self.options {
            command.args(["-o", option]);
        }
        command.args(args);
        command
    }

    /// The first stanza `apt-cache show` gives for `package`, or None where apt has none.
    pub(super) fn show(&self, package: &str) -> Result<Option<String>> {
        let output = self
            .command("apt-cache", &["show", package])
            .stderr(Stdio::null())
            .output()
            .context("running apt-cache")?;
        let text = String::from_utf8_lossy(&output.stdout);
        Ok(text
            .split("\n\n")
            .next()
            .filter(|s| output.status.success() && s.starts_with("Package:"))
            .map(str::to_owned))
    }
}

fn field<'a>(stanza: &'a str, name: &str) -> Option<&'a str> {
    stanza
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// The kernel packages a stanza depends on (first alternatives, names only).
fn kernel_depends(stanza: &str) -> Vec<String> {
    field(stanza, "Depends")
        .unwrap_or_default()
        .split(',')
        .filter_map(|d| d.split('|').next()?.split_whitespace().next())
        .filter(|n| {
            ["linux-image-", "linux-binary-", "linux-modules-"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .map(str::to_owned)
        .collect()
}

/// The packages that hold a suite's newest amd64 kernel and its modules, found from the
/// `linux-image-amd64` metapackage: the unsigned image where there is one (7.x splits the
/// kernel into linux-binary and linux-modules packages).
pub(super) fn kernel_packages(apt: &Apt, suite: &str) -> Result<Vec<String>> {
    let meta = apt
        .show(&format!("linux-image-amd64/{suite}"))?
        .with_context(|| format!("apt has no linux-image-amd64 in {suite}"))?;
    let mut queue = kernel_depends(&meta);
    let mut found: Vec<String> = Vec::new();
    while let Some(name) = queue.pop() {
        if found.len() > 8 {
            bail!("{suite}: the kernel's dependencies do not end: {found:?}");
        }
        let unsigned = format!("{name}-unsigned");
        let (name, stanza) = match apt.show(&unsigned)? {
            Some(stanza) => (unsigned, stanza),
            None => {
                let stanza = apt
                    .show(&name)?
                    .with_context(|| format!("apt has no {name}"))?;
                (name, stanza)
            }
        };
        if !found.contains(&name) {
            queue.extend(kernel_depends(&stanza));
            found.push(name);
        }
    }
    Ok(found)
}
