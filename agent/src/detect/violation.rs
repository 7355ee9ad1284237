//! A violation event, shaped like Device Defender's `ViolationEvent`: the alarm a behaviour
//! raised or cleared, with the datapoint that did it. It reads back as it is written, so a
//! spooled event is published as it was raised.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "in-alarm")]
    InAlarm,
    #[serde(rename = "alarm-cleared")]
    AlarmCleared,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Violation {
    /// The same for an alarm and its clearing.
    pub violation_id: String,
    pub thing_name: String,
    pub security_profile_name: String,
    /// The behaviour as given in the profile.
    pub behavior: Value,
    /// The datapoint that raised or cleared the alarm.
    pub metric_value: Value,
    pub violation_event_type: EventType,
    /// Seconds since the epoch.
    pub violation_event_time: u64,
}

/// How a violation is told apart from a report, which has `header` and `metrics`: it is
/// the only key of its object.
#[derive(Serialize)]
struct Line<'a> {
    violation: &'a Violation,
}

impl Violation {
    /// The event as one JSON line: `{"violation": {...}}`.
    pub fn json_line(&self) -> String {
        serde_json::to_string(&Line { violation: self }).unwrap_or_default()
    }

    /// Logs the event in words: a warning when it raises an alarm.
    pub fn log(&self) {
        match self.violation_event_type {
            EventType::InAlarm => log::warn!("{}", self.log_line()),
            EventType::AlarmCleared => log::info!("{}", self.log_line()),
        }
    }

    /// The event in words, for the log.
    pub fn log_line(&self) -> String {
        let name = self.behavior["name"].as_str().unwrap_or_default();
        let criteria = &self.behavior["criteria"];
        let what = format!(
            "behaviour {name:?} ({} {} {})",
            self.behavior["metric"].as_str().unwrap_or_default(),
            criteria["comparisonOperator"].as_str().unwrap_or_default(),
            criteria["value"]
        );
        match self.violation_event_type {
            EventType::InAlarm => format!(
                "in alarm: {what} violated by {}; violation {}",
                self.metric_value, self.violation_id
            ),
            EventType::AlarmCleared => format!(
                "alarm cleared: {what} normal again at {}; violation {}",
                self.metric_value, self.violation_id
            ),
        }
    }
}
