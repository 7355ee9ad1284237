//! Violation events from reports: their shape, ids kept from alarm to clearing, the profile
//! name.

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::report::{Metrics, PortList, catalog::Selection};

fn report(ports: &[u16]) -> Report {
    Report::new(
        1,
        Metrics {
            listening_tcp_ports: Some(PortList::wildcards(ports)),
            ..Default::default()
        },
    )
}

fn at(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

const PORTS: &str = r#"{"name": "ports", "metric": "aws:listening-tcp-ports",
    "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22]}},
    "suppressAlerts": false}"#;

fn detector(text: &str) -> Detector {
    let profile = behaviors::parse(text, &Selection::All, &[]).unwrap();
    Detector::new(profile, "gw-7", 300)
}

#[test]
fn an_alarm_and_its_clearing_are_events_of_one_violation() {
    let mut detector = detector(&format!("[{PORTS}]"));
    assert!(detector.judge(&report(&[22]), at(1_000)).is_empty());
    let raised = detector.judge(&report(&[22, 23]), at(1_795_238_955_822));
    let behavior = json!({"name": "ports", "metric": "aws:listening-tcp-ports",
        "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22]}},
        "suppressAlerts": false});
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&raised[0].json_line()).unwrap(),
        json!({"violation": {
            "violationId": "gw-7/ports/1795238955822",
            "thingName": "gw-7",
            "securityProfileName": "tern",
            "behavior": behavior,
            "metricValue": {"ports": [22, 23]},
            "violationEventType": "in-alarm",
            "violationEventTime": 1_795_238_955_u64,
        }})
    );
    assert_eq!(
        raised[0].log_line(),
        "in alarm: behaviour \"ports\" (aws:listening-tcp-ports in-port-set {\"ports\":[22]}) \
         violated by {\"ports\":[22,23]}; violation gw-7/ports/1795238955822"
    );
    assert!(
        detector
            .judge(&report(&[22, 23]), at(1_795_238_956_000))
            .is_empty()
    );
    let cleared = detector.judge(&report(&[]), at(1_795_238_957_000));
    assert_eq!(cleared.len(), 1);
    assert_eq!(
        cleared[0],
        Violation {
            violation_id: "gw-7/ports/1795238955822".into(),
            thing_name: "gw-7".into(),
            security_profile_name: "tern".into(),
            behavior,
            metric_value: json!({"ports": []}),
            violation_event_type: EventType::AlarmCleared,
            violation_event_time: 1_795_238_957,
        }
    );
    assert_eq!(
        cleared[0].log_line(),
        "alarm cleared: behaviour \"ports\" (aws:listening-tcp-ports in-port-set \
         {\"ports\":[22]}) normal again at {\"ports\":[]}; violation gw-7/ports/1795238955822"
    );
}

#[test]
fn alarms_of_one_millisecond_have_ids_of_their_own_and_the_profile_name() {
    let count = r#"{"name": "count", "metric": "aws:num-listening-tcp-ports",
        "criteria": {"comparisonOperator": "less-than", "value": {"count": 2}}}"#;
    let mut detector = detector(&format!(
        r#"{{"securityProfileName": "gateways", "behaviors": [{PORTS}, {count}]}}"#
    ));
    let raised = detector.judge(&report(&[22, 23]), at(5_000));
    let ids: Vec<&str> = raised.iter().map(|v| v.violation_id.as_str()).collect();
    assert_eq!(ids, ["gw-7/ports/5000", "gw-7/count/5001"]);
    assert!(raised.iter().all(|v| v.security_profile_name == "gateways"));
    // The clearing carries the id of its alarm; a new alarm gets a new one.
    let cleared = detector.judge(&report(&[22]), at(5_000));
    let ids: Vec<&str> = cleared.iter().map(|v| v.violation_id.as_str()).collect();
    assert_eq!(ids, ["gw-7/ports/5000", "gw-7/count/5001"]);
    let again = detector.judge(&report(&[23]), at(5_000));
    assert_eq!(again[0].violation_id, "gw-7/ports/5002");
}

#[test]
fn running_counts_raise_the_alarm_that_the_report_then_keeps() {
    let resets = r#"{"name": "resets", "metric": "interval_tcp_resets_sent",
        "criteria": {"comparisonOperator": "less-than-equals", "value": {"number": 50}}}"#;
    let opened = r#"{"name": "busy", "metric": "interval_tcp_connections_opened",
        "criteria": {"comparisonOperator": "greater-than", "value": {"number": 5}}}"#;
    let mut detector = detector(&format!("[{resets}, {opened}, {PORTS}]"));
    // Only an upper bound or a set can be broken for good by a value still growing.
    assert_eq!(
        detector.early().collect::<Vec<_>>(),
        ["interval_tcp_resets_sent", "aws:listening-tcp-ports"]
    );
    let running = |n: u64| {
        [
            ("interval_tcp_resets_sent", n.into()),
            ("interval_tcp_connections_opened", 0.into()),
        ]
    };
    assert!(detector.judge_running(&running(50), at(1_000)).is_empty());
    let raised = detector.judge_running(&running(51), at(2_000));
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].violation_id, "gw-7/resets/2000");
    assert_eq!(raised[0].metric_value, json!({"number": 51}));
    assert!(detector.judge_running(&running(80), at(2_500)).is_empty());
    let mut report = report(&[22]);
    report.custom_metrics.insert(
        "interval_tcp_resets_sent".into(),
        [crate::report::CustomMetric::from(90)],
    );
    // The report of the same interval finds the alarm raised: no second event.
    let at_report = detector.judge(&report, at(3_000));
    assert!(at_report.is_empty(), "{at_report:?}");
}

#[test]
fn a_running_list_with_an_element_outside_the_set_raises_the_alarm() {
    let ports = r#"{"name": "ports", "metric": "interval_listening_tcp_ports",
        "criteria": {"comparisonOperator": "in-set", "value": {"numbers": [22, 443]}}}"#;
    let mut detector = detector(&format!("[{ports}]"));
    assert_eq!(
        detector.early().collect::<Vec<_>>(),
        ["interval_listening_tcp_ports"]
    );
    let list = |ports: &[u64]| {
        [(
            "interval_listening_tcp_ports",
            crate::report::CustomMetric::NumberList(ports.to_vec()),
        )]
    };
    assert!(detector.judge_running(&list(&[22]), at(1_000)).is_empty());
    let raised = detector.judge_running(&list(&[22, 8080]), at(2_000));
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].metric_value, json!({"numbers": [22, 8080]}));
}
