//! The programs' own trouble, told to user space through aya-log: a full map, a tracepoint
//! field or kernel memory that could not be read. Only error branches call [`report`], so a
//! program that meets no trouble runs no instruction of this module.
//!
//! A storm must cost little and say little: each kind of trouble writes at most one line a
//! second on each CPU, and each line carries how many of that kind the CPU kept quiet since
//! its previous one. A failure that is not let through costs a call, one per-CPU array
//! lookup and the clock. User space parses that count (the line is "<count> <message>") and
//! limits the lines again across CPUs.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::PerCpuArray};
use aya_log_ebpf::warn;

/// Shortest time between two lines of one kind of trouble on one CPU.
const QUIET_NS: u64 = 1_000_000_000;

/// Each kind of trouble, at its own index of `TROUBLE_THROTTLE`.
#[derive(Clone, Copy)]
#[repr(u32)]
pub(crate) enum Trouble {
    TcpListenersFull,
    TcpSocksFull,
    UdpSocksFull,
    TcpListenedFull,
    UdpListenedFull,
    ContactedFull,
    RemotesSeenFull,
    ConnectionsSeenFull,
    ExecutedFull,
    IfTrafficFull,
    StateProtocol,
    StateOldstate,
    StateNewstate,
    StateFamily,
    StateSport,
    StateDport,
    StateSaddr,
    StateDaddr,
    StateSaddrV6,
    StateDaddrV6,
    StateSkaddr,
    StateSock,
    SockNetns,
    SkbNetns,
    ExecFilename,
    ExecPath,
}

impl Trouble {
    const COUNT: u32 = Self::ExecPath as u32 + 1;

    /// What went wrong, naming the map or the field, and what it costs the report.
    #[inline(always)]
    fn message(self) -> &'static str {
        match self {
            Self::TcpListenersFull => {
                "TCP_LISTENERS is full: a listener is read from sock_diag until it is tracked"
            }
            Self::TcpSocksFull => {
                "TCP_SOCKS is full: a connection is read from sock_diag until it is tracked"
            }
            Self::UdpSocksFull => "UDP_SOCKS is full: a bound UDP socket is not tracked",
            Self::TcpListenedFull => {
                "TCP_LISTENED is full: a listening port is left out of the interval's ports"
            }
            Self::UdpListenedFull => {
                "UDP_LISTENED is full: a bound UDP port is left out of the interval's ports"
            }
            Self::ContactedFull => {
                "CONTACTED is full: a remote contacted is left out of the interval's list"
            }
            Self::RemotesSeenFull => {
                "REMOTES_SEEN is full: a remote address is left out of the interval's list"
            }
            Self::ConnectionsSeenFull => {
                "CONNECTIONS_SEEN is full: a connection is left out of the interval's list"
            }
            Self::ExecutedFull => {
                "EXECUTED is full: an executable is left out of the interval's list"
            }
            Self::IfTrafficFull => {
                "IF_TRAFFIC is full: an interface's traffic counts in the totals only"
            }
            Self::StateProtocol => {
                "cannot read field protocol of sock:inet_sock_set_state: a TCP state change is missed"
            }
            Self::StateOldstate => {
                "cannot read field oldstate of sock:inet_sock_set_state: a TCP state change is missed"
            }
            Self::StateNewstate => {
                "cannot read field newstate of sock:inet_sock_set_state: a TCP state change is missed"
            }
            Self::StateFamily => {
                "cannot read field family of sock:inet_sock_set_state: a TCP state change is missed"
            }
            Self::StateSport => {
                "cannot read field sport of sock:inet_sock_set_state: a TCP state change is missed"
            }
            Self::StateDport => {
                "cannot read field dport of sock:inet_sock_set_state: a TCP state change is missed"
            }
            Self::StateSaddr => {
                "cannot read field saddr of sock:inet_sock_set_state: a TCP state change is missed"
            }
            Self::StateDaddr => {
                "cannot read field daddr of sock:inet_sock_set_state: a TCP state change is missed"
            }
            Self::StateSaddrV6 => {
                "cannot read field saddr_v6 of sock:inet_sock_set_state: a TCP state change is missed"
            }
            Self::StateDaddrV6 => {
                "cannot read field daddr_v6 of sock:inet_sock_set_state: a TCP state change is missed"
            }
            Self::StateSkaddr => {
                "cannot read field skaddr of sock:inet_sock_set_state: a socket's namespace is unknown"
            }
            Self::StateSock => {
                "cannot read the socket of a TCP state change: a TCP state change is missed"
            }
            Self::SockNetns => "cannot read the namespace of a socket",
            Self::SkbNetns => "cannot read the namespace of a packet's device",
            Self::ExecFilename => {
                "cannot read field filename of sched:sched_process_exec: an executable is left out"
            }
            Self::ExecPath => "cannot read the path of an executed file: an executable is left out",
        }
    }
}

/// One kind of trouble on one CPU.
#[repr(C)]
struct Throttle {
    /// bpf_ktime_get_ns of its last line; 0 before the first.
    logged_ns: u64,
    /// Occurrences kept quiet since that line.
    quiet: u64,
}

#[map(name = "m14")]
static TROUBLE_THROTTLE: PerCpuArray<Throttle> = PerCpuArray::with_max_entries(Trouble::COUNT, 0);

/// Tells user space of `trouble`, unless this CPU told it of that kind less than a second
/// ago.
#[inline(always)]
pub(crate) fn report(trouble: Trouble) {
    tern_trouble(trouble as u32);
}

/// [`report`]'s body as a global function: the verifier checks it once per program, on its
/// own, rather than again on every path through every error branch, which made the TCP
/// program too large to verify. Not `#[cold]`: that moves it to a section of its own
/// (.text.unlikely.), where aya 0.14 resolves its calls to the memory builtins wrongly.
/// Returns 0: a global function must return a scalar.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tern_trouble(kind: u32) -> u32 {
    if kind >= Trouble::COUNT {
        return 0;
    }
    // SAFETY: Trouble is repr(u32) with the discriminants 0 to COUNT - 1, and kind is one.
    let trouble: Trouble = unsafe { core::mem::transmute(kind) };
    if let Some(quiet) = let_through(kind) {
        // aya-log-ebpf 0.2 writes to its ring buffer, which needs no program context.
        warn!(&(), "{} {}", quiet, trouble.message());
    }
    0
}

/// How many of `kind` were kept quiet before this one, when this one may be logged.
#[inline(always)]
fn let_through(kind: u32) -> Option<u64> {
    let slot = TROUBLE_THROTTLE.get_ptr_mut(kind)?;
    // SAFETY: the helper takes no argument.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a per-CPU value, touched by this CPU only. Programs that interrupt one another
    // on a CPU (a tracepoint in a softirq over one in a system call) could race on a kind
    // both meet, which loses one count at most.
    unsafe {
        if (*slot).logged_ns != 0 && now.wrapping_sub((*slot).logged_ns) < QUIET_NS {
            (*slot).quiet += 1;
            return None;
        }
        let quiet = (*slot).quiet;
        (*slot).logged_ns = now;
        (*slot).quiet = 0;
        Some(quiet)
    }
}
