//! A kernel made ready to boot: its image, the few modules the scenario needs, and the
//! initramfs archives (the guest's userland, the release tern built for the kernel's
//! architecture, the scenario).

use std::{
    collections::{BTreeSet, HashMap},
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    BOOT_LIMIT, GUEST_INIT, MODULES,
    apt::{Apt, kernel_packages},
    arch::Arch,
    truth::Sections,
    userland::Userland,
};
use crate::status;

/// A kernel ready to boot: its image and the few modules the scenario needs.
pub(super) struct Kernel {
    pub(super) release: String,
    pub(super) arch: Arch,
    vmlinuz: PathBuf,
    modules: PathBuf,
}

impl Kernel {
    /// Downloads, extracts and trims a suite's kernel for `arch`, or finds it done before.
    pub(super) fn fetch(
        apt: &Apt,
        suite: &str,
        arch: Arch,
        flavour: &str,
        work: &Path,
    ) -> Result<Self> {
        // amd64 kernels keep the folders named by suite alone that earlier runs filled.
        let dir = match arch {
            Arch::Amd64 => work.join(suite),
            _ => work.join(format!("{suite}-{flavour}")),
        };
        let done = dir.join("release");
        if let Ok(release) = fs::read_to_string(&done) {
            return Ok(Self {
                release: release.trim().to_owned(),
                arch,
                vmlinuz: dir.join("vmlinuz"),
                modules: dir.join("modules.cpio"),
            });
        }
        apt.refresh()?;
        let packages = kernel_packages(apt, suite, flavour, arch.debian())?;
        eprintln!("test-kernels: {suite} {flavour}: {}", packages.join(" "));
        let debs = work.join("debs");
        fs::create_dir_all(&debs)?;
        let tree = dir.join("tree");
        if tree.exists() {
            fs::remove_dir_all(&tree)?;
        }
        fs::create_dir_all(&tree)?;
        for package in &packages {
            let deb = apt.deb(&debs, package, arch.debian())?;
            let mut extract = Command::new("dpkg-deb");
            extract.arg("-x").arg(&deb).arg(&tree);
            status(extract)?;
        }
        let (release, modules_dir) = modules_dir(&tree)?;
        let vmlinuz = [
            tree.join(format!("boot/vmlinuz-{release}")),
            modules_dir.join("vmlinuz"),
        ]
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| format!("{suite}: no vmlinuz for {release}"))?;
        fs::copy(&vmlinuz, dir.join("vmlinuz"))?;
        modules_archive(&modules_dir, &release, &dir)?;
        fs::remove_dir_all(&tree)?;
        fs::write(&done, &release)?;
        Ok(Self {
            release,
            arch,
            vmlinuz: dir.join("vmlinuz"),
            modules: dir.join("modules.cpio"),
        })
    }

    /// Keeps the last boot's console under another name.
    pub(super) fn keep_console(&self, work: &Path, name: &str) -> Result<()> {
        let run = work.join("runs").join(&self.release);
        fs::rename(run.join("console.log"), run.join(name))?;
        Ok(())
    }

    /// Boots the kernel with `parameters` for the guest on its command line; the guest's
    /// results.
    pub(super) fn boot(&self, work: &Path, common: &Path, parameters: &str) -> Result<Sections> {
        let run = work.join("runs").join(&self.release);
        fs::create_dir_all(&run)?;
        let initrd = run.join("initrd.cpio");
        let mut bytes = fs::read(common)?;
        bytes.extend(fs::read(&self.modules)?);
        fs::write(&initrd, bytes)?;
        let console = run.join("console.log");
        let results = run.join("results.log");
        // A file of an earlier run must not pass for this one's.
        for log in [&console, &results] {
            if log.exists() {
                fs::remove_file(log)?;
            }
        }
        let mut qemu = self.arch.qemu(&console, &results)?;
        qemu.arg("-kernel")
            .arg(&self.vmlinuz)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(format!(
                "console={} panic=-1 rdinit=/init tern_results={} {parameters}",
                self.arch.console(),
                self.arch.results_device()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let shown = format!("{:?}", qemu.get_program());
        let mut child = qemu.spawn().with_context(|| format!("starting {shown}"))?;
        let deadline = Instant::now() + BOOT_LIMIT;
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                bail!(
                    "QEMU killed after {} s; see {}",
                    BOOT_LIMIT.as_secs(),
                    console.display()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
        let text = fs::read_to_string(&results)
            .with_context(|| format!("no results; see {}", console.display()))?;
        Ok(Sections::parse(&text.replace('\r', "")))
    }
}

/// The kernel release and its modules folder in an extracted tree.
fn modules_dir(tree: &Path) -> Result<(String, PathBuf)> {
    for base in ["lib/modules", "usr/lib/modules"] {
        let Ok(entries) = fs::read_dir(tree.join(base)) else {
            continue;
        };
        if let Some(entry) = entries.flatten().find(|e| e.path().join("kernel").is_dir()) {
            return Ok((
                entry.file_name().to_string_lossy().into_owned(),
                entry.path(),
            ));
        }
    }
    bail!("no lib/modules/RELEASE/kernel in {}", tree.display())
}

/// A module's name as the kernel spells it, from its file name.
fn module_name(file: &Path) -> Option<String> {
    let name = file.file_name()?.to_str()?;
    let stem = name.split_once(".ko")?.0;
    Some(stem.replace('-', "_"))
}

fn module_files(dir: &Path, found: &mut HashMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            module_files(&path, found)?;
        } else if let Some(name) = module_name(&path) {
            found.insert(name, path);
        }
    }
    Ok(())
}

/// modules.cpio: the scenario's modules with their dependencies (from modinfo), the
/// kernel's lists of built-in ones, a depmod index, and /etc/tern-modules for init.
fn modules_archive(modules_dir: &Path, release: &str, dir: &Path) -> Result<()> {
    let mut files = HashMap::new();
    module_files(&modules_dir.join("kernel"), &mut files)?;
    let builtin = fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
    let builtin: BTreeSet<String> = builtin
        .lines()
        .filter_map(|l| module_name(Path::new(l)))
        .collect();
    let root = dir.join("modules");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    let target = root.join("lib/modules").join(release);
    let mut wanted: Vec<String> = MODULES.iter().map(|m| (*m).to_owned()).collect();
    let mut copied = BTreeSet::new();
    while let Some(name) = wanted.pop() {
        if copied.contains(&name) || builtin.contains(&name) {
            continue;
        }
        let file = files
            .get(&name)
            .with_context(|| format!("{release}: module {name} is neither a file nor built in"))?;
        let output = Command::new("modinfo")
            .args(["-F", "depends"])
            .arg(file)
            .output()
            .context("running modinfo")?;
        wanted.extend(
            String::from_utf8_lossy(&output.stdout)
                .trim()
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.replace('-', "_")),
        );
        let relative = file.strip_prefix(modules_dir)?;
        let to = target.join(relative);
        fs::create_dir_all(to.parent().expect("a module file has a folder"))?;
        fs::copy(file, &to)?;
        copied.insert(name);
    }
    for list in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        if modules_dir.join(list).is_file() {
            fs::copy(modules_dir.join(list), target.join(list))?;
        }
    }
    let mut depmod = Command::new("depmod");
    depmod.arg("-b").arg(&root).arg(release);
    status(depmod)?;
    fs::create_dir_all(root.join("etc"))?;
    fs::write(root.join("etc/tern-modules"), MODULES.join("\n") + "\n")?;
    cpio(&root, &dir.join("modules.cpio"))?;
    fs::remove_dir_all(&root)?;
    Ok(())
}

/// Writes the newc archive of `root`'s contents, owned by root.
fn cpio(root: &Path, archive: &Path) -> Result<()> {
    let list = Command::new("find")
        .arg(".")
        .current_dir(root)
        .output()
        .context("running find")?;
    let out = fs::File::create(archive)?;
    let mut child = Command::new("cpio")
        .args(["-o", "-H", "newc", "-R", "0:0", "--quiet"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(out)
        .spawn()
        .context("starting cpio")?;
    std::io::Write::write_all(&mut child.stdin.take().expect("piped stdin"), &list.stdout)?;
    if !child.wait()?.success() {
        bail!("cpio of {} failed", root.display());
    }
    Ok(())
}

/// The part of every initramfs of one architecture that does not depend on the kernel:
/// busybox (its applets linked by init), init, tern and `helper` (the xtask, for the UDP
/// sockets) built for the guest, ip, ss, tc, kmod, and their libraries.
pub(super) fn common_archive(
    work: &Path,
    userland: &Userland,
    tern: &Path,
    helper: &Path,
) -> Result<PathBuf> {
    let root = work.join("initramfs");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    for dir in [
        "bin", "sbin", "etc", "proc", "sys", "dev", "run", "tmp", "var/lib",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    userland.install(
        &root,
        &[
            (tern.to_path_buf(), "bin/tern"),
            (helper.to_path_buf(), "bin/xtask"),
        ],
    )?;
    std::os::unix::fs::symlink("busybox", root.join("bin/sh"))?;
    fs::write(root.join("init"), GUEST_INIT)?;
    set_mode(&root.join("init"), 0o755)?;
    // tern drops to its own account, named like its binary, once attached.
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/:/bin/sh\ntern:x:990:990:tern:/nonexistent:/bin/false\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs::write(
        root.join("etc/group"),
        "root:x:0:\ntern:x:990:\nnogroup:x:65534:\n",
    )?;
    let archive = work.join("common.cpio");
    cpio(&root, &archive)?;
    Ok(archive)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    let mut permissions = fs::metadata(path)?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, mode);
    fs::set_permissions(path, permissions)?;
    Ok(())
}
