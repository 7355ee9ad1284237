//! A subscriber: what the broker hands the cloud's account on one topic filter, kept in
//! arrival order with the broker's redelivery mark. Its session is persistent, so what is
//! published while it reconnects (around a broker restart) is kept for it.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::Value;

use super::{CLOUD, Pki, responder::tls_config};
use crate::{Netns, wait_until};

/// One message the broker handed the subscriber.
#[derive(Clone, Debug)]
pub struct Delivered {
    pub topic: String,
    /// Null when it is not JSON.
    pub payload: Value,
    /// The broker marked it a redelivery of a message it handed over before.
    pub redelivered: bool,
}

pub struct Subscriber {
    received: Arc<Mutex<Vec<Delivered>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Subscriber {
    /// Subscribes to `filter` at QoS 1 as the cloud's account with client id `client_id`,
    /// on the broker at `port` of `ns`; returns once the broker has granted it.
    pub fn start(ns: &Netns, pki: &Pki, port: u16, client_id: &str, filter: &str) -> Self {
        let tls = tls_config(&pki.ca, &pki.client(CLOUD));
        let mut options = MqttOptions::new(client_id, "localhost", port);
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20)
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls),
            )));
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (subscribed_tx, subscribed) = mpsc::channel();
        let thread = {
            let received = Arc::clone(&received);
            let stop = Arc::clone(&stop);
            let filter = filter.to_owned();
            ns.spawn(move || {
                let (client, mut connection) = Client::new(options, 64);
                while !stop.load(Ordering::SeqCst) {
                    match connection.recv_timeout(Duration::from_millis(100)) {
                        Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                            client.subscribe(filter.as_str(), QoS::AtLeastOnce).unwrap();
                        }
                        Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                            let _ = subscribed_tx.send(());
                        }
                        Ok(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                            received.lock().unwrap().push(Delivered {
                                topic: publish.topic.clone(),
                                payload: serde_json::from_slice(&publish.payload)
                                    .unwrap_or(Value::Null),
                                redelivered: publish.dup,
                            });
                        }
                        Ok(Ok(_)) | Err(_) => {}
                        // The broker is down or restarting: try again soon.
                        Ok(Err(_)) => thread::sleep(Duration::from_millis(100)),
                    }
                }
                let _ = client.disconnect();
            })
        };
        subscribed
            .recv_timeout(Duration::from_secs(10))
            .expect("the subscriber did not subscribe within 10 s");
        Self {
            received,
            stop,
            thread: Some(thread),
        }
    }

    pub fn received(&self) -> Vec<Delivered> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `n` messages have arrived; panics after `timeout`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Delivered> {
        wait_until(timeout, Duration::from_millis(50), || {
            let got = self.received();
            if got.len() >= n { Ok(got) } else { Err(got) }
        })
        .unwrap_or_else(|got| {
            panic!(
                "{} message(s), not {n}, within {timeout:?}: {got:?}",
                got.len()
            )
        })
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
