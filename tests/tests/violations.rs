//! Violations of the behaviours tern judges on the device, published to a real mosquitto
//! with mutual TLS: the test opens a TCP listener in tern's namespace, which a behaviour
//! allowing only the broker's port calls a violation, and closes it again. Ground truth is
//! what the test did: the port it listened on, when, and whether the broker was up. A
//! subscriber on every thing's violations topic receives what tern publishes.

use std::{fs, net::TcpListener, path::PathBuf, time::Duration};

use serde_json::{Value, json};
use tern_tests::{
    Tern,
    broker::{BROKER, Cloud, Delivered, Subscriber, THING, Verdicts},
    wait_until,
};

/// The port the test listens on: no behaviour allows it.
const LISTENER: u16 = 18890;
/// tern's default violations topic for THING.
const TOPIC: &str = "tern/things/gw-1/violations";

/// A test's world: the publishing tests' `Cloud`, and a subscriber to the violations of
/// every thing. Fields drop in order: the subscriber before the broker.
struct World {
    subscriber: Subscriber,
    cloud: Cloud,
}

impl World {
    fn start(tag: &str) -> Self {
        let cloud = Cloud::start(tag, Verdicts::Judge);
        let subscriber = Subscriber::start(
            &cloud.pair.a,
            &cloud.pki,
            BROKER,
            "cloud-violations",
            "tern/things/+/violations",
        );
        Self { subscriber, cloud }
    }

    /// THING's config straight to the broker, a report a second, judging one behaviour:
    /// no TCP port listens but the broker's.
    fn config(&self) -> PathBuf {
        let behaviors = self.cloud.dir.join("behaviors.json");
        let profile = json!({
            "securityProfileName": "edge",
            "behaviors": [{
                "name": "only-the-broker-listens",
                "metric": "aws:listening-tcp-ports",
                "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [BROKER]}}
            }]
        });
        fs::write(&behaviors, profile.to_string()).unwrap();
        self.cloud
            .direct_config(json!({"reconnect-max": 1, "behaviors": behaviors}))
    }

    /// tern with this world's config and state, once attached and publishing.
    fn launch(&self) -> Tern {
        let tern = self.cloud.launch(&self.config());
        self.cloud.responder.wait_for(1, Duration::from_secs(20));
        tern
    }

    /// A TCP listener on LISTENER in tern's namespace.
    fn listen(&self) -> TcpListener {
        self.cloud
            .pair
            .a
            .enter(|| TcpListener::bind(("0.0.0.0", LISTENER)).expect("listening"))
    }

    /// The violation events received, once two more reports have arrived: time for any
    /// event the test did not make to arrive too.
    fn events_settled(&self) -> Vec<Value> {
        let reports = self.cloud.responder.received().len();
        self.cloud
            .responder
            .wait_for(reports + 2, Duration::from_secs(20));
        events(&self.subscriber.received())
    }

    /// Violations waiting in tern's spool.
    fn spooled_violations(&self) -> usize {
        fs::read_dir(self.cloud.state().join("spool")).map_or(0, |d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".violation"))
            })
            .count()
        })
    }

    /// Waits up to `timeout` until `n` violations wait in tern's spool.
    fn wait_spooled(&self, n: usize, timeout: Duration) {
        let spooled = wait_until(timeout, Duration::from_millis(50), || {
            match self.spooled_violations() {
                found if found == n => Ok(()),
                found => Err(found),
            }
        });
        if let Err(found) = spooled {
            panic!("{found} violation(s) spooled, not {n}, within {timeout:?}");
        }
    }
}

/// The violation events received, in order, each once: a copy is accepted only when the
/// broker marked it its own redelivery, and must be the same event. Every one is on
/// THING's topic.
fn events(delivered: &[Delivered]) -> Vec<Value> {
    let mut events: Vec<Value> = Vec::new();
    for d in delivered {
        assert_eq!(d.topic, TOPIC, "{d:?}");
        let key = |e: &Value| (e["violationId"].clone(), e["violationEventType"].clone());
        match events.iter().find(|e| key(e) == key(&d.payload)) {
            Some(copy) => {
                assert!(d.redelivered, "published twice: {}", d.payload);
                assert_eq!(copy, &d.payload, "two events share an id and a type");
            }
            None => events.push(d.payload.clone()),
        }
    }
    events
}

/// An alarm of THING's behaviour raised by the ports `raised` and cleared by `cleared`, as
/// Device Defender's ViolationEvent has it.
fn assert_alarm_and_clearing(events: &[Value], raised: &[u16], cleared: &[u16]) {
    assert_eq!(events.len(), 2, "{events:?}");
    let (alarm, clearing) = (&events[0], &events[1]);
    for (event, kind, ports) in [
        (alarm, "in-alarm", raised),
        (clearing, "alarm-cleared", cleared),
    ] {
        assert_eq!(event["violationEventType"], kind, "{event}");
        assert_eq!(event["thingName"], THING, "{event}");
        assert_eq!(event["securityProfileName"], "edge", "{event}");
        assert_eq!(
            event["behavior"]["name"], "only-the-broker-listens",
            "{event}"
        );
        assert_eq!(event["metricValue"], json!({ "ports": ports }), "{event}");
        assert!(event["violationEventTime"].as_u64().is_some(), "{event}");
    }
    let id = alarm["violationId"].as_str().expect("a violationId");
    assert!(id.starts_with("gw-1/only-the-broker-listens/"), "{alarm}");
    assert_eq!(clearing["violationId"], id, "one violation");
}

#[test]
fn an_alarm_and_its_clearing_reach_the_violations_topic() {
    let world = World::start("violations");
    let tern = world.launch();
    let listener = world.listen();
    world.subscriber.wait_for(1, Duration::from_secs(20));
    drop(listener);
    world.subscriber.wait_for(2, Duration::from_secs(20));
    let events = world.events_settled();
    assert_alarm_and_clearing(&events, &[BROKER, LISTENER], &[BROKER]);
    world.wait_spooled(0, Duration::from_secs(5));
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
}

#[test]
fn violations_raised_while_the_broker_is_down_arrive_once_it_is_back() {
    let mut world = World::start("violations-outage");
    let tern = world.launch();
    world.cloud.broker.stop();
    // The broker's own port closes with it: only the test's listener is left.
    let listener = world.listen();
    tern.wait_log("in alarm:", Duration::from_secs(20));
    world.wait_spooled(1, Duration::from_secs(5));
    drop(listener);
    tern.wait_log("alarm cleared:", Duration::from_secs(20));
    world.wait_spooled(2, Duration::from_secs(5));
    assert!(world.subscriber.received().is_empty(), "nothing while down");

    world.cloud.broker.restart();
    world.subscriber.wait_for(2, Duration::from_secs(30));
    world.wait_spooled(0, Duration::from_secs(10));
    let events = world.events_settled();
    assert_alarm_and_clearing(&events, &[LISTENER], &[]);
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
}

/// A violation spooled while the broker is down survives a crash of tern: the next tern on
/// the same state directory publishes it once the broker is back. That tern starts with
/// every behaviour normal, so the alarm's clearing never comes; nothing else does either.
#[test]
fn a_violation_spooled_before_a_crash_is_published_by_the_next_tern() {
    let mut world = World::start("violations-crash");
    let tern = world.launch();
    world.cloud.broker.stop();
    let listener = world.listen();
    tern.wait_log("in alarm:", Duration::from_secs(20));
    world.wait_spooled(1, Duration::from_secs(5));
    tern.kill();
    drop(listener);
    assert_eq!(world.spooled_violations(), 1, "kept across the crash");

    world.cloud.broker.restart();
    let tern = world.launch();
    world.subscriber.wait_for(1, Duration::from_secs(30));
    world.wait_spooled(0, Duration::from_secs(10));
    let events = world.events_settled();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["violationEventType"], "in-alarm", "{}", events[0]);
    assert_eq!(
        events[0]["metricValue"],
        json!({ "ports": [LISTENER] }),
        "{}",
        events[0]
    );
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
}
