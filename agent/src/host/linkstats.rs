//! The interfaces' own traffic counters, as rtnetlink reports them: one RTM_GETLINK dump of
//! tern's namespace, each interface with its 64-bit packet and byte counts (IFLA_STATS64).
//! Cumulative since each interface was created; the growth between readings is the
//! collector's to compute.

use anyhow::{Context, Result, bail};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkFlags, LinkMessage},
};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

use super::{links::Interface, netlink};

/// An interface's cumulative counts, as the kernel's `struct rtnl_link_stats64` holds them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkStats {
    pub interface: Interface,
    pub counters: Counters,
}

/// Every interface of this thread's namespace with its counters, in one dump.
pub fn dump() -> Result<Vec<LinkStats>> {
    let mut socket = Socket::new(NETLINK_ROUTE).context("opening a NETLINK_ROUTE socket")?;
    socket
        .bind_auto()
        .context("binding the NETLINK_ROUTE socket")?;
    let mut buf = Vec::with_capacity(64 * 1024);
    netlink::dump(
        &socket,
        &mut buf,
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
    )
    .context("listing the links and their counters (rtnetlink)")?
    .into_iter()
    .filter_map(|message| match message {
        RouteNetlinkMessage::NewLink(link) => Some(link_stats(&link)),
        _ => None,
    })
    .collect()
}

/// One interface of the dump. The kernel puts IFLA_STATS64 in every link message since
/// Linux 2.6.35, so a message without it is a broken answer, not an idle interface.
fn link_stats(link: &LinkMessage) -> Result<LinkStats> {
    let mut name = None;
    let mut counters = None;
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Stats64(s) => {
                counters = Some(Counters {
                    rx_packets: s.rx_packets,
                    tx_packets: s.tx_packets,
                    rx_bytes: s.rx_bytes,
                    tx_bytes: s.tx_bytes,
                });
            }
            _ => {}
        }
    }
    let index = link.header.index;
    let name = name.unwrap_or_default();
    let Some(counters) = counters else {
        bail!("the kernel listed interface {name:?} (index {index}) without its 64-bit counters");
    };
    Ok(LinkStats {
        interface: Interface {
            index,
            name,
            loopback: link.header.flags.contains(LinkFlags::Loopback),
        },
        counters,
    })
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload};

    use super::*;

    const RTM_NEWLINK: u16 = 16;
    const IFLA_IFNAME: u16 = 3;
    const IFLA_STATS64: u16 = 23;
    const IFF_UP: u32 = 1;
    const IFF_LOOPBACK: u32 = 8;

    fn attribute(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = u16::try_from(4 + payload.len()).unwrap();
        let mut out = [len.to_ne_bytes(), kind.to_ne_bytes()].concat();
        out.extend_from_slice(payload);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    /// An RTM_NEWLINK message as the kernel writes it: header, ifinfomsg, attributes.
    fn new_link(index: i32, flags: u32, attributes: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![0u8, 0];
        body.extend_from_slice(&1u16.to_ne_bytes());
        body.extend_from_slice(&index.to_ne_bytes());
        body.extend_from_slice(&flags.to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        body.extend(attributes.iter().flatten());
        let len = u32::try_from(16 + body.len()).unwrap();
        let mut out = len.to_ne_bytes().to_vec();
        out.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend(body);
        out
    }

    /// `struct rtnl_link_stats64` of `fields` u64s: rx_packets, tx_packets, rx_bytes,
    /// tx_bytes, then errors and drops.
    fn stats64(fields: usize) -> Vec<u8> {
        (1..=fields as u64)
            .flat_map(|i| (i * 1_000_000_007).to_ne_bytes())
            .collect()
    }

    fn decode(bytes: &[u8]) -> Result<LinkStats> {
        let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).unwrap();
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) = message.payload
        else {
            panic!("not a link message: {message:?}");
        };
        link_stats(&link)
    }

    #[test]
    fn stats64_counters_are_decoded_from_the_kernels_layout() {
        let expected = Counters {
            rx_packets: 1_000_000_007,
            tx_packets: 2_000_000_014,
            rx_bytes: 3_000_000_021,
            tx_bytes: 4_000_000_028,
        };
        // 25 fields from Linux 6.9 on (rx_otherhost_dropped), 24 before.
        for fields in [25, 24] {
            let bytes = new_link(
                7,
                IFF_UP,
                &[
                    attribute(IFLA_IFNAME, b"eth0\0"),
                    attribute(IFLA_STATS64, &stats64(fields)),
                ],
            );
            let link = decode(&bytes).unwrap();
            assert_eq!(link.counters, expected, "{fields} fields");
            assert_eq!(
                link.interface,
                Interface {
                    index: 7,
                    name: "eth0".into(),
                    loopback: false
                }
            );
        }
    }

    #[test]
    fn loopback_is_told_by_its_flag() {
        let bytes = new_link(
            1,
            IFF_UP | IFF_LOOPBACK,
            &[
                attribute(IFLA_STATS64, &stats64(25)),
                attribute(IFLA_IFNAME, b"lo\0"),
            ],
        );
        let link = decode(&bytes).unwrap();
        assert!(link.interface.loopback);
        assert_eq!(link.interface.name, "lo");
    }

    #[test]
    fn a_link_without_64_bit_counters_is_an_error_naming_it() {
        let bytes = new_link(3, IFF_UP, &[attribute(IFLA_IFNAME, b"wan0\0")]);
        let err = decode(&bytes).unwrap_err().to_string();
        assert!(err.contains("\"wan0\"") && err.contains("index 3"), "{err}");
    }
}
