//! Traffic without eBPF: `network_stats` from the interfaces' own 64-bit counters, the
//! growth since the previous report summed over the interfaces tern counts. Owns the last
//! readings; exact at report time, as the kernel's counters are.

use std::collections::HashMap;

use anyhow::Result;

use super::{ByInterface, delta::delta};
use crate::{
    host::linkstats::{self, LinkStats},
    report::NetworkStats,
};

/// Traffic since the previous report on every interface of tern's namespace (loopback
/// only when asked).
///
/// An interface that appears after a reading is new: its counters started at zero when it
/// was created, so all it holds is growth. One that disappears takes with it what it counted
/// since the previous reading: the kernel frees its counters, and nothing reads them any
/// more. An interface moved in from another namespace brings its counters along, and what
/// they held counts as growth. A counter that goes backwards was reset by its driver: what
/// it holds now is what it counted since (`delta` tells a reset from a wrap past 2^64).
/// Bytes are as each driver counts them: loopback's leave out the Ethernet header that
/// Ethernet drivers count.
pub struct LinkTraffic {
    include_loopback: bool,
    /// Counters of each counted interface at the previous reading, by index, in the order
    /// `NetworkStats::add` takes them.
    last: HashMap<u32, [u64; 4]>,
}

impl LinkTraffic {
    /// Takes the first reading, so the first report covers its own interval only.
    pub fn start(include_loopback: bool) -> Result<Self> {
        let mut traffic = Self {
            include_loopback,
            last: HashMap::new(),
        };
        traffic.advance(&linkstats::dump()?);
        Ok(traffic)
    }

    /// The readings the next delta is taken from, by interface index.
    pub fn readings(&mut self) -> &mut HashMap<u32, [u64; 4]> {
        &mut self.last
    }

    /// The traffic since the previous call, on each interface. A failed read changes
    /// nothing, so the next call still counts this interval.
    pub fn collect(&mut self) -> Result<ByInterface> {
        Ok(self.advance(&linkstats::dump()?))
    }

    /// Records `links` as the latest reading; returns the growth since the previous one.
    fn advance(&mut self, links: &[LinkStats]) -> ByInterface {
        let mut each = Vec::with_capacity(links.len());
        let mut last = HashMap::with_capacity(links.len());
        for link in links {
            if link.interface.loopback && !self.include_loopback {
                continue;
            }
            let c = link.counters;
            let now = [c.rx_bytes, c.rx_packets, c.tx_bytes, c.tx_packets];
            let before = self
                .last
                .get(&link.interface.index)
                .copied()
                .unwrap_or_default();
            let mut stats = NetworkStats::default();
            stats.add(std::array::from_fn(|i| delta(before[i], now[i])));
            each.push((link.interface.index, stats));
            last.insert(link.interface.index, now);
        }
        // Interfaces gone since are dropped, so an index used again counts from zero.
        self.last = last;
        each
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, net::UdpSocket, os::fd::FromRawFd};

    use serde_json::Value;

    use super::*;
    use crate::collect::total;
    use crate::host::{
        links::Interface,
        linkstats::Counters,
        test_netns::{in_fresh_netns, sh, veth},
    };

    fn link(index: u32, loopback: bool, rx: (u64, u64), tx: (u64, u64)) -> LinkStats {
        LinkStats {
            interface: Interface {
                index,
                name: format!("if{index}"),
                loopback,
            },
            counters: Counters {
                rx_packets: rx.0,
                rx_bytes: rx.1,
                tx_packets: tx.0,
                tx_bytes: tx.1,
            },
        }
    }

    fn stats(packets_in: u64, bytes_in: u64, packets_out: u64, bytes_out: u64) -> NetworkStats {
        NetworkStats {
            bytes_in,
            bytes_out,
            packets_in,
            packets_out,
        }
    }

    #[test]
    fn growth_is_summed_over_the_counted_interfaces() {
        let mut traffic = LinkTraffic {
            include_loopback: false,
            last: HashMap::new(),
        };
        traffic.advance(&[
            link(1, true, (10, 1000), (10, 1000)),
            link(2, false, (5, 500), (6, 600)),
            link(3, false, (1, 100), (2, 200)),
        ]);
        let grown = traffic.advance(&[
            link(1, true, (90, 9000), (90, 9000)),
            link(2, false, (7, 700), (9, 900)),
            link(3, false, (4, 400), (2, 200)),
        ]);
        assert_eq!(total(&grown), stats(5, 500, 3, 300));
    }

    #[test]
    fn loopback_counts_when_included() {
        let mut traffic = LinkTraffic {
            include_loopback: true,
            last: HashMap::new(),
        };
        traffic.advance(&[link(1, true, (10, 1000), (10, 1000))]);
        let grown = traffic.advance(&[link(1, true, (12, 1200), (12, 1200))]);
        assert_eq!(total(&grown), stats(2, 200, 2, 200));
    }

    #[test]
    fn a_counter_going_backwards_counts_from_its_new_value() {
        let mut traffic = LinkTraffic {
            include_loopback: false,
            last: HashMap::new(),
        };
        traffic.advance(&[link(2, false, (5_000, 9_000_000), (4_000, 8_000_000))]);
        let grown = traffic.advance(&[link(2, false, (3, 300), (4_001, 8_000_100))]);
        assert_eq!(total(&grown), stats(3, 300, 1, 100));
        let grown = traffic.advance(&[link(2, false, (4, 350), (4_001, 8_000_100))]);
        assert_eq!(total(&grown), stats(1, 50, 0, 0));
    }

    #[test]
    fn interfaces_that_appear_count_from_zero_and_those_gone_are_forgotten() {
        let mut traffic = LinkTraffic {
            include_loopback: false,
            last: HashMap::new(),
        };
        traffic.advance(&[link(2, false, (100, 10_000), (100, 10_000))]);
        // 5 appears with what it counted since its creation; 2 is gone.
        let grown = traffic.advance(&[link(5, false, (3, 300), (4, 400))]);
        assert_eq!(total(&grown), stats(3, 300, 4, 400));
        // A new interface given index 2 again starts from zero, not from the old one's
        // counters.
        let grown = traffic.advance(&[
            link(2, false, (150, 15_000), (1, 100)),
            link(5, false, (3, 300), (4, 400)),
        ]);
        assert_eq!(total(&grown), stats(150, 15_000, 1, 100));
    }

    /// Sends `count` Ethernet frames of `len` bytes out of `dev` through a packet socket: a
    /// veth pair carries them to its other end whatever they hold.
    fn send_frames(dev: &str, count: u64, len: usize) {
        // SAFETY: socket() has no memory preconditions; the fd is owned right away.
        let socket = unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
            assert!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            std::os::fd::OwnedFd::from_raw_fd(fd)
        };
        let name = std::ffi::CString::new(dev).unwrap();
        // SAFETY: a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(index, 0, "no interface {dev}");
        // SAFETY: sockaddr_ll is plain data; all zeros is a valid value.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = i32::try_from(index).unwrap();
        to.sll_halen = 6;
        // Locally administered addresses and the local experimental EtherType.
        let mut frame = vec![0u8; len];
        frame[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        for _ in 0..count {
            // SAFETY: frame and to are valid for the lengths given.
            let sent = unsafe {
                libc::sendto(
                    std::os::fd::AsRawFd::as_raw_fd(&socket),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const to).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            assert_eq!(sent, len as isize, "{}", std::io::Error::last_os_error());
        }
    }

    /// `count` datagrams of `payload` bytes over loopback to a bound socket, all received.
    fn loopback_datagrams(count: u64, payload: usize) {
        let receiver = UdpSocket::bind(("127.0.0.1", 0)).unwrap();
        let sender = UdpSocket::bind(("127.0.0.1", 0)).unwrap();
        let mut buf = vec![0u8; payload];
        for _ in 0..count {
            sender
                .send_to(&buf, receiver.local_addr().unwrap())
                .unwrap();
            assert_eq!(receiver.recv(&mut buf).unwrap(), payload);
        }
    }

    /// Each interface's counters as `ip -s link` shows them, by name.
    fn ip_stats() -> HashMap<String, NetworkStats> {
        let json: Value = serde_json::from_str(&sh("ip", &["-s", "-j", "link", "show"])).unwrap();
        json.as_array()
            .expect("a link list")
            .iter()
            .map(|link| {
                let s = &link["stats64"];
                let n = |dir: &str, field: &str| s[dir][field].as_u64().expect("a counter");
                (
                    link["ifname"].as_str().unwrap().to_owned(),
                    stats(
                        n("rx", "packets"),
                        n("rx", "bytes"),
                        n("tx", "packets"),
                        n("tx", "bytes"),
                    ),
                )
            })
            .collect()
    }

    /// The growth from `before` to `after` of the interfaces named `names`.
    fn grown(
        before: &HashMap<String, NetworkStats>,
        after: &HashMap<String, NetworkStats>,
        names: &[&str],
    ) -> NetworkStats {
        let mut total = NetworkStats::default();
        for name in names {
            let (a, b) = (after[*name], before.get(*name).copied().unwrap_or_default());
            total.add([
                a.bytes_in - b.bytes_in,
                a.packets_in - b.packets_in,
                a.bytes_out - b.bytes_out,
                a.packets_out - b.packets_out,
            ]);
        }
        total
    }

    /// IPv6 off, so nothing but the test's frames crosses a veth pair.
    fn ipv6_off() {
        for key in ["all", "default"] {
            sh(
                "sysctl",
                &["-qw", &format!("net.ipv6.conf.{key}.disable_ipv6=1")],
            );
        }
    }

    #[test]
    fn network_stats_are_the_growth_of_the_links_counters() {
        in_fresh_netns(|| {
            ipv6_off();
            veth("a0", "a1");
            // Before start: never in a report.
            send_frames("a0", 3, 100);
            loopback_datagrams(2, 50);
            let mut without_loopback = LinkTraffic::start(false).unwrap();
            let mut with_loopback = LinkTraffic::start(true).unwrap();
            let before = ip_stats();

            send_frames("a0", 10, 100);
            loopback_datagrams(7, 64);
            let after = ip_stats();
            let counted = without_loopback.collect().unwrap();
            let all = with_loopback.collect().unwrap();

            assert_eq!(total(&counted), grown(&before, &after, &["a0", "a1"]));
            assert_eq!(total(&all), grown(&before, &after, &["a0", "a1", "lo"]));
            // What the test sent: each frame leaves a0 and enters a1; each datagram leaves
            // and enters loopback, which counts from the IPv4 header (28 bytes with UDP's):
            // it takes the Ethernet header off before counting.
            assert_eq!(total(&counted), stats(10, 1000, 10, 1000));
            let looped = 7 * (64 + 28);
            assert_eq!(total(&all), stats(17, 1000 + looped, 17, 1000 + looped));
            assert_eq!(
                total(&without_loopback.collect().unwrap()),
                stats(0, 0, 0, 0)
            );
        });
    }

    #[test]
    fn links_that_appear_count_from_creation_and_those_gone_count_no_more() {
        in_fresh_netns(|| {
            ipv6_off();
            let mut traffic = LinkTraffic::start(false).unwrap();
            veth("b0", "b1");
            send_frames("b0", 4, 80);
            let first = traffic.collect().unwrap();
            let none = HashMap::new();
            assert_eq!(total(&first), grown(&none, &ip_stats(), &["b0", "b1"]));
            assert_eq!(total(&first), stats(4, 320, 4, 320));

            // Counted since the previous report by a pair that is gone at the next.
            send_frames("b0", 5, 80);
            sh("ip", &["link", "del", "b0"]);
            veth("c0", "c1");
            send_frames("c0", 6, 90);
            let second = traffic.collect().unwrap();
            assert_eq!(total(&second), grown(&none, &ip_stats(), &["c0", "c1"]));
            assert_eq!(total(&second), stats(6, 540, 6, 540));
        });
    }
}
