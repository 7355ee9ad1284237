//! Netlink requests and dumps for the kernel families tern speaks (rtnetlink, sock_diag):
//! framing, the end of a dump, the kernel's errors. Knows nothing of what the messages say.
//! Errors are `io::Error`s, the kernel's own error number kept, so callers match on kinds.

use std::io::{Error, ErrorKind, Result};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable,
};
use netlink_sys::Socket;

/// Sends a dump request and returns every message of the answer.
pub fn dump<I>(socket: &Socket, buf: &mut Vec<u8>, request: I) -> Result<Vec<I>>
where
    I: NetlinkSerializable + NetlinkDeserializable,
{
    send(socket, request, NLM_F_REQUEST | NLM_F_DUMP)?;
    let mut messages = Vec::new();
    // A dump ends with NLMSG_DONE; the bound keeps a misbehaving kernel from holding us.
    for _ in 0..1_000_000 {
        if receive(socket, buf, 0, &mut messages)? {
            return Ok(messages);
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
    send(socket, request, NLM_F_REQUEST | NLM_F_ACK)?;
    let mut messages = Vec::<I>::new();
    // The acknowledgement is an error message with error number 0; nothing else is expected
    // before it, and the bound keeps a misbehaving kernel from holding us.
    for _ in 0..16 {
        match receive(socket, buf, 0, &mut messages) {
            Err(err) if err.raw_os_error() == Some(0) => return Ok(()),
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
    let mut done = false;
    let mut offset = 0;
    while offset < n {
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
