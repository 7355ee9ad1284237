//! The spool: reports waiting for the broker's acknowledgement, one file per report in
//! `<state dir>/spool`, named by the zero-padded report id and holding the report's
//! long-name JSON. A report is written (and synced) before it is published and removed
//! only once acknowledged, so outages and restarts lose nothing. Bounded in bytes: the
//! oldest reports go first. Holds only ids and sizes in memory: a report is read back from
//! its file when it is wanted. Never encodes or sends anything.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use log::{error, warn};

use crate::{
    config::state_dir,
    host::{
        durable,
        files::{self, Links},
    },
    report::Report,
};

const DIR: &str = state_dir::SPOOL;
const SUFFIX: &str = ".json";

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// Report id -> its size on disk, oldest first.
    entries: BTreeMap<u64, u64>,
    bytes: u64,
}

impl Spool {
    /// Opens (creating it 0700 if needed) the spool in `state_dir` and checks what an earlier
    /// run left there. Entries that do not parse are renamed `*.corrupt` and skipped.
    pub fn open(state_dir: &Path, max_bytes: u64) -> Result<Self> {
        let dir = state_dir.join(DIR);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating the spool directory {}", dir.display()))?;
        let mut spool = Self {
            dir,
            max_bytes,
            entries: BTreeMap::new(),
            bytes: 0,
        };
        let listing = fs::read_dir(&spool.dir)
            .with_context(|| format!("listing the spool {}", spool.dir.display()))?;
        for entry in listing {
            let path = entry
                .with_context(|| format!("listing the spool {}", spool.dir.display()))?
                .path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let Some(stem) = name.strip_suffix(SUFFIX) else {
                if name.ends_with(".tmp") {
                    // A write that a crash interrupted; its report was never acknowledged
                    // as spooled, so it is not a report of the spool.
                    let _ = fs::remove_file(&path);
                }
                continue;
            };
            let checked = stem
                .parse()
                .context("its name is not a report id")
                .and_then(|id| load(&path, id, max_bytes).map(|(_, size)| (id, size)));
            match checked {
                Ok((id, size)) => {
                    spool.bytes += size;
                    spool.entries.insert(id, size);
                }
                Err(err) => set_aside(&path, &err),
            }
        }
        Ok(spool)
    }

    /// Writes `report` durably, then drops the oldest reports while over the byte bound.
    /// Returns how many reports were dropped.
    pub fn push(&mut self, report: &Report) -> Result<u64> {
        let id = report.header.report_id;
        let bytes = serde_json::to_vec(report).context("serialising a report for the spool")?;
        let path = self.path(id);
        durable::replace(&path, &bytes)
            .with_context(|| format!("writing report {id} to {}", path.display()))?;
        let size = bytes.len() as u64;
        if let Some(old) = self.entries.insert(id, size) {
            self.bytes -= old;
        }
        self.bytes += size;
        let mut dropped = 0;
        while self.bytes > self.max_bytes && self.entries.len() > 1 {
            let Some((&oldest, _)) = self.entries.first_key_value() else {
                break;
            };
            self.remove(oldest);
            dropped += 1;
            warn!(
                "spool over {} bytes: dropped undelivered report {oldest}, the oldest",
                self.max_bytes
            );
        }
        Ok(dropped)
    }

    /// The ids of the reports waiting, oldest first.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.keys().copied()
    }

    /// Reads report `id` back. One that can no longer be read is set aside and forgotten.
    pub fn read(&mut self, id: u64) -> Option<Report> {
        let path = self.path(id);
        match load(&path, id, self.max_bytes) {
            Ok((report, _)) => Some(report),
            Err(err) => {
                set_aside(&path, &err);
                self.forget(id);
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Removes an acknowledged (or dropped) report; a report already gone is not an error.
    pub fn remove(&mut self, id: u64) {
        self.forget(id);
        let path = self.path(id);
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            error!(
                "cannot remove delivered report {}: {e}; it may be sent again after a restart",
                path.display()
            );
        }
    }

    /// Drops report `id` from the books, not from the disk.
    fn forget(&mut self, id: u64) {
        if let Some(size) = self.entries.remove(&id) {
            self.bytes -= size;
        }
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}{SUFFIX}"))
    }
}

/// Reads the report in `path`, which its name says is report `id`; returns it and its size.
/// An entry larger than the whole spool may hold is not one tern wrote.
fn load(path: &Path, id: u64, max_bytes: u64) -> Result<(Report, u64)> {
    let bytes = files::read(path, max_bytes, Links::Refuse)
        .context("reading it")?
        .bytes;
    let report = parse(&bytes)?;
    anyhow::ensure!(
        id == report.header.report_id,
        "its name says report {id} but it holds report {}",
        report.header.report_id
    );
    Ok((report, bytes.len() as u64))
}

/// A spool entry's report, if it is one tern could have written.
pub fn parse(bytes: &[u8]) -> Result<Report> {
    let report: Report = serde_json::from_slice(bytes).context("it is not a report")?;
    report
        .check()
        .map_err(|why| anyhow::anyhow!("it breaks the document's rules: {why}"))?;
    Ok(report)
}

/// Moves a bad entry out of the way for a person to look at; the spool goes on.
fn set_aside(path: &Path, err: &anyhow::Error) {
    match durable::set_aside(path) {
        Ok(aside) => warn!(
            "spool entry {} is unusable ({err:#}); moved it to {}",
            path.display(),
            aside.display()
        ),
        Err(e) => error!(
            "spool entry {} is unusable ({err:#}); cannot move it aside: {e}",
            path.display()
        ),
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::report::{Metrics, NetworkStats};

    /// A report of `bytes_in` bytes of traffic.
    pub fn report(id: u64, bytes_in: u64) -> Report {
        Report::new(
            id,
            Metrics {
                network_stats: Some(NetworkStats {
                    bytes_in,
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
    }

    #[test]
    fn fuzz_spool_entries() {
        let mut full = report(7, 1500);
        full.metrics.listening_tcp_ports = Some(crate::report::PortList {
            ports: vec![crate::report::Port {
                port: 22,
                interface: Some("eth0".into()),
            }],
            total: 1,
        });
        full.custom_metrics.insert(
            "interval_execs".into(),
            [crate::report::CustomMetric::from(3)],
        );
        let seeds = [report(1, 10), full].map(|r| serde_json::to_vec(&r).unwrap());
        crate::host::fuzz::run("spool", &seeds, |bytes| {
            let _ = parse(bytes);
        });
    }

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tern-spool-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn reports_survive_a_reopen_in_order_until_removed() {
        let dir = temp("reopen");
        let mut spool = Spool::open(&dir, 1 << 20).unwrap();
        for id in [30, 10, 20] {
            assert_eq!(spool.push(&report(id, id * 100)).unwrap(), 0);
        }
        spool.remove(10);
        let mut again = Spool::open(&dir, 1 << 20).unwrap();
        let ids: Vec<u64> = again.ids().collect();
        assert_eq!(ids, [20, 30]);
        assert_eq!(again.read(20).unwrap(), report(20, 2000));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn when_full_the_oldest_goes_first() {
        let dir = temp("full");
        let size = serde_json::to_vec(&report(1_000_000, 1)).unwrap().len() as u64;
        let mut spool = Spool::open(&dir, size * 3).unwrap();
        let mut dropped = 0;
        for id in 1_000_000..1_000_005 {
            dropped += spool.push(&report(id, 1)).unwrap();
        }
        assert_eq!(dropped, 2);
        let ids: Vec<u64> = spool.ids().collect();
        assert_eq!(ids, [1_000_002, 1_000_003, 1_000_004]);
        assert_eq!(fs::read_dir(dir.join(DIR)).unwrap().count(), 3);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_entry_that_breaks_the_documents_rules_is_set_aside_not_sent() {
        let dir = std::env::temp_dir().join(format!("tern-spool-rules-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join(DIR)).unwrap();
        let planted = [
            (
                7,
                r#"{"header":{"report_id":7,"version":"2.0"},"metrics":{"network_stats":{"bytes_in":1,"bytes_out":1,"packets_in":1,"packets_out":1}}}"#,
            ),
            (
                8,
                r#"{"header":{"report_id":8,"version":"1.0"},"metrics":{"listening_tcp_ports":{"ports":[{"port":22}],"total":99999}}}"#,
            ),
            (
                9,
                r#"{"header":{"report_id":9,"version":"1.0"},"custom_metrics":{"aws:forged":[{"number":1}]}}"#,
            ),
            (
                10,
                r#"{"header":{"report_id":10,"version":"1.0"},"metrics":{"listening_tcp_ports":{"ports":[{"port":22}],"total":1}}}"#,
            ),
        ];
        for (id, text) in planted {
            fs::write(dir.join(DIR).join(format!("{id:020}.json")), text).unwrap();
        }
        let mut spool = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(spool.ids().collect::<Vec<_>>(), vec![10]);
        assert!(spool.read(10).is_some());
        for id in [7, 8, 9] {
            assert!(
                dir.join(DIR).join(format!("{id:020}.corrupt")).exists(),
                "{id}"
            );
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_entry_is_set_aside_and_the_rest_load() {
        let dir = temp("corrupt");
        let mut spool = Spool::open(&dir, 1 << 20).unwrap();
        spool.push(&report(5, 1)).unwrap();
        fs::write(dir.join(DIR).join(format!("{:020}.json", 4)), b"{not json").unwrap();
        fs::write(dir.join(DIR).join(format!("{:020}.json", 3)), b"{}").unwrap();
        let again = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(again.len(), 1);
        assert!(dir.join(DIR).join(format!("{:020}.corrupt", 4)).exists());
        assert!(dir.join(DIR).join(format!("{:020}.corrupt", 3)).exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_entry_gone_bad_after_opening_is_set_aside_when_read() {
        let dir = temp("bad-later");
        let mut spool = Spool::open(&dir, 1 << 20).unwrap();
        spool.push(&report(6, 1)).unwrap();
        spool.push(&report(7, 1)).unwrap();
        fs::write(spool.path(6), b"{not json").unwrap();
        assert!(spool.read(6).is_none());
        assert_eq!(spool.ids().collect::<Vec<_>>(), [7]);
        assert!(dir.join(DIR).join(format!("{:020}.corrupt", 6)).exists());
        assert_eq!(spool.read(7).unwrap(), report(7, 1));
        fs::remove_dir_all(&dir).unwrap();
    }
}
