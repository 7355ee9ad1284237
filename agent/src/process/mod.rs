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
//! 5. verify the drop (getting root back must fail) and stop if any step failed, then
//!    install the seccomp filter (`seccomp`);
//! 6. only then start threads, runtimes or network clients.
//!
//! Between 3 and 4 the main process closes the programs' descriptors, which reading the maps
//! does not need (`Programs::shed`).
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

use std::{
    ffi::{CStr, CString},
    fs,
};

use anyhow::{Context, Result, bail, ensure};
use aya::util::KernelVersion;
use caps::{CapSet, Capability, CapsHashSet};
pub use drop::drop_to;
use log::warn;

use crate::{config, kernel::programs};

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
                    "user {name:?} (--user) does not exist: create it \
                     (useradd --system {name}) or name another"
                )
            })?,
            None => {
                let name = config::program_name();
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
                config::program_name()
            ),
        }
        Ok(account)
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

/// Installs the main process's seccomp filter (see `seccomp`); after the drop, before any
/// thread starts.
pub fn confine_main() -> Result<()> {
    seccomp::confine(seccomp::Confined::Main)
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
        let err = Account::resolve(Some("tern-no-such-user"), false).unwrap_err();
        assert!(err.to_string().contains("\"tern-no-such-user\""), "{err}");
        assert!(err.to_string().contains("useradd"), "{err}");
    }
}
