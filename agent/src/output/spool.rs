// Over 400 lines: entries on disk and held in memory keep one set of books (ids, sizes,
// the bound); split, each half would need the other's.
//! The spool: reports and violation events waiting for the broker's acknowledgement, one
//! file each in `<state dir>/spool`. A report's is named by the zero-padded report id and
//! holds the report's long-name JSON on its first line, and after it a trailer the spool
//! does not read (the readings the report was taken from, for a successor after a crash).
//! A violation's is named by the report it was judged on and its place among that report's
//! violations (`<id>-<n>.violation`, a name an older tern leaves alone) and holds the event's
//! JSON. An entry is written (and synced) before it is published and removed only once
//! acknowledged, so outages and restarts lose nothing. While the directory cannot be written
//! (read-only, full, not the account's), entries wait in memory instead, said once in the
//! log, and go to disk as soon as it can be written again. Bounded in bytes, disk and memory
//! together: the oldest entries go first, never the newest report. Of the entries on disk it
//! holds only keys and sizes: an entry is read back from its file, and checked, when it is
//! wanted. Never encodes or sends anything.

use std::{
    collections::BTreeMap,
    fmt::Display,
    fs,
    io::{self, Read, Seek, SeekFrom},
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context, Result};
use log::{debug, error, info, warn};

use crate::{
    config::state_dir,
    detect::violation::Violation,
    host::{
        durable,
        files::{self, Links},
    },
    report::{Report, ids},
};

/// The largest trailer read back.
const TRAILER_MAX: usize = 1 << 20;
const DIR: &str = state_dir::SPOOL;
const SUFFIX: &str = ".json";
const VIOLATION_SUFFIX: &str = ".violation";

/// An entry's place in the spool's order: report `.0` itself when `.1` is 0, else the
/// `.1`-th violation judged on it, which comes after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key(pub u64, pub u32);

impl Key {
    pub fn is_report(self) -> bool {
        self.1 == 0
    }
}

impl From<u64> for Key {
    fn from(report_id: u64) -> Self {
        Self(report_id, 0)
    }
}

impl Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.1 {
            0 => write!(f, "report {}", self.0),
            n => write!(f, "violation {n} of report {}", self.0),
        }
    }
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// Where each entry waits, oldest first.
    entries: BTreeMap<Key, Entry>,
    /// On disk and in memory together.
    bytes: u64,
    /// The last write failed: new entries wait in memory, and the failure was said.
    unwritable: bool,
}

enum Entry {
    /// In its file, of this many bytes.
    Disk(u64),
    /// In memory while the directory cannot be written: the bytes its file would hold.
    Held(Vec<u8>),
}

impl Entry {
    fn size(&self) -> u64 {
        match self {
            Self::Disk(size) => *size,
            Self::Held(bytes) => bytes.len() as u64,
        }
    }
}

impl Spool {
    /// Opens (creating it 0700 if needed) the spool in `state_dir` and lists what an earlier
    /// run left there, by name and size: nothing is read until it is wanted. An entry whose
    /// name is no usable key, or larger than the whole spool may be, is renamed `*.corrupt`;
    /// then the oldest go while the spool is over its bound. Returns the spool and how many
    /// reports that dropped. A spool that cannot be made or listed starts in memory.
    pub fn open(state_dir: &Path, max_bytes: u64) -> (Self, u64) {
        let mut spool = Self {
            dir: state_dir.join(DIR),
            max_bytes,
            entries: BTreeMap::new(),
            bytes: 0,
            unwritable: false,
        };
        if let Err(e) = spool.list() {
            spool.cannot_write(&e);
        }
        let dropped = spool.trim();
        if let (Some(first), Some(last)) = (dropped.first(), dropped.last()) {
            warn!(
                "spool {} held more than spool-bytes ({max_bytes} bytes): dropped the {} \
                 oldest undelivered entries, {first} to {last}",
                spool.dir.display(),
                dropped.len()
            );
        }
        (spool, reports(&dropped))
    }

    fn list(&mut self) -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let now = SystemTime::now();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let key = if let Some(stem) = name.strip_suffix(SUFFIX) {
                stem.parse::<u64>().map(Key::from).ok()
            } else if let Some(stem) = name.strip_suffix(VIOLATION_SUFFIX) {
                stem.split_once('-')
                    .and_then(|(id, n)| Some(Key(id.parse().ok()?, n.parse().ok()?)))
                    .filter(|key| !key.is_report())
            } else {
                if name.ends_with(".tmp") {
                    // A write that a crash interrupted; its entry was never acknowledged
                    // as spooled, so it is not an entry of the spool.
                    let _ = fs::remove_file(&path);
                }
                continue;
            };
            let listed = match key {
                None => Err("its name is not a spool entry's".to_owned()),
                Some(key) => match ids::unusable(key.0, now) {
                    Some(why) => Err(format!("its name is {why}")),
                    None => entry
                        .metadata()
                        .map_err(|e| format!("cannot look at it: {e}"))
                        .and_then(|meta| match meta.len() {
                            size if size > self.max_bytes => Err(format!(
                                "it is {size} bytes, more than the whole spool may hold ({})",
                                self.max_bytes
                            )),
                            size => Ok((key, size)),
                        }),
                },
            };
            match listed {
                Ok((key, size)) => self.insert(key, Entry::Disk(size)),
                Err(why) => set_aside(&path, &why),
            }
        }
        Ok(())
    }

    /// Keeps `report` until it is acknowledged: written durably, or held in memory while
    /// the spool cannot be written. Then drops the oldest entries while over the byte
    /// bound; returns how many reports it dropped.
    pub fn push(&mut self, report: &Report, trailer: &[u8]) -> Result<u64> {
        let mut bytes = serde_json::to_vec(report).context("serialising a report for the spool")?;
        if !trailer.is_empty() {
            bytes.push(b'\n');
            bytes.extend_from_slice(trailer);
        }
        Ok(self.keep(report.header.report_id.into(), bytes))
    }

    /// Keeps `violation`, the `n`-th (from 1) judged on report `report_id`, as `push` keeps
    /// a report; returns how many reports making room for it dropped.
    pub fn push_violation(&mut self, report_id: u64, n: u32, violation: &Violation) -> Result<u64> {
        anyhow::ensure!(n > 0, "violations are numbered from 1");
        let bytes =
            serde_json::to_vec(violation).context("serialising a violation for the spool")?;
        Ok(self.keep(Key(report_id, n), bytes))
    }

    fn keep(&mut self, key: Key, bytes: Vec<u8>) -> u64 {
        let entry = match self.write(key, &bytes) {
            Ok(()) => {
                if self.unwritable {
                    self.write_held();
                }
                Entry::Disk(bytes.len() as u64)
            }
            Err(e) => {
                self.cannot_write(&e);
                Entry::Held(bytes)
            }
        };
        self.insert(key, entry);
        let dropped = self.trim();
        for oldest in &dropped {
            warn!(
                "spool over {} bytes: dropped undelivered {oldest}, the oldest",
                self.max_bytes
            );
        }
        reports(&dropped)
    }

    /// Writes one entry whole or not at all: the one way an entry reaches the disk. A spool
    /// directory that went away is made again.
    fn write(&self, key: Key, bytes: &[u8]) -> io::Result<()> {
        let path = self.path(key);
        match durable::replace(&path, bytes) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&self.dir)?;
                durable::replace(&path, bytes)
            }
            written => written,
        }
    }

    /// The spool can be written again: what waits in memory goes to disk, oldest first. If
    /// the disk refuses one again (full once more), the rest waits for the next write; the
    /// trouble was said already.
    fn write_held(&mut self) {
        let held: Vec<Key> = self
            .entries
            .iter()
            .filter(|(_, entry)| matches!(entry, Entry::Held(_)))
            .map(|(&key, _)| key)
            .collect();
        for &key in &held {
            let Some(Entry::Held(bytes)) = self.entries.get(&key) else {
                continue;
            };
            let size = bytes.len() as u64;
            if let Err(e) = self.write(key, bytes) {
                debug!("{key} held in memory still cannot be spooled: {e}");
                return;
            }
            self.entries.insert(key, Entry::Disk(size));
        }
        self.unwritable = false;
        let moved = match held.len() {
            0 => String::new(),
            n => format!(": the {n} entries held in memory are in it"),
        };
        info!(
            "the spool {} can be written again{moved}",
            self.dir.display()
        );
    }

    /// Says, once until a write succeeds again, why the spool cannot be written and how to
    /// fix it; reports wait in memory meanwhile.
    fn cannot_write(&mut self, e: &io::Error) {
        if self.unwritable {
            return;
        }
        self.unwritable = true;
        let fix = match e.raw_os_error() {
            Some(libc::EROFS) => {
                "its file system is read-only: remount it read-write, or point --state-dir \
                 (tern.state-dir) at a writable directory"
            }
            Some(libc::ENOSPC | libc::EDQUOT) => {
                "its file system is full: free space there, or point --state-dir \
                 (tern.state-dir) at a file system with room"
            }
            Some(libc::EACCES | libc::EPERM) => {
                "tern's account may not write there: give the directory back to the account \
                 with mode 0700 (restarting tern does)"
            }
            _ => "check the disk and its file system",
        };
        error!(
            "cannot write the spool {}: {e}; {fix}. Until it can be written, undelivered \
             reports and violations wait in memory (up to spool-bytes, {} bytes, the oldest \
             dropped first) and are lost if tern stops",
            self.dir.display(),
            self.max_bytes
        );
    }

    /// The ids of the reports waiting, oldest first.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries
            .keys()
            .filter(|key| key.is_report())
            .map(|key| key.0)
    }

    /// The newest report waiting.
    pub fn newest(&self) -> Option<u64> {
        self.entries
            .keys()
            .rev()
            .find(|key| key.is_report())
            .map(|key| key.0)
    }

    /// The oldest violation waiting.
    pub fn first_violation(&self) -> Option<Key> {
        self.entries.keys().find(|key| !key.is_report()).copied()
    }

    /// What follows report `id` in its entry (see `push`), if anything.
    /// Only the entry's end is read, never a whole report: the trailer is its last line, of at
    /// most `TRAILER_MAX` bytes.
    pub fn trailer(&self, id: u64) -> Option<Vec<u8>> {
        let tail = match self.entries.get(&Key::from(id))? {
            Entry::Held(bytes) => bytes[bytes.len().saturating_sub(TRAILER_MAX)..].to_vec(),
            Entry::Disk(_) => {
                let (mut file, meta) = files::open(&self.path(id.into()), Links::Refuse).ok()?;
                let from = meta.len().saturating_sub(TRAILER_MAX as u64);
                file.seek(SeekFrom::Start(from)).ok()?;
                let mut tail = Vec::new();
                file.take(TRAILER_MAX as u64).read_to_end(&mut tail).ok()?;
                tail
            }
        };
        // Neither the report's JSON nor the trailer holds a newline: the last one parts them.
        let at = tail.iter().rposition(|&b| b == b'\n')?;
        Some(tail[at + 1..].to_vec())
    }

    /// Reads report `id` back. One that can no longer be read is set aside and forgotten.
    pub fn read(&mut self, id: u64) -> Option<Report> {
        self.load(id.into(), |bytes| parse_as(bytes, id))
    }

    /// Reads violation `key` back, as `read` reads a report.
    pub fn read_violation(&mut self, key: Key) -> Option<Violation> {
        if key.is_report() {
            return None;
        }
        self.load(key, |bytes| {
            serde_json::from_slice(bytes).context("it is not a violation event")
        })
    }

    fn load<T>(&mut self, key: Key, parse: impl Fn(&[u8]) -> Result<T>) -> Option<T> {
        let path = self.path(key);
        let loaded = match self.entries.get(&key)? {
            Entry::Held(bytes) => parse(bytes),
            Entry::Disk(_) => files::read(&path, self.max_bytes, Links::Refuse)
                .context("reading it")
                .and_then(|contents| parse(&contents.bytes)),
        };
        match loaded {
            Ok(value) => Some(value),
            Err(err) => {
                if let Some(Entry::Disk(_)) = self.forget(key) {
                    set_aside(&path, &format!("{err:#}"));
                } else {
                    error!("{key} held in memory is unusable ({err:#}); dropped");
                }
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many reports and how many violations wait.
    pub fn counts(&self) -> (usize, usize) {
        let reports = self.ids().count();
        (reports, self.entries.len() - reports)
    }

    /// Removes an acknowledged (or dropped) entry; one already gone is not an error.
    pub fn remove(&mut self, key: impl Into<Key>) {
        let key = key.into();
        let Some(Entry::Disk(_)) = self.forget(key) else {
            return;
        };
        let path = self.path(key);
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            error!(
                "cannot remove delivered {key} ({}): {e}; it may be sent again after a restart",
                path.display()
            );
        }
    }

    /// At stop: entries held in memory are written if the spool takes them now, and what
    /// is left is said: on disk, it waits for the next run; in memory, it is lost.
    pub fn close(&mut self) {
        if self.unwritable {
            self.write_held();
        }
        let held = self
            .entries
            .values()
            .filter(|entry| matches!(entry, Entry::Held(_)))
            .count();
        let spooled = self.entries.len() - held;
        if spooled > 0 {
            info!(
                "{spooled} undelivered entries (reports and violations) stay spooled for the \
                 next run"
            );
        }
        if held > 0 {
            error!(
                "{held} undelivered entries (reports or violations) held in memory are lost: \
                 the spool {} could not be written",
                self.dir.display()
            );
        }
    }

    fn insert(&mut self, key: Key, entry: Entry) {
        self.bytes += entry.size();
        if let Some(old) = self.entries.insert(key, entry) {
            self.bytes -= old.size();
        }
    }

    /// Drops entry `key` from the books, not from the disk.
    fn forget(&mut self, key: Key) -> Option<Entry> {
        let entry = self.entries.remove(&key)?;
        self.bytes -= entry.size();
        Some(entry)
    }

    /// Drops the oldest entries while over the byte bound, always keeping the newest report
    /// (its readings carry a successor after a crash); returns their keys.
    fn trim(&mut self) -> Vec<Key> {
        let newest = self.newest().map(Key::from);
        let mut dropped = Vec::new();
        while self.bytes > self.max_bytes {
            let Some(&oldest) = self.entries.keys().find(|&&key| Some(key) != newest) else {
                break;
            };
            self.remove(oldest);
            dropped.push(oldest);
        }
        dropped
    }

    fn path(&self, key: Key) -> PathBuf {
        match key {
            Key(id, 0) => self.dir.join(format!("{id:020}{SUFFIX}")),
            Key(id, n) => self.dir.join(format!("{id:020}-{n}{VIOLATION_SUFFIX}")),
        }
    }
}

/// How many of `keys` are reports.
fn reports(keys: &[Key]) -> u64 {
    keys.iter().filter(|key| key.is_report()).count() as u64
}

/// The report in a spool entry whose name says it is report `id`, if it is one tern could
/// have written.
fn parse_as(bytes: &[u8], id: u64) -> Result<Report> {
    let report = parse(bytes)?;
    anyhow::ensure!(
        id == report.header.report_id,
        "its name says report {id} but it holds report {}",
        report.header.report_id
    );
    Ok(report)
}

/// A spool entry's report, if it is one tern could have written: its first line (a trailer
/// may follow).
pub fn parse(bytes: &[u8]) -> Result<Report> {
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let report: Report = serde_json::from_slice(line).context("it is not a report")?;
    report
        .check()
        .map_err(|why| anyhow::anyhow!("it breaks the document's rules: {why}"))?;
    Ok(report)
}

/// Moves a bad entry out of the way for a person to look at; the spool goes on.
fn set_aside(path: &Path, why: &dyn Display) {
    match durable::set_aside(path) {
        Ok(aside) => warn!(
            "spool entry {} is unusable ({why}); moved it to {}",
            path.display(),
            aside.display()
        ),
        Err(e) => error!(
            "spool entry {} is unusable ({why}); cannot move it aside: {e}",
            path.display()
        ),
    }
}

#[cfg(test)]
pub mod tests;
