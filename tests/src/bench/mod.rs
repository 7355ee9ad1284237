//! Benchmark helpers: run size, process and kernel-program costs, the peers tern is measured
//! against, a connection generator, and the figure files `cargo xtask bench` turns into
//! `bench/results.json` and `bench/results.md`.

pub mod churn;
pub mod floor;
pub mod peers;

use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
};

use serde_json::{Value, json};

use crate::{Tern, kernel_programs, sh};

/// How much a run measures, from TERN_BENCH: `full` (default), `quick`, or `smoke` (the
/// smallest case of each figure once, for `cargo xtask test`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    Smoke,
    Quick,
    Full,
}

impl Size {
    pub fn from_env() -> Self {
        match std::env::var("TERN_BENCH").as_deref() {
            Ok("smoke") => Self::Smoke,
            Ok("quick") => Self::Quick,
            _ => Self::Full,
        }
    }

    /// Picks the value for this size.
    pub fn pick<T>(self, smoke: T, quick: T, full: T) -> T {
        match self {
            Self::Smoke => smoke,
            Self::Quick => quick,
            Self::Full => full,
        }
    }
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// CPU time (user and system) a process's live threads have run, in nanoseconds, from the
/// scheduler's own accounting (`schedstat`), which is exact where `stat` counts 10 ms ticks.
pub fn process_cpu_ns(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/<pid>/task");
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// CPU time the calling thread has used, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// (resident, peak resident) memory of a process in KiB.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Kernel statistics of BPF programs (`kernel.bpf_stats_enabled`) on or off while alive; the
/// previous setting is restored when dropped, since it is global and costs every program
/// some time.
pub struct BpfStats {
    previous: String,
}

impl BpfStats {
    pub fn set(on: bool) -> Self {
        let previous = sh("sysctl", &["-n", "kernel.bpf_stats_enabled"])
            .trim()
            .to_owned();
        sh(
            "sysctl",
            &["-qw", &format!("kernel.bpf_stats_enabled={}", u8::from(on))],
        );
        Self { previous }
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::process::Command::new("sysctl")
            .args([
                "-qw",
                &format!("kernel.bpf_stats_enabled={}", self.previous),
            ])
            .status();
    }
}

/// Run time and run count of one program, or of a program name summed over its instances.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProgStat {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// The BPF programs a process holds, through its own descriptors, so other processes'
/// programs (another tern included) never mix in.
pub fn prog_ids_of(pid: u32) -> HashSet<u64> {
    let mut ids = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("fdinfo") {
        let Ok(text) = std::fs::read_to_string(entry.expect("an fd").path()) else {
            continue;
        };
        if let Some(id) = text.lines().find_map(|l| l.strip_prefix("prog_id:")) {
            ids.insert(id.trim().parse::<u64>().expect("a program id"));
        }
    }
    ids
}

/// The programs a tern started in `start` loaded: those in the kernel after it that were
/// not before. tern's main process holds none of its programs' descriptors (the kernel and
/// the link child keep them attached), so they are found by when they appeared.
pub fn programs_loaded_by(start: impl FnOnce() -> Tern) -> (Tern, HashSet<u64>) {
    let before = kernel_programs();
    let tern = start();
    let ids = kernel_programs().difference(&before).copied().collect();
    (tern, ids)
}

/// The statistics of programs `ids`, by program name.
pub fn prog_stats(ids: &HashSet<u64>) -> BTreeMap<String, ProgStat> {
    let all: Value = serde_json::from_str(&sh("bpftool", &["-j", "prog", "show"])).expect("json");
    let mut stats: BTreeMap<String, ProgStat> = BTreeMap::new();
    for prog in all.as_array().expect("a program list") {
        if !ids.contains(&prog["id"].as_u64().unwrap_or(0)) {
            continue;
        }
        let name = prog["name"].as_str().unwrap_or("?").to_owned();
        let stat = stats.entry(name).or_default();
        stat.run_time_ns += prog["run_time_ns"].as_u64().unwrap_or(0);
        stat.run_cnt += prog["run_cnt"].as_u64().unwrap_or(0);
    }
    stats
}

/// `after - before` for every program.
pub fn prog_delta(
    before: &BTreeMap<String, ProgStat>,
    after: &BTreeMap<String, ProgStat>,
) -> BTreeMap<String, ProgStat> {
    after
        .iter()
        .map(|(name, a)| {
            let b = before.get(name).copied().unwrap_or_default();
            let delta = ProgStat {
                run_time_ns: a.run_time_ns - b.run_time_ns,
                run_cnt: a.run_cnt - b.run_cnt,
            };
            (name.clone(), delta)
        })
        .collect()
}

/// One figure: a table for the reader and the raw numbers behind it. Written to
/// `$TERN_BENCH_OUT/<id>.json`, which `cargo xtask bench` gathers.
pub struct Figure {
    pub id: &'static str,
    pub title: &'static str,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
    pub raw: Value,
}

impl Figure {
    pub fn write(&self) {
        println!("\n{}\n{}", self.title, self.columns.join(" | "));
        for row in &self.rows {
            println!("{}", row.join(" | "));
        }
        for note in &self.notes {
            println!("note: {note}");
        }
        assert!(!self.rows.is_empty(), "{} measured nothing", self.id);
        let dir = out_dir();
        std::fs::create_dir_all(&dir).expect("the figures directory");
        let doc = json!({
            "id": self.id,
            "title": self.title,
            "columns": self.columns,
            "rows": self.rows,
            "notes": self.notes,
            "raw": self.raw,
        });
        let path = dir.join(format!("{}.json", self.id));
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap())
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

fn out_dir() -> PathBuf {
    std::env::var_os("TERN_BENCH_OUT").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/.work/figures"),
        PathBuf::from,
    )
}

/// A number with `digits` decimals, or "-" when it could not be measured.
pub fn fmt(value: f64, digits: usize) -> String {
    if value.is_finite() {
        format!("{value:.digits$}")
    } else {
        "-".to_owned()
    }
}
