//! Harness for tern's kernel tests: throwaway network namespaces joined by veth pairs, a tern
//! process running in one of them, and ground truth read from the kernel (interface
//! statistics, `tcp_info`) or from the traffic a test sent itself.
//!
//! Everything a test creates is owned by a guard whose Drop removes it, so a failing test
//! leaves no namespace, interface, TC filter or process behind.
//!
//! Layout: `netns` makes namespaces and the veth pair and enters them; `tern` drives the
//! process under test; `traffic` makes the traffic a test counts itself; `truth` reads what
//! tern is compared with; `schema` holds the document rules every report is checked against
//! and `metrics` reads custom metrics out of a report; `temp` and `wait` are the temporary
//! directory and the bounded wait; `tmux` is a terminal a test types in and reads; `deny` takes bpf() or perf_event_open away from a
//! process; `refusal` runs the commands that end on their own (check-config, a refused run). `broker` holds the MQTT side (PKI, mosquitto, a responder playing the cloud, and
//! a proxy) and `bench` the benchmarks' helpers. The items tests use are re-exported here.

pub mod bench;
mod bpffs;
pub mod broker;
mod deny;
mod metrics;
mod netns;
pub mod refusal;
pub mod schema;
mod temp;
mod tern;
mod tmux;
mod traffic;
mod truth;
mod wait;

pub use bpffs::Bpffs;
pub use metrics::{
    custom_list, custom_metric, custom_names, custom_number, reported_connections, reported_ports,
};
pub use netns::{
    ADDR_A, ADDR_B, ADDR6_A, ADDR6_B, DEV_A, DEV_B, LinkStats, Netns, Pair, UDP_OVERHEAD, spawn_in,
};
pub use temp::TempDir;
pub use tern::{Launch, Stopped, Tern, pins_of, spooled, tern_bin};
pub use tmux::Pane;
pub use traffic::{
    Accepted, Clients, Datagrams, hold_accepted, hold_connections, open_connections,
    raise_fd_limit, transfer,
};
pub use truth::{
    TcpInfo, bpf_ids, children_of, kernel_links, kernel_programs, proc_status, sh, ss, tcp_info,
};
pub use wait::wait_until;
