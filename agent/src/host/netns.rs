//! Network namespaces: visits to every one but tern's own (to take their socket snapshots
//! at start).

use std::{
    collections::HashSet,
    fs::{self, File},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
};

use anyhow::{Context, Result, bail};

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
