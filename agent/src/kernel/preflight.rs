//! Whether tern's eBPF programs can be used on this kernel at all, before anything is loaded:
//! one table, one row per requirement of the whole object. What each group of programs needs
//! besides (a program type, a tracepoint, a hook) is tried when it is attached
//! (`programs`); without this, tern counts from netlink and the kernel's counters instead.

use anyhow::{Result, bail};
use aya::{maps::MapType, sys::is_map_supported, util::KernelVersion};

struct Requirement {
    /// What is missing, as the start-up line names it.
    what: &'static str,
    present: fn() -> bool,
    /// What would bring it back.
    fix: &'static str,
}

const REQUIREMENTS: &[Requirement] = &[
    Requirement {
        what: "Linux 5.8 or later (CAP_BPF, BPF links)",
        present: || KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 8, 0)),
        fix: "a kernel of 5.8 or later",
    },
    Requirement {
        what: "the bpf() system call with hash, per-CPU hash and per-CPU array maps",
        present: || {
            [MapType::Hash, MapType::PerCpuHash, MapType::PerCpuArray]
                .into_iter()
                .all(|m| is_map_supported(m).unwrap_or(false))
        },
        fix: "a kernel built with CONFIG_BPF_SYSCALL, and bpf() allowed to tern (seccomp, \
              container runtime)",
    },
];

/// Checks every requirement; fails on the first one missing, naming it and its fix.
pub fn check() -> Result<()> {
    for requirement in REQUIREMENTS {
        if !(requirement.present)() {
            bail!(
                "missing {} (brought back by {})",
                requirement.what,
                requirement.fix
            );
        }
    }
    Ok(())
}
