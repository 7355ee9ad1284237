// Over 400 lines: the lists of system calls are the filters, and the tests run them.
//! Seccomp filters of tern's processes once they run unprivileged: the system calls each
//! makes, a few of them only with the arguments it passes (the address family of `socket`,
//! the command of `bpf`), and nothing else. A call outside its list fails with EPERM; a call
//! from another architecture's table kills the process. Installed after the privilege drop
//! (a filter needs no_new_privs), before the process reads anything from outside; threads
//! started later inherit it, and a child's filter stacks on its parent's.

use anyhow::{Result, ensure};
use libc::c_long;

/// Which process a filter is for.
#[derive(Clone, Copy, Debug)]
pub enum Confined {
    /// Reads the maps, talks to the broker, writes the state directory. It may read and
    /// update maps, but not attach, detach, load or replace anything.
    Main,
    /// Starts the link worker and starts it again should it die.
    LinkSupervisor,
    /// Follows the links and attaches to new interfaces; never forks.
    LinkWorker,
}

/// A system call a filter allows: with any arguments, or with argument `arg` among `values`.
struct Allow {
    nr: c_long,
    arg: Option<(u32, &'static [u32])>,
}

const fn any(nr: c_long) -> Allow {
    Allow { nr, arg: None }
}

const fn only(nr: c_long, arg: u32, values: &'static [u32]) -> Allow {
    Allow {
        nr,
        arg: Some((arg, values)),
    }
}

/// What every process of tern does: memory, time, signals, logging, waiting, exiting.
const BASE: &[Allow] = &[
    any(libc::SYS_read),
    any(libc::SYS_write),
    any(libc::SYS_writev),
    any(libc::SYS_close),
    any(libc::SYS_ppoll),
    // musl makes the older call wherever the architecture has it.
    #[cfg(any(target_arch = "x86_64", target_arch = "arm"))]
    any(libc::SYS_poll),
    any(libc::SYS_futex),
    #[cfg(not(target_arch = "arm"))]
    any(libc::SYS_mmap),
    #[cfg(target_arch = "arm")]
    any(libc::SYS_mmap2),
    #[cfg(target_arch = "arm")]
    any(libc::SYS_sigreturn),
    #[cfg(target_arch = "arm")]
    any(ARM_CLOCK_GETTIME64),
    #[cfg(target_arch = "arm")]
    any(ARM_PPOLL_TIME64),
    #[cfg(target_arch = "arm")]
    any(ARM_FUTEX_TIME64),
    any(libc::SYS_munmap),
    any(libc::SYS_mremap),
    any(libc::SYS_madvise),
    any(libc::SYS_brk),
    any(libc::SYS_rt_sigreturn),
    any(libc::SYS_rt_sigprocmask),
    any(libc::SYS_sigaltstack),
    any(libc::SYS_restart_syscall),
    any(libc::SYS_getppid),
    any(libc::SYS_getpid),
    any(libc::SYS_gettid),
    any(libc::SYS_clock_gettime),
    any(libc::SYS_getrandom),
    any(libc::SYS_uname),
    any(libc::SYS_exit),
    any(libc::SYS_exit_group),
];

/// The link processes: rtnetlink, the netlink filters of older kernels and TCX links, and a
/// `socket` that can only open AF_NETLINK (they name interfaces by index), so that neither
/// can ever open a network socket.
const LINK: &[Allow] = &[
    only(libc::SYS_socket, 0, &[libc::AF_NETLINK as u32]),
    any(libc::SYS_recvfrom),
    any(libc::SYS_recvmsg),
    any(libc::SYS_sendto),
    any(libc::SYS_sendmsg),
    any(libc::SYS_bind),
    any(libc::SYS_getsockname),
    any(libc::SYS_setsockopt),
    any(libc::SYS_getsockopt),
    any(libc::SYS_ioctl),
    any(libc::SYS_bpf),
];

/// The supervisor's own: forking the worker (which asks for its parent-death signal and
/// adds its own filter first), waiting for it, stopping it.
const SUPERVISE: &[Allow] = &[
    only(
        libc::SYS_prctl,
        0,
        &[libc::PR_SET_PDEATHSIG as u32, libc::PR_SET_SECCOMP as u32],
    ),
    any(libc::SYS_clone),
    #[cfg(any(target_arch = "x86_64", target_arch = "arm"))]
    any(libc::SYS_fork),
    any(libc::SYS_set_robust_list),
    // musl's fork asks for the child's thread id this way.
    any(libc::SYS_set_tid_address),
    any(libc::SYS_wait4),
    any(libc::SYS_kill),
];

/// The commands of `bpf` the main process gives: map reads, updates and deletions.
const MAP_COMMANDS: &[u32] = &[
    1,  // BPF_MAP_LOOKUP_ELEM
    2,  // BPF_MAP_UPDATE_ELEM
    3,  // BPF_MAP_DELETE_ELEM
    4,  // BPF_MAP_GET_NEXT_KEY
    24, // BPF_MAP_LOOKUP_BATCH
    27, // BPF_MAP_DELETE_BATCH
];

/// The main process: traced on 6.18 publishing over TLS and on stdout, built with glibc and
/// with musl (whose refused calls strace shows as EPERM), each call under every name the
/// three architectures and the two C libraries give it.
const MAIN: &[Allow] = &[
    only(libc::SYS_bpf, 0, MAP_COMMANDS),
    only(
        libc::SYS_socket,
        0,
        &[
            libc::AF_UNIX as u32,
            libc::AF_INET as u32,
            libc::AF_INET6 as u32,
            libc::AF_NETLINK as u32,
        ],
    ),
    // Naming threads only.
    only(libc::SYS_prctl, 0, &[libc::PR_SET_NAME as u32]),
    // Sockets: the broker, name lookups, netlink.
    any(libc::SYS_connect),
    any(libc::SYS_bind),
    any(libc::SYS_getsockname),
    any(libc::SYS_getpeername),
    any(libc::SYS_getsockopt),
    any(libc::SYS_setsockopt),
    any(libc::SYS_sendto),
    any(libc::SYS_recvfrom),
    any(libc::SYS_sendmsg),
    any(libc::SYS_recvmsg),
    any(libc::SYS_sendmmsg),
    any(libc::SYS_recvmmsg),
    #[cfg(target_arch = "arm")]
    any(ARM_RECVMMSG_TIME64),
    any(libc::SYS_shutdown),
    // The runtime: threads, events, timers.
    any(libc::SYS_clone),
    any(libc::SYS_clone3),
    any(libc::SYS_set_robust_list),
    // glibc registers each new thread for restartable sequences; musl does not.
    #[cfg(target_env = "gnu")]
    any(libc::SYS_rseq),
    any(libc::SYS_mprotect),
    any(libc::SYS_sched_getaffinity),
    any(libc::SYS_sched_yield),
    any(libc::SYS_rt_sigaction),
    any(libc::SYS_epoll_create1),
    any(libc::SYS_epoll_ctl),
    #[cfg(not(target_arch = "aarch64"))]
    any(libc::SYS_epoll_wait),
    any(libc::SYS_epoll_pwait),
    any(libc::SYS_eventfd2),
    any(libc::SYS_nanosleep),
    any(libc::SYS_clock_nanosleep),
    #[cfg(target_arch = "arm")]
    any(ARM_CLOCK_NANOSLEEP_TIME64),
    // Files: configuration, metric files, /proc, the state directory and its spool.
    any(libc::SYS_openat),
    any(libc::SYS_lseek),
    #[cfg(target_arch = "arm")]
    any(libc::SYS__llseek),
    any(libc::SYS_fstat),
    #[cfg(not(target_arch = "arm"))]
    any(libc::SYS_newfstatat),
    #[cfg(target_arch = "arm")]
    any(libc::SYS_fstat64),
    #[cfg(target_arch = "arm")]
    any(libc::SYS_fstatat64),
    any(libc::SYS_statx),
    any(libc::SYS_fcntl),
    #[cfg(target_arch = "arm")]
    any(libc::SYS_fcntl64),
    any(libc::SYS_getdents64),
    any(libc::SYS_readlinkat),
    any(libc::SYS_mkdirat),
    any(libc::SYS_renameat),
    any(libc::SYS_renameat2),
    any(libc::SYS_unlinkat),
    any(libc::SYS_fchmod),
    any(libc::SYS_fchmodat),
    any(libc::SYS_fchown),
    any(libc::SYS_fchownat),
    any(libc::SYS_fsync),
    any(libc::SYS_fdatasync),
    // musl makes the older calls wherever the architecture has them (glibc the *at ones);
    // 32-bit arm's ownership calls take 32-bit ids.
    #[cfg(any(target_arch = "x86_64", target_arch = "arm"))]
    any(libc::SYS_open),
    #[cfg(target_arch = "x86_64")]
    any(libc::SYS_stat),
    #[cfg(target_arch = "x86_64")]
    any(libc::SYS_lstat),
    #[cfg(target_arch = "arm")]
    any(libc::SYS_stat64),
    #[cfg(target_arch = "arm")]
    any(libc::SYS_lstat64),
    #[cfg(any(target_arch = "x86_64", target_arch = "arm"))]
    any(libc::SYS_readlink),
    #[cfg(any(target_arch = "x86_64", target_arch = "arm"))]
    any(libc::SYS_mkdir),
    #[cfg(any(target_arch = "x86_64", target_arch = "arm"))]
    any(libc::SYS_rename),
    #[cfg(any(target_arch = "x86_64", target_arch = "arm"))]
    any(libc::SYS_unlink),
    #[cfg(any(target_arch = "x86_64", target_arch = "arm"))]
    any(libc::SYS_chmod),
    #[cfg(target_arch = "x86_64")]
    any(libc::SYS_chown),
    #[cfg(target_arch = "arm")]
    any(libc::SYS_chown32),
    #[cfg(target_arch = "arm")]
    any(libc::SYS_fchown32),
    // The link child: whether it runs, and asking it to stop.
    any(libc::SYS_wait4),
    any(libc::SYS_kill),
];

/// The 64-bit-time calls a 32-bit musl makes first (arch/arm/tools/syscall.tbl; the libc
/// crate does not name them).
#[cfg(target_arch = "arm")]
const ARM_CLOCK_GETTIME64: c_long = 403;
#[cfg(target_arch = "arm")]
const ARM_PPOLL_TIME64: c_long = 414;
#[cfg(target_arch = "arm")]
const ARM_FUTEX_TIME64: c_long = 422;
#[cfg(target_arch = "arm")]
const ARM_CLOCK_NANOSLEEP_TIME64: c_long = 407;
#[cfg(target_arch = "arm")]
const ARM_RECVMMSG_TIME64: c_long = 417;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
/// EM_ARM, little-endian.
#[cfg(target_arch = "arm")]
const AUDIT_ARCH: u32 = 0x4000_0028;

/// Installs the filter of `process` on the calling thread (and the threads it starts).
pub fn confine(process: Confined) -> Result<()> {
    install(&mut filter(process))
}

fn install(program: &mut [libc::sock_filter]) -> Result<()> {
    ensure!(
        program.len() <= usize::from(u16::MAX),
        "internal error: the seccomp filter is too long"
    );
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: fprog points to a valid filter that outlives the call; no_new_privs is set.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
        )
    };
    ensure!(
        rc == 0,
        "installing the seccomp filter: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// The classic BPF program: the architecture check, then each allowed call in turn, each
/// followed by its own return so that no jump is longer than a condition's block.
fn filter(process: Confined) -> Vec<libc::sock_filter> {
    use libc::{
        BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W, SECCOMP_RET_ALLOW,
        SECCOMP_RET_ERRNO, SECCOMP_RET_KILL_PROCESS, sock_filter,
    };
    // Offsets in struct seccomp_data: nr, arch, then the arguments (their low halves,
    // little-endian), 8 bytes each.
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    const ARGS: u32 = 16;
    let load = |offset: u32| sock_filter {
        code: (BPF_LD | BPF_W | BPF_ABS) as u16,
        jt: 0,
        jf: 0,
        k: offset,
    };
    // Falls through when equal, skips `skip` instructions when not.
    let unless = |value: u32, skip: usize| sock_filter {
        code: (BPF_JMP | BPF_JEQ | BPF_K) as u16,
        jt: 0,
        jf: u8::try_from(skip).unwrap_or(u8::MAX),
        k: value,
    };
    let ret = |action: u32| sock_filter {
        code: (BPF_RET | BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: action,
    };
    let lists: &[&[Allow]] = match process {
        Confined::Main => &[BASE, MAIN],
        Confined::LinkSupervisor => &[BASE, LINK, SUPERVISE],
        Confined::LinkWorker => &[BASE, LINK],
    };
    let deny = SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let mut program = vec![
        load(ARCH),
        // Over the kill when it is this architecture.
        sock_filter {
            code: (BPF_JMP | BPF_JEQ | BPF_K) as u16,
            jt: 1,
            jf: 0,
            k: AUDIT_ARCH,
        },
        ret(SECCOMP_RET_KILL_PROCESS),
        load(NR),
    ];
    for allow in lists.iter().flat_map(|list| list.iter()) {
        match allow.arg {
            None => {
                program.push(unless(allow.nr as u32, 1));
                program.push(ret(SECCOMP_RET_ALLOW));
            }
            Some((arg, values)) => {
                program.push(unless(allow.nr as u32, 2 + 2 * values.len()));
                program.push(load(ARGS + 8 * arg));
                for value in values {
                    program.push(unless(*value, 1));
                    program.push(ret(SECCOMP_RET_ALLOW));
                }
                program.push(ret(deny));
            }
        }
    }
    program.push(ret(deny));
    program
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error of system call `nr` with arguments `args` (0 when it succeeds), closing what
    /// it returns.
    fn errno_of(nr: c_long, args: [libc::c_long; 3]) -> i32 {
        // SAFETY: each call below passes integers only, or a null pointer the kernel checks.
        let rc = unsafe { libc::syscall(nr, args[0], args[1], args[2]) };
        if rc < 0 {
            return std::io::Error::last_os_error().raw_os_error().unwrap_or(-1);
        }
        if nr == libc::SYS_socket {
            // SAFETY: closing the descriptor just opened.
            unsafe { libc::close(rc as i32) };
        }
        0
    }

    /// Runs `checks` in a forked child under `process`'s filter; each check is a system
    /// call and whether the filter must refuse it. Fails with the first that went otherwise.
    fn under(process: Confined, checks: &[(&str, c_long, [c_long; 3], bool)]) {
        // Built before the fork: the child of a threaded test process must not allocate.
        let mut program = filter(process);
        // SAFETY: the child makes system calls only, then _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: prctl with integer arguments.
            let nnp = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            if nnp != 0 || install(&mut program).is_err() {
                // SAFETY: ends the child.
                unsafe { libc::_exit(100) };
            }
            for (i, (_, nr, args, refused)) in checks.iter().enumerate() {
                if (errno_of(*nr, *args) == libc::EPERM) != *refused {
                    // SAFETY: as above.
                    unsafe { libc::_exit(i as i32 + 1) };
                }
            }
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waiting for the child just forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "killed: {status}");
        match libc::WEXITSTATUS(status) {
            0 => {}
            100 => panic!("the filter could not be installed"),
            n => {
                let (name, _, _, refused) = checks[n as usize - 1];
                panic!(
                    "{process:?}: {name} was {}",
                    if refused { "allowed" } else { "refused" }
                );
            }
        }
    }

    const PACKET: [c_long; 3] = [libc::AF_PACKET as c_long, libc::SOCK_RAW as c_long, 0];
    const INET: [c_long; 3] = [libc::AF_INET as c_long, libc::SOCK_STREAM as c_long, 0];
    const UNIX: [c_long; 3] = [libc::AF_UNIX as c_long, libc::SOCK_DGRAM as c_long, 0];
    const NETLINK: [c_long; 3] = [libc::AF_NETLINK as c_long, libc::SOCK_RAW as c_long, 0];

    #[test]
    fn the_main_process_may_read_maps_and_talk_but_not_detach_exec_or_trace() {
        // A null attribute: allowed commands fail with EFAULT or EINVAL, refused with EPERM.
        let bpf = |command: c_long| [command, 0, 0];
        under(
            Confined::Main,
            &[
                ("map lookup", libc::SYS_bpf, bpf(1), false),
                ("map next key", libc::SYS_bpf, bpf(4), false),
                ("map batch lookup", libc::SYS_bpf, bpf(24), false),
                ("map batch delete", libc::SYS_bpf, bpf(27), false),
                ("prog load", libc::SYS_bpf, bpf(5), true),
                ("prog detach", libc::SYS_bpf, bpf(9), true),
                ("link update", libc::SYS_bpf, bpf(29), true),
                ("link detach", libc::SYS_bpf, bpf(34), true),
                ("an inet socket", libc::SYS_socket, INET, false),
                ("a netlink socket", libc::SYS_socket, NETLINK, false),
                ("a packet socket", libc::SYS_socket, PACKET, true),
                ("execve", libc::SYS_execve, [0, 0, 0], true),
                (
                    "ptrace",
                    libc::SYS_ptrace,
                    [c_long::from(libc::PTRACE_TRACEME), 0, 0],
                    true,
                ),
                ("setuid", libc::SYS_setuid, [0, 0, 0], true),
                (
                    "prctl other than naming",
                    libc::SYS_prctl,
                    [c_long::from(libc::PR_SET_DUMPABLE), 1, 0],
                    true,
                ),
            ],
        );
    }

    #[test]
    fn the_link_worker_opens_no_network_socket_and_cannot_fork() {
        under(
            Confined::LinkWorker,
            &[
                ("a netlink socket", libc::SYS_socket, NETLINK, false),
                ("an inet socket", libc::SYS_socket, INET, true),
                ("a packet socket", libc::SYS_socket, PACKET, true),
                ("a unix socket", libc::SYS_socket, UNIX, true),
                ("clone", libc::SYS_clone, [0, 0, 0], true),
                ("execve", libc::SYS_execve, [0, 0, 0], true),
            ],
        );
    }
}
