//! bpffs at /sys/fs/bpf, where systemd mounts it and tern keeps its counts across a crash:
//! mounted for a test's life on a host without it.

use std::ffi::CString;

use crate::sh;

const BPFFS: &str = "/sys/fs/bpf";

pub struct Bpffs {
    mounted_here: bool,
}

impl Bpffs {
    pub fn ensure() -> Self {
        let mounted = sh("stat", &["-f", "-c", "%T", BPFFS]).trim() == "bpf_fs";
        if !mounted {
            sh("mount", &["-t", "bpf", "bpf", BPFFS]);
        }
        Self {
            mounted_here: !mounted,
        }
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        if self.mounted_here {
            let path = CString::new(BPFFS).expect("a path");
            // SAFETY: a valid C string.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
