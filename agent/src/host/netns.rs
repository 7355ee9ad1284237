//! Network namespaces: the cookie of tern's own, as the kernel programs see it, and visits
//! to every other one (to take their socket snapshots at start).

use std::{
    collections::HashSet,
    fs::{self, File},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
};

use anyhow::{Context, Result, bail};

/// The cookie of tern's own network namespace, as the kernel programs see it.
pub fn own_netns_cookie() -> Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // An unbound socket is enough: the cookie is the namespace's, and nothing listens.
    // SAFETY: socket() has no memory preconditions; a valid fd is owned right away.
    let socket = unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!(
                "cannot open a socket to learn the namespace cookie: {}",
                std::io::Error::last_os_error()
            );
        }
        <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
    };
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len describe a writable u64.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        bail!(
            "cannot read this network namespace's cookie (SO_NETNS_COOKIE needs Linux 5.14): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(cookie)
}

/// Runs `f` in every other network namespace (that a process is in, or named under
/// /run/netns or Docker's directory), on this thread, and
/// returns to tern's own namespace after each. The thread's namespace is the only state
/// changed, and it is restored before returning, also on error.
pub fn in_other_namespaces<T>(mut f: impl FnMut() -> Result<T>) -> Result<Vec<T>> {
    let own = File::open("/proc/self/ns/net").context("opening /proc/self/ns/net")?;
    let own_id = own.metadata().map(|m| (m.dev(), m.ino()))?;
    let mut seen = HashSet::from([own_id]);
    let mut results = Vec::new();
    // Namespaces that processes are in, and named ones that may have none (iproute2's,
    // container runtimes').
    let processes = fs::read_dir("/proc")
        .context("reading /proc")?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|e| e.path().join("ns/net"));
    let named = ["/run/netns", "/var/run/docker/netns"]
        .iter()
        .filter_map(|dir| fs::read_dir(dir).ok())
        .flat_map(|dir| dir.flatten().map(|e| e.path()));
    for path in processes.chain(named) {
        // Processes come and go: one that vanished or is not ours to see is skipped.
        let Ok(ns) = File::open(&path) else {
            continue;
        };
        let Ok(id) = ns.metadata().map(|m| (m.dev(), m.ino())) else {
            continue;
        };
        if !seen.insert(id) {
            continue;
        }
        // SAFETY: setns on valid namespace fds; only this thread's namespace changes.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            continue;
        }
        let result = f();
        // SAFETY: as above, back to the namespace tern started in.
        if unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!(
                "cannot return to tern's own network namespace: {}",
                std::io::Error::last_os_error()
            );
        }
        results.push(result?);
    }
    Ok(results)
}
