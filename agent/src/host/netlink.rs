//! Netlink requests and dumps for the kernel families tern speaks (rtnetlink, sock_diag):
//! framing, the end of a dump, the kernel's errors. Knows nothing of what the messages say
//! but one thing: an interface's name may be any bytes to the kernel, and one that is not
//! UTF-8 would fail the parsing of its whole message. Errors are `io::Error`s, the kernel's
//! own error number kept, so callers match on kinds.

use std::io::{Error, ErrorKind, Result};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REQUEST,
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_sys::Socket;

/// Sends a dump request and returns every message of the answer.
pub fn dump<I>(socket: &Socket, buf: &mut Vec<u8>, request: I) -> Result<Vec<I>>
where
    I: NetlinkSerializable + NetlinkDeserializable,
{
    let mut messages = Vec::new();
    each(socket, buf, request, |message| messages.push(message))?;
    Ok(messages)
}

/// Sends a dump request and hands each message of the answer to `f` as it arrives: a dump
/// of many thousand sockets is never held whole.
pub fn each<I>(socket: &Socket, buf: &mut Vec<u8>, request: I, mut f: impl FnMut(I)) -> Result<()>
where
    I: NetlinkSerializable + NetlinkDeserializable,
{
    send(socket, request, NLM_F_REQUEST | NLM_F_DUMP)?;
    let mut messages = Vec::new();
    // A dump ends with NLMSG_DONE; the bound keeps a misbehaving kernel from holding us.
    for _ in 0..1_000_000 {
        let done = receive(socket, buf, 0, &mut messages)?;
        messages.drain(..).for_each(&mut f);
        if done {
            return Ok(());
        }
    }
    Err(Error::new(
        ErrorKind::InvalidData,
        "the kernel's netlink dump did not end",
    ))
}

/// Sends a request that changes something and waits for the kernel's acknowledgement.
pub fn acknowledged<I>(socket: &Socket, buf: &mut Vec<u8>, request: I) -> Result<()>
where
    I: NetlinkSerializable + NetlinkDeserializable,
{
    until_acknowledged(socket, buf, request, NLM_F_REQUEST | NLM_F_ACK).map(drop)
}

/// Sends a request that creates something, refused (EEXIST) where it exists already, and
/// returns what the kernel echoes of what it created.
pub fn created<I>(socket: &Socket, buf: &mut Vec<u8>, request: I) -> Result<Vec<I>>
where
    I: NetlinkSerializable + NetlinkDeserializable,
{
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_ECHO | NLM_F_CREATE | NLM_F_EXCL;
    until_acknowledged(socket, buf, request, flags)
}

/// Sends a request and returns the messages that came before the kernel's acknowledgement.
fn until_acknowledged<I>(
    socket: &Socket,
    buf: &mut Vec<u8>,
    request: I,
    flags: u16,
) -> Result<Vec<I>>
where
    I: NetlinkSerializable + NetlinkDeserializable,
{
    send(socket, request, flags)?;
    let mut messages = Vec::<I>::new();
    // The acknowledgement is an error message with error number 0; only an echo is expected
    // before it, and the bound keeps a misbehaving kernel from holding us.
    for _ in 0..16 {
        match receive(socket, buf, 0, &mut messages) {
            Err(err) if err.raw_os_error() == Some(0) => return Ok(messages),
            Err(err) => return Err(err),
            Ok(_) => {}
        }
    }
    Err(Error::new(
        ErrorKind::InvalidData,
        "the kernel did not acknowledge a netlink request",
    ))
}

fn send<I>(socket: &Socket, request: I, flags: u16) -> Result<()>
where
    I: NetlinkSerializable,
{
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = 1;
    let mut request = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    socket.send(&bytes, 0)?;
    Ok(())
}

/// rtnetlink's messages of links (RTM_NEWLINK, RTM_DELLINK) and of addresses
/// (RTM_NEWADDR, RTM_DELADDR): their fixed headers' sizes and the attributes that hold an
/// interface's name (IFLA_IFNAME, IFLA_IFALIAS, IFLA_PROP_LIST holding IFLA_ALT_IFNAME;
/// IFA_LABEL).
const LINK_MESSAGES: [u16; 2] = [16, 17];
const ADDRESS_MESSAGES: [u16; 2] = [20, 21];
const IFINFOMSG_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;
const LINK_NAMES: [u16; 2] = [3, 20];
const IFLA_PROP_LIST: u16 = 52;
const IFLA_ALT_IFNAME: u16 = 53;
const IFA_LABEL: u16 = 3;
const NETLINK_HEADER_LEN: usize = 16;
/// The flag bits of an attribute's type (nested, net byte order).
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Makes every interface name in a link or address `message` UTF-8 in place: a name that
/// is not has its bytes above 0x7f turned into '?', so the interface is still counted, under
/// a lossy name, instead of its message failing to parse.
fn lossy_names(message: &mut [u8]) {
    let Some(kind) = message.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]])) else {
        return;
    };
    if LINK_MESSAGES.contains(&kind) {
        names_in(
            message,
            NETLINK_HEADER_LEN + IFINFOMSG_LEN,
            &LINK_NAMES,
            true,
        );
    } else if ADDRESS_MESSAGES.contains(&kind) {
        names_in(
            message,
            NETLINK_HEADER_LEN + IFADDRMSG_LEN,
            &[IFA_LABEL],
            false,
        );
    }
}

/// The attributes from `at` to the end of `bytes`: those of types `names` made UTF-8, and,
/// where `nested`, the alternative names inside IFLA_PROP_LIST.
fn names_in(bytes: &mut [u8], mut at: usize, names: &[u16], nested: bool) {
    while let Some(head) = bytes.get(at..at + 4) {
        let len = usize::from(u16::from_ne_bytes([head[0], head[1]]));
        let kind = u16::from_ne_bytes([head[2], head[3]]) & NLA_TYPE_MASK;
        if len < 4 || at + len > bytes.len() {
            return;
        }
        if nested && kind == IFLA_PROP_LIST {
            names_in(&mut bytes[..at + len], at + 4, &[IFLA_ALT_IFNAME], false);
        } else if names.contains(&kind) {
            let payload = &mut bytes[at + 4..at + len];
            let text_len = payload
                .iter()
                .position(|b| *b == 0)
                .unwrap_or(payload.len());
            if std::str::from_utf8(&payload[..text_len]).is_err() {
                for byte in &mut payload[..text_len] {
                    if *byte > 0x7f {
                        *byte = b'?';
                    }
                }
            }
        }
        at += (len + 3) & !3;
    }
}

/// Reads one datagram into `messages`; true when it held the end of a dump.
pub fn receive<I>(
    socket: &Socket,
    buf: &mut Vec<u8>,
    flags: libc::c_int,
    messages: &mut Vec<I>,
) -> Result<bool>
where
    I: NetlinkDeserializable,
{
    buf.clear();
    let n = socket.recv(buf, flags)?;
    parse(&mut buf[..n], messages)
}

/// Parses the messages of one datagram into `messages`; true when it held the end of a
/// dump. Interface names in it are made UTF-8 in place first.
pub fn parse<I>(buf: &mut [u8], messages: &mut Vec<I>) -> Result<bool>
where
    I: NetlinkDeserializable,
{
    let n = buf.len();
    let mut done = false;
    let mut offset = 0;
    while offset < n {
        let declared = buf
            .get(offset..offset + 4)
            .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize);
        if let Some(message) = buf.get_mut(offset..offset + declared.min(n - offset)) {
            lossy_names(message);
        }
        let message = NetlinkMessage::<I>::deserialize(&buf[offset..n]).map_err(|err| {
            Error::new(
                ErrorKind::InvalidData,
                format!("parsing a netlink message from the kernel: {err}"),
            )
        })?;
        let length = message.header.length as usize;
        match message.payload {
            NetlinkPayload::InnerMessage(inner) => messages.push(inner),
            NetlinkPayload::Done(_) => done = true,
            NetlinkPayload::Error(err) => return Err(err.to_io()),
            _ => {}
        }
        if length == 0 {
            break;
        }
        offset += (length + 3) & !3;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link message: the netlink header, an ifinfomsg, IFLA_IFNAME `name` and an
    /// IFLA_PROP_LIST holding IFLA_ALT_IFNAME `alt`.
    fn link_message(name: &[u8], alt: &[u8]) -> Vec<u8> {
        fn attribute(kind: u16, payload: &[u8]) -> Vec<u8> {
            let mut a = Vec::new();
            a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
            a.extend_from_slice(&kind.to_ne_bytes());
            a.extend_from_slice(payload);
            a.resize(a.len().div_ceil(4) * 4, 0);
            a
        }
        let mut body = vec![0u8; IFINFOMSG_LEN];
        body.extend(attribute(3, &[name, b"\0"].concat()));
        body.extend(attribute(
            IFLA_PROP_LIST | 0x8000,
            &attribute(IFLA_ALT_IFNAME, &[alt, b"\0"].concat()),
        ));
        let mut message = Vec::new();
        message.extend_from_slice(&((NETLINK_HEADER_LEN + body.len()) as u32).to_ne_bytes());
        message.extend_from_slice(&16u16.to_ne_bytes());
        message.resize(NETLINK_HEADER_LEN, 0);
        message.extend(body);
        message
    }

    #[test]
    fn fuzz_netlink_messages() {
        use netlink_packet_route::{
            RouteNetlinkMessage,
            link::{LinkAttribute, LinkMessage},
        };
        use netlink_packet_sock_diag::SockDiagMessage;
        let mut link = LinkMessage::default();
        link.header.index = 3;
        link.attributes = vec![
            LinkAttribute::IfName("eth0".into()),
            LinkAttribute::Mtu(1500),
        ];
        let mut message = NetlinkMessage::from(RouteNetlinkMessage::NewLink(link));
        message.finalize();
        let mut serialized = vec![0; message.buffer_len()];
        message.serialize(&mut serialized);
        let seeds = [serialized, link_message(b"bad\xffname", b"alt")];
        crate::host::fuzz::run("netlink", &seeds, |bytes| {
            let _ = parse::<RouteNetlinkMessage>(&mut bytes.to_vec(), &mut Vec::new());
            let _ = parse::<SockDiagMessage>(&mut bytes.to_vec(), &mut Vec::new());
        });
    }

    #[test]
    fn names_that_are_not_utf8_become_lossy_and_utf8_ones_stay() {
        let mut message = link_message(b"bad\xff\xfeA", b"alt\xc3");
        lossy_names(&mut message);
        let text = String::from_utf8_lossy(&message);
        assert!(text.contains("bad??A") && text.contains("alt?"), "{text:?}");
        let mut fine = link_message("wlan-ü".as_bytes(), b"eth0");
        let before = fine.clone();
        lossy_names(&mut fine);
        assert_eq!(fine, before);
    }
}
