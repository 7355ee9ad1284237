//! The link child: a process forked before the privilege drop whose only job is to attach
//! tern's programs to interfaces that appear later. On kernels without TCX attaching needs
//! CAP_NET_ADMIN, which the main process (the one that talks to the network) must not keep.
//!
//! The child runs as the agent user with no_new_privs, keeps only what [`child_keeps`] names,
//! under a seccomp filter that allows only the system calls it makes and no network socket;
//! it reads nothing but the kernel's rtnetlink link messages, opens no file, and
//! dies with the main process (PR_SET_PDEATHSIG), detaching what it attached.

use anyhow::{Result, ensure};
use caps::{Capability, CapsHashSet};
use log::{error, info};

use super::{Account, stop};
use crate::{
    host::links::LinkWatch,
    kernel::programs::{self, NewInterfaces, Programs},
};

/// What attaching needs once the programs are loaded: a TCX link (6.6+) needs no capability,
/// the kernel checked when the program was loaded (measured on 6.18: a process with no
/// capability attaches); a netlink TC filter is a network-admin operation.
pub fn child_keeps() -> CapsHashSet {
    let mut keep = super::main_process_keeps();
    if !programs::tcx_available() {
        keep.insert(Capability::CAP_NET_ADMIN);
    }
    keep
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

/// The child's life: drop to `account` keeping [`child_keeps`], then attach to every new
/// interface `watch` announces. `parent` is the main process's pid.
pub fn serve(mut programs: Programs, mut watch: LinkWatch, account: &Account, parent: u32) -> ! {
    let keep = child_keeps();
    if let Err(err) = super::drop_to(account, &keep) {
        error!("link child: {err:#}; interfaces added from now on are not counted");
        std::process::exit(1);
    }
    // After the drop: a credential change clears the parent-death signal. SIGTERM, so that
    // the child removes its netlink filters (older kernels) before it goes.
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) };
    // The parent may have died before the line above took effect.
    if rc != 0 || std::os::unix::process::parent_id() != parent {
        std::process::exit(1);
    }
    if let Err(err) = confine() {
        error!("link child: {err:#}; interfaces added from now on are not counted");
        std::process::exit(1);
    }
    programs.set_new_interfaces(NewInterfaces::Attach);
    info!(
        "link child ready, holding {}",
        match keep.is_empty() {
            true => "no capability".to_owned(),
            false => names(&keep),
        }
    );
    loop {
        watch.wait(None);
        if stop::stop_requested() {
            // Dropping the programs detaches every link they hold; exit() would skip it.
            drop(programs);
            std::process::exit(0);
        }
        match watch.changes() {
            Ok(events) => events.into_iter().for_each(|e| programs.apply(e)),
            Err(err) => error!("link child: reading link changes: {err:#}"),
        }
    }
}

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
    libc::SYS_mmap,
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

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// A seccomp filter: only [`ALLOWED`], and `socket` only for AF_UNIX (interface name lookups)
/// and AF_NETLINK, so the child can never open a network socket. Anything else fails with
/// EPERM; a call from another architecture's table kills the process.
fn confine() -> Result<()> {
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
