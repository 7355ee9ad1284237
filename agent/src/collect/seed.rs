//! The start-up seed: sockets that existed before the programs were attached, taken from
//! the sock_diag snapshot and put into the kernel maps, so sockets older than tern are
//! known too. Where the programs see no close of theirs (the TCP sock_ops program), their
//! closes are found by sock_diag at each report.

use std::{collections::HashMap, hash::Hash};

use anyhow::{Context, Result};
use aya::{
    Pod,
    maps::{HashMap as BpfHashMap, MapData},
};
use tern_common::sockets::{SEEDED, TCP_CONNECTION, TCP_LISTENER, TcpSock, TcpState, UdpSock, raw};

use crate::{
    host::sockdiag::{self, DiagSocket},
    kernel::maps::{NetnsNames, TcpMaps, UdpMaps},
};

/// bpf_map_update_elem flag: only if the key is absent.
const NOEXIST: u64 = aya_obj::generated::BPF_NOEXIST as u64;

/// Sockets seeded: TCP listeners, TCP connections, UDP sockets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seeded {
    pub listeners: usize,
    pub connections: usize,
    pub udp: usize,
}

impl std::ops::AddAssign for Seeded {
    fn add_assign(&mut self, other: Self) {
        self.listeners += other.listeners;
        self.connections += other.connections;
        self.udp += other.udp;
    }
}

/// Puts the sockets of this thread's namespace (named `names`) into the kernel maps; a family
/// without a name there is not followed by its programs, and not seeded. A socket that
/// closes between the snapshot and its insertion would stay forever, so a second snapshot
/// afterwards removes seeded sockets it no longer lists.
pub fn seed(tcp_maps: &mut TcpMaps, udp_maps: &mut UdpMaps, names: NetnsNames) -> Result<Seeded> {
    let snapshot = || -> Result<_> {
        let tcp_states = [sockdiag::TCP_LISTEN, sockdiag::TCP_ESTABLISHED];
        let udp_states = [sockdiag::TCP_CLOSE];
        let tcp = match names.by_address {
            Some(netns) => tcp_seeds(
                &sockdiag::dump(sockdiag::IPPROTO_TCP, sockdiag::states(&tcp_states))?,
                netns,
            ),
            None => HashMap::new(),
        };
        let udp = match names.by_cookie {
            Some(netns) => udp_seeds(
                &sockdiag::dump(sockdiag::IPPROTO_UDP, sockdiag::states(&udp_states))?,
                netns,
            ),
            None => HashMap::new(),
        };
        Ok((tcp, udp))
    };
    let (tcp, udp) = snapshot()?;
    for (key, state) in &tcp {
        let _ = tcp_maps.socks.insert(key, state, NOEXIST);
    }
    for (cookie, sock) in &udp {
        let _ = udp_maps.socks.insert(cookie, sock, NOEXIST);
    }

    let (tcp_again, udp_again) = snapshot()?;
    unseed(&mut tcp_maps.socks, &tcp, &tcp_again, |s| s.flags);
    unseed(&mut udp_maps.socks, &udp, &udp_again, |s| s.flags);
    let listeners = tcp.keys().filter(|k| k.kind == TCP_LISTENER).count();
    Ok(Seeded {
        listeners,
        connections: tcp.len() - listeners,
        udp: udp.len(),
    })
}

/// Removes the seeded TCP sockets of this thread's namespace (named `netns`) that sock_diag
/// no longer lists: they closed. For programs that see no close of a socket older than
/// them; those they follow are left to them.
pub fn forget_closed(socks: &mut BpfHashMap<MapData, TcpSock, TcpState>, netns: u64) -> Result<()> {
    let open = tcp_seeds(
        &sockdiag::dump(
            sockdiag::IPPROTO_TCP,
            sockdiag::states(&[sockdiag::TCP_LISTEN, sockdiag::TCP_ESTABLISHED]),
        )?,
        netns,
    );
    // Keys only, then the value of the few not listed: one syscall per socket, not two.
    let unlisted: Vec<TcpSock> = socks
        .keys()
        .collect::<Result<Vec<_>, _>>()
        .context("reading the TCP_SOCKS map")?
        .into_iter()
        .filter(|key| key.netns == netns && !open.contains_key(key))
        .collect();
    for key in &unlisted {
        if socks
            .get(key, 0)
            .is_ok_and(|state| state.flags & SEEDED != 0)
        {
            let _ = socks.remove(key);
        }
    }
    Ok(())
}

/// Removes from `map` the seeded entries that the second snapshot (`again`) no longer lists.
fn unseed<K: Pod + Eq + Hash, V: Pod>(
    map: &mut BpfHashMap<MapData, K, V>,
    seeded: &HashMap<K, V>,
    again: &HashMap<K, V>,
    flags: impl Fn(&V) -> u32,
) {
    for key in seeded.keys().filter(|k| !again.contains_key(k)) {
        if map.get(key, 0).is_ok_and(|v| flags(&v) & SEEDED != 0) {
            let _ = map.remove(key);
        }
    }
}

fn tcp_seeds(sockets: &[DiagSocket], netns: u64) -> HashMap<TcpSock, TcpState> {
    let mut seeds: HashMap<TcpSock, TcpState> = HashMap::new();
    for s in sockets {
        let listener = s.state == sockdiag::TCP_LISTEN;
        let (family, local) = raw(s.local);
        let mut key = TcpSock {
            netns,
            local_addr: local,
            local_port: s.local_port,
            family,
            kind: if listener {
                TCP_LISTENER
            } else {
                TCP_CONNECTION
            },
            ..TcpSock::default()
        };
        if !listener {
            key.remote_addr = raw(s.remote).1;
            key.remote_port = s.remote_port;
        }
        seeds
            .entry(key)
            .and_modify(|state| state.count += 1)
            .or_insert(TcpState {
                opened_epoch: u32::MAX,
                flags: SEEDED,
                count: 1,
            });
    }
    seeds
}

fn udp_seeds(sockets: &[DiagSocket], netns: u64) -> HashMap<u64, UdpSock> {
    sockets
        .iter()
        .filter(|s| s.local_port != 0)
        .map(|s| {
            let (family, local_addr) = raw(s.local);
            let sock = UdpSock {
                netns,
                local_addr,
                local_port: s.local_port,
                family,
                flags: SEEDED,
            };
            (s.cookie, sock)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuseport_listeners_seed_as_one_key_with_a_count() {
        let listener = DiagSocket {
            state: sockdiag::TCP_LISTEN,
            local: "0.0.0.0".parse().unwrap(),
            local_port: 80,
            remote: "0.0.0.0".parse().unwrap(),
            remote_port: 0,
            cookie: 1,
        };
        let seeds = tcp_seeds(
            &[
                listener.clone(),
                DiagSocket {
                    cookie: 2,
                    ..listener
                },
            ],
            9,
        );
        assert_eq!(seeds.len(), 1);
        let (key, state) = seeds.iter().next().unwrap();
        assert_eq!((key.kind, key.netns, state.count), (TCP_LISTENER, 9, 2));
        assert_eq!(state.flags, SEEDED);
    }
}
