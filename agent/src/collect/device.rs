//! Device readings that need no eBPF: the share of CPU time spent busy over the interval
//! (`/proc/stat`) and the memory in use at report time (`/proc/meminfo`).

use std::fs;

use log::warn;

use crate::report::{
    CustomMetric, Number,
    catalog::{CPU_USAGE, MEMORY_USED, Metric},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CpuTimes {
    busy: u64,
    total: u64,
}

pub struct DeviceCollector {
    last: Option<CpuTimes>,
}

impl DeviceCollector {
    /// Takes the first CPU reading, so the first report covers its own interval.
    pub fn start() -> Self {
        Self { last: read_cpu() }
    }

    pub fn collect(&mut self) -> Vec<(Metric, CustomMetric)> {
        let mut out = Vec::new();
        let now = read_cpu();
        if let (Some(before), Some(now)) = (self.last, now)
            && let Some(percent) = usage(before, now)
        {
            out.push((CPU_USAGE, CustomMetric::Number(Number::Reading(percent))));
        }
        self.last = now.or(self.last);
        match fs::read_to_string("/proc/meminfo").map(|m| memory_used(&m)) {
            Ok(Some(bytes)) => out.push((MEMORY_USED, bytes.into())),
            Ok(None) => warn!("/proc/meminfo lacks MemTotal or MemAvailable; memory_used left out"),
            Err(err) => warn!("cannot read /proc/meminfo: {err}; memory_used left out"),
        }
        out
    }
}

fn read_cpu() -> Option<CpuTimes> {
    match fs::read_to_string("/proc/stat") {
        Ok(stat) => cpu_times(&stat),
        Err(err) => {
            warn!("cannot read /proc/stat: {err}; cpu_usage left out");
            None
        }
    }
}

/// The "cpu" line: user nice system idle iowait irq softirq steal (guest time is already in
/// user). Idle and iowait are not busy.
fn cpu_times(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: total - idle,
        total,
    })
}

/// Percent busy between two readings, with two decimals; none if no time passed or the
/// counters went backwards.
fn usage(before: CpuTimes, now: CpuTimes) -> Option<f64> {
    let total = now.total.checked_sub(before.total).filter(|t| *t > 0)?;
    let busy = now.busy.checked_sub(before.busy)?;
    Some((busy as f64 * 10_000.0 / total as f64).round() / 100.0)
}

/// MemTotal − MemAvailable, in bytes.
fn memory_used(meminfo: &str) -> Option<u64> {
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
    };
    Some(field("MemTotal:")?.saturating_sub(field("MemAvailable:")?) * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_usage_is_the_busy_share_between_two_readings() {
        let before = cpu_times("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3").unwrap();
        let now = cpu_times("cpu  250 0 100 1550 100 0 0 0 0 0\n").unwrap();
        // 200 busy out of 1000.
        assert_eq!(usage(before, now), Some(20.0));
        let third = cpu_times("cpu  251 0 100 1551 100 0 0 0 0 0\n").unwrap();
        assert_eq!(usage(now, third), Some(50.0));
        assert_eq!(usage(now, now), None);
        assert_eq!(usage(now, before), None);
    }

    #[test]
    fn memory_used_is_total_minus_available() {
        let meminfo = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    400 kB\n";
        assert_eq!(memory_used(meminfo), Some(600 * 1024));
        assert_eq!(memory_used("MemTotal: 5 kB\n"), None);
    }

    #[test]
    fn a_malformed_stat_line_gives_no_reading() {
        assert_eq!(cpu_times("cpu  a b c\n"), None);
        assert_eq!(cpu_times("intr 1 2\n"), None);
    }
}
