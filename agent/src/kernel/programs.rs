// Over 400 lines: loading and attaching share the one `Ebpf` handle and its outcomes
// (`Attached`), which the capability ladder reads as a whole.
//! Kernel programs: loads tern's eBPF object (`object`), attaches the traffic counters to
//! TC ingress and egress of every interface tern counts (following interfaces as they come
//! and go), the TCP state tracepoint, raw where the BTF allows (else the TCP sock_ops
//! program), the signals' tracepoints, and the UDP socket hooks on the cgroup-v2 root.
//! Reads no map itself.

use std::{
    collections::{HashMap, HashSet},
    fs::{self, File},
    os::fd::{AsFd, AsRawFd},
    path::Path,
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, KProbe, Program, ProgramError, ProgramType,
        RawTracePoint, SchedClassifier, SockOps, TracePoint, kprobe::KProbeLinkId,
    },
    sys::is_program_supported,
    util::KernelVersion,
};
use log::{debug, info, warn};
use tern_common::{names, sockets::SockStateOffsets};

use super::{
    maps::Maps,
    object::OBJECT,
    offsets::{SET_STATE, SockNet},
    pins::Pins,
    tc::{self, Hook, TcLink},
};
use crate::host::{
    descriptors,
    links::{Interface, LinkEvent},
};

/// The files of the descriptors loading and attaching leave, as /proc names them.
const PROGRAM_FILE: &str = "anon_inode:bpf-prog";
const BTF_FILE: &str = "anon_inode:btf";
const LINK_FILE: &str = "anon_inode:bpf_link";
const PERF_EVENT_FILE: &str = "anon_inode:[perf_event]";

/// The security signals' programs that have only a tracepoint ("category/name").
const SIGNALS: &[(&str, &str)] = &[
    (names::TCP_RETRANSMIT_SKB, "tcp/tcp_retransmit_skb"),
    (names::SCHED_PROCESS_EXEC, "sched/sched_process_exec"),
];

/// The kprobes that count resets where `tcp:tcp_send_reset` misses some: program, kernel
/// function, and whether the function exists only with IPv6.
const RESET_PROBES: &[(&str, &str, bool)] = &[
    (names::TCP_SEND_RESET_PROBE, "tcp_v4_send_reset", false),
    (names::TCP_SEND_RESET_PROBE, "tcp_v6_send_reset", true),
    (
        names::TCP_ACTIVE_RESET_PROBE,
        "tcp_send_active_reset",
        false,
    ),
];

/// The kprobe that counts ICMP port unreachables where `icmp:icmp_send` is missing.
const PORT_UNREACHABLE_PROBES: &[(&str, &str, bool)] =
    &[(names::ICMP_GLUE_BITS_PROBE, "icmp_glue_bits", false)];

const CGROUP_SOCK: &[&str] = &[
    names::UDP_POST_BIND4,
    names::UDP_POST_BIND6,
    names::UDP_RELEASE,
];
const CGROUP_SOCK_ADDR: &[&str] = &[
    names::UDP_SENDMSG4,
    names::UDP_SENDMSG6,
    names::UDP_CONNECT4,
    names::UDP_CONNECT6,
];

/// What to load: whether loopback is counted, and whether the socket programs record every
/// connection of an interval.
pub struct LoadOptions {
    pub include_loopback: bool,
    pub record_connections: bool,
    /// Where the maps that hold counts are pinned (adopted when they are there already).
    pub pins: Option<Pins>,
    /// The names tern's netlink TC filters (kernels without TCX) carry, ingress then egress.
    /// Filters outlive their process, and a tern removes those of its names as stale: the
    /// agent's and the view's differ, so neither removes the other's.
    pub filter_names: [&'static str; 2],
}

/// The agent's TC filter names: its programs' own.
pub const AGENT_FILTERS: [&str; 2] = [names::TC_INGRESS, names::TC_EGRESS];

/// TCX links (6.6+) die with their fds and need no capability once the program is loaded.
pub fn tcx_available() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// Who attaches to an interface that appears after start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewInterfaces {
    /// This process (before the privilege drop, and in the link child).
    Attach,
    /// The link child does; this process only counts them.
    LinkChild,
    /// Nobody: started with --static-interfaces.
    Ignore,
    /// Nobody: the link child is gone.
    Lost,
}

struct Attachment {
    name: String,
    /// None when the link child holds the links.
    links: Option<TcLinks>,
}

/// tern's hold on one interface's TC hooks.
struct TcLinks {
    ingress: TcLink,
    egress: TcLink,
    /// Whether tern added the interface's clsact qdisc (kernels without TCX); it removes it
    /// again when it lets go, unless another program's filter is on it by then.
    added_clsact: bool,
}

pub struct Programs {
    /// None once [`Programs::shed`] let go of it.
    ebpf: Option<Ebpf>,
    /// Whether the TC programs loaded: interfaces are attached only then.
    traffic: bool,
    include_loopback: bool,
    filter_names: [&'static str; 2],
    new_interfaces: NewInterfaces,
    attached: HashMap<u32, Attachment>,
    /// Interfaces already said to be left out, so each is logged once.
    ignored: HashSet<u32>,
    /// Interfaces counted since the last report that are gone: their last packets are still
    /// to be read.
    gone: HashSet<u32>,
    /// The kernel's count of runs of tern's programs it skipped, when last said.
    skipped: u64,
}

/// What a group of programs gives on this kernel: attached, or why not.
pub type Outcome = Result<(), String>;

/// What could be attached, group by group. A group that could not be leaves nothing of
/// its own attached, and its metrics come from elsewhere (`collect`).
pub struct Attached {
    /// The TC programs loaded (they attach per interface as interfaces come).
    pub traffic: Outcome,
    /// The TCP state tracepoint: the kind of program following it ("raw_tracepoint",
    /// "tracepoint"), or why none does.
    pub tcp: Result<&'static str, String>,
    /// The TCP sock_ops program on the cgroup-v2 root, tried only where the tracepoint could
    /// not be attached (both would count every socket twice); None where it was not tried.
    pub tcp_hooks: Option<Outcome>,
    /// The UDP socket hooks on the cgroup-v2 root.
    pub udp: Outcome,
    /// Each signal, by its tracepoint program's name: the kind of program counting it
    /// ("tracepoint", "kprobe"), or why none does.
    pub signals: Vec<(&'static str, Result<&'static str, String>)>,
    /// Whether the kernel's BTF described `struct sock` and the packets' devices (else the
    /// socket's namespace is found by layout, and a packet's not at all).
    pub btf: bool,
}

impl Attached {
    pub fn signal(&self, name: &str) -> Option<&Result<&'static str, String>> {
        self.signals
            .iter()
            .find_map(|(n, outcome)| (*n == name).then_some(outcome))
    }
}

/// A loader that holds no kernel BTF. The object carries no BTF, so nothing in it is
/// relocated against the kernel's; yet `EbpfLoader::new()` always reads and parses it,
/// megabytes that would set the process's peak memory for life. The loader is made in a
/// thread of its own whose root is a directory without the BTF, so it finds none; where
/// that thread cannot change its root, the BTF parsed is dropped at once.
fn loader_without_btf() -> EbpfLoader<'static> {
    let made = std::thread::spawn(|| {
        // SAFETY: unshare(CLONE_FS) gives this thread its own root and working directory,
        // which chroot then changes for this thread alone; both take only constants.
        let _ = unsafe {
            libc::unshare(libc::CLONE_FS) == 0 && libc::chroot(c"/proc/self/fdinfo".as_ptr()) == 0
        };
        let mut loader = EbpfLoader::new();
        loader.btf(None);
        loader
    })
    .join();
    made.unwrap_or_else(|_| {
        let mut loader = EbpfLoader::new();
        loader.btf(None);
        loader
    })
}

impl Programs {
    /// Loads the object and attaches each group it can. An error means no eBPF at all: the
    /// object (its maps) could not be loaded.
    pub fn load(options: &LoadOptions) -> Result<(Self, Maps, Attached)> {
        let tracefs = super::mounts::tracefs().map_err(|e| format!("{e:#}"));
        let members = super::offsets::Members::read();
        let sock_state = match &tracefs {
            Ok(()) => super::offsets::read(&members).map_err(|e| format!("{e:#}")),
            Err(err) => Err(err.clone()),
        };
        let offsets = sock_state.as_ref().map_or_else(
            |_| SockStateOffsets {
                pointer_size: super::offsets::pointer_size(),
                ..SockStateOffsets::default()
            },
            |state| state.offsets,
        );
        let btf = sock_state
            .as_ref()
            .is_ok_and(|state| state.sock_net == SockNet::Btf);
        let signals = super::offsets::read_signals(&members);
        let record_connections = u32::from(options.record_connections);
        let mut loader = loader_without_btf();
        loader
            .override_global(names::SOCK_STATE_OFFSETS, &offsets, true)
            .override_global(names::RECORD_CONNECTIONS, &record_connections, true)
            .override_global(names::SIGNAL_OFFSETS, &signals, true);
        if let Some(pins) = &options.pins {
            for name in super::pins::KEPT {
                loader.map_pin_path(name, pins.path(name));
            }
        }
        let mut ebpf = loader
            .load(OBJECT)
            .context("loading tern's eBPF object into the kernel")?;
        super::log::start(&mut ebpf);
        let traffic = [names::TC_INGRESS, names::TC_EGRESS]
            .into_iter()
            .try_for_each(|name| -> Result<()> {
                let program: &mut SchedClassifier = program(&mut ebpf, name)?;
                program
                    .load()
                    .with_context(|| format!("the kernel refused program {name}"))?;
                Ok(())
            })
            .map_err(|e| format!("{e:#}"));
        let tcp = sock_state.and_then(|state| attach_tcp(&mut ebpf, state.raw));
        let tcp_hooks = tcp
            .is_err()
            .then(|| attach_tcp_hooks(&mut ebpf).map_err(|e| format!("{e:#}")));
        let signals = match &tracefs {
            Ok(()) => attach_signals(&mut ebpf),
            Err(err) => [
                names::TCP_SEND_RESET,
                names::ICMP_SEND,
                names::TCP_RETRANSMIT_SKB,
                names::SCHED_PROCESS_EXEC,
            ]
            .into_iter()
            .map(|name| (name, Err(err.clone())))
            .collect(),
        };
        let udp = attach_udp_hooks(&mut ebpf).map_err(|e| format!("{e:#}"));
        let maps = Maps::take(&mut ebpf)?;
        let programs = Self {
            ebpf: Some(ebpf),
            traffic: traffic.is_ok(),
            include_loopback: options.include_loopback,
            filter_names: options.filter_names,
            new_interfaces: NewInterfaces::Attach,
            attached: HashMap::new(),
            ignored: HashSet::new(),
            gone: HashSet::new(),
            skipped: 0,
        };
        let attached = Attached {
            traffic,
            tcp,
            tcp_hooks,
            udp,
            signals,
            btf,
        };
        Ok((programs, maps, attached))
    }

    /// Whether the TC programs count traffic (they attach as interfaces come).
    pub fn count_traffic(&self) -> bool {
        self.traffic
    }

    /// Decides who attaches to interfaces seen from now on.
    pub fn set_new_interfaces(&mut self, mode: NewInterfaces) {
        self.new_interfaces = mode;
        let holds_filters = self.attached.values().any(|a| a.links.is_some());
        if mode == NewInterfaces::Ignore && holds_filters && !tcx_available() {
            warn!(
                "no process keeps CAP_NET_ADMIN to remove tern's TC filters on this kernel \
                 (TCX needs 6.6): they stay attached after tern exits, until its next start \
                 replaces them"
            );
        }
    }

    /// Follows one link change. A failure concerns that interface only: it is logged and
    /// the others keep counting.
    pub fn apply(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Present(interface) => {
                if !self.traffic || (interface.loopback && !self.include_loopback) {
                    return;
                }
                if let Some(known) = self.attached.get_mut(&interface.index) {
                    known.name = interface.name;
                    return;
                }
                match self.new_interfaces {
                    NewInterfaces::Attach => match self.attach(&interface) {
                        Ok(links) => {
                            info!("counting traffic on {}", interface.name);
                            self.attached.insert(
                                interface.index,
                                Attachment {
                                    name: interface.name,
                                    links: Some(links),
                                },
                            );
                        }
                        Err(err) => warn!("cannot count traffic on {}: {err:#}", interface.name),
                    },
                    NewInterfaces::LinkChild => {
                        // The child says "counting" once it has attached.
                        debug!("{} appeared; the link child attaches it", interface.name);
                        self.attached.insert(
                            interface.index,
                            Attachment {
                                name: interface.name,
                                links: None,
                            },
                        );
                    }
                    NewInterfaces::Ignore | NewInterfaces::Lost => {
                        if self.ignored.insert(interface.index) {
                            let why = match self.new_interfaces {
                                NewInterfaces::Lost => "the link child is gone",
                                _ => "started with --static-interfaces",
                            };
                            info!("new interface {} is not counted: {why}", interface.name);
                        }
                    }
                }
            }
            LinkEvent::Removed(index) => {
                self.ignored.remove(&index);
                if let Some(gone) = self.attached.remove(&index) {
                    self.gone.insert(index);
                    // The link child only follows; the main process says it.
                    match self.new_interfaces {
                        NewInterfaces::Attach => debug!("interface {} is gone", gone.name),
                        _ => info!("interface {} is gone", gone.name),
                    }
                    if let Some(links) = gone.links {
                        detach(links);
                    }
                }
            }
        }
    }

    /// Indexes of the interfaces being counted.
    pub fn counted(&self) -> impl Iterator<Item = u32> + '_ {
        self.attached.keys().copied()
    }

    /// Indexes of the interfaces counted since the last report that are gone.
    pub fn gone(&self) -> &HashSet<u32> {
        &self.gone
    }

    /// Their last packets are read: from now on, gone means gone since this report.
    pub fn clear_gone(&mut self) {
        self.gone.clear();
    }

    /// Says how many runs of tern's tracing programs the kernel skipped since the last time,
    /// by its own count (`recursion_misses` in each program's fdinfo, Linux 5.12 on; none
    /// before): each skipped run is an event not counted.
    pub fn say_skipped(&mut self) {
        let Some(ebpf) = &self.ebpf else {
            return;
        };
        let skipped: u64 = ebpf
            .programs()
            .filter(|(_, program)| {
                matches!(
                    program,
                    Program::TracePoint(_) | Program::RawTracePoint(_) | Program::KProbe(_)
                )
            })
            .filter_map(|(_, program)| program.fd().ok())
            .filter_map(|fd| {
                let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
                recursion_misses(&fs::read_to_string(path).ok()?)
            })
            .sum();
        if skipped > self.skipped {
            warn!(
                "the kernel skipped {} runs of tern's tracing programs since the last report \
                 (one of them was already running on that CPU, or, for a tracepoint, another \
                 tracing program or a map access): this report's TCP events and signals may \
                 be short by up to that many",
                skipped - self.skipped
            );
        }
        self.skipped = skipped;
    }

    pub fn counted_names(&self) -> Vec<&str> {
        let mut names: Vec<_> = self.attached.values().map(|a| a.name.as_str()).collect();
        names.sort_unstable();
        names
    }

    fn attach(&mut self, interface: &Interface) -> Result<TcLinks> {
        // By index: a name may be any bytes, and one that is not UTF-8 is known only lossily.
        let index = interface.index;
        // TCX (6.6+) links die with tern's fds and run before legacy filters; either way tern
        // goes first and returns "unspecified", so every other program still sees the packet.
        let tcx = tcx_available();
        let mut added_clsact = false;
        if !tcx {
            added_clsact = tc::add_clsact(index).context("adding the clsact qdisc")?;
            // Legacy filters outlive their process: remove those a previous tern left.
            for hook in [Hook::Ingress, Hook::Egress] {
                let name = self.filter_name(hook);
                match tc::remove_filters(index, hook, name) {
                    Ok(0) => {}
                    Ok(_) => info!("removed a stale {name} filter from {}", interface.name),
                    Err(err) => {
                        release_clsact(index, &interface.name, added_clsact);
                        return Err(err).context("removing a stale filter");
                    }
                }
            }
        }
        let ingress = match self.attach_hook(index, Hook::Ingress, tcx) {
            Ok(ingress) => ingress,
            Err(err) => {
                release_clsact(index, &interface.name, added_clsact);
                return Err(err);
            }
        };
        let egress = match self.attach_hook(index, Hook::Egress, tcx) {
            Ok(egress) => egress,
            Err(err) => {
                let _ = tc::detach(ingress);
                release_clsact(index, &interface.name, added_clsact);
                return Err(err);
            }
        };
        Ok(TcLinks {
            ingress,
            egress,
            added_clsact,
        })
    }

    /// Attaches the program of `hook` to interface `index`: a TCX link where `tcx`, else a
    /// netlink filter under its filter name (by which a later tern finds it stale).
    fn attach_hook(&mut self, index: u32, hook: Hook, tcx: bool) -> Result<TcLink> {
        let name = self.filter_name(hook);
        let program = self.program(tc_program(hook))?.fd()?.as_fd();
        match tcx {
            true => tc::attach_tcx(program, index, hook),
            false => tc::attach_filter(program, name, index, hook),
        }
        .with_context(|| format!("attaching to TC {hook}"))
    }

    /// Lets go of every interface this process attached to: its filters (which, unlike TCX
    /// links, would outlive it) and the clsact qdiscs it added that nothing else uses.
    fn release_all(&mut self) {
        let held: Vec<(u32, Attachment)> = self.attached.drain().collect();
        for (index, attachment) in held {
            let Some(links) = attachment.links else {
                continue;
            };
            let added_clsact = links.added_clsact;
            detach(links);
            release_clsact(index, &attachment.name, added_clsact);
            debug!("let go of {}", attachment.name);
        }
    }

    fn program(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        let ebpf = self
            .ebpf
            .as_mut()
            .context("internal error: the programs were let go of")?;
        program(ebpf, name)
    }

    /// In the main process, once the link child (if any) is forked: lets go of every
    /// descriptor that only loading and attaching need (programs, BTF), and of the links as
    /// well where `links_elsewhere` (the link child holds them, and so keeps the attachments
    /// alive). aya can neither close a program whose links live on nor let go of a link
    /// without detaching it, which on older kernels would detach it for every process (a
    /// perf event disabled, a cgroup program detached): its handle is forgotten, and the
    /// descriptors it held are closed by kind.
    pub fn shed(&mut self, links_elsewhere: bool) {
        std::mem::forget(self.ebpf.take());
        let mut kinds = vec![PROGRAM_FILE, BTF_FILE];
        if links_elsewhere {
            for attachment in self.attached.values_mut() {
                std::mem::forget(attachment.links.take());
            }
            kinds.extend([LINK_FILE, PERF_EVENT_FILE]);
        }
        match descriptors::close(&kinds) {
            Ok(closed) => debug!("closed {closed} descriptors that only attaching needs"),
            Err(err) => warn!(
                "{err:#}; the main process keeps the programs' descriptors, which only \
                 attaching needs"
            ),
        }
    }
}

impl Drop for Programs {
    /// The process that attaches lets go when it ends: the link child, or this process
    /// before the fork (a start that failed). After the fork the main process holds no
    /// CAP_NET_ADMIN and leaves that to the child.
    fn drop(&mut self) {
        if self.new_interfaces == NewInterfaces::Attach {
            self.release_all();
        }
    }
}

/// The traffic program of `hook`.
impl Programs {
    /// The name of tern's netlink filter on `hook`.
    fn filter_name(&self, hook: Hook) -> &'static str {
        match hook {
            Hook::Ingress => self.filter_names[0],
            Hook::Egress => self.filter_names[1],
        }
    }
}

fn tc_program(hook: Hook) -> &'static str {
    match hook {
        Hook::Ingress => names::TC_INGRESS,
        Hook::Egress => names::TC_EGRESS,
    }
}

/// Detaches tern's programs from one interface. On a deleted device the kernel already
/// released the hooks and the qdisc; this frees tern's side.
fn detach(links: TcLinks) {
    for (hook, link) in [(Hook::Ingress, links.ingress), (Hook::Egress, links.egress)] {
        if let Err(err) = tc::detach(link) {
            debug!("detaching from TC {hook}: {err}");
        }
    }
}

/// Removes the clsact qdisc of interface `index` (`name`) if tern `added` it and no other
/// program's filter is on it; a qdisc that was there before tern is never touched.
fn release_clsact(index: u32, name: &str, added: bool) {
    if !added {
        return;
    }
    match tc::remove_unused_clsact(index) {
        Ok(true) => debug!("removed the clsact qdisc of {name}"),
        Ok(false) => info!("left the clsact qdisc on {name}: another program's filter is on it"),
        Err(err) => warn!("cannot remove the clsact qdisc tern added to {name}: {err}"),
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))?;
    Ok(program.try_into()?)
}

/// Attaches the security signals' programs: each to its tracepoint, and the resets' and
/// port unreachables' to kprobes where their tracepoint misses some or is missing. A signal
/// this kernel offers no hook for stays 0, said in one warning line.
fn attach_signals(ebpf: &mut Ebpf) -> Vec<(&'static str, Result<&'static str, String>)> {
    use super::offsets::{ICMP_SEND, SEND_RESET, reset_tracepoint_complete, tracepoint_format};

    let traced = |ebpf: &mut Ebpf, name: &str, event: &str| {
        attach_tracepoint(ebpf, name, event)
            .map(|()| "tracepoint")
            .map_err(|e| format!("{e:#}"))
    };
    let probed = |ebpf: &mut Ebpf, probes| {
        attach_kprobes(ebpf, probes)
            .map(|()| "kprobe")
            .map_err(|e| format!("{e:#}"))
    };
    // A reset tracepoint without the resets no socket sent would undercount: the kprobes
    // stand in, else the kernel's counter does (collect).
    let resets = if reset_tracepoint_complete() {
        traced(ebpf, names::TCP_SEND_RESET, SEND_RESET)
    } else {
        probed(ebpf, RESET_PROBES).map_err(|err| {
            let tracepoint = match tracepoint_format(SEND_RESET) {
                Some(_) => "the tracepoint tcp:tcp_send_reset misses resets no socket sent",
                None => "this kernel has no tracepoint tcp:tcp_send_reset",
            };
            format!("{tracepoint}, and {err}")
        })
    };
    let icmp = match tracepoint_format(ICMP_SEND) {
        Some(_) => traced(ebpf, names::ICMP_SEND, ICMP_SEND),
        None => probed(ebpf, PORT_UNREACHABLE_PROBES)
            .map_err(|err| format!("this kernel has no tracepoint icmp:icmp_send, and {err}")),
    };
    let mut outcomes = vec![(names::TCP_SEND_RESET, resets), (names::ICMP_SEND, icmp)];
    for &(name_of_program, event) in SIGNALS {
        let outcome = match tracepoint_format(event) {
            Some(_) => traced(ebpf, name_of_program, event),
            None => Err(format!(
                "this kernel has no tracepoint {}",
                event.replace('/', ":")
            )),
        };
        outcomes.push((name_of_program, outcome));
    }
    outcomes
}

/// Loads the programs of `probes` (program, kernel function, IPv6 only) and attaches each
/// to its function, all or none: on a failure the ones attached are detached again.
fn attach_kprobes(ebpf: &mut Ebpf, probes: &[(&str, &str, bool)]) -> Result<()> {
    if !is_program_supported(ProgramType::KProbe).unwrap_or(false) {
        bail!("this kernel has no kprobe programs (CONFIG_KPROBES, CONFIG_BPF_EVENTS)");
    }
    let ipv6 = Path::new("/proc/net/if_inet6").exists();
    let mut attached = Vec::new();
    for &(name_of_program, function, needs_ipv6) in probes {
        if needs_ipv6 && !ipv6 {
            continue;
        }
        match attach_kprobe(ebpf, name_of_program, function) {
            Ok(link) => attached.push((name_of_program, link)),
            Err(err) => {
                for (name_of_program, link) in attached {
                    if let Ok(probe) = program::<KProbe>(ebpf, name_of_program) {
                        let _ = probe.detach(link);
                    }
                }
                return Err(err);
            }
        }
    }
    Ok(())
}

/// Attaches program `name_of_program` (loaded on its first use) to kernel function
/// `function`.
fn attach_kprobe(ebpf: &mut Ebpf, name_of_program: &str, function: &str) -> Result<KProbeLinkId> {
    let probe: &mut KProbe = program(ebpf, name_of_program)?;
    if probe.fd().is_err() {
        probe
            .load()
            .with_context(|| format!("the kernel refused program {name_of_program}"))?;
    }
    probe
        .attach(function, 0)
        .with_context(|| format!("cannot probe the kernel function {function}"))
}

/// The `recursion_misses` line of a program's fdinfo.
fn recursion_misses(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("recursion_misses:"))
        .and_then(|n| n.trim().parse().ok())
}

/// Follows TCP state changes with the raw tracepoint where the BTF lets it read the socket,
/// else (or where the kernel refuses it) with the tracepoint.
fn attach_tcp(ebpf: &mut Ebpf, raw: bool) -> Result<&'static str, String> {
    if raw {
        let attached =
            program::<RawTracePoint>(ebpf, names::INET_SOCK_SET_STATE_RAW).and_then(|program| {
                program.load().with_context(|| {
                    format!(
                        "the kernel refused program {}",
                        names::INET_SOCK_SET_STATE_RAW
                    )
                })?;
                program
                    .attach(
                        SET_STATE
                            .split_once('/')
                            .map_or(SET_STATE, |(_, name)| name),
                    )
                    .context("attaching to the raw tracepoint inet_sock_set_state")?;
                Ok(())
            });
        match attached {
            Ok(()) => return Ok("raw_tracepoint"),
            Err(err) => debug!("{err:#}; following TCP states with the tracepoint"),
        }
    }
    attach_tracepoint(ebpf, names::INET_SOCK_SET_STATE, SET_STATE)
        .map(|()| "tracepoint")
        .map_err(|e| format!("{e:#}"))
}

/// Loads program `name_of_program` and attaches it to tracepoint `event` ("category/name").
fn attach_tracepoint(ebpf: &mut Ebpf, name_of_program: &str, event: &str) -> Result<()> {
    let (category, name) = event
        .split_once('/')
        .with_context(|| format!("tracepoint {event} is not named category/name"))?;
    let tracepoint: &mut TracePoint = program(ebpf, name_of_program)?;
    tracepoint
        .load()
        .with_context(|| format!("the kernel refused program {name_of_program}"))?;
    tracepoint
        .attach(category, name)
        .with_context(|| format!("attaching to the tracepoint {category}:{name}"))?;
    Ok(())
}

/// The cgroup-v2 root, where the socket hooks attach.
fn cgroup2_root() -> Result<File> {
    let root = super::mounts::cgroup2_root()?;
    File::open(&root).with_context(|| format!("opening the cgroup-v2 root {root}"))
}

/// The TCP sock_ops program, through a bpf_link like the UDP hooks. The kernel's verifier
/// refuses it where sock_ops programs lack a helper or callback it uses (Linux 5.15 for the
/// namespace cookie); that refusal is the answer, and nothing is left attached.
fn attach_tcp_hooks(ebpf: &mut Ebpf) -> Result<()> {
    let name = names::TCP_SOCK_OPS;
    let hook: &mut SockOps = program(ebpf, name)?;
    let attached = (|| -> Result<()> {
        let cgroup = cgroup2_root()?;
        hook.load().map_err(|e| refused(name, e))?;
        hook.attach(&cgroup, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to the cgroup-v2 root"))?;
        Ok(())
    })();
    if attached.is_err() {
        let _ = hook.unload();
    }
    attached
}

/// Why the kernel refused program `name`, in one line: the verifier's verdict, the last line
/// of its log (the whole log at debug level).
fn refused(name: &str, err: ProgramError) -> anyhow::Error {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            debug!("the verifier's log of {name}:\n{log}");
            match verdict(&log) {
                Some(verdict) => {
                    anyhow!("the kernel refused program {name} ({io_error}): {verdict}")
                }
                None => anyhow!("the kernel refused program {name} ({io_error})"),
            }
        }
        other => anyhow::Error::from(other).context(format!("the kernel refused program {name}")),
    }
}

/// The verifier's verdict in its log: the last line that is not one of its statistics.
fn verdict(log: &str) -> Option<&str> {
    const STATISTICS: &[&str] = &["verification time", "stack depth", "processed "];
    log.lines()
        .rev()
        .map(str::trim)
        .find(|line| !line.is_empty() && !STATISTICS.iter().any(|s| line.starts_with(s)))
}

/// The UDP hooks, all or none: one that fails takes the others attached before it down.
fn attach_udp_hooks(ebpf: &mut Ebpf) -> Result<()> {
    let attached = (|| -> Result<()> {
        let cgroup = cgroup2_root()?;
        // Through a bpf_link (Linux 5.7+), which dies with tern and always shares the hook
        // with other programs; the link takes no attach flags, hence "Single".
        for &name in CGROUP_SOCK {
            let hook: &mut CgroupSock = program(ebpf, name)?;
            hook.load()
                .with_context(|| format!("the kernel refused program {name}"))?;
            hook.attach(&cgroup, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to the cgroup-v2 root"))?;
        }
        for &name in CGROUP_SOCK_ADDR {
            let hook: &mut CgroupSockAddr = program(ebpf, name)?;
            hook.load()
                .with_context(|| format!("the kernel refused program {name}"))?;
            hook.attach(&cgroup, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to the cgroup-v2 root"))?;
        }
        Ok(())
    })();
    if attached.is_err() {
        for &name in CGROUP_SOCK {
            if let Ok(hook) = program::<CgroupSock>(ebpf, name) {
                let _ = hook.unload();
            }
        }
        for &name in CGROUP_SOCK_ADDR {
            if let Ok(hook) = program::<CgroupSockAddr>(ebpf, name) {
                let _ = hook.unload();
            }
        }
    }
    attached
}

#[cfg(test)]
mod tests {
    use super::{recursion_misses, verdict};

    #[test]
    fn the_kernels_count_of_skipped_runs_is_read_from_a_programs_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t2077\nprog_type:\t17\n\
                      prog_jited:\t1\nprog_tag:\t074fbb98b1e67510\nmemlock:\t4096\n\
                      prog_id:\t33095\nrun_time_ns:\t0\nrun_cnt:\t0\n\
                      recursion_misses:\t178\nverified_insns:\t412\n";
        assert_eq!(recursion_misses(fdinfo), Some(178));
        // Before Linux 5.12 the kernel kept no such count.
        let old = fdinfo.replace("recursion_misses:\t178\n", "");
        assert_eq!(recursion_misses(&old), None);
    }

    #[test]
    fn a_refusal_is_said_by_the_verifiers_verdict() {
        let log = "0: (bf) r6 = r1\n20: (85) call bpf_get_netns_cookie#122\n\
                   unknown func bpf_get_netns_cookie#122\nverification time 1155 usec\n\
                   stack depth 128+0\nprocessed 15 insns (limit 1000000) max_states_per_insn 0\n";
        assert_eq!(verdict(log), Some("unknown func bpf_get_netns_cookie#122"));
        assert_eq!(verdict("\n"), None);
    }
}
