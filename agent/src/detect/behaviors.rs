//! Behaviours in Device Defender's own format: the `behaviors` list of a security profile,
//! as `describe-security-profile` prints it, as `create-security-profile` takes it, or the
//! bare list. Each is checked against the metrics tern's reports carry; one only the cloud
//! can judge is set aside with the reason, and a malformed one is refused with its name and
//! the fix, every problem at once.

use std::{collections::BTreeSet, fmt};

use serde_json::{Map, Value};

use super::{
    criteria::{self, Criteria},
    datapoint::{DEVICE, Shape},
};
use crate::report::{
    Kind, Merge,
    catalog::{self, Origin, Selection},
};

/// The profile name violations carry when the file names none.
pub const DEFAULT_PROFILE: &str = "tern";
const BEHAVIOR_KEYS: [&str; 6] = [
    "name",
    "metric",
    "metricDimension",
    "criteria",
    "suppressAlerts",
    "exportMetric",
];
const CRITERIA_KEYS: [&str; 7] = [
    "comparisonOperator",
    "value",
    "durationSeconds",
    "consecutiveDatapointsToAlarm",
    "consecutiveDatapointsToClear",
    "statisticalThreshold",
    "mlDetectionConfig",
];

/// The behaviours of one security profile that tern judges, and those it leaves to the cloud.
#[derive(Clone, Debug)]
pub struct Profile {
    pub name: String,
    pub behaviors: Vec<Behavior>,
    pub skipped: Vec<Skipped>,
}

/// A behaviour only the cloud can judge, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub name: String,
    pub why: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "behaviour {:?} is left to the cloud: {}",
            self.name, self.why
        )
    }
}

/// A behaviour tern judges: what is normal for one metric.
#[derive(Clone, Debug)]
pub struct Behavior {
    pub name: String,
    pub metric: String,
    pub criteria: Criteria,
    /// The object as given, which its violations carry.
    pub given: Value,
}

/// Reads a behaviours file: the profile, or every problem, each naming its behaviour and
/// the fix. `selection` and `user` are the custom metrics the reports carry.
pub fn parse(
    text: &str,
    selection: &Selection,
    user: &[(&str, Kind)],
) -> Result<Profile, Vec<String>> {
    let json: Value = serde_json::from_str(text)
        .map_err(|e| vec![format!("not valid JSON ({e}); fix the JSON at that line")])?;
    let (name, list) = match &json {
        Value::Array(list) => (None, list),
        Value::Object(profile) => match profile.get("behaviors") {
            Some(Value::Array(list)) => (
                profile.get("securityProfileName").and_then(Value::as_str),
                list,
            ),
            _ => {
                return Err(vec![
                    "has no \"behaviors\" list; give the output of describe-security-profile, \
                     the input of create-security-profile, or the list of behaviours itself"
                        .into(),
                ]);
            }
        },
        _ => {
            return Err(vec![
                "is neither a security profile nor a list of behaviours; give the output of \
                 describe-security-profile, the input of create-security-profile, or the list \
                 of behaviours itself"
                    .into(),
            ]);
        }
    };
    let mut profile = Profile {
        name: name.unwrap_or(DEFAULT_PROFILE).to_owned(),
        behaviors: Vec::new(),
        skipped: Vec::new(),
    };
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    for (i, given) in list.iter().enumerate() {
        match behavior(i, given, selection, user) {
            Ok(judged) => {
                let name = judged.name().to_owned();
                if !names.insert(name.clone()) {
                    problems.push(format!(
                        "behaviour {name:?} is given twice; give each behaviour its own name"
                    ));
                }
                match judged {
                    Judged::Here(b) => profile.behaviors.push(b),
                    Judged::Cloud(s) => profile.skipped.push(s),
                }
            }
            Err(problem) => problems.push(problem),
        }
    }
    if problems.is_empty() {
        Ok(profile)
    } else {
        Err(problems)
    }
}

enum Judged {
    Here(Behavior),
    Cloud(Skipped),
}

impl Judged {
    fn name(&self) -> &str {
        match self {
            Self::Here(b) => &b.name,
            Self::Cloud(s) => &s.name,
        }
    }
}

/// One behaviour, checked; the problem names it, or its place when it has no name.
fn behavior(
    i: usize,
    given: &Value,
    selection: &Selection,
    user: &[(&str, Kind)],
) -> Result<Judged, String> {
    let place = format!("behaviour #{}", i + 1);
    let Some(object) = given.as_object() else {
        return Err(format!(
            "{place} is not an object; write it as {{\"name\": ..., \"metric\": ..., \
             \"criteria\": {{...}}}}"
        ));
    };
    let Some(name) = object.get("name").and_then(Value::as_str) else {
        return Err(format!("{place} has no \"name\"; give it one"));
    };
    let at = format!("behaviour {name:?}");
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-');
    if name.is_empty() || name.len() > 128 || !name.chars().all(allowed) {
        return Err(format!(
            "{at}: a name is 1 to 128 letters, digits, ':', '_' and '-'; rename it"
        ));
    }
    unknown_keys(&at, "a behaviour", object, &BEHAVIOR_KEYS)?;
    let Some(metric) = object.get("metric").and_then(Value::as_str) else {
        return Err(format!(
            "{at} has no \"metric\"; name the metric it watches (aws:... or a custom metric)"
        ));
    };
    let skip = |why: String| {
        Ok(Judged::Cloud(Skipped {
            name: name.to_owned(),
            why,
        }))
    };
    let Some(criteria) = object.get("criteria").and_then(Value::as_object) else {
        return Err(format!(
            "{at} has no \"criteria\" object; give its comparisonOperator and value"
        ));
    };
    unknown_keys(&at, "criteria", criteria, &CRITERIA_KEYS)?;
    let (shape, counts) = match DEVICE.iter().find(|d| d.name == metric) {
        Some(device) => (device.shape, device.counts),
        None if metric.starts_with("aws:") => {
            return skip(format!(
                "{metric} is measured by the cloud, not on the device"
            ));
        }
        None => match custom(&at, metric, selection, user)? {
            Some(found) => found,
            None => {
                return skip(format!(
                    "{metric} is set when a report is published, after tern judges it"
                ));
            }
        },
    };
    if object.contains_key("metricDimension") {
        return skip("its metricDimension filters what the cloud measures".into());
    }
    if criteria.contains_key("statisticalThreshold") {
        return skip("a statisticalThreshold ranks the device within its fleet".into());
    }
    if criteria.contains_key("mlDetectionConfig") {
        return skip("ML Detect learns its model from the fleet's datapoints".into());
    }
    let criteria = criteria::parse(&at, metric, shape, counts, criteria)?;
    Ok(Judged::Here(Behavior {
        name: name.to_owned(),
        metric: metric.to_owned(),
        criteria,
        given: given.clone(),
    }))
}

fn unknown_keys(
    at: &str,
    what: &str,
    object: &Map<String, Value>,
    known: &[&str],
) -> Result<(), String> {
    match object.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(format!(
            "{at}: {key:?} is not a key of {what}; use {}",
            known.join(", ")
        )),
        None => Ok(()),
    }
}

/// A custom metric's shape and whether it counts; none for the delivery counts, which the
/// cloud judges.
fn custom(
    at: &str,
    metric: &str,
    selection: &Selection,
    user: &[(&str, Kind)],
) -> Result<Option<(Shape, bool)>, String> {
    if let Some(&(_, kind)) = user.iter().find(|(name, _)| *name == metric) {
        // A file metric may be a count or a reading: the operator knows.
        return Ok(Some((Shape::of_custom(kind), true)));
    }
    match catalog::lookup(metric) {
        Some(own) if own.origin == Origin::Delivery => Ok(None),
        Some(own) if selection.sends(own) => {
            Ok(Some((Shape::of_custom(own.kind), own.merge == Merge::Sum)))
        }
        Some(_) => Err(format!(
            "{at}: {metric} is one of tern's custom metrics, but tern.custom-metrics \
             (--custom-metrics) leaves it out; send it, or remove the behaviour"
        )),
        None => Err(format!(
            "{at}: {metric:?} is neither an aws: metric nor a custom metric tern sends; use one \
             of tern's custom metrics (see the README), one of yours (tern.metrics, --metric), \
             or a device-side aws: metric"
        )),
    }
}

#[cfg(test)]
mod tests;
