//! Output: where reports go, one per line on stdout (indented at a terminal) or through the
//! spool to an MQTT broker, and the violations of behaviours judged on the device, in the log
//! and beside the reports: on stdout, or through the same spool to the broker's violations
//! topic. Never collects.

pub mod mqtt;
mod outbox;
mod pretty;
mod spool;

use std::io::{IsTerminal, Write};

use anyhow::{Context, Result};
use log::info;

use crate::{
    config::{Broker, Settings},
    detect::violation::Violation,
    report::{Encoded, Encoding, Format, Report},
};
use mqtt::Publisher;
use outbox::Outbox;

pub enum Output {
    /// Each report on one line, or indented where a person reads them.
    Stdout(Encoding, Layout),
    Broker(Outbox, Publisher),
}

impl Output {
    /// Opens the spool and starts the publisher (the only other thread) when reports go to
    /// `broker`; returns it with the readings spooled with the newest report, read before
    /// the publisher could deliver it. Runs after the privilege drop; `layout` was chosen
    /// before it ([`Layout::of_stdout`]).
    pub fn open(
        settings: &Settings,
        broker: Option<&Broker>,
        layout: Layout,
    ) -> Result<(Self, Option<Vec<u8>>)> {
        Ok(match broker {
            Some(broker) => {
                let outbox = Outbox::open(&settings.state_dir, broker.spool_bytes);
                let readings = {
                    let spool = outbox.shared().spool();
                    spool.newest().and_then(|id| spool.trailer(id))
                };
                let publisher = mqtt::start_publisher(outbox.shared(), settings, broker)?;
                (Self::Broker(outbox, publisher), readings)
            }
            None => (Self::Stdout(encoding(settings, usize::MAX), layout), None),
        })
    }

    /// The newest report id waiting in the spool: ids go on above it.
    pub fn newest_spooled(&self) -> Option<u64> {
        match self {
            Self::Broker(outbox, _) => outbox.newest(),
            Self::Stdout(..) => None,
        }
    }

    /// Writes or spools `report`; returns its encoded size when it was written.
    /// `readings` (what the report was taken from) are spooled with it, and `sent` runs once
    /// the report is out but before the publisher can deliver it, so that a successor after
    /// a crash finds the readings of the newest report that left, in the spool or where
    /// `sent` keeps them.
    pub fn send(
        &mut self,
        report: Report,
        readings: &[u8],
        sent: impl FnOnce(),
    ) -> Result<Option<usize>> {
        match self {
            Self::Broker(outbox, _) => {
                outbox.push(report, readings, sent);
                Ok(None)
            }
            Self::Stdout(encoding, layout) => {
                let bytes = print(&report, encoding, *layout)?;
                sent();
                Ok(Some(bytes))
            }
        }
    }

    /// Logs `violation`, judged on report `report_id`, in one line, and prints it on stdout
    /// as one JSON line of its own, `{"violation": {...}}`, or spools it for the broker.
    pub fn violation(&mut self, report_id: u64, violation: &Violation) -> Result<()> {
        violation.log();
        match self {
            Self::Broker(outbox, _) => outbox.push_violation(report_id, violation),
            Self::Stdout(..) => {
                let mut out = std::io::stdout().lock();
                out.write_all(violation.json_line().as_bytes())
                    .and_then(|()| out.write_all(b"\n"))
                    .and_then(|()| out.flush())
                    .map_err(anyhow::Error::from)
                    .with_context(|| {
                        format!("writing violation {} to stdout", violation.violation_id)
                    })?;
            }
        }
        Ok(())
    }

    /// The publisher's health, when reports go to a broker.
    pub fn publisher_health(&self) -> Option<mqtt::Health> {
        match self {
            Self::Broker(_, publisher) => Some(publisher.health()),
            Self::Stdout(..) => None,
        }
    }

    /// Lets the publisher deliver what it can in a short grace period.
    pub fn close(self) {
        if let Self::Broker(_, publisher) = self {
            publisher.stop();
        }
    }
}

/// How reports are laid out on stdout.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One report a line, for a program.
    Lines,
    /// Indented, for a person at a terminal.
    Indented,
}

impl Layout {
    /// Indented when stdout is a terminal. Asked before the privilege drop: the main
    /// process's system-call filter refuses the terminal's ioctl.
    pub fn of_stdout() -> Self {
        match std::io::stdout().is_terminal() {
            true => Self::Indented,
            false => Self::Lines,
        }
    }
}

/// Whether `err`, from [`Output::send`], means no report can get anywhere again: stdout's
/// reader is gone (`tern run | head`), and reports would be lost one by one, in silence.
pub fn nowhere(err: &anyhow::Error) -> bool {
    err.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// The encoding `settings` ask for, within `room` bytes at most.
fn encoding(settings: &Settings, room: usize) -> Encoding {
    Encoding {
        names: settings.names,
        format: settings.format,
        budget: usize::try_from(settings.budget)
            .unwrap_or(usize::MAX)
            .min(room),
    }
}

/// Encodes `report`, saying when its lists were cut to fit.
fn encode(report: &Report, encoding: &Encoding) -> Result<Vec<u8>> {
    let Encoded { bytes, cut } = encoding.encode(report)?;
    if cut {
        info!(
            "report {} was over {} bytes: its lists were cut to fit",
            report.header.report_id, encoding.budget
        );
    }
    Ok(bytes)
}

/// Writes one report on stdout as `layout` says; returns its encoded size.
fn print(report: &Report, encoding: &Encoding, layout: Layout) -> Result<usize> {
    let id = report.header.report_id;
    let bytes = encode(report, encoding)?;
    let mut out = std::io::stdout().lock();
    match encoding.format {
        Format::Json if layout == Layout::Indented => out.write_all(&pretty::indent(&bytes)),
        Format::Json => out.write_all(&bytes),
        Format::Cbor => out.write_all(hex(&bytes).as_bytes()),
    }
    .and_then(|()| out.write_all(b"\n"))
    .and_then(|()| out.flush())
    .map_err(anyhow::Error::from)
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
