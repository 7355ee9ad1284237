// Over 400 lines: the listener, each connection's MQTT framing and the misbehaviours a test
// asks for are one small broker.
//! A broker of the test's own, for faults no real broker makes on request: real TLS (mutual,
//! with the test PKI) and real MQTT 3.1.1 bytes, framed here by hand, so it can take reports
//! without acknowledging them while it answers pings, reply on topics tern never subscribed
//! to, or hold a reply back. It plays the Device Defender service too, judging each report
//! as the responder does, and records what it received and what it sent. A publish on any
//! other topic closes the connection, as AWS IoT Core does with a publish the thing's
//! policy denies.

use std::{
    io::{ErrorKind, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use rustls::{
    RootCertStore, ServerConfig, ServerConnection, StreamOwned,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use serde_json::{Value, json};

use super::{
    Pki,
    responder::{Judged, judge},
};
use crate::Netns;

/// How the broker answers the reports of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// No reply at all.
    Silent,
    /// The service's reply at once.
    Judge,
    /// First a rejection carrying the report's id on each of several topics that are not
    /// the report's reply topics, then the service's reply.
    WrongTopicsFirst,
    /// The service's reply to a report once the next report has arrived.
    HeldUntilNext,
    /// The service's reply this long after the report.
    After(Duration),
}

/// What the broker does on one connection.
#[derive(Clone, Copy, Debug)]
pub struct Conduct {
    /// Whether it acknowledges reports (PUBACK). Pings are always answered.
    pub puback: bool,
    pub reply: Reply,
}

/// One report the broker received.
#[derive(Clone, Debug)]
pub struct Arrival {
    /// The connection it came on, counted from 0.
    pub connection: usize,
    pub report: Value,
    pub id: u64,
    pub acked: bool,
    pub at: Instant,
}

/// One message the broker sent tern.
#[derive(Clone, Debug)]
pub struct Sent {
    pub topic: String,
    pub report_id: u64,
    pub at: Instant,
}

#[derive(Default)]
struct Record {
    /// Pings answered, by connection: one entry per connection accepted.
    pings: Vec<usize>,
    arrivals: Vec<Arrival>,
    sent: Vec<Sent>,
    /// The topics of the publishes that closed their connection.
    refused: Vec<String>,
}

/// The broker on 127.0.0.1:`port` in a namespace. Connection n (from 0) follows
/// `conducts[n]`, the last one from there on. Stops and closes everything when dropped.
pub struct FakeBroker {
    record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeBroker {
    pub fn start(ns: &Netns, pki: &Pki, port: u16, conducts: &[Conduct]) -> Self {
        assert!(!conducts.is_empty(), "a broker needs a conduct");
        let config = Arc::new(server_config(pki));
        let conducts = conducts.to_vec();
        let record = Arc::new(Mutex::new(Record::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready) = mpsc::channel();
        let thread = {
            let (record, stop) = (Arc::clone(&record), Arc::clone(&stop));
            ns.spawn(move || {
                let listener = TcpListener::bind(("127.0.0.1", port)).expect("broker bind");
                listener.set_nonblocking(true).unwrap();
                ready_tx.send(()).unwrap();
                let mut served = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let Ok((socket, _)) = listener.accept() else {
                        thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    let n = {
                        let mut record = record.lock().unwrap();
                        record.pings.push(0);
                        record.pings.len() - 1
                    };
                    let conduct = conducts[n.min(conducts.len() - 1)];
                    let (config, record, stop) =
                        (Arc::clone(&config), Arc::clone(&record), Arc::clone(&stop));
                    served.push(thread::spawn(move || {
                        let tls = ServerConnection::new(config).unwrap();
                        let link = Link {
                            stream: StreamOwned::new(tls, socket),
                            n,
                            conduct,
                            record: &record,
                            next_pkid: 0,
                            held: None,
                            timed: Vec::new(),
                        };
                        link.serve(&stop);
                    }));
                }
                for connection in served {
                    let _ = connection.join();
                }
            })
        };
        ready
            .recv_timeout(Duration::from_secs(10))
            .expect("the broker did not listen within 10 s");
        Self {
            record,
            stop,
            thread: Some(thread),
        }
    }

    pub fn connections(&self) -> usize {
        self.record.lock().unwrap().pings.len()
    }

    /// Pings answered on connection `n`.
    pub fn pings(&self, n: usize) -> usize {
        self.record
            .lock()
            .unwrap()
            .pings
            .get(n)
            .copied()
            .unwrap_or(0)
    }

    pub fn arrivals(&self) -> Vec<Arrival> {
        self.record.lock().unwrap().arrivals.clone()
    }

    pub fn sent(&self) -> Vec<Sent> {
        self.record.lock().unwrap().sent.clone()
    }

    /// The topic of each publish that was no report, which closed its connection.
    pub fn refused(&self) -> Vec<String> {
        self.record.lock().unwrap().refused.clone()
    }
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn server_config(pki: &Pki) -> ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&pki.ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let chain = CertificateDer::pem_file_iter(&pki.server.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&pki.server.key).unwrap();
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap()
}

/// One connection with tern.
struct Link<'a> {
    stream: StreamOwned<ServerConnection, TcpStream>,
    n: usize,
    conduct: Conduct,
    record: &'a Mutex<Record>,
    next_pkid: u16,
    /// A reply held until the next report: its topic, report id and body.
    held: Option<(String, u64, Vec<u8>)>,
    /// Replies due at a moment.
    timed: Vec<(Instant, String, u64, Vec<u8>)>,
}

/// MQTT 3.1.1 packet types (the fixed header's high nibble).
const CONNECT: u8 = 1;
const PUBLISH: u8 = 3;
const SUBSCRIBE: u8 = 8;
const PINGREQ: u8 = 12;
const DISCONNECT: u8 = 14;

impl Link<'_> {
    /// Serves until tern closes the connection or the broker stops; a connection lives two
    /// minutes at most.
    fn serve(mut self, stop: &AtomicBool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        self.stream
            .sock
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            match self.stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
            while let Some((header, body)) = take_packet(&mut buf) {
                if self.on_packet(header, &body).is_err() {
                    return;
                }
            }
            if self.release_timed().is_err() {
                return;
            }
        }
    }

    fn on_packet(&mut self, header: u8, body: &[u8]) -> std::io::Result<()> {
        match header >> 4 {
            CONNECT => self.write(&[0x20, 2, 0, 0]),
            SUBSCRIBE => {
                let mut granted = 0;
                let mut rest = &body[2..];
                while rest.len() >= 3 {
                    let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                    rest = &rest[(2 + len + 1).min(rest.len())..];
                    granted += 1;
                }
                let mut suback = vec![0x90];
                suback.extend(remaining_length(2 + granted));
                suback.extend_from_slice(&body[..2]);
                suback.extend(std::iter::repeat_n(1u8, granted));
                self.write(&suback)
            }
            PUBLISH => self.on_publish(header, body),
            PINGREQ => {
                self.record.lock().unwrap().pings[self.n] += 1;
                self.write(&[0xd0, 0])
            }
            DISCONNECT => Err(ErrorKind::ConnectionAborted.into()),
            // tern's PUBACKs of the broker's replies, and anything else: nothing to answer.
            _ => Ok(()),
        }
    }

    fn on_publish(&mut self, header: u8, body: &[u8]) -> std::io::Result<()> {
        let qos = (header >> 1) & 3;
        let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let topic = String::from_utf8_lossy(&body[2..2 + len]).into_owned();
        let (pkid, payload) = match qos {
            0 => (None, &body[2 + len..]),
            _ => (Some(&body[2 + len..4 + len]), &body[4 + len..]),
        };
        let Some(judged) = judge(&topic, payload) else {
            self.record.lock().unwrap().refused.push(topic);
            return Err(ErrorKind::PermissionDenied.into());
        };
        let id = judged.id.expect("a report without report_id");
        self.record.lock().unwrap().arrivals.push(Arrival {
            connection: self.n,
            report: judged.report.clone(),
            id,
            acked: self.conduct.puback,
            at: Instant::now(),
        });
        if let (true, Some(pkid)) = (self.conduct.puback, pkid) {
            self.write(&[0x40, 2, pkid[0], pkid[1]])?;
        }
        let (reply_topic, reply) = judged.reply();
        match self.conduct.reply {
            Reply::Silent => {}
            Reply::Judge => self.send(&reply_topic, id, &reply)?,
            Reply::WrongTopicsFirst => {
                for wrong in wrong_topics(&judged) {
                    let rejection = judged.encode(&json!({
                        "thingName": judged.thing, "reportId": id, "status": "REJECTED",
                        "statusDetails": {"ErrorCode": "InvalidPayload",
                                          "ErrorMessage": "sent on a wrong topic by the test"},
                        "timestamp": 1}));
                    self.send(&wrong, id, &rejection)?;
                }
                self.send(&reply_topic, id, &reply)?;
            }
            Reply::HeldUntilNext => {
                if let Some((topic, held_id, body)) = self.held.take() {
                    self.send(&topic, held_id, &body)?;
                }
                self.held = Some((reply_topic, id, reply));
            }
            Reply::After(delay) => {
                self.timed
                    .push((Instant::now() + delay, reply_topic, id, reply));
            }
        }
        Ok(())
    }

    fn release_timed(&mut self) -> std::io::Result<()> {
        let now = Instant::now();
        let (due, later) = std::mem::take(&mut self.timed)
            .into_iter()
            .partition(|(at, ..)| *at <= now);
        self.timed = later;
        for (_, topic, id, body) in due {
            self.send(&topic, id, &body)?;
        }
        Ok(())
    }

    /// Publishes `body` on `topic` to tern, at QoS 1 as AWS IoT Core does, and records it.
    fn send(&mut self, topic: &str, report_id: u64, body: &[u8]) -> std::io::Result<()> {
        self.next_pkid = self.next_pkid % u16::MAX + 1;
        let mut packet = vec![0x32];
        packet.extend(remaining_length(2 + topic.len() + 2 + body.len()));
        packet.extend_from_slice(&u16::try_from(topic.len()).unwrap().to_be_bytes());
        packet.extend_from_slice(topic.as_bytes());
        packet.extend_from_slice(&self.next_pkid.to_be_bytes());
        packet.extend_from_slice(body);
        self.write(&packet)?;
        self.record.lock().unwrap().sent.push(Sent {
            topic: topic.to_owned(),
            report_id,
            at: Instant::now(),
        });
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }
}

/// Topics that carry a reply's words but are not the reply topics of `judged`'s report:
/// another thing's, the other encoding's, one level below, and the report topic itself.
fn wrong_topics(judged: &Judged) -> Vec<String> {
    let other_format = match judged.cbor {
        true => judged.topic.replace("/metrics/cbor", "/metrics/json"),
        false => judged.topic.replace("/metrics/json", "/metrics/cbor"),
    };
    vec![
        judged.topic.replace(
            &format!("/things/{}/", judged.thing),
            &format!("/things/{}-other/", judged.thing),
        ) + "/rejected",
        format!("{other_format}/rejected"),
        format!("{}/rejected/more", judged.topic),
        judged.topic.clone(),
    ]
}

/// One whole packet off the front of `buf`: its first header byte and its body.
fn take_packet(buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    let mut length = 0usize;
    for i in 1..5 {
        let byte = *buf.get(i)?;
        length |= usize::from(byte & 0x7f) << (7 * (i - 1));
        if byte & 0x80 == 0 {
            let start = i + 1;
            if buf.len() < start + length {
                return None;
            }
            let body = buf[start..start + length].to_vec();
            let header = buf[0];
            buf.drain(..start + length);
            return Some((header, body));
        }
    }
    panic!("a remaining length over 4 bytes: not MQTT");
}

/// MQTT's variable-length encoding of a remaining length.
fn remaining_length(mut n: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        bytes.push(byte);
        if n == 0 {
            return bytes;
        }
    }
}
