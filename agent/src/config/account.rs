//! The account tern runs as once the programs are attached: the one named, else the one
//! `tern install` created. Resolved and checked with the rest of the configuration, so that
//! `check-config` refuses what `run` would: an unknown user, root, or one other processes
//! share (unless accepted).

use std::{
    ffi::{CStr, CString},
    fs::{self, Metadata},
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::Path,
};

use anyhow::{Context, Result, bail, ensure};
use log::warn;

/// The kernel's overflow uid: who an unmapped user is, and `nobody` on every distribution.
const OVERFLOW_UID: &str = "/proc/sys/kernel/overflowuid";
/// At most this many processes are looked at for one already running as the account.
const PROCESSES_LOOKED_AT: usize = 1_000_000;

/// The unprivileged account tern switches to.
#[derive(Clone, Debug)]
pub struct Account {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

impl Account {
    /// `requested`, else the account `tern install` created (named like the installed
    /// binary); it must exist. One that other processes share is refused unless
    /// `shared_ok`: they could signal tern's processes and write its state directory.
    pub fn resolve(requested: Option<&str>, shared_ok: bool) -> Result<Self> {
        let account = match requested {
            Some(name) => Self::lookup(name)?.with_context(|| {
                format!(
                    "user {name:?} (--user, tern.user) does not exist: create it \
                     (useradd --system {name}) or name another"
                )
            })?,
            None => {
                let name = super::program_name();
                Self::lookup(&name)?.with_context(|| {
                    format!(
                        "no user {name:?} to run as: `{name} install` creates it with the \
                         service; or create it (useradd --system --no-create-home \
                         --shell /usr/sbin/nologin {name}), or name one with --user"
                    )
                })?
            }
        };
        match (account.shared_by(), shared_ok) {
            (None, _) => {}
            (Some(why), true) => warn!(
                "user {:?} is shared ({why}): its other processes can signal tern's processes \
                 and write its state directory (accepted with --shared-user)",
                account.name
            ),
            (Some(why), false) => bail!(
                "user {:?} is shared: {why}; any process running as it could signal tern's \
                 processes or write its state directory. Give tern a user of its own \
                 (`{} install` creates one), or accept this with --shared-user",
                account.name,
                super::program_name()
            ),
        }
        Ok(account)
    }

    /// Why this account could not read the file `path`, as the modes of the file and of the
    /// directories above it say (after the drop it has no supplementary group and no
    /// capability); None when it could, or when an access control list decides.
    pub fn cannot_read(&self, path: &Path) -> Option<String> {
        let full = fs::canonicalize(path).ok()?;
        let mut above: Vec<&Path> = full.ancestors().skip(1).collect();
        above.reverse();
        for dir in above {
            let meta = fs::metadata(dir).ok()?;
            if !has_acl(dir) && !self.may(&meta, 0o1) {
                return Some(format!(
                    "user {:?} cannot enter {} ({})",
                    self.name,
                    dir.display(),
                    mode(&meta)
                ));
            }
        }
        let meta = fs::metadata(&full).ok()?;
        (!has_acl(&full) && !self.may(&meta, 0o4))
            .then(|| format!("user {:?} cannot read it ({})", self.name, mode(&meta)))
    }

    /// Whether the mode of `meta` grants this account the permission `bit` (4 read, 1 search):
    /// the owner's bits for its owner, the group's for its group, the others' for the rest.
    fn may(&self, meta: &Metadata, bit: u32) -> bool {
        let shift = if meta.uid() == self.uid {
            6
        } else if meta.gid() == self.gid {
            3
        } else {
            0
        };
        (meta.mode() >> shift) & bit != 0
    }

    /// Why other processes share this account, if they do.
    fn shared_by(&self) -> Option<String> {
        let overflow = fs::read_to_string(OVERFLOW_UID)
            .ok()
            .and_then(|text| text.trim().parse::<libc::uid_t>().ok());
        if self.name == "nobody" || overflow == Some(self.uid) {
            return Some("it is the fallback account of the kernel and of other daemons".into());
        }
        let me = std::process::id();
        let entries = fs::read_dir("/proc").ok()?;
        entries
            .flatten()
            .take(PROCESSES_LOOKED_AT)
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| *pid != me)
            .find(|pid| runs_as(*pid, self.uid))
            .map(|pid| format!("process {pid} runs as it"))
    }
    fn lookup(name: &str) -> Result<Option<Self>> {
        let c_name = CString::new(name).context("a user name cannot contain a NUL byte")?;
        // SAFETY: passwd is plain data (integers and pointers); all zeros is a valid value.
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

fn mode(meta: &Metadata) -> String {
    format!(
        "mode {:03o}, owner uid {} gid {}",
        meta.mode() & 0o777,
        meta.uid(),
        meta.gid()
    )
}

/// Whether `path` has an access control list, which grants what its mode does not show.
fn has_acl(path: &Path) -> bool {
    let Ok(path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: two NUL-terminated strings; a null buffer of size 0 asks for the size only.
    let size = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    size >= 0
}

/// Whether process `pid` has `uid` as its real, effective, saved or filesystem uid.
fn runs_as(pid: u32, uid: libc::uid_t) -> bool {
    // procfs: a process's own status, at most a few kilobytes.
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .is_some_and(|uids| uids.split_whitespace().any(|u| u.parse() == Ok(uid)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_user_is_named_in_the_error() {
        let err = Account::resolve(Some("tern-no-such-user"), false).unwrap_err();
        assert!(err.to_string().contains("\"tern-no-such-user\""), "{err}");
        assert!(err.to_string().contains("useradd"), "{err}");
    }
}
