//! `cargo xtask test-kernels`: tern on other kernels than this machine's. Debian's kernels
//! come through a private apt configuration under target/kernels (the system's sources stay
//! untouched), each boots under QEMU with an initramfs of busybox, the release tern and the
//! host's ip and ss, and runs `guest/init.sh`. The guest's ground truth (ss, ip -s link,
//! /proc/net/snmp) is compared here with tern's reports: one table row per kernel.

use std::{
    collections::{BTreeSet, HashMap},
    fs,
    io::ErrorKind,
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::Value;

use crate::{build_agent, root_dir, setup, status};

const HOST_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "cpio", "kmod"];

/// The suites whose newest `linux-image-amd64` is tested, oldest first.
const SUITES: &[&str] = &["bullseye", "bookworm", "trixie", "trixie-backports"];

const MIRROR: &str = "http://deb.debian.org/debian";
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// What the scenario loads (their dependencies come along); the kernel would autoload the
/// TC and diag ones on demand, but loading them up front makes a missing one fail early.
const MODULES: &[&str] = &[
    "veth",
    "sch_ingress",
    "cls_bpf",
    "inet_diag",
    "tcp_diag",
    "udp_diag",
    "raw_diag",
    "netlink_diag",
];

/// The host binaries the guest runs besides busybox: tern and the xtask (the UDP helper) are
/// added apart, from the build.
const HOST_TOOLS: &[(&str, &str)] = &[
    ("/usr/sbin/ip", "usr/sbin/ip"),
    ("/usr/bin/ss", "usr/bin/ss"),
    ("/usr/bin/kmod", "sbin/modprobe"),
];

const GUEST_INIT: &str = include_str!("../guest/init.sh");

const INTERVAL_S: u64 = 2;
const COUNT: u64 = 5;
/// Datagrams the guest sends, as `init.sh` says: checks that the scenario happened.
const DATAGRAMS: u64 = 20;
/// The connections it holds open: one to each side.
const CONNECTIONS: usize = 2;
/// A whole boot under TCG takes about 20 s, the guest's own limits about 80 s; this
/// bounds a hung guest.
const BOOT_LIMIT: Duration = Duration::from_secs(180);

/// The guest's UDP sockets: busybox's nc speaks only TCP.
#[derive(Subcommand)]
pub enum Udp {
    /// Bind 0.0.0.0:PORT and keep the socket (unconnected) for up to ten minutes.
    Bind { port: u16 },
    /// Send COUNT datagrams of SIZE bytes to ADDR.
    Send {
        addr: SocketAddr,
        count: u64,
        size: usize,
    },
}

pub fn udp(udp: &Udp) -> Result<()> {
    match udp {
        Udp::Bind { port } => {
            let socket = UdpSocket::bind(("0.0.0.0", *port))?;
            socket.set_read_timeout(Some(Duration::from_secs(1)))?;
            let until = Instant::now() + Duration::from_secs(600);
            let mut buf = [0u8; 2048];
            while Instant::now() < until {
                match socket.recv_from(&mut buf) {
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        }
        Udp::Send { addr, count, size } => {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            let payload = vec![0x5au8; *size];
            for _ in 0..*count {
                socket.send_to(&payload, addr)?;
            }
            Ok(())
        }
    }
}

pub fn run() -> Result<()> {
    setup::packages(HOST_PACKAGES)?;
    let work = root_dir().join("target/kernels");
    let apt = Apt::new(&work.join("apt"))?;
    let mut kernels = Vec::new();
    for suite in SUITES {
        kernels.push(Kernel::fetch(&apt, suite, &work)?);
    }
    let tern = build_agent()?;
    let common = common_archive(&work, &tern)?;
    println!("| kernel | arch | result | seconds |\n|---|---|---|---|");
    let mut failed = 0;
    for kernel in &kernels {
        let started = Instant::now();
        let result = kernel.boot(&work, &common);
        let seconds = started.elapsed().as_secs();
        let result = result.unwrap_or_else(|e| format!("error: {e:#}"));
        // A refusal is tern's answer to a kernel it cannot serve, not a failure.
        if !result.starts_with("exact") && !result.starts_with("refused") {
            failed += 1;
        }
        println!("| {} | amd64 | {result} | {seconds} |", kernel.release);
    }
    if failed > 0 {
        bail!(
            "{failed} of {} kernels neither exact nor refused",
            kernels.len()
        );
    }
    Ok(())
}

/// apt with its own sources, lists and cache.
struct Apt {
    options: Vec<String>,
    lists: PathBuf,
}

impl Apt {
    fn new(dir: &Path) -> Result<Self> {
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
    fn refresh(&self) -> Result<()> {
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

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new(program);
        for option in &self.options {
            command.args(["-o", option]);
        }
        command.args(args);
        command
    }

    /// The first stanza `apt-cache show` gives for `package`, or None where apt has none.
    fn show(&self, package: &str) -> Result<Option<String>> {
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
fn kernel_packages(apt: &Apt, suite: &str) -> Result<Vec<String>> {
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

/// A kernel ready to boot: its image and the few modules the scenario needs.
struct Kernel {
    release: String,
    vmlinuz: PathBuf,
    modules: PathBuf,
}

impl Kernel {
    /// Downloads, extracts and trims a suite's kernel, or finds it done before.
    fn fetch(apt: &Apt, suite: &str, work: &Path) -> Result<Self> {
        let dir = work.join(suite);
        let done = dir.join("release");
        if let Ok(release) = fs::read_to_string(&done) {
            return Ok(Self {
                release: release.trim().to_owned(),
                vmlinuz: dir.join("vmlinuz"),
                modules: dir.join("modules.cpio"),
            });
        }
        apt.refresh()?;
        let packages = kernel_packages(apt, suite)?;
        eprintln!("test-kernels: {suite}: {}", packages.join(" "));
        let debs = work.join("debs");
        fs::create_dir_all(&debs)?;
        let tree = dir.join("tree");
        if tree.exists() {
            fs::remove_dir_all(&tree)?;
        }
        fs::create_dir_all(&tree)?;
        for package in &packages {
            let deb = match find_deb(&debs, package)? {
                Some(deb) => deb,
                None => {
                    let mut download = apt.command("apt-get", &["-q", "download", package]);
                    download.current_dir(&debs);
                    status(download)?;
                    find_deb(&debs, package)?
                        .with_context(|| format!("apt-get download left no {package} deb"))?
                }
            };
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
            vmlinuz: dir.join("vmlinuz"),
            modules: dir.join("modules.cpio"),
        })
    }

    /// Boots the kernel and compares; the row's result.
    fn boot(&self, work: &Path, common: &Path) -> Result<String> {
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
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "1024",
            "-M",
            "pc",
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", results.display()))
        .arg("-kernel")
        .arg(&self.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 rdinit=/init tern_interval={INTERVAL_S} tern_count={COUNT}"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let mut child = qemu.spawn().context("starting qemu-system-x86_64")?;
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
        Ok(compare(&Sections::parse(&text.replace('\r', ""))))
    }
}

fn find_deb(debs: &Path, package: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    Ok(fs::read_dir(debs)?.flatten().map(|e| e.path()).find(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
    }))
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

/// The part of every initramfs that does not depend on the kernel: busybox, init, tern,
/// the xtask as UDP helper, ip, ss, kmod, and their libraries.
fn common_archive(work: &Path, tern: &Path) -> Result<PathBuf> {
    let root = work.join("initramfs");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    for dir in [
        "bin", "sbin", "etc", "proc", "sys", "dev", "run", "tmp", "lib64", "var/lib",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    let busybox = Path::new("/bin/busybox");
    install(busybox, &root.join("bin/busybox"))?;
    let applets = Command::new(busybox)
        .arg("--list")
        .output()
        .context("running busybox --list")?;
    for applet in String::from_utf8_lossy(&applets.stdout).lines() {
        if applet == "busybox" {
            continue;
        }
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    let xtask = std::env::current_exe()?;
    let mut binaries = vec![(tern.to_path_buf(), "bin/tern"), (xtask, "bin/xtask")];
    binaries.extend(HOST_TOOLS.iter().map(|(f, t)| (PathBuf::from(f), *t)));
    for (from, to) in &binaries {
        let to = root.join(to);
        if to.exists() {
            fs::remove_file(&to)?;
        }
        install(from, &to)?;
        libraries(from, &root)?;
    }
    fs::write(root.join("init"), GUEST_INIT)?;
    set_mode(&root.join("init"), 0o755)?;
    // tern drops to `nobody` once attached.
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
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

/// Copies a file, following links, keeping its mode.
fn install(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to.parent().expect("a file in a folder"))?;
    fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    Ok(())
}

/// Copies the shared libraries `ldd` names for `binary` to the same paths under `root`.
fn libraries(binary: &Path, root: &Path) -> Result<()> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(Path::new);
        if let Some(path) = path {
            let to = root.join(path.strip_prefix("/")?);
            if !to.exists() {
                install(path, &to)?;
            }
        }
    }
    Ok(())
}

/// The guest's result channel, split at its `@@ NAME` lines.
struct Sections {
    sections: HashMap<String, String>,
}

impl Sections {
    fn parse(text: &str) -> Self {
        let mut sections = HashMap::new();
        let mut name = String::new();
        for line in text.lines() {
            if let Some(next) = line.strip_prefix("@@ ") {
                name = next.to_owned();
                sections.insert(name.clone(), String::new());
            } else if let Some(body) = sections.get_mut(&name) {
                body.push_str(line);
                body.push('\n');
            }
        }
        Self { sections }
    }

    fn get(&self, name: &str) -> &str {
        self.sections.get(name).map_or("", String::as_str)
    }

    /// tern's exit status, from the `exit N` section's name.
    fn exit(&self) -> Option<&str> {
        self.sections.keys().find_map(|k| k.strip_prefix("exit "))
    }

    fn has(&self, name: &str) -> bool {
        self.sections.contains_key(name)
    }
}

/// The row's result: exact, differs (with what), or refused (with tern's error line).
fn compare(s: &Sections) -> String {
    if !s.has("end") {
        return "incomplete: the guest stopped before its end (see console.log)".into();
    }
    let reports: Vec<Value> = s
        .get("reports")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if reports.is_empty() {
        let error = s
            .get("tern-stderr")
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        // tern names what it lacks and exits with 1; anything else is no refusal.
        return match s.exit() {
            Some("1") => format!("refused: {error}"),
            exit => format!("no reports, exit {}: {error}", exit.unwrap_or("unknown")),
        };
    }
    let mut differs = Vec::new();
    if reports.len() as u64 != COUNT {
        differs.push(format!("{} reports of {COUNT}", reports.len()));
    }
    let sent = snmp(s.get("snmp-after"), "Udp", "OutDatagrams")
        - snmp(s.get("snmp-before"), "Udp", "OutDatagrams");
    if sent != DATAGRAMS as i64 {
        differs.push(format!("scenario sent {sent} datagrams, not {DATAGRAMS}"));
    }
    let last = &reports[reports.len() - 1]["metrics"];
    let listening = ss_listening(s.get("ss-listening"));
    for (proto, key) in [
        ("tcp", "listening_tcp_ports"),
        ("udp", "listening_udp_ports"),
    ] {
        let tern: BTreeSet<u64> = last[key]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["port"].as_u64())
            .collect();
        let truth = listening.get(proto).cloned().unwrap_or_default();
        if tern != truth {
            differs.push(format!("{key} {tern:?} vs ss {truth:?}"));
        }
    }
    let tern: BTreeSet<(u64, String)> =
        last["tcp_connections"]["established_connections"]["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                Some((
                    c["local_port"].as_u64()?,
                    c["remote_addr"].as_str()?.to_owned(),
                ))
            })
            .collect();
    let truth = ss_established(s.get("ss-established"));
    if truth.len() != CONNECTIONS {
        differs.push(format!(
            "scenario: ss shows {} established connections, not {CONNECTIONS}",
            truth.len()
        ));
    }
    if tern != truth {
        differs.push(format!("established {tern:?} vs ss {truth:?}"));
    }
    let before = link_stats(s.get("link-before"));
    let after = link_stats(s.get("link-after"));
    for (key, truth_key) in [
        ("bytes_in", ("rx", "bytes")),
        ("bytes_out", ("tx", "bytes")),
        ("packets_in", ("rx", "packets")),
        ("packets_out", ("tx", "packets")),
    ] {
        let tern: u64 = reports
            .iter()
            .filter_map(|r| r["metrics"]["network_stats"][key].as_u64())
            .sum();
        let truth = after
            .get(&truth_key)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(&truth_key).copied().unwrap_or(0));
        if tern != truth {
            differs.push(format!("{key} {tern} vs ip {truth}"));
        }
    }
    if differs.is_empty() {
        "exact".into()
    } else {
        format!("differs: {}", differs.join("; "))
    }
}

/// A counter of /proc/net/snmp: a header line and a value line per protocol.
fn snmp(text: &str, proto: &str, name: &str) -> i64 {
    let prefix = format!("{proto}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Ports of `ss -H -tlnu` by protocol.
fn ss_listening(text: &str) -> HashMap<&str, BTreeSet<u64>> {
    let mut ports: HashMap<&str, BTreeSet<u64>> = HashMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let (Some(proto), Some(local)) = (fields.first(), fields.get(4))
            && let Some(port) = local.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
        {
            ports.entry(proto).or_default().insert(port);
        }
    }
    ports
}

/// (local port, remote address) of `ss -H -tn state established`.
fn ss_established(text: &str) -> BTreeSet<(u64, String)> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(2)?;
            let remote = fields.get(3)?;
            let port = local.rsplit_once(':')?.1.parse().ok()?;
            // A dual-stack listener's IPv4 peers, which tern reports as IPv4.
            let remote = match remote.strip_prefix("[::ffff:") {
                Some(mapped) => mapped.replacen("]:", ":", 1),
                None => (*remote).to_owned(),
            };
            Some((port, remote))
        })
        .collect()
}

/// rx/tx bytes/packets of `ip -j -s link show dev veth0`.
fn link_stats(text: &str) -> HashMap<(&'static str, &'static str), u64> {
    let mut stats = HashMap::new();
    let Ok(json) = serde_json::from_str::<Value>(text) else {
        return stats;
    };
    for dir in ["rx", "tx"] {
        for counter in ["bytes", "packets"] {
            if let Some(v) = json[0]["stats64"][dir][counter].as_u64() {
                stats.insert((dir, counter), v);
            }
        }
    }
    stats
}
