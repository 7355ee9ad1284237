//! The running process: the drop to the account `config` resolved, and what the process
//! may still do (the link child, the state directory, stop requests, systemd notifications).
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

use anyhow::{Result, bail};
use aya::util::KernelVersion;
use caps::{CapSet, Capability, CapsHashSet};
pub use drop::drop_to;

pub use crate::config::Account;
use crate::kernel::programs;

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
}
