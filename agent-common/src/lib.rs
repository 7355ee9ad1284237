// Over 400 lines: the one crate both halves (the BPF target and user space) can share; each
// module holds one stage's types, and `names` the roles of every program and map.
//! Types shared by tern's eBPF programs and its user-space loader, one module per stage
//! (the kernel side's `traffic`, `tcp`/`udp` and `signals` programs), plus the counters
//! every program adds to and the names user space finds the object's parts by.
//!
//! Everything here crosses the kernel boundary as raw bytes, so each type is `#[repr(C)]`
//! with explicit integer fields only: no bool, enum or implicit padding.
#![no_std]

pub mod traffic {
    //! What the TC programs count per interface.

    /// Per-interface traffic, one value per CPU: in the `IF_TRAFFIC_BY_INDEX` per-CPU array
    /// at the interface's index when it is under `IF_TRAFFIC_SLOTS`, else in the
    /// `IF_TRAFFIC` per-CPU hash map keyed by ifindex. Packets are wire segments
    /// (max(1, gso_segs)) and bytes are the frame bytes those segments carry on the wire,
    /// link-layer header included.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct IfTraffic {
        pub bytes_in: u64,
        pub packets_in: u64,
        pub bytes_out: u64,
        pub packets_out: u64,
    }

    #[cfg(feature = "user")]
    // SAFETY: IfTraffic is repr(C), all fields are u64, so there is no padding and every
    // bit pattern is valid.
    unsafe impl aya::Pod for IfTraffic {}

    /// Capacity of `IF_TRAFFIC`. Entries of deleted interfaces are removed by user space
    /// once their last counts are read.
    pub const IF_TRAFFIC_MAX_ENTRIES: u32 = 4096;

    /// Slots of `IF_TRAFFIC_BY_INDEX`: interfaces 1 to 1023 by index, and slot 0 for
    /// traffic of interfaces that found `IF_TRAFFIC` full. 32 KiB per CPU.
    pub const IF_TRAFFIC_SLOTS: u32 = 1024;
}

pub mod sockets {
    //! The TCP and UDP sockets the `tcp` and `udp` programs keep, the interval sets they
    //! fill, and where this kernel keeps the fields they read.

    /// Address families as the kernel numbers them, as `TcpSock`, `UdpSock` and `Seen`
    /// carry them.
    pub const AF_INET: u16 = 2;
    pub const AF_INET6: u16 = 10;

    /// `TcpSock::kind` of a listening socket.
    pub const TCP_LISTENER: u16 = 1;
    /// `TcpSock::kind` of an established connection.
    pub const TCP_CONNECTION: u16 = 2;

    /// Slots of `FOLLOWED`, the namespace the programs record (0 in a slot: every
    /// namespace), one per way the programs name a namespace. `FOLLOWED_BY_ADDRESS` holds
    /// it as the TCP programs name it, and the signals' tracepoints with them: by the
    /// address of its `struct net`, read through the socket (which needs no cookie, so no
    /// Linux 5.12 and no BTF), or by its cookie where the TCP sock_ops program stands in
    /// for the TCP tracepoint. `FOLLOWED_BY_COOKIE` holds it as the UDP cgroup hooks name
    /// it: by its cookie, from a helper.
    pub const FOLLOWED_BY_ADDRESS: u32 = 0;
    pub const FOLLOWED_BY_COOKIE: u32 = 1;
    pub const FOLLOWED_SLOTS: u32 = 2;

    /// A TCP socket that is listening or established now: the key of `TCP_LISTENERS`
    /// (listeners) and `TCP_SOCKS` (connections).
    /// Listeners have a zero remote address and port. Ports are in host order; addresses
    /// as on the wire, an IPv4 address in the first 4 bytes.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct TcpSock {
        /// Network namespace, as the TCP programs name it (`FOLLOWED_BY_ADDRESS`).
        pub netns: u64,
        pub local_addr: [u8; 16],
        pub remote_addr: [u8; 16],
        pub local_port: u16,
        pub remote_port: u16,
        pub family: u16,
        pub kind: u16,
    }

    #[cfg(feature = "user")]
    // SAFETY: repr(C), integer fields laid out without padding, so every bit pattern is
    // valid.
    unsafe impl aya::Pod for TcpSock {}

    /// `TcpState::flags`: how a connection was opened.
    pub const OPENED_INBOUND: u32 = 1;
    pub const OPENED_OUTBOUND: u32 = 2;
    /// Found by the start-up snapshot rather than seen opening.
    pub const SEEDED: u32 = 4;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct TcpState {
        /// Interval (epoch) in which the connection opened; never matches for seeded ones.
        pub opened_epoch: u32,
        pub flags: u32,
        /// Listening sockets sharing this key (SO_REUSEPORT), 1 for a connection.
        pub count: u64,
    }

    #[cfg(feature = "user")]
    // SAFETY: as for TcpSock.
    unsafe impl aya::Pod for TcpState {}

    /// A UDP socket that is bound and not connected, the value of `UDP_SOCKS` (keyed by
    /// the socket cookie).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct UdpSock {
        /// Network namespace, by cookie (`FOLLOWED_BY_COOKIE`).
        pub netns: u64,
        pub local_addr: [u8; 16],
        pub local_port: u16,
        pub family: u16,
        pub flags: u32,
    }

    #[cfg(feature = "user")]
    // SAFETY: as for TcpSock.
    unsafe impl aya::Pod for UdpSock {}

    /// An entry of an interval set: something seen during interval `epoch`. Used for ports
    /// that listened (`port` set, `addr` the local address) and remote addresses (`port`
    /// 0).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct Seen {
        /// Network namespace, as the program that filled the set names it.
        pub netns: u64,
        pub addr: [u8; 16],
        pub epoch: u32,
        pub port: u16,
        pub family: u16,
    }

    #[cfg(feature = "user")]
    // SAFETY: as for TcpSock.
    unsafe impl aya::Pod for Seen {}

    /// Capacity of the sets of current sockets: TCP connections (`TCP_SOCKS`) and bound UDP
    /// sockets (`UDP_SOCKS`).
    pub const SOCKS_MAX_ENTRIES: u32 = 65_536;
    /// Capacity of `TCP_LISTENERS`, a map of its own so that connections, which anyone who
    /// can connect can multiply, never take a listener's place.
    pub const TCP_LISTENERS_MAX_ENTRIES: u32 = 16_384;
    /// Capacity of each interval set; what does not fit is counted in `DetailsDropped`.
    pub const SEEN_MAX_ENTRIES: u32 = 16_384;

    /// Where `sock:inet_sock_set_state` keeps each field, read from its format file at
    /// start, and where `struct sock` keeps its namespace, from the kernel's BTF or the
    /// layout every kernel shares. The `sk_*` members of the socket, from the BTF, are what
    /// the raw tracepoint reads; they are set only where it is attached.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct SockStateOffsets {
        pub skaddr: u32,
        pub oldstate: u32,
        pub newstate: u32,
        pub sport: u32,
        pub dport: u32,
        pub family: u32,
        pub protocol: u32,
        pub saddr: u32,
        pub daddr: u32,
        pub saddr_v6: u32,
        pub daddr_v6: u32,
        /// Offset of `skc_net` in `struct sock`; 0 when unknown, and then namespaces cannot
        /// be told apart.
        pub sock_net: u32,
        /// The size of the kernel's pointers and longs (kprobe arguments): 4 on a 32-bit
        /// kernel, else 8 (0, unset, reads as 8).
        pub pointer_size: u32,
        pub sk_daddr: u32,
        /// `inet_saddr` and `inet_sport` of `struct inet_sock`, which the tracepoint's record
        /// takes: a socket's bound port (`skc_num`) is cleared before its last change is
        /// traced.
        pub sk_saddr: u32,
        /// In network order, as `sk_dport`.
        pub sk_sport: u32,
        pub sk_dport: u32,
        pub sk_family: u32,
        /// A whole 16-bit member (Linux 5.6 on; a bitfield before).
        pub sk_protocol: u32,
        pub sk_v6_daddr: u32,
        pub sk_v6_rcv_saddr: u32,
    }

    #[cfg(feature = "user")]
    // SAFETY: as for TcpSock.
    unsafe impl aya::Pod for SockStateOffsets {}

    #[cfg(feature = "user")]
    mod user {
        use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

        use super::{AF_INET, AF_INET6};

        /// An address as the kernel programs store it, as reported: an IPv4-mapped IPv6
        /// address is shown as the IPv4 address.
        pub fn ip(family: u16, bytes: &[u8; 16]) -> IpAddr {
            if family == AF_INET {
                IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
            } else {
                IpAddr::V6(Ipv6Addr::from(*bytes)).to_canonical()
            }
        }

        /// An address as the kernel programs store it: its family, and IPv4 in the first
        /// four bytes.
        pub fn raw(addr: IpAddr) -> (u16, [u8; 16]) {
            let mut bytes = [0; 16];
            match addr {
                IpAddr::V4(v4) => {
                    bytes[..4].copy_from_slice(&v4.octets());
                    (AF_INET, bytes)
                }
                IpAddr::V6(v6) => (AF_INET6, v6.octets()),
            }
        }
    }

    #[cfg(feature = "user")]
    pub use user::{ip, raw};
}

pub mod signals {
    //! What the security signals' programs read and record.

    /// Longest executable path recorded; longer ones are cut.
    pub const EXEC_PATH_LEN: usize = 128;

    /// Where the tracepoints of the security signals keep their fields; where `struct
    /// sk_buff` and `struct net_device` lead to a namespace, and `struct sk_buff` to the
    /// TCP header (from BTF; 0 when unknown); and where the ICMP header sits in the kernel's
    /// `struct icmp_bxm`, which the ICMP kprobe reads.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct SignalOffsets {
        pub reset_skb: u32,
        pub reset_sk: u32,
        pub retransmit_sk: u32,
        pub icmp_skb: u32,
        pub icmp_type: u32,
        pub icmp_code: u32,
        pub exec_filename: u32,
        pub skb_dev: u32,
        pub dev_net: u32,
        pub skb_head: u32,
        pub skb_transport_header: u32,
        pub icmp_param_header: u32,
    }

    #[cfg(feature = "user")]
    // SAFETY: repr(C), u32 fields only: no padding, and every bit pattern is valid.
    unsafe impl aya::Pod for SignalOffsets {}
}

pub mod counters {
    //! The event counters every program adds to.

    /// The cumulative per-CPU event counters, each at its own index of `COUNTERS`.
    #[repr(u32)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum Counter {
        OpenedInbound,
        OpenedOutbound,
        /// Connections that opened and closed within one interval.
        ShortLived,
        /// Entries an interval set or a socket set could not take.
        DetailsDropped,
        /// TCP resets this host sent.
        ResetsSent,
        /// Segments and datagrams that reached no socket: a reset without a socket (TCP) or
        /// an ICMP port unreachable (UDP). Mostly connection attempts to closed ports.
        ClosedPortAttempts,
        /// Outbound connections that went from SYN_SENT to CLOSE without being established.
        FailedConnects,
        Retransmits,
        Execs,
        /// TCP listeners and connections that `TCP_LISTENERS` or `TCP_SOCKS` could not take
        /// (also counted in `DetailsDropped`): until the maps hold every socket again, user
        /// space reads the sockets from sock_diag.
        TcpSocksFull,
    }

    impl Counter {
        /// Every counter, in index order.
        pub const ALL: [Counter; 10] = [
            Counter::OpenedInbound,
            Counter::OpenedOutbound,
            Counter::ShortLived,
            Counter::DetailsDropped,
            Counter::ResetsSent,
            Counter::ClosedPortAttempts,
            Counter::FailedConnects,
            Counter::Retransmits,
            Counter::Execs,
            Counter::TcpSocksFull,
        ];
        /// The map's length.
        pub const COUNT: u32 = Self::ALL.len() as u32;

        pub const fn index(self) -> u32 {
            self as u32
        }
    }
}

pub mod changes {
    //! Which maps changed: per-CPU counts of the inserts and deletes that change a map's
    //! keys, so that user space reads a map again only when it may have changed.

    /// A map whose changes are counted, at its own index of `CHANGES`.
    #[repr(u32)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Changed {
        TcpListeners,
        TcpSocks,
        UdpSocks,
        TcpListened,
        UdpListened,
        RemotesSeen,
        ConnectionsSeen,
        Contacted,
        Executed,
    }

    impl Changed {
        /// The map's length.
        pub const COUNT: u32 = Changed::Executed as u32 + 1;

        pub const fn index(self) -> u32 {
            self as u32
        }
    }
}

pub mod names {
    //! The names user space finds the object's globals, maps and programs by. The kernel
    //! side cannot spell them with these constants (`#[map]`, `#[unsafe(no_mangle)]` and the
    //! program macros name an item by its identifier), so a unit test of the loader checks
    //! the built object against them.
    //!
    //! Programs and maps go by short names that say nothing of what they watch (`bpftool`
    //! shows them to anyone on the device); [`ROLES`] says which is which, and so does the
    //! README's table, which a test keeps equal to it.

    /// Load-time globals, set by user space before loading.
    pub const SOCK_STATE_OFFSETS: &str = "SOCK_STATE_OFFSETS";
    pub const RECORD_CONNECTIONS: &str = "RECORD_CONNECTIONS";
    pub const SIGNAL_OFFSETS: &str = "SIGNAL_OFFSETS";

    /// Maps.
    pub const IF_TRAFFIC_BY_INDEX: &str = "m00";
    pub const IF_TRAFFIC: &str = "m01";
    pub const TCP_LISTENERS: &str = "m02";
    pub const TCP_SOCKS: &str = "m03";
    pub const UDP_SOCKS: &str = "m04";
    pub const TCP_LISTENED: &str = "m05";
    pub const UDP_LISTENED: &str = "m06";
    pub const REMOTES_SEEN: &str = "m07";
    pub const CONNECTIONS_SEEN: &str = "m08";
    pub const CONTACTED: &str = "m09";
    pub const EXECUTED: &str = "m10";
    pub const COUNTERS: &str = "m11";
    pub const EPOCH: &str = "m12";
    pub const FOLLOWED: &str = "m13";
    pub const TROUBLE_THROTTLE: &str = "m14";
    pub const CHANGES: &str = "m15";
    /// The programs' own log: aya-log's ring buffer (read by aya-log, which names it so).
    pub const AYA_LOGS: &str = "AYA_LOGS";

    /// Programs.
    pub const TC_INGRESS: &str = "p00";
    pub const TC_EGRESS: &str = "p01";
    pub const INET_SOCK_SET_STATE: &str = "p02";
    pub const INET_SOCK_SET_STATE_RAW: &str = "p18";
    pub const TCP_SOCK_OPS: &str = "p03";
    pub const UDP_POST_BIND4: &str = "p04";
    pub const UDP_POST_BIND6: &str = "p05";
    pub const UDP_SENDMSG4: &str = "p06";
    pub const UDP_SENDMSG6: &str = "p07";
    pub const UDP_CONNECT4: &str = "p08";
    pub const UDP_CONNECT6: &str = "p09";
    pub const UDP_RELEASE: &str = "p10";
    pub const TCP_SEND_RESET: &str = "p11";
    pub const TCP_SEND_RESET_PROBE: &str = "p12";
    pub const TCP_ACTIVE_RESET_PROBE: &str = "p13";
    pub const ICMP_SEND: &str = "p14";
    pub const ICMP_GLUE_BITS_PROBE: &str = "p15";
    pub const TCP_RETRANSMIT_SKB: &str = "p16";
    pub const SCHED_PROCESS_EXEC: &str = "p17";

    /// Every program and map of tern's with its source file and what it does.
    pub const ROLES: &[(&str, &str, &str)] = &[
        (
            TC_INGRESS,
            "traffic.rs",
            "counts packets and bytes entering an interface (TC ingress)",
        ),
        (
            TC_EGRESS,
            "traffic.rs",
            "counts packets and bytes leaving an interface (TC egress)",
        ),
        (
            INET_SOCK_SET_STATE,
            "tcp.rs",
            "follows TCP sockets' states (tracepoint sock:inet_sock_set_state)",
        ),
        (
            INET_SOCK_SET_STATE_RAW,
            "tcp.rs",
            "follows TCP sockets' states where the BTF describes struct sock (raw tracepoint inet_sock_set_state)",
        ),
        (
            TCP_SOCK_OPS,
            "tcp.rs",
            "follows TCP sockets where tracepoints cannot run (sock_ops, cgroup-v2 root)",
        ),
        (
            UDP_POST_BIND4,
            "udp.rs",
            "UDP sockets bound, IPv4 (cgroup post_bind4)",
        ),
        (
            UDP_POST_BIND6,
            "udp.rs",
            "UDP sockets bound, IPv6 (cgroup post_bind6)",
        ),
        (
            UDP_SENDMSG4,
            "udp.rs",
            "UDP datagrams sent unconnected, IPv4 (cgroup sendmsg4)",
        ),
        (
            UDP_SENDMSG6,
            "udp.rs",
            "UDP datagrams sent unconnected, IPv6 (cgroup sendmsg6)",
        ),
        (
            UDP_CONNECT4,
            "udp.rs",
            "UDP sockets connected, IPv4 (cgroup connect4)",
        ),
        (
            UDP_CONNECT6,
            "udp.rs",
            "UDP sockets connected, IPv6 (cgroup connect6)",
        ),
        (
            UDP_RELEASE,
            "udp.rs",
            "UDP sockets closed (cgroup sock_release)",
        ),
        (
            TCP_SEND_RESET,
            "signals.rs",
            "TCP resets sent (tracepoint tcp:tcp_send_reset)",
        ),
        (
            TCP_SEND_RESET_PROBE,
            "signals.rs",
            "TCP resets sent without a socket (kprobe)",
        ),
        (
            TCP_ACTIVE_RESET_PROBE,
            "signals.rs",
            "TCP resets sent on a socket (kprobe)",
        ),
        (
            ICMP_SEND,
            "signals.rs",
            "ICMP errors sent (tracepoint icmp:icmp_send)",
        ),
        (
            ICMP_GLUE_BITS_PROBE,
            "signals.rs",
            "ICMP errors sent where the tracepoint is missing (kprobe)",
        ),
        (
            TCP_RETRANSMIT_SKB,
            "signals.rs",
            "TCP retransmissions (tracepoint tcp:tcp_retransmit_skb)",
        ),
        (
            SCHED_PROCESS_EXEC,
            "signals.rs",
            "programs executed (tracepoint sched:sched_process_exec)",
        ),
        (
            IF_TRAFFIC_BY_INDEX,
            "traffic.rs",
            "traffic per interface index (per CPU)",
        ),
        (
            IF_TRAFFIC,
            "traffic.rs",
            "traffic of interfaces beyond the indexed ones (per CPU)",
        ),
        (TCP_LISTENERS, "tcp.rs", "TCP listeners now"),
        (TCP_SOCKS, "tcp.rs", "TCP connections now"),
        (UDP_SOCKS, "udp.rs", "bound UDP sockets now"),
        (
            TCP_LISTENED,
            "tcp.rs",
            "TCP ports listened on during the interval",
        ),
        (
            UDP_LISTENED,
            "udp.rs",
            "UDP ports bound during the interval",
        ),
        (
            REMOTES_SEEN,
            "tcp.rs",
            "remote addresses of the interval's connections",
        ),
        (
            CONNECTIONS_SEEN,
            "tcp.rs",
            "connections established during the interval",
        ),
        (
            CONTACTED,
            "tcp.rs",
            "addresses and ports the interval's outbound attempts contacted",
        ),
        (EXECUTED, "signals.rs", "paths executed during the interval"),
        (
            COUNTERS,
            "shared.rs",
            "the programs' event counters (per CPU)",
        ),
        (
            EPOCH,
            "shared.rs",
            "the interval's number, set by user space",
        ),
        (FOLLOWED, "shared.rs", "the network namespaces followed"),
        (
            TROUBLE_THROTTLE,
            "trouble.rs",
            "when each kind of trouble was last logged (per CPU)",
        ),
        (
            CHANGES,
            "shared.rs",
            "how often each socket map and interval set changed (per CPU)",
        ),
    ];
}
