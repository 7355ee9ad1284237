//! The agents tern is measured against: a plain `/proc` poller (what the IoT Device Client's
//! aws-c-iot reads) and the AWS IoT Device Defender Python sample agent's collector.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::thread_cpu_ns;
use crate::Netns;

/// What one snapshot agent saw: established connections as ("remote ip:port", local port)
/// and listening TCP ports, with the wall and CPU time one collection took.
#[derive(Debug, Default, Clone)]
pub struct Sample {
    pub wall_us: f64,
    pub cpu_us: f64,
    pub connections: BTreeSet<(String, u16)>,
    pub tcp_ports: BTreeSet<u16>,
}

/// One collection by the `/proc` poller: TCP and UDP sockets of both families and interface
/// counters of the calling thread's namespace, built into a report document. Run it on a
/// thread inside the namespace to measure (`/proc/thread-self/net` follows the thread).
pub fn proc_poll() -> Sample {
    let (wall, cpu) = (Instant::now(), thread_cpu_ns());
    let mut sample = Sample::default();
    let mut udp_ports = BTreeSet::new();
    for (file, v6, tcp) in [
        ("tcp", false, true),
        ("tcp6", true, true),
        ("udp", false, false),
        ("udp6", true, false),
    ] {
        let path = format!("/proc/thread-self/net/{file}");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 4 {
                continue;
            }
            let (local, remote, state) = (endpoint(cols[1], v6), endpoint(cols[2], v6), cols[3]);
            match (tcp, state) {
                (true, "0A") => {
                    sample.tcp_ports.insert(local.port());
                }
                (true, "01") => {
                    sample
                        .connections
                        .insert((remote.to_string(), local.port()));
                }
                // Bound and unconnected: what listens for datagrams.
                (false, "07") if remote.port() == 0 => {
                    udp_ports.insert(local.port());
                }
                _ => {}
            }
        }
    }
    let mut stats = [0u64; 4];
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap_or_default();
    for line in dev.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let n: Vec<u64> = counters
            .split_whitespace()
            .map(|c| c.parse().unwrap_or(0))
            .collect();
        for (total, i) in stats.iter_mut().zip([0, 1, 8, 9]) {
            *total += n.get(i).copied().unwrap_or(0);
        }
    }
    let report = json!({
        "header": {"report_id": 1, "version": "1.0"},
        "metrics": {
            "listening_tcp_ports": {"ports": sample.tcp_ports.iter().map(|p| json!({"port": p})).collect::<Vec<_>>(), "total": sample.tcp_ports.len()},
            "listening_udp_ports": {"ports": udp_ports.iter().map(|p| json!({"port": p})).collect::<Vec<_>>(), "total": udp_ports.len()},
            "network_stats": {"bytes_in": stats[0], "packets_in": stats[1], "bytes_out": stats[2], "packets_out": stats[3]},
            "tcp_connections": {"established_connections": {
                "connections": sample.connections.iter().map(|(r, l)| json!({"remote_addr": r, "local_port": l})).collect::<Vec<_>>(),
                "total": sample.connections.len()}},
        }
    });
    std::hint::black_box(serde_json::to_vec(&report).expect("encoding"));
    sample.wall_us = wall.elapsed().as_secs_f64() * 1e6;
    sample.cpu_us = (thread_cpu_ns() - cpu) as f64 / 1e3;
    sample
}

/// "0100007F:1F90" (IPv4) or 32 hex digits and a port (IPv6), as the kernel prints them:
/// 32-bit words in host byte order.
fn endpoint(text: &str, v6: bool) -> SocketAddr {
    let (addr, port) = text.split_once(':').expect("address:port");
    let port = u16::from_str_radix(port, 16).expect("a port");
    let word = |i: usize| u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).expect("hex");
    let ip = if v6 {
        let mut bytes = [0u8; 16];
        for i in 0..4 {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i).to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(bytes)).to_canonical()
    } else {
        IpAddr::V4(Ipv4Addr::from(word(0).to_ne_bytes()))
    };
    SocketAddr::new(ip, port)
}

/// Calls the sample agent's collector as its own agent loop does (collect, then encode the
/// report), printing per collection its times and what the report lists.
const PYTHON_DRIVER: &str = r#"
import json, sys, time
from AWSIoTDeviceDefenderAgentSDK import collector
interval, count = float(sys.argv[1]), int(sys.argv[2])
c = collector.Collector(short_metrics_names=False, use_custom_metrics=False)
print("ready", flush=True)
sys.stdin.readline()
for _ in range(count):
    started = time.monotonic()
    w, p = time.perf_counter(), time.process_time()
    doc = json.loads(c.collect_metrics().to_json_string())
    wall, cpu = time.perf_counter() - w, time.process_time() - p
    m = doc["metrics"]
    conns = m.get("tcp_connections", {}).get("established_connections", {}).get("connections", [])
    ports = m.get("listening_tcp_ports", {}).get("ports", [])
    print(json.dumps({"wall_us": wall * 1e6, "cpu_us": cpu * 1e6,
        "connections": [[x["remote_addr"], x["local_port"]] for x in conns],
        "tcp_ports": [x["port"] for x in ports]}), flush=True)
    time.sleep(max(0.0, interval - (time.monotonic() - started)))
"#;

/// The Python interpreter of the bench's virtual environment with the sample agent, from
/// TERN_BENCH_PYTHON (`cargo xtask bench` sets it up); None when it is not there.
pub fn python() -> Option<PathBuf> {
    std::env::var_os("TERN_BENCH_PYTHON")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
}

/// The Python collector running in a namespace: `count` collections `interval` seconds
/// apart, started by [`PythonCollector::go`]. Killed when dropped.
pub struct PythonCollector {
    child: Child,
    lines: Receiver<String>,
}

impl PythonCollector {
    /// Starts the interpreter and imports the collector, then waits for [`Self::go`].
    pub fn start(python: &PathBuf, ns: &Netns, interval: f64, count: usize) -> Self {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path()))
            .arg(python)
            .args([
                "-c",
                PYTHON_DRIVER,
                &interval.to_string(),
                &count.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the Python collector");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if line.is_err() || tx.send(line.unwrap_or_default()).is_err() {
                    break;
                }
            }
        });
        let collector = Self { child, lines };
        assert_eq!(
            collector.line(),
            "ready",
            "the Python collector did not start"
        );
        collector
    }

    /// The next line the collector prints; panics if it ends or stays silent for two minutes.
    fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(120))
            .expect("the Python collector ended or hung")
    }

    pub fn go(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin
            .write_all(b"go\n")
            .expect("starting the Python collector");
        stdin.flush().expect("stdin");
    }

    /// The next collection; panics if the collector ended.
    pub fn sample(&mut self) -> Sample {
        let line = self.line();
        let doc: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the Python collector printed {line:?}: {e}"));
        Sample {
            wall_us: doc["wall_us"].as_f64().expect("wall_us"),
            cpu_us: doc["cpu_us"].as_f64().expect("cpu_us"),
            connections: doc["connections"]
                .as_array()
                .expect("connections")
                .iter()
                .map(|c| {
                    (
                        c[0].as_str().expect("remote").to_owned(),
                        c[1].as_u64().expect("port") as u16,
                    )
                })
                .collect(),
            tcp_ports: doc["tcp_ports"]
                .as_array()
                .expect("ports")
                .iter()
                .map(|p| p.as_u64().expect("a port") as u16)
                .collect(),
        }
    }
}

impl Drop for PythonCollector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint;

    #[test]
    fn reads_proc_net_addresses() {
        assert_eq!(
            endpoint("0100007F:1F90", false).to_string(),
            "127.0.0.1:8080"
        );
        let loopback6 = format!(
            "{:08X}{:08X}{:08X}{:08X}:0050",
            0,
            0,
            0,
            u32::from_ne_bytes([0, 0, 0, 1])
        );
        assert_eq!(endpoint(&loopback6, true).to_string(), "[::1]:80");
        let mapped = format!(
            "{:08X}{:08X}{:08X}{:08X}:0016",
            0,
            0,
            u32::from_ne_bytes([0, 0, 0xff, 0xff]),
            u32::from_ne_bytes([192, 0, 2, 7])
        );
        assert_eq!(endpoint(&mapped, true).to_string(), "192.0.2.7:22");
    }
}
