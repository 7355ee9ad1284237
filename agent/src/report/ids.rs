//! Report ids: strictly increasing across reports, restarts and wall-clock steps. An id is
//! the wall clock in milliseconds, or the last id + 1 when the clock is behind it; the last
//! id is kept in the state directory so a restart (or a reboot with a wrong clock) never
//! reuses one.

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};

use crate::host::{
    durable,
    files::{self, Links},
};

/// A report id and its newline.
const ID_MAX: u64 = 64;

const FILE: &str = "last_report_id";

#[derive(Debug)]
pub struct ReportIds {
    last: u64,
    path: PathBuf,
}

impl ReportIds {
    /// Ids continuing from the last one recorded in `state_dir`, if any.
    pub fn open(state_dir: &Path) -> Result<Self> {
        let path = state_dir.join(FILE);
        let last = match files::read_text(&path, ID_MAX, Links::Refuse) {
            Ok((text, _)) => match text.trim().parse() {
                Ok(last) => last,
                Err(_) => {
                    // Set aside for a person to look at; the wall clock takes over.
                    let aside = durable::set_aside(&path)
                        .with_context(|| format!("moving {} aside", path.display()))?;
                    log::warn!(
                        "{} does not hold a report id; moved it to {} and continuing from \
                         the clock",
                        path.display(),
                        aside.display()
                    );
                    0
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Self { last, path })
    }

    /// The next id, recorded before it is returned. If it cannot be recorded the id is still
    /// good for this run; the error says why a restart might not continue from it.
    pub fn next(&mut self) -> (u64, Result<()>) {
        let id = self.next_at(SystemTime::now());
        (id, save(&self.path, id))
    }

    fn next_at(&mut self, now: SystemTime) -> u64 {
        let wall = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last = wall.max(self.last.saturating_add(1));
        self.last
    }
}

/// Records `id`; a crash leaves the old id or the new one, never half.
fn save(path: &Path, id: u64) -> Result<()> {
    durable::replace(path, format!("{id}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::{fs, time::Duration};

    use super::*;

    fn in_memory() -> ReportIds {
        ReportIds {
            last: 0,
            path: PathBuf::new(),
        }
    }

    #[test]
    fn ids_increase_even_when_the_clock_steps_back() {
        let mut ids = in_memory();
        let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let first = ids.next_at(t);
        assert_eq!(first, 1_800_000_000_000);
        let second = ids.next_at(t - Duration::from_secs(3600));
        assert_eq!(second, first + 1);
        assert!(ids.next_at(t + Duration::from_secs(1)) > second);
    }

    #[test]
    fn a_restart_continues_above_the_last_id_even_with_a_clock_far_behind() {
        let dir = std::env::temp_dir().join(format!("tern-ids-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(FILE), format!("{}\n", u64::MAX / 2)).unwrap();
        let mut ids = ReportIds::open(&dir).unwrap();
        let (id, saved) = ids.next();
        saved.unwrap();
        assert_eq!(id, u64::MAX / 2 + 1);
        let mut again = ReportIds::open(&dir).unwrap();
        assert_eq!(again.next().0, u64::MAX / 2 + 2);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_id_file_is_set_aside_and_the_clock_takes_over() {
        let dir = std::env::temp_dir().join(format!("tern-ids-bad-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(FILE), "garbage").unwrap();
        let mut ids = ReportIds::open(&dir).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("last_report_id.corrupt")).unwrap(),
            "garbage"
        );
        let (id, saved) = ids.next();
        saved.unwrap();
        assert!(id > 1_700_000_000_000);
        fs::remove_dir_all(&dir).unwrap();
    }
}
