//! Ground truth read from outside tern: commands' output, /proc, bpftool, the kernel's
//! `tcp_info`, and `ss` in a namespace.

use std::{
    collections::{HashMap, HashSet},
    os::fd::AsRawFd,
    process::Command,
};

use serde_json::Value;

/// Runs a command and panics with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The fields of /proc/<pid>/status, by name.
pub fn proc_status(pid: u32) -> HashMap<String, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// Pids whose parent is `pid`, from /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // The parent pid is the second field after the parenthesised command name.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            found.push(child);
        }
    }
    found
}

/// The eBPF program and link ids `pid` holds fds of, read from /proc/<pid>/fdinfo.
pub fn bpf_ids(pid: u32) -> (HashSet<u64>, HashSet<u64>) {
    let (mut programs, mut links) = (HashSet::new(), HashSet::new());
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return (programs, links);
    };
    for entry in dir.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in info.lines() {
            let mut parts = line.split_whitespace();
            let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(value) = value.parse() else { continue };
            match key {
                "prog_id:" => programs.insert(value),
                "link_id:" => links.insert(value),
                _ => false,
            };
        }
    }
    (programs, links)
}

/// Every eBPF link in the kernel as (link id, program id), from `bpftool link show`.
pub fn kernel_links() -> Vec<(u64, u64)> {
    let out = sh("bpftool", &["-j", "link", "show"]);
    let json: Value = serde_json::from_str(&out).expect("bpftool -j output");
    json.as_array()
        .map(|links| {
            links
                .iter()
                .filter_map(|l| Some((l["id"].as_u64()?, l["prog_id"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Ids of every eBPF program loaded in the kernel, from `bpftool prog show`.
pub fn kernel_programs() -> HashSet<u64> {
    let out = sh("bpftool", &["-j", "prog", "show"]);
    let json: Value = serde_json::from_str(&out).expect("bpftool -j output");
    json.as_array()
        .map(|progs| progs.iter().filter_map(|p| p["id"].as_u64()).collect())
        .unwrap_or_default()
}

/// The kernel's `struct tcp_info` fields the tests compare against.
#[derive(Debug, Clone, Copy)]
pub struct TcpInfo {
    pub segs_out: u64,
    pub segs_in: u64,
    /// Payload bytes sent, retransmissions included.
    pub bytes_sent: u64,
    /// Payload bytes received, each byte once.
    pub bytes_received: u64,
}

pub fn tcp_info(socket: &impl AsRawFd) -> TcpInfo {
    let mut buf = [0u8; 232];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf and len describe a writable buffer of len bytes.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    assert!(
        len as usize >= 216,
        "this kernel's tcp_info lacks bytes_sent"
    );
    let u32_at = |o: usize| u64::from(u32::from_ne_bytes(buf[o..o + 4].try_into().unwrap()));
    let u64_at = |o: usize| u64::from_ne_bytes(buf[o..o + 8].try_into().unwrap());
    TcpInfo {
        segs_out: u32_at(136),
        segs_in: u32_at(140),
        bytes_sent: u64_at(200),
        bytes_received: u64_at(128),
    }
}

/// Ground truth from `ss` and `ip addr` in a namespace, for the socket tests.
pub mod ss {
    use std::{
        collections::{BTreeSet, HashMap},
        net::{IpAddr, Ipv4Addr},
    };

    use serde_json::Value;

    use super::sh;
    use crate::Netns;

    /// (port, interface) of every listening socket: `ss -l` for TCP, `ss -l` (UNCONN) for
    /// UDP. The interface is the one `ip addr` lists the bound address on; none for a
    /// wildcard bind.
    pub fn listening(ns: &Netns, proto: char) -> BTreeSet<(u16, Option<String>)> {
        let owners = owners(ns);
        lines(ns, &[&format!("-H{proto}ln")])
            .iter()
            .map(|cols| {
                let (ip, port) = endpoint(&cols[3]);
                (port, interface(ip, &owners))
            })
            .collect()
    }

    /// (remote "ip:port", local port, local interface) of every established TCP connection.
    pub fn established(ns: &Netns) -> Vec<(String, u16, Option<String>)> {
        let owners = owners(ns);
        let mut all: Vec<_> = lines(ns, &["-Htan"])
            .iter()
            .filter(|cols| cols[0] == "ESTAB")
            .map(|cols| {
                let (local, local_port) = endpoint(&cols[3]);
                let (remote, remote_port) = endpoint(&cols[4]);
                let remote = std::net::SocketAddr::new(remote, remote_port).to_string();
                (remote, local_port, interface(local, &owners))
            })
            .collect();
        all.sort();
        all
    }

    fn lines(ns: &Netns, args: &[&str]) -> Vec<Vec<String>> {
        let mut full = vec!["ss"];
        full.extend_from_slice(args);
        ns.exec(&full)
            .lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .filter(|cols| cols.len() >= 5)
            .collect()
    }

    /// "10.0.0.1:80", "[fd00::1]:80", "*:80", "127.0.0.53%lo:53", "[::ffff:10.0.0.1]:80".
    fn endpoint(text: &str) -> (IpAddr, u16) {
        let (host, port) = text.rsplit_once(':').expect("address:port");
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = host.split('%').next().expect("a host");
        let ip = if host == "*" {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            host.parse::<IpAddr>()
                .unwrap_or_else(|_| panic!("ss address {text}"))
                .to_canonical()
        };
        (ip, port.parse().expect("a port"))
    }

    fn owners(ns: &Netns) -> HashMap<IpAddr, String> {
        let json: Value =
            serde_json::from_str(&sh("ip", &["-n", &ns.name, "-j", "addr", "show"])).unwrap();
        let mut owners = HashMap::new();
        for link in json.as_array().expect("a link list") {
            let name = link["ifname"].as_str().expect("ifname");
            for addr in link["addr_info"].as_array().into_iter().flatten() {
                if let Some(local) = addr["local"].as_str() {
                    owners.insert(local.parse().expect("an address"), name.to_owned());
                }
            }
        }
        owners
    }

    fn interface(ip: IpAddr, owners: &HashMap<IpAddr, String>) -> Option<String> {
        if ip.is_unspecified() {
            return None;
        }
        owners.get(&ip).cloned().or_else(|| {
            ip.is_loopback()
                .then(|| owners.get(&IpAddr::V4(Ipv4Addr::LOCALHOST)).cloned())
                .flatten()
        })
    }
}
