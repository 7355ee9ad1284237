//! `install` and `uninstall`: puts tern on a device as a hardened systemd service under a
//! name chosen at install (random by default), and takes it off again: the account, the files
//! `unit` lays out, and systemctl. Never touches the eBPF programs.

mod unit;

use std::{
    fs,
    io::Read,
    os::unix::fs::{PermissionsExt, chown},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};
use log::{info, warn};

use unit::{
    BIN, BIN_DIR, CONFIG, CONFIG_DIR, DeviceLayout, MANIFEST, UNIT, UNIT_DIR, state_dir, unit,
};

use crate::{config, kernel::pins, process::state_dir::MODE as STATE_DIR_MODE};

/// systemd creates it at boot: its presence means systemd manages this system.
const SYSTEMD_RUNNING: &str = "/run/systemd/system";

#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    /// Name of the service, its binary and directories, and of the account unless --user
    /// names one (default: random).
    #[arg(long)]
    pub name: Option<String>,
    /// Account tern runs as after start; created when it does not exist (default: NAME).
    #[arg(long)]
    pub user: Option<String>,
    /// AWS IoT Device Client configuration (JSON) to install.
    #[arg(long)]
    pub config: PathBuf,
    /// Install into this directory as the root of the device's file system; nothing is
    /// started.
    #[arg(long, default_value = "/", hide = true)]
    pub root: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct UninstallArgs {
    /// Name given at install (default: this binary's name).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, default_value = "/", hide = true)]
    pub root: PathBuf,
}

pub fn install(args: &InstallArgs) -> Result<()> {
    let name = match &args.name {
        Some(name) => name.clone(),
        None => random_name()?,
    };
    check_name(&name, "--name")?;
    let user = args.user.clone().unwrap_or_else(|| name.clone());
    check_name(&user, "--user")?;
    let layout = DeviceLayout {
        root: args.root.clone(),
        name: name.clone(),
    };
    ensure!(
        !layout.local(UNIT).exists(),
        "a service named {name} is already installed ({}): uninstall it or choose another --name",
        layout.local(UNIT).display()
    );
    config::check_config_key(&args.config, &args.root)?;

    let created_user = match account(&args.root, &user)? {
        Some(_) => false,
        None => {
            useradd(&args.root, &user)?;
            true
        }
    };
    let (uid, gid) = account(&args.root, &user)?
        .with_context(|| format!("user {user} was created but cannot be found"))?;

    directory(&layout.local(BIN_DIR), 0o755, 0, 0)?;
    let exe = std::env::current_exe().context("finding tern's own binary")?;
    fs::copy(&exe, layout.local(BIN))
        .with_context(|| format!("copying {} to {}", exe.display(), layout.device(BIN)))?;
    set_mode(&layout.local(BIN), 0o755)?;

    directory(&layout.local(CONFIG_DIR), 0o750, 0, gid)?;
    fs::copy(&args.config, layout.local(CONFIG))
        .with_context(|| format!("copying {}", args.config.display()))?;
    set_owner(&layout.local(CONFIG), 0, gid)?;
    set_mode(&layout.local(CONFIG), 0o640)?;
    fs::write(
        layout.local(MANIFEST),
        format!("user={user}\ncreated_user={created_user}\n"),
    )
    .context("writing the install record")?;
    set_mode(&layout.local(MANIFEST), 0o600)?;

    directory(&layout.local(&state_dir()), STATE_DIR_MODE, uid, gid)?;
    directory(&layout.local(UNIT_DIR), 0o755, 0, 0)?;
    fs::write(layout.local(UNIT), unit(&layout, &user)).context("writing the systemd unit")?;
    set_mode(&layout.local(UNIT), 0o644)?;
    info!(
        "installed {name}: {}, running as {user}",
        layout.device(UNIT)
    );

    if args.root != Path::new("/") {
        return Ok(());
    }
    if !systemd_running() {
        warn!(
            "wrote {} but did not start it: systemd is not running on this system \
             (no {SYSTEMD_RUNNING}); on the device run: systemctl enable --now {name}",
            layout.device(UNIT)
        );
        return Ok(());
    }
    systemctl(&["daemon-reload"])?;
    systemctl(&["enable", "--now", &format!("{name}.service")])?;
    info!("{name} is enabled and started");
    Ok(())
}

pub fn uninstall(args: &UninstallArgs) -> Result<()> {
    let name = args.name.clone().unwrap_or_else(config::program_name);
    check_name(&name, "--name")?;
    let layout = DeviceLayout {
        root: args.root.clone(),
        name: name.clone(),
    };
    let manifest = fs::read_to_string(layout.local(MANIFEST)).with_context(|| {
        format!(
            "no service named {name} was installed here ({} is missing): pass the name given \
             at install with --name",
            layout.device(MANIFEST)
        )
    })?;
    let field = |key: &str| {
        manifest
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let systemd = args.root == Path::new("/") && systemd_running();
    if systemd {
        systemctl(&["disable", "--now", &format!("{name}.service")])?;
    }
    remove(&layout.local(UNIT))?;
    for dir in [BIN_DIR, CONFIG_DIR, &state_dir()] {
        let path = layout.local(dir);
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    if args.root == Path::new("/") {
        // What a killed tern kept for a successor that will not come.
        let pins = pins::root_of(&name, Path::new(&layout.device(&state_dir())));
        if pins.exists() {
            fs::remove_dir_all(&pins).with_context(|| format!("removing {}", pins.display()))?;
        }
    }
    if let (Some(user), Some("true")) = (field("user"), field("created_user").as_deref()) {
        userdel(&args.root, &user)?;
    }
    if systemd {
        systemctl(&["daemon-reload"])?;
    }
    info!("uninstalled {name}");
    Ok(())
}

fn systemd_running() -> bool {
    Path::new(SYSTEMD_RUNNING).is_dir()
}

/// A name of 8 lowercase letters from the kernel's random source.
fn random_name() -> Result<String> {
    let mut bytes = [0u8; 8];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for a random service name")?;
    Ok(bytes.iter().map(|b| char::from(b'a' + b % 26)).collect())
}

fn check_name(name: &str, flag: &str) -> Result<()> {
    let valid = (2..=31).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    ensure!(
        valid,
        "{flag} {name:?} is not a usable name: 2 to 31 characters, a lowercase letter first, \
         then lowercase letters, digits, - or _"
    );
    Ok(())
}

/// uid and gid of `user` in the passwd file under `root`.
fn account(root: &Path, user: &str) -> Result<Option<(u32, u32)>> {
    let passwd = root.join("etc/passwd");
    let text =
        fs::read_to_string(&passwd).with_context(|| format!("reading {}", passwd.display()))?;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == user {
            let number = |s: &str| {
                s.parse::<u32>()
                    .with_context(|| format!("{}: bad entry for {user}", passwd.display()))
            };
            let (uid, gid) = (number(fields[2])?, number(fields[3])?);
            ensure!(
                uid != 0 && gid != 0,
                "user {user} is root or in group root: name an unprivileged user with --user"
            );
            return Ok(Some((uid, gid)));
        }
    }
    Ok(None)
}

fn useradd(root: &Path, user: &str) -> Result<()> {
    let mut command = Command::new("useradd");
    if root != Path::new("/") {
        command.arg("--prefix").arg(root);
    }
    command.args([
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        user,
    ]);
    run(command, &format!("creating user {user}"))
}

fn userdel(root: &Path, user: &str) -> Result<()> {
    let prefix = |command: &mut Command| {
        if root != Path::new("/") {
            command.arg("--prefix").arg(root);
        }
    };
    let mut command = Command::new("userdel");
    prefix(&mut command);
    command.arg(user);
    run(command, &format!("removing user {user}"))?;
    // userdel keeps the group when login.defs does not say otherwise.
    let groups = fs::read_to_string(root.join("etc/group")).unwrap_or_default();
    if groups.lines().any(|l| l.split(':').next() == Some(user)) {
        let mut command = Command::new("groupdel");
        prefix(&mut command);
        command.arg(user);
        run(command, &format!("removing group {user}"))?;
    }
    Ok(())
}

fn systemctl(args: &[&str]) -> Result<()> {
    let mut command = Command::new("systemctl");
    command.args(args);
    run(command, &format!("systemctl {}", args.join(" ")))
}

fn run(mut command: Command, what: &str) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("{what}: cannot run {:?}", command.get_program()))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn directory(path: &Path, mode: u32, uid: u32, gid: u32) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    set_owner(path, uid, gid)?;
    set_mode(path, mode)
}

fn set_owner(path: &Path, uid: u32, gid: u32) -> Result<()> {
    chown(path, Some(uid), Some(gid))
        .with_context(|| format!("changing owner of {}", path.display()))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("changing mode of {}", path.display()))
}

fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_names_are_valid_and_differ() {
        let (a, b) = (random_name().unwrap(), random_name().unwrap());
        check_name(&a, "--name").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn names_that_would_break_paths_or_units_are_refused() {
        for bad in ["", "a", "A1", "1a", "a/b", "a b", "../x", "a.service"] {
            let err = check_name(bad, "--name").unwrap_err();
            assert!(err.to_string().contains("--name"), "{err}");
        }
        check_name("edge-7", "--name").unwrap();
    }
}
