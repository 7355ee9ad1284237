//! Kernel programs: loads the eBPF object built from agent-ebpf (embedded at build time) and
//! attaches the traffic counters to TC ingress and egress of every interface tern counts,
//! following interfaces as they come and go. Reads no counter itself.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result};
use aya::{
    Ebpf, include_bytes_aligned,
    maps::{MapData, PerCpuArray, PerCpuHashMap},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        tc::{
            NlOptions, SchedClassifierLinkId, TcAttachOptions, TcError, qdisc_add_clsact,
            qdisc_detach_program,
        },
    },
    util::KernelVersion,
};
use log::{debug, info, warn};
use tern_common::IfTraffic;

use crate::interfaces::{Interface, LinkEvent};

static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tern-ebpf"));

const INGRESS: &str = "tc_ingress";
const EGRESS: &str = "tc_egress";

/// The maps the collector reads; their fds stay valid for the life of the process.
pub struct TrafficMaps {
    pub per_interface: PerCpuHashMap<MapData, u32, IfTraffic>,
    pub overflow: PerCpuArray<MapData, IfTraffic>,
}

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
}

struct Attachment {
    name: String,
    /// None when the link child holds the links.
    links: Option<(SchedClassifierLinkId, SchedClassifierLinkId)>,
}

pub struct Probes {
    ebpf: Ebpf,
    include_loopback: bool,
    new_interfaces: NewInterfaces,
    attached: HashMap<u32, Attachment>,
    /// Interfaces already said to be left out, so each is logged once.
    ignored: HashSet<u32>,
}

impl Probes {
    pub fn load(include_loopback: bool) -> Result<(Self, TrafficMaps)> {
        let mut ebpf = Ebpf::load(OBJECT).context("loading tern's eBPF object into the kernel")?;
        for name in [INGRESS, EGRESS] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the eBPF object"))?
                .try_into()?;
            program
                .load()
                .with_context(|| format!("the kernel refused program {name}"))?;
        }
        let per_interface = PerCpuHashMap::try_from(
            ebpf.take_map("IF_TRAFFIC")
                .context("map IF_TRAFFIC missing from the eBPF object")?,
        )?;
        let overflow = PerCpuArray::try_from(
            ebpf.take_map("IF_TRAFFIC_OVERFLOW")
                .context("map IF_TRAFFIC_OVERFLOW missing from the eBPF object")?,
        )?;
        let probes = Self {
            ebpf,
            include_loopback,
            new_interfaces: NewInterfaces::Attach,
            attached: HashMap::new(),
            ignored: HashSet::new(),
        };
        Ok((
            probes,
            TrafficMaps {
                per_interface,
                overflow,
            },
        ))
    }

    /// Decides who attaches to interfaces seen from now on.
    pub fn set_new_interfaces(&mut self, mode: NewInterfaces) {
        self.new_interfaces = mode;
    }

    /// Follows one link change. A failure concerns that interface only: it is logged and
    /// the others keep counting.
    pub fn apply(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Present(interface) => {
                if interface.loopback && !self.include_loopback {
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
                    NewInterfaces::Ignore => {
                        if self.ignored.insert(interface.index) {
                            info!(
                                "new interface {} is not counted: started with \
                                 --static-interfaces",
                                interface.name
                            );
                        }
                    }
                }
            }
            LinkEvent::Removed(index) => {
                self.ignored.remove(&index);
                if let Some(gone) = self.attached.remove(&index) {
                    // The link child only follows; the main process says it.
                    match self.new_interfaces {
                        NewInterfaces::Attach => debug!("interface {} is gone", gone.name),
                        _ => info!("interface {} is gone", gone.name),
                    }
                    if let Some(links) = gone.links {
                        self.detach(links);
                    }
                }
            }
        }
    }

    /// Indexes of the interfaces being counted.
    pub fn counted(&self) -> impl Iterator<Item = u32> + '_ {
        self.attached.keys().copied()
    }

    pub fn counted_names(&self) -> Vec<&str> {
        let mut names: Vec<_> = self.attached.values().map(|a| a.name.as_str()).collect();
        names.sort_unstable();
        names
    }

    fn attach(
        &mut self,
        interface: &Interface,
    ) -> Result<(SchedClassifierLinkId, SchedClassifierLinkId)> {
        // TCX (6.6+) links die with tern's fds and run before legacy filters; either way tern
        // goes first and returns "unspecified", so every other program still sees the packet.
        let tcx = tcx_available();
        if !tcx {
            match qdisc_add_clsact(&interface.name) {
                Ok(()) => {}
                Err(err) if err.to_string().contains("exists") => {}
                Err(err) => return Err(err).context("adding the clsact qdisc"),
            }
            // Legacy filters outlive their process: remove those a previous tern left.
            for (kind, name) in [
                (TcAttachType::Ingress, INGRESS),
                (TcAttachType::Egress, EGRESS),
            ] {
                match qdisc_detach_program(&interface.name, kind, name) {
                    Ok(()) => info!("removed a stale {name} filter from {}", interface.name),
                    Err(TcError::IoError(err)) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => return Err(err).context("removing a stale filter"),
                }
            }
        }
        let options = || {
            if tcx {
                TcAttachOptions::TcxOrder(LinkOrder::first())
            } else {
                TcAttachOptions::Netlink(NlOptions::default())
            }
        };
        let ingress = self
            .program(INGRESS)?
            .attach_with_options(&interface.name, TcAttachType::Ingress, options())
            .context("attaching to TC ingress")?;
        let egress = match self.program(EGRESS)?.attach_with_options(
            &interface.name,
            TcAttachType::Egress,
            options(),
        ) {
            Ok(egress) => egress,
            Err(err) => {
                let _ = self.program(INGRESS)?.detach(ingress);
                return Err(err).context("attaching to TC egress");
            }
        };
        Ok((ingress, egress))
    }

    fn detach(&mut self, (ingress, egress): (SchedClassifierLinkId, SchedClassifierLinkId)) {
        // The kernel already released the hooks of a deleted device; this frees tern's side.
        for (name, link) in [(INGRESS, ingress), (EGRESS, egress)] {
            if let Ok(program) = self.program(name) {
                let _ = program.detach(link);
            }
        }
    }

    fn program(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        Ok(self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?)
    }
}
