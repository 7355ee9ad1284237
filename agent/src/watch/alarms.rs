//! The behaviours' alarms as the view shows them: each one's state from the detector, and
//! its last change from the violation events that made it.

use std::collections::HashMap;

use crate::detect::{
    Detector,
    violation::{EventType, Violation},
};

/// One behaviour's alarm.
pub struct Alarm {
    pub behavior: String,
    pub metric: String,
    pub in_alarm: bool,
    /// The last change, as the view says it ("raised 5 at 12:03:04").
    pub changed: Option<String>,
}

/// Takes the behaviours' alarms from `detector` into `alarms`, with when `events` changed
/// them; a change told before stays until a newer one.
pub fn update(alarms: &mut Vec<Alarm>, detector: &Detector, events: &[Violation]) {
    let mut changed: HashMap<String, String> = alarms
        .iter_mut()
        .filter_map(|a| Some((a.behavior.clone(), a.changed.take()?)))
        .collect();
    for event in events {
        let Some(name) = event.behavior.get("name").and_then(|n| n.as_str()) else {
            continue;
        };
        let what = match event.violation_event_type {
            EventType::InAlarm => "raised",
            EventType::AlarmCleared => "cleared",
        };
        changed.insert(
            name.to_owned(),
            format!(
                "{what} {} at {}",
                serde_json::to_string(&event.metric_value).unwrap_or_default(),
                clock(event.violation_event_time)
            ),
        );
    }
    *alarms = detector
        .alarms()
        .map(|(behavior, in_alarm)| Alarm {
            behavior: behavior.name.clone(),
            metric: behavior.metric.clone(),
            in_alarm,
            changed: changed.remove(&behavior.name),
        })
        .collect();
}

/// The time of day, in UTC, of `seconds` since the epoch.
fn clock(seconds: u64) -> String {
    let day = seconds % 86_400;
    format!("{:02}:{:02}:{:02}", day / 3600, day / 60 % 60, day % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_is_the_time_of_day() {
        assert_eq!(clock(86_400 * 3 + 3_600 * 13 + 60 * 4 + 5), "13:04:05");
    }
}
