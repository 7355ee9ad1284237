//! A real MQTT side for tern's publishing tests, and the world they share (`Cloud`): a
//! throwaway PKI made with openssl, a mosquitto broker with mutual TLS and per-thing ACLs, a
//! responder playing the Device Defender service (it checks each report against the
//! document rules and replies accepted or rejected), a subscriber that keeps what the broker
//! hands it on a topic filter, a TCP proxy that can cut or freeze the link, and a fake broker
//! that misbehaves as a test asks. All of it runs on loopback inside a test namespace and is
//! stopped and removed when dropped.

mod cloud;
mod fake;
mod mosquitto;
mod pki;
mod proxy;
mod responder;
mod subscriber;

pub use cloud::{BROKER, Cloud, THING, write_config};
pub use fake::{Arrival, Conduct, FakeBroker, Reply, Sent};
pub use mosquitto::{CLOUD, Mosquitto};
pub use pki::{Identity, Pki};
pub use proxy::Proxy;
pub use responder::{Received, Responder, Verdicts};
pub use subscriber::{Delivered, Subscriber};
