//! Brokers that misbehave: the test's own fake broker (real TLS, real MQTT bytes) withholds
//! acknowledgements while it answers pings, replies on topics that are not a report's reply
//! topics, holds a reply back, replies only after tern was asked to stop, or closes the
//! connection on a publish to the violations topic; the real tern counts in the real kernel.
//!
//! Ground truth is what the fake broker received and sent, the UDP traffic each test sends
//! across its veth pair, and the spool on disk.

use std::{fs, net::TcpListener, path::PathBuf, time::Duration};

use serde_json::json;
use tern_tests::{
    Datagrams, LinkStats, Pair, TempDir, Tern,
    broker::{Arrival, Conduct, FakeBroker, Pki, Reply},
    custom_number, spooled, wait_until,
};

const PORT: u16 = 18893;
const THING: &str = "gw-1";

/// One test's world: a veth pair, certificates made for the test, the fake broker in
/// namespace `a`, and a directory for tern's config and state. Fields drop in order: the
/// broker first, the namespaces last.
struct World {
    broker: FakeBroker,
    dir: TempDir,
    pki: Pki,
    pair: Pair,
}

impl World {
    /// Connection n to the broker follows `conducts[n]`, the last one from there on.
    fn start(tag: &str, conducts: &[Conduct]) -> Self {
        let pair = Pair::new();
        let pki = Pki::new(tag);
        let broker = FakeBroker::start(&pair.a, &pki, PORT, conducts);
        Self {
            broker,
            dir: TempDir::new(tag),
            pki,
            pair,
        }
    }

    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// tern reporting every `interval` seconds to the broker, keep-alive 1 s (so the broker
    /// has 1 s to acknowledge a report), reconnecting within 2 s, waiting `reply_timeout`
    /// seconds for a reply; once attached.
    fn launch(&self, interval: u64, reply_timeout: u64) -> Tern {
        self.launch_with(interval, reply_timeout, &[])
    }

    /// As `launch`, with more arguments for `tern run`.
    fn launch_with(&self, interval: u64, reply_timeout: u64, args: &[&str]) -> Tern {
        let id = self.pki.client(THING);
        let config = json!({
            "endpoint": format!("localhost:{PORT}"),
            "cert": id.cert,
            "key": id.key,
            "root-ca": self.pki.ca,
            "thing-name": THING,
            "device-defender": {"enabled": true, "interval": interval},
            "tern": {"keep-alive": 1, "reconnect-max": 2, "reply-timeout": reply_timeout}
        });
        let path = self.dir.join("config.json");
        fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let mut all = vec!["--config", path.to_str().unwrap()];
        all.extend_from_slice(args);
        Tern::launch(&self.pair.a, &self.state(), &all)
    }

    /// The broker's arrivals once there are at least `n`; panics after `timeout`.
    fn arrivals(&self, n: usize, timeout: Duration) -> Vec<Arrival> {
        wait_until(timeout, Duration::from_millis(50), || {
            let arrivals = self.broker.arrivals();
            if arrivals.len() >= n {
                Ok(arrivals)
            } else {
                Err(arrivals.len())
            }
        })
        .unwrap_or_else(|got| panic!("the broker got {got} report(s), not {n}, within {timeout:?}"))
    }
}

/// The reports the broker acknowledged, each once.
fn acknowledged(arrivals: &[Arrival]) -> Vec<&Arrival> {
    let mut acked: Vec<&Arrival> = arrivals.iter().filter(|a| a.acked).collect();
    let count = acked.len();
    acked.dedup_by_key(|a| a.id);
    assert_eq!(acked.len(), count, "a report was acknowledged twice");
    assert!(
        acked.windows(2).all(|w| w[0].id < w[1].id),
        "reports acknowledged out of order"
    );
    acked
}

/// The sum of tern's delivery count `name` over `reports`.
fn counted<'a>(reports: impl IntoIterator<Item = &'a Arrival>, name: &str) -> u64 {
    reports
        .into_iter()
        .map(|a| custom_number(&a.report, name))
        .sum()
}

/// A broker that takes a report and never acknowledges it, while it answers every ping:
/// tern gives up on that connection after the keep-alive, says so naming the broker and the
/// cause, reconnects and sends the report again. Every report reaches the broker and is
/// acknowledged, and the acknowledged reports account for all the traffic: none was dropped.
#[test]
fn a_broker_that_answers_pings_but_never_acknowledges_is_left_and_nothing_is_lost() {
    let silent = Conduct {
        puback: false,
        reply: Reply::Silent,
    };
    let good = Conduct {
        puback: true,
        reply: Reply::Judge,
    };
    let world = World::start("no-puback", &[silent, good]);
    let tern = world.launch(1, 5);
    let mut udp = Datagrams::new(&world.pair);
    udp.send(200, 500, 30, 100);
    let reconnected = wait_until(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || match world.broker.connections() {
            n if n >= 2 => Ok(()),
            _ => Err(world.broker.arrivals().len()),
        },
    );
    if let Err(sent) = reconnected {
        panic!(
            "after 20 s tern is still on the connection that acknowledged nothing ({sent} \
             report(s) sent there, {} ping(s) answered)",
            world.broker.pings(0)
        );
    }
    let line = tern.wait_log("no acknowledgement (PUBACK)", Duration::from_secs(5));
    assert!(line.contains(&format!("broker localhost:{PORT}")), "{line}");
    udp.send(100, 900, 10, 100);

    let delivered = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let arrivals = world.broker.arrivals();
        let counted = LinkStats::reported(acknowledged(&arrivals).iter().map(|a| &a.report));
        if counted == udp.sent {
            Ok(arrivals)
        } else {
            Err(counted)
        }
    });
    let arrivals = delivered.unwrap_or_else(|counted| {
        panic!(
            "acknowledged reports add up to {counted:?}, the test sent {:?}",
            udp.sent
        )
    });
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);

    let on_silent: Vec<&Arrival> = arrivals.iter().filter(|a| a.connection == 0).collect();
    assert_eq!(
        on_silent.len(),
        1,
        "tern publishes one report at a time: {on_silent:?}"
    );
    assert!(
        world.broker.pings(0) >= 1,
        "the silent connection answered no ping: the case was not made"
    );
    let stuck = on_silent[0].id;
    let acked = acknowledged(&world.broker.arrivals())
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert!(
        acked.iter().any(|a| a.id == stuck),
        "report {stuck}, never acknowledged on the silent connection, was not sent again"
    );
    assert_eq!(
        counted(&acked, "reports_dropped"),
        0,
        "reports were dropped"
    );
    assert_eq!(
        spooled(&world.state()),
        0,
        "acknowledged reports left in the spool"
    );
}

/// Rejections carrying the report's id on topics that are not its reply topics (another
/// thing's, the other encoding's, one level below, the report topic itself) come before the
/// real acceptance: only the acceptance counts.
#[test]
fn a_reply_on_any_other_topic_than_the_reports_own_is_ignored() {
    let world = World::start(
        "wrong-topic",
        &[Conduct {
            puback: true,
            reply: Reply::WrongTopicsFirst,
        }],
    );
    let tern = world.launch(1, 5);
    let first = world.arrivals(1, Duration::from_secs(15))[0].id;
    let line = tern.wait_log("; reports accepted ", Duration::from_secs(10));
    assert!(
        line.contains(&format!("report {first} accepted"))
            && line.contains("reports accepted 1, rejected 0"),
        "{line}"
    );
    let wrong = world
        .broker
        .sent()
        .iter()
        .filter(|s| s.report_id == first && !s.topic.ends_with("/json/accepted"))
        .count();
    assert_eq!(wrong, 4, "the broker did not send the wrong replies first");

    // The counts reach the broker in later reports.
    let counts = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let arrivals = world.broker.arrivals();
        match counted(&arrivals, "reports_accepted") {
            0 => Err(arrivals.len()),
            accepted => Ok((accepted, counted(&arrivals, "reports_rejected"))),
        }
    });
    let (accepted, rejected) =
        counts.unwrap_or_else(|n| panic!("none of {n} reports counted an acceptance"));
    assert!(accepted >= 1);
    assert_eq!(rejected, 0, "a reply on a wrong topic was counted");
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
}

/// The acceptance of a report comes only once the next report went out, and after tern's
/// reply timeout: it is still logged and counted (the report was counted unanswered too: it
/// had no reply within the timeout).
#[test]
fn a_reply_after_the_next_report_and_the_reply_timeout_is_still_counted() {
    let world = World::start(
        "held-reply",
        &[Conduct {
            puback: true,
            reply: Reply::HeldUntilNext,
        }],
    );
    let tern = world.launch(3, 1);
    let arrivals = world.arrivals(2, Duration::from_secs(20));
    let (first, second) = (&arrivals[0], &arrivals[1]);
    let line = tern.wait_log(
        &format!("report {} accepted", first.id),
        Duration::from_secs(10),
    );
    assert!(line.contains("rejected 0"), "{line}");
    let reply = world
        .broker
        .sent()
        .into_iter()
        .find(|s| s.report_id == first.id)
        .expect("the broker sent the first report's reply");
    assert!(
        reply.at >= second.at && reply.at - first.at > Duration::from_secs(1),
        "the reply was not held back past the next report and the reply timeout"
    );

    let counts = wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
        let arrivals = world.broker.arrivals();
        match counted(&arrivals, "reports_accepted") {
            0 => Err(arrivals.len()),
            accepted => Ok((accepted, counted(&arrivals, "reports_rejected"))),
        }
    });
    let (_, rejected) =
        counts.unwrap_or_else(|n| panic!("none of {n} reports counted the late acceptance"));
    assert_eq!(rejected, 0);
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
}

/// tern is stopped right after a report reached the broker, whose replies come 700 ms after
/// each report: the stop waits for them within its grace period, and every report's
/// acceptance is logged, the one tern sends on its way out too.
#[test]
fn the_reply_to_the_last_report_before_a_stop_is_waited_for_and_logged() {
    let world = World::start(
        "stop-reply",
        &[Conduct {
            puback: true,
            reply: Reply::After(Duration::from_millis(700)),
        }],
    );
    let tern = world.launch(1, 5);
    world.arrivals(2, Duration::from_secs(15));
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    let arrivals = world.broker.arrivals();
    let replied: Vec<u64> = world.broker.sent().iter().map(|s| s.report_id).collect();
    let last = arrivals.last().map_or(0, |a| a.id);
    for arrival in &arrivals {
        let needle = format!("report {} accepted", arrival.id);
        assert!(
            stopped.log.iter().any(|l| l.contains(&needle)),
            "tern did not log {needle:?} (the broker replied to it: {}; last report {last}): \
             {:?}",
            replied.contains(&arrival.id),
            stopped.log
        );
    }
    assert!(
        !stopped
            .log
            .iter()
            .any(|l| l.contains("stopping before the reply")),
        "{:?}",
        stopped.log
    );
}

/// A broker that closes the connection on every publish to the violations topic, as AWS
/// IoT Core does when the thing's policy denies it: tern tries the violation on 3
/// connections, then drops it, naming the topic and the permission it needs, and the
/// reports behind it are delivered. The violation was raised by a listener the test opened
/// on a port the behaviour does not allow.
#[test]
fn a_violation_the_broker_refuses_is_dropped_after_three_tries_and_reports_go_on() {
    let good = Conduct {
        puback: true,
        reply: Reply::Judge,
    };
    let world = World::start("refused-violation", &[good]);
    let behaviors = world.dir.join("behaviors.json");
    let behaviour = json!([{
        "name": "only-the-broker-listens",
        "metric": "aws:listening-tcp-ports",
        "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [PORT]}}
    }]);
    fs::write(&behaviors, behaviour.to_string()).unwrap();
    let tern = world.launch_with(1, 5, &["--behaviors", behaviors.to_str().unwrap()]);
    world.arrivals(1, Duration::from_secs(20));
    let listener = world
        .pair
        .a
        .enter(|| TcpListener::bind(("127.0.0.1", PORT + 1)).expect("listening"));
    tern.wait_log("in alarm:", Duration::from_secs(20));
    let line = tern.wait_log("the broker seems to refuse", Duration::from_secs(30));
    let topic = "tern/things/gw-1/violations";
    assert!(
        line.contains("3 times in a row")
            && line.contains(&format!("{topic:?}"))
            && line.contains("iot:Publish"),
        "{line}"
    );
    assert_eq!(world.broker.refused(), [topic; 3]);
    // The reports behind it go on, and nothing else is tried on that topic.
    let before = world.broker.arrivals().len();
    world.arrivals(before + 2, Duration::from_secs(20));
    assert_eq!(world.broker.refused().len(), 3);
    let violations = fs::read_dir(world.state().join("spool"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".violation")
        })
        .count();
    assert_eq!(violations, 0, "the refused violation is no longer spooled");
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    drop(listener);
}
