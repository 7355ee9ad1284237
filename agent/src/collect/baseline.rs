//! The baseline: the readings the collectors take their next deltas from, kept in the state
//! directory after every report, so that a tern started after a crash continues where the
//! last report left off and the kernel's counts since are reported once, neither lost nor
//! repeated. Valid only in the boot it was taken in; the readings of the programs' maps only
//! for the maps they were read from (the pinned counters map's id). A graceful stop, which
//! reports everything, removes it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use log::warn;
use serde::{Deserialize, Serialize};

use crate::{
    config::state_dir,
    host::{
        durable,
        files::{self, Links},
        snmp::KernelCounters,
    },
};

const FILE: &str = state_dir::BASELINE;
/// Far above what 1,024 interface slots and the event counters take.
const MAX_BYTES: u64 = 1 << 20;
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// The kernel's boot id: counters start again at every boot.
    pub boot: String,
    /// The id of the counters map the programs' readings come from.
    pub maps: Option<u32>,
    /// Each None where that source was not read.
    pub program_traffic: Option<Vec<(u32, [u64; 4])>>,
    pub program_counters: Option<Vec<u64>>,
    pub link_traffic: Option<Vec<(u32, [u64; 4])>>,
    pub kernel: Option<KernelCounters>,
}

/// Where the baseline of `state_dir` is kept.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

impl Baseline {
    /// The boot this process runs in.
    pub fn this_boot() -> Result<String> {
        let (text, _) = files::read_text(Path::new(BOOT_ID), 64, Links::Follow)
            .with_context(|| format!("reading {BOOT_ID}"))?;
        Ok(text.trim().to_owned())
    }

    /// The baseline an earlier tern of this boot kept, if any; one that cannot be read is
    /// moved aside with a line saying so.
    pub fn load(state_dir: &Path, boot: &str) -> Option<Self> {
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

    /// Keeps the baseline for a successor; a crash leaves the old one or the new one.
    pub fn save(&self, state_dir: &Path) -> Result<()> {
        let path = path(state_dir);
        let text = serde_json::to_vec(self).context("encoding the baseline")?;
        durable::replace(&path, &text).with_context(|| format!("writing {}", path.display()))
    }

    /// Forgets the baseline: everything counted is reported.
    pub fn remove(state_dir: &Path) {
        let path = path(state_dir);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!("cannot remove {}: {e}", path.display());
        }
    }
}
