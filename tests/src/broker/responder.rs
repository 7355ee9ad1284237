//! The responder: plays the Device Defender service, checking each report against the
//! document rules and answering accepted or rejected.

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Sender},
    },
    thread::{self, JoinHandle},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rumqttc::{
    Client, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
    tokio_rustls::rustls::{
        self, ClientConfig, RootCertStore,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};
use serde_json::{Value, json};

use super::{CLOUD, Identity, Pki};
use crate::{Netns, wait_until};

/// How the responder answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdicts {
    /// Accepted when the report follows the document rules, rejected otherwise.
    Judge,
    /// Every report rejected, as the service does with a report it cannot take.
    RejectAll,
}

/// One report the responder received.
#[derive(Clone, Debug)]
pub struct Received {
    pub thing: String,
    pub report: Value,
    /// None when accepted, else the reason for rejecting it.
    pub rejected: Option<String>,
    /// The broker marked it a redelivery: it handed the responder this message before
    /// without seeing the responder's acknowledgement (around a broker restart).
    pub redelivered: bool,
}

/// Plays the Device Defender service: subscribes to every thing's JSON and CBOR reports with a
/// persistent session (so reports published while it reconnects are kept for it), checks
/// each one and answers on the thing's accepted or rejected topic with the reportId.
pub struct Responder {
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    pub fn start(ns: &Netns, pki: &Pki, port: u16, verdicts: Verdicts) -> Self {
        let identity = pki.client(CLOUD);
        let tls = tls_config(&pki.ca, &identity);
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (subscribed_tx, subscribed) = mpsc::channel();
        let thread = {
            let received = Arc::clone(&received);
            let stop = Arc::clone(&stop);
            ns.spawn(move || {
                serve(tls, port, verdicts, &received, &stop, &subscribed_tx);
            })
        };
        subscribed
            .recv_timeout(Duration::from_secs(10))
            .expect("the responder did not subscribe within 10 s");
        Self {
            received,
            stop,
            thread: Some(thread),
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `n` reports have arrived; panics after `timeout`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        wait_until(timeout, Duration::from_millis(50), || {
            let got = self.received();
            if got.len() >= n {
                Ok(got)
            } else {
                Err(got.len())
            }
        })
        .unwrap_or_else(|got| {
            panic!("the responder got {got} report(s), not {n}, within {timeout:?}")
        })
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub(super) fn tls_config(ca: &Path, identity: &Identity) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_file_iter(&identity.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&identity.key).unwrap();
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap()
}

fn serve(
    tls: ClientConfig,
    port: u16,
    verdicts: Verdicts,
    received: &Mutex<Vec<Received>>,
    stop: &AtomicBool,
    subscribed: &Sender<()>,
) {
    let mut options = MqttOptions::new(CLOUD, "localhost", port);
    options
        .set_clean_session(false)
        .set_keep_alive(Duration::from_secs(5))
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
    let (client, mut connection) = Client::new(options, 64);
    let mut last_id: HashMap<String, u64> = HashMap::new();
    let mut subacks = 0;
    while !stop.load(Ordering::SeqCst) {
        let event = match connection.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(event)) => event,
            Ok(Err(_)) => {
                // The broker is down or restarting: try again soon.
                thread::sleep(Duration::from_millis(100));
                continue;
            }
            Err(_) => continue,
        };
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                for format in ["json", "cbor"] {
                    client
                        .subscribe(
                            format!("$aws/things/+/defender/metrics/{format}"),
                            QoS::AtLeastOnce,
                        )
                        .unwrap();
                }
            }
            Event::Incoming(Packet::SubAck(_)) => {
                // Ready once both first subscriptions (JSON and CBOR) are in place.
                subacks += 1;
                if subacks == 2 {
                    let _ = subscribed.send(());
                }
            }
            Event::Incoming(Packet::Publish(publish)) => {
                let Some(mut judged) = judge(&publish.topic, &publish.payload) else {
                    continue;
                };
                if let (Ok(()), Some(id)) = (&judged.verdict, judged.id) {
                    let last = last_id.entry(judged.thing.clone()).or_default();
                    if id < *last {
                        judged.verdict = Err(format!("report_id {id} after {last}"));
                    }
                    *last = (*last).max(id);
                }
                if verdicts == Verdicts::RejectAll {
                    judged.verdict = Err("rejected by the test".into());
                }
                let (topic, body) = judged.reply();
                received.lock().unwrap().push(Received {
                    thing: judged.thing,
                    report: judged.report,
                    rejected: judged.verdict.err(),
                    redelivered: publish.dup,
                });
                let _ = client.try_publish(topic, QoS::AtLeastOnce, false, body);
            }
            _ => {}
        }
    }
    let _ = client.disconnect();
}

/// A report as the Device Defender service sees it.
pub(super) struct Judged {
    pub thing: String,
    /// The topic it was published on.
    pub topic: String,
    pub cbor: bool,
    /// Null when it does not parse.
    pub report: Value,
    pub id: Option<u64>,
    /// Ok when it follows the document rules, else why not.
    pub verdict: Result<(), String>,
}

/// The report published on `topic`, judged against the document rules; None when `topic`
/// is no thing's report topic.
pub(super) fn judge(topic: &str, payload: &[u8]) -> Option<Judged> {
    let (thing, cbor) = topic.strip_prefix("$aws/things/").and_then(|t| {
        t.strip_suffix("/defender/metrics/json")
            .map(|thing| (thing, false))
            .or_else(|| {
                t.strip_suffix("/defender/metrics/cbor")
                    .map(|thing| (thing, true))
            })
    })?;
    let parsed: Result<Value, String> = if cbor {
        ciborium::from_reader(payload).map_err(|e| format!("not CBOR: {e}"))
    } else {
        serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))
    };
    let report = parsed.clone().unwrap_or(Value::Null);
    let id = report["header"]["report_id"].as_u64();
    Some(Judged {
        thing: thing.to_owned(),
        topic: topic.to_owned(),
        cbor,
        report,
        id,
        verdict: parsed.and_then(|r| crate::schema::validate(&r).map(|_| ())),
    })
}

impl Judged {
    /// The service's reply: its topic and its body, in the report's encoding.
    pub fn reply(&self) -> (String, Vec<u8>) {
        let (suffix, body) = match &self.verdict {
            Ok(()) => (
                "accepted",
                json!({"thingName": self.thing, "reportId": self.id, "status": "ACCEPTED",
                       "timestamp": now_ms()}),
            ),
            Err(why) => (
                "rejected",
                json!({"thingName": self.thing, "reportId": self.id, "status": "REJECTED",
                       "statusDetails": {"ErrorCode": "InvalidPayload", "ErrorMessage": why},
                       "timestamp": now_ms()}),
            ),
        };
        (format!("{}/{suffix}", self.topic), self.encode(&body))
    }

    /// `body` in the report's encoding.
    pub fn encode(&self, body: &Value) -> Vec<u8> {
        if self.cbor {
            let mut bytes = Vec::new();
            ciborium::into_writer(body, &mut bytes).unwrap();
            bytes
        } else {
            body.to_string().into_bytes()
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
