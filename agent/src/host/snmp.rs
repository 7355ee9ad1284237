//! The kernel's own cumulative counters of tern's namespace: TCP resets sent, failed
//! connection attempts and retransmitted segments, and datagrams to closed UDP ports
//! (`/proc/net/snmp`, `/proc/net/snmp6`), with the host's process creations since boot
//! (`/proc/stat`). Read by field name, never by column; a missing file or field is an error
//! naming it.

use std::{collections::HashMap, fs, io::ErrorKind, path::Path};

use anyhow::{Context, Result, anyhow, bail};

/// The namespace files of the calling thread: `/proc/net` follows the process's main thread,
/// which need not be in the namespace of the thread that reads.
const SNMP: &str = "/proc/thread-self/net/snmp";
const SNMP6: &str = "/proc/thread-self/net/snmp6";
/// Present whenever the kernel runs IPv6 (absent when built without it or booted with
/// `ipv6.disable=1`).
const IPV6_SYSCTLS: &str = "/proc/sys/net/ipv6";
const STAT: &str = "/proc/stat";

/// The counters at one moment, each cumulative since boot (the namespace's since its
/// creation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelCounters {
    /// Tcp OutRsts: TCP segments sent with RST.
    pub tcp_out_rsts: u64,
    /// Tcp AttemptFails: handshakes that failed, inbound or outbound (RFC 4022's
    /// tcpAttemptFails).
    pub tcp_attempt_fails: u64,
    /// Tcp RetransSegs: TCP segments retransmitted.
    pub tcp_retrans_segs: u64,
    /// Udp NoPorts: IPv4 datagrams that reached no socket.
    pub udp_no_ports: u64,
    /// Udp6NoPorts: IPv6 datagrams that reached no socket; 0 on a kernel without IPv6.
    pub udp6_no_ports: u64,
    /// `processes` of /proc/stat: processes and threads created on the host since boot.
    pub processes: u64,
}

/// Reads every counter now.
pub fn read() -> Result<KernelCounters> {
    let snmp_text = read_file(SNMP)?;
    let snmp = Snmp::parse(&snmp_text, SNMP)?;
    let udp6_no_ports = match fs::read_to_string(SNMP6) {
        Ok(text) => snmp6_field(&text, "Udp6NoPorts", SNMP6)?,
        // No IPv6 in this kernel: no IPv6 datagram can arrive, closed port or not.
        Err(err) if err.kind() == ErrorKind::NotFound && !Path::new(IPV6_SYSCTLS).exists() => 0,
        Err(err) => return Err(err).with_context(|| format!("reading {SNMP6}")),
    };
    Ok(KernelCounters {
        tcp_out_rsts: snmp.field("Tcp", "OutRsts")?,
        tcp_attempt_fails: snmp.field("Tcp", "AttemptFails")?,
        tcp_retrans_segs: snmp.field("Tcp", "RetransSegs")?,
        udp_no_ports: snmp.field("Udp", "NoPorts")?,
        udp6_no_ports,
        processes: stat_processes(&read_file(STAT)?, STAT)?,
    })
}

fn read_file(path: &str) -> Result<String> {
    fs::read_to_string(path).with_context(|| {
        format!("reading {path}: the kernel's counters need /proc mounted and a Linux kernel")
    })
}

/// /proc/net/snmp: per protocol, a line of field names (`Tcp: RtoAlgorithm RtoMin ...`)
/// then a line of values (`Tcp: 1 200 ...`).
struct Snmp<'a> {
    path: &'a str,
    values: HashMap<(&'a str, &'a str), &'a str>,
}

impl<'a> Snmp<'a> {
    fn parse(text: &'a str, path: &'a str) -> Result<Self> {
        let mut values = HashMap::new();
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        // Two lines per protocol; the file has a dozen.
        for _ in 0..1024 {
            let Some(names) = lines.next() else {
                return Ok(Self { path, values });
            };
            let (protocol, names) = names
                .split_once(':')
                .ok_or_else(|| anyhow!("{path}: line {names:?} has no \"Protocol:\" prefix"))?;
            let numbers = lines
                .next()
                .and_then(|l| l.split_once(':'))
                .filter(|(p, _)| *p == protocol)
                .map(|(_, v)| v)
                .ok_or_else(|| anyhow!("{path}: the names of {protocol} have no values line"))?;
            let (names, numbers): (Vec<_>, Vec<_>) = (
                names.split_whitespace().collect(),
                numbers.split_whitespace().collect(),
            );
            if names.len() != numbers.len() {
                bail!(
                    "{path}: {protocol} has {} names but {} values",
                    names.len(),
                    numbers.len()
                );
            }
            values.extend(names.into_iter().map(|n| (protocol, n)).zip(numbers));
        }
        bail!("{path} has more lines than any kernel writes")
    }

    fn field(&self, protocol: &str, name: &str) -> Result<u64> {
        let value = self.values.get(&(protocol, name)).ok_or_else(|| {
            anyhow!(
                "{}: no field {protocol} {name}; this kernel does not count it",
                self.path
            )
        })?;
        counter(value, &format!("{protocol} {name}"), self.path)
    }
}

/// /proc/net/snmp6: one `Name value` pair per line.
fn snmp6_field(text: &str, name: &str, path: &str) -> Result<u64> {
    named_value(text, name, path)
}

/// /proc/stat: the `processes N` line.
fn stat_processes(text: &str, path: &str) -> Result<u64> {
    named_value(text, "processes", path)
}

/// The value of the line `name value` of `text`.
fn named_value(text: &str, name: &str, path: &str) -> Result<u64> {
    let value = text
        .lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(name)).then(|| words.next())
        })
        .ok_or_else(|| anyhow!("{path}: no line {name:?}; this kernel does not count it"))?
        .ok_or_else(|| anyhow!("{path}: the line {name:?} has no value"))?;
    counter(value, name, path)
}

fn counter(value: &str, name: &str, path: &str) -> Result<u64> {
    value
        .parse()
        .map_err(|_| anyhow!("{path}: {name} is {value:?}, not a counter"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP_TEXT: &str = "\
Ip: Forwarding DefaultTTL InReceives
Ip: 2 64 26706
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 134 56 3 29 0 26531 15189 7 0 65 0
Udp: InDatagrams NoPorts InErrors OutDatagrams
Udp: 173 11 0 175
UdpLite: InDatagrams NoPorts InErrors OutDatagrams
UdpLite: 0 99 0 0
";

    #[test]
    fn snmp_fields_are_found_by_name() {
        let snmp = Snmp::parse(SNMP_TEXT, "snmp").unwrap();
        assert_eq!(snmp.field("Tcp", "OutRsts").unwrap(), 65);
        assert_eq!(snmp.field("Tcp", "AttemptFails").unwrap(), 3);
        assert_eq!(snmp.field("Tcp", "RetransSegs").unwrap(), 7);
        // UdpLite's NoPorts is another protocol's.
        assert_eq!(snmp.field("Udp", "NoPorts").unwrap(), 11);
    }

    #[test]
    fn snmp_fields_in_another_order_read_the_same() {
        let text = "\
Udp: OutDatagrams NoPorts InDatagrams
Udp: 175 11 173
Tcp: OutRsts InSegs RetransSegs AttemptFails MaxConn
Tcp: 65 26531 7 3 -1
";
        let snmp = Snmp::parse(text, "snmp").unwrap();
        assert_eq!(snmp.field("Tcp", "OutRsts").unwrap(), 65);
        assert_eq!(snmp.field("Tcp", "AttemptFails").unwrap(), 3);
        assert_eq!(snmp.field("Tcp", "RetransSegs").unwrap(), 7);
        assert_eq!(snmp.field("Udp", "NoPorts").unwrap(), 11);
    }

    #[test]
    fn a_missing_snmp_field_is_an_error_naming_it() {
        let text = "Tcp: ActiveOpens RetransSegs\nTcp: 1 2\n";
        let snmp = Snmp::parse(text, "/proc/x/snmp").unwrap();
        let err = snmp.field("Tcp", "OutRsts").unwrap_err().to_string();
        assert!(
            err.contains("Tcp OutRsts") && err.contains("/proc/x/snmp"),
            "{err}"
        );
        let err = snmp.field("Udp", "NoPorts").unwrap_err().to_string();
        assert!(err.contains("Udp NoPorts"), "{err}");
    }

    #[test]
    fn malformed_snmp_text_is_an_error() {
        for (text, says) in [
            ("Tcp: A B\nTcp: 1\n", "2 names but 1 values"),
            ("Tcp: A B\nUdp: 1 2\n", "no values line"),
            ("Tcp: A B\n", "no values line"),
            ("no colon here\n", "prefix"),
        ] {
            let err = Snmp::parse(text, "snmp").err().expect(text).to_string();
            assert!(err.contains(says), "{text:?}: {err}");
        }
        let snmp = Snmp::parse("Tcp: OutRsts\nTcp: many\n", "snmp").unwrap();
        let err = snmp.field("Tcp", "OutRsts").unwrap_err().to_string();
        assert!(err.contains("not a counter"), "{err}");
    }

    #[test]
    fn snmp6_and_stat_lines_are_found_by_name() {
        let snmp6 = "Udp6InDatagrams                 \t4\nUdp6NoPorts  \t9\nUdp6InErrors 0\n";
        assert_eq!(snmp6_field(snmp6, "Udp6NoPorts", "snmp6").unwrap(), 9);
        let err = snmp6_field("Udp6InDatagrams 4\n", "Udp6NoPorts", "/proc/x/snmp6")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Udp6NoPorts") && err.contains("/proc/x/snmp6"),
            "{err}"
        );
        let stat = "cpu  1 2 3\nctxt 99\nbtime 1700000000\nprocesses 184757\nprocs_running 2\n";
        assert_eq!(stat_processes(stat, "stat").unwrap(), 184_757);
        let err = stat_processes("cpu 1 2\nprocs_running 2\n", "/proc/stat")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"processes\""), "{err}");
        assert!(stat_processes("processes\n", "stat").is_err());
    }
}
