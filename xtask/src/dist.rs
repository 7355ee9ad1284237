// Over 400 lines: building, packaging, signing and checking the artifacts share the
// targets, the version, the commit's time and the rustc wrapper; the check is their test.
//! `cargo xtask dist`: tern's release artifacts, built on this x86_64 machine for every edge
//! CPU tern supports: one static binary per target (musl, no run-time library, the eBPF
//! object inside, stripped), a .deb per architecture that installs it and starts nothing,
//! SHA256SUMS over them all and, given an OpenSSH key, a signature of SHA256SUMS.
//!
//! The builds are reproducible: the paths of the checkout and of the toolchains are
//! remapped in every rustc call (xtask wraps rustc for it: the eBPF object's BTF names its
//! source files, and aya-build sets that nested build's flags itself), the packages' times
//! are the commit's, and nothing else of the machine or the moment goes in. x86_64 and
//! aarch64 use Rust's own musl targets; armv7 has none installed here (its rust-std cannot be
//! downloaded), so the nightly toolchain builds its std from source and links against
//! Debian's armhf musl, with the cross gcc as driver.

use std::{
    env,
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use crate::{cmd, kernels::apt::Apt, root_dir, setup, status, target_dir};

/// A CPU tern is released for.
pub struct Target {
    /// The artifact's name: tern-VERSION-NAME-linux.
    pub name: &'static str,
    pub triple: &'static str,
    /// Debian's name, for the .deb.
    pub debian: &'static str,
    /// The C compiler for ring's C code, also the linker's driver.
    pub gcc: &'static str,
    /// Rust ships no std for it here: the nightly toolchain builds one.
    pub build_std: bool,
}

pub const X86_64: Target = Target {
    name: "x86_64",
    triple: "x86_64-unknown-linux-musl",
    debian: "amd64",
    gcc: "x86_64-linux-gnu-gcc",
    build_std: false,
};
pub const AARCH64: Target = Target {
    name: "aarch64",
    triple: "aarch64-unknown-linux-musl",
    debian: "arm64",
    gcc: "aarch64-linux-gnu-gcc",
    build_std: false,
};
pub const ARMV7: Target = Target {
    name: "armv7",
    triple: "armv7-unknown-linux-musleabihf",
    debian: "armhf",
    gcc: "arm-linux-gnueabihf-gcc",
    build_std: true,
};
pub const TARGETS: [&Target; 3] = [&X86_64, &AARCH64, &ARMV7];

/// Set for dist's builds, with xtask as RUSTC_WRAPPER: the flags (separated by 0x1f) that
/// xtask adds to every rustc call. Flags added there, unlike RUSTFLAGS, are not hashed into
/// cargo's metadata (and so into every symbol): paths of this checkout may be among them.
pub const WRAPPER_FLAGS: &str = "TERN_DIST_RUSTC_FLAGS";
/// The target triple of the build, and the flags (0x1f-separated) the wrapper adds to the
/// rustc calls for it alone: how armv7 links, naming files under this checkout.
const WRAPPER_TARGET: &str = "TERN_DIST_TARGET";
const WRAPPER_TARGET_FLAGS: &str = "TERN_DIST_TARGET_FLAGS";

/// Debian's musl for armv7 (crt objects, libc.a); its multiarch folder.
const ARMHF_MUSL: &str = "musl-dev";
const ARMHF_MUSL_DIR: &str = "usr/lib/arm-linux-musleabihf";
/// The cross gcc's own files for armhf: crtbegin/crtend, libgcc and its unwinder.
const ARMHF_GCC_DIR: &str = "/usr/lib/gcc-cross/arm-linux-gnueabihf";

const MAINTAINER: &str = "tern maintainers <tern@users.noreply.github.com>";

pub fn run(sign: Option<&Path>, out: Option<&Path>) -> Result<()> {
    let out = out.map_or_else(|| target_dir().join("dist"), Path::to_path_buf);
    if let Some(key) = sign {
        ensure!(
            key.is_file(),
            "--sign {}: no such key file (an OpenSSH private key, e.g. from ssh-keygen -t \
             ed25519)",
            key.display()
        );
    }
    setup::dist()?;
    let version = version()?;
    let epoch = source_date_epoch()?;
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("emptying {}", out.display()))?;
    }
    fs::create_dir_all(&out)?;
    let mut files = Vec::new();
    for target in TARGETS {
        let built = build(target, "tern")?;
        let binary = out.join(format!("tern-{version}-{}-linux", target.name));
        fs::copy(&built, &binary)?;
        check_static(&binary)?;
        files.push(binary);
        files.push(deb(target, &built, &version, &epoch, &out)?);
    }
    let sums = sha256sums(&out, &files)?;
    let signature = sign.map(|key| sign_file(key, &sums)).transpose()?;
    println!("| artifact | bytes |\n|---|---|");
    for file in files.iter().chain([&sums]).chain(&signature) {
        println!(
            "| {} | {} |",
            file.file_name().unwrap_or_default().to_string_lossy(),
            fs::metadata(file)?.len()
        );
    }
    eprintln!("dist: artifacts in {}", out.display());
    Ok(())
}

/// Builds `package` with the dist profile for `target` (in target/dist-build: its flags
/// differ from other builds'); the binary's path.
pub fn build(target: &Target, package: &str) -> Result<PathBuf> {
    let mut target_flags = Vec::new();
    let mut build = if target.build_std {
        target_flags.extend(armhf_link_flags()?);
        cmd(
            "rustup",
            &[
                "run",
                "nightly",
                "cargo",
                "build",
                "-Z",
                "build-std=std,panic_unwind",
            ],
        )
    } else {
        cmd("cargo", &["build"])
    };
    build.args([
        "--profile",
        "dist",
        "--locked",
        "--package",
        package,
        "--target",
        target.triple,
    ]);
    let variable = target.triple.to_uppercase().replace('-', "_");
    build
        .env(format!("CARGO_TARGET_{variable}_LINKER"), target.gcc)
        .env(WRAPPER_TARGET, target.triple)
        .env(WRAPPER_TARGET_FLAGS, target_flags.join("\x1f"))
        .env(
            format!("CC_{}", target.triple.replace('-', "_")),
            target.gcc,
        )
        .env("CARGO_TARGET_DIR", dist_build_dir())
        .env("RUSTC_WRAPPER", env::current_exe()?)
        .env(WRAPPER_FLAGS, remapped_paths()?.join("\x1f"))
        // The toolchain the target is built with, not the one that runs xtask.
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN");
    status(build)?;
    Ok(dist_build_dir()
        .join(target.triple)
        .join("dist")
        .join(package))
}

fn dist_build_dir() -> PathBuf {
    target_dir().join("dist-build")
}

/// xtask as cargo's rustc wrapper: runs the rustc it is given with its arguments and
/// `flags`, and exits as it did.
pub fn wrap_rustc(flags: &OsStr) -> Result<()> {
    let split = |flags: &OsStr| -> Vec<String> {
        flags
            .to_string_lossy()
            .split('\x1f')
            .filter(|f| !f.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut args: Vec<std::ffi::OsString> = env::args_os().skip(1).collect();
    ensure!(!args.is_empty(), "the rustc wrapper was given no rustc");
    let rustc = args.remove(0);
    let for_target = env::var_os(WRAPPER_TARGET).is_some_and(|triple| {
        args.windows(2)
            .any(|pair| pair[0] == "--target" && pair[1] == triple)
    });
    let mut rustc = Command::new(rustc);
    rustc.args(&args).args(split(flags));
    if for_target && let Some(target_flags) = env::var_os(WRAPPER_TARGET_FLAGS) {
        rustc.args(split(&target_flags));
    }
    let status = rustc.status().context("running rustc")?;
    std::process::exit(status.code().unwrap_or(1));
}

/// Paths of this machine that would otherwise be written into the binary (panic locations
/// in dependencies and std): the same on every machine once remapped.
fn remapped_paths() -> Result<Vec<String>> {
    let home = env::var_os("HOME").map(PathBuf::from);
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let rustup_home = env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".rustup")))
        .context("neither RUSTUP_HOME nor HOME is set")?;
    Ok(vec![
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
        format!("--remap-path-prefix={}=/rustup", rustup_home.display()),
        format!("--remap-path-prefix={}=/tern", root_dir().display()),
    ])
}

/// How the armv7 binary links: gcc as driver with a specs file of tern's that names
/// Debian's armhf musl (startup files, libc) and gcc's own libgcc, libgcc_eh standing in for
/// the libunwind Rust's std asks for.
fn armhf_link_flags() -> Result<Vec<String>> {
    let musl = armhf_musl()?;
    let gcc = fs::read_dir(ARMHF_GCC_DIR)
        .with_context(|| format!("{ARMHF_GCC_DIR} (gcc-arm-linux-gnueabihf)"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("libgcc_eh.a").is_file())
        .max()
        .with_context(|| format!("no libgcc_eh.a under {ARMHF_GCC_DIR}"))?;
    let dir = target_dir().join("dist-link").join("armhf");
    fs::create_dir_all(&dir)?;
    let unwind = dir.join("libunwind.a");
    if unwind.exists() {
        fs::remove_file(&unwind)?;
    }
    std::os::unix::fs::symlink(gcc.join("libgcc_eh.a"), &unwind)?;
    let (m, g, d) = (musl.display(), gcc.display(), dir.display());
    let specs = format!(
        "*startfile:\n{m}/crt1.o {m}/crti.o {g}/crtbeginT.o\n\n\
         *endfile:\n{g}/crtend.o {m}/crtn.o\n\n\
         *link_libgcc:\n-L{m} -L{d} -L{g}\n\n\
         *libgcc:\n{g}/libgcc.a {g}/libgcc_eh.a\n\n\
         *link:\n-nostdlib -static\n"
    );
    let file = dir.join("musl.specs");
    fs::write(&file, specs)?;
    Ok(vec![
        "-Clink-self-contained=no".into(),
        format!("-Clink-arg=-specs={}", file.display()),
    ])
}

/// Debian's armhf musl-dev, extracted once under target/kernels (the downloads' folder).
fn armhf_musl() -> Result<PathBuf> {
    let downloads = root_dir().join("target/kernels");
    let tree = downloads.join("musl-armhf");
    let lib = tree.join(ARMHF_MUSL_DIR);
    if lib.join("libc.a").is_file() {
        return Ok(lib);
    }
    let apt = Apt::new(&downloads.join("apt"))?;
    apt.refresh()?;
    let debs = downloads.join("debs");
    fs::create_dir_all(&debs)?;
    let deb = apt.deb(&debs, ARMHF_MUSL, "armhf")?;
    if tree.exists() {
        fs::remove_dir_all(&tree)?;
    }
    let mut extract = Command::new("dpkg-deb");
    extract.arg("-x").arg(&deb).arg(&tree);
    status(extract)?;
    ensure!(
        lib.join("libc.a").is_file(),
        "{} has no {ARMHF_MUSL_DIR}/libc.a",
        deb.display()
    );
    Ok(lib)
}

/// A static binary has no program interpreter and needs no shared library.
fn check_static(binary: &Path) -> Result<()> {
    let output = Command::new("readelf")
        .args(["-W", "-l", "-d"])
        .arg(binary)
        .output()
        .context("running readelf (binutils)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success() && text.contains("Entry point"),
        "readelf cannot read {}",
        binary.display()
    );
    if text.contains("Requesting program interpreter") || text.contains("(NEEDED)") {
        bail!("{} is not static:\n{text}", binary.display());
    }
    Ok(())
}

/// A .deb that puts the binary at /usr/lib/tern/tern, where it waits for `tern install`
/// (which copies it under the device's own name and starts that); it has no maintainer
/// scripts, so installing it starts nothing.
fn deb(target: &Target, binary: &Path, version: &str, epoch: &str, out: &Path) -> Result<PathBuf> {
    let stage = target_dir().join("dist-deb").join(target.debian);
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    let lib = stage.join("usr/lib/tern");
    let doc = stage.join("usr/share/doc/tern");
    let control = stage.join("DEBIAN");
    for dir in [&lib, &doc, &control] {
        fs::create_dir_all(dir)?;
    }
    fs::copy(binary, lib.join("tern"))?;
    fs::write(
        doc.join("copyright"),
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: tern\n\nFiles: *\nLicense: MIT or Apache-2.0\n",
    )?;
    let size_kib = fs::metadata(binary)?.len().div_ceil(1024);
    fs::write(
        control.join("control"),
        format!(
            "Package: tern\nVersion: {version}\nArchitecture: {}\nMaintainer: {MAINTAINER}\n\
             Installed-Size: {size_kib}\nSection: net\nPriority: optional\n\
             Description: AWS IoT Device Defender agent for Linux edge devices\n \
             tern counts connections, listening ports, packets and bytes with eBPF and \
             reports\n them to AWS IoT Device Defender over MQTT with mutual TLS. Installing \
             this\n package starts nothing: run /usr/lib/tern/tern install --config FILE.\n",
            target.debian
        ),
    )?;
    // Modes and times fixed, whatever this checkout's umask and clock.
    let mut files = Vec::new();
    collect(&stage, &mut files)?;
    for path in &files {
        let mode = if path.is_dir() || path == &lib.join("tern") {
            0o755
        } else {
            0o644
        };
        fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        let mut touch = Command::new("touch");
        touch
            .args(["--no-dereference", "--date", &format!("@{epoch}")])
            .arg(path);
        status(touch)?;
    }
    let deb = out.join(format!("tern_{version}_{}.deb", target.debian));
    let mut build = Command::new("dpkg-deb");
    build
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb)
        .env("SOURCE_DATE_EPOCH", epoch);
    status(build)?;
    Ok(deb)
}

fn collect(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
    found.push(dir.to_path_buf());
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, found)?;
        } else {
            found.push(path);
        }
    }
    Ok(())
}

/// SHA256SUMS in `out`, in the format `sha256sum -c` reads.
fn sha256sums(out: &Path, files: &[PathBuf]) -> Result<PathBuf> {
    let mut sum = Command::new("sha256sum");
    sum.current_dir(out);
    for file in files {
        sum.arg(file.file_name().context("an artifact without a name")?);
    }
    let output = sum.output().context("running sha256sum")?;
    ensure!(
        output.status.success(),
        "sha256sum: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let sums = out.join("SHA256SUMS");
    fs::write(&sums, output.stdout)?;
    Ok(sums)
}

/// SHA256SUMS.sig: an OpenSSH signature (namespace "file") of `sums` with `key`.
fn sign_file(key: &Path, sums: &Path) -> Result<PathBuf> {
    let mut sign = Command::new("ssh-keygen");
    sign.args(["-q", "-Y", "sign", "-n", "file", "-f"])
        .arg(key)
        .arg(sums);
    status(sign)?;
    let mut signature = sums.as_os_str().to_owned();
    signature.push(".sig");
    Ok(PathBuf::from(signature))
}

/// The workspace's version, from Cargo.toml.
fn version() -> Result<String> {
    let manifest = fs::read_to_string(root_dir().join("Cargo.toml"))?;
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .map(str::to_owned)
        .context("no version = \"...\" in the workspace's Cargo.toml")
}

/// The time the packages carry: the commit's, so two builds of it agree.
fn source_date_epoch() -> Result<String> {
    if let Ok(epoch) = env::var("SOURCE_DATE_EPOCH") {
        return Ok(epoch);
    }
    let output = Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(root_dir())
        .output()
        .context("running git")?;
    let epoch = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    ensure!(
        output.status.success() && epoch.parse::<u64>().is_ok(),
        "git log gave no commit time; set SOURCE_DATE_EPOCH"
    );
    Ok(epoch)
}

/// The largest a release binary may be (the goal for edge devices' storage).
const MAX_BINARY_BYTES: u64 = 6 * 1024 * 1024;

/// `cargo xtask test`'s check of the artifacts: built and signed with a throwaway key, the
/// sums and the signature verified (and a tampered SHA256SUMS refused), each binary static
/// and under MAX_BINARY_BYTES, each .deb holding that binary and nothing that runs at
/// install, none carrying the terminal view (`tern watch`), and, where the checkout has no
/// uncommitted change, a second build from a clone at another path giving the same bytes.
pub fn check() -> Result<()> {
    let work = target_dir().join("dist-check");
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    fs::create_dir_all(&work)?;
    let key = work.join("release-key");
    let mut keygen = Command::new("ssh-keygen");
    keygen
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "tern-test", "-f"])
        .arg(&key);
    status(keygen)?;
    let out = target_dir().join("dist");
    run(Some(&key), Some(&out))?;
    let mut sums = Command::new("sha256sum");
    sums.args(["--quiet", "-c", "SHA256SUMS"]).current_dir(&out);
    status(sums)?;
    let public = fs::read_to_string(key.with_extension("pub"))?;
    let signers = work.join("allowed_signers");
    fs::write(&signers, format!("tern-test {public}"))?;
    let verify = |sums: &Path| -> Result<bool> {
        let file = fs::File::open(sums)?;
        Ok(Command::new("ssh-keygen")
            .args(["-Y", "verify", "-I", "tern-test", "-n", "file", "-f"])
            .arg(&signers)
            .arg("-s")
            .arg(out.join("SHA256SUMS.sig"))
            .stdin(file)
            .output()?
            .status
            .success())
    };
    ensure!(
        verify(&out.join("SHA256SUMS"))?,
        "the signature of SHA256SUMS does not verify"
    );
    let tampered = work.join("SHA256SUMS");
    let mut text = fs::read_to_string(out.join("SHA256SUMS"))?;
    text.replace_range(0..1, if text.starts_with('0') { "1" } else { "0" });
    fs::write(&tampered, text)?;
    ensure!(
        !verify(&tampered)?,
        "a tampered SHA256SUMS verifies against the signature"
    );
    let version = version()?;
    for target in TARGETS {
        let binary = out.join(format!("tern-{version}-{}-linux", target.name));
        let bytes = fs::metadata(&binary)?.len();
        ensure!(
            bytes < MAX_BINARY_BYTES,
            "{} is {bytes} bytes, over the {MAX_BINARY_BYTES} a release binary may have",
            binary.display()
        );
        check_deb(
            &out.join(format!("tern_{version}_{}.deb", target.debian)),
            target,
            &binary,
            &work,
        )?;
        // Every crate leaves its name in the binary's panic locations.
        let text = fs::read(&binary)?;
        ensure!(
            !text.windows(b"ratatui".len()).any(|w| w == b"ratatui"),
            "{} carries the terminal view's library: the release build must leave the watch \
             feature out",
            binary.display()
        );
    }
    let native = out.join(format!("tern-{version}-{}-linux", X86_64.name));
    let refused = Command::new(&native).arg("watch").output()?;
    let said = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && said.contains("built without tern watch"),
        "{} watch should refuse, naming the build that has it; it said: {said}",
        native.display()
    );
    reproduced(&out, &work)
}

/// The .deb's architecture, its one file that runs being the release binary, and no
/// maintainer script.
fn check_deb(deb: &Path, target: &Target, binary: &Path, work: &Path) -> Result<()> {
    let output = |args: &[&str]| -> Result<String> {
        let out = Command::new("dpkg-deb").args(args).arg(deb).output()?;
        ensure!(
            out.status.success(),
            "dpkg-deb {} {}: {}",
            args.join(" "),
            deb.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let arch = output(&["-f"])?;
    ensure!(
        arch.lines()
            .any(|l| l == format!("Architecture: {}", target.debian)),
        "{}: not for {}:\n{arch}",
        deb.display(),
        target.debian
    );
    let tree = work.join(target.debian);
    let mut extract = Command::new("dpkg-deb");
    extract.arg("-R").arg(deb).arg(&tree);
    status(extract)?;
    let scripts: Vec<String> = fs::read_dir(tree.join("DEBIAN"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "control")
        .collect();
    ensure!(
        scripts.is_empty(),
        "{} has maintainer files beyond control: {scripts:?}",
        deb.display()
    );
    ensure!(
        fs::read(tree.join("usr/lib/tern/tern"))? == fs::read(binary)?,
        "{}'s usr/lib/tern/tern is not {}",
        deb.display(),
        binary.display()
    );
    Ok(())
}

/// A second dist from a clone of the commit at another path must give SHA256SUMS byte for
/// byte. Skipped, and said so, where the checkout has uncommitted changes: the clone could
/// not have them.
fn reproduced(out: &Path, work: &Path) -> Result<()> {
    let changes = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(root_dir())
        .output()
        .context("running git")?;
    if !changes.stdout.is_empty() {
        eprintln!(
            "dist: the reproducibility check needs a checkout without uncommitted changes; \
             skipped"
        );
        return Ok(());
    }
    let clone = work.join("clone");
    let mut git = Command::new("git");
    git.args(["clone", "--quiet", "--no-hardlinks"])
        .arg(root_dir())
        .arg(&clone);
    status(git)?;
    // The clone shares the downloads (armhf's musl) but builds everything else itself.
    fs::create_dir_all(clone.join("target"))?;
    std::os::unix::fs::symlink(
        root_dir().join("target/kernels"),
        clone.join("target/kernels"),
    )?;
    let second = work.join("second");
    let mut dist = Command::new("cargo");
    dist.args(["xtask", "dist", "--out"])
        .arg(&second)
        .current_dir(&clone)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove(WRAPPER_FLAGS);
    status(dist)?;
    let first = fs::read_to_string(out.join("SHA256SUMS"))?;
    let again = fs::read_to_string(second.join("SHA256SUMS"))?;
    fs::remove_dir_all(&clone)?;
    ensure!(
        first == again,
        "a second build from {} differs:\nfirst:\n{first}\nsecond:\n{again}",
        clone.display()
    );
    eprintln!("dist: a second build from another path gave the same bytes");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_with_an_interpreter_is_not_static() {
        let err = check_static(&env::current_exe().unwrap()).unwrap_err();
        assert!(err.to_string().contains("is not static"), "{err:#}");
    }

    #[test]
    fn the_version_is_the_workspaces() {
        let version = version().unwrap();
        assert_eq!(version.split('.').count(), 3, "{version}");
    }
}
