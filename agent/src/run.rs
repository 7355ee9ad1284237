//! The agent's loop: attach, then at every interval collect, build one report and write it.
//! Link changes are applied as they arrive, so a new interface is counted from its first
//! packet.

use std::{
    collections::HashSet,
    io::Write,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::Result;
use log::{error, info};

use crate::{
    RunArgs,
    collect::TrafficCollector,
    interfaces::LinkWatch,
    kernel,
    linker::{self, Fork},
    notify::Notifier,
    privilege::{self, Account},
    probes::{NewInterfaces, Probes},
    report::{Report, ReportIds},
    signals,
};

/// Follows the ordering contract of [`crate::privilege`].
pub fn run(args: &RunArgs) -> Result<()> {
    signals::install()?;
    let account = Account::resolve(args.user.as_deref())?;
    if let Some(config) = &args.config {
        privilege::check_config_key(config, std::path::Path::new("/"))?;
    }
    kernel::check()?;
    let (mut probes, maps) = Probes::load(args.include_loopback)?;
    // Both sockets subscribe before the dump, so a link created meanwhile reaches the child.
    let mut links = LinkWatch::open()?;
    let child_links = match args.static_interfaces {
        true => None,
        false => Some(LinkWatch::open()?),
    };
    for event in links.dump()? {
        probes.apply(event);
    }
    let parent = std::process::id();
    let mut linker = None;
    if let Some(watch) = child_links {
        match linker::fork()? {
            Fork::Child => {
                drop(maps);
                drop(links);
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
    info!(
        "attached; counting {} interfaces: {}; running as {}",
        probes.counted_names().len(),
        probes.counted_names().join(" "),
        account.name
    );
    let notify = |state: &str| notifier.iter().for_each(|n| n.send(state));
    notify("READY=1");
    let ping_every = notifier.as_ref().and_then(Notifier::ping_every);
    let collector = TrafficCollector::new(maps);
    let interval = Duration::from_secs(args.interval);
    let mut next = Instant::now() + interval;

    let mut out = Reporter::new(collector);
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
            out.report(&probes);
            break;
        }
        if Instant::now() < next {
            continue;
        }
        // Deadlines advance by whole intervals, so reports do not drift.
        while next <= Instant::now() {
            next += interval;
        }
        out.report(&probes);
        if args.count.is_some_and(|count| out.sent >= count) {
            break;
        }
    }
    let sent = out.sent;
    info!("stopping after {sent} reports");
    Ok(())
}

/// Builds reports from the collector and writes them, one JSON document per line.
struct Reporter {
    collector: TrafficCollector,
    ids: ReportIds,
    sent: u64,
}

impl Reporter {
    fn new(collector: TrafficCollector) -> Self {
        Self {
            collector,
            ids: ReportIds::default(),
            sent: 0,
        }
    }

    /// A failure is logged and the agent goes on: a report lost to a broken output is
    /// better than an agent that stops counting.
    fn report(&mut self, probes: &Probes) {
        let counted: HashSet<u32> = probes.counted().collect();
        let stats = match self.collector.collect(&counted) {
            Ok(stats) => stats,
            Err(err) => {
                // The kernel keeps counting: the next report carries this interval too.
                error!("{err:#}; this interval's traffic goes into the next report");
                return;
            }
        };
        let line = Report::new(self.ids.next(), stats).to_json();
        let mut out = std::io::stdout().lock();
        match writeln!(out, "{line}").and_then(|()| out.flush()) {
            Ok(()) => self.sent += 1,
            Err(err) => error!("cannot write a report to stdout: {err}; it is lost"),
        }
    }
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
