//! The three shapes of a behaviours file, the behaviours left to the cloud, and every
//! malformed behaviour refused with its name.

use serde_json::json;

use super::*;
use crate::detect::criteria::{Expected, Operator};

const DESCRIBED: &str = r#"{
    "securityProfileName": "edge-gateways",
    "securityProfileArn": "arn:aws:iot:eu-west-1:123456789012:securityprofile/edge-gateways",
    "securityProfileDescription": "What the edge gateways normally do",
    "behaviors": [
        {"name": "outbound-traffic", "metric": "aws:all-bytes-out",
         "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 4096},
                      "durationSeconds": 300, "consecutiveDatapointsToAlarm": 1,
                      "consecutiveDatapointsToClear": 1},
         "suppressAlerts": true},
        {"name": "listening-ports", "metric": "aws:listening-tcp-ports",
         "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22, 443]},
                      "consecutiveDatapointsToAlarm": 2, "consecutiveDatapointsToClear": 3},
         "suppressAlerts": false, "exportMetric": true},
        {"name": "destinations", "metric": "aws:destination-ip-addresses",
         "criteria": {"comparisonOperator": "in-cidr-set",
                      "value": {"cidrs": ["10.0.0.0/8", "2001:db8::/32"]}}},
        {"name": "authorization-failures", "metric": "aws:num-authorization-failures",
         "criteria": {"comparisonOperator": "less-than", "value": {"count": 5},
                      "durationSeconds": 300, "consecutiveDatapointsToAlarm": 1,
                      "consecutiveDatapointsToClear": 1}},
        {"name": "outbound-p90", "metric": "aws:all-bytes-out",
         "criteria": {"comparisonOperator": "less-than-equals",
                      "statisticalThreshold": {"statistic": "p90"}, "durationSeconds": 900,
                      "consecutiveDatapointsToAlarm": 1, "consecutiveDatapointsToClear": 1}},
        {"name": "outbound-ml", "metric": "aws:all-bytes-out",
         "criteria": {"consecutiveDatapointsToAlarm": 1, "consecutiveDatapointsToClear": 1,
                      "mlDetectionConfig": {"confidenceLevel": "HIGH"}},
         "suppressAlerts": true},
        {"name": "tcp-resets-sent", "metric": "interval_tcp_resets_sent",
         "criteria": {"comparisonOperator": "less-than-equals", "value": {"number": 50}}}
    ],
    "alertTargets": {"SNS": {
        "alertTargetArn": "arn:aws:sns:eu-west-1:123456789012:device-defender",
        "roleArn": "arn:aws:iam::123456789012:role/device-defender-sns"}},
    "additionalMetricsToRetainV2": [
        {"metric": "aws:num-listening-tcp-ports", "exportMetric": false}],
    "version": 3,
    "creationDate": 1767225600.123,
    "lastModifiedDate": 1767312000.456,
    "metricsExportConfig": {"mqttTopic": "$aws/rules/defender_export",
                            "roleArn": "arn:aws:iam::123456789012:role/export"}
}"#;

fn load(text: &str) -> Result<Profile, Vec<String>> {
    parse(text, &Selection::All, &[("board_temp", Kind::Number)])
}

fn names(behaviors: &[Behavior]) -> Vec<&str> {
    behaviors.iter().map(|b| b.name.as_str()).collect()
}

#[test]
fn describe_security_profile_output_is_taken_as_it_is() {
    let profile = load(DESCRIBED).unwrap();
    assert_eq!(profile.name, "edge-gateways");
    assert_eq!(
        names(&profile.behaviors),
        [
            "outbound-traffic",
            "listening-ports",
            "destinations",
            "tcp-resets-sent"
        ]
    );
    let ports = &profile.behaviors[1];
    assert_eq!(ports.metric, "aws:listening-tcp-ports");
    assert_eq!(
        ports.criteria,
        Criteria {
            operator: Operator::InPortSet,
            value: Expected::Ports([22, 443].into()),
            duration: None,
            to_alarm: 2,
            to_clear: 3,
        }
    );
    assert_eq!(profile.behaviors[0].criteria.duration, Some(300));
    assert_eq!(profile.behaviors[3].criteria.to_alarm, 1);
    assert_eq!(profile.behaviors[3].criteria.to_clear, 1);
    assert_eq!(ports.given["exportMetric"], json!(true));
    let skipped: Vec<&str> = profile.skipped.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        skipped,
        ["authorization-failures", "outbound-p90", "outbound-ml"]
    );
    assert_eq!(
        profile.skipped[0].to_string(),
        "behaviour \"authorization-failures\" is left to the cloud: \
         aws:num-authorization-failures is measured by the cloud, not on the device"
    );
}

#[test]
fn create_security_profile_input_and_the_bare_list_are_taken_too() {
    let created = r#"{"securityProfileName": "gateways",
        "securityProfileDescription": "normal",
        "behaviors": [{"name": "b", "metric": "aws:num-listening-udp-ports",
                       "criteria": {"comparisonOperator": "less-than", "value": {"count": 4}}}],
        "alertTargets": {}, "additionalMetricsToRetainV2": [],
        "tags": [{"Key": "site", "Value": "north"}]}"#;
    let profile = load(created).unwrap();
    assert_eq!(profile.name, "gateways");
    assert_eq!(names(&profile.behaviors), ["b"]);
    assert_eq!(profile.behaviors[0].criteria.value, Expected::Count(4));
    let bare = r#"[{"name": "temp", "metric": "board_temp",
        "criteria": {"comparisonOperator": "greater-than", "value": {"number": -5.5}}}]"#;
    let profile = load(bare).unwrap();
    assert_eq!(profile.name, DEFAULT_PROFILE);
    assert_eq!(profile.behaviors[0].criteria.value, Expected::Number(-5.5));
}

#[test]
fn behaviours_only_the_cloud_can_judge_are_skipped_with_the_reason() {
    let text = json!([
        {"name": "sent", "metric": "aws:num-messages-sent",
         "criteria": {"comparisonOperator": "less-than", "value": {"count": 5}}},
        {"name": "source", "metric": "aws:source-ip-address",
         "criteria": {"comparisonOperator": "in-cidr-set", "value": {"cidrs": ["10.0.0.0/8"]}}},
        {"name": "topic", "metric": "aws:all-bytes-out",
         "metricDimension": {"dimensionName": "TopicFilter", "operator": "IN"},
         "criteria": {"comparisonOperator": "less-than", "value": {"count": 5}}},
        {"name": "accepted", "metric": "reports_accepted",
         "criteria": {"comparisonOperator": "greater-than", "value": {"number": 0}}}
    ])
    .to_string();
    let profile = load(&text).unwrap();
    assert!(profile.behaviors.is_empty());
    let why: Vec<&str> = profile.skipped.iter().map(|s| s.why.as_str()).collect();
    assert_eq!(
        why,
        [
            "aws:num-messages-sent is measured by the cloud, not on the device",
            "aws:source-ip-address is measured by the cloud, not on the device",
            "its metricDimension filters what the cloud measures",
            "reports_accepted is set when a report is published, after tern judges it",
        ]
    );
}

/// The problems of a list holding `behavior` alone.
fn problems_of(behavior: serde_json::Value) -> Vec<String> {
    load(&json!([behavior]).to_string()).unwrap_err()
}

#[test]
fn each_malformed_behaviour_is_refused_with_its_name_and_the_fix() {
    let b = |metric: &str, criteria: serde_json::Value| json!({"name": "bad-one", "metric": metric, "criteria": criteria});
    let count = |operator: &str| json!({"comparisonOperator": operator, "value": {"count": 5}});
    let cases = [
        (
            b("aws:all-bytes-in", count("greater")),
            "comparisonOperator \"greater\" is unknown; use one of less-than,",
        ),
        (
            b("aws:all-bytes-in", count("in-port-set")),
            "in-port-set does not apply to aws:all-bytes-in; use less-than, less-than-equals, \
             greater-than, greater-than-equals",
        ),
        (
            b(
                "aws:listening-tcp-ports",
                json!({"comparisonOperator": "in-port-set", "value": {"count": 5}}),
            ),
            "is compared with a \"ports\" value; write \"value\": {\"ports\": [22, 443]}",
        ),
        (
            b(
                "interval_tcp_resets_sent",
                json!({"comparisonOperator": "less-than", "value": {"count": 5}}),
            ),
            "is compared with a \"number\" value",
        ),
        (
            b(
                "aws:listening-tcp-ports",
                json!({"comparisonOperator": "in-port-set", "value": {"ports": [70000]}}),
            ),
            "value ports is not a list of ports (0 to 65535)",
        ),
        (
            b(
                "aws:destination-ip-addresses",
                json!({"comparisonOperator": "in-cidr-set", "value": {"cidrs": ["10.0.0.0/33"]}}),
            ),
            "value cidrs is not a list of addresses or address blocks",
        ),
        (
            b(
                "aws:all-bytes-in",
                json!({"comparisonOperator": "less-than", "value": {"count": -1}}),
            ),
            "value count is not a whole number from 0 up",
        ),
        (
            b(
                "aws:all-bytes-in",
                json!({"comparisonOperator": "less-than", "value": {"count": 5},
                       "durationSeconds": 120}),
            ),
            "durationSeconds 120 is not one Device Defender takes; use 300, 600, 900, 1800 or 3600",
        ),
        (
            b(
                "aws:listening-tcp-ports",
                json!({"comparisonOperator": "in-port-set", "value": {"ports": [22]},
                       "durationSeconds": 300}),
            ),
            "durationSeconds adds up numbers, and aws:listening-tcp-ports is a list; remove it",
        ),
        (
            b(
                "cpu_usage",
                json!({"comparisonOperator": "less-than", "value": {"number": 90},
                       "durationSeconds": 300}),
            ),
            "cpu_usage is a reading at report time; remove it",
        ),
        (
            b(
                "aws:all-bytes-in",
                json!({"comparisonOperator": "less-than", "value": {"count": 5},
                       "consecutiveDatapointsToAlarm": 0}),
            ),
            "consecutiveDatapointsToAlarm 0 is out of range; use 1..10",
        ),
        (
            b(
                "aws:all-bytes-in",
                json!({"comparisonOperator": "less-than", "value": {"count": 5},
                       "consecutiveDatapointsToClear": 11}),
            ),
            "consecutiveDatapointsToClear 11 is out of range; use 1..10",
        ),
        (
            b("cpu", count("less-than")),
            "\"cpu\" is neither an aws: metric nor a custom metric tern sends",
        ),
        (
            b(
                "aws:all-bytes-in",
                json!({"comparisonOperator": "less-than", "value": {"count": 5},
                       "durationSecond": 300}),
            ),
            "\"durationSecond\" is not a key of criteria; use comparisonOperator, value, \
             durationSeconds,",
        ),
        (
            json!({"name": "bad-one", "metric": "aws:all-bytes-in"}),
            "has no \"criteria\" object",
        ),
        (
            json!({"name": "bad-one", "criteria": count("less-than")}),
            "has no \"metric\"",
        ),
        (
            b("aws:all-bytes-in", json!({"value": {"count": 5}})),
            "criteria has no comparisonOperator",
        ),
    ];
    for (behavior, expected) in cases {
        let problems = problems_of(behavior);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("behaviour \"bad-one\"") && problems[0].contains(expected),
            "{:?} lacks {expected:?}",
            problems[0]
        );
    }
}

#[test]
fn a_behaviour_without_a_good_name_is_named_by_its_place() {
    let criteria = json!({"comparisonOperator": "less-than", "value": {"count": 5}});
    let problems = problems_of(json!({"metric": "aws:all-bytes-in", "criteria": criteria}));
    assert_eq!(problems, ["behaviour #1 has no \"name\"; give it one"]);
    let problems = problems_of(json!({"name": "has space", "metric": "aws:all-bytes-in",
                                      "criteria": criteria}));
    assert_eq!(
        problems,
        [
            "behaviour \"has space\": a name is 1 to 128 letters, digits, ':', '_' and '-'; \
          rename it"
        ]
    );
    let problems = problems_of(json!("a string"));
    assert!(problems[0].starts_with("behaviour #1 is not an object"));
}

#[test]
fn a_tern_metric_left_out_of_the_reports_is_refused() {
    let text = json!([{"name": "cpu", "metric": "cpu_usage",
        "criteria": {"comparisonOperator": "less-than", "value": {"number": 90}}}])
    .to_string();
    let none: Selection = "none".parse().unwrap();
    let problems = parse(&text, &none, &[]).unwrap_err();
    assert!(
        problems[0].contains("tern.custom-metrics (--custom-metrics) leaves it out"),
        "{problems:?}"
    );
}

#[test]
fn every_problem_is_told_at_once_and_names_are_unique() {
    let text = json!([
        {"name": "a", "metric": "aws:all-bytes-in",
         "criteria": {"comparisonOperator": "less-than", "value": {"count": 5}}},
        {"name": "a", "metric": "aws:all-bytes-out",
         "criteria": {"comparisonOperator": "less-than", "value": {"count": 5}}},
        {"name": "b", "metric": "aws:all-bytes-out",
         "criteria": {"comparisonOperator": "less", "value": {"count": 5}}}
    ])
    .to_string();
    let problems = load(&text).unwrap_err();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(
        problems[0],
        "behaviour \"a\" is given twice; give each behaviour its own name"
    );
    assert!(problems[1].starts_with("behaviour \"b\": comparisonOperator \"less\""));
}

#[test]
fn a_file_that_is_no_profile_is_refused() {
    assert!(load("{").unwrap_err()[0].starts_with("not valid JSON"));
    assert!(
        load(r#"{"securityProfileName": "p"}"#).unwrap_err()[0]
            .starts_with("has no \"behaviors\" list")
    );
    assert!(load("7").unwrap_err()[0].starts_with("is neither a security profile"));
}

#[test]
fn the_starter_file_is_judged_whole_on_the_device() {
    let text = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../behaviors/starter.json"
    ));
    let profile = parse(text, &Selection::All, &[]).unwrap();
    assert_eq!(profile.name, "tern-starter");
    assert!(profile.skipped.is_empty());
    assert_eq!(
        names(&profile.behaviors),
        [
            "tcp-resets-sent",
            "closed-port-attempts",
            "udp-datagrams-to-closed-ports",
            "tcp-failed-connects",
            "remote-ports-contacted",
            "cpu-usage"
        ]
    );
}

#[test]
fn fuzz_behaviors() {
    let seeds = [
        DESCRIBED.as_bytes().to_vec(),
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../behaviors/starter.json"
        ))
        .to_vec(),
    ];
    crate::host::fuzz::run("behaviors", &seeds, |bytes| {
        let _ = load(&String::from_utf8_lossy(bytes));
    });
}
