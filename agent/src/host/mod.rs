//! Read-only views of the host's networking, through netlink and the namespace files:
//! interfaces and their addresses, the socket snapshot, namespace cookies. Knows no eBPF.

pub mod durable;
pub mod links;
pub mod netlink;
pub mod netns;
pub mod sockdiag;
