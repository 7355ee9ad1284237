//! A seccomp filter that denies a process system calls, as a locked-down container or a
//! kernel built without them would: bpf() and perf_event_open (no eBPF at all), or
//! perf_event_open and bpf(BPF_RAW_TRACEPOINT_OPEN) (eBPF, but no tracepoint programs of
//! either kind). The process sees EPERM and must do without. Installed in the child between
//! fork and exec; inherited by what it execs.

use std::{io, os::unix::process::CommandExt, process::Command};

/// The bpf() command that attaches a raw tracepoint program.
const BPF_RAW_TRACEPOINT_OPEN: u32 = 17;

/// Makes `command`'s process unable to call bpf() or perf_event_open.
pub fn deny_bpf(command: &mut Command) {
    deny(command, &[libc::SYS_bpf, libc::SYS_perf_event_open], None);
}

/// Makes `command`'s process unable to attach tracepoint programs: perf_event_open, which a
/// tracepoint takes, and the bpf() command of raw tracepoints are denied; bpf() stays.
pub fn deny_perf_events(command: &mut Command) {
    deny(
        command,
        &[libc::SYS_perf_event_open],
        Some(BPF_RAW_TRACEPOINT_OPEN),
    );
}

/// Makes `command`'s process unable to call any of `calls` (at most 8), nor bpf() with
/// command `bpf_command`.
fn deny(command: &mut Command, calls: &'static [libc::c_long], bpf_command: Option<u32>) {
    assert!(calls.len() <= 8, "a filter of at most 8 system calls");
    // SAFETY: the closure runs between fork and exec and calls only prctl, which is
    // async-signal-safe, on memory of its own stack.
    unsafe {
        command.pre_exec(move || {
            use libc::{
                BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W, SECCOMP_RET_ALLOW,
                SECCOMP_RET_ERRNO, sock_filter, sock_fprog,
            };
            let denied = SECCOMP_RET_ERRNO | libc::EPERM as u32;
            let instruction = |code: u32, jt: u8, jf: u8, k: u32| sock_filter {
                code: code as u16,
                jt,
                jf,
                k,
            };
            // struct seccomp_data starts with the system call's number; its first argument
            // sits at offset 16 (the low half on a little-endian machine). Each call denied
            // is one comparison that jumps to the last instruction; the one before allows.
            // A bpf() command denied is two more: is the call bpf(), and is its command it.
            let count = calls.len();
            let extra = if bpf_command.is_some() { 3 } else { 0 };
            let mut filter = [instruction(0, 0, 0, 0); 14];
            filter[0] = instruction(BPF_LD | BPF_W | BPF_ABS, 0, 0, 0);
            let last = count + extra + 2;
            for (i, &call) in calls.iter().enumerate() {
                let to_denied = (last - 2 - i) as u8;
                filter[1 + i] = instruction(BPF_JMP | BPF_JEQ | BPF_K, to_denied, 0, call as u32);
            }
            if let Some(command) = bpf_command {
                let at = 1 + count;
                // Not bpf(): skip the argument's load and comparison, to allow.
                filter[at] = instruction(BPF_JMP | BPF_JEQ | BPF_K, 0, 2, libc::SYS_bpf as u32);
                filter[at + 1] = instruction(BPF_LD | BPF_W | BPF_ABS, 0, 0, 16);
                filter[at + 2] = instruction(BPF_JMP | BPF_JEQ | BPF_K, 1, 0, command);
            }
            filter[last - 1] = instruction(BPF_RET | BPF_K, 0, 0, SECCOMP_RET_ALLOW);
            filter[last] = instruction(BPF_RET | BPF_K, 0, 0, denied);
            let filter = &filter[..=last];
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
