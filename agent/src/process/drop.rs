//! The privilege drop (step 4 of the ordering contract in `process`) and its check from the
//! kernel's side (step 5): after it, getting root back must fail.

use std::{collections::HashSet, fs};

use anyhow::{Result, ensure};
use caps::{CapSet, CapsHashSet};

use super::Account;

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

fn last_error() -> std::io::Error {
    std::io::Error::last_os_error()
}
