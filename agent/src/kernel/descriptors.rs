//! This process's descriptors by kind, as the kernel names their files ("anon_inode:bpf-prog"
//! and so on): what lets the main process close the programs it no longer needs.

use std::fs;

use anyhow::{Context, Result};

pub const PROGRAM: &str = "anon_inode:bpf-prog";
pub const BTF: &str = "anon_inode:btf";
pub const LINK: &str = "anon_inode:bpf_link";
pub const PERF_EVENT: &str = "anon_inode:[perf_event]";

/// At most this many descriptors are looked at.
const LOOKED_AT: usize = 65_536;

/// Closes every descriptor of this process whose file is of one of `kinds`; how many.
/// Whatever owned them must never use or close them again.
pub fn close(kinds: &[&str]) -> Result<usize> {
    let dir = fs::read_dir("/proc/self/fd").context("listing /proc/self/fd")?;
    // Listed first, closed after: closing while listing would close the listing's own.
    let found: Vec<i32> = dir
        .flatten()
        .take(LOOKED_AT)
        .filter_map(|entry| {
            let fd = entry.file_name().to_str()?.parse::<i32>().ok()?;
            let target = fs::read_link(entry.path()).ok()?;
            kinds
                .iter()
                .any(|kind| target.as_os_str() == *kind)
                .then_some(fd)
        })
        .collect();
    for fd in &found {
        // SAFETY: a descriptor of this process, of a kind whose owner the caller gave up.
        unsafe { libc::close(*fd) };
    }
    Ok(found.len())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    /// In a child of its own: the test process's other threads hold event descriptors too.
    #[test]
    fn only_descriptors_of_the_kinds_named_are_closed() {
        // SAFETY: the child makes system calls and uses glibc's fork-safe allocator, then
        // _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: a plain system call.
            let event = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            let file = fs::File::open("/proc/self/stat");
            // SAFETY: fcntl on descriptor numbers only.
            let open = |fd: i32| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
            let passed = event >= 0
                && file.as_ref().is_ok_and(|f| {
                    close(&["anon_inode:[eventfd]"]).is_ok_and(|n| n >= 1)
                        && !open(event)
                        && open(f.as_raw_fd())
                });
            // SAFETY: ends the child.
            unsafe { libc::_exit(i32::from(!passed)) };
        }
        let mut status = 0;
        // SAFETY: waiting for the child just forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
