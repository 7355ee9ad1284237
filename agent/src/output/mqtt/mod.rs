//! Publishing: delivers spooled reports to an MQTT broker (AWS IoT Core or any other) over
//! mutual TLS, on its own thread with a single-threaded async runtime, and follows Device
//! Defender's accepted/rejected replies. Owns the connection, the reconnect backoff and the
//! reply bookkeeping; never collects, and never deletes a report the broker has not
//! acknowledged.
//!
//! Delivery: one report in flight at a time (QoS 1), removed from the spool on its PUBACK.
//! For a generic broker every report goes out in order; for AWS, which refuses reports about
//! the past and more than one report per 5 minutes, everything spooled is folded into the
//! newest report (`Report::absorb`) and sent as one.

mod backoff;
mod errors;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};
use log::{debug, error, info, warn};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing, Packet,
    QoS, SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use serde_json::Value;
use tokio::{sync::Notify, time::Instant};

use crate::{
    config::{Broker, Settings},
    output::spool::Spool,
    report::{CustomMetric, Format, Names, Report, catalog, catalog::merge_rule, encode_within},
};

use backoff::Backoff;

/// How long a stopping tern keeps delivering what is spooled while connected.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// A connection up this long has proved itself: the next failure backs off from the start.
const STABLE: Duration = Duration::from_secs(60);
/// Longest wait for the cloud's reply to a report published on a connection that broke
/// before its PUBACK, before it is published again. A reply the broker kept for tern's
/// session comes right after the CONNACK, and a report still in transit when tern
/// reconnected reaches the cloud within moments: a few seconds settle both without holding
/// up delivery for long.
const IN_DOUBT_WAIT: Duration = Duration::from_secs(3);
/// Fixed header (1), remaining length (up to 4), topic length (2) and packet id (2).
const PUBLISH_OVERHEAD: usize = 9;

/// Counts of the current interval, taken into each report as custom metrics.
#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    rejected: AtomicU64,
    unanswered: AtomicU64,
    dropped: AtomicU64,
}

/// What the collecting thread and the publisher thread share.
struct Shared {
    spool: Mutex<Spool>,
    wake: Notify,
    stop: AtomicBool,
    counters: Counters,
}

impl Shared {
    fn spool(&self) -> MutexGuard<'_, Spool> {
        // A panic elsewhere cannot leave the spool half-updated in memory: every change is
        // one map operation after its file operation.
        self.spool.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// The collecting side: spools reports and adds tern's own counts to them.
pub struct Outbox {
    shared: Arc<Shared>,
    /// A report the spool could not take (disk full, I/O error): it folds into the next.
    carry: Option<Box<Report>>,
}

impl Outbox {
    /// Opens the spool in `state_dir`; done during setup, before any thread starts.
    pub fn open(settings: &Settings, broker: &Broker) -> Result<Self> {
        let spool = Spool::open(&settings.state_dir, broker.spool_bytes)?;
        if !spool.is_empty() {
            info!(
                "{} undelivered report(s) from an earlier run are spooled",
                spool.len()
            );
        }
        Ok(Self {
            shared: Arc::new(Shared {
                spool: Mutex::new(spool),
                wake: Notify::new(),
                stop: AtomicBool::new(false),
                counters: Counters::default(),
            }),
            carry: None,
        })
    }

    /// Adds the interval's delivery counts to `report`, writes it to the spool and wakes the
    /// publisher. A report that cannot be written is kept and folded into the next one.
    pub fn push(&mut self, mut report: Report) {
        let c = &self.shared.counters;
        for (metric, counter) in [
            (catalog::REPORTS_ACCEPTED, &c.accepted),
            (catalog::REPORTS_REJECTED, &c.rejected),
            (catalog::REPORTS_UNANSWERED, &c.unanswered),
            (catalog::REPORTS_DROPPED, &c.dropped),
        ] {
            report.set_custom(
                metric.name,
                CustomMetric::from(counter.swap(0, Ordering::SeqCst)),
            );
        }
        if let Some(older) = self.carry.take() {
            report.absorb(&older, merge_rule);
        }
        let id = report.header.report_id;
        let pushed = self.shared.spool().push(report.clone());
        match pushed {
            Ok(dropped) => {
                c.dropped.fetch_add(dropped, Ordering::SeqCst);
                self.shared.wake.notify_one();
                debug!("report {id} spooled");
            }
            Err(err) => {
                error!("{err:#}; report {id} is kept in memory and goes into the next report");
                self.carry = Some(Box::new(report));
            }
        }
    }
}

/// The running publisher thread.
pub struct Publisher {
    shared: Arc<Shared>,
    thread: JoinHandle<()>,
}

/// Where and how reports are sent; fixed for the life of the publisher.
struct Target {
    broker: Broker,
    topic: String,
    names: Names,
    format: Format,
    budget: usize,
}

/// Starts the publisher thread and its async runtime. Everything that needs privileges or
/// opens files (config, certificates, keys, spool) is done before this is called.
pub fn start_publisher(outbox: &Outbox, settings: &Settings) -> Result<Publisher> {
    let broker = settings
        .broker
        .clone()
        .context("publishing needs a broker endpoint")?;
    let format = settings.format;
    let topic = format!(
        "$aws/things/{}/defender/metrics/{}",
        broker.thing_name,
        format_name(format)
    );
    let room = broker
        .packet_limit
        .saturating_sub(PUBLISH_OVERHEAD + topic.len());
    let budget = usize::try_from(settings.budget)
        .unwrap_or(usize::MAX)
        .min(room);
    let target = Target {
        broker,
        topic,
        names: settings.names,
        format,
        budget,
    };
    let shared = Arc::clone(&outbox.shared);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the publisher's runtime")?;
    let thread = std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || {
            runtime.block_on(serve(shared, target));
            // A name lookup still running on the blocking pool must not hold up the exit.
            runtime.shutdown_timeout(Duration::from_secs(1));
        })
        .context("starting the publisher thread")?;
    Ok(Publisher {
        shared: Arc::clone(&outbox.shared),
        thread,
    })
}

impl Publisher {
    /// Asks the publisher to stop: it delivers what it can within a short grace period if
    /// connected; what is left stays spooled for the next run.
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        if self.thread.join().is_err() {
            error!("the publisher thread panicked; undelivered reports stay spooled");
        }
        let left = self.shared.spool().len();
        if left > 0 {
            info!("{left} undelivered report(s) stay spooled for the next run");
        }
    }
}

fn format_name(format: Format) -> &'static str {
    match format {
        Format::Json => "json",
        Format::Cbor => "cbor",
    }
}

/// Reply bookkeeping and totals since start, for the log.
#[derive(Default)]
struct Replies {
    /// Report id -> when it was (last) published.
    awaiting: HashMap<u64, Instant>,
    accepted: u64,
    rejected: u64,
    unanswered: u64,
    /// The broker refused the subscription to the replies.
    refused: bool,
}

impl Replies {
    /// Whether a reply can be expected: not when the broker refused the subscription, nor
    /// when reports went unanswered and none was ever answered (a broker with no Device
    /// Defender or responder behind it).
    fn expected(&self) -> bool {
        !self.refused && (self.accepted + self.rejected > 0 || self.unanswered == 0)
    }

    fn totals(&self) -> String {
        format!(
            "reports accepted {}, rejected {}, unanswered {}",
            self.accepted, self.rejected, self.unanswered
        )
    }
}

async fn serve(shared: Arc<Shared>, target: Target) {
    let mut backoff = Backoff::new(Duration::from_secs(target.broker.reconnect_max));
    let mut replies = Replies::default();
    // Outlives a connection: a report still in flight when one breaks is in doubt.
    let mut in_flight: Option<InFlight> = None;
    let address = format!("{}:{}", target.broker.host, target.broker.port);
    loop {
        if shared.stopping() {
            return;
        }
        let err = match session(&shared, &target, &mut replies, &mut backoff, &mut in_flight).await
        {
            Ok(()) => return,
            Err(err) => err,
        };
        let failure = errors::describe(&err, &target.broker.host);
        let delay = backoff.next(failure.authorization);
        warn!(
            "broker {address}: {}; retrying in {:.1} s",
            failure.text,
            delay.as_secs_f64()
        );
        debug!("broker {address}: {err:?}");
        let retry_at = Instant::now() + delay;
        while Instant::now() < retry_at && !shared.stopping() {
            // A new report does not cut the wait short; a stop does.
            tokio::select! {
                () = tokio::time::sleep_until(retry_at) => {}
                () = shared.wake.notified() => {}
            }
        }
    }
}

/// A report (or, for AWS, several folded into one) published and not yet acknowledged.
struct InFlight {
    report_id: u64,
    spooled: Vec<u64>,
    /// Its packet id on the current connection, once rumqttc has sent it.
    pkid: Option<u16>,
    /// For a report published on a connection that broke before its PUBACK: it may have
    /// reached the broker, so the cloud's reply is awaited until then before it is sent
    /// again, and a report is not delivered twice.
    in_doubt_until: Option<Instant>,
}

/// One connection, from CONNECT to its end. Ok(()) when tern is stopping; Err when the
/// connection failed or ended.
async fn session(
    shared: &Shared,
    target: &Target,
    replies: &mut Replies,
    backoff: &mut Backoff,
    in_flight: &mut Option<InFlight>,
) -> std::result::Result<(), ConnectionError> {
    let broker = &target.broker;
    let mut options = MqttOptions::new(&broker.client_id, &broker.host, broker.port);
    options
        .set_keep_alive(Duration::from_secs(broker.keep_alive))
        // A persistent session: a reply the broker could not hand over while tern was
        // reconnecting is handed over on the next connection.
        .set_clean_session(false)
        .set_max_packet_size(broker.packet_limit, broker.packet_limit)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::clone(&broker.tls),
        )));
    let (client, eventloop) = AsyncClient::new(options, 8);
    let mut events = forward(eventloop);
    loop {
        // A stop does not wait for a connection attempt that may hang until its timeout.
        let event = tokio::select! {
            event = events.recv() => event,
            () = stopped(shared) => return Ok(()),
        };
        match event {
            Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(err),
            None => return Err(ConnectionError::RequestsDone),
        }
    }
    info!(
        "connected to {}:{} as {:?}",
        broker.host, broker.port, broker.client_id
    );
    // The backoff starts over only once this connection proves useful (a delivery, or a
    // minute up): a broker that accepts and then drops tern must not be hammered.
    let connected_at = Instant::now();
    let filters = ["accepted", "rejected"]
        .map(|reply| SubscribeFilter::new(format!("{}/{reply}", target.topic), QoS::AtLeastOnce));
    if client.try_subscribe_many(filters).is_err() {
        return Err(ConnectionError::RequestsDone);
    }
    if let Some(f) = in_flight.as_mut() {
        f.pkid = None;
        if replies.expected() {
            let wait = IN_DOUBT_WAIT.min(Duration::from_secs(broker.reply_timeout));
            info!(
                "report {} was in flight when the connection broke; waiting up to {} s for \
                 its reply before sending it again",
                f.report_id,
                wait.as_secs()
            );
            f.in_doubt_until = Some(Instant::now() + wait);
        } else {
            // No reply will ever tell: send it again (at least once).
            *in_flight = None;
        }
    }
    let mut stop_deadline: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        if shared.stopping() && stop_deadline.is_none() {
            stop_deadline = Some(Instant::now() + STOP_GRACE);
        }
        if let Some(f) =
            in_flight.take_if(|f| f.in_doubt_until.is_some_and(|t| Instant::now() >= t))
        {
            info!("no reply to report {}: sending it again", f.report_id);
        }
        if in_flight.is_none() {
            match next_report(shared, target) {
                Some((report_id, spooled, bytes)) => {
                    if client
                        .try_publish(&target.topic, QoS::AtLeastOnce, false, bytes)
                        .is_err()
                    {
                        return Err(ConnectionError::RequestsDone);
                    }
                    replies.awaiting.insert(report_id, Instant::now());
                    *in_flight = Some(InFlight {
                        report_id,
                        spooled,
                        pkid: None,
                        in_doubt_until: None,
                    });
                }
                None if shared.stopping() => return Ok(()),
                None => {}
            }
        }
        if stop_deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(());
        }
        tokio::select! {
            event = events.recv() => match event {
                Some(Ok(event)) => {
                    let waiting = in_flight.is_some();
                    on_event(event, shared, target, replies, in_flight);
                    if waiting && in_flight.is_none() {
                        backoff.reset();
                    }
                }
                Some(Err(err)) => return Err(err),
                None => return Err(ConnectionError::RequestsDone),
            },
            () = shared.wake.notified() => {}
            _ = tick.tick() => {
                expire(shared, replies, Duration::from_secs(broker.reply_timeout));
                if connected_at.elapsed() >= STABLE {
                    backoff.reset();
                }
            }
        }
    }
}

/// Returns once tern is stopping.
async fn stopped(shared: &Shared) {
    while !shared.stopping() {
        shared.wake.notified().await;
    }
}

/// Runs the event loop on its own task and hands its events over a channel, so the session
/// can wait on events and on new reports at once. Ends at the first error.
fn forward(
    mut eventloop: EventLoop,
) -> tokio::sync::mpsc::Receiver<std::result::Result<Event, ConnectionError>> {
    let mut network = NetworkOptions::new();
    network.set_connection_timeout(10);
    eventloop.set_network_options(network);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let event = eventloop.poll().await;
            let failed = event.is_err();
            if tx.send(event).await.is_err() || failed {
                break;
            }
        }
    });
    rx
}

fn on_event(
    event: Event,
    shared: &Shared,
    target: &Target,
    replies: &mut Replies,
    in_flight: &mut Option<InFlight>,
) {
    match event {
        Event::Outgoing(Outgoing::Publish(pkid)) => {
            if let Some(f) = in_flight
                .as_mut()
                .filter(|f| f.pkid.is_none() && f.in_doubt_until.is_none())
            {
                f.pkid = Some(pkid);
            }
        }
        Event::Incoming(Packet::PubAck(ack)) => {
            if let Some(f) = in_flight.take_if(|f| f.pkid == Some(ack.pkid)) {
                delivered(shared, &f, "delivered");
            }
        }
        Event::Incoming(Packet::Publish(publish)) => {
            let answered = on_reply(&publish.topic, &publish.payload, shared, target, replies);
            let settled =
                |f: &mut InFlight| f.in_doubt_until.is_some() && answered == Some(f.report_id);
            if let Some(f) = in_flight.take_if(settled) {
                delivered(shared, &f, "reached the broker before the connection broke");
            }
        }
        Event::Incoming(Packet::SubAck(ack))
            if ack.return_codes.contains(&SubscribeReasonCode::Failure) =>
        {
            replies.refused = true;
            warn!(
                "the broker refused the subscription to {}/accepted and /rejected: replies \
                 cannot be followed; allow the thing to read them",
                target.topic
            );
        }
        _ => {}
    }
}

/// Removes what a delivered report accounts for from the spool.
fn delivered(shared: &Shared, f: &InFlight, how: &str) {
    let mut spool = shared.spool();
    for id in &f.spooled {
        spool.remove(*id);
    }
    let merged = match f.spooled.len() {
        1 => String::new(),
        n => format!(", accounting for {n} intervals"),
    };
    info!(
        "report {} {how}{merged}; {} waiting in the spool",
        f.report_id,
        spool.len()
    );
}

/// Follows a reply; returns the id of the report it answers, if it names one.
fn on_reply(
    topic: &str,
    payload: &[u8],
    shared: &Shared,
    target: &Target,
    replies: &mut Replies,
) -> Option<u64> {
    let accepted = topic.ends_with("/accepted");
    let value: Option<Value> = match target.format {
        Format::Json => serde_json::from_slice(payload).ok(),
        Format::Cbor => ciborium::from_reader(payload).ok(),
    };
    let Some(value) = value else {
        warn!("a reply on {topic} does not parse; ignored");
        return None;
    };
    let Some(id) = value.get("reportId").and_then(Value::as_u64) else {
        warn!("a reply on {topic} has no reportId; ignored: {value}");
        return None;
    };
    if replies.awaiting.remove(&id).is_none() {
        debug!("reply on {topic} for report {id}, which is not awaiting one");
        return Some(id);
    }
    let counters = &shared.counters;
    if accepted {
        replies.accepted += 1;
        counters.accepted.fetch_add(1, Ordering::SeqCst);
        info!("report {id} accepted; {}", replies.totals());
    } else {
        replies.rejected += 1;
        counters.rejected.fetch_add(1, Ordering::SeqCst);
        let details = &value["statusDetails"];
        let code = details["ErrorCode"].as_str().unwrap_or("no error code");
        let message = details["ErrorMessage"].as_str().unwrap_or("");
        error!(
            "report {id} rejected: {code}: {message}; {}",
            replies.totals()
        );
    }
    Some(id)
}

/// Counts reports that had no reply within `timeout` of being published.
fn expire(shared: &Shared, replies: &mut Replies, timeout: Duration) {
    let now = Instant::now();
    let late: Vec<u64> = replies
        .awaiting
        .iter()
        .filter(|(_, sent)| now.duration_since(**sent) >= timeout)
        .map(|(id, _)| *id)
        .collect();
    for id in late {
        replies.awaiting.remove(&id);
        replies.unanswered += 1;
        shared.counters.unanswered.fetch_add(1, Ordering::SeqCst);
        warn!(
            "no reply to report {id} within {} s; {}",
            timeout.as_secs(),
            replies.totals()
        );
    }
}

/// The next report to publish, encoded: the oldest spooled one, or for AWS all of them
/// folded into the newest. Returns its id, the spool entries it accounts for, and the bytes.
fn next_report(shared: &Shared, target: &Target) -> Option<(u64, Vec<u64>, Vec<u8>)> {
    loop {
        let (report, spooled) = {
            let spool = shared.spool();
            let mut reports = spool.reports();
            if target.broker.aws {
                let all: Vec<&Report> = reports.collect();
                let (newest, older) = all.split_last()?;
                let mut merged = (*newest).clone();
                for old in older {
                    merged.absorb(old, merge_rule);
                }
                (merged, all.iter().map(|r| r.header.report_id).collect())
            } else {
                let oldest = reports.next()?;
                (oldest.clone(), vec![oldest.header.report_id])
            }
        };
        match encode_for(&report, target) {
            Ok(bytes) => return Some((report.header.report_id, spooled, bytes)),
            Err(err) => {
                error!(
                    "report {} cannot be encoded within {} bytes ({err:#}); dropped",
                    report.header.report_id, target.budget
                );
                let mut spool = shared.spool();
                for id in spooled {
                    spool.remove(id);
                }
                shared.counters.dropped.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

fn encode_for(report: &Report, target: &Target) -> Result<Vec<u8>> {
    let (bytes, cut) = encode_within(report, target.names, target.format, target.budget)?;
    if cut {
        info!(
            "report {} was over {} bytes: its lists were cut to fit the packet limit",
            report.header.report_id, target.budget
        );
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Connection, Connections, Metrics, TcpConnections};

    #[test]
    fn a_report_over_the_packet_limit_is_cut_to_fit_not_dropped() {
        let connections = (0..3_000u16)
            .map(|i| Connection {
                remote_addr: format!("10.1.{}.{}:443", i / 250, i % 250),
                local_port: 30_000 + i,
                local_interface: Some("eth0".into()),
            })
            .collect();
        let report = Report::new(
            9,
            Metrics {
                tcp_connections: Some(TcpConnections {
                    established_connections: Connections {
                        connections,
                        total: 3_000,
                    },
                }),
                ..Default::default()
            },
        );
        let topic = "$aws/things/gw/defender/metrics/json".to_owned();
        let packet_limit = 16 * 1024;
        let target = Target {
            budget: packet_limit - PUBLISH_OVERHEAD - topic.len(),
            topic,
            names: Names::Long,
            format: Format::Json,
            broker: test_broker(packet_limit),
        };
        let bytes = encode_for(&report, &target).unwrap();
        let mut packet = rumqttc::Publish::new(&target.topic, QoS::AtLeastOnce, bytes.clone());
        packet.pkid = 1;
        assert!(packet.size() <= packet_limit, "{} bytes", packet.size());
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        let ec = &value["metrics"]["tcp_connections"]["established_connections"];
        assert_eq!(ec["total"], 3_000);
        assert!(!ec["connections"].as_array().unwrap().is_empty());
    }

    #[test]
    fn for_aws_everything_spooled_folds_into_the_newest_report() {
        let dir = std::env::temp_dir().join(format!("tern-fold-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut spool = Spool::open(&dir, 1 << 20).unwrap();
        for (id, bytes_in, accepted) in [(100, 10, 1), (200, 20, 0), (300, 30, 2)] {
            let mut report = Report::new(
                id,
                Metrics {
                    network_stats: Some(crate::report::NetworkStats {
                        bytes_in,
                        packets_in: 1,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            );
            report.set_custom(catalog::REPORTS_ACCEPTED.name, CustomMetric::from(accepted));
            spool.push(report).unwrap();
        }
        let shared = Shared {
            spool: Mutex::new(spool),
            wake: Notify::new(),
            stop: AtomicBool::new(false),
            counters: Counters::default(),
        };
        let mut target = Target {
            topic: "$aws/things/gw/defender/metrics/json".into(),
            names: Names::Long,
            format: Format::Json,
            budget: 100_000,
            broker: test_broker(128 * 1024),
        };
        let (id, spooled, _) = next_report(&shared, &target).unwrap();
        assert_eq!(
            (id, spooled),
            (100, vec![100]),
            "a generic broker gets the oldest"
        );

        target.broker.aws = true;
        let (id, spooled, bytes) = next_report(&shared, &target).unwrap();
        assert_eq!((id, spooled), (300, vec![100, 200, 300]));
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["metrics"]["network_stats"]["bytes_in"], 60);
        assert_eq!(value["metrics"]["network_stats"]["packets_in"], 3);
        assert_eq!(
            value["custom_metrics"][catalog::REPORTS_ACCEPTED.name][0]["number"],
            3
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_report_the_spool_cannot_take_folds_into_the_next() {
        let dir = std::env::temp_dir().join(format!("tern-carry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let settings = Settings {
            interval: 1,
            names: Names::Long,
            format: Format::Json,
            budget: 128 * 1024,
            state_dir: dir.clone(),
            broker: None,
            custom_metrics: crate::report::catalog::Selection::All,
            metrics: Vec::new(),
            user: None,
        };
        let mut outbox = Outbox::open(&settings, &test_broker(128 * 1024)).unwrap();
        let traffic = |id, bytes_in| {
            Report::new(
                id,
                Metrics {
                    network_stats: Some(crate::report::NetworkStats {
                        bytes_in,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
        };
        // The spool's directory vanishes: the write fails and the report is kept.
        std::fs::remove_dir_all(dir.join("spool")).unwrap();
        outbox.push(traffic(1, 10));
        assert!(outbox.carry.is_some());
        std::fs::create_dir_all(dir.join("spool")).unwrap();
        outbox.push(traffic(2, 5));
        assert!(outbox.carry.is_none());
        let spool = outbox.shared.spool();
        let reports: Vec<&Report> = spool.reports().collect();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].header.report_id, 2);
        assert_eq!(reports[0].metrics.network_stats.unwrap().bytes_in, 15);
        drop(spool);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn test_broker(packet_limit: usize) -> Broker {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        Broker {
            host: "localhost".into(),
            port: 8883,
            aws: false,
            thing_name: "gw".into(),
            client_id: "gw".into(),
            keep_alive: 60,
            reconnect_max: 60,
            reply_timeout: 60,
            packet_limit,
            spool_bytes: 1 << 20,
            tls: Arc::new(tls),
        }
    }
}
