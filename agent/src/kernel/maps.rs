//! Typed handles of the maps the collectors read, taken from the loaded object once; their
//! fds stay valid for the life of the process.

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap},
};
use tern_common::{
    names,
    signals::EXEC_PATH_LEN,
    sockets::{FOLLOWED_BY_ADDRESS, FOLLOWED_BY_COOKIE, Seen, TcpSock, TcpState, UdpSock},
    traffic::IfTraffic,
};

pub struct Maps {
    pub traffic: TrafficMaps,
    pub tcp: TcpMaps,
    pub udp: UdpMaps,
    pub signals: SignalMaps,
    pub shared: SharedMaps,
}

pub struct TrafficMaps {
    pub by_index: PerCpuArray<MapData, IfTraffic>,
    pub per_interface: PerCpuHashMap<MapData, u32, IfTraffic>,
}

/// TCP sockets that exist now (listeners and connections apart), and the interval sets of
/// what listened, connected or was connected to.
pub struct TcpMaps {
    pub listeners: HashMap<MapData, TcpSock, TcpState>,
    pub socks: HashMap<MapData, TcpSock, TcpState>,
    pub listened: HashMap<MapData, Seen, u32>,
    pub remotes_seen: HashMap<MapData, Seen, u32>,
    pub connections_seen: HashMap<MapData, TcpSock, u32>,
}

/// Bound UDP sockets that exist now, and the interval set of ports that listened.
pub struct UdpMaps {
    pub socks: HashMap<MapData, u64, UdpSock>,
    pub listened: HashMap<MapData, Seen, u32>,
}

/// The interval sets of the security signals.
pub struct SignalMaps {
    pub contacted: HashMap<MapData, Seen, u32>,
    pub executed: HashMap<MapData, [u8; EXEC_PATH_LEN], u32>,
}

/// The names of one network namespace, as the programs give them: None for a family whose
/// programs are not attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetnsNames {
    /// As the TCP tracepoint and the signals name it (`FOLLOWED_BY_ADDRESS`).
    pub by_address: Option<u64>,
    /// As the UDP cgroup hooks name it (`FOLLOWED_BY_COOKIE`).
    pub by_cookie: Option<u64>,
}

/// What every program shares: the event counters, the counts of changes to the maps, the
/// interval number and the namespace they follow.
pub struct SharedMaps {
    pub counters: PerCpuArray<MapData, u64>,
    pub changes: PerCpuArray<MapData, u64>,
    pub epoch: Array<MapData, u32>,
    pub followed: Array<MapData, u64>,
}

/// The first `N` slots of a per-CPU array of counts, each summed over the CPUs.
pub fn per_cpu_sums<const N: usize>(map: &PerCpuArray<MapData, u64>) -> Result<[u64; N], MapError> {
    let mut sums = [0; N];
    for (i, sum) in sums.iter_mut().enumerate() {
        *sum = map
            .get(&(i as u32), 0)?
            .iter()
            .fold(0u64, |a, v| a.wrapping_add(*v));
    }
    Ok(sums)
}

impl SharedMaps {
    /// Has the programs record namespace `names` only, in each naming they know.
    pub fn follow(&mut self, names: NetnsNames) -> Result<()> {
        for (slot, name) in [
            (FOLLOWED_BY_ADDRESS, names.by_address),
            (FOLLOWED_BY_COOKIE, names.by_cookie),
        ] {
            if let Some(name) = name {
                self.followed
                    .set(slot, name, 0)
                    .context("telling the kernel programs which namespace to follow")?;
            }
        }
        Ok(())
    }

    /// Has the programs that name namespaces as `slot` does record none: a name no
    /// namespace has.
    pub fn follow_none(&mut self, slot: u32) -> Result<()> {
        self.followed
            .set(slot, u64::MAX, 0)
            .context("telling the kernel programs to follow no namespace")
    }
}

impl Maps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let mut take = |name: &str| -> Result<Map> {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the eBPF object"))
        };
        Ok(Self {
            traffic: TrafficMaps {
                by_index: PerCpuArray::try_from(take(names::IF_TRAFFIC_BY_INDEX)?)?,
                per_interface: PerCpuHashMap::try_from(take(names::IF_TRAFFIC)?)?,
            },
            tcp: TcpMaps {
                listeners: HashMap::try_from(take(names::TCP_LISTENERS)?)?,
                socks: HashMap::try_from(take(names::TCP_SOCKS)?)?,
                listened: HashMap::try_from(take(names::TCP_LISTENED)?)?,
                remotes_seen: HashMap::try_from(take(names::REMOTES_SEEN)?)?,
                connections_seen: HashMap::try_from(take(names::CONNECTIONS_SEEN)?)?,
            },
            udp: UdpMaps {
                socks: HashMap::try_from(take(names::UDP_SOCKS)?)?,
                listened: HashMap::try_from(take(names::UDP_LISTENED)?)?,
            },
            signals: SignalMaps {
                contacted: HashMap::try_from(take(names::CONTACTED)?)?,
                executed: HashMap::try_from(take(names::EXECUTED)?)?,
            },
            shared: SharedMaps {
                counters: PerCpuArray::try_from(take(names::COUNTERS)?)?,
                changes: PerCpuArray::try_from(take(names::CHANGES)?)?,
                epoch: Array::try_from(take(names::EPOCH)?)?,
                followed: Array::try_from(take(names::FOLLOWED)?)?,
            },
        })
    }
}
