//! The outbox: what the collecting thread hands the publisher thread. The collecting side
//! adds tern's delivery counts to each report and spools it, and spools each violation
//! event judged on it; the publishing side takes the next entry to send out of the spool,
//! unencoded. Never connects, never encodes.
//!
//! Violations go out first, oldest first: an alarm is news now, and it is small, so it does
//! not wait behind a backlog of reports. For a generic broker every report goes out in
//! order; for AWS, which refuses reports about the past and more than one report per 5
//! minutes, everything spooled is folded into the newest report (`Report::absorb`) and sent
//! as one.

use std::{
    path::Path,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use log::{debug, error, info};
use tokio::sync::Notify;

use super::spool::{Key, Spool};
use crate::{
    detect::violation::Violation,
    report::{CustomMetric, Report, catalog, catalog::merge_rule},
};

/// Counts of the current interval, taken into each report as custom metrics.
#[derive(Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub unanswered: AtomicU64,
    pub dropped: AtomicU64,
}

/// What the collecting thread and the publisher thread share.
pub struct Shared {
    spool: Mutex<Spool>,
    pub wake: Notify,
    pub stop: AtomicBool,
    pub counters: Counters,
}

impl Shared {
    pub fn spool(&self) -> MutexGuard<'_, Spool> {
        // A panic elsewhere cannot leave the spool half-updated in memory: every change is
        // one map operation after its file operation.
        self.spool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The next report to publish: the oldest spooled one, or with `fold_all` (for AWS) all
    /// of them folded into the newest. Returns it and the spool entries it accounts for,
    /// oldest first. A spooled report that can no longer be read is skipped.
    pub fn next(&self, fold_all: bool) -> Option<(Report, Vec<u64>)> {
        let mut spool = self.spool();
        loop {
            let first = if fold_all {
                spool.newest()
            } else {
                spool.ids().next()
            }?;
            // One that cannot be read is gone from the spool: the next one is looked at.
            let Some(mut report) = spool.read(first) else {
                continue;
            };
            let mut accounted = Vec::new();
            if fold_all {
                let older: Vec<u64> = spool.ids().filter(|&id| id != first).collect();
                for id in older {
                    if let Some(old) = spool.read(id) {
                        report.absorb(&old, merge_rule);
                        accounted.push(id);
                    }
                }
            }
            accounted.push(first);
            return Some((report, accounted));
        }
    }

    /// The oldest violation waiting, with its key in the spool. One that can no longer be
    /// read is skipped.
    pub fn next_violation(&self) -> Option<(Key, Violation)> {
        let mut spool = self.spool();
        loop {
            let key = spool.first_violation()?;
            if let Some(violation) = spool.read_violation(key) {
                return Some((key, violation));
            }
        }
    }

    /// Drops spooled reports that cannot be sent, counting them as dropped.
    pub fn drop_unsendable(&self, spooled: &[u64]) {
        let mut spool = self.spool();
        for &id in spooled {
            spool.remove(id);
        }
        self.counters.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// The collecting side: spools reports and adds tern's own counts to them.
pub struct Outbox {
    shared: Arc<Shared>,
    /// The newest violation spooled: the report it was judged on, and its number there.
    last_violation: Key,
}

impl Outbox {
    /// Opens the spool in `state_dir`, bounded to `spool_bytes`; done during setup, before
    /// any thread starts. Reports the bound made it drop count as dropped.
    pub fn open(state_dir: &Path, spool_bytes: u64) -> Self {
        let (spool, dropped) = Spool::open(state_dir, spool_bytes);
        if !spool.is_empty() {
            let (reports, violations) = spool.counts();
            info!(
                "{reports} undelivered report(s) and {violations} violation(s) from an earlier \
                 run are spooled"
            );
        }
        let counters = Counters::default();
        counters.dropped.store(dropped, Ordering::SeqCst);
        Self {
            shared: Arc::new(Shared {
                spool: Mutex::new(spool),
                wake: Notify::new(),
                stop: AtomicBool::new(false),
                counters,
            }),
            last_violation: Key(0, 0),
        }
    }

    /// What the publisher shares with this side.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The newest report waiting in the spool.
    pub fn newest(&self) -> Option<u64> {
        self.shared.spool().newest()
    }

    /// Adds the interval's delivery counts to `report`, hands it to the spool (on disk, or
    /// in memory while the disk refuses) with `trailer` after it, runs `spooled` and wakes
    /// the publisher. Until `spooled` returns, the publisher cannot take the report, so
    /// whatever `spooled` records about it is recorded before the report can be delivered.
    pub fn push(&mut self, mut report: Report, trailer: &[u8], spooled: impl FnOnce()) {
        let c = &self.shared.counters;
        for (metric, counter) in [
            (catalog::REPORTS_ACCEPTED, &c.accepted),
            (catalog::REPORTS_REJECTED, &c.rejected),
            (catalog::REPORTS_UNANSWERED, &c.unanswered),
            (catalog::REPORTS_DROPPED, &c.dropped),
        ] {
            report.set_custom(
                metric.name,
                CustomMetric::from(counter.swap(0, Ordering::SeqCst)),
            );
        }
        let id = report.header.report_id;
        let mut spool = self.shared.spool();
        match spool.push(&report, trailer) {
            Ok(dropped) => {
                c.dropped.fetch_add(dropped, Ordering::SeqCst);
                spooled();
                drop(spool);
                self.shared.wake.notify_one();
                debug!("report {id} spooled");
            }
            Err(err) => {
                error!("{err:#}; report {id} is dropped");
                c.dropped.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// Spools `violation`, judged on report `report_id` (the one just pushed), after the
    /// violations already judged on it, and wakes the publisher.
    pub fn push_violation(&mut self, report_id: u64, violation: &Violation) {
        let n = match self.last_violation {
            Key(id, n) if id == report_id => n + 1,
            _ => 1,
        };
        let mut spool = self.shared.spool();
        match spool.push_violation(report_id, n, violation) {
            Ok(dropped) => {
                self.last_violation = Key(report_id, n);
                self.shared
                    .counters
                    .dropped
                    .fetch_add(dropped, Ordering::SeqCst);
                drop(spool);
                self.shared.wake.notify_one();
                debug!("violation {} spooled", violation.violation_id);
            }
            Err(err) => error!(
                "{err:#}; violation {} is not published (it is in the log)",
                violation.violation_id
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::{
        output::spool::tests::{report as traffic, violation},
        report::{Encoding, Format, Metrics, Names, NetworkStats},
    };

    #[test]
    fn reports_the_bound_drops_at_open_are_counted_in_the_next_report() {
        let dir = std::env::temp_dir().join(format!("tern-open-drop-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let size = serde_json::to_vec(&traffic(1_000_000, 1)).unwrap().len() as u64;
        let mut spool = Spool::open(&dir, 1 << 20).0;
        for id in 1_000_000..1_000_005 {
            spool.push(&traffic(id, 1), &[]).unwrap();
        }
        let mut outbox = Outbox::open(&dir, size * 3);
        assert_eq!(outbox.newest(), Some(1_000_004));
        outbox.push(traffic(1_000_005, 1), &[], || {});
        let newest = outbox.shared.spool().read(1_000_005).unwrap();
        assert_eq!(
            newest.custom_metrics[catalog::REPORTS_DROPPED.name],
            [CustomMetric::from(2)]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn violations_are_numbered_after_their_report_and_go_out_first_oldest_first() {
        let dir = std::env::temp_dir().join(format!("tern-outbox-v-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut outbox = Outbox::open(&dir, 1 << 20);
        outbox.push(traffic(100, 1), &[], || {});
        outbox.push_violation(100, &violation("a", 1_000));
        outbox.push_violation(100, &violation("b", 1_001));
        outbox.push(traffic(200, 1), &[], || {});
        outbox.push_violation(200, &violation("a", 2_000));
        let shared = outbox.shared();
        assert_eq!(shared.spool().counts(), (2, 3));
        let mut sent = Vec::new();
        while let Some((key, v)) = shared.next_violation() {
            sent.push((key, v.violation_id));
            shared.spool().remove(key);
        }
        assert_eq!(
            sent,
            [
                (Key(100, 1), "gw-7/a/1000".to_owned()),
                (Key(100, 2), "gw-7/b/1001".to_owned()),
                (Key(200, 1), "gw-7/a/2000".to_owned()),
            ]
        );
        assert_eq!(shared.next(false).unwrap().1, [100], "then the reports");
        assert_eq!(outbox.newest(), Some(200));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn for_aws_everything_spooled_folds_into_the_newest_report() {
        let dir = std::env::temp_dir().join(format!("tern-fold-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut spool = Spool::open(&dir, 1 << 20).0;
        for (id, bytes_in, accepted) in [(100, 10, 1), (200, 20, 0), (300, 30, 2)] {
            let mut report = Report::new(
                id,
                Metrics {
                    network_stats: Some(NetworkStats {
                        bytes_in,
                        packets_in: 1,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            );
            report.set_custom(catalog::REPORTS_ACCEPTED.name, CustomMetric::from(accepted));
            spool.push(&report, &[]).unwrap();
        }
        let shared = Shared {
            spool: Mutex::new(spool),
            wake: Notify::new(),
            stop: AtomicBool::new(false),
            counters: Counters::default(),
        };
        let (report, spooled) = shared.next(false).unwrap();
        assert_eq!(
            (report.header.report_id, spooled),
            (100, vec![100]),
            "a generic broker gets the oldest"
        );

        let (report, spooled) = shared.next(true).unwrap();
        assert_eq!(
            (report.header.report_id, spooled),
            (300, vec![100, 200, 300])
        );
        let encoding = Encoding {
            names: Names::Long,
            format: Format::Json,
            budget: 100_000,
        };
        let bytes = encoding.encode(&report).unwrap().bytes;
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["metrics"]["network_stats"]["bytes_in"], 60);
        assert_eq!(value["metrics"]["network_stats"]["packets_in"], 3);
        assert_eq!(
            value["custom_metrics"][catalog::REPORTS_ACCEPTED.name][0]["number"],
            3
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
