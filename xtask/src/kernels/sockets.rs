//! The guest's helper for sockets busybox cannot make (`xtask guest-sockets`, run inside the
//! kernel matrix's guests): UDP sockets and datagrams, bare TCP resets through a raw socket,
//! and many TCP connections held at once.

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use clap::Subcommand;

/// The guest's sockets: busybox's nc speaks only TCP, one connection at a time.
#[derive(Subcommand)]
pub enum Sockets {
    /// Bind 0.0.0.0:PORT and keep the socket (unconnected) for up to ten minutes.
    Bind { port: u16 },
    /// Send COUNT datagrams of SIZE bytes to ADDR from a socket bound to a port the kernel
    /// chooses, which it prints.
    Send {
        addr: SocketAddr,
        count: u64,
        size: usize,
    },
    /// Send COUNT bare TCP segments with RST set from FROM to ADDR through a raw socket: a
    /// reset that reaches no socket, which the kernel must not answer.
    Reset {
        from: Ipv4Addr,
        addr: SocketAddrV4,
        count: u64,
    },
    /// Accept TCP connections on 0.0.0.0:PORT and hold them for up to ten minutes.
    Listen { port: u16 },
    /// Open COUNT TCP connections to ADDR and hold them for up to ten minutes.
    Connect { addr: SocketAddr, count: usize },
}

/// How long the guest's sockets stay: longer than any scenario.
const HOLD: Duration = Duration::from_secs(600);
/// More connections than any scenario holds means a mistake, not a scenario.
const MAX_CONNECTIONS: usize = 10_000;

pub fn run(sockets: &Sockets) -> Result<()> {
    match sockets {
        Sockets::Bind { port } => {
            let socket = UdpSocket::bind(("0.0.0.0", *port))?;
            socket.set_read_timeout(Some(Duration::from_secs(1)))?;
            let until = Instant::now() + HOLD;
            let mut buf = [0u8; 2048];
            while Instant::now() < until {
                match socket.recv_from(&mut buf) {
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        }
        Sockets::Send { addr, count, size } => {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            // The port it was bound to: a UDP port of the guest's, while it sends.
            println!("{}", socket.local_addr()?.port());
            let payload = vec![0x5au8; *size];
            for _ in 0..*count {
                socket.send_to(&payload, addr)?;
            }
            Ok(())
        }
        Sockets::Reset { from, addr, count } => send_resets(*from, *addr, *count),
        Sockets::Listen { port } => {
            let listener = TcpListener::bind(("0.0.0.0", *port))?;
            listener.set_nonblocking(true)?;
            let until = Instant::now() + HOLD;
            let mut held = Vec::new();
            while Instant::now() < until {
                match listener.accept() {
                    Ok((stream, _)) if held.len() < MAX_CONNECTIONS => held.push(stream),
                    Ok(_) => bail!("more than {MAX_CONNECTIONS} connections"),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        }
        Sockets::Connect { addr, count } => {
            ensure!(
                *count <= MAX_CONNECTIONS,
                "at most {MAX_CONNECTIONS} connections"
            );
            let held = (0..*count)
                .map(|_| TcpStream::connect_timeout(addr, Duration::from_secs(5)))
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("connecting to {addr}"))?;
            thread::sleep(HOLD);
            drop(held);
            Ok(())
        }
    }
}

/// Source port of the bare resets.
const RESET_PORT: u16 = 40_000;
const TCP_RST: u8 = 0x04;

fn send_resets(from: Ipv4Addr, to: SocketAddrV4, count: u64) -> Result<()> {
    // SAFETY: socket() with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
    ensure!(
        fd >= 0,
        "opening a raw TCP socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd is a fresh descriptor this function owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let address = |ip: Ipv4Addr| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // The source the checksum covers is the one the segments leave with.
    let local = address(from);
    // SAFETY: a valid sockaddr_in of the length given, alive for the call.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&raw const local).cast::<libc::sockaddr>(),
            len,
        )
    };
    ensure!(
        rc == 0,
        "binding the raw socket to {from}: {}",
        std::io::Error::last_os_error()
    );
    let segment = reset_segment(from, to);
    let remote = address(*to.ip());
    for _ in 0..count {
        // SAFETY: the segment and the address are valid for the call's lengths.
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                segment.as_ptr().cast::<libc::c_void>(),
                segment.len(),
                0,
                (&raw const remote).cast::<libc::sockaddr>(),
                len,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error()).context("sending a bare reset");
        }
    }
    Ok(())
}

/// A 20-byte TCP header with only RST set, its checksum over the IPv4 pseudo-header.
fn reset_segment(from: Ipv4Addr, to: SocketAddrV4) -> [u8; 20] {
    let mut segment = [0u8; 20];
    segment[0..2].copy_from_slice(&RESET_PORT.to_be_bytes());
    segment[2..4].copy_from_slice(&to.port().to_be_bytes());
    segment[4..8].copy_from_slice(&1u32.to_be_bytes());
    segment[12] = 5 << 4;
    segment[13] = TCP_RST;
    let checksum = tcp_checksum(from, *to.ip(), &segment);
    segment[16..18].copy_from_slice(&checksum.to_be_bytes());
    segment
}

/// The Internet checksum of `segment` (its checksum field zero) and the pseudo-header.
fn tcp_checksum(from: Ipv4Addr, to: Ipv4Addr, segment: &[u8; 20]) -> u16 {
    let mut pseudo = Vec::with_capacity(12 + segment.len());
    pseudo.extend_from_slice(&from.octets());
    pseudo.extend_from_slice(&to.octets());
    pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(segment);
    let mut sum: u32 = pseudo
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_reset_carries_rst_alone_and_a_checksum_that_sums_to_ones() {
        let (from, to) = (
            Ipv4Addr::new(10, 0, 0, 2),
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 7002),
        );
        let segment = reset_segment(from, to);
        assert_eq!(segment[13], TCP_RST);
        assert_eq!(u16::from_be_bytes([segment[2], segment[3]]), 7002);
        // A receiver sums the segment with its checksum and the pseudo-header: all ones.
        let mut zeroed = segment;
        zeroed[16..18].copy_from_slice(&[0, 0]);
        let checksum = tcp_checksum(from, *to.ip(), &zeroed);
        assert_eq!(checksum.to_be_bytes(), [segment[16], segment[17]]);
        assert_eq!(tcp_checksum(from, *to.ip(), &segment), 0);
    }
}
