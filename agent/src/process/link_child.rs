//! The link child: a process forked before the privilege drop whose only job is to attach
//! tern's programs to interfaces that appear later. On kernels without TCX attaching needs
//! CAP_NET_ADMIN, which the main process (the one that talks to the network) must not keep.
//!
//! The child runs as the agent user with no_new_privs and keeps only what [`child_keeps`]
//! names. It is two processes: a supervisor, which only forks the worker and starts it again
//! should it die (a crash, a kill), and the worker, which follows the links. Each runs under
//! a seccomp filter that allows only the system calls it makes and no network socket (the
//! worker's stacked on the supervisor's, without fork); the worker reads nothing but the
//! kernel's rtnetlink link messages, and neither opens a file. Both end with the main
//! process: asked by it ([`stop`]), or on its death (PR_SET_PDEATHSIG, `kill -9` included).
//! Before the worker goes it detaches everything tern attached, before the fork and since,
//! and removes the clsact qdiscs tern added: on kernels without TCX, netlink filters outlive
//! their process, and the child is the one that keeps CAP_NET_ADMIN. A worker started again
//! reads the link list afresh: it attaches what appeared since (the filters a killed one
//! left are replaced, not doubled) and forgets what went.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use caps::CapsHashSet;
use log::{error, info};

use super::{Account, seccomp, stop};
use crate::{
    host::links::{LinkEvent, LinkWatch},
    kernel::programs::{NewInterfaces, Programs},
};

/// The longest a stop request can wait to be seen, when it arrives while the child is
/// applying link changes.
const STOP_CHECK: Duration = Duration::from_secs(1);
/// How long the main process waits for the child to release the interfaces (the
/// supervisor as long for the worker).
const RELEASE_LIMIT: Duration = Duration::from_secs(5);
/// The pause before a worker that died is started again, doubled while workers die within
/// [`STEADY`] of their start, up to [`LONGEST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const STEADY: Duration = Duration::from_secs(60);
const LONGEST_PAUSE: Duration = Duration::from_secs(64);

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

/// The child's life: drop to `account` keeping [`child_keeps`], then keep a worker
/// attaching every new interface `watch` announces. `parent` is the main process's pid.
pub fn serve(programs: Programs, watch: LinkWatch, account: &Account, parent: u32) -> ! {
    let keep = child_keeps();
    if let Err(err) = super::drop_to(account, &keep) {
        give_up(&err);
    }
    // After the drop: a credential change clears the parent-death signal.
    die_with(parent);
    if let Err(err) = seccomp::confine(seccomp::Confined::LinkSupervisor) {
        give_up(&err);
    }
    info!(
        "link child ready, holding {}",
        match keep.is_empty() {
            true => "no capability".to_owned(),
            false => names(&keep),
        }
    );
    let supervisor = std::process::id();
    let mut pause: Option<Duration> = None;
    let mut resync = false;
    loop {
        let started = Instant::now();
        match fork() {
            Ok(Fork::Child) => work(programs, watch, supervisor, resync),
            Ok(Fork::Parent(worker)) => {
                let how = supervise(worker, parent);
                // A worker that ran a while earns a quick start; one that dies at once waits
                // longer each time, so a crash loop costs little.
                let next = match pause {
                    Some(last) if started.elapsed() < STEADY => (last * 2).min(LONGEST_PAUSE),
                    _ => FIRST_PAUSE,
                };
                pause = Some(next);
                error!(
                    "the link child's worker {how}; starting it again in {} s",
                    next.as_secs()
                );
            }
            Err(err) => give_up(&err),
        }
        if !sleep_unless_stopped(pause.unwrap_or(FIRST_PAUSE), parent) {
            std::process::exit(0);
        }
        resync = true;
    }
}

/// The worker: attaches to every new interface `watch` announces, until asked to stop or
/// `supervisor` is gone. `resync`: a worker started again, which reads the link list first.
fn work(mut programs: Programs, mut watch: LinkWatch, supervisor: u32, resync: bool) -> ! {
    die_with(supervisor);
    if let Err(err) = seccomp::confine(seccomp::Confined::LinkWorker) {
        give_up(&err);
    }
    programs.set_new_interfaces(NewInterfaces::Attach);
    if resync {
        match watch.dump() {
            Ok(events) => {
                let present: HashSet<u32> = events
                    .iter()
                    .filter_map(|event| match event {
                        LinkEvent::Present(interface) => Some(interface.index),
                        LinkEvent::Removed(_) => None,
                    })
                    .collect();
                let went: Vec<u32> = programs
                    .counted()
                    .filter(|index| !present.contains(index))
                    .collect();
                went.into_iter()
                    .for_each(|index| programs.apply(LinkEvent::Removed(index)));
                events.into_iter().for_each(|e| programs.apply(e));
            }
            Err(err) => error!("link child: reading the links again: {err:#}"),
        }
    }
    loop {
        if stop::stop_requested() || std::os::unix::process::parent_id() != supervisor {
            // Dropping the programs releases every interface; exit() would skip it.
            drop(programs);
            std::process::exit(0);
        }
        // A stop that lands between the check above and the poll does not interrupt it: the
        // bound makes the worker see it within that time.
        watch.wait(Some(STOP_CHECK));
        match watch.changes() {
            Ok(events) => events.into_iter().for_each(|e| programs.apply(e)),
            Err(err) => error!("link child: reading link changes: {err:#}"),
        }
    }
}

/// Waits for `worker` to end and says how it did. Exits the supervisor, once the worker has
/// released the interfaces, when a stop is asked for or the main process (`parent`) is gone,
/// and when the worker ended on its own (it does only then).
fn supervise(worker: libc::pid_t, parent: u32) -> String {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        if unsafe { libc::waitpid(worker, &mut status, libc::WNOHANG) } == worker {
            if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                std::process::exit(0);
            }
            return match libc::WIFSIGNALED(status) {
                true => format!("was killed by signal {}", libc::WTERMSIG(status)),
                false => format!("exited with status {}", libc::WEXITSTATUS(status)),
            };
        }
        if !sleep_unless_stopped(STOP_CHECK, parent) {
            stop(worker);
            std::process::exit(0);
        }
    }
}

/// Sleeps `time`; false, at once, when a stop is asked for or `parent` is gone.
fn sleep_unless_stopped(time: Duration, parent: u32) -> bool {
    let deadline = Instant::now() + time;
    loop {
        if stop::stop_requested() || std::os::unix::process::parent_id() != parent {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        let millis = libc::c_int::try_from(left.min(STOP_CHECK).as_millis()).unwrap_or(1000);
        // SAFETY: poll on no descriptor is a sleep, cut short by a signal (a stop request).
        unsafe { libc::poll(std::ptr::null_mut(), 0, millis) };
    }
}

/// Ends this process of the link child over `err`, saying what that costs.
fn give_up(err: &anyhow::Error) -> ! {
    error!("link child: {err:#}; interfaces added from now on are not counted");
    std::process::exit(1);
}

/// Asks the kernel for SIGTERM when `parent` dies, so that the worker removes its netlink
/// filters (older kernels) before it goes; exits at once if `parent` is gone already.
fn die_with(parent: u32) {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) };
    // The parent may have died before the line above took effect.
    if rc != 0 || std::os::unix::process::parent_id() != parent {
        std::process::exit(1);
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
        // SAFETY: poll on no descriptor is a sleep (the one the filters of both link
        // processes allow).
        unsafe { libc::poll(std::ptr::null_mut(), 0, 10) };
    }
}
