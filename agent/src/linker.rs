//! The link child: a process forked before the privilege drop whose only job is to attach
//! tern's programs to interfaces that appear later. On kernels without TCX attaching needs
//! CAP_NET_ADMIN, which the main process (the one that talks to the network) must not keep.
//!
//! The child runs as the agent user with no_new_privs, keeps only what [`child_keeps`] names, reads
//! nothing but the kernel's rtnetlink link messages, opens no other socket or file, and
//! dies with the main process (PR_SET_PDEATHSIG), detaching what it attached.

use std::os::fd::AsRawFd;

use anyhow::{Result, ensure};
use caps::{Capability, CapsHashSet};
use log::{error, info};

use crate::{
    interfaces::LinkWatch,
    privilege::{self, Account},
    probes::{self, NewInterfaces, Probes},
    signals,
};

/// What attaching needs once the programs are loaded: a TCX link (6.6+) needs no capability,
/// the kernel checked when the program was loaded (measured on 6.18: a process with no
/// capability attaches); a netlink TC filter is a network-admin operation.
pub fn child_keeps() -> CapsHashSet {
    let mut keep = privilege::main_process_keeps();
    if !probes::tcx_available() {
        keep.insert(Capability::CAP_NET_ADMIN);
    }
    keep
}

pub enum Fork {
    /// In the child: call [`serve`].
    Child,
    /// In the parent, with the child's pid.
    Parent(libc::pid_t),
}

/// Forks. Must be called while the process has one thread, so the child is a full copy.
pub fn fork() -> Result<Fork> {
    // SAFETY: the process is single-threaded (the drop that follows checks it too), so the
    // child can go on running ordinary Rust code.
    let pid = unsafe { libc::fork() };
    ensure!(
        pid >= 0,
        "starting the link child: {}",
        std::io::Error::last_os_error()
    );
    Ok(if pid == 0 {
        Fork::Child
    } else {
        Fork::Parent(pid)
    })
}

/// The child's life: drop to `account` keeping [`child_keeps`], then attach to every new
/// interface `watch` announces. `parent` is the main process's pid.
pub fn serve(mut probes: Probes, mut watch: LinkWatch, account: &Account, parent: u32) -> ! {
    let keep = child_keeps();
    if let Err(err) = privilege::drop_to(account, &keep) {
        error!("link child: {err:#}; interfaces added from now on are not counted");
        std::process::exit(1);
    }
    // After the drop: a credential change clears the parent-death signal. SIGTERM, so that
    // the child removes its netlink filters (older kernels) before it goes.
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) };
    // The parent may have died before the line above took effect.
    if rc != 0 || std::os::unix::process::parent_id() != parent {
        std::process::exit(1);
    }
    probes.set_new_interfaces(NewInterfaces::Attach);
    info!(
        "link child ready, holding {}",
        match keep.is_empty() {
            true => "no capability".to_owned(),
            false => names(&keep),
        }
    );
    loop {
        let mut poll = libc::pollfd {
            fd: watch.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut poll, 1, -1) };
        if signals::stop_requested() {
            // Dropping the programs detaches every link they hold; exit() would skip it.
            drop(probes);
            std::process::exit(0);
        }
        match watch.changes() {
            Ok(events) => events.into_iter().for_each(|e| probes.apply(e)),
            Err(err) => error!("link child: reading link changes: {err:#}"),
        }
    }
}

fn names(set: &CapsHashSet) -> String {
    let mut names: Vec<String> = set.iter().map(ToString::to_string).collect();
    names.sort();
    names.join(" ")
}

/// Whether the child `pid` is still running; reaps it when it is not.
pub fn alive(pid: libc::pid_t) -> bool {
    let mut status = 0;
    // SAFETY: waitpid on our own child with a valid status pointer.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) == 0 }
}
