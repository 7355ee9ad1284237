//! The start-up seed: sockets that existed before the programs were attached, taken from
//! the sock_diag snapshot and put into the kernel maps, so sockets older than tern are
//! known too. Where the programs see no close of theirs (the TCP sock_ops program), their
//! closes are found by sock_diag at each report. The TCP snapshot, keyed as the maps key
//! sockets, is also what the collector compares the maps with while one is full.

use std::collections::HashMap;

use anyhow::{Context, Result};
use aya::{
    Pod,
    maps::{HashMap as BpfHashMap, MapData, MapError},
};
use tern_common::sockets::{SEEDED, TCP_CONNECTION, TCP_LISTENER, TcpSock, TcpState, UdpSock, raw};

use crate::{
    host::sockdiag::{self, DiagSocket},
    kernel::maps::{NetnsNames, TcpMaps, UdpMaps},
};

/// bpf_map_update_elem flag: only if the key is absent.
const NOEXIST: u64 = aya_obj::generated::BPF_NOEXIST as u64;

type TcpMap = BpfHashMap<MapData, TcpSock, TcpState>;

/// Sockets seeded: TCP listeners, TCP connections, UDP sockets; and TCP sockets a full map
/// could not take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seeded {
    pub listeners: usize,
    pub connections: usize,
    pub udp: usize,
    pub tcp_untracked: usize,
}

impl std::ops::AddAssign for Seeded {
    fn add_assign(&mut self, other: Self) {
        self.listeners += other.listeners;
        self.connections += other.connections;
        self.udp += other.udp;
        self.tcp_untracked += other.tcp_untracked;
    }
}

/// Puts the sockets of this thread's namespace (named `names`) into the kernel maps; a family
/// without a name there is not followed by its programs, and not seeded. A socket that
/// closes between the snapshot and its insertion would stay forever, so a second snapshot
/// afterwards removes seeded sockets it no longer lists.
pub fn seed(tcp_maps: &mut TcpMaps, udp_maps: &mut UdpMaps, names: NetnsNames) -> Result<Seeded> {
    let snapshot = || -> Result<_> {
        let udp_states = [sockdiag::TCP_CLOSE];
        let tcp = match names.by_address {
            Some(netns) => open_tcp(netns)?,
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
    let mut tcp_untracked = 0;
    for (key, state) in &tcp {
        if let Err(err) = tcp_map(tcp_maps, key).insert(key, state, NOEXIST)
            && !already_there(&err)
        {
            tcp_untracked += 1;
        }
    }
    for (cookie, sock) in &udp {
        let _ = udp_maps.socks.insert(cookie, sock, NOEXIST);
    }

    let (tcp_again, udp_again) = snapshot()?;
    for key in tcp.keys().filter(|k| !tcp_again.contains_key(k)) {
        forget_seeded(tcp_map(tcp_maps, key), key, |s| s.flags);
    }
    for key in udp.keys().filter(|k| !udp_again.contains_key(k)) {
        forget_seeded(&mut udp_maps.socks, key, |s| s.flags);
    }
    let listeners = tcp.keys().filter(|k| k.kind == TCP_LISTENER).count();
    Ok(Seeded {
        listeners,
        connections: tcp.len() - listeners,
        udp: udp.len(),
        tcp_untracked,
    })
}

/// The TCP sockets of this thread's namespace (named `netns`) that sock_diag lists now, keyed
/// as the programs key them, each with the state seeding would give it.
pub fn open_tcp(netns: u64) -> Result<HashMap<TcpSock, TcpState>> {
    Ok(tcp_seeds(
        &sockdiag::dump(
            sockdiag::IPPROTO_TCP,
            sockdiag::states(&[sockdiag::TCP_LISTEN, sockdiag::TCP_ESTABLISHED]),
        )?,
        netns,
    ))
}

/// The map that holds TCP socket `key`: listeners and connections are kept apart.
pub fn tcp_map<'a>(maps: &'a mut TcpMaps, key: &TcpSock) -> &'a mut TcpMap {
    match key.kind {
        TCP_LISTENER => &mut maps.listeners,
        _ => &mut maps.socks,
    }
}

/// Whether a failed NOEXIST insert failed only because the key was there already.
fn already_there(err: &MapError) -> bool {
    matches!(err, MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::EEXIST))
}

/// Removes the seeded TCP sockets of this thread's namespace (named `netns`) that sock_diag
/// no longer lists: they closed. For programs that see no close of a socket older than
/// them; those they follow are left to them. Returns whether it removed any.
pub fn forget_closed(maps: &mut TcpMaps, netns: u64) -> Result<bool> {
    let open = open_tcp(netns)?;
    let mut removed = false;
    for (map, name) in [
        (&mut maps.listeners, "TCP_LISTENERS"),
        (&mut maps.socks, "TCP_SOCKS"),
    ] {
        // Keys only, then the value of the few not listed: one syscall per socket, not two.
        let unlisted: Vec<TcpSock> = map
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("reading the {name} map"))?
            .into_iter()
            .filter(|key| key.netns == netns && !open.contains_key(key))
            .collect();
        for key in &unlisted {
            removed |= forget_seeded(map, key, |s| s.flags);
        }
    }
    Ok(removed)
}

/// Removes `key` from `map` if it was seeded rather than seen opening (`flags` of its value
/// say which); returns whether it did.
fn forget_seeded<K: Pod, V: Pod>(
    map: &mut BpfHashMap<MapData, K, V>,
    key: &K,
    flags: impl Fn(&V) -> u32,
) -> bool {
    map.get(key, 0).is_ok_and(|v| flags(&v) & SEEDED != 0) && map.remove(key).is_ok()
}

fn tcp_seeds(sockets: &[DiagSocket], netns: u64) -> HashMap<TcpSock, TcpState> {
    let mut seeds: HashMap<TcpSock, TcpState> = HashMap::new();
    for s in sockets {
        seeds
            .entry(tcp_key(s, netns))
            .and_modify(|state| state.count += 1)
            .or_insert(TcpState {
                opened_epoch: u32::MAX,
                flags: SEEDED,
                count: 1,
            });
    }
    seeds
}

/// Hands `f` each TCP socket of this thread's namespace (named `netns`) that sock_diag lists
/// now, keyed as the programs key them, one at a time: a listener of a reuse group once per
/// socket.
pub fn each_open_tcp(netns: u64, mut f: impl FnMut(TcpSock)) -> Result<()> {
    sockdiag::each(
        sockdiag::IPPROTO_TCP,
        sockdiag::states(&[sockdiag::TCP_LISTEN, sockdiag::TCP_ESTABLISHED]),
        |s| f(tcp_key(&s, netns)),
    )
}

/// Socket `s` of namespace `netns` as the programs key it.
fn tcp_key(s: &DiagSocket, netns: u64) -> TcpSock {
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
    key
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
