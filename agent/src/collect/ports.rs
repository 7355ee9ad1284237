//! Ports and the interfaces that hold their addresses: a local address maps to the interface
//! that holds it, a wildcard to none.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr},
};

use log::warn;
use tern_common::sockets::Seen;

use crate::{
    host::links,
    report::{Port, PortList},
};

/// Which interface holds each local address, by name.
pub type Owners = HashMap<IpAddr, String>;

/// This namespace's address owners now; none (logged) when rtnetlink cannot tell.
pub fn owners() -> Owners {
    links::address_owners().unwrap_or_else(|err| {
        warn!("cannot read the interfaces' addresses: {err:#}; interfaces are left out");
        HashMap::new()
    })
}

pub fn port_list(ports: BTreeSet<Port>) -> PortList {
    PortList {
        total: ports.len() as u64,
        ports: ports.into_iter().collect(),
    }
}

pub fn port(number: u16, local: IpAddr, owners: &Owners) -> Port {
    Port {
        port: number,
        interface: interface(local, owners),
    }
}

/// The interface that holds `addr`. A wildcard address has no single interface; any
/// 127.0.0.0/8 address is loopback's, though only 127.0.0.1 is listed on it.
pub fn interface(addr: IpAddr, owners: &Owners) -> Option<String> {
    if addr.is_unspecified() {
        return None;
    }
    owners.get(&addr).cloned().or_else(|| match addr {
        IpAddr::V4(v4) if v4.is_loopback() => owners.get(&IpAddr::V4(Ipv4Addr::LOCALHOST)).cloned(),
        _ => None,
    })
}

/// Ports that listened at the start of the interval, at its end, or in between.
pub fn interval_ports(before: &BTreeSet<u16>, after: &BTreeSet<u16>, seen: &[Seen]) -> Vec<u64> {
    let mut ports: BTreeSet<u16> = before.union(after).copied().collect();
    ports.extend(seen.iter().map(|s| s.port));
    ports.into_iter().map(u64::from).collect()
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn owners() -> Owners {
        HashMap::from([
            ("127.0.0.1".parse().unwrap(), "lo".to_owned()),
            ("::1".parse().unwrap(), "lo".to_owned()),
            ("10.0.0.5".parse().unwrap(), "eth0".to_owned()),
            ("2001:db8::5".parse().unwrap(), "eth0".to_owned()),
        ])
    }

    #[test]
    fn a_wildcard_bind_has_no_interface() {
        for wildcard in ["0.0.0.0", "::"] {
            assert_eq!(interface(wildcard.parse().unwrap(), &owners()), None);
        }
    }

    #[test]
    fn a_bound_address_reports_the_interface_holding_it() {
        let o = owners();
        assert_eq!(
            interface("10.0.0.5".parse().unwrap(), &o).as_deref(),
            Some("eth0")
        );
        assert_eq!(
            interface("2001:db8::5".parse().unwrap(), &o).as_deref(),
            Some("eth0")
        );
        assert_eq!(
            interface("127.0.0.53".parse().unwrap(), &o).as_deref(),
            Some("lo")
        );
        assert_eq!(interface("::1".parse().unwrap(), &o).as_deref(), Some("lo"));
        assert_eq!(interface("192.0.2.1".parse().unwrap(), &o), None);
    }
}
