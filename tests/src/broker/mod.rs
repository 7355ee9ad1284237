//! A real MQTT side for tern's publishing tests: a throwaway PKI made with openssl, a
//! mosquitto broker with mutual TLS and per-thing ACLs, a responder playing the Device
//! Defender service (it checks each report against the document rules and replies accepted
//! or rejected), and a TCP proxy that can cut or freeze the link. All of it runs on
//! loopback inside a test namespace and is stopped and removed when dropped.

use std::{
    fs,
    os::fd::AsRawFd,
    thread::{self, JoinHandle},
};

mod mosquitto;
mod pki;
mod proxy;
mod responder;

pub use mosquitto::{CLOUD, Mosquitto};
pub use pki::{Identity, Pki};
pub use proxy::Proxy;
pub use responder::{Received, Responder, Verdicts};

/// Runs `f` on a new thread that has entered the network namespace at `ns_path`.
fn run_in<T: Send + 'static>(
    ns_path: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let ns_path = ns_path.to_owned();
    thread::spawn(move || {
        let ns = fs::File::open(&ns_path).unwrap_or_else(|e| panic!("open {ns_path}: {e}"));
        // SAFETY: setns on a valid namespace fd affects only this thread.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}
