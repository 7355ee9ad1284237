//! The floor of figure 1b: a TC program that does nothing, attached next to tern's. What the
//! kernel's statistics report for it is the cost of measuring (two clock reads and the call),
//! which every program's figure includes.

use std::os::fd::{FromRawFd, OwnedFd};

use crate::Netns;

/// Names of the empty programs in `bpftool prog show`, one per direction.
pub const INGRESS: &str = "floor_ingress";
pub const EGRESS: &str = "floor_egress";

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// Empty programs attached by TCX links at ingress and egress of one interface; all of it
/// goes when dropped (programs and links die with their fds).
pub struct EmptyTc {
    _attached: [(OwnedFd, OwnedFd); 2],
}

impl EmptyTc {
    /// Loads the program and attaches it, after the programs already there, to `dev` in
    /// `ns`.
    pub fn attach(ns: &Netns, dev: &str) -> Self {
        let dev = dev.to_owned();
        ns.enter(move || {
            let name = std::ffi::CString::new(dev.as_str()).expect("an interface name");
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            assert_ne!(ifindex, 0, "no interface {dev}");
            let attached =
                [(INGRESS, BPF_TCX_INGRESS), (EGRESS, BPF_TCX_EGRESS)].map(|(name, hook)| {
                    let prog = load(name);
                    let link = link(&prog, ifindex, hook);
                    (prog, link)
                });
            Self {
                _attached: attached,
            }
        })
    }
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> OwnedFd {
    // SAFETY: `attr` is a zero-padded bpf_attr of the size passed.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    assert!(
        fd >= 0,
        "bpf command {cmd}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// `r0 = TC_ACT_UNSPEC (-1); exit`, named `name`.
fn load(name: &str) -> OwnedFd {
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = c"GPL";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_SCHED_CLS.to_ne_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[48..48 + name.len()].copy_from_slice(name.as_bytes());
    bpf(BPF_PROG_LOAD, &mut attr)
}

fn link(prog: &OwnedFd, ifindex: u32, hook: u32) -> OwnedFd {
    use std::os::fd::AsRawFd;
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    attr[8..12].copy_from_slice(&hook.to_ne_bytes());
    bpf(BPF_LINK_CREATE, &mut attr)
}
