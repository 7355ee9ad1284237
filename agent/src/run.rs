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
use log::{debug, error, info};

use crate::{
    Output, RunArgs,
    collect::{
        DeviceCollector, SocketCollector, SocketOptions, TrafficCollector, check_user_metrics,
    },
    interfaces::LinkWatch,
    probes::{LoadOptions, Probes},
    report::{Format, Metrics, Report, ReportIds, encode_within},
    signals, sockdiag, state,
};

pub fn run(args: &RunArgs) -> Result<()> {
    signals::install()?;
    check_user_metrics(&args.metrics)?;
    state::prepare(&args.state_dir)?;
    let ids = ReportIds::open(&args.state_dir)?;
    let own_netns = sockdiag::own_netns_cookie()?;
    let (mut probes, traffic, sockets) = Probes::load(&LoadOptions {
        include_loopback: args.include_loopback,
        netns_filter: if args.all_namespaces { 0 } else { own_netns },
        record_connections: args.interval_connections,
    })?;
    let mut links = LinkWatch::open()?;
    for event in links.dump()? {
        probes.apply(event);
    }
    info!(
        "attached; counting {} interfaces: {}",
        probes.counted_names().len(),
        probes.counted_names().join(" ")
    );
    let sockets = SocketCollector::start(
        sockets,
        SocketOptions {
            netns: (!args.all_namespaces).then_some(own_netns),
            interval_connections: args.interval_connections,
        },
        own_netns,
    )?;
    let traffic = TrafficCollector::new(traffic);
    let interval = Duration::from_secs(args.interval);
    let mut next = Instant::now() + interval;

    let mut out = Reporter {
        traffic,
        sockets,
        device: DeviceCollector::start(),
        ids,
        args,
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
    Ok(())
}

/// Builds reports from the collector and writes them, one per line.
struct Reporter<'a> {
    traffic: TrafficCollector,
    sockets: SocketCollector,
    device: DeviceCollector,
    ids: ReportIds,
    args: &'a RunArgs,
    sent: u64,
}

impl Reporter<'_> {
    fn report(&mut self, probes: &Probes) -> Result<()> {
        let started = Instant::now();
        let counted: HashSet<u32> = probes.counted().collect();
        // The kernel keeps counting: on a read error, the next report carries this interval.
        let stats = match self.traffic.collect(&counted) {
            Ok(stats) => stats,
            Err(err) => {
                error!("{err:#}; this interval's traffic goes into the next report");
                return Ok(());
            }
        };
        let sockets = match self.sockets.collect() {
            Ok(sockets) => sockets,
            Err(err) => {
                error!("{err:#}; this interval's sockets go into the next report");
                return Ok(());
            }
        };
        let (id, saved) = self.ids.next();
        if let Err(err) = saved {
            error!("{err:#}; after a restart, report ids may not continue from {id}");
        }
        let mut report = Report::new(
            id,
            Metrics {
                listening_tcp_ports: Some(sockets.listening_tcp_ports),
                listening_udp_ports: Some(sockets.listening_udp_ports),
                network_stats: Some(stats),
                tcp_connections: Some(sockets.tcp_connections),
            },
        );
        let own = sockets.custom.into_iter().chain(self.device.collect());
        for (name, value) in own.filter(|(name, _)| self.args.custom_metrics.sends(name)) {
            report.custom_metrics.insert(name.to_owned(), [value]);
        }
        for metric in &self.args.metrics {
            if let Some(value) = metric.read() {
                report.custom_metrics.insert(metric.name.clone(), [value]);
            }
        }
        let collected = started.elapsed();
        let budget = usize::try_from(self.args.budget).unwrap_or(usize::MAX);
        let (bytes, cut) = encode_within(&report, self.args.names, self.args.format, budget)?;
        if cut {
            info!("report {id} was over {budget} bytes: its lists were cut to fit");
        }
        debug!(
            "report {id} built in {} us (collected in {} us): {} connections, {} bytes",
            started.elapsed().as_micros(),
            collected.as_micros(),
            report
                .metrics
                .tcp_connections
                .as_ref()
                .map_or(0, |t| t.established_connections.total),
            bytes.len()
        );
        match self.args.output {
            Output::Stdout => {
                let mut out = std::io::stdout().lock();
                match self.args.format {
                    Format::Json => out.write_all(&bytes),
                    Format::Cbor => out.write_all(hex(&bytes).as_bytes()),
                }
                .and_then(|()| out.write_all(b"\n"))
                .and_then(|()| out.flush())
                .context("writing a report to stdout")?;
            }
        }
        self.sent += 1;
        Ok(())
    }
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
