//! The link child: a process forked before the privilege drop whose only job is to attach
//! tern's programs to interfaces that appear later. On kernels without TCX attaching needs
//! CAP_NET_ADMIN, which the main process (the one that talks to the network) must not keep.
//!
//! The child runs as the agent user with no_new_privs, keeps only what [`child_keeps`] names,
//! under a seccomp filter that allows only the system calls it makes and no network socket;
//! it reads nothing but the kernel's rtnetlink link messages, opens no file, and
//! ends with the main process: asked by it ([`stop`]), or on its death (PR_SET_PDEATHSIG,
//! `kill -9` included). Before it goes it detaches everything tern attached, before the fork
//! and since, and removes the clsact qdiscs tern added: on kernels without TCX, netlink
//! filters outlive their process, and the child is the one that keeps CAP_NET_ADMIN.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use caps::CapsHashSet;
use log::{error, info};

use super::{Account, seccomp, stop};
use crate::{
    host::links::LinkWatch,
    kernel::programs::{NewInterfaces, Programs},
};

/// The longest a stop request can wait to be seen, when it arrives while the child is
/// applying link changes.
const STOP_CHECK: Duration = Duration::from_secs(1);
/// How long the main process waits for the child to release the interfaces.
const RELEASE_LIMIT: Duration = Duration::from_secs(5);

/// What the child keeps: see [`super::START`] (attaching to new interfaces).
pub fn child_keeps() -> CapsHashSet {
    super::kept(|grant| grant.link_child)
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
pub fn serve(mut programs: Programs, mut watch: LinkWatch, account: &Account, parent: u32) -> ! {
    let keep = child_keeps();
    if let Err(err) = super::drop_to(account, &keep) {
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
    if let Err(err) = seccomp::confine() {
        error!("link child: {err:#}; interfaces added from now on are not counted");
        std::process::exit(1);
    }
    programs.set_new_interfaces(NewInterfaces::Attach);
    info!(
        "link child ready, holding {}",
        match keep.is_empty() {
            true => "no capability".to_owned(),
            false => names(&keep),
        }
    );
    loop {
        if stop::stop_requested() || std::os::unix::process::parent_id() != parent {
            // Dropping the programs releases every interface; exit() would skip it.
            drop(programs);
            std::process::exit(0);
        }
        // A stop that lands between the check above and the poll does not interrupt it: the
        // bound makes the child see it within that time.
        watch.wait(Some(STOP_CHECK));
        match watch.changes() {
            Ok(events) => events.into_iter().for_each(|e| programs.apply(e)),
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

/// Asks the child `pid` to release the interfaces and waits until it has exited, so that no
/// filter of tern's outlives the main process.
pub fn stop(pid: libc::pid_t) {
    // SAFETY: kill with a pid this process forked and has not reaped.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + RELEASE_LIMIT;
    while alive(pid) {
        if Instant::now() > deadline {
            error!(
                "the link child did not exit within {} s; tern's TC filters may stay \
                 attached until its next start",
                RELEASE_LIMIT.as_secs()
            );
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
}
