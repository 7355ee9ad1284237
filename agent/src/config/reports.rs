//! What the reports of a configuration carry, checked so that none is lost: the user's
//! metrics (names not tern's own and given once, files the account can read), and the
//! smallest budget that holds every report, computed by encoding the widest report the
//! configuration can build with every list cut to nothing.

use std::collections::BTreeSet;

use super::{Account, ConfigArgs, Problem, file::TernSection, problem};
use crate::{
    collect::FileMetric,
    host::files::{self, Links},
    report::{
        Encoding, Kind,
        catalog::{self, CATALOG, Origin, Selection},
    },
};

/// The user's metrics: the file's, then the flags' (a flag replaces the file's metric of its
/// name), their names checked.
pub fn user_metrics(
    args: &ConfigArgs,
    tern: &TernSection,
    source: &str,
    problems: &mut Vec<Problem>,
) -> Vec<FileMetric> {
    let mut metrics = Vec::new();
    for spec in tern.metrics.iter().flatten() {
        match spec.metric() {
            Ok(metric) => metrics.push(metric),
            Err(e) => problem(
                problems,
                format!("{source}: tern.metrics {:?}: {e:#}", spec.name),
            ),
        }
    }
    for (i, metric) in args.metrics.iter().enumerate() {
        // A flag replaces the file's metric of its name, but not an earlier flag's.
        if args.metrics[..i].iter().any(|m| m.name == metric.name) {
            problem(
                problems,
                format!("--metric {}: given more than once; keep one", metric.name),
            );
        }
        metrics.retain(|m| m.name != metric.name);
        metrics.push(metric.clone());
    }
    for clash in clashes(&metrics) {
        problem(problems, format!("{source}: {clash}"));
    }
    metrics
}

/// Refuses a metric file that cannot be read at every report: it must be a regular file
/// now, and one that `account`, which tern drops to, may read.
pub fn check_files(
    source: &str,
    metrics: &[FileMetric],
    account: Option<&Account>,
    problems: &mut Vec<Problem>,
) {
    for metric in metrics {
        if let Some(why) = unreadable(metric, account) {
            problem(
                problems,
                format!(
                    "{source}: custom metric {} reads {}: {why}",
                    metric.name,
                    metric.path.display()
                ),
            );
        }
    }
}

/// User metrics whose names clash with tern's own (which would overwrite them) or with each
/// other.
fn clashes(metrics: &[FileMetric]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    for m in metrics {
        if let Some(own) = catalog::lookup(&m.name) {
            let what = match own.origin {
                Origin::Collected => "one of tern's own custom metrics",
                Origin::Delivery => {
                    "one of tern's delivery counts, set in every report it publishes"
                }
            };
            found.push(format!(
                "custom metric {:?} has the name of {what}, which would overwrite yours; give \
                 yours another name (tern's own names are reserved)",
                m.name
            ));
        }
        if !seen.insert(m.name.as_str()) {
            found.push(format!("custom metric {:?} is defined twice", m.name));
        }
    }
    found
}

/// Why `metric`'s file cannot be read at every report, if it cannot.
fn unreadable(metric: &FileMetric, account: Option<&Account>) -> Option<String> {
    let fix = "point the metric at the regular file that holds its value";
    if let Err(e) = files::open(&metric.path, Links::Follow) {
        return Some(format!("cannot read it ({e}); {fix}"));
    }
    let why = account?.cannot_read(&metric.path)?;
    Some(format!(
        "{why}, and tern reads it as that user; make it readable to that user (its owner, \
         group or others)"
    ))
}

/// The custom metrics a report of this configuration may carry, by name and type: tern's
/// own as `selection` chooses, the delivery counts when reports go to a broker, the user's.
fn carried<'a>(
    selection: &Selection,
    metrics: &'a [FileMetric],
    broker: bool,
) -> Vec<(&'a str, Kind)> {
    let own = CATALOG.iter().filter(|m| match m.origin {
        Origin::Collected => selection.sends(m),
        Origin::Delivery => broker,
    });
    own.map(|m| (m.name, m.kind))
        .chain(metrics.iter().map(|m| (m.name.as_str(), m.kind)))
        .collect()
}

/// The bytes the widest report of this configuration takes with every list cut to nothing:
/// a budget or packet under it would lose reports.
pub fn floor(
    encoding: Encoding,
    selection: &Selection,
    metrics: &[FileMetric],
    broker: bool,
    problems: &mut Vec<Problem>,
) -> Option<usize> {
    match encoding.floor(carried(selection, metrics, broker)) {
        Ok(floor) => Some(floor),
        Err(e) => {
            problem(
                problems,
                format!("cannot encode the smallest report of this configuration ({e:#})"),
            );
            None
        }
    }
}

/// Refuses a budget under `floor`, naming the minimum and the fix.
pub fn check_budget(source: &str, budget: u64, floor: usize, problems: &mut Vec<Problem>) {
    if budget < floor as u64 {
        problem(
            problems,
            format!(
                "{source}: tern.budget {budget} is under {floor} bytes, what a report of this \
                 configuration can take with every list cut to nothing (its format, field \
                 names and custom metrics, every number at its widest), so reports would be \
                 lost; set tern.budget (--budget) to at least {floor}, or send fewer custom \
                 metrics (tern.custom-metrics, --custom-metrics)"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_metrics_may_not_shadow_tern_metrics_or_repeat() {
        let m = |s: &str| s.parse::<FileMetric>().unwrap();
        assert!(clashes(&[m("t=number:/a"), m("u=number:/b")]).is_empty());
        assert_eq!(clashes(&[m("cpu_usage=number:/a")]).len(), 1);
        let delivery = clashes(&[m("reports_accepted=number:/a")]);
        assert!(delivery[0].contains("delivery counts"), "{delivery:?}");
        assert_eq!(clashes(&[m("t=number:/a"), m("t=number:/b")]).len(), 1);
    }

    #[test]
    fn delivery_counts_are_carried_only_to_a_broker() {
        let names = |broker| -> Vec<&str> {
            carried(&Selection::Only(BTreeSet::new()), &[], broker)
                .into_iter()
                .map(|(name, _)| name)
                .collect()
        };
        assert!(names(false).is_empty());
        assert!(names(true).contains(&catalog::REPORTS_ACCEPTED.name));
    }
}
