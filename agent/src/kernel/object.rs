//! tern's eBPF object, built from agent-ebpf and embedded at build time, and the check that
//! it holds every global, map and program under the name user space asks for.

use aya::include_bytes_aligned;

pub(super) static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tern-ebpf"));

/// Hands the object's pages back to the kernel once it is loaded: it is read once, at load
/// (the loader keeps its own copy of what it needs), and would otherwise stay resident for
/// the life of the process.
pub fn release() {
    // SAFETY: sysconf has no memory preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let start = OBJECT.as_ptr() as usize;
    let first = start.next_multiple_of(page);
    let end = (start + OBJECT.len()) / page * page;
    if end > first {
        // SAFETY: whole pages inside the object, read-only data of this binary's own file
        // mapping that nothing writes: dropping them only means a later read faults the same
        // bytes back in from the file.
        unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_DONTNEED) };
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use tern_common::{names, signals::SignalOffsets, sockets::SockStateOffsets};

    use super::OBJECT;

    /// The kernel side names its items by their identifiers, which cannot be constants:
    /// this keeps the two sides from drifting apart, without loading anything.
    #[test]
    fn the_object_has_the_names_user_space_takes() {
        let mut object = aya_obj::Object::parse(OBJECT).expect("tern's eBPF object parses");
        let programs: BTreeSet<&str> = object.programs.keys().map(String::as_str).collect();
        assert_eq!(
            programs,
            BTreeSet::from([
                names::TC_INGRESS,
                names::TC_EGRESS,
                names::INET_SOCK_SET_STATE,
                names::INET_SOCK_SET_STATE_RAW,
                names::TCP_SOCK_OPS,
                names::UDP_POST_BIND4,
                names::UDP_POST_BIND6,
                names::UDP_SENDMSG4,
                names::UDP_SENDMSG6,
                names::UDP_CONNECT4,
                names::UDP_CONNECT6,
                names::UDP_RELEASE,
                names::TCP_SEND_RESET,
                names::TCP_SEND_RESET_PROBE,
                names::TCP_ACTIVE_RESET_PROBE,
                names::ICMP_SEND,
                names::ICMP_GLUE_BITS_PROBE,
                names::TCP_RETRANSMIT_SKB,
                names::SCHED_PROCESS_EXEC,
            ])
        );
        // Sections of globals (.rodata, .bss) are maps too, named after their section.
        let maps: BTreeSet<&str> = object
            .maps
            .keys()
            .map(String::as_str)
            .filter(|name| !name.starts_with('.'))
            .collect();
        assert_eq!(
            maps,
            BTreeSet::from([
                names::IF_TRAFFIC_BY_INDEX,
                names::IF_TRAFFIC,
                names::TCP_LISTENERS,
                names::TCP_SOCKS,
                names::UDP_SOCKS,
                names::TCP_LISTENED,
                names::UDP_LISTENED,
                names::REMOTES_SEEN,
                names::CONNECTIONS_SEEN,
                names::CONTACTED,
                names::EXECUTED,
                names::COUNTERS,
                names::EPOCH,
                names::FOLLOWED,
                names::AYA_LOGS,
                names::TROUBLE_THROTTLE,
                names::CHANGES,
            ])
        );
        // Patching, as the loader does, refuses a global that is missing or of another size.
        let zeros = |size| vec![0u8; size];
        let (sock_state, signals) = (
            zeros(size_of::<SockStateOffsets>()),
            zeros(size_of::<SignalOffsets>()),
        );
        let record_connections = zeros(size_of::<u32>());
        object
            .patch_map_data(HashMap::from([
                (names::SOCK_STATE_OFFSETS, (&sock_state[..], true)),
                (names::RECORD_CONNECTIONS, (&record_connections[..], true)),
                (names::SIGNAL_OFFSETS, (&signals[..], true)),
            ]))
            .expect("every load-time global is in the object, at its size");
    }

    /// Nothing in the object names what the programs watch: the kernel keeps an object's
    /// BTF (function and type names, source lines) and shows it to anyone with bpftool.
    #[test]
    fn the_object_carries_no_btf_or_debug_information() {
        let object = aya_obj::Object::parse(OBJECT).expect("tern's eBPF object parses");
        assert!(object.btf.is_none() && object.btf_ext.is_none());
        let has = |needle: &[u8]| OBJECT.windows(needle.len()).any(|w| w == needle);
        assert!(!has(b".debug_"), "debug sections");
        for (name, source, _) in names::ROLES {
            assert!(
                name.len() == 3,
                "{name} ({source}) is not a short neutral name"
            );
        }
    }

    /// The README's table tells a reader which kernel name is which, as `ROLES` does.
    #[test]
    fn the_readme_says_which_name_is_which() {
        let readme = include_str!("../../../README.md");
        let rows = readme
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("| `"))
            .filter(|l| {
                let b = l.as_bytes();
                b.len() > 3
                    && matches!(b[0], b'p' | b'm')
                    && b[1..3].iter().all(u8::is_ascii_digit)
                    && b[3] == b'`'
            })
            .count();
        assert_eq!(rows, names::ROLES.len());
        for (name, source, role) in names::ROLES {
            let row = format!("| `{name}` | `{source}` | {role} |");
            assert!(readme.contains(&row), "README lacks {row}");
        }
    }
}
