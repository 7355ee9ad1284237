// Over 400 lines: the publishing tests share one world (broker, responder, proxy) and its
// helpers.
//! Publishing to a real broker: mosquitto with mutual TLS and per-thing ACLs, certificates
//! made by the test, a responder playing the Device Defender service, and the real tern
//! counting in the real kernel.
//!
//! Ground truth is the UDP traffic each test sends across its veth pair; the broker, the
//! responder and the proxy talk over loopback in tern's namespace, which tern does not
//! count. tern must publish each report once, even around a broken connection.

use std::{collections::BTreeMap, fs, thread, time::Duration};

use serde_json::{Value, json};
use tern_tests::{
    Bpffs, Datagrams, LinkStats, TempDir, Tern,
    broker::{BROKER, Cloud, Pki, Proxy, Received, Responder, THING, Verdicts, write_config},
    custom_number, spooled, wait_until,
};

const PROXY: u16 = 18884;

/// The reports of THING by report_id, checking that tern published each once and in
/// increasing order of report_id. A second copy is accepted only when the broker marked it
/// as its own redelivery to the responder, which tern has no part in.
fn distinct(received: &[Received]) -> BTreeMap<u64, Value> {
    let mut reports = BTreeMap::new();
    let mut last = 0;
    for r in received.iter().filter(|r| r.thing == THING) {
        let id = r.report["header"]["report_id"].as_u64().expect("report_id");
        match reports.get(&id) {
            Some(copy) => {
                assert!(r.redelivered, "report {id} published twice");
                assert_eq!(copy, &r.report, "two different reports share id {id}");
            }
            None => {
                assert!(id > last, "report {id} arrived after report {last}");
                last = id;
                reports.insert(id, r.report.clone());
            }
        }
    }
    reports
}

/// The sum of custom metric `name` over the distinct reports received, once it is at least
/// 1 or `timeout` has passed.
fn counted_within(responder: &Responder, name: &str, timeout: Duration) -> u64 {
    let counted = wait_until(timeout, Duration::from_millis(100), || {
        let sum = distinct(&responder.received())
            .values()
            .map(|r| custom_number(r, name))
            .sum();
        if sum >= 1 { Ok(sum) } else { Err(sum) }
    });
    counted.unwrap_or_else(|sum| sum)
}

/// Waits up to 30 s until the delivered reports account for `expected`; panics with what
/// they hold.
fn wait_for_totals(responder: &Responder, expected: LinkStats) -> BTreeMap<u64, Value> {
    wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let reports = distinct(&responder.received());
        let counted = LinkStats::reported(reports.values());
        if counted == expected {
            Ok(reports)
        } else {
            Err(counted)
        }
    })
    .unwrap_or_else(|counted| {
        panic!("delivered reports add up to {counted:?}, the test sent {expected:?}")
    })
}

#[test]
fn reports_arrive_valid_accepted_and_in_order() {
    let cloud = Cloud::start("flow", Verdicts::Judge);
    let responder = &cloud.responder;
    let tern = cloud.launch(&cloud.direct_config(json!({})));
    tern.wait_log("connected to localhost", Duration::from_secs(10));
    let mut udp = Datagrams::new(&cloud.pair);
    udp.send(300, 700, 120, 300);
    responder.wait_for(3, Duration::from_secs(10));
    udp.send(50, 1200, 0, 0);
    tern.wait_log("accepted; reports accepted", Duration::from_secs(10));
    responder.wait_for(5, Duration::from_secs(10));
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);

    let reports = wait_for_totals(responder, udp.sent);
    let received = responder.received();
    assert_eq!(
        received.len(),
        reports.len(),
        "a report was delivered twice"
    );
    for r in &received {
        assert_eq!(r.rejected, None, "rejected: {}", r.report);
    }
    let accepted: u64 = reports
        .values()
        .map(|r| custom_number(r, "reports_accepted"))
        .sum();
    assert!(
        accepted >= 1 && accepted <= reports.len() as u64,
        "reports_accepted adds up to {accepted} over {} reports",
        reports.len()
    );
    assert_eq!(
        spooled(&cloud.state()),
        0,
        "delivered reports left in the spool"
    );
}

#[test]
fn broker_down_at_start_restarted_and_a_half_open_link_lose_nothing() {
    // The responder's persistent session outlives broker restarts, so reports published
    // while it reconnects wait for it.
    let mut cloud = Cloud::start("outage", Verdicts::Judge);
    cloud.broker.stop();
    let proxy = Proxy::start(&cloud.pair.a, PROXY, BROKER);
    let config = cloud.config(
        &format!("localhost:{PROXY}"),
        &cloud.pki.client(THING),
        json!({}),
    );
    let tern = cloud.launch(&config);
    let mut udp = Datagrams::new(&cloud.pair);

    // Broker down when tern starts.
    tern.wait_log("retrying in", Duration::from_secs(10));
    udp.send(200, 500, 30, 100);
    thread::sleep(Duration::from_millis(1500));
    cloud.broker.restart();
    tern.wait_log("connected to localhost", Duration::from_secs(15));
    udp.send(100, 900, 10, 100);

    // Broker restarted mid-run.
    cloud.broker.stop();
    udp.send(150, 300, 20, 200);
    thread::sleep(Duration::from_millis(1500));
    cloud.broker.restart();
    tern.wait_log("connected to localhost", Duration::from_secs(15));
    udp.send(80, 1000, 5, 50);

    // Half-open link: nothing moves, nothing is closed. Whichever tells first: the ping
    // unanswered, or a report in flight unacknowledged.
    proxy.freeze();
    udp.send(60, 400, 60, 400);
    tern.wait_log_any(
        &["stopped answering", "no acknowledgement (PUBACK)"],
        Duration::from_secs(15),
    );
    proxy.thaw();
    tern.wait_log("connected to localhost", Duration::from_secs(20));
    udp.send(40, 600, 4, 60);

    // A report in flight when a connection broke waits for its reply before it is sent
    // again, so delivery may take a few seconds more.
    let reports = wait_for_totals(&cloud.responder, udp.sent);
    assert!(reports.len() >= 5, "only {} reports", reports.len());
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
}

#[test]
fn reports_spooled_while_the_broker_is_down_are_delivered_after_a_restart() {
    let mut cloud = Cloud::start("restart", Verdicts::Judge);
    cloud.broker.stop();
    let config = cloud.direct_config(json!({}));
    let state = cloud.state();
    let mut udp = Datagrams::new(&cloud.pair);

    let first = cloud.launch(&config);
    udp.send(250, 800, 40, 120);
    thread::sleep(Duration::from_millis(2500));
    let stopped = first.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    let waiting = spooled(&state);
    assert!(waiting >= 2, "{waiting} reports spooled");
    assert!(cloud.responder.received().is_empty());

    cloud.broker.restart();
    let (second, started) = Tern::launch_logged(
        &cloud.pair.a,
        &state,
        &["--config", config.to_str().unwrap()],
    );
    // A graceful stop reported everything: the readings spooled with its reports are not
    // continued from, so nothing the kernel counted while no tern ran lands in a report.
    assert!(
        !started.iter().any(|l| l.contains("continuing from")),
        "{started:?}"
    );
    udp.send(30, 100, 3, 100);
    let reports = cloud.responder.wait_for(waiting, Duration::from_secs(15));
    assert!(reports.len() >= waiting);
    thread::sleep(Duration::from_millis(1500));
    let stopped = second.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    wait_for_totals(&cloud.responder, udp.sent);
    assert_eq!(spooled(&state), 0);
}

/// kill -9 with reports waiting in the spool (the broker is down) and counts not yet in any
/// report: the next tern delivers the spooled reports and reports the counts, each once.
#[test]
fn a_killed_tern_loses_and_repeats_nothing_it_counted_or_spooled() {
    let _bpffs = Bpffs::ensure();
    let mut cloud = Cloud::start("killed", Verdicts::Judge);
    cloud.broker.stop();
    let config = cloud.direct_config(json!({}));
    let mut udp = Datagrams::new(&cloud.pair);

    let first = cloud.launch(&config);
    udp.send(250, 800, 40, 120);
    thread::sleep(Duration::from_millis(2500));
    udp.send(600, 300, 70, 90);
    let killed = first.kill();
    assert!(spooled(&cloud.state()) >= 2, "{:?}", killed.log);

    cloud.broker.restart();
    let second = cloud.launch(&config);
    udp.send(30, 100, 3, 100);
    thread::sleep(Duration::from_millis(1500));
    let stopped = second.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    wait_for_totals(&cloud.responder, udp.sent);
    assert_eq!(spooled(&cloud.state()), 0);
}

/// A crash after a report reached the spool but before its readings reached the state
/// directory: the state directory's readings are older than the spool's newest report, as
/// the test leaves them. The next tern continues from the readings spooled with that report,
/// so the interval is not reported twice.
#[test]
fn a_crash_between_spooling_a_report_and_keeping_its_readings_repeats_nothing() {
    let _bpffs = Bpffs::ensure();
    let mut cloud = Cloud::start("window", Verdicts::Judge);
    cloud.broker.stop();
    let config = cloud.direct_config(json!({}));
    let state = cloud.state();
    let mut udp = Datagrams::new(&cloud.pair);

    let first = cloud.launch(&config);
    udp.send(250, 800, 40, 120);
    let spooled_one =
        wait_until(
            Duration::from_secs(10),
            Duration::from_millis(50),
            || match spooled(&state) {
                0 => Err(()),
                _ => fs::read(state.join("baseline")).map_err(|_| ()),
            },
        );
    let older = spooled_one.expect("a report spooled and its readings kept");
    udp.send(600, 300, 70, 90);
    thread::sleep(Duration::from_millis(2500));
    udp.send(100, 200, 10, 50);
    let killed = first.kill();
    assert!(spooled(&state) >= 3, "{:?}", killed.log);
    fs::write(state.join("baseline"), older).expect("putting the older readings back");

    cloud.broker.restart();
    let second = cloud.launch(&config);
    udp.send(30, 100, 3, 100);
    thread::sleep(Duration::from_millis(1500));
    let stopped = second.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    wait_for_totals(&cloud.responder, udp.sent);
    assert_eq!(spooled(&cloud.state()), 0);
}

#[test]
fn cbor_reports_and_replies_work_the_same() {
    let cloud = Cloud::start("cbor", Verdicts::Judge);
    let tern = cloud.launch(&cloud.direct_config(json!({"format": "cbor"})));
    let mut udp = Datagrams::new(&cloud.pair);
    udp.send(120, 333, 12, 222);
    tern.wait_log("accepted; reports accepted", Duration::from_secs(10));
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    wait_for_totals(&cloud.responder, udp.sent);
    for r in cloud.responder.received() {
        assert_eq!(r.rejected, None, "rejected: {}", r.report);
    }
}

/// Each misconfiguration: tern says what is wrong in plain words, sends nothing, and keeps
/// retrying at least 1 s apart.
#[test]
fn wrong_ca_refused_certificate_name_mismatch_and_no_dns_send_nothing_and_retry() {
    let cloud = Cloud::start("good", Verdicts::Judge);
    let (pair, pki, responder) = (&cloud.pair, &cloud.pki, &cloud.responder);
    let rogue = Pki::new("rogue");
    let localhost = format!("localhost:{BROKER}");
    // Loopback answers on all of 127/8, but the broker's certificate names 127.0.0.1 only.
    let other_address = format!("127.0.0.2:{BROKER}");
    let unresolvable = format!("broker.tern-test.invalid:{BROKER}");
    let cases = [
        (
            "wrong-ca",
            &localhost,
            pki.client(THING),
            &rogue.ca,
            "unknown CA",
        ),
        (
            "refused-cert",
            &localhost,
            rogue.client(THING),
            &pki.ca,
            "certificate refused",
        ),
        (
            "name-mismatch",
            &other_address,
            pki.client(THING),
            &pki.ca,
            "name mismatch",
        ),
        // The .invalid domain never resolves (RFC 6761).
        (
            "no-dns",
            &unresolvable,
            pki.client(THING),
            &pki.ca,
            "DNS failure",
        ),
    ];
    for (tag, endpoint, identity, ca, words) in cases {
        let dir = TempDir::new(tag);
        let config = write_config(&dir, endpoint, &identity, ca, json!({}));
        let tern = Tern::launch(
            &pair.a,
            &dir.join("state"),
            &["--config", config.to_str().unwrap()],
        );
        let mut delays = Vec::new();
        for _ in 0..3 {
            let line = tern.wait_log("retrying in", Duration::from_secs(15));
            assert!(line.contains(words), "{tag}: expected {words:?} in {line}");
            let secs: f64 = line
                .rsplit("retrying in ")
                .next()
                .and_then(|t| t.trim_end_matches(" s").parse().ok())
                .unwrap_or_else(|| panic!("{tag}: no delay in {line}"));
            delays.push(secs);
        }
        assert!(delays.iter().all(|d| *d >= 1.0), "{tag}: delays {delays:?}");
        let stopped = tern.stop();
        assert_eq!(stopped.code, Some(0), "{tag}: {:?}", stopped.log);
        assert!(
            responder.received().is_empty(),
            "{tag}: the broker got a report"
        );
    }
}

#[test]
fn a_rejected_report_is_logged_with_its_error_code_and_counted() {
    let cloud = Cloud::start("reject", Verdicts::RejectAll);
    let tern = cloud.launch(&cloud.direct_config(json!({})));
    let line = tern.wait_log("rejected: InvalidPayload", Duration::from_secs(10));
    assert!(line.contains("rejected by the test"), "{line}");
    assert!(line.contains("rejected 1"), "{line}");
    // A later report carries the count.
    let counted = counted_within(
        &cloud.responder,
        "reports_rejected",
        Duration::from_secs(10),
    );
    assert!(counted >= 1, "no report counted a rejection");
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
}

/// The broker's ACL lets each thing use only its own topics: with gw-2's certificate, tern
/// (client id gw-1) cannot publish gw-1's reports nor read its replies, so nothing reaches
/// the responder and tern counts its reports as unanswered.
#[test]
fn a_thing_cannot_use_another_things_topics_and_unanswered_reports_are_counted() {
    let cloud = Cloud::start("acl", Verdicts::Judge);
    let (broker, responder) = (&cloud.broker, &cloud.responder);
    let config = cloud.config(
        &format!("localhost:{BROKER}"),
        &cloud.pki.client("gw-2"),
        json!({}),
    );
    let tern = cloud.launch(&config);
    let line = tern.wait_log("no reply to report", Duration::from_secs(15));
    assert!(line.contains("unanswered 1"), "{line}");
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    assert!(
        responder.received().is_empty(),
        "gw-2 published on gw-1's topic"
    );
    assert!(
        broker.log().contains("Denied PUBLISH from gw-1"),
        "{}",
        broker.log()
    );
}

/// A full spool drops its oldest report, says so, and the count reaches the broker.
#[test]
fn a_full_spool_drops_the_oldest_report_and_counts_it() {
    let mut cloud = Cloud::start("full", Verdicts::Judge);
    cloud.broker.stop();
    let tern = cloud.launch(&cloud.direct_config(json!({"spool-bytes": 4096})));
    let state = cloud.state();
    let line = tern.wait_log("dropped undelivered report", Duration::from_secs(30));
    assert!(line.contains("spool over 4096 bytes"), "{line}");
    let kept = spooled(&state);
    let bytes: u64 = fs::read_dir(state.join("spool"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(bytes <= 4096, "{kept} spooled reports take {bytes} bytes");

    cloud.broker.restart();
    let dropped = counted_within(&cloud.responder, "reports_dropped", Duration::from_secs(10));
    assert!(dropped >= 1, "no delivered report counts the dropped one");
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
}
