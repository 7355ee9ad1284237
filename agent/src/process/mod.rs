//! The running process: who tern runs as after start, the drop that gets it there, and
//! what the process may still do (the link child, the state directory, stop requests,
//! systemd notifications).
//!
//! Ordering contract, followed by `agent` and by the link child:
//! 1. open every handle tern will need (rtnetlink sockets, files, the state directory);
//! 2. load and attach the eBPF programs, and take their map fds;
//! 3. fork the link child, if interfaces added later are to be counted;
//! 4. drop, on the main thread while it is the only thread: no_new_privs, ambient and
//!    bounding sets cleared, supplementary groups emptied, gid and uid switched, every
//!    capability set emptied except the few the process must keep;
//! 5. verify the drop (getting root back must fail) and stop if any step failed;
//! 6. only then start threads, runtimes or network clients.
//!
//! Capabilities and no_new_privs are per thread and inherited by new threads, so a thread
//! started before step 4 would keep root's powers. Also checks the mode of private key files.

pub mod link_child;
pub mod notify;
pub mod state_dir;
pub mod stop;

use std::{
    collections::HashSet,
    ffi::{CStr, CString},
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
};

use anyhow::{Context, Result, bail, ensure};
use aya::util::KernelVersion;
use caps::{CapSet, Capability, CapsHashSet};

/// The account used when the default one (named after the installed binary) does not exist.
const FALLBACK_USER: &str = "nobody";

/// The unprivileged account tern switches to.
#[derive(Clone, Debug)]
pub struct Account {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

impl Account {
    /// `requested` must exist. Without it, the account `tern install` created (named like the
    /// installed binary), or `nobody` where there is none.
    pub fn resolve(requested: Option<&str>) -> Result<Self> {
        if let Some(name) = requested {
            return Self::lookup(name)?.with_context(|| {
                format!(
                    "user {name:?} (--user) does not exist: create it \
                     (useradd --system {name}) or name another"
                )
            });
        }
        if let Some(account) = Self::lookup(&program_name())? {
            return Ok(account);
        }
        Self::lookup(FALLBACK_USER)?.with_context(|| {
            format!(
                "neither {:?} nor {FALLBACK_USER:?} exists: pass --user",
                program_name()
            )
        })
    }

    fn lookup(name: &str) -> Result<Option<Self>> {
        let c_name = CString::new(name).context("a user name cannot contain a NUL byte")?;
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; buf outlives the use of entry.
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut entry,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        if rc != 0 {
            bail!(
                "looking up user {name:?}: {}",
                std::io::Error::from_raw_os_error(rc)
            );
        }
        if found.is_null() {
            return Ok(None);
        }
        // SAFETY: getpwnam_r filled entry; pw_name points into buf, still alive.
        let name = unsafe { CStr::from_ptr(entry.pw_name) }
            .to_string_lossy()
            .into_owned();
        ensure!(
            entry.pw_uid != 0 && entry.pw_gid != 0,
            "user {name:?} is root or in group root: name an unprivileged user with --user"
        );
        Ok(Some(Self {
            name,
            uid: entry.pw_uid,
            gid: entry.pw_gid,
        }))
    }
}

/// The name tern runs under: its binary's file name, which `tern install` chooses.
pub fn program_name() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .map(Path::new)
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tern".to_owned())
}

/// Capabilities the main process keeps after the drop. On kernels 5.8 to 5.18 with
/// unprivileged BPF disabled every bpf() call needs CAP_BPF, reading maps included; from
/// 5.19 on, the map fds tern holds are enough.
pub fn main_process_keeps() -> CapsHashSet {
    let needs_bpf = KernelVersion::current().is_ok_and(|v| v < KernelVersion::new(5, 19, 0));
    if needs_bpf {
        HashSet::from([Capability::CAP_BPF])
    } else {
        HashSet::new()
    }
}

/// Switches this process to `account`, keeping only `keep`, then verifies the result.
/// Must run on the main thread while no other thread exists.
pub fn drop_to(account: &Account, keep: &CapsHashSet) -> Result<()> {
    let threads = fs::read_dir("/proc/self/task").map_or(0, Iterator::count);
    ensure!(
        threads == 1,
        "internal error: {threads} threads exist before the privilege drop; \
         they would keep root's capabilities"
    );
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    ensure!(rc == 0, "setting no_new_privs: {}", last_error());
    caps::clear(None, CapSet::Ambient)
        .map_err(|e| anyhow::anyhow!("clearing ambient capabilities: {e}"))?;
    // Dropping from the bounding set needs CAP_SETPCAP, so it comes before the uid switch.
    for cap in caps::all().difference(keep) {
        if caps::has_cap(None, CapSet::Bounding, *cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, *cap)
                .map_err(|e| anyhow::anyhow!("dropping {cap} from the bounding set: {e}"))?;
        }
    }
    if !keep.is_empty() {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
        ensure!(rc == 0, "setting keep-capabilities: {}", last_error());
    }
    // SAFETY: plain system calls on integers; setgroups with an empty list.
    unsafe {
        ensure!(
            libc::setgroups(0, std::ptr::null()) == 0,
            "clearing supplementary groups: {}",
            last_error()
        );
        ensure!(
            libc::setresgid(account.gid, account.gid, account.gid) == 0,
            "switching to group {}: {}",
            account.gid,
            last_error()
        );
        ensure!(
            libc::setresuid(account.uid, account.uid, account.uid) == 0,
            "switching to user {} ({}): {}",
            account.name,
            account.uid,
            last_error()
        );
    }
    // Effective must shrink before permitted can.
    for (set, value) in [
        (CapSet::Inheritable, &HashSet::new()),
        (CapSet::Effective, keep),
        (CapSet::Permitted, keep),
    ] {
        caps::set(None, set, value).map_err(|e| anyhow::anyhow!("setting the {set:?} set: {e}"))?;
    }
    verify(account, keep)
}

/// Checks the drop from the kernel's side and that root cannot be regained.
fn verify(account: &Account, keep: &CapsHashSet) -> Result<()> {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: pointers to three live integers.
    unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
    ensure!(
        [r, e, s] == [account.uid; 3],
        "the uid switch did not hold: uids {r} {e} {s}"
    );
    // SAFETY: as above.
    unsafe { libc::getresgid(&mut r, &mut e, &mut s) };
    ensure!(
        [r, e, s] == [account.gid; 3],
        "the gid switch did not hold: gids {r} {e} {s}"
    );
    // SAFETY: asking for the group count only.
    let groups = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    ensure!(groups == 0, "{groups} supplementary groups remain");
    for set in [
        CapSet::Effective,
        CapSet::Permitted,
        CapSet::Inheritable,
        CapSet::Ambient,
        CapSet::Bounding,
    ] {
        let held = caps::read(None, set).map_err(|e| anyhow::anyhow!("reading {set:?}: {e}"))?;
        let expected = if matches!(set, CapSet::Inheritable | CapSet::Ambient) {
            HashSet::new()
        } else {
            keep.clone()
        };
        ensure!(
            held == expected,
            "the {set:?} capability set still holds {held:?}"
        );
    }
    // SAFETY: prctl with integer arguments only.
    let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
    ensure!(nnp == 1, "no_new_privs is not set");
    // SAFETY: attempts to regain root; success is the failure being checked for.
    let regained = unsafe { libc::setresuid(0, 0, 0) == 0 || libc::setresgid(0, 0, 0) == 0 };
    ensure!(!regained, "root could be regained after the drop");
    Ok(())
}

/// Checks the private key an AWS IoT Device Client configuration names in its "key" field.
/// Paths in the file are the device's; `root` is where that file system is mounted (`/` on
/// the device itself).
pub fn check_config_key(config: &Path, root: &Path) -> Result<()> {
    let text = fs::read_to_string(config)
        .with_context(|| format!("reading the configuration {}", config.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "the configuration {} is not valid JSON: fix or regenerate it",
            config.display()
        )
    })?;
    ensure!(
        json.is_object(),
        "the configuration {} is not a JSON object",
        config.display()
    );
    match json.get("key").and_then(serde_json::Value::as_str) {
        Some(key) => check_private_key(&root.join(key.trim_start_matches('/'))),
        None => Ok(()),
    }
}

/// Refuses a private key that its group or others can read or write: it would let any local
/// account impersonate the device.
pub fn check_private_key(path: &Path) -> Result<()> {
    let meta = fs::metadata(path)
        .with_context(|| format!("reading the private key {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "the private key {} has mode {mode:03o}: group and others must have no access; \
             run chmod 600 {}",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

fn last_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_private_key_open_to_group_or_others_is_refused() {
        let dir = std::env::temp_dir().join(format!("tern-key-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let key = dir.join("device.key");
        fs::write(&key, "key").unwrap();
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false)] {
            fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
            let result = check_private_key(&key);
            assert_eq!(result.is_ok(), ok, "mode {mode:o}: {result:?}");
            if let Err(err) = result {
                assert!(err.to_string().contains("chmod 600"), "{err}");
            }
        }
        assert!(check_private_key(&dir.join("missing.key")).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unknown_user_is_named_in_the_error() {
        let err = Account::resolve(Some("tern-no-such-user")).unwrap_err();
        assert!(err.to_string().contains("\"tern-no-such-user\""), "{err}");
        assert!(err.to_string().contains("useradd"), "{err}");
    }
}
