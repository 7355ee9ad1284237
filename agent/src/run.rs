//! The agent's loop: attach, then at every interval collect, build one report and write it.
//! Link changes are applied as they arrive, so a new interface is counted from its first
//! packet.

use std::{
    collections::HashSet,
    io::Write,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use log::{error, info};

use crate::{
    RunArgs,
    collect::TrafficCollector,
    interfaces::LinkWatch,
    probes::Probes,
    report::{Report, ReportIds},
    signals,
};

pub fn run(args: &RunArgs) -> Result<()> {
    signals::install()?;
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
    let mut collector = TrafficCollector::new(maps);
    let mut ids = ReportIds::default();
    let interval = Duration::from_secs(args.interval);
    let mut next = Instant::now() + interval;
    let mut sent = 0u64;
    let stdout = std::io::stdout();

    while !signals::stop_requested() {
        wait_readable(
            links.as_raw_fd(),
            next.saturating_duration_since(Instant::now()),
        );
        match links.changes() {
            Ok(events) => events.into_iter().for_each(|e| probes.apply(e)),
            Err(err) => error!("reading link changes: {err:#}"),
        }
        if Instant::now() < next || signals::stop_requested() {
            continue;
        }
        // Deadlines advance by whole intervals, so reports do not drift.
        while next <= Instant::now() {
            next += interval;
        }
        let counted: HashSet<u32> = probes.counted().collect();
        let stats = match collector.collect(&counted) {
            Ok(stats) => stats,
            Err(err) => {
                error!("{err:#}; this interval's traffic goes into the next report");
                continue;
            }
        };
        let line = Report::new(ids.next(), stats).to_json();
        let mut out = stdout.lock();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .context("writing a report to stdout")?;
        sent += 1;
        if args.count.is_some_and(|count| sent >= count) {
            break;
        }
    }
    info!("stopping after {sent} reports");
    Ok(())
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
