//! Judgement of one behaviour, with the service's semantics: a datapoint outside the criteria
//! is a violation; `consecutiveDatapointsToAlarm` violations in a row raise the alarm and
//! `consecutiveDatapointsToClear` normal datapoints in a row clear it; with
//! `durationSeconds` the datapoint is the sum of the reports that span the duration.

use std::collections::VecDeque;

use super::{behaviors::Behavior, datapoint::Datapoint};

/// What one datapoint did to a behaviour's alarm.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Raised(Datapoint),
    Cleared(Datapoint),
}

/// One behaviour's state: its window of reports, whether it is in alarm, and the datapoints
/// in a row that count towards changing that.
#[derive(Debug)]
pub struct Watch {
    pub behavior: Behavior,
    /// The latest reports' values, newest last, when the datapoint spans several reports.
    window: VecDeque<Option<Datapoint>>,
    span: usize,
    in_alarm: bool,
    streak: u32,
}

impl Watch {
    /// A watch for reports `interval` seconds apart: a duration spans the fewest reports that
    /// cover it.
    pub fn new(behavior: Behavior, interval: u64) -> Self {
        let span = behavior.criteria.duration.map_or(1, |d| {
            usize::try_from(d.div_ceil(interval.max(1))).unwrap_or(usize::MAX)
        });
        Self {
            behavior,
            window: VecDeque::new(),
            span: span.max(1),
            in_alarm: false,
            streak: 0,
        }
    }

    /// Whether the behaviour is in alarm.
    #[cfg(feature = "watch")]
    pub fn in_alarm(&self) -> bool {
        self.in_alarm
    }

    /// Judges one report's value of the metric (none when the report lacks it, which leaves
    /// the state as it is). A sum over a window still short of reports, or with a report that
    /// lacked the metric, can only grow: it is judged only where growing cannot make it
    /// normal.
    pub fn report(&mut self, value: Option<Datapoint>) -> Option<Change> {
        let criteria = &self.behavior.criteria;
        let (datapoint, whole) = if criteria.duration.is_some() {
            self.window.push_back(value);
            while self.window.len() > self.span {
                self.window.pop_front();
            }
            let mut present = self.window.iter().flatten();
            let first = present.next()?.clone();
            let sum = present.try_fold(first, |sum, d| sum.plus(d))?;
            let whole = self.window.len() == self.span && self.window.iter().all(Option::is_some);
            (sum, whole)
        } else {
            (value?, true)
        };
        if !whole && !criteria.violated_for_good(&datapoint) {
            return None;
        }
        let violated = !criteria.normal(&datapoint);
        self.step(violated, datapoint)
    }

    /// Judges the running value of the interval not reported yet, which can only grow until
    /// the report. The alarm is raised at once where the report's datapoint is violated for
    /// good already and completes the run of violations the alarm needs; the report then
    /// finds the alarm raised and counts nothing twice.
    pub fn running(&mut self, value: Datapoint) -> Option<Change> {
        let criteria = &self.behavior.criteria;
        if self.in_alarm || self.streak + 1 < criteria.to_alarm {
            return None;
        }
        // The window the report will close: the newest reports but one, and this interval.
        let datapoint = match criteria.duration {
            Some(_) => {
                let kept = self.window.len().min(self.span - 1);
                self.window
                    .iter()
                    .skip(self.window.len() - kept)
                    .flatten()
                    .try_fold(value, |sum, d| sum.plus(d))?
            }
            None => value,
        };
        if !criteria.violated_for_good(&datapoint) {
            return None;
        }
        self.streak = 0;
        self.in_alarm = true;
        Some(Change::Raised(datapoint))
    }

    fn step(&mut self, violated: bool, datapoint: Datapoint) -> Option<Change> {
        let criteria = &self.behavior.criteria;
        // A datapoint that agrees with the state breaks the run towards the other one.
        if violated != self.in_alarm {
            self.streak += 1;
        } else {
            self.streak = 0;
        }
        let needed = if self.in_alarm {
            criteria.to_clear
        } else {
            criteria.to_alarm
        };
        if self.streak < needed {
            return None;
        }
        self.streak = 0;
        self.in_alarm = violated;
        Some(if violated {
            Change::Raised(datapoint)
        } else {
            Change::Cleared(datapoint)
        })
    }
}

#[cfg(test)]
mod tests;
