//! `cargo xtask bench`: prepares the peers (the Python sample agent in its own virtual
//! environment), runs the benchmark tests, and gathers the figure files they write into
//! `bench/results.json`, `bench/results.md` and the README's benchmark section.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::{
    cmd, dist,
    kernels::{self, INTERVAL_S as INTERVAL, MEMORY_CONNECTIONS},
    root_dir, status,
};

const SDK: &str = "AWSIoTDeviceDefenderAgentSDK==2.0.0";
const PSUTIL: &str = "psutil==7.2.2";
const README_START: &str = "<!-- bench:start -->";
const README_END: &str = "<!-- bench:end -->";

/// The run sizes the benchmark tests know (TERN_BENCH).
#[derive(Clone, Copy)]
pub enum Size {
    Smoke,
    Quick,
    Full,
}

impl Size {
    fn name(self) -> &'static str {
        match self {
            Self::Smoke => "smoke",
            Self::Quick => "quick",
            Self::Full => "full",
        }
    }
}

/// The Python interpreter of `bench/.work/venv` with the sample agent and psutil, created
/// and installed when missing. None, with a warning, when it cannot be had (no network):
/// the figures then say the Python collector was not run.
pub fn python() -> Option<PathBuf> {
    let venv = root_dir().join("bench/.work/venv");
    let python = venv.join("bin/python");
    let ready = |python: &Path| {
        Command::new(python)
            .args([
                "-c",
                "import AWSIoTDeviceDefenderAgentSDK.collector, psutil",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready(&python) {
        return Some(python);
    }
    eprintln!(
        "bench: installing {SDK} and {PSUTIL} into {}",
        venv.display()
    );
    // Debian's python3-venv serves the system interpreter, whatever else is on PATH.
    let made = Command::new("/usr/bin/python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", SDK, PSUTIL])
            .status()
            .is_ok_and(|s| s.success());
    if made && ready(&python) {
        Some(python)
    } else {
        eprintln!("bench: the Python sample agent could not be installed; its columns stay empty");
        None
    }
}

/// Runs the benchmark tests at `size`, writing one JSON file per figure into `out`.
pub fn run_tests(tern: &Path, size: Size, out: &Path) -> Result<()> {
    if out.exists() {
        fs::remove_dir_all(out).with_context(|| format!("clearing {}", out.display()))?;
    }
    let mut run = cmd(
        "cargo",
        &[
            "test",
            "--release",
            "--package",
            "tern-tests",
            "--test",
            "bench",
            "--",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
            "--skip",
            "hold_connections",
        ],
    );
    run.env("TERN_BIN", tern)
        .env("TERN_BENCH", size.name())
        .env("TERN_BENCH_OUT", out);
    if let Some(python) = python() {
        run.env("TERN_BENCH_PYTHON", python);
    }
    status(run)?;
    artifacts(out)
}

/// Figure 6: each release artifact's size, and the resident memory of the ARM ones in a
/// QEMU guest of their architecture, idle and with MEMORY_CONNECTIONS connections.
fn artifacts(out: &Path) -> Result<()> {
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    let measured = kernels::memory()?;
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    for target in dist::TARGETS {
        let bytes = fs::metadata(dist::build(target, "tern")?)?.len();
        let memory = measured.iter().find(|m| m.arch == target.debian);
        if let Some(m) = memory {
            ensure!(
                m.established >= MEMORY_CONNECTIONS,
                "the {} guest held {} connections, not {MEMORY_CONNECTIONS}",
                m.arch,
                m.established
            );
        }
        rows.push(vec![
            target.name.to_owned(),
            format!("{:.2} MiB", bytes as f64 / 1_048_576.0),
            memory.map_or("-".to_owned(), |m| {
                format!("{} (peak {})", mib(m.idle_kib), mib(m.idle_peak_kib))
            }),
            memory.map_or("-".to_owned(), |m| {
                format!("{} ({} reported)", mib(m.connected_kib), m.reported)
            }),
            memory.map_or("-".to_owned(), |m| m.kernel.clone()),
        ]);
        raw.push(json!({
            "target": target.triple,
            "bytes": bytes,
            "idle_kib": memory.map(|m| m.idle_kib),
            "idle_peak_kib": memory.map(|m| m.idle_peak_kib),
            "connected_kib": memory.map(|m| m.connected_kib),
            "established": memory.map(|m| m.established),
            "reported": memory.map(|m| m.reported),
        }));
    }
    let figure = json!({
        "id": "6-artifacts",
        "title": "6. Release artifacts: static binary size, and resident memory in a VM of their architecture",
        "columns": [
            "target",
            "static binary (goal < 6 MiB)",
            "VmRSS idle (goal < 8 MiB)",
            format!("VmRSS with {MEMORY_CONNECTIONS} connections"),
            "guest kernel",
        ],
        "rows": rows,
        "notes": [format!(
            "The binaries of `cargo xtask dist`; memory of tern's main process one interval after its first report, then two {INTERVAL}-second reports after {MEMORY_CONNECTIONS} TCP connections opened across a veth pair, in QEMU (TCG) with Debian's trixie kernels; x86_64's memory is figure 4's (host build)"
        )],
        "raw": raw,
    });
    fs::create_dir_all(out)?;
    fs::write(
        out.join("6-artifacts.json"),
        serde_json::to_string_pretty(&figure)? + "\n",
    )?;
    Ok(())
}

/// The figures in `out`, in the order of their ids.
pub fn figures(out: &Path) -> Result<Vec<Value>> {
    let mut paths: Vec<PathBuf> = fs::read_dir(out)
        .with_context(|| format!("reading {}", out.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    let figures = paths
        .iter()
        .map(|p| {
            let text = fs::read_to_string(p)?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
        })
        .collect::<Result<Vec<Value>>>()?;
    if figures.is_empty() {
        bail!("the benchmarks wrote no figures into {}", out.display());
    }
    Ok(figures)
}

/// Writes `bench/results.json`, `bench/results.md` and the README's section.
pub fn publish(figures: Vec<Value>, command: &str) -> Result<()> {
    let machine = machine();
    let root = root_dir();
    let doc = json!({"machine": machine, "command": command, "figures": figures});
    fs::write(
        root.join("bench/results.json"),
        serde_json::to_string_pretty(&doc)? + "\n",
    )?;
    let table = markdown(&doc);
    fs::write(
        root.join("bench/results.md"),
        format!("# tern benchmarks\n\n{table}"),
    )?;
    let readme_path = root.join("README.md");
    let readme = fs::read_to_string(&readme_path)?;
    let (Some(start), Some(end)) = (readme.find(README_START), readme.find(README_END)) else {
        bail!("README.md lacks the {README_START} / {README_END} lines");
    };
    let updated = format!(
        "{}{README_START}\n{table}{}",
        &readme[..start],
        &readme[end..]
    );
    fs::write(&readme_path, updated)?;
    println!("bench: wrote bench/results.json, bench/results.md and README.md");
    Ok(())
}

fn markdown(doc: &Value) -> String {
    let m = &doc["machine"];
    let mut md = format!(
        "Measured {} on {} ({} cores), Linux {}, with `{}`.\n",
        m["date"].as_str().unwrap_or("?"),
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        m["kernel"].as_str().unwrap_or("?"),
        doc["command"].as_str().unwrap_or("?"),
    );
    let cells = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|c| c.as_str().unwrap_or("").replace('|', "\\|"))
            .collect()
    };
    for figure in doc["figures"].as_array().into_iter().flatten() {
        let columns = cells(&figure["columns"]);
        md += &format!("\n#### {}\n\n", figure["title"].as_str().unwrap_or("?"));
        md += &format!("| {} |\n", columns.join(" | "));
        md += &format!("|{}\n", "---|".repeat(columns.len()));
        for row in figure["rows"].as_array().into_iter().flatten() {
            md += &format!("| {} |\n", cells(row).join(" | "));
        }
        for note in cells(&figure["notes"]) {
            md += &format!("\n{note}.\n");
        }
    }
    md
}

fn machine() -> Value {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".to_owned(), |(_, v)| v.trim().to_owned());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "kernel": kernel.trim(),
        "date": date,
    })
}
