// Over 400 lines: both ways onto a TC hook (TCX, netlink filters) share the hooks and the
// links they make; a fifth of the length is the test of the netlink path on this kernel.
//! TC hooks by interface index: a loaded traffic program attached to an interface's ingress
//! or egress, as a TCX link (6.6+) or, before, as a direct-action bpf filter on the clsact
//! qdisc, added and removed through rtnetlink. Never by name: Linux allows any bytes in a
//! name, and one that is not UTF-8 is known to tern only lossily, while aya attaches by name.

use std::{
    fmt,
    io::{self, Error, ErrorKind},
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcBpfFlags, TcFilterBpf, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

use crate::host::netlink::{acknowledged, created, dump};

/// One direction of an interface's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    /// BPF_TCX_INGRESS, BPF_TCX_EGRESS (enum bpf_attach_type).
    fn tcx_attach_type(self) -> u32 {
        match self {
            Self::Ingress => 46,
            Self::Egress => 47,
        }
    }

    /// The clsact qdisc's class the hook's filters hang from.
    fn parent(self) -> TcHandle {
        TcHandle {
            major: u16::MAX,
            minor: match self {
                Self::Ingress => TcHandle::MIN_INGRESS,
                Self::Egress => TcHandle::MIN_EGRESS,
            },
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        })
    }
}

/// A program attached to one hook of one interface.
#[derive(Debug)]
pub enum TcLink {
    /// A TCX link: the kernel detaches the program when the last copy of the fd closes.
    Tcx(OwnedFd),
    /// A netlink filter, which outlives tern until [`detach`] deletes it.
    Filter(Filter),
}

/// Where a filter is: what deleting exactly it, and no other, takes.
#[derive(Debug)]
pub struct Filter {
    index: i32,
    hook: Hook,
    /// Priority (upper 16 bits) and protocol, as the kernel has them.
    info: u32,
    handle: TcHandle,
}

/// bpf(2)'s BPF_LINK_CREATE command.
const BPF_LINK_CREATE: libc::c_long = 28;
/// Attach before every other TCX program (with no relative program named: the first).
const BPF_F_BEFORE: u32 = 1 << 3;

/// The part of `union bpf_attr` BPF_LINK_CREATE reads for a TCX link; the kernel zeroes the
/// rest.
#[repr(C)]
struct TcxLinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    /// The kernel's alignment of the 64-bit field that follows, zeroed.
    padding: u32,
    expected_revision: u64,
}

/// Attaches `program` to `hook` of interface `index` as a TCX link, ahead of every TCX
/// program there.
pub fn attach_tcx(program: BorrowedFd<'_>, index: u32, hook: Hook) -> io::Result<TcLink> {
    let attr = TcxLinkCreate {
        prog_fd: program.as_raw_fd() as u32,
        target_ifindex: index,
        attach_type: hook.tcx_attach_type(),
        flags: BPF_F_BEFORE,
        relative_fd: 0,
        padding: 0,
        expected_revision: 0,
    };
    // SAFETY: attr is a valid, fully initialised bpf_attr prefix for the call's duration, and
    // its size is passed with it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &attr as *const TcxLinkCreate,
            std::mem::size_of::<TcxLinkCreate>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd (an int, close-on-exec), and nothing else
    // owns it.
    Ok(TcLink::Tcx(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

fn route_socket() -> io::Result<(Socket, Vec<u8>)> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    Ok((socket, Vec::with_capacity(16 * 1024)))
}

fn netlink_index(index: u32) -> io::Result<i32> {
    i32::try_from(index).map_err(|_| Error::new(ErrorKind::InvalidInput, "interface index"))
}

/// Adds a clsact qdisc to interface `index`; false when it has one already (another
/// program's, or one a previous tern added), which tern then shares.
pub fn add_clsact(index: u32) -> io::Result<bool> {
    let (socket, mut buf) = route_socket()?;
    let request = RouteNetlinkMessage::NewQueueDiscipline(clsact(netlink_index(index)?));
    match created(&socket, &mut buf, request) {
        Ok(_) => Ok(true),
        Err(err) if err.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(err) => Err(err),
    }
}

/// ETH_P_ALL in network byte order, as tcm_info's lower half holds a filter's protocol.
const ALL_PROTOCOLS: u32 = 0x0300;

/// Attaches `program` (named `name`, as the filter will be) to `hook` of interface `index`
/// as a direct-action bpf filter, at a priority the kernel picks. The interface must have a
/// clsact qdisc.
pub fn attach_filter(
    program: BorrowedFd<'_>,
    name: &str,
    index: u32,
    hook: Hook,
) -> io::Result<TcLink> {
    let index = netlink_index(index)?;
    let (socket, mut buf) = route_socket()?;
    let mut request = TcMessage::with_index(index);
    request.header.parent = hook.parent();
    request.header.info = ALL_PROTOCOLS;
    request.attributes = vec![
        TcAttribute::Kind(TcFilterBpf::KIND.to_owned()),
        TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(program.as_raw_fd() as u32)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(name.to_owned())),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ]),
    ];
    let echoed = created(
        &socket,
        &mut buf,
        RouteNetlinkMessage::NewTrafficFilter(request),
    )?;
    // The priority and handle the kernel gave it are what deleting it takes.
    echoed
        .into_iter()
        .find_map(|message| match message {
            RouteNetlinkMessage::NewTrafficFilter(filter) => Some(TcLink::Filter(Filter {
                index,
                hook,
                info: filter.header.info,
                handle: filter.header.handle,
            })),
            _ => None,
        })
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidData,
                "the kernel added the filter but did not say where",
            )
        })
}

/// Removes the bpf filters named `name` from `hook` of interface `index`: those a previous
/// tern left, since filters outlive their process. Returns how many there were.
pub fn remove_filters(index: u32, hook: Hook, name: &str) -> io::Result<usize> {
    let index = netlink_index(index)?;
    let (socket, mut buf) = route_socket()?;
    let mut removed = 0;
    for filter in filters(&socket, &mut buf, index, hook)? {
        if !named(&filter, name) {
            continue;
        }
        // The chain too, so that exactly this filter is deleted.
        let chain = filter
            .attributes
            .iter()
            .filter(|a| matches!(a, TcAttribute::Chain(_)))
            .cloned()
            .collect();
        let found = Filter {
            index,
            hook,
            info: filter.header.info,
            handle: filter.header.handle,
        };
        delete_filter(&socket, &mut buf, &found, chain)?;
        removed += 1;
    }
    Ok(removed)
}

/// The filters on `hook` of interface `index`, of every chain.
fn filters(
    socket: &Socket,
    buf: &mut Vec<u8>,
    index: i32,
    hook: Hook,
) -> io::Result<Vec<TcMessage>> {
    let mut request = TcMessage::with_index(index);
    request.header.parent = hook.parent();
    let messages = dump(socket, buf, RouteNetlinkMessage::GetTrafficFilter(request))?;
    Ok(messages
        .into_iter()
        .filter_map(|message| match message {
            RouteNetlinkMessage::NewTrafficFilter(filter) => Some(filter),
            _ => None,
        })
        .collect())
}

/// Whether `filter` is a bpf filter named `name`.
fn named(filter: &TcMessage, name: &str) -> bool {
    let bpf = filter
        .attributes
        .iter()
        .any(|a| matches!(a, TcAttribute::Kind(kind) if kind == TcFilterBpf::KIND));
    bpf && filter.attributes.iter().any(|a| match a {
        TcAttribute::Options(options) => options
            .iter()
            .any(|o| matches!(o, TcOption::Bpf(TcFilterBpfOption::ProgName(n)) if n == name)),
        _ => false,
    })
}

/// Deletes `filter`; `chain` is its TCA_CHAIN attribute, if any.
fn delete_filter(
    socket: &Socket,
    buf: &mut Vec<u8>,
    filter: &Filter,
    chain: Vec<TcAttribute>,
) -> io::Result<()> {
    // Priority 0 would delete every filter of the hook.
    if filter.info >> 16 == 0 {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "a filter without a priority",
        ));
    }
    let mut request = TcMessage::with_index(filter.index);
    request.header.parent = filter.hook.parent();
    request.header.info = filter.info;
    request.header.handle = filter.handle;
    request.attributes = chain;
    acknowledged(socket, buf, RouteNetlinkMessage::DelTrafficFilter(request))
}

/// Detaches a program: closes a TCX link's fd, deletes a filter. On a deleted interface the
/// kernel has already let go of both, and deleting the filter fails harmlessly.
pub fn detach(link: TcLink) -> io::Result<()> {
    match link {
        TcLink::Tcx(fd) => {
            drop(fd);
            Ok(())
        }
        TcLink::Filter(filter) => {
            let (socket, mut buf) = route_socket()?;
            delete_filter(&socket, &mut buf, &filter, Vec::new())
        }
    }
}

/// Deletes the clsact qdisc of interface `index` if neither of its hooks holds a filter;
/// true when deleted.
pub fn remove_unused_clsact(index: u32) -> io::Result<bool> {
    let index = netlink_index(index)?;
    let (socket, mut buf) = route_socket()?;
    for hook in [Hook::Ingress, Hook::Egress] {
        if !filters(&socket, &mut buf, index, hook)?.is_empty() {
            return Ok(false);
        }
    }
    let request = RouteNetlinkMessage::DelQueueDiscipline(clsact(index));
    acknowledged(&socket, &mut buf, request)?;
    Ok(true)
}

/// The clsact qdisc of interface `index`. Its kind makes the kernel refuse to delete any
/// other qdisc in its place.
fn clsact(index: i32) -> TcMessage {
    let mut qdisc = TcMessage::with_index(index);
    qdisc.header.parent = TcHandle::CLSACT;
    qdisc.header.handle = TcHandle {
        major: u16::MAX,
        minor: 0,
    };
    qdisc
        .attributes
        .push(TcAttribute::Kind("clsact".to_owned()));
    qdisc
}

#[cfg(test)]
mod tests {
    use std::{
        ffi::{CString, OsStr},
        os::{fd::AsFd, unix::ffi::OsStrExt},
        process::Command,
    };

    use aya::{EbpfLoader, programs::SchedClassifier};
    use tern_common::names;

    use super::*;
    use crate::{host::test_netns::in_fresh_netns, kernel::object::OBJECT};

    /// A name Linux accepts that is not UTF-8.
    const NAME: &[u8] = b"tc\xffA";

    /// Runs `args` (any bytes) and returns its output; panics if it fails.
    fn run(program: &str, args: &[&[u8]]) -> String {
        let output = Command::new(program)
            .args(args.iter().map(|a| OsStr::from_bytes(a)))
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            output.status.success(),
            "{program} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The legacy path, which kernels before 6.6 take, on any kernel: a filter goes on by
    /// index where the name is not UTF-8, a later tern finds it by its program's name, and
    /// nothing of tern's is left after.
    #[test]
    fn filters_attach_by_index_where_the_name_is_not_utf8_and_leave_nothing_behind() {
        in_fresh_netns(|| {
            run(
                "ip",
                &[
                    b"link", b"add", NAME, b"type", b"veth", b"peer", b"name", b"tcpeer",
                ],
            );
            let c_name = CString::new(NAME).unwrap();
            // SAFETY: a valid NUL-terminated name.
            let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
            assert_ne!(index, 0);
            let filters =
                |hook: &str| run("tc", &[b"filter", b"show", b"dev", NAME, hook.as_bytes()]);
            let qdiscs = || run("tc", &[b"qdisc", b"show", b"dev", NAME]);
            let mut ebpf = EbpfLoader::new().load(OBJECT).expect("loading the object");
            let program: &mut SchedClassifier = ebpf
                .program_mut(names::TC_INGRESS)
                .unwrap()
                .try_into()
                .unwrap();
            program.load().expect("loading the TC program");
            let fd = program.fd().unwrap().as_fd();

            assert!(add_clsact(index).unwrap(), "a clsact qdisc added");
            assert!(!add_clsact(index).unwrap(), "the one there shared");
            let name = names::TC_INGRESS;
            let ingress = attach_filter(fd, name, index, Hook::Ingress).unwrap();
            let egress = attach_filter(fd, name, index, Hook::Egress).unwrap();
            for hook in ["ingress", "egress"] {
                let shown = filters(hook);
                assert!(
                    shown.contains(name) && shown.contains("direct-action"),
                    "{hook}: {shown}"
                );
            }
            assert!(!remove_unused_clsact(index).unwrap(), "filters still on it");

            detach(ingress).unwrap();
            assert!(!filters("ingress").contains(name), "{}", filters("ingress"));
            // A filter left by an earlier tern, found by the program's name.
            assert_eq!(remove_filters(index, Hook::Egress, name).unwrap(), 1);
            assert_eq!(remove_filters(index, Hook::Egress, name).unwrap(), 0);
            assert!(!filters("egress").contains(name), "{}", filters("egress"));
            assert!(detach(egress).is_err(), "already removed");

            assert!(qdiscs().contains("clsact"), "{}", qdiscs());
            assert!(remove_unused_clsact(index).unwrap());
            assert!(!qdiscs().contains("clsact"), "{}", qdiscs());
        });
    }
}
