//! The guest's userland: busybox, ip, ss, tc and kmod with their shared libraries, taken
//! from this machine for amd64 guests and from Debian's packages for arm64 ones (extracted
//! once under target/kernels), plus the libraries of the tern and helper built for the guest.
//! Libraries are found from each binary's ELF headers (readelf), never by running it, so a
//! foreign binary's are found as well as a native one's.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use super::{
    apt::{Apt, userland_packages},
    arch::Arch,
};
use crate::status;

/// The guest's tools: where the guest runs each, and where Debian puts it (bookworm and
/// trixie differ for ip).
const TOOLS: &[(&str, &[&str])] = &[
    ("bin/busybox", &["usr/bin/busybox", "bin/busybox"]),
    (
        "usr/sbin/ip",
        &["usr/bin/ip", "usr/sbin/ip", "bin/ip", "sbin/ip"],
    ),
    ("usr/bin/ss", &["usr/bin/ss", "bin/ss"]),
    ("usr/sbin/tc", &["usr/sbin/tc", "sbin/tc"]),
    ("sbin/modprobe", &["usr/bin/kmod", "bin/kmod"]),
];

/// The Debian packages of the tools, for a guest of another architecture than this machine.
const PACKAGES: &[&str] = &["busybox-static", "iproute2", "kmod"];

/// The suite a foreign guest's userland comes from.
const SUITE: &str = "trixie";

/// Every binary's libraries together stay well under this; more means a loop.
const MAX_LIBRARIES: usize = 128;

pub(super) struct Userland {
    arch: Arch,
    /// Where the tools and libraries are found: / for this machine's, else an extracted tree.
    root: PathBuf,
}

impl Userland {
    /// This machine's own userland for amd64 (the matrix runs on x86_64 hosts); Debian's
    /// packages for another architecture, downloaded and extracted unless done before.
    pub(super) fn fetch(apt: &Apt, arch: Arch, downloads: &Path) -> Result<Self> {
        if arch == Arch::Amd64 {
            return Ok(Self {
                arch,
                root: PathBuf::from("/"),
            });
        }
        let dir = downloads.join(format!("userland-{}", arch.debian()));
        let tree = dir.join("tree");
        let done = dir.join("packages");
        if done.is_file() {
            return Ok(Self { arch, root: tree });
        }
        apt.refresh()?;
        let packages = userland_packages(apt, SUITE, arch.debian(), PACKAGES)?;
        let debs = downloads.join("debs");
        fs::create_dir_all(&debs)?;
        if tree.exists() {
            fs::remove_dir_all(&tree)?;
        }
        fs::create_dir_all(&tree)?;
        let mut extracted = String::new();
        for package in &packages {
            let deb = apt.deb(&debs, package, arch.debian())?;
            let mut extract = Command::new("dpkg-deb");
            extract.arg("-x").arg(&deb).arg(&tree);
            status(extract)?;
            extracted.push_str(&format!("{}\n", deb.display()));
        }
        eprintln!(
            "test-kernels: {} userland from {SUITE}: {} packages",
            arch.debian(),
            packages.len()
        );
        fs::write(&done, extracted)?;
        Ok(Self { arch, root: tree })
    }

    /// Copies the tools, then `binaries` (each a file here and its path in the guest), into
    /// the guest's root `guest` with the libraries of all of them.
    pub(super) fn install(&self, guest: &Path, binaries: &[(PathBuf, &str)]) -> Result<()> {
        let mut all = Vec::new();
        for (to, candidates) in TOOLS {
            let from = candidates
                .iter()
                .map(|c| self.root.join(c))
                .find(|p| p.is_file())
                .with_context(|| {
                    format!(
                        "no {} under {} (looked at {})",
                        to.rsplit('/').next().unwrap_or(to),
                        self.root.display(),
                        candidates.join(", ")
                    )
                })?;
            all.push((from, *to));
        }
        all.extend(binaries.iter().cloned());
        let mut scanned = BTreeSet::new();
        let mut queue = Vec::new();
        for (from, to) in &all {
            install(from, &guest.join(to))?;
            queue.push(from.clone());
        }
        while let Some(binary) = queue.pop() {
            let (interpreter, needed) = dynamic(&binary)?;
            if let Some(interpreter) = interpreter
                && scanned.insert(interpreter.clone())
            {
                let name = Path::new(&interpreter)
                    .file_name()
                    .with_context(|| format!("{}: interpreter {interpreter}", binary.display()))?
                    .to_string_lossy()
                    .into_owned();
                let direct = self.root.join(interpreter.trim_start_matches('/'));
                let from = if direct.is_file() {
                    direct
                } else {
                    self.library(&name, &binary)?
                };
                install(&from, &guest.join(interpreter.trim_start_matches('/')))?;
            }
            for name in needed {
                if !scanned.insert(name.clone()) {
                    continue;
                }
                ensure!(
                    scanned.len() <= MAX_LIBRARIES,
                    "more than {MAX_LIBRARIES} libraries for the guest's binaries"
                );
                let from = self.library(&name, &binary)?;
                install(
                    &from,
                    &guest.join("lib").join(self.arch.triplet()).join(&name),
                )?;
                queue.push(from);
            }
        }
        Ok(())
    }

    /// The library file for a NEEDED name, where the dynamic linker looks by default.
    fn library(&self, name: &str, needed_by: &Path) -> Result<PathBuf> {
        let triplet = self.arch.triplet();
        let folders = [
            format!("usr/lib/{triplet}"),
            format!("lib/{triplet}"),
            "usr/lib".into(),
            "lib".into(),
            "usr/lib64".into(),
            "lib64".into(),
        ];
        folders
            .iter()
            .map(|f| self.root.join(f).join(name))
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "{name}, needed by {}, is in none of {} under {}",
                    needed_by.display(),
                    folders.join(", "),
                    self.root.display()
                )
            })
    }
}

/// A binary's interpreter and NEEDED libraries, from its ELF headers (none for a static one).
fn dynamic(binary: &Path) -> Result<(Option<String>, Vec<String>)> {
    let output = Command::new("readelf")
        .args(["-W", "-l", "-d"])
        .arg(binary)
        .output()
        .context("running readelf (binutils)")?;
    if !output.status.success() {
        bail!(
            "readelf {}: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let bracketed = |line: &str, after: &str| -> Option<String> {
        let rest = &line[line.find(after)? + after.len()..];
        Some(rest.split(']').next()?.trim().to_owned())
    };
    let interpreter = text
        .lines()
        .find_map(|l| bracketed(l, "[Requesting program interpreter:"));
    let needed = text
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| bracketed(l, "Shared library: ["))
        .collect();
    Ok((interpreter, needed))
}

/// Copies a file, following links, keeping its mode.
pub(super) fn install(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to.parent().expect("a file in a folder"))?;
    if to.exists() {
        fs::remove_file(to)?;
    }
    fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_binary_names_its_interpreter_and_libc() -> Result<()> {
        let (interpreter, needed) = dynamic(&std::env::current_exe()?)?;
        let interpreter = interpreter.expect("a test binary linked dynamically");
        assert!(interpreter.starts_with('/') && interpreter.contains("ld-linux"));
        assert!(needed.iter().any(|n| n == "libc.so.6"), "{needed:?}");
        Ok(())
    }
}
