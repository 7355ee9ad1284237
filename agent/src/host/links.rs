//! Network interfaces of tern's namespace, as rtnetlink tells them: a dump at start, then
//! every link that appears or goes away; and which interface holds which local address.
//! Owns the NETLINK_ROUTE sockets; knows nothing of eBPF or reports.
//!
//! The main loop sleeps in [`LinkWatch::wait`], so one other descriptor can be served there
//! too ([`wake_also_for`]) without a thread of its own.

use std::{
    cell::RefCell,
    collections::HashMap,
    io::ErrorKind,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd},
    time::Duration,
};

use anyhow::{Context, Result};
use netlink_packet_route::{
    RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{LinkAttribute, LinkFlags, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::netlink::{dump, receive};

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

/// A descriptor the wait also wakes for, and what reads it.
pub trait AlsoWatched: AsFd {
    /// Reads what is ready, without blocking.
    fn readable(&mut self);
}

thread_local! {
    /// What [`wake_also_for`] set, with the process that set it: a child forked later
    /// inherits the memory but must leave the descriptor to its parent.
    static ALSO: RefCell<Option<(u32, Box<dyn AlsoWatched>)>> = const { RefCell::new(None) };
}

/// Makes [`LinkWatch::wait`] on this thread, in this process, also wake when `watched` is
/// readable, and read it then.
pub fn wake_also_for(watched: Box<dyn AlsoWatched>) {
    ALSO.set(Some((std::process::id(), watched)));
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
        let messages = dump(
            &self.socket,
            &mut self.buf,
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        )
        .context("listing the links (rtnetlink)")?;
        Ok(messages.into_iter().filter_map(link_event).collect())
    }

    /// Sleeps until a change arrives, `timeout` passes (None: no limit) or a signal arrives;
    /// or until what [`wake_also_for`] set is readable, which is then read.
    pub fn wait(&self, timeout: Option<Duration>) {
        let millis = timeout.map_or(-1, |t| {
            libc::c_int::try_from(t.as_millis().saturating_add(1)).unwrap_or(libc::c_int::MAX)
        });
        ALSO.with_borrow_mut(|also| {
            let also = also
                .as_mut()
                .filter(|(owner, _)| *owner == std::process::id())
                .map(|(_, watched)| watched);
            // poll skips a negative descriptor.
            let also_fd = also
                .as_ref()
                .map_or(-1, |watched| watched.as_fd().as_raw_fd());
            let mut polls = [self.socket.as_raw_fd(), also_fd].map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            // SAFETY: valid pollfds, as many as passed, for the duration of the call.
            unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, millis) };
            if polls[1].revents & libc::POLLIN != 0
                && let Some(watched) = also
            {
                watched.readable();
            }
        });
    }

    /// Changes that arrived since the last call; never blocks.
    pub fn changes(&mut self) -> Result<Vec<LinkEvent>> {
        let mut events = Vec::new();
        loop {
            let mut messages = Vec::new();
            match receive(
                &self.socket,
                &mut self.buf,
                libc::MSG_DONTWAIT,
                &mut messages,
            ) {
                Ok(_) => events.extend(messages.into_iter().filter_map(link_event)),
                Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(events),
                // The socket overflowed under a burst of changes: some were lost, so read
                // the whole list again.
                Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => {
                    log::warn!("missed link changes in a burst; reading the link list again");
                    events.extend(self.dump()?);
                    return Ok(events);
                }
                Err(err) => return Err(err.into()),
            }
        }
    }
}

fn link_event(message: RouteNetlinkMessage) -> Option<LinkEvent> {
    match message {
        RouteNetlinkMessage::NewLink(link) => Some(LinkEvent::Present(interface(&link))),
        RouteNetlinkMessage::DelLink(link) => Some(LinkEvent::Removed(link.header.index)),
        _ => None,
    }
}

/// Which interface holds each local address of the namespace, by interface name.
pub fn address_owners() -> Result<HashMap<IpAddr, String>> {
    let mut socket = Socket::new(NETLINK_ROUTE).context("opening a NETLINK_ROUTE socket")?;
    socket
        .bind_auto()
        .context("binding the NETLINK_ROUTE socket")?;
    let mut buf = Vec::with_capacity(64 * 1024);
    let names: HashMap<u32, String> = dump(
        &socket,
        &mut buf,
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
    )
    .context("listing the links (rtnetlink)")?
    .into_iter()
    .filter_map(|m| match m {
        RouteNetlinkMessage::NewLink(link) => {
            let i = interface(&link);
            Some((i.index, i.name))
        }
        _ => None,
    })
    .collect();
    let addresses = dump(
        &socket,
        &mut buf,
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
    )
    .context("listing the addresses (rtnetlink)")?;
    let mut owners = HashMap::new();
    for message in addresses {
        let RouteNetlinkMessage::NewAddress(address) = message else {
            continue;
        };
        // IFA_LOCAL is the local address; IFA_ADDRESS is the peer's on point-to-point links.
        let local = address.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let any = address.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        if let (Some(ip), Some(name)) = (local.or(any), names.get(&address.header.index)) {
            owners.insert(ip, name.clone());
        }
    }
    Ok(owners)
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
