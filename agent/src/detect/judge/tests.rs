//! Each operator and value kind raising and clearing at the datapoint worked out by hand,
//! duration windows and consecutive counts.

use std::{collections::BTreeSet, net::IpAddr};

use serde_json::{Value, json};

use super::*;
use crate::{
    detect::behaviors::parse,
    report::{Kind, catalog::Selection},
};

fn watch(metric: &str, criteria: Value, interval: u64) -> Watch {
    let text = json!([{"name": "b", "metric": metric, "criteria": criteria}]).to_string();
    let user = [
        ("num", Kind::Number),
        ("nums", Kind::NumberList),
        ("strs", Kind::StringList),
        ("ips", Kind::IpList),
    ];
    let profile = parse(&text, &Selection::All, &user).unwrap();
    Watch::new(profile.behaviors.into_iter().next().unwrap(), interval)
}

/// What each value did: `A` raised the alarm, `C` cleared it, `.` neither.
fn run(watch: &mut Watch, values: impl IntoIterator<Item = Option<Datapoint>>) -> String {
    values
        .into_iter()
        .map(|v| match watch.report(v) {
            Some(Change::Raised(_)) => 'A',
            Some(Change::Cleared(_)) => 'C',
            None => '.',
        })
        .collect()
}

fn counts(values: &[u64]) -> Vec<Option<Datapoint>> {
    values.iter().map(|n| Some(Datapoint::Count(*n))).collect()
}

fn ports(lists: &[&[u16]]) -> Vec<Option<Datapoint>> {
    lists
        .iter()
        .map(|l| Some(Datapoint::Ports(l.iter().copied().collect())))
        .collect()
}

fn addresses(lists: &[&[&str]]) -> Vec<Option<Datapoint>> {
    lists
        .iter()
        .map(|l| {
            let set: BTreeSet<IpAddr> = l.iter().map(|a| a.parse().unwrap()).collect();
            Some(Datapoint::Addresses(set))
        })
        .collect()
}

fn strings(lists: &[&[&str]]) -> Vec<Option<Datapoint>> {
    lists
        .iter()
        .map(|l| {
            Some(Datapoint::Strings(
                l.iter().map(|s| (*s).to_owned()).collect(),
            ))
        })
        .collect()
}

fn numbers(lists: &[&[f64]]) -> Vec<Option<Datapoint>> {
    lists
        .iter()
        .map(|l| Some(Datapoint::Numbers(l.to_vec())))
        .collect()
}

fn criteria(operator: &str, value: Value) -> Value {
    json!({"comparisonOperator": operator, "value": value})
}

#[test]
fn numeric_operators_alarm_at_the_first_count_outside_and_clear_at_the_first_inside() {
    let cases = [
        ("less-than", [49, 50, 49]),
        ("less-than-equals", [50, 51, 50]),
        ("greater-than", [11, 10, 11]),
        ("greater-than-equals", [10, 9, 10]),
    ];
    for (operator, values) in cases {
        let limit = if operator.starts_with("less") { 50 } else { 10 };
        let mut w = watch(
            "aws:num-established-tcp-connections",
            criteria(operator, json!({"count": limit})),
            300,
        );
        assert_eq!(run(&mut w, counts(&values)), ".AC", "{operator}");
    }
}

#[test]
fn a_custom_number_is_compared_as_a_number() {
    let mut w = watch(
        "num",
        criteria("less-than-equals", json!({"number": 90.5})),
        300,
    );
    let values = [90.5, 90.6, 12.0].map(|x| Some(Datapoint::Number(x)));
    assert_eq!(run(&mut w, values), ".AC");
}

#[test]
fn port_sets_alarm_on_a_port_outside_or_inside() {
    let mut w = watch(
        "aws:listening-tcp-ports",
        criteria("in-port-set", json!({"ports": [22, 443]})),
        300,
    );
    assert_eq!(
        run(&mut w, ports(&[&[], &[22], &[22, 8080], &[443]])),
        "..AC"
    );
    let mut w = watch(
        "aws:listening-udp-ports",
        criteria("not-in-port-set", json!({"ports": [23]})),
        300,
    );
    assert_eq!(run(&mut w, ports(&[&[22], &[22, 23], &[]])), ".AC");
}

#[test]
fn cidr_sets_alarm_on_an_address_outside_or_inside() {
    let mut w = watch(
        "aws:destination-ip-addresses",
        criteria(
            "in-cidr-set",
            json!({"cidrs": ["10.0.0.0/8", "2001:db8::/32"]}),
        ),
        300,
    );
    let values = addresses(&[
        &["10.1.2.3", "2001:db8::1"],
        &["10.1.2.3", "192.0.2.1"],
        &["::ffff:10.0.0.9"],
    ]);
    assert_eq!(run(&mut w, values), ".AC");
    let mut w = watch(
        "ips",
        criteria(
            "not-in-cidr-set",
            json!({"cidrs": ["192.0.2.0/24", "203.0.113.7"]}),
        ),
        300,
    );
    let values = addresses(&[&["10.0.0.1"], &["192.0.2.200"], &["203.0.113.8"]]);
    assert_eq!(run(&mut w, values), ".AC");
    let mut w = watch(
        "ips",
        criteria("not-in-cidr-set", json!({"cidrs": ["203.0.113.7"]})),
        300,
    );
    assert_eq!(run(&mut w, addresses(&[&["203.0.113.7"]])), "A");
}

#[test]
fn number_and_string_sets_alarm_on_an_element_outside_or_inside() {
    let mut w = watch(
        "nums",
        criteria("in-set", json!({"numbers": [443, 8883]})),
        300,
    );
    let values = numbers(&[&[443.0], &[443.0, 23.0], &[8883.0]]);
    assert_eq!(run(&mut w, values), ".AC");
    let mut w = watch(
        "nums",
        criteria("not-in-set", json!({"numbers": [23, 6667]})),
        300,
    );
    assert_eq!(run(&mut w, numbers(&[&[80.0], &[6667.0], &[80.0]])), ".AC");
    let mut w = watch(
        "strs",
        criteria("in-set", json!({"strings": ["/usr/bin/app"]})),
        300,
    );
    let values = strings(&[&["/usr/bin/app"], &["/usr/bin/app", "/tmp/x"], &[]]);
    assert_eq!(run(&mut w, values), ".AC");
    let mut w = watch(
        "strs",
        criteria("not-in-set", json!({"strings": ["/tmp/x"]})),
        300,
    );
    let values = strings(&[&["/usr/bin/app"], &["/tmp/x"], &["/usr/bin/app"]]);
    assert_eq!(run(&mut w, values), ".AC");
}

#[test]
fn a_duration_sums_the_reports_that_span_it() {
    let over = |interval| {
        watch(
            "aws:all-bytes-out",
            json!({"comparisonOperator": "less-than-equals", "value": {"count": 100},
                   "durationSeconds": 900}),
            interval,
        )
    };
    // Three reports of 300 s: 40+40+40 = 120 > 100; 40+40+10 = 90; 10+10+100 = 120.
    let mut w = over(300);
    assert_eq!(
        run(&mut w, counts(&[40, 40, 40, 10, 10, 10, 100])),
        "..AC..A"
    );
    // 900 s in reports of 400 s: the three that cover it.
    let mut w = over(400);
    assert_eq!(run(&mut w, counts(&[40, 40, 40])), "..A");
    // A window still short of reports already holds more than the bound: for good.
    let mut w = over(300);
    assert_eq!(run(&mut w, counts(&[150])), "A");
}

#[test]
fn a_short_window_is_not_judged_below_a_minimum() {
    let mut w = watch(
        "aws:all-packets-in",
        json!({"comparisonOperator": "greater-than-equals", "value": {"count": 100},
               "durationSeconds": 900}),
        300,
    );
    // 10, then 10+10, are short windows that may still grow; 10+10+10 = 30 is whole.
    assert_eq!(run(&mut w, counts(&[10, 10, 10])), "..A");
    // 10+10+50 = 70 stays in alarm, 10+50+50 = 110 clears, 50+50+50 = 150 stays clear; a
    // report without the metric leaves the next windows short: 50+50 = 100, 50+10 = 60 and
    // 10+10 stay unjudged, and 10+10+10 = 30 raises again.
    let mut values = counts(&[50, 50, 50]);
    values.push(None);
    values.extend(counts(&[10, 10, 10]));
    assert_eq!(run(&mut w, values), ".C....A");
}

#[test]
fn consecutive_counts_raise_and_clear_after_that_many_in_a_row() {
    let mut w = watch(
        "aws:num-listening-tcp-ports",
        json!({"comparisonOperator": "less-than-equals", "value": {"count": 5},
               "consecutiveDatapointsToAlarm": 3, "consecutiveDatapointsToClear": 2}),
        300,
    );
    // Two over, one under (the run starts again), three over; one under, one over (again),
    // two under.
    assert_eq!(
        run(&mut w, counts(&[6, 6, 5, 6, 6, 6, 5, 6, 5, 5])),
        ".....A...C"
    );
}

#[test]
fn a_report_without_the_metric_leaves_the_state_as_it_is() {
    let mut w = watch(
        "aws:num-listening-tcp-ports",
        json!({"comparisonOperator": "less-than-equals", "value": {"count": 5},
               "consecutiveDatapointsToAlarm": 2}),
        300,
    );
    let values = [Some(Datapoint::Count(6)), None, Some(Datapoint::Count(6))];
    assert_eq!(run(&mut w, values), "..A");
}

#[test]
fn only_what_growth_cannot_mend_is_violated_for_good() {
    let criteria_of = |metric: &str, c: Value| watch(metric, c, 300).behavior.criteria;
    let upper = criteria_of(
        "aws:all-bytes-in",
        criteria("less-than", json!({"count": 10})),
    );
    assert!(upper.violated_for_good(&Datapoint::Count(10)));
    assert!(!upper.violated_for_good(&Datapoint::Count(9)));
    let lower = criteria_of(
        "aws:all-bytes-in",
        criteria("greater-than", json!({"count": 10})),
    );
    assert!(!lower.violated_for_good(&Datapoint::Count(3)));
    let set = criteria_of(
        "aws:listening-tcp-ports",
        criteria("in-port-set", json!({"ports": [22]})),
    );
    assert!(set.violated_for_good(&Datapoint::Ports([22, 23].into())));
}

/// What each step did, as `run` says it: `r` steps are running counts, the others reports.
fn steps(watch: &mut Watch, steps: &[(char, u64)]) -> String {
    steps
        .iter()
        .map(|&(kind, n)| {
            let value = Datapoint::Number(n as f64);
            let change = match kind {
                'r' => watch.running(value),
                _ => watch.report(Some(value)),
            };
            match change {
                Some(Change::Raised(_)) => 'A',
                Some(Change::Cleared(_)) => 'C',
                None => '.',
            }
        })
        .collect()
}

#[test]
fn a_running_count_over_its_bound_alarms_at_once_and_its_report_counts_once() {
    let bound = || criteria("less-than-equals", json!({"number": 50}));
    let mut w = watch("num", bound(), 300);
    // Running 40 is normal; 51 raises; the report of 60 finds the alarm raised; 10 clears.
    assert_eq!(
        steps(
            &mut w,
            &[('r', 40), ('r', 51), ('r', 55), ('R', 60), ('R', 10)]
        ),
        ".A..C"
    );

    // Two violations in a row: a running count completes the run only after one report.
    let mut criteria = bound();
    criteria["consecutiveDatapointsToAlarm"] = json!(2);
    let mut w = watch("num", criteria, 300);
    assert_eq!(
        steps(&mut w, &[('r', 51), ('R', 51), ('r', 51), ('R', 70)]),
        "..A."
    );

    // Over 600 s of 300 s reports: the running count adds to the report before it.
    let mut criteria = bound();
    criteria["durationSeconds"] = json!(600);
    let mut w = watch("num", criteria, 300);
    assert_eq!(
        steps(
            &mut w,
            &[
                ('R', 30),
                ('r', 20),
                ('r', 21),
                ('R', 30),
                ('R', 0),
                ('R', 0)
            ]
        ),
        "..A.C."
    );
}

#[test]
fn a_running_count_never_alarms_where_growing_could_make_it_normal() {
    let mut w = watch(
        "num",
        criteria("greater-than-equals", json!({"number": 10})),
        300,
    );
    assert_eq!(steps(&mut w, &[('r', 0), ('r', 5), ('R', 4)]), "..A");
}
