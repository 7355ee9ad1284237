//! One publishing test's world: a veth pair, certificates made for the test, and mosquitto
//! (mutual TLS, per-thing ACLs) with the responder in namespace `a`; a directory for tern's
//! config and state. Fields drop in order: the responder before the broker, the namespaces
//! last.

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde_json::{Value, json};

use super::{Identity, Mosquitto, Pki, Responder, Verdicts};
use crate::{Pair, TempDir, Tern};

/// The broker's port, on loopback in namespace `a`.
pub const BROKER: u16 = 18883;
/// The thing tern publishes as.
pub const THING: &str = "gw-1";

pub struct Cloud {
    pub responder: Responder,
    pub broker: Mosquitto,
    pub dir: TempDir,
    pub pki: Pki,
    pub pair: Pair,
}

impl Cloud {
    pub fn start(tag: &str, verdicts: Verdicts) -> Self {
        let pair = Pair::new();
        let pki = Pki::new(tag);
        let broker = Mosquitto::start(&pair.a, &pki, BROKER);
        let responder = Responder::start(&pair.a, &pki, BROKER, verdicts);
        Self {
            responder,
            broker,
            dir: TempDir::new(tag),
            pki,
            pair,
        }
    }

    /// THING's config for `endpoint` with `identity`, the `tern` keys of `tern` set over
    /// the test defaults.
    pub fn config(&self, endpoint: &str, identity: &Identity, tern: Value) -> PathBuf {
        write_config(&self.dir, endpoint, identity, &self.pki.ca, tern)
    }

    /// THING's config straight to the broker.
    pub fn direct_config(&self, tern: Value) -> PathBuf {
        self.config(
            &format!("localhost:{BROKER}"),
            &self.pki.client(THING),
            tern,
        )
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// tern with `config` and this world's state directory, once attached.
    pub fn launch(&self, config: &Path) -> Tern {
        Tern::launch(
            &self.pair.a,
            &self.state(),
            &["--config", config.to_str().unwrap()],
        )
    }
}

/// A Device Client config file as AWS ships it (with sections tern ignores), plus tern's
/// keys of `tern` over the test defaults (a report a second, quick reconnects), in `dir`.
pub fn write_config(
    dir: &TempDir,
    endpoint: &str,
    id: &Identity,
    ca: &Path,
    tern: Value,
) -> PathBuf {
    let mut config = json!({
        "endpoint": endpoint,
        "cert": id.cert,
        "key": id.key,
        "root-ca": ca,
        "thing-name": THING,
        "logging": {"enable-sdk-logging": false, "level": "DEBUG", "type": "STDOUT"},
        "jobs": {"enabled": false},
        "tunneling": {"enabled": false},
        "device-defender": {"enabled": true, "interval": 1},
        "tern": {"keep-alive": 1, "reconnect-max": 2, "reply-timeout": 5}
    });
    for (key, value) in tern.as_object().expect("tern keys") {
        config["tern"][key] = value.clone();
    }
    let path = dir.join("config.json");
    fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    path
}
