//! The link child's seccomp filter: the system calls it makes once confined, and a `socket`
//! that can only open AF_UNIX or AF_NETLINK. Installed after the privilege drop (it needs
//! no_new_privs), before the child reads any link message.

use anyhow::{Result, ensure};

/// The system calls the child makes once confined (traced on 6.18, plus the netlink filter
/// path of older kernels and the allocator's): following links, attaching, logging, exiting.
const ALLOWED: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_ppoll,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_bind,
    libc::SYS_getsockname,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_ioctl,
    libc::SYS_bpf,
    libc::SYS_futex,
    #[cfg(not(target_arch = "arm"))]
    libc::SYS_mmap,
    #[cfg(target_arch = "arm")]
    libc::SYS_mmap2,
    #[cfg(target_arch = "arm")]
    libc::SYS_sigreturn,
    #[cfg(target_arch = "arm")]
    ARM_CLOCK_GETTIME64,
    #[cfg(target_arch = "arm")]
    ARM_PPOLL_TIME64,
    #[cfg(target_arch = "arm")]
    ARM_FUTEX_TIME64,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_getppid,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_clock_gettime,
    libc::SYS_getrandom,
    libc::SYS_uname,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The 64-bit-time calls a 32-bit musl makes first (arch/arm/tools/syscall.tbl; the libc
/// crate does not name them).
#[cfg(target_arch = "arm")]
const ARM_CLOCK_GETTIME64: libc::c_long = 403;
#[cfg(target_arch = "arm")]
const ARM_PPOLL_TIME64: libc::c_long = 414;
#[cfg(target_arch = "arm")]
const ARM_FUTEX_TIME64: libc::c_long = 422;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
/// EM_ARM, little-endian.
#[cfg(target_arch = "arm")]
const AUDIT_ARCH: u32 = 0x4000_0028;

/// A seccomp filter: only [`ALLOWED`], and `socket` only for AF_UNIX (interface name lookups)
/// and AF_NETLINK, so the child can never open a network socket. Anything else fails with
/// EPERM; a call from another architecture's table kills the process.
pub fn confine() -> Result<()> {
    use libc::{
        BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W, SECCOMP_RET_ALLOW,
        SECCOMP_RET_ERRNO, SECCOMP_RET_KILL_PROCESS, sock_filter,
    };
    let load = |offset: u32| sock_filter {
        code: (BPF_LD | BPF_W | BPF_ABS) as u16,
        jt: 0,
        jf: 0,
        k: offset,
    };
    let jump_if = |value: u32, jt: usize, jf: usize| sock_filter {
        code: (BPF_JMP | BPF_JEQ | BPF_K) as u16,
        jt: u8::try_from(jt).unwrap_or(u8::MAX),
        jf: u8::try_from(jf).unwrap_or(u8::MAX),
        k: value,
    };
    let ret = |action: u32| sock_filter {
        code: (BPF_RET | BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: action,
    };
    // Offsets in struct seccomp_data: nr, arch, then args[0] (its low half, little-endian).
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    const ARG0: u32 = 16;
    let n = ALLOWED.len();
    let (deny, allow) = (8 + n, 9 + n);
    let mut program = vec![
        load(ARCH),
        jump_if(AUDIT_ARCH, 1, 0),
        ret(SECCOMP_RET_KILL_PROCESS),
        load(NR),
        jump_if(libc::SYS_socket as u32, 0, 3),
        load(ARG0),
        jump_if(libc::AF_UNIX as u32, allow - 7, 0),
        jump_if(libc::AF_NETLINK as u32, allow - 8, deny - 8),
    ];
    for (i, nr) in ALLOWED.iter().enumerate() {
        program.push(jump_if(*nr as u32, allow - (8 + i) - 1, 0));
    }
    program.push(ret(SECCOMP_RET_ERRNO | libc::EPERM as u32));
    program.push(ret(SECCOMP_RET_ALLOW));
    ensure!(
        allow < 256,
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
