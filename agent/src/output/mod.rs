//! Output: where reports go, one per line on stdout or through the spool to an MQTT broker.
//! Never collects.

pub mod mqtt;
mod spool;

use std::io::Write;

use anyhow::{Context, Result};
use log::info;

use crate::{
    config::{Broker, Settings},
    report::{Format, Report, encode_within},
};
use mqtt::{Outbox, Publisher};

pub enum Output<'a> {
    Stdout(&'a Settings),
    Broker(Outbox, Publisher),
}

impl<'a> Output<'a> {
    /// Opens the spool and starts the publisher (the only other thread) when reports go to
    /// `broker`. Runs after the privilege drop.
    pub fn open(settings: &'a Settings, broker: Option<&Broker>) -> Result<Self> {
        Ok(match broker {
            Some(broker) => {
                let outbox = Outbox::open(settings, broker)?;
                let publisher = mqtt::start_publisher(&outbox, settings)?;
                Self::Broker(outbox, publisher)
            }
            None => Self::Stdout(settings),
        })
    }

    /// Writes or spools `report`; returns its encoded size when it was written.
    pub fn send(&mut self, report: Report) -> Result<Option<usize>> {
        match self {
            Self::Broker(outbox, _) => {
                outbox.push(report);
                Ok(None)
            }
            Self::Stdout(settings) => print(&report, settings).map(Some),
        }
    }

    /// Lets the publisher deliver what it can in a short grace period.
    pub fn close(self) {
        if let Self::Broker(_, publisher) = self {
            publisher.stop();
        }
    }
}

/// Writes one report on stdout; returns its encoded size.
fn print(report: &Report, settings: &Settings) -> Result<usize> {
    let id = report.header.report_id;
    let budget = usize::try_from(settings.budget).unwrap_or(usize::MAX);
    let (bytes, cut) = encode_within(report, settings.names, settings.format, budget)?;
    if cut {
        info!("report {id} was over {budget} bytes: its lists were cut to fit");
    }
    let mut out = std::io::stdout().lock();
    match settings.format {
        Format::Json => out.write_all(&bytes),
        Format::Cbor => out.write_all(hex(&bytes).as_bytes()),
    }
    .and_then(|()| out.write_all(b"\n"))
    .and_then(|()| out.flush())
    .with_context(|| format!("writing report {id} to stdout"))?;
    Ok(bytes.len())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}
