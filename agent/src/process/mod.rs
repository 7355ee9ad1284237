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
//! started before step 4 would keep root's powers.
//!
//! [`START`] is the one list of capabilities: what tern starts with (the preflight check, the
//! systemd unit's bounding set) and what each process keeps after the drop.

mod drop;
pub mod link_child;
pub mod notify;
mod seccomp;
pub mod state_dir;
pub mod stop;

use std::ffi::{CStr, CString};

use anyhow::{Context, Result, bail, ensure};
use aya::util::KernelVersion;
use caps::{CapSet, Capability, CapsHashSet};
pub use drop::drop_to;

use crate::{config, kernel::programs};

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
        if let Some(account) = Self::lookup(&config::program_name())? {
            return Ok(account);
        }
        Self::lookup(FALLBACK_USER)?.with_context(|| {
            format!(
                "neither {:?} nor {FALLBACK_USER:?} exists: pass --user",
                config::program_name()
            )
        })
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

/// One capability tern starts with, and which process keeps it after the drop.
pub struct Grant {
    pub cap: Capability,
    main: Keep,
    link_child: Keep,
}

/// When a process keeps a capability after the drop.
#[derive(Clone, Copy)]
enum Keep {
    Never,
    /// On kernels 5.8 to 5.18 with unprivileged BPF disabled every bpf() call needs CAP_BPF,
    /// reading maps included; from 5.19 on, the map fds tern holds are enough.
    BeforeLinux5_19,
    /// Attaching a loaded program to a new interface: a TCX link (6.6+) needs no capability,
    /// the kernel checked when the program was loaded (measured on 6.18: a process with no
    /// capability attaches); a netlink TC filter is a network-admin operation.
    WithoutTcx,
}

impl Keep {
    fn holds(self) -> bool {
        match self {
            Self::Never => false,
            Self::BeforeLinux5_19 => {
                KernelVersion::current().is_ok_and(|v| v < KernelVersion::new(5, 19, 0))
            }
            Self::WithoutTcx => !programs::tcx_available(),
        }
    }
}

/// What loading, attaching and dropping need (measured on 6.18), and nothing else, in the
/// order the systemd unit names them. Loading the TC programs needs CAP_PERFMON besides
/// CAP_BPF and CAP_NET_ADMIN (the verifier refuses them without it); the drop needs
/// CAP_SETUID, CAP_SETGID and CAP_SETPCAP (the bounding set).
pub const START: &[Grant] = &[
    grant(
        Capability::CAP_BPF,
        Keep::BeforeLinux5_19,
        Keep::BeforeLinux5_19,
    ),
    grant(Capability::CAP_PERFMON, Keep::Never, Keep::Never),
    grant(Capability::CAP_NET_ADMIN, Keep::Never, Keep::WithoutTcx),
    grant(Capability::CAP_SETUID, Keep::Never, Keep::Never),
    grant(Capability::CAP_SETGID, Keep::Never, Keep::Never),
    grant(Capability::CAP_SETPCAP, Keep::Never, Keep::Never),
];

const fn grant(cap: Capability, main: Keep, link_child: Keep) -> Grant {
    Grant {
        cap,
        main,
        link_child,
    }
}

/// The capabilities of [`START`] that `keep` says a process keeps on this kernel.
fn kept(keep: fn(&Grant) -> Keep) -> CapsHashSet {
    START
        .iter()
        .filter(|grant| keep(grant).holds())
        .map(|grant| grant.cap)
        .collect()
}

/// Fails, naming every capability tern starts with, unless this process holds them all.
pub fn check_start_capabilities() -> Result<()> {
    let held = |grant: &Grant| caps::has_cap(None, CapSet::Effective, grant.cap).unwrap_or(false);
    if !START.iter().all(held) {
        let names: Vec<String> = START.iter().map(|grant| grant.cap.to_string()).collect();
        bail!(
            "missing capabilities to load, attach and drop privileges ({}): start tern as root, \
             or from its systemd unit; nothing was attached",
            names.join(", ")
        );
    }
    Ok(())
}

/// Capabilities the main process keeps after the drop.
pub fn main_process_keeps() -> CapsHashSet {
    kept(|grant| grant.main)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_process_keeps_part_of_the_start_set_and_the_link_child_no_less() {
        let start: CapsHashSet = START.iter().map(|grant| grant.cap).collect();
        let (main, child) = (main_process_keeps(), link_child::child_keeps());
        assert!(main.is_subset(&child), "{main:?} {child:?}");
        assert!(child.is_subset(&start), "{child:?}");
    }

    #[test]
    fn an_unknown_user_is_named_in_the_error() {
        let err = Account::resolve(Some("tern-no-such-user")).unwrap_err();
        assert!(err.to_string().contains("\"tern-no-such-user\""), "{err}");
        assert!(err.to_string().contains("useradd"), "{err}");
    }
}
