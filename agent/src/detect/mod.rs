//! Detect: judges Device Defender behaviours on the device, as the service's Rules Detect
//! would. Each report tern builds gives every behaviour one datapoint of its metric; a
//! behaviour's alarm is raised and cleared by the consecutive counts, and each change is a
//! violation event. Takes reports, gives events; knows no source and no destination.
//!
//! A value that can only grow until its interval ends (a running count, a set seen so far)
//! is judged by [`criteria::Criteria::violated_for_good`], as a window of reports still
//! short of its duration already is: between reports, the running values of such metrics
//! raise an alarm as soon as it is certain, not at the end of the interval.

pub mod behaviors;
pub mod criteria;
pub mod datapoint;
mod judge;
pub mod violation;

use std::time::{SystemTime, UNIX_EPOCH};

pub use behaviors::Profile;
use datapoint::Datapoint;
use judge::{Change, Watch};
use violation::{EventType, Violation};

use crate::report::{CustomMetric, Report};

/// The behaviours of one profile, judged report after report.
#[derive(Debug)]
pub struct Detector {
    watches: Vec<(Watch, Option<String>)>,
    thing_name: String,
    profile: String,
    /// The time of the newest alarm, in milliseconds: ids stay unique within a millisecond.
    last_alarm: u64,
}

impl Detector {
    /// Judges `profile`'s behaviours for reports `interval` seconds apart.
    pub fn new(profile: Profile, thing_name: &str, interval: u64) -> Self {
        Self {
            watches: profile
                .behaviors
                .into_iter()
                .map(|b| (Watch::new(b, interval), None))
                .collect(),
            thing_name: thing_name.to_owned(),
            profile: profile.name,
            last_alarm: 0,
        }
    }

    /// Judges every behaviour on `report`, built at `now`: the alarms it raised and cleared.
    pub fn judge(&mut self, report: &Report, now: SystemTime) -> Vec<Violation> {
        let mut events = Vec::new();
        for index in 0..self.watches.len() {
            let value = Datapoint::of(report, &self.watches[index].0.behavior.metric);
            let change = self.watches[index].0.report(value);
            events.extend(change.map(|change| self.event(index, change, now)));
        }
        events
    }

    /// The metrics whose running value, before the report, can raise an alarm: those of
    /// behaviours that a growing value can violate for good.
    pub fn early(&self) -> impl Iterator<Item = &str> {
        self.watches
            .iter()
            .map(|(watch, _)| &watch.behavior)
            .filter(|b| b.criteria.violated_by_growth())
            .map(|b| b.metric.as_str())
    }

    /// Each behaviour, with whether it is in alarm.
    #[cfg(feature = "watch")]
    pub fn alarms(&self) -> impl Iterator<Item = (&behaviors::Behavior, bool)> {
        self.watches
            .iter()
            .map(|(watch, _)| (&watch.behavior, watch.in_alarm()))
    }

    /// Judges the interval's custom metrics not reported yet (metric and value so far: a
    /// count, or what a list holds so far) at `now`: the alarms they raise.
    pub fn judge_running(
        &mut self,
        running: &[(&str, CustomMetric)],
        now: SystemTime,
    ) -> Vec<Violation> {
        let mut events = Vec::new();
        for index in 0..self.watches.len() {
            let metric = self.watches[index].0.behavior.metric.as_str();
            let Some((_, value)) = running.iter().find(|(m, _)| *m == metric) else {
                continue;
            };
            let value = Datapoint::of_custom(value);
            let change = self.watches[index].0.running(value);
            events.extend(change.map(|change| self.event(index, change, now)));
        }
        events
    }

    /// The violation event of `change` to watch `index`'s alarm.
    fn event(&mut self, index: usize, change: Change, now: SystemTime) -> Violation {
        let millis = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let (watch, alarm) = &mut self.watches[index];
        let (kind, datapoint, id) = match change {
            Change::Raised(datapoint) => {
                self.last_alarm = millis.max(self.last_alarm + 1);
                let id = format!(
                    "{}/{}/{}",
                    self.thing_name, watch.behavior.name, self.last_alarm
                );
                *alarm = Some(id.clone());
                (EventType::InAlarm, datapoint, id)
            }
            Change::Cleared(datapoint) => (
                EventType::AlarmCleared,
                datapoint,
                alarm.take().unwrap_or_default(),
            ),
        };
        Violation {
            violation_id: id,
            thing_name: self.thing_name.clone(),
            security_profile_name: self.profile.clone(),
            behavior: watch.behavior.given.clone(),
            metric_value: datapoint.metric_value(),
            violation_event_type: kind,
            violation_event_time: millis / 1000,
        }
    }
}

#[cfg(test)]
mod tests;
