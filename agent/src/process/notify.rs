//! systemd service notifications: READY=1 once attached and dropped, WATCHDOG=1 from the main
//! loop so systemd restarts a hung agent, STOPPING=1 on the way out. Each is one datagram sent
//! to $NOTIFY_SOCKET from an unbound socket: a client send, never a listener. Without
//! $NOTIFY_SOCKET (not started by systemd) nothing is sent.

use std::{
    os::{
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr, UnixDatagram},
    },
    time::Duration,
};

use anyhow::{Context, Result};
use log::warn;

pub struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
    /// How often to ping: half the watchdog timeout systemd set, if any.
    ping_every: Option<Duration>,
}

impl Notifier {
    /// Opens the socket when systemd asked for notifications; call before the privilege drop.
    pub fn from_env() -> Result<Option<Self>> {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let path = path.to_string_lossy().into_owned();
        let address = match path.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name),
            None => SocketAddr::from_pathname(&path),
        }
        .with_context(|| format!("NOTIFY_SOCKET={path} is not a socket address"))?;
        let socket = UnixDatagram::unbound().context("opening the systemd notification socket")?;
        let for_us =
            std::env::var("WATCHDOG_PID").map_or(true, |pid| pid.parse() == Ok(std::process::id()));
        let ping_every = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|&usec| usec > 0 && for_us)
            .map(|usec| Duration::from_micros(usec / 2));
        Ok(Some(Self {
            socket,
            address,
            ping_every,
        }))
    }

    pub fn ping_every(&self) -> Option<Duration> {
        self.ping_every
    }

    /// Sends one state line; a failure is logged, never fatal.
    pub fn send(&self, state: &str) {
        if let Err(err) = self.socket.send_to_addr(state.as_bytes(), &self.address) {
            warn!("cannot notify systemd ({state}): {err}");
        }
    }
}
