// Over 400 lines: a connection's life is one state machine (what is in flight, its
// acknowledgement, its doubt after a break); split, each half would need the other's state.
//! One MQTT connection, from CONNECT to its end: subscribes to Device Defender's replies,
//! publishes one spooled entry at a time (QoS 1), violation events first, then reports, and
//! removes it from the spool on its PUBACK. A broker that does not acknowledge within one
//! keep-alive has the connection dropped. A report in flight when a connection broke is in
//! doubt: it may have reached the broker, so the next connection waits a little for the
//! cloud's reply to it before sending it again, and a report is not delivered twice. A
//! violation has no reply to wait for: it is sent again (at least once), unless the
//! connection broke under it time after time, as AWS IoT Core closes it on a publish the
//! thing's policy denies. A stopping tern waits out the grace period for the replies still
//! due. Never reconnects: that is `serve`'s.

use std::{sync::Arc, time::Duration};

use log::{error, info, warn};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing, Packet,
    QoS, SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::{
    sync::mpsc::Receiver,
    task::JoinHandle,
    time::{Instant, sleep_until},
};

use super::{PUBLISH_OVERHEAD, Target, replies::Replies};
use crate::{
    detect::violation::EventType,
    output::{encode, outbox::Shared, spool::Key},
};

/// How long a stopping tern keeps delivering what is spooled, and waits for the replies due,
/// while connected.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// A connection up this long has proved itself: the next failure backs off from the start.
const STABLE: Duration = Duration::from_secs(60);
/// Longest wait for the cloud's reply to a report published on a connection that broke
/// before its PUBACK, before it is published again. A reply the broker kept for tern's
/// session comes right after the CONNACK, and a report still in transit when tern
/// reconnected reaches the cloud within moments: a few seconds settle both without holding
/// up delivery for long.
const IN_DOUBT_WAIT: Duration = Duration::from_secs(3);
/// Connections in a row that broke with the same violation in flight before it is taken as
/// refused by the broker and dropped: a broker that takes it acknowledges it at once, and
/// one that refuses it (AWS IoT Core, where the policy denies the topic) closes the
/// connection, which would otherwise hold up every report behind it for good.
const REFUSED_AFTER: u32 = 3;

/// A spooled entry published and not yet acknowledged.
pub struct InFlight {
    what: Sending,
    stage: Stage,
}

/// What is in flight.
enum Sending {
    /// A report (or, for AWS, several folded into one), with the spool entries it accounts
    /// for.
    Report { id: u64, spooled: Vec<u64> },
    /// A violation event, with its spool entry and whether it raised or cleared its alarm
    /// (an alarm and its clearing share one id).
    Violation {
        key: Key,
        id: String,
        kind: EventType,
    },
}

impl std::fmt::Display for Sending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Report { id, .. } => write!(f, "report {id}"),
            Self::Violation { id, kind, .. } => {
                let kind = match kind {
                    EventType::InAlarm => "in-alarm",
                    EventType::AlarmCleared => "alarm-cleared",
                };
                write!(f, "violation {id} ({kind})")
            }
        }
    }
}

/// One entry ready to publish: where, what, and its bytes.
struct Message<'t> {
    topic: &'t str,
    what: Sending,
    bytes: Vec<u8>,
}

enum Stage {
    /// Published on the current connection; the broker must acknowledge it by `ack_by`.
    Sent {
        /// Its packet id, once rumqttc has sent it.
        pkid: Option<u16>,
        ack_by: Instant,
    },
    /// Published on a connection that broke before its PUBACK: it may have reached the
    /// broker, so the cloud's reply is awaited until then before it is sent again, and a
    /// report is not delivered twice.
    InDoubt { until: Instant },
}

impl InFlight {
    /// When its acknowledgement is due, or its doubt ends.
    fn due(&self) -> Instant {
        match self.stage {
            Stage::Sent { ack_by, .. } => ack_by,
            Stage::InDoubt { until } => until,
        }
    }
}

/// Why a connection ended while tern was not stopping.
pub enum Broken {
    /// rumqttc's: the connection failed, or the broker or the network closed it.
    Connection(ConnectionError),
    /// The broker did not acknowledge `what` (a report or a violation) within `within`.
    Unacknowledged { what: String, within: Duration },
}

/// What outlives a connection: the reply bookkeeping, an entry still in flight when one
/// breaks, and how many connections in a row broke with a violation in flight.
#[derive(Default)]
pub struct Carried {
    replies: Replies,
    in_flight: Option<InFlight>,
    breaks: Option<(Key, u32)>,
}

pub struct Session<'a> {
    shared: &'a Shared,
    target: &'a Target,
    client: AsyncClient,
    events: Receiver<Result<Event, ConnectionError>>,
    /// The event loop's task: the connection closes when the session ends.
    _pump: Pump,
    replies: Replies,
    in_flight: Option<InFlight>,
    breaks: Option<(Key, u32)>,
    /// The connection proved useful (a delivery, or a minute up): the backoff starts over.
    /// A broker that accepts and then drops tern must not be hammered.
    proved: bool,
}

impl<'a> Session<'a> {
    /// Starts connecting to the target's broker, carrying on from the previous connection.
    pub fn new(shared: &'a Shared, target: &'a Target, carried: Carried) -> Self {
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
        let (events, pump) = forward(eventloop);
        Self {
            shared,
            target,
            client,
            events,
            _pump: pump,
            replies: carried.replies,
            in_flight: carried.in_flight,
            breaks: carried.breaks,
            proved: false,
        }
    }

    /// Ends the session: what the next connection carries on with, and whether this one
    /// proved useful.
    pub fn end(self) -> (Carried, bool) {
        let carried = Carried {
            replies: self.replies,
            in_flight: self.in_flight,
            breaks: self.breaks,
        };
        (carried, self.proved)
    }

    /// Runs the connection. Ok(()) when tern is stopping; Err when the connection failed or
    /// ended.
    pub async fn run(&mut self) -> Result<(), Broken> {
        loop {
            // A stop does not wait for a connection attempt that may hang until its timeout.
            let event = tokio::select! {
                event = self.events.recv() => event,
                () = stopped(self.shared) => return Ok(()),
            };
            match event {
                Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(Broken::Connection(err)),
                None => return Err(Broken::Connection(ConnectionError::RequestsDone)),
            }
        }
        let broker = &self.target.broker;
        info!(
            "connected to {}:{} as {:?}",
            broker.host, broker.port, broker.client_id
        );
        let connected_at = Instant::now();
        let filters = ["accepted", "rejected"].map(|reply| {
            SubscribeFilter::new(format!("{}/{reply}", self.target.topic), QoS::AtLeastOnce)
        });
        if self.client.try_subscribe_many(filters).is_err() {
            return Err(Broken::Connection(ConnectionError::RequestsDone));
        }
        self.resume();
        let mut stop_deadline: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            if self.shared.stopping() && stop_deadline.is_none() {
                stop_deadline = Some(Instant::now() + STOP_GRACE);
            }
            let now = Instant::now();
            if let Some(f) = self.in_flight.as_ref().filter(|f| f.due() <= now) {
                if let Stage::Sent { .. } = f.stage {
                    // It stays in flight: in doubt on the next connection.
                    let within = self.ack_wait();
                    let what = f.what.to_string();
                    return Err(Broken::Unacknowledged { what, within });
                }
                info!("no reply to {}: sending it again", f.what);
                self.in_flight = None;
            }
            if self.in_flight.is_none() {
                let next = self.next_violation().or_else(|| self.next_report());
                match next.map(|next| self.publish(next)) {
                    Some(true) => {}
                    Some(false) => return Err(Broken::Connection(ConnectionError::RequestsDone)),
                    None if self.shared.stopping() && !self.reply_due() => return Ok(()),
                    None => {}
                }
            }
            if stop_deadline.is_some_and(|d| now >= d) {
                self.replies.unreplied_at_stop();
                return Ok(());
            }
            let due = self.in_flight.as_ref().map(InFlight::due);
            let due = due.into_iter().chain(stop_deadline).min();
            tokio::select! {
                event = self.events.recv() => match event {
                    Some(Ok(event)) => {
                        let waiting = self.in_flight.is_some();
                        self.on_event(event);
                        if waiting && self.in_flight.is_none() {
                            self.proved = true;
                        }
                    }
                    Some(Err(err)) => return Err(Broken::Connection(err)),
                    None => return Err(Broken::Connection(ConnectionError::RequestsDone)),
                },
                () = self.shared.wake.notified() => {}
                () = sleep_until(due.unwrap_or(now)), if due.is_some() => {}
                _ = tick.tick() => {
                    let timeout = Duration::from_secs(self.target.broker.reply_timeout);
                    self.replies.expire(&self.shared.counters, timeout);
                    if connected_at.elapsed() >= STABLE {
                        self.proved = true;
                    }
                }
            }
        }
    }

    /// How long the broker has to acknowledge a report: one keep-alive, as long as rumqttc
    /// gives it to answer a ping before it calls the link dead. A broker that is reading
    /// acknowledges a publish about as fast as a ping; one that answers pings and not
    /// reports keeps the link alive while nothing is delivered.
    fn ack_wait(&self) -> Duration {
        Duration::from_secs(self.target.broker.keep_alive)
    }

    /// Whether a stopping tern still waits: for a reply the cloud is expected to send.
    fn reply_due(&self) -> bool {
        !self.replies.awaiting.is_empty() && self.replies.expected()
    }

    /// Puts a report carried over from a broken connection in doubt, or back in the spool's
    /// hands when no reply will tell whether it arrived. A violation goes back to the spool's
    /// hands, or out of it when the connection broke under it too often.
    fn resume(&mut self) {
        let Some(f) = self.in_flight.as_mut() else {
            return;
        };
        if let Sending::Violation { key, .. } = &f.what {
            let breaks = match self.breaks {
                Some((k, n)) if k == *key => n + 1,
                _ => 1,
            };
            self.breaks = Some((*key, breaks));
            if breaks >= REFUSED_AFTER {
                let topic = &self.target.violations_topic;
                error!(
                    "the connection broke {breaks} times in a row with {} in flight: the \
                     broker seems to refuse topic {topic:?} (AWS IoT Core closes \
                     the connection on a publish the thing's policy denies); dropped it (it is \
                     in the log). Allow iot:Publish on that topic in the thing's policy, or set \
                     tern.violations-topic (--violations-topic) to one it allows",
                    f.what
                );
                self.shared.spool().remove(*key);
            }
            self.in_flight = None;
            return;
        }
        if self.replies.expected() {
            let broker = &self.target.broker;
            let wait = IN_DOUBT_WAIT.min(Duration::from_secs(broker.reply_timeout));
            info!(
                "{} was in flight when the connection broke; waiting up to {} s for its reply \
                 before sending it again",
                f.what,
                wait.as_secs()
            );
            f.stage = Stage::InDoubt {
                until: Instant::now() + wait,
            };
        } else {
            // No reply will ever tell: send it again (at least once).
            self.in_flight = None;
        }
    }

    /// The oldest violation waiting, as published: its Device Defender `ViolationEvent` as
    /// JSON. One that cannot fit in a packet is dropped: it is in the log already.
    fn next_violation(&self) -> Option<Message<'a>> {
        let topic = &self.target.violations_topic;
        let room = self
            .target
            .broker
            .packet_limit
            .saturating_sub(PUBLISH_OVERHEAD + topic.len());
        loop {
            let (key, violation) = self.shared.next_violation()?;
            let sized = serde_json::to_vec(&violation);
            let id = violation.violation_id;
            match sized {
                Ok(bytes) if bytes.len() <= room => {
                    let kind = violation.violation_event_type;
                    let what = Sending::Violation { key, id, kind };
                    return Some(Message { topic, what, bytes });
                }
                sized => error!(
                    "violation {id} cannot be published ({}); dropped (it is in the log): \
                     raise tern.packet-limit",
                    sized.map_or_else(
                        |e| e.to_string(),
                        |b| format!("{} bytes, over the {room} a packet leaves", b.len())
                    )
                ),
            }
            self.shared.spool().remove(key);
        }
    }

    /// The next report to publish, encoded. A report that cannot be encoded within the
    /// budget is dropped.
    fn next_report(&self) -> Option<Message<'a>> {
        let encoding = &self.target.encoding;
        loop {
            let (report, spooled) = self.shared.next(self.target.broker.aws)?;
            let id = report.header.report_id;
            match encode(&report, encoding) {
                Ok(bytes) => {
                    let topic = &self.target.topic;
                    let what = Sending::Report { id, spooled };
                    return Some(Message { topic, what, bytes });
                }
                Err(err) => {
                    error!(
                        "report {id} cannot be encoded within {} bytes ({err:#}); dropped",
                        encoding.budget
                    );
                    self.shared.drop_unsendable(&spooled);
                }
            }
        }
    }

    /// Publishes an entry and holds it in flight; false when the event loop is gone.
    fn publish(&mut self, Message { topic, what, bytes }: Message<'_>) -> bool {
        if self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, bytes)
            .is_err()
        {
            return false;
        }
        if let Sending::Report { id, .. } = what {
            self.replies.published(id);
        }
        let now = Instant::now();
        self.in_flight = Some(InFlight {
            what,
            stage: Stage::Sent {
                pkid: None,
                ack_by: now + self.ack_wait(),
            },
        });
        true
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(InFlight {
                    stage: Stage::Sent { pkid: sent, .. },
                    ..
                }) = &mut self.in_flight
                {
                    sent.get_or_insert(pkid);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                let acked = |f: &mut InFlight| match f.stage {
                    Stage::Sent { pkid, .. } => pkid == Some(ack.pkid),
                    Stage::InDoubt { .. } => false,
                };
                if let Some(f) = self.in_flight.take_if(acked) {
                    self.delivered(&f, "delivered");
                }
            }
            Event::Incoming(Packet::Publish(publish)) => {
                let answered = self.replies.on_reply(
                    &self.target.topic,
                    &publish.topic,
                    &publish.payload,
                    self.target.encoding.format,
                    &self.shared.counters,
                );
                let settled = |f: &mut InFlight| match f.what {
                    Sending::Report { id, .. } => {
                        matches!(f.stage, Stage::InDoubt { .. }) && answered == Some(id)
                    }
                    Sending::Violation { .. } => false,
                };
                if let Some(f) = self.in_flight.take_if(settled) {
                    self.delivered(&f, "reached the broker before the connection broke");
                }
            }
            Event::Incoming(Packet::SubAck(ack))
                if ack.return_codes.contains(&SubscribeReasonCode::Failure) =>
            {
                self.replies.refused = true;
                warn!(
                    "the broker refused the subscription to {}/accepted and /rejected: replies \
                     cannot be followed; allow the thing to read them",
                    self.target.topic
                );
            }
            _ => {}
        }
    }

    /// Removes what a delivered entry accounts for from the spool.
    fn delivered(&self, f: &InFlight, how: &str) {
        let mut spool = self.shared.spool();
        let merged = match &f.what {
            Sending::Report { spooled, .. } => {
                spooled.iter().for_each(|&id| spool.remove(id));
                match spooled.len() {
                    1 => String::new(),
                    n => format!(", accounting for {n} intervals"),
                }
            }
            Sending::Violation { key, .. } => {
                spool.remove(*key);
                String::new()
            }
        };
        let (reports, violations) = spool.counts();
        info!(
            "{} {how}{merged}; {reports} report(s) and {violations} violation(s) waiting in \
             the spool",
            f.what
        );
    }
}

/// Returns once tern is stopping.
async fn stopped(shared: &Shared) {
    while !shared.stopping() {
        shared.wake.notified().await;
    }
}

/// The event loop's task, aborted when dropped: the connection closes with the session
/// instead of lingering until its next event.
struct Pump(JoinHandle<()>);

impl Drop for Pump {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the event loop on its own task and hands its events over a channel, so the session
/// can wait on events and on new reports at once. Ends at the first error.
fn forward(mut eventloop: EventLoop) -> (Receiver<Result<Event, ConnectionError>>, Pump) {
    let mut network = NetworkOptions::new();
    network.set_connection_timeout(10);
    eventloop.set_network_options(network);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let task = tokio::spawn(async move {
        loop {
            let event = eventloop.poll().await;
            let failed = event.is_err();
            if tx.send(event).await.is_err() || failed {
                break;
            }
        }
    });
    (rx, Pump(task))
}
