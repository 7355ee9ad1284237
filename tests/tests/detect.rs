//! Behaviours judged on the device, against what the test itself did: a port scan of closed
//! ports, a listener, connections and the addresses they reach. Each behaviour is given as
//! Device Defender exports it (the output of `describe-security-profile`), and each alarm
//! and clearing is read from tern's stdout as the violation event it prints.

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tern_tests::{ADDR_B, Netns, Pair, TempDir, Tern, ss};

const EVENT_WAIT: Duration = Duration::from_secs(10);

/// A security profile as `aws iot describe-security-profile` prints it, holding `behaviors`.
fn profile(dir: &TempDir, behaviors: Value) -> String {
    let exported = json!({
        "securityProfileName": "edge",
        "securityProfileArn": "arn:aws:iot:eu-west-1:123456789012:securityprofile/edge",
        "securityProfileDescription": "gateways",
        "behaviors": behaviors,
        "alertTargets": {},
        "additionalMetricsToRetainV2": [],
        "version": 3,
        "creationDate": 1_767_225_600.123,
        "lastModifiedDate": 1_767_312_000.456,
        "metricsExportConfig": {
            "mqttTopic": "$aws/rules/export",
            "roleArn": "arn:aws:iam::123456789012:role/export"
        }
    });
    let path = dir.join("profile.json");
    std::fs::write(&path, exported.to_string()).expect("writing the profile");
    path.to_string_lossy().into_owned()
}

fn start(ns: &Netns, dir: &TempDir, interval: &str, behaviors: Value) -> Tern {
    let file = profile(dir, behaviors);
    Tern::start(ns, &["--interval", interval, "--behaviors", &file])
}

/// The next violation event, checked to be of `kind` and behaviour `name`.
fn next_event(tern: &Tern, kind: &str, name: &str) -> (Instant, Value) {
    let (at, event) = tern.next_violation(EVENT_WAIT);
    assert_eq!(event["violationEventType"], kind, "{event}");
    assert_eq!(event["behavior"]["name"], name, "{event}");
    assert_eq!(event["securityProfileName"], "edge", "{event}");
    (at, event)
}

#[test]
fn a_port_scan_alarms_within_a_second_of_the_reset_that_breaks_the_bound() {
    let ns = Netns::new("scan");
    let dir = TempDir::new("detect-scan");
    let tern = start(
        &ns,
        &dir,
        "300",
        json!([{
            "name": "resets",
            "metric": "interval_tcp_resets_sent",
            "criteria": {"comparisonOperator": "less-than-equals", "value": {"number": 50}},
            "suppressAlerts": false
        }]),
    );
    // 200 closed ports, 10 ms apart: each SYN is answered by a reset.
    let (refused, breaking) = ns.enter(|| {
        let (mut refused, mut breaking) = (0, None);
        for port in 21_000..21_200 {
            match TcpStream::connect(("127.0.0.1", port)) {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => refused += 1,
                other => panic!("port {port}: {other:?}"),
            }
            if refused == 51 {
                breaking = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (refused, breaking.expect("51 refused connections"))
    });
    assert_eq!(refused, 200);
    let (at, event) = next_event(&tern, "in-alarm", "resets");
    let value = event["metricValue"]["number"].as_f64().unwrap();
    assert!((51.0..=200.0).contains(&value), "{event}");
    let late = at.saturating_duration_since(breaking);
    assert!(
        late < Duration::from_secs(1),
        "the alarm came {late:?} after the 51st reset"
    );
    // The interval's report, at the stop, carries every reset and raises nothing more.
    let stopped = tern.stop();
    let last = stopped.reports.last().expect("the report made at the stop");
    assert_eq!(
        last["custom_metrics"]["interval_tcp_resets_sent"][0]["number"],
        200
    );
}

#[test]
fn a_listener_outside_the_normal_ports_alarms_and_its_close_clears() {
    let ns = Netns::new("ports");
    let dir = TempDir::new("detect-ports");
    let tern = start(
        &ns,
        &dir,
        "1",
        json!([{
            "name": "ports",
            "metric": "aws:listening-tcp-ports",
            "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22]}}
        }]),
    );
    tern.next_report(EVENT_WAIT);
    let listener = ns.enter(|| TcpListener::bind("0.0.0.0:7311").expect("a listener"));
    let listening = ss::listening(&ns, 't');
    assert_eq!(listening.len(), 1, "{listening:?}");
    let (_, raised) = next_event(&tern, "in-alarm", "ports");
    assert_eq!(raised["metricValue"], json!({"ports": [7311]}));
    drop(listener);
    let (_, cleared) = next_event(&tern, "alarm-cleared", "ports");
    assert_eq!(cleared["violationId"], raised["violationId"]);
    assert_eq!(cleared["metricValue"], json!({"ports": []}));
}

#[test]
fn connections_over_the_bound_alarm_on_the_second_report_and_clear_on_the_second_after() {
    let ns = Netns::new("conns");
    let dir = TempDir::new("detect-conns");
    let tern = start(
        &ns,
        &dir,
        "1",
        json!([{
            "name": "connections",
            "metric": "aws:num-established-tcp-connections",
            "criteria": {
                "comparisonOperator": "less-than-equals",
                "value": {"count": 3},
                "consecutiveDatapointsToAlarm": 2,
                "consecutiveDatapointsToClear": 2
            }
        }]),
    );
    tern.next_report(EVENT_WAIT);
    let ends = ns.enter(|| {
        let listener = TcpListener::bind("127.0.0.1:7312").expect("a listener");
        let clients: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect("127.0.0.1:7312").expect("a connection"))
            .collect();
        let accepted: Vec<TcpStream> = (0..2)
            .map(|_| listener.accept().expect("accepting").0)
            .collect();
        (listener, clients, accepted)
    });
    let established = || {
        ns.exec(&["ss", "-Htn", "state", "established"])
            .lines()
            .count()
    };
    assert_eq!(established(), 4, "both ends of two connections");
    // Reports until the alarm: the one that raised it is the second in a row over 3.
    let (raised_at, raised) = next_event(&tern, "in-alarm", "connections");
    assert_eq!(raised["metricValue"], json!({"count": 4}));
    let over_before = reports_until(&tern, raised_at, |total| total > 3);
    assert_eq!(over_before, 2, "datapoints over the bound up to the alarm");
    drop(ends);
    assert_eq!(established(), 0);
    let (cleared_at, cleared) = next_event(&tern, "alarm-cleared", "connections");
    assert_eq!(cleared["violationId"], raised["violationId"]);
    assert_eq!(cleared["metricValue"], json!({"count": 0}));
    let normal_before = reports_until(&tern, cleared_at, |total| total <= 3);
    assert_eq!(
        normal_before, 2,
        "datapoints within the bound up to the clearing"
    );
}

/// How many reports in a row, up to the last one read before `until`, have an established
/// total that `holds`.
fn reports_until(tern: &Tern, until: Instant, holds: impl Fn(u64) -> bool) -> usize {
    let mut run = 0;
    for _ in 0..20 {
        let (at, report) = tern.next_timed(EVENT_WAIT);
        if at > until {
            return run;
        }
        let total = report["metrics"]["tcp_connections"]["established_connections"]["total"]
            .as_u64()
            .unwrap();
        run = if holds(total) { run + 1 } else { 0 };
    }
    panic!("20 reports read before the event");
}

#[test]
fn a_connection_outside_the_normal_addresses_alarms_with_the_address() {
    let pair = Pair::new();
    let dir = TempDir::new("detect-addresses");
    let tern = start(
        &pair.a,
        &dir,
        "1",
        json!([{
            "name": "destinations",
            "metric": "aws:destination-ip-addresses",
            "criteria": {"comparisonOperator": "in-cidr-set", "value": {"cidrs": ["127.0.0.0/8"]}}
        }]),
    );
    tern.next_report(EVENT_WAIT);
    let server = pair
        .b
        .enter(|| TcpListener::bind((ADDR_B, 7313)).expect("a listener in b"));
    let peer: SocketAddr = format!("{ADDR_B}:7313").parse().unwrap();
    let client = pair
        .a
        .enter(move || TcpStream::connect(peer).expect("connecting to b"));
    let (_, raised) = next_event(&tern, "in-alarm", "destinations");
    assert_eq!(raised["metricValue"], json!({"cidrs": [ADDR_B]}));
    drop((client, server));
    let (_, cleared) = next_event(&tern, "alarm-cleared", "destinations");
    assert_eq!(cleared["violationId"], raised["violationId"]);
}

#[test]
fn a_listener_outside_the_normal_interval_ports_alarms_within_a_second() {
    let ns = Netns::new("early-ports");
    let dir = TempDir::new("detect-early-ports");
    let tern = start(
        &ns,
        &dir,
        "300",
        json!([{
            "name": "interval-ports",
            "metric": "interval_listening_tcp_ports",
            "criteria": {"comparisonOperator": "in-set", "value": {"numbers": [22]}}
        }]),
    );
    let (listener, listening) = ns.enter(|| {
        let listener = TcpListener::bind("0.0.0.0:7314").expect("a listener");
        (listener, Instant::now())
    });
    let (at, raised) = next_event(&tern, "in-alarm", "interval-ports");
    assert_eq!(raised["metricValue"], json!({"numbers": [7314]}));
    let late = at.saturating_duration_since(listening);
    assert!(
        late < Duration::from_secs(1),
        "the alarm came {late:?} after the listen"
    );
    drop(listener);
}
