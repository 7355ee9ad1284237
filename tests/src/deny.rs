//! A seccomp filter that denies a process bpf() and perf_event_open, as a locked-down
//! container or a kernel built without them would: the process sees EPERM (or ENOSYS) and
//! must do without. Installed in the child between fork and exec; inherited by what it execs.

use std::{io, os::unix::process::CommandExt, process::Command};

/// Makes `command`'s process unable to call bpf() or perf_event_open.
pub fn deny_bpf(command: &mut Command) {
    // SAFETY: the closure runs between fork and exec and calls only prctl, which is
    // async-signal-safe, on memory of its own stack.
    unsafe {
        command.pre_exec(|| {
            use libc::{
                BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W, SECCOMP_RET_ALLOW,
                SECCOMP_RET_ERRNO, sock_filter, sock_fprog,
            };
            let denied = SECCOMP_RET_ERRNO | libc::EPERM as u32;
            // struct seccomp_data starts with the system call's number.
            let filter = [
                sock_filter {
                    code: (BPF_LD | BPF_W | BPF_ABS) as u16,
                    jt: 0,
                    jf: 0,
                    k: 0,
                },
                sock_filter {
                    code: (BPF_JMP | BPF_JEQ | BPF_K) as u16,
                    jt: 2,
                    jf: 0,
                    k: libc::SYS_bpf as u32,
                },
                sock_filter {
                    code: (BPF_JMP | BPF_JEQ | BPF_K) as u16,
                    jt: 1,
                    jf: 0,
                    k: libc::SYS_perf_event_open as u32,
                },
                sock_filter {
                    code: (BPF_RET | BPF_K) as u16,
                    jt: 0,
                    jf: 0,
                    k: SECCOMP_RET_ALLOW,
                },
                sock_filter {
                    code: (BPF_RET | BPF_K) as u16,
                    jt: 0,
                    jf: 0,
                    k: denied,
                },
            ];
            let program = sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr().cast_mut(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &raw const program,
                ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
