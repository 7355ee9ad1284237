//! Report ids: strictly increasing across reports, restarts and wall-clock steps, and never
//! above 2^53 - 1, the largest integer the service's number type (a JSON number, a double)
//! holds exactly. An id is the wall clock in milliseconds, or the last id + 1 when the clock
//! is behind it. The state directory keeps an id reserved ahead of the last one given, and a
//! restart goes on above it and above the newest report still spooled, so neither a restart
//! (or a reboot with a wrong clock) nor a lost state file reuses one. A stored id tern could
//! not have given (see [`unusable`]) is set aside, with a log line, and the clock takes over.
//!
//! The reservation spares a synced file write at every report: ids are reserved as far ahead
//! as this run has lasted, at most an hour, so a long run writes the file once an hour and a
//! restart skips at most as many milliseconds of ids as the run before it lasted. A run that
//! crashes at once reserves nothing ahead: a restart loop cannot push ids away from the clock.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use log::{error, info, warn};

use crate::host::{
    durable,
    files::{self, Links},
};

/// The largest report id: 2^53 - 1.
pub const ID_BOUND: u64 = (1 << 53) - 1;
/// How far ahead of the clock a stored id may be: as far as a clock can plausibly have
/// stepped back since it was given (a dead RTC battery, a firmware's build date).
const AHEAD_MS: u64 = 10 * 31_557_600_000;
/// A clock before 2025-01-01 has not been set (no RTC, no time sync yet)...
const CLOCK_FLOOR_MS: u64 = 1_735_689_600_000;
/// ...and one after 9999-12-31 is broken: neither can judge an id, and then only ids more
/// than `AHEAD_MS` past this are refused. Every usable id is thus far below `ID_BOUND`.
const CLOCK_CEILING_MS: u64 = 253_402_300_799_999;

/// A report id and its newline.
const ID_MAX: u64 = 64;
/// The furthest ids are reserved ahead of the last one given.
const RESERVE_MAX: Duration = Duration::from_secs(3600);

const FILE: &str = "last_report_id";

#[derive(Debug)]
pub struct ReportIds {
    last: u64,
    /// The highest id the state directory holds: every id up to it may have been given.
    reserved: u64,
    started: Instant,
    path: PathBuf,
    /// The last reservation could not be written: said once, until one can again.
    unsaved: bool,
}

/// Why `id` is not one tern could have given at `now`, if it is not: 0, above `ID_BOUND`, or
/// more than 10 years ahead of the clock (of the year 9999 when the clock is unset or
/// broken).
pub fn unusable(id: u64, now: SystemTime) -> Option<String> {
    let clock = millis(now);
    let judge = if (CLOCK_FLOOR_MS..=CLOCK_CEILING_MS).contains(&clock) {
        clock
    } else {
        CLOCK_CEILING_MS
    };
    if id == 0 {
        Some("report id 0".into())
    } else if id > ID_BOUND {
        Some(format!(
            "report id {id}, above {ID_BOUND} (2^53 - 1), the largest a JSON number holds \
             exactly"
        ))
    } else if id > judge + AHEAD_MS {
        Some(format!(
            "report id {id}, more than 10 years ahead of the clock ({judge} ms)"
        ))
    } else {
        None
    }
}

impl ReportIds {
    /// Ids continuing from the last one recorded in `state_dir`, if any, and from
    /// `spooled`, the newest report id waiting in the spool, if any.
    pub fn open(state_dir: &Path, spooled: Option<u64>) -> Result<Self> {
        let path = state_dir.join(FILE);
        let stored = match files::read_text(&path, ID_MAX, Links::Refuse) {
            Ok((text, _)) => {
                let why = match text.trim().parse() {
                    Ok(id) => unusable(id, SystemTime::now()).map_or(Ok(id), Err),
                    Err(_) => Err("no report id".to_owned()),
                };
                why.unwrap_or_else(|why| {
                    set_aside(&path, &why);
                    0
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let last = match spooled {
            Some(spooled) if spooled > stored => {
                info!(
                    "report ids go on above {spooled}, the newest spooled report's ({} is \
                     missing or behind it)",
                    path.display()
                );
                spooled
            }
            _ => stored,
        };
        Ok(Self {
            last,
            reserved: last,
            started: Instant::now(),
            path,
            unsaved: false,
        })
    }

    /// The next id, reserved before it is returned. One that cannot be reserved is still
    /// good for this run; the log says once why a restart might not continue from it.
    pub fn next(&mut self) -> u64 {
        let id = self.next_at(SystemTime::now());
        if id <= self.reserved {
            return id;
        }
        let ahead = self.started.elapsed().min(RESERVE_MAX).as_millis() as u64;
        let reserve = id.saturating_add(ahead).min(ID_BOUND);
        match durable::replace(&self.path, format!("{reserve}\n").as_bytes()) {
            Ok(()) => {
                self.reserved = reserve;
                if std::mem::take(&mut self.unsaved) {
                    info!("{} can be written again", self.path.display());
                }
            }
            Err(e) => {
                if !self.unsaved {
                    error!(
                        "writing {}: {e}; after a restart, report ids may not continue from \
                         {id}",
                        self.path.display()
                    );
                }
                self.unsaved = true;
            }
        }
        id
    }

    fn next_at(&mut self, now: SystemTime) -> u64 {
        let wall = millis(now).min(CLOCK_CEILING_MS);
        // Every usable last id is far below the bound: this only keeps the promise.
        self.last = wall.max(self.last + 1).min(ID_BOUND);
        self.last
    }
}

fn millis(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Moves an unusable id file aside for a person to look at, and says so; the clock takes
/// over. One that cannot be moved (a read-only state directory) is left and ignored.
fn set_aside(path: &Path, why: &str) {
    match durable::set_aside(path) {
        Ok(aside) => warn!(
            "{} holds {why}: moved it to {} and continuing from the clock",
            path.display(),
            aside.display()
        ),
        Err(e) => warn!(
            "{} holds {why}: ignoring it and continuing from the clock (cannot move it \
             aside: {e})",
            path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, time::Duration};

    use super::*;

    fn in_memory() -> ReportIds {
        ReportIds {
            last: 0,
            reserved: 0,
            started: Instant::now(),
            path: PathBuf::new(),
            unsaved: false,
        }
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tern-ids-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn now_ms() -> u64 {
        millis(SystemTime::now())
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
        let dir = scratch("restart");
        let ahead = now_ms() + 5 * 31_557_600_000;
        fs::write(dir.join(FILE), format!("{ahead}\n")).unwrap();
        let mut ids = ReportIds::open(&dir, None).unwrap();
        let first = ids.next();
        assert_eq!(first, ahead + 1);
        let mut again = ReportIds::open(&dir, None).unwrap();
        let second = again.next();
        // A run that just started reserves (almost) nothing ahead.
        assert!(second > first && second <= first + 1000, "{first} {second}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ids_are_reserved_as_far_ahead_as_the_run_has_lasted_and_a_restart_skips_them() {
        let dir = scratch("reserve");
        let mut ids = ReportIds::open(&dir, None).unwrap();
        ids.started -= Duration::from_secs(600);
        let stored = || -> u64 {
            fs::read_to_string(dir.join(FILE))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let first = ids.next();
        let reserved = stored();
        assert!(
            (first + 600_000..first + 601_000).contains(&reserved),
            "{first} {reserved}"
        );
        fs::remove_file(dir.join(FILE)).unwrap();
        let second = ids.next();
        assert!(second > first);
        assert!(
            !dir.join(FILE).exists(),
            "an id within the reservation is not written"
        );
        fs::write(dir.join(FILE), format!("{reserved}\n")).unwrap();
        let mut again = ReportIds::open(&dir, None).unwrap();
        assert_eq!(again.next(), reserved + 1);
        ids.started -= Duration::from_secs(7200);
        ids.last = reserved;
        let far = ids.next();
        assert_eq!(stored(), far + 3_600_000, "an hour ahead at most");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ids_go_on_above_the_newest_spooled_report() {
        let dir = scratch("spooled");
        let spooled = now_ms() + 3_600_000;
        let mut ids = ReportIds::open(&dir, Some(spooled)).unwrap();
        assert_eq!(ids.next(), spooled + 1);
        fs::write(dir.join(FILE), format!("{}\n", spooled + 10)).unwrap();
        let mut ids = ReportIds::open(&dir, Some(spooled)).unwrap();
        assert_eq!(ids.next(), spooled + 11);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_id_file_is_set_aside_and_the_clock_takes_over() {
        let dir = scratch("bad");
        fs::write(dir.join(FILE), "garbage").unwrap();
        let mut ids = ReportIds::open(&dir, None).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("last_report_id.corrupt")).unwrap(),
            "garbage"
        );
        assert!(ids.next() > 1_700_000_000_000);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ids_above_the_bound_or_far_ahead_of_the_clock_are_set_aside() {
        for (tag, stored) in [
            ("max", u64::MAX - 2),
            ("bound", ID_BOUND),
            ("ahead", now_ms() + 11 * 31_557_600_000),
        ] {
            let dir = scratch(tag);
            fs::write(dir.join(FILE), format!("{stored}\n")).unwrap();
            let mut ids = ReportIds::open(&dir, None).unwrap();
            assert!(dir.join("last_report_id.corrupt").exists(), "{tag}");
            let (first, second) = (ids.next(), ids.next());
            assert!(
                first >= now_ms() - 60_000 && first < second,
                "{tag}: {first}"
            );
            assert!(second <= now_ms() + 1000, "{tag}: {second}");
            fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn an_unset_or_broken_clock_judges_ids_by_the_year_9999() {
        let unset = UNIX_EPOCH + Duration::from_secs(60);
        let now_ish = 1_800_000_000_000;
        assert_eq!(
            unusable(now_ish, unset),
            None,
            "a clock at 1970 cannot judge"
        );
        assert!(unusable(CLOCK_CEILING_MS + AHEAD_MS + 1, unset).is_some());
        let broken = UNIX_EPOCH + Duration::from_secs(u64::MAX / 2);
        assert_eq!(unusable(CLOCK_CEILING_MS, broken), None);
        assert!(unusable(0, broken).is_some());
        let mut ids = in_memory();
        assert_eq!(ids.next_at(broken), CLOCK_CEILING_MS);
        assert_eq!(ids.next_at(broken), CLOCK_CEILING_MS + 1);
    }
}
