//! The file systems the programs need: tracefs (tracepoint formats and ids) and a cgroup-v2
//! hierarchy (the root the UDP hooks attach to). Where the host has not mounted one (a
//! cgroup-v1 host, a fresh boot, `ip netns exec`, which mounts a sysfs of its own), tern
//! mounts it itself, in a mount namespace of its own: the host's mounts stay as they were,
//! and the mounts go away with tern.

use std::{ffi::CString, fs, path::Path, sync::OnceLock};

use anyhow::{Context, Result, bail};
use log::info;

/// Where tracefs is looked for, the first its usual place.
pub const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
/// Where tern mounts a cgroup-v2 hierarchy when the host has none.
const OWN_CGROUP2: &str = "/sys/fs/cgroup";

/// Makes tracefs visible at its usual place; an error says why it cannot be.
pub fn tracefs() -> Result<()> {
    if TRACEFS
        .iter()
        .any(|root| Path::new(root).join("events").is_dir())
    {
        return Ok(());
    }
    own_mount_namespace()?;
    mount("tracefs", TRACEFS[0], "tracefs")
        .context("tracefs is not mounted, and tern could not mount it")?;
    info!("mounted tracefs at {} for tern alone", TRACEFS[0]);
    Ok(())
}

/// The root of a cgroup-v2 hierarchy, mounted by tern when the host has none.
pub fn cgroup2_root() -> Result<String> {
    if let Some(root) = cgroup2_mount() {
        return Ok(root);
    }
    own_mount_namespace()?;
    mount("cgroup2", OWN_CGROUP2, "cgroup2")
        .context("no cgroup-v2 hierarchy is mounted, and tern could not mount one")?;
    info!("mounted a cgroup-v2 hierarchy at {OWN_CGROUP2} for tern alone");
    Ok(OWN_CGROUP2.to_owned())
}

/// Where the root of a cgroup-v2 hierarchy is mounted, from /proc/self/mountinfo.
fn cgroup2_mount() -> Option<String> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    // mountinfo: ID parent major:minor root mount-point options ... - fstype source options
    mounts.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        (fs.split(' ').next()? == "cgroup2" && mount.split(' ').nth(3)? == "/")
            .then(|| mount.split(' ').nth(4).map(str::to_owned))?
    })
}

/// Moves tern into a mount namespace of its own, once, with no propagation back to the
/// host, so what it mounts is seen by tern alone.
fn own_mount_namespace() -> Result<()> {
    static ENTERED: OnceLock<Result<(), String>> = OnceLock::new();
    ENTERED
        .get_or_init(|| {
            // SAFETY: unshare and mount take no pointer but the NUL-terminated "/" literal.
            let rc = unsafe {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    -1
                } else {
                    libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    )
                }
            };
            match rc {
                0 => Ok(()),
                _ => Err(format!(
                    "entering a mount namespace of tern's own (needs CAP_SYS_ADMIN): {}",
                    std::io::Error::last_os_error()
                )),
            }
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

fn mount(kind: &str, target: &str, source: &str) -> Result<()> {
    let (kind_c, target_c, source_c) = (
        CString::new(kind)?,
        CString::new(target)?,
        CString::new(source)?,
    );
    // SAFETY: three NUL-terminated strings that outlive the call, no data.
    let rc = unsafe {
        libc::mount(
            source_c.as_ptr(),
            target_c.as_ptr(),
            kind_c.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "mount -t {kind} {source} {target}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
