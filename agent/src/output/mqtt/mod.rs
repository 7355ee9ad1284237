//! Publishing: delivers spooled reports to an MQTT broker (AWS IoT Core or any other) over
//! mutual TLS, on its own thread with a single-threaded async runtime, and follows Device
//! Defender's accepted/rejected replies. This module starts the thread, watches it (a thread
//! that dies is fatal to tern: [`Health`]), and reconnects, with backoff, whenever a
//! connection (`session`) ends; never collects, and never deletes a report the broker has
//! not acknowledged.

mod backoff;
mod errors;
mod replies;
mod session;

use std::{
    any::Any,
    panic::AssertUnwindSafe,
    sync::{Arc, OnceLock, atomic::Ordering},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};
use log::{debug, error, warn};
use tokio::time::Instant;

use crate::{
    config::{Broker, Settings},
    output::{encoding, outbox::Shared},
    report::{Encoding, Format},
};

use backoff::Backoff;
use session::{Broken, Carried, Session};

/// Fixed header (1), remaining length (up to 4), topic length (2) and packet id (2).
const PUBLISH_OVERHEAD: usize = 9;

/// The running publisher thread.
pub struct Publisher {
    shared: Arc<Shared>,
    thread: JoinHandle<()>,
    health: Health,
}

/// Whether the publisher thread lives: it tells why once it has died (panicked, or ended
/// while tern was not stopping), and nothing before.
#[derive(Clone, Default)]
pub struct Health(Arc<OnceLock<String>>);

impl Health {
    pub fn death(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

/// Where and how reports are sent; fixed for the life of the publisher.
struct Target {
    broker: Broker,
    topic: String,
    /// Where violation events go.
    violations_topic: String,
    /// Its budget leaves room in a packet for the topic and MQTT's framing.
    encoding: Encoding,
}

impl Target {
    fn new(settings: &Settings, broker: &Broker) -> Self {
        let topic = format!(
            "$aws/things/{}/defender/metrics/{}",
            broker.thing_name,
            format_name(settings.format)
        );
        let room = broker
            .packet_limit
            .saturating_sub(PUBLISH_OVERHEAD + topic.len());
        Self {
            broker: broker.clone(),
            topic,
            violations_topic: broker.violations_topic.clone(),
            encoding: encoding(settings, room),
        }
    }
}

/// Starts the publisher thread and its async runtime, delivering what `shared` spools to
/// `broker`. Everything that needs privileges or opens files (config, certificates, keys,
/// spool) is done before this is called.
pub fn start_publisher(
    shared: &Arc<Shared>,
    settings: &Settings,
    broker: &Broker,
) -> Result<Publisher> {
    let target = Target::new(settings, broker);
    // Its blocking pool's threads (name lookups) carry the binary's name, as every other
    // thread of tern's: no name that says what the process is.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .thread_name(crate::config::program_name())
        .enable_all()
        .build()
        .context("starting the publisher's runtime")?;
    let serving = Arc::clone(shared);
    let (thread, health) = supervised(
        Arc::clone(shared),
        move || {
            runtime.block_on(serve(serving, target));
            // A name lookup still running on the blocking pool must not hold up the exit.
            runtime.shutdown_timeout(Duration::from_secs(1));
        },
        wake_main,
    )?;
    Ok(Publisher {
        shared: Arc::clone(shared),
        thread,
        health,
    })
}

/// Runs `body` on a thread of its own. If it panics, or returns while tern is not stopping,
/// the publisher is dead and nothing would deliver the reports tern goes on spooling: the
/// thread logs why, records it in the returned [`Health`] and calls `alarm`.
fn supervised(
    shared: Arc<Shared>,
    body: impl FnOnce() + Send + 'static,
    alarm: fn(),
) -> Result<(JoinHandle<()>, Health)> {
    let health = Health::default();
    let told = health.clone();
    let thread = std::thread::Builder::new()
        .spawn(move || {
            let why = match std::panic::catch_unwind(AssertUnwindSafe(body)) {
                Ok(()) if shared.stopping() => return,
                Ok(()) => "ended while tern was running".to_owned(),
                Err(payload) => format!("panicked: {}", panic_text(payload.as_ref())),
            };
            error!("the publisher thread {why}; no report can be delivered any more");
            let _ = told.0.set(why);
            alarm();
        })
        .context("starting the publisher thread")?;
    Ok((thread, health))
}

/// What a panic said, when it said it in text.
fn panic_text(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Wakes the main loop, which sleeps in poll() for up to an interval: a signal cuts that
/// sleep short, and the loop then finds the publisher dead before it reads the stop request
/// the signal also makes.
fn wake_main() {
    // SAFETY: kill with this process's own pid and a signal tern handles.
    unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
}

impl Publisher {
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Asks the publisher to stop: it delivers what it can within a short grace period if
    /// connected; what is left stays spooled for the next run (what waits in memory, if the
    /// spool cannot be written, is said to be lost).
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        // A panic is caught, logged and told by the thread itself.
        let _ = self.thread.join();
        self.shared.spool().close();
    }
}

fn format_name(format: Format) -> &'static str {
    match format {
        Format::Json => "json",
        Format::Cbor => "cbor",
    }
}

/// Connects, and reconnects after a backoff whenever a connection ends, until tern stops.
async fn serve(shared: Arc<Shared>, target: Target) {
    let mut backoff = Backoff::new(Duration::from_secs(target.broker.reconnect_max));
    let mut carried = Carried::default();
    let address = format!("{}:{}", target.broker.host, target.broker.port);
    loop {
        if shared.stopping() {
            return;
        }
        let mut session = Session::new(&shared, &target, carried);
        let ended = session.run().await;
        let proved;
        (carried, proved) = session.end();
        let Err(broken) = ended else {
            return;
        };
        if proved {
            backoff.reset();
        }
        let (text, authorization) = match broken {
            Broken::Connection(err) => {
                debug!("broker {address}: {err:?}");
                let failure = errors::describe(&err, &target.broker.host);
                (failure.text, failure.authorization)
            }
            Broken::Unacknowledged { what, within } => (
                format!(
                    "no acknowledgement (PUBACK) of {what} within {} s (the keep-alive); \
                     dropped the connection to send it again on a new one",
                    within.as_secs()
                ),
                false,
            ),
        };
        let delay = backoff.next(authorization);
        warn!(
            "broker {address}: {text}; retrying in {:.1} s",
            delay.as_secs_f64()
        );
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

#[cfg(test)]
mod tests {
    use rumqttc::QoS;
    use serde_json::Value;

    use super::*;
    use crate::report::{Connection, Connections, Metrics, Names, Report, TcpConnections};

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
        let packet_limit = 16 * 1024;
        let settings = Settings {
            interval: 1,
            names: Names::Long,
            format: Format::Json,
            budget: 128 * 1024,
            state_dir: std::env::temp_dir(),
            broker: None,
            custom_metrics: crate::report::catalog::Selection::All,
            metrics: Vec::new(),
            user: None,
            shared_user: false,
            detection: None,
        };
        let target = Target::new(&settings, &test_broker(packet_limit));
        assert_eq!(target.topic, "$aws/things/gw/defender/metrics/json");
        let bytes = target.encoding.encode(&report).unwrap().bytes;
        let mut packet = rumqttc::Publish::new(&target.topic, QoS::AtLeastOnce, bytes.clone());
        packet.pkid = 1;
        assert!(packet.size() <= packet_limit, "{} bytes", packet.size());
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        let ec = &value["metrics"]["tcp_connections"]["established_connections"];
        assert_eq!(ec["total"], 3_000);
        assert!(!ec["connections"].as_array().unwrap().is_empty());
    }

    #[test]
    fn a_publisher_thread_that_dies_is_told_and_wakes_the_main_loop() {
        let dir = std::env::temp_dir().join(format!("tern-supervised-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let outbox = crate::output::outbox::Outbox::open(&dir, 1 << 20);
        let shared = outbox.shared();
        // tern's own handler, as `run` installs it: the alarm is the real one.
        crate::process::stop::install().unwrap();
        assert!(!crate::process::stop::stop_requested());
        let (thread, health) = supervised(
            Arc::clone(shared),
            || panic!("an invariant broke"),
            wake_main,
        )
        .unwrap();
        thread.join().unwrap();
        assert_eq!(health.death(), Some("panicked: an invariant broke"));
        let woken = (0..500).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            crate::process::stop::stop_requested()
        });
        assert!(woken, "the main loop was not woken");

        let (thread, health) = supervised(Arc::clone(shared), || {}, || {}).unwrap();
        thread.join().unwrap();
        assert_eq!(health.death(), Some("ended while tern was running"));

        shared.stop.store(true, Ordering::SeqCst);
        let (thread, health) = supervised(Arc::clone(shared), || {}, || {}).unwrap();
        thread.join().unwrap();
        assert_eq!(health.death(), None, "a stop is no death");
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
            violations_topic: "tern/things/gw/violations".into(),
            tls: Arc::new(tls),
        }
    }
}
