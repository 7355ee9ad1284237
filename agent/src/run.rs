//! The agent's loop: check the configuration, attach, start the publisher (when reports go
//! to a broker), then at every interval collect, build one report and write it or spool it.
//! Link changes are applied as they arrive, so a new interface is counted from its first
//! packet.
//!
//! Order: everything privileged or file-opening (config and certificate checks, state
//! directory, spool, eBPF) happens on the main thread before `start_publisher`, which starts
//! the only other thread.

use std::{
    collections::HashSet,
    io::Write,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use log::{error, info};

use crate::{
    Output, RunArgs,
    collect::TrafficCollector,
    config::{self, Settings},
    interfaces::LinkWatch,
    probes::Probes,
    publish::{Outbox, Publisher, start_publisher},
    report::{Format, Metrics, Report, ReportIds, encode_within},
    signals, state,
};

/// Where reports go.
enum Sink {
    Stdout,
    Broker(Outbox, Publisher),
}

pub fn run(args: &RunArgs) -> Result<()> {
    let settings = config::load(&args.config)?;
    let output = match (args.output, &settings.broker) {
        (Some(Output::Mqtt), None) => {
            bail!("--output mqtt needs an endpoint: set endpoint in the config or --endpoint")
        }
        (Some(output), _) => output,
        (None, Some(_)) => Output::Mqtt,
        (None, None) => Output::Stdout,
    };
    signals::install()?;
    state::prepare(&settings.state_dir)?;
    let ids = ReportIds::open(&settings.state_dir)?;
    let outbox = match (output, &settings.broker) {
        (Output::Mqtt, Some(broker)) => Some(Outbox::open(&settings, broker)?),
        _ => None,
    };
    let (mut probes, maps) = Probes::load(args.include_loopback)?;
    let mut links = LinkWatch::open()?;
    for event in links.dump()? {
        probes.apply(event);
    }
    info!(
        "attached; counting {} interfaces: {}",
        probes.counted_names().len(),
        probes.counted_names().join(" ")
    );
    let collector = TrafficCollector::new(maps);
    let sink = match outbox {
        Some(outbox) => {
            let publisher = start_publisher(&outbox, &settings)?;
            Sink::Broker(outbox, publisher)
        }
        None => Sink::Stdout,
    };
    let interval = Duration::from_secs(settings.interval);
    let mut next = Instant::now() + interval;

    let mut out = Reporter {
        collector,
        ids,
        settings: &settings,
        sink,
        sent: 0,
    };
    loop {
        wait_readable(
            links.as_raw_fd(),
            next.saturating_duration_since(Instant::now()),
        );
        match links.changes() {
            Ok(events) => events.into_iter().for_each(|e| probes.apply(e)),
            Err(err) => error!("reading link changes: {err:#}"),
        }
        if signals::stop_requested() {
            // What was counted since the last report is reported, not dropped.
            out.report(&probes)?;
            break;
        }
        if Instant::now() < next {
            continue;
        }
        // Deadlines advance by whole intervals, so reports do not drift.
        while next <= Instant::now() {
            next += interval;
        }
        out.report(&probes)?;
        if args.count.is_some_and(|count| out.sent >= count) {
            break;
        }
    }
    let sent = out.sent;
    info!("stopping after {sent} reports");
    if let Sink::Broker(_, publisher) = out.sink {
        publisher.stop();
    }
    Ok(())
}

/// Builds reports from the collector and writes them, one per line, or spools them.
struct Reporter<'a> {
    collector: TrafficCollector,
    ids: ReportIds,
    settings: &'a Settings,
    sink: Sink,
    sent: u64,
}

impl Reporter<'_> {
    fn report(&mut self, probes: &Probes) -> Result<()> {
        let counted: HashSet<u32> = probes.counted().collect();
        let stats = match self.collector.collect(&counted) {
            Ok(stats) => stats,
            Err(err) => {
                // The kernel keeps counting: the next report carries this interval too.
                error!("{err:#}; this interval's traffic goes into the next report");
                return Ok(());
            }
        };
        let (id, saved) = self.ids.next();
        if let Err(err) = saved {
            error!("{err:#}; after a restart, report ids may not continue from {id}");
        }
        let report = Report::new(
            id,
            Metrics {
                network_stats: Some(stats),
                ..Default::default()
            },
        );
        match &mut self.sink {
            Sink::Broker(outbox, _) => outbox.push(report),
            Sink::Stdout => print(&report, self.settings)?,
        }
        self.sent += 1;
        Ok(())
    }
}

fn print(report: &Report, settings: &Settings) -> Result<()> {
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
    .context("writing a report to stdout")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sleeps until `fd` is readable, `timeout` passes or a signal arrives.
fn wait_readable(fd: i32, timeout: Duration) {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis().saturating_add(1)).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut poll, 1, millis) };
}
