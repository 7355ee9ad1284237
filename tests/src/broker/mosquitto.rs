//! mosquitto in a namespace: mutual TLS, per-thing ACLs, sessions kept across a restart.

use std::{
    fs,
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::Pki;
use crate::{Netns, TempDir, spawn_in, wait_until};

/// The thing name the responder and the subscriber connect as; the ACL gives it every
/// `$aws` topic and lets it read every thing's violations.
pub const CLOUD: &str = "cloud";

/// mosquitto with mutual TLS on `port` (every loopback address) in a namespace: the client
/// certificate's CN is the user name, and each thing may only publish its own reports and
/// violations (on tern's default topic) and read its own replies.
pub struct Mosquitto {
    ns: String,
    dir: TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl Mosquitto {
    pub fn start(ns: &Netns, pki: &Pki, port: u16) -> Self {
        let dir = TempDir::new("mosquitto");
        let acl = dir.join("acl");
        fs::write(
            &acl,
            "pattern write $aws/things/%u/defender/metrics/json\n\
             pattern write $aws/things/%u/defender/metrics/cbor\n\
             pattern read $aws/things/%u/defender/metrics/+/accepted\n\
             pattern read $aws/things/%u/defender/metrics/+/rejected\n\
             pattern write tern/things/%u/violations\n\
             user cloud\n\
             topic readwrite $aws/#\n\
             topic read tern/#\n",
        )
        .unwrap();
        fs::write(
            dir.join("mosquitto.conf"),
            format!(
                "user root\nper_listener_settings false\nallow_anonymous false\n\
                 acl_file {acl}\npersistence true\npersistence_location {dir}/\n\
                 log_dest file {dir}/mosquitto.log\nlog_type all\n\
                 listener {port}\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
                 require_certificate true\nuse_identity_as_username true\n",
                acl = acl.display(),
                dir = dir.path.display(),
                ca = pki.ca.display(),
                cert = pki.server.cert.display(),
                key = pki.server.key.display(),
            ),
        )
        .unwrap();
        let mut broker = Self {
            ns: ns.name.clone(),
            dir,
            port,
            child: None,
        };
        broker.restart();
        broker
    }

    /// Starts the broker again (after `stop`) with its saved sessions, and waits until it
    /// accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "mosquitto is already running");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "mosquitto", "-c"])
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mosquitto");
        self.child = Some(child);
        let port = self.port;
        let up = spawn_in(&format!("/run/netns/{}", self.ns), move || {
            wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
                TcpStream::connect(("127.0.0.1", port))
            })
            .is_ok()
        })
        .join()
        .unwrap();
        assert!(up, "mosquitto did not listen within 10 s: {}", self.log());
    }

    /// Stops the broker cleanly (it saves its sessions, as a broker restart does).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let exited = wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
                child.try_wait().ok().flatten().ok_or(())
            });
            if exited.is_err() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
