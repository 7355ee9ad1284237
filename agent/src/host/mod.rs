//! The host outside eBPF: its networking as netlink and the namespace files show it
//! (interfaces and their addresses and counters, the socket snapshot, namespace cookies),
//! the kernel's own counters, files that survive a crash, the one way files are read, and
//! this process's descriptors.
//! Knows no eBPF, no report and no setting.

pub mod descriptors;
pub mod durable;
pub mod files;
#[cfg(test)]
pub mod fuzz;
pub mod links;
pub mod linkstats;
pub mod netlink;
pub mod netns;
pub mod snmp;
pub mod sockdiag;
#[cfg(test)]
pub mod test_netns;
