//! This process's descriptors, by number and by kind as the kernel names their files
//! ("anon_inode:[eventfd]" and so on): what lets tern close those it inherited, and those of
//! kinds it no longer needs.

use std::fs;

use anyhow::{Context, Result};

/// At most this many descriptors are looked at.
const LOOKED_AT: usize = 65_536;

/// Closes every descriptor of this process whose file is of one of `kinds`; how many.
/// Whatever owned them must never use or close them again.
pub fn close(kinds: &[&str]) -> Result<usize> {
    close_where(|_, target| kinds.iter().any(|kind| target == *kind))
}

/// Closes every descriptor but standard input, output and error: at start, what the process
/// that started tern left open (a shell's, a supervisor's) is nothing tern needs.
pub fn close_inherited() -> Result<usize> {
    close_where(|fd, _| fd > 2)
}

/// Closes each descriptor `fd` whose file, as /proc names it, `doomed(fd, name)` picks.
fn close_where(doomed: impl Fn(i32, &std::ffi::OsStr) -> bool) -> Result<usize> {
    let dir = fs::read_dir("/proc/self/fd").context("listing /proc/self/fd")?;
    // Listed first, closed after: the listing has a descriptor of its own.
    let found: Vec<i32> = dir
        .flatten()
        .take(LOOKED_AT)
        .filter_map(|entry| {
            let fd = entry.file_name().to_str()?.parse::<i32>().ok()?;
            let target = fs::read_link(entry.path()).ok()?;
            doomed(fd, target.as_os_str()).then_some(fd)
        })
        .collect();
    let mut closed = 0;
    for fd in found {
        // SAFETY: a descriptor of this process that no one owns any more (the caller's
        // word); the listing's own is closed already and fails with EBADF.
        if unsafe { libc::close(fd) } == 0 {
            closed += 1;
        }
    }
    Ok(closed)
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
