//! Debian's packages through apt with its own sources, lists and cache under
//! target/kernels, for every architecture the matrix boots: the system's sources stay
//! untouched.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use super::{LISTS_MAX_AGE, MIRROR, SUITES, arch::Arch};
use crate::status;

const UPDATE_TRIES: u32 = 3;

/// apt with its own sources, lists and cache.
pub(crate) struct Apt {
    options: Vec<String>,
    lists: PathBuf,
    /// What the lists were fetched for: sources and architectures.
    configuration: String,
}

impl Apt {
    pub(crate) fn new(dir: &Path) -> Result<Self> {
        let lists = dir.join("lists");
        let cache = dir.join("cache");
        fs::create_dir_all(lists.join("partial"))?;
        fs::create_dir_all(cache.join("archives/partial"))?;
        let sources = dir.join("sources.list");
        let text: String = SUITES
            .iter()
            .map(|(suite, arches)| {
                let arches: Vec<&str> = arches.iter().map(|a| a.debian()).collect();
                format!("deb [arch={}] {MIRROR} {suite} main\n", arches.join(","))
            })
            .collect();
        if fs::read_to_string(&sources).ok().as_deref() != Some(text.as_str()) {
            fs::write(&sources, &text)?;
        }
        let mut options = vec![
            format!("Dir::Etc::sourcelist={}", sources.display()),
            "Dir::Etc::sourceparts=-".into(),
            format!("Dir::State::Lists={}", lists.display()),
            format!("Dir::Cache={}", cache.display()),
            // Kept even where the system's configuration turns it off (container images):
            // without it every apt call parses all the lists again, seconds each.
            "Dir::Cache::pkgcache=pkgcache.bin".into(),
        ];
        let architectures: Vec<&str> = Arch::ALL.iter().map(|a| a.debian()).collect();
        options.extend(
            architectures
                .iter()
                .map(|a| format!("APT::Architectures::={a}")),
        );
        Ok(Self {
            options,
            lists,
            configuration: format!("{text}{}\n", architectures.join(" ")),
        })
    }

    /// Updates the lists unless an update for the same sources and architectures succeeded
    /// within a day: the archive drops the packages its newer lists no longer name.
    pub(crate) fn refresh(&self) -> Result<()> {
        let stamp = self.lists.join("tern-updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < LISTS_MAX_AGE))
            && fs::read_to_string(&stamp).ok().as_deref() == Some(self.configuration.as_str());
        if !fresh {
            eprintln!(
                "test-kernels: apt update (private lists in {})",
                self.lists.display()
            );
            // A mirror caught syncing serves lists that do not match its Release file for
            // a moment: a retry a little later gets a consistent set.
            let mut tries = 0;
            while let Err(err) = status(self.command("apt-get", &["-q", "update"])) {
                tries += 1;
                if tries == UPDATE_TRIES {
                    return Err(err);
                }
                eprintln!("test-kernels: apt update failed ({err:#}); trying again");
                thread::sleep(Duration::from_secs(10));
            }
            fs::write(&stamp, &self.configuration)?;
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

    /// The .deb of `package` for `arch` in `debs`, downloaded unless an earlier run left it
    /// there.
    pub(crate) fn deb(&self, debs: &Path, package: &str, arch: &str) -> Result<PathBuf> {
        if let Some(deb) = find_deb(debs, package, arch)? {
            return Ok(deb);
        }
        let spec = format!("{package}:{arch}");
        let mut download = self.command("apt-get", &["-q", "download", &spec]);
        download.current_dir(debs);
        status(download)?;
        find_deb(debs, package, arch)?
            .with_context(|| format!("apt-get download left no {spec} deb in {}", debs.display()))
    }
}

/// A .deb named as apt-get download names it: PACKAGE_VERSION_ARCH.deb.
fn find_deb(debs: &Path, package: &str, arch: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    let suffix = format!("_{arch}.deb");
    Ok(fs::read_dir(debs)?.flatten().map(|e| e.path()).find(|p| {
        p.file_name().is_some_and(|n| {
            let n = n.to_string_lossy();
            n.starts_with(&prefix) && n.ends_with(&suffix)
        })
    }))
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

/// The packages that hold a suite's newest kernel of `flavour` for `arch` and its modules,
/// found from the `linux-image-FLAVOUR` metapackage: the unsigned image where there is one
/// (7.x splits the kernel into linux-binary and linux-modules packages).
pub(super) fn kernel_packages(
    apt: &Apt,
    suite: &str,
    flavour: &str,
    arch: &str,
) -> Result<Vec<String>> {
    let meta = apt
        .show(&format!("linux-image-{flavour}:{arch}/{suite}"))?
        .with_context(|| format!("apt has no linux-image-{flavour} for {arch} in {suite}"))?;
    let mut queue = kernel_depends(&meta);
    let mut found: Vec<String> = Vec::new();
    while let Some(name) = queue.pop() {
        if found.len() > 8 {
            bail!("{suite}: the kernel's dependencies do not end: {found:?}");
        }
        let unsigned = format!("{name}-unsigned");
        let (name, stanza) = match apt.show(&format!("{unsigned}:{arch}"))? {
            Some(stanza) => (unsigned, stanza),
            None => {
                let stanza = apt
                    .show(&format!("{name}:{arch}"))?
                    .with_context(|| format!("apt has no {name} for {arch}"))?;
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

/// The packages a stanza depends on (Pre-Depends and Depends, first alternatives, names
/// only).
fn depends(stanza: &str) -> Vec<String> {
    ["Pre-Depends", "Depends"]
        .iter()
        .filter_map(|f| field(stanza, f))
        .flat_map(|list| list.split(','))
        .filter_map(|d| d.split('|').next()?.split_whitespace().next())
        .map(|n| n.split(':').next().unwrap_or(n).to_owned())
        .collect()
}

/// The packages `roots` in `suite` for `arch` and, transitively, the shared libraries they
/// depend on (the packages that are `Multi-Arch: same`; the tools a package's installation
/// scripts need, debconf and the like, are not).
pub(super) fn userland_packages(
    apt: &Apt,
    suite: &str,
    arch: &str,
    roots: &[&str],
) -> Result<Vec<String>> {
    /// A guest's few tools need a few dozen libraries at most.
    const MAX: usize = 64;
    let mut queue: Vec<(String, bool)> = roots.iter().map(|r| ((*r).to_owned(), true)).collect();
    let mut seen: Vec<String> = Vec::new();
    let mut found = Vec::new();
    while let Some((name, root)) = queue.pop() {
        if seen.contains(&name) {
            continue;
        }
        if seen.len() >= MAX {
            bail!("{suite}/{arch}: more than {MAX} packages for the guest's tools: {seen:?}");
        }
        seen.push(name.clone());
        let Some(stanza) = apt.show(&format!("{name}:{arch}/{suite}"))? else {
            if root {
                bail!("apt has no {name} for {arch} in {suite}");
            }
            // Packages for all architectures and virtual ones have none; no library is lost
            // unnoticed, as the guest's binaries' NEEDED names are checked after.
            continue;
        };
        if !root && field(&stanza, "Multi-Arch") != Some("same") {
            continue;
        }
        queue.extend(depends(&stanza).into_iter().map(|d| (d, false)));
        found.push(name);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_takes_first_alternatives_without_versions_or_qualifiers() {
        let stanza = "Package: iproute2\nPre-Depends: libc6 (>= 2.38)\nDepends: debconf \
                      (>= 0.5) | debconf-2.0, libbpf1 (>= 1:0.6.0), python3:any\n";
        assert_eq!(depends(stanza), ["libc6", "debconf", "libbpf1", "python3"]);
    }

    #[test]
    fn a_deb_is_found_by_its_whole_name_and_architecture() -> Result<()> {
        let debs = std::env::temp_dir().join(format!("tern-debs-{}", std::process::id()));
        fs::create_dir_all(&debs)?;
        fs::write(debs.join("libc6_2.41-12_amd64.deb"), "")?;
        fs::write(debs.join("libc6-dev_2.41-12_amd64.deb"), "")?;
        let amd64 = find_deb(&debs, "libc6", "amd64")?;
        let arm64 = find_deb(&debs, "libc6", "arm64")?;
        fs::remove_dir_all(&debs)?;
        assert_eq!(amd64, Some(debs.join("libc6_2.41-12_amd64.deb")));
        assert_eq!(arm64, None);
        Ok(())
    }
}
