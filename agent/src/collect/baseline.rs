//! The baseline: the readings the collectors take their next deltas from, kept after every
//! report (in the state directory, and with the report in the spool), so that a tern started
//! after a crash continues where the last report left off and the kernel's counts since are
//! reported once, neither lost nor repeated. Valid only in the boot it was taken in; the
//! readings of the programs' maps only for the maps they were read from (the pinned counters
//! map's id). A graceful stop, which reports everything, closes it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use log::warn;
use serde::{Deserialize, Serialize};

use crate::host::{
    durable,
    files::{self, Links},
    snmp::KernelCounters,
};

/// Far above what 1,024 interface slots and the event counters take.
const MAX_BYTES: u64 = 1 << 20;
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// The report these readings were taken for.
    pub report: u64,
    /// The kernel's boot id: counters start again at every boot.
    pub boot: String,
    /// The id of the counters map the programs' readings come from.
    pub maps: Option<u32>,
    /// Each None where that source was not read.
    pub program_traffic: Option<Vec<(u32, [u64; 4])>>,
    pub program_counters: Option<Vec<u64>>,
    pub link_traffic: Option<Vec<(u32, [u64; 4])>>,
    pub kernel: Option<KernelCounters>,
    /// Written at a graceful stop: nothing to continue from.
    #[serde(default)]
    pub closed: bool,
}

/// Where the baseline of `state_dir` is kept.
fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(Baseline::FILE)
}

impl Baseline {
    /// Its name in the state directory.
    pub const FILE: &str = "baseline";

    /// The boot this process runs in.
    pub fn this_boot() -> Result<String> {
        let (text, _) = files::read_text(Path::new(BOOT_ID), 64, Links::Follow)
            .with_context(|| format!("reading {BOOT_ID}"))?;
        Ok(text.trim().to_owned())
    }

    /// The newest baseline an earlier tern of this boot kept: in the state directory, or
    /// `spooled` with the newest report waiting in the spool (kept there first); none after a
    /// graceful stop.
    pub fn load(state_dir: &Path, boot: &str, spooled: Option<Vec<u8>>) -> Option<Self> {
        let spooled = spooled
            .and_then(|bytes| serde_json::from_slice::<Self>(&bytes).ok())
            .filter(|b| b.boot == boot);
        let newest = match (Self::load_file(state_dir, boot), spooled) {
            (Some(file), Some(spooled)) if spooled.report > file.report => Some(spooled),
            (file, spooled) => file.or(spooled),
        };
        newest.filter(|b| !b.closed)
    }

    /// Its bytes, as the state directory and the spool keep them.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain numbers, strings and lists: nothing here can fail to serialise.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The baseline kept in the state directory; one that cannot be read is moved aside
    /// with a line saying so.
    fn load_file(state_dir: &Path, boot: &str) -> Option<Self> {
        let path = path(state_dir);
        let text = match files::read_text(&path, MAX_BYTES, Links::Refuse) {
            Ok((text, _)) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!(
                    "cannot read {} ({e}); the counts since the last report before the \
                     restart are not reported",
                    path.display()
                );
                return None;
            }
        };
        // What a power loss leaves of a file written without a sync: nothing, or zeros.
        if text.bytes().all(|b| b == 0) {
            return None;
        }
        match serde_json::from_str::<Self>(&text) {
            Ok(baseline) if baseline.boot == boot => Some(baseline),
            Ok(_) => None,
            Err(err) => {
                let aside = durable::set_aside(&path).map_or_else(
                    |e| format!("could not move it aside: {e}"),
                    |p| format!("moved it to {}", p.display()),
                );
                warn!(
                    "{} is not a baseline tern wrote ({err}); {aside}; the counts since the \
                     last report before the restart are not reported",
                    path.display()
                );
                None
            }
        }
    }

    /// Keeps the baseline for a successor of this boot; a crash leaves the old one or the
    /// new one.
    pub fn save(&self, state_dir: &Path) -> Result<()> {
        let path = path(state_dir);
        // Readings of another boot are never continued from: a power loss may lose these.
        durable::replace_for_this_boot(&path, &self.to_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Closes the books at a graceful stop: everything counted up to report `last` is
    /// reported, so no successor continues from these readings, nor from those spooled
    /// with reports up to `last` that still wait for the broker.
    pub fn close(state_dir: &Path, last: u64, boot: &str) {
        let closed = Self {
            report: last,
            boot: boot.to_owned(),
            closed: true,
            ..Self::default()
        };
        if let Err(err) = closed.save(state_dir) {
            warn!(
                "{err:#}; a tern started next may report the kernel's own counts since the \
                 last report again"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn baseline(report: u64, boot: &str) -> Baseline {
        Baseline {
            report,
            boot: boot.to_owned(),
            program_counters: Some(vec![report; 3]),
            ..Baseline::default()
        }
    }

    #[test]
    fn the_newest_of_the_state_directory_and_the_spool_is_continued_from() {
        let dir = std::env::temp_dir().join(format!("tern-baseline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(Baseline::load(&dir, "b1", None), None);
        baseline(5, "b1").save(&dir).unwrap();
        let spooled = |report, boot| Some(baseline(report, boot).to_bytes());
        // Spooled with a newer report, its readings not yet kept beside it: a crash between.
        assert_eq!(
            Baseline::load(&dir, "b1", spooled(7, "b1")),
            Some(baseline(7, "b1"))
        );
        assert_eq!(
            Baseline::load(&dir, "b1", spooled(3, "b1")),
            Some(baseline(5, "b1"))
        );
        // Readings of another boot are of counters that started again.
        assert_eq!(
            Baseline::load(&dir, "b1", spooled(9, "b0")),
            Some(baseline(5, "b1"))
        );
        assert_eq!(Baseline::load(&dir, "b2", spooled(9, "b1")), None);
        // A graceful stop after report 9: what is spooled up to it is no longer continued.
        Baseline::close(&dir, 9, "b1");
        assert_eq!(Baseline::load(&dir, "b1", spooled(9, "b1")), None);
        assert_eq!(
            Baseline::load(&dir, "b1", spooled(10, "b1")),
            Some(baseline(10, "b1"))
        );
        std::fs::remove_file(path(&dir)).unwrap();
        assert_eq!(
            Baseline::load(&dir, "b1", spooled(2, "b1")),
            Some(baseline(2, "b1"))
        );
        std::fs::write(path(&dir), "not json").unwrap();
        assert_eq!(Baseline::load(&dir, "b1", None), None);
        assert!(dir.join("baseline.corrupt").exists(), "set aside");
        // What a power loss leaves of an unsynced file is no baseline, and nothing to set
        // aside.
        std::fs::remove_file(dir.join("baseline.corrupt")).unwrap();
        for left in [&b""[..], &[0; 64][..]] {
            std::fs::write(path(&dir), left).unwrap();
            assert_eq!(Baseline::load(&dir, "b1", None), None);
            assert!(!dir.join("baseline.corrupt").exists());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
