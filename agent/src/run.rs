//! The agent's loop: check the configuration, attach, drop privileges, start the publisher
//! (when reports go to a broker), then at every interval collect, build one report and write
//! it or spool it. Link changes are applied as they arrive, so a new interface is counted
//! from its first packet.

use std::{
    collections::HashSet,
    io::Write,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use log::{debug, error, info};

use crate::{
    Output, RunArgs,
    collect::{DeviceCollector, SocketCollector, SocketOptions, TrafficCollector},
    config::{self, Settings},
    interfaces::LinkWatch,
    kernel,
    linker::{self, Fork},
    notify::Notifier,
    privilege::{self, Account},
    probes::{LoadOptions, NewInterfaces, Probes},
    publish::{Outbox, Publisher, start_publisher},
    report::{Format, Metrics, Report, ReportIds, encode_within},
    signals, sockdiag, state,
};

/// Follows the ordering contract of [`crate::privilege`]: everything that needs privilege or
/// opens a file happens first, then the link child is forked and the privileges dropped, and
/// only then does the loop run.
pub fn run(args: &RunArgs) -> Result<()> {
    // Checks every setting and loads the TLS material into memory, before anything else.
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
    let account = Account::resolve(settings.user.as_deref())?;
    kernel::check()?;
    state::prepare(&settings.state_dir, &account)?;
    let own_netns = sockdiag::own_netns_cookie()?;
    let (mut probes, traffic, sockets) = Probes::load(&LoadOptions {
        include_loopback: args.include_loopback,
        netns_filter: if args.all_namespaces { 0 } else { own_netns },
        record_connections: args.interval_connections,
    })?;
    // Both sockets subscribe before the dump, so a link created meanwhile reaches the child.
    let mut links = LinkWatch::open()?;
    let child_links = match args.static_interfaces {
        true => None,
        false => Some(LinkWatch::open()?),
    };
    for event in links.dump()? {
        probes.apply(event);
    }
    // Seeding enters other namespaces (--all-namespaces), which needs privilege.
    let sockets = SocketCollector::start(
        sockets,
        SocketOptions {
            netns: (!args.all_namespaces).then_some(own_netns),
            interval_connections: args.interval_connections,
        },
        own_netns,
    )?;
    // Loading read the kernel's BTF (megabytes) and the eBPF object; give the freed heap back
    // to the system before the fork, so neither process keeps it resident for life.
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    unsafe { libc::malloc_trim(0) };
    let parent = std::process::id();
    let mut linker = None;
    if let Some(watch) = child_links {
        match linker::fork()? {
            Fork::Child => {
                drop((traffic, sockets, links));
                linker::serve(probes, watch, &account, parent)
            }
            Fork::Parent(pid) => {
                drop(watch);
                linker = Some(pid);
            }
        }
    }
    probes.set_new_interfaces(match linker {
        Some(_) => NewInterfaces::LinkChild,
        None => NewInterfaces::Ignore,
    });
    let notifier = Notifier::from_env()?;
    privilege::drop_to(&account, &privilege::main_process_keeps())?;
    // As the account: the state directory is its own, and closed to root without
    // CAP_DAC_OVERRIDE, which tern's unit does not grant.
    let ids = ReportIds::open(&settings.state_dir)?;
    let outbox = match (output, &settings.broker) {
        (Output::Mqtt, Some(broker)) => Some(Outbox::open(&settings, broker)?),
        _ => None,
    };
    // The only other thread starts here, after the drop.
    let sink = match outbox {
        Some(outbox) => {
            let publisher = start_publisher(&outbox, &settings)?;
            Sink::Broker(outbox, publisher)
        }
        None => Sink::Stdout,
    };
    info!(
        "attached; counting {} interfaces: {}; running as {}",
        probes.counted_names().len(),
        probes.counted_names().join(" "),
        account.name
    );
    let notify = |state: &str| notifier.iter().for_each(|n| n.send(state));
    notify("READY=1");
    let ping_every = notifier.as_ref().and_then(Notifier::ping_every);
    let interval = Duration::from_secs(settings.interval);
    let mut next = Instant::now() + interval;

    let mut out = Reporter {
        traffic: TrafficCollector::new(traffic),
        sockets,
        device: DeviceCollector::start(),
        ids,
        settings: &settings,
        sink,
        sent: 0,
    };
    loop {
        if linker.is_some_and(|pid| !linker::alive(pid)) {
            error!("the link child exited; interfaces added from now on are not counted");
            probes.set_new_interfaces(NewInterfaces::Ignore);
            linker = None;
        }
        let until_report = next.saturating_duration_since(Instant::now());
        wait_readable(
            links.as_raw_fd(),
            ping_every.map_or(until_report, |ping| ping.min(until_report)),
        );
        // A loop that stops coming here (hung) stops the pings, and systemd restarts tern.
        if ping_every.is_some() {
            notify("WATCHDOG=1");
        }
        match links.changes() {
            Ok(events) => events.into_iter().for_each(|e| probes.apply(e)),
            Err(err) => error!("reading link changes: {err:#}"),
        }
        if signals::stop_requested() {
            notify("STOPPING=1");
            // What was counted since the last report is reported, not dropped.
            out.report(&mut probes);
            break;
        }
        if Instant::now() < next {
            continue;
        }
        // Deadlines advance by whole intervals, so reports do not drift.
        while next <= Instant::now() {
            next += interval;
        }
        out.report(&mut probes);
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

/// Where reports go.
enum Sink {
    Stdout,
    Broker(Outbox, Publisher),
}

/// Builds reports from the collectors and writes them, one per line, or spools them.
struct Reporter<'a> {
    traffic: TrafficCollector,
    sockets: SocketCollector,
    device: DeviceCollector,
    ids: ReportIds,
    settings: &'a Settings,
    sink: Sink,
    sent: u64,
}

impl Reporter<'_> {
    /// A failure is logged and the agent goes on: a report lost to a broken output is
    /// better than an agent that stops counting.
    fn report(&mut self, probes: &mut Probes) {
        let started = Instant::now();
        let counted: HashSet<u32> = probes.counted().collect();
        // The kernel keeps counting: on a read error, the next report carries this interval.
        let stats = match self.traffic.collect(&counted, probes.gone()) {
            Ok(stats) => {
                probes.clear_gone();
                stats
            }
            Err(err) => {
                error!("{err:#}; this interval's traffic goes into the next report");
                return;
            }
        };
        let sockets = match self.sockets.collect() {
            Ok(sockets) => sockets,
            Err(err) => {
                error!("{err:#}; this interval's sockets go into the next report");
                return;
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
        for (name, value) in own.filter(|(name, _)| self.settings.custom_metrics.sends(name)) {
            report.custom_metrics.insert(name.to_owned(), [value]);
        }
        for metric in &self.settings.metrics {
            if let Some(value) = metric.read() {
                report.custom_metrics.insert(metric.name.clone(), [value]);
            }
        }
        let connections = report
            .metrics
            .tcp_connections
            .as_ref()
            .map_or(0, |t| t.established_connections.total);
        let collected = started.elapsed();
        let bytes = match &mut self.sink {
            Sink::Broker(outbox, _) => {
                outbox.push(report);
                None
            }
            Sink::Stdout => match print(&report, self.settings) {
                Ok(bytes) => Some(bytes),
                Err(err) => {
                    error!("{err:#}; report {id} is lost");
                    return;
                }
            },
        };
        debug!(
            "report {id} built in {} us (collected in {} us): {connections} connections{}",
            started.elapsed().as_micros(),
            collected.as_micros(),
            bytes.map_or_else(String::new, |b| format!(", {b} bytes"))
        );
        self.sent += 1;
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
