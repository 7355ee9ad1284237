//! Network interfaces of tern's namespace, as rtnetlink tells them: a dump at start, then
//! every link that appears or goes away. Owns the NETLINK_ROUTE socket; knows nothing of
//! eBPF or reports.

use std::os::fd::{AsRawFd, RawFd};

use anyhow::{Context, Result, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkFlags, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// rtnetlink multicast group of link changes (RTNLGRP_LINK).
const RTNLGRP_LINK: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub index: u32,
    pub name: String,
    pub loopback: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link exists (new, or changed: a rename keeps the index).
    Present(Interface),
    Removed(u32),
}

pub struct LinkWatch {
    socket: Socket,
    buf: Vec<u8>,
}

impl LinkWatch {
    /// Subscribes to link changes first, so nothing created during the initial dump is missed.
    pub fn open() -> Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE).context("opening a NETLINK_ROUTE socket")?;
        socket
            .bind(&SocketAddr::new(0, 0))
            .context("binding the NETLINK_ROUTE socket")?;
        socket
            .add_membership(RTNLGRP_LINK)
            .context("subscribing to link changes (RTNLGRP_LINK)")?;
        Ok(Self {
            socket,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// All links of the namespace, plus any change that raced with the dump.
    pub fn dump(&mut self) -> Result<Vec<LinkEvent>> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = 1;
        let mut request = NetlinkMessage::new(
            header,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(LinkMessage::default())),
        );
        request.finalize();
        let mut bytes = vec![0; request.buffer_len()];
        request.serialize(&mut bytes);
        self.socket
            .send(&bytes, 0)
            .context("requesting the link list")?;

        let mut events = Vec::new();
        // A dump ends with NLMSG_DONE; the bound keeps a misbehaving kernel from holding us.
        for _ in 0..100_000 {
            if self.receive(0, &mut events)? {
                return Ok(events);
            }
        }
        bail!("the kernel's link list did not end")
    }

    /// Changes that arrived since the last call; never blocks.
    pub fn changes(&mut self) -> Result<Vec<LinkEvent>> {
        let mut events = Vec::new();
        loop {
            match self.receive(libc::MSG_DONTWAIT, &mut events) {
                Ok(_) => {}
                Err(err) => {
                    let io = err.downcast_ref::<std::io::Error>();
                    if io.is_some_and(|e| e.kind() == std::io::ErrorKind::WouldBlock) {
                        return Ok(events);
                    }
                    // The socket overflowed under a burst of changes: some were lost, so
                    // read the whole list again.
                    if io.and_then(std::io::Error::raw_os_error) == Some(libc::ENOBUFS) {
                        log::warn!("missed link changes in a burst; reading the link list again");
                        events.extend(self.dump()?);
                        return Ok(events);
                    }
                    return Err(err);
                }
            }
        }
    }

    /// Reads one datagram; true when it held the end of a dump.
    fn receive(&mut self, flags: libc::c_int, events: &mut Vec<LinkEvent>) -> Result<bool> {
        self.buf.clear();
        let n = self.socket.recv(&mut self.buf, flags)?;
        let mut done = false;
        let mut offset = 0;
        while offset < n {
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..n])
                .context("parsing a link message from the kernel")?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    events.push(LinkEvent::Present(interface(&link)));
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                    events.push(LinkEvent::Removed(link.header.index));
                }
                NetlinkPayload::Done(_) => done = true,
                NetlinkPayload::Error(err) => {
                    bail!("the kernel refused the link list request: {err:?}")
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += (length + 3) & !3;
        }
        Ok(done)
    }
}

impl AsRawFd for LinkWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

fn interface(link: &LinkMessage) -> Interface {
    let name = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        })
        .unwrap_or_default();
    Interface {
        index: link.header.index,
        name,
        loopback: link.header.flags.contains(LinkFlags::Loopback),
    }
}
