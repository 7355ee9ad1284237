//! Start-up check of what tern needs from the kernel, before anything is loaded or
//! attached (the capabilities to load are the process's, checked by `process`). One table, one entry per requirement: a program type or
//! hook a new probe uses is one more row. A missing piece is named in one line with the fix.

use anyhow::{Result, bail};
use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_map_supported, is_program_supported},
    util::KernelVersion,
};

struct Requirement {
    /// What is missing, as the error line names it.
    what: &'static str,
    present: fn() -> bool,
    /// What the operator does about it.
    fix: &'static str,
}

const REQUIREMENTS: &[Requirement] = &[
    Requirement {
        what: "Linux 5.8 or later (CAP_BPF)",
        present: || KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 8, 0)),
        fix: "run tern on a newer kernel",
    },
    Requirement {
        what: "BPF programs of type sched_cls (TC)",
        present: || is_program_supported(ProgramType::SchedClassifier).unwrap_or(false),
        fix: "use a kernel built with CONFIG_BPF_SYSCALL and CONFIG_NET_CLS_BPF",
    },
    Requirement {
        what: "BPF programs of types tracepoint, cgroup_sock and cgroup_sock_addr",
        present: || {
            [
                ProgramType::TracePoint,
                ProgramType::CgroupSock,
                ProgramType::CgroupSockAddr,
            ]
            .into_iter()
            .all(|p| is_program_supported(p).unwrap_or(false))
        },
        fix: "use a kernel built with CONFIG_BPF_EVENTS and CONFIG_CGROUP_BPF",
    },
    Requirement {
        what: "hash, per-CPU hash and per-CPU array BPF maps",
        present: || {
            [MapType::Hash, MapType::PerCpuHash, MapType::PerCpuArray]
                .into_iter()
                .all(|m| is_map_supported(m).unwrap_or(false))
        },
        fix: "use a kernel built with CONFIG_BPF_SYSCALL",
    },
    Requirement {
        what: "the tracepoint sock:inet_sock_set_state (tracefs)",
        present: || super::offsets::tracepoint_format(super::offsets::SET_STATE).is_some(),
        fix: "mount tracefs: mount -t tracefs nodev /sys/kernel/tracing (Linux 4.16 or later)",
    },
    Requirement {
        what: "a cgroup v2 hierarchy",
        present: || super::programs::cgroup2_mounted(),
        fix: "mount one: mount -t cgroup2 none /sys/fs/cgroup (or boot with \
              systemd.unified_cgroup_hierarchy=1)",
    },
];

/// Checks every requirement; fails on the first one missing.
pub fn check() -> Result<()> {
    for requirement in REQUIREMENTS {
        if !(requirement.present)() {
            bail!(
                "missing {}: {}; nothing was attached",
                requirement.what,
                requirement.fix
            );
        }
    }
    Ok(())
}
