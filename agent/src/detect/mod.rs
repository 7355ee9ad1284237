//! Detect: judges Device Defender behaviours on the device, as the service's Rules Detect
//! would. Each report tern builds gives every behaviour one datapoint of its metric; a
//! behaviour's alarm is raised and cleared by the consecutive counts, and each change is a
//! violation event. Takes reports, gives events; knows no source and no destination.
//!
//! A value that can only grow until its interval ends (a running count, a set seen so far)
//! is judged by [`criteria::Criteria::violated_for_good`], as a window of reports still
//! short of its duration already is.

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

use crate::report::Report;

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
        let millis = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut events = Vec::new();
        for (watch, alarm) in &mut self.watches {
            let value = Datapoint::of(report, &watch.behavior.metric);
            let Some(change) = watch.report(value) else {
                continue;
            };
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
            events.push(Violation {
                violation_id: id,
                thing_name: self.thing_name.clone(),
                security_profile_name: self.profile.clone(),
                behavior: watch.behavior.given.clone(),
                metric_value: datapoint.metric_value(),
                violation_event_type: kind,
                violation_event_time: millis / 1000,
            });
        }
        events
    }
}

#[cfg(test)]
mod tests;
