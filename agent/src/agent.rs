// Over 400 lines: `run` is the agent's life, one sequence in the order process/ states;
// split, that order would be spread over files.
//! The agent's life: check the configuration, attach, drop privileges, open the output
//! (starting the publisher when reports go to a broker), then at every interval collect,
//! build one report, judge the behaviours given on it and send it with their violations.
//! Link changes are applied as they arrive, so a new interface is counted from its first
//! packet. A publisher thread that dies ends the run with an error.

use std::{
    collections::HashSet,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Result, anyhow, bail};
use clap::ValueEnum;
use log::{debug, error, info, warn};

use crate::{
    collect::{Baseline, Collectors, SocketOptions},
    config::{self, ConfigArgs},
    detect::Detector,
    host::{descriptors, links::LinkWatch},
    kernel::{
        maps::Maps,
        object,
        pins::Pins,
        preflight,
        programs::{AGENT_FILTERS, Attached, LoadOptions, NewInterfaces, Programs},
    },
    output::{self, Layout, Output, mqtt},
    process::{
        self,
        link_child::{self, Fork},
        notify::Notifier,
        state_dir, stop,
    },
    report::{Encoding, ReportIds},
};

/// How often the counts and interval lists that can raise an alarm early are read: an alarm
/// comes within this of the event that makes it certain.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// What a pass of the loop does.
#[derive(PartialEq, Eq)]
enum Due {
    /// Builds and sends the report of the interval.
    Report,
    /// Reads the counts and lists that can raise an alarm before the report, and judges them.
    Look,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Exit after this many reports (default: run until stopped).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Where reports go (default: the broker when an endpoint is configured, else stdout).
    #[arg(long, value_enum)]
    pub output: Option<Destination>,
    /// Count loopback traffic too (each loopback packet is then both in and out).
    #[arg(long)]
    pub include_loopback: bool,
    /// Report the sockets of every network namespace (containers too), not only tern's own.
    #[arg(long)]
    pub all_namespaces: bool,
    /// List in `established_connections` every connection that existed during the interval,
    /// not only those established at report time.
    #[arg(long)]
    pub interval_connections: bool,
    /// Attach at start only: no privileged helper stays, and interfaces added later are not
    /// counted.
    #[arg(long)]
    pub static_interfaces: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Destination {
    /// One JSON report per line on stdout; logs go to stderr.
    Stdout,
    /// Published to the configured MQTT broker.
    Mqtt,
}

/// Follows the ordering contract of [`crate::process`]: everything that needs privilege or
/// opens a file happens first, then the link child is forked and the privileges dropped, and
/// only then does the loop run.
pub fn run(args: &RunArgs) -> Result<()> {
    // Nothing the starting process left open reaches the account tern drops to.
    if let Err(err) = descriptors::close_inherited() {
        warn!("{err:#}; descriptors tern inherited stay open");
    }
    // Checks every setting and the account, as check-config does, and loads the TLS material
    // into memory, before anything else.
    let (settings, account) = config::load(&args.config)?;
    let mut detector = settings.detection.as_ref().map(|detection| {
        detection.lines().iter().for_each(|line| info!("{line}"));
        detection.detector(settings.interval)
    });
    let broker = match (args.output, &settings.broker) {
        (Some(Destination::Mqtt), None) => {
            bail!("--output mqtt needs an endpoint: set endpoint in the config or --endpoint")
        }
        (Some(Destination::Stdout), _) => None,
        (_, broker) => broker.as_ref(),
    };
    let layout = Layout::of_stdout();
    stop::install()?;
    process::check_start_capabilities()?;
    state_dir::prepare(&settings.state_dir, &account)?;
    let mut pins = match Pins::prepare(&config::program_name(), &settings.state_dir) {
        Ok(pins) => Some(pins),
        Err(err) => {
            warn!(
                "degraded: {err:#}; what the kernel counts between two reports is lost if tern \
                 is killed"
            );
            None
        }
    };
    let load = |pins: Option<Pins>| {
        Programs::load(&LoadOptions {
            include_loopback: args.include_loopback,
            record_connections: args.interval_connections,
            pins,
            filter_names: AGENT_FILTERS,
        })
    };
    let loaded = preflight::check().and_then(|()| match load(pins.clone()) {
        Err(err) if pins.is_some() => {
            warn!(
                "degraded: {err:#}; loading again without keeping the maps pinned: what the \
                 kernel counts between two reports is lost if tern is killed"
            );
            pins = None;
            load(None)
        }
        loaded => loaded,
    });
    // The counters map's id names the maps the kernel counts in, adopted or new.
    let generation = match (&loaded, &pins) {
        (Ok(_), Some(pins)) => match pins.generation().and_then(|g| {
            pins.hand_to(account.uid, account.gid)?;
            Ok(g)
        }) {
            Ok(generation) => Some(generation),
            Err(err) => {
                warn!("{err:#}; the maps stay pinned until removed by hand");
                None
            }
        },
        _ => None,
    };
    let (programs, maps, attached) = or_without_ebpf(loaded);
    let (links, programs, child) = follow_links(programs, !args.static_interfaces)?;
    // Seeding enters other namespaces (--all-namespaces), which needs privilege.
    let collectors = Collectors::start(
        maps.zip(attached.as_ref()),
        &SocketOptions {
            all_namespaces: args.all_namespaces,
            interval_connections: args.interval_connections,
            most_listed: Encoding {
                names: settings.names,
                format: settings.format,
                budget: usize::try_from(settings.budget).unwrap_or(usize::MAX),
            }
            .most_connections(),
        },
        args.include_loopback,
        settings.metrics.clone(),
    )?;
    // Loading read the kernel's BTF (megabytes) and the eBPF object; give the freed heap and
    // the object's pages back to the system before the fork, so neither process keeps them
    // resident for life. musl's allocator returns freed pages by itself and has no
    // malloc_trim.
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0)
    };
    object::release();
    let (mut programs, mut link_child_pid, (mut collectors, mut links)) =
        fork_link_child(child, programs, &account, (collectors, links))?;
    let notifier = Notifier::from_env()?;
    process::drop_to(&account, &process::main_process_keeps())?;
    // Before any thread starts, so that every one inherits it.
    if let Err(err) = process::confine_main() {
        warn!(
            "degraded: {err:#}; the main process runs without its system-call filter, \
             so a flaw in its network parsing would reach every system call"
        );
    }
    // As the account: the state directory is its own, and closed to root without
    // CAP_DAC_OVERRIDE, which tern's unit does not grant.
    state_dir::settle(&settings.state_dir, &account)?;
    // After a crash: the counts since the last report are in this run's first one.
    let boot = Baseline::this_boot()?;
    let (mut output, spooled) = Output::open(&settings, broker, layout)?;
    if let Some(baseline) = Baseline::load(&settings.state_dir, &boot, spooled) {
        info!(
            "continuing from the last report of the tern before{}",
            match (generation, pins.as_ref().is_some_and(|p| p.adopted)) {
                (Some(g), true) if baseline.maps == Some(g) => ": every count since is reported",
                _ =>
                    ": the kernel's own counts since are reported, the programs' were lost \
                       with their maps",
            }
        );
        collectors.resume(baseline, generation);
    }
    let mut ids = ReportIds::open(&settings.state_dir, output.newest_spooled())?;
    let publisher = output.publisher_health();
    match programs.as_ref().filter(|p| p.count_traffic()) {
        Some(programs) => info!(
            "attached; counting {} interfaces: {}; running as {}",
            programs.counted_names().len(),
            programs.counted_names().join(" "),
            account.name
        ),
        None => info!("running as {}", account.name),
    }
    let notify = |state: &str| notifier.iter().for_each(|n| n.send(state));
    notify("READY=1");
    let ping_every = notifier.as_ref().and_then(Notifier::ping_every);
    let interval = Duration::from_secs(settings.interval);
    let mut next = Instant::now() + interval;
    let mut sent = 0;
    // The newest report that went out.
    let mut last_id = 0;
    // Whether everything counted went into a report: at a stop, nothing is left to carry.
    let mut all_reported = false;
    // Why no report can get anywhere any more, once that is so.
    let mut lost = None;
    // Whether the last report's readings could not be kept: said once, not every interval.
    let mut baseline_failing = false;
    // Whether a report went out; an error once no report can get anywhere again.
    let no_interfaces = HashSet::new();
    // The counts and lists whose growth can raise an alarm before the report: read as they
    // grow.
    let mut early: Vec<String> = detector
        .iter()
        .flat_map(Detector::early)
        .filter(|metric| collectors.runs(metric))
        .map(str::to_owned)
        .collect();
    early.sort_unstable();
    early.dedup();
    let early: Vec<&str> = early.iter().map(String::as_str).collect();
    let mut next_look = (!early.is_empty()).then(|| Instant::now() + LOOK_EVERY);
    let mut report = |programs: &mut Option<Programs>, due: Due| -> Result<bool> {
        if due == Due::Look {
            let running = collectors.running(&early);
            for violation in detector
                .iter_mut()
                .flat_map(|d| d.judge_running(&running, SystemTime::now()))
            {
                // Filed after the last report's own violations, in the order they come.
                if let Err(err) = output.violation(last_id, &violation) {
                    error!("{err:#}");
                }
            }
            return Ok(false);
        }
        let started = Instant::now();
        let counted: HashSet<u32> = programs.iter().flat_map(Programs::counted).collect();
        let gone = programs.as_ref().map_or(&no_interfaces, Programs::gone);
        let Some(collected) = collectors.collect(&counted, gone) else {
            return Ok(false);
        };
        if let Some(programs) = programs.as_mut() {
            programs.clear_gone();
            programs.say_skipped();
        }
        let id = ids.next();
        let connections = collected.tcp_connections.established_connections.total;
        let report = collected.into_report(id, &settings.custom_metrics);
        // Judged whole, before the encoding cuts any list to fit.
        let violations = detector
            .as_mut()
            .map(|d| d.judge(&report, SystemTime::now()));
        let collected_in = started.elapsed();
        let baseline = collectors.baseline(id, boot.clone(), generation);
        // Once the report is out, and before it can be delivered: a crash between the two
        // finds these readings in the spool, so no interval is reported twice.
        let keep = || match baseline.save(&settings.state_dir) {
            Err(err) if !baseline_failing => {
                error!(
                    "{err:#}; until it can be written, a crash would report again what was \
                     reported since the last readings kept"
                );
                baseline_failing = true;
            }
            Ok(()) if baseline_failing => {
                info!("the readings of the last report are kept again");
                baseline_failing = false;
            }
            _ => {}
        };
        let sent = output.send(report, &baseline.to_bytes(), keep);
        // After the report they were judged on, whether or not it went out (a closed stdout
        // fails the report too).
        if let Err(err) = violations
            .iter()
            .flatten()
            .try_for_each(|v| output.violation(id, v))
        {
            error!("{err:#}");
        }
        match sent {
            Ok(bytes) => debug!(
                "report {id} built in {} us (collected in {} us): {connections} connections{}",
                started.elapsed().as_micros(),
                collected_in.as_micros(),
                bytes.map_or_else(String::new, |b| format!(", {b} bytes"))
            ),
            // A report lost to a broken output is better than an agent that stops counting.
            Err(err) => {
                error!("{err:#}; report {id} is lost");
                if output::nowhere(&err) {
                    bail!("stdout is closed (its reader went away): reports have nowhere to go");
                }
                return Ok(false);
            }
        }
        last_id = id;
        Ok(true)
    };
    loop {
        // Reports would be spooled with nothing to deliver them, until the spool dropped
        // them: a dead publisher ends the run.
        if let Some(why) = publisher.as_ref().and_then(mqtt::Health::death) {
            lost = Some(anyhow!(
                "the publisher thread {why}: reports cannot reach the broker any more"
            ));
            break;
        }
        if link_child_pid.is_some_and(|pid| !link_child::alive(pid)) {
            error!(
                "the link child exited; interfaces added from now on are not counted until \
                 tern restarts"
            );
            if let Some(programs) = programs.as_mut() {
                programs.set_new_interfaces(NewInterfaces::Lost);
            }
            link_child_pid = None;
        }
        let until_report = next.saturating_duration_since(Instant::now());
        let until_look = next_look.map(|at| at.saturating_duration_since(Instant::now()));
        links.wait(Some(
            [ping_every, until_look]
                .into_iter()
                .flatten()
                .fold(until_report, Duration::min),
        ));
        // A loop that stops coming here (hung) stops the pings, and systemd restarts tern.
        if ping_every.is_some() {
            notify("WATCHDOG=1");
        }
        match links.changes() {
            Ok(events) => {
                if let Some(programs) = programs.as_mut() {
                    events.into_iter().for_each(|e| programs.apply(e));
                }
            }
            Err(err) => error!("reading link changes: {err:#}"),
        }
        // A dying publisher signals the process, which reads as a stop request too: it is
        // no graceful stop.
        if publisher.as_ref().is_some_and(|p| p.death().is_some()) {
            continue;
        }
        if stop::stop_requested() {
            notify("STOPPING=1");
            // What was counted since the last report is reported, not dropped.
            match report(&mut programs, Due::Report) {
                Ok(went) => {
                    sent += u64::from(went);
                    all_reported = went;
                }
                Err(err) => lost = Some(err),
            }
            break;
        }
        if let Some(at) = next_look.as_mut().filter(|at| **at <= Instant::now()) {
            *at = Instant::now() + LOOK_EVERY;
            report(&mut programs, Due::Look)?;
        }
        if Instant::now() < next {
            continue;
        }
        // Deadlines advance by whole intervals, so reports do not drift.
        while next <= Instant::now() {
            next += interval;
        }
        match report(&mut programs, Due::Report) {
            Ok(went) => sent += u64::from(went),
            Err(err) => {
                lost = Some(err);
                break;
            }
        }
        if args.count.is_some_and(|count| sent >= count) {
            all_reported = true;
            break;
        }
    }
    if let Some(err) = &lost {
        error!("{err:#}; stopping");
    }
    info!("stopping after {sent} reports");
    // The child holds what the kernel does not release with this process (netlink filters
    // before 6.6): it lets go before this process ends.
    if let Some(pid) = link_child_pid {
        link_child::stop(pid);
    }
    output.close();
    if all_reported {
        Baseline::close(&settings.state_dir, last_id, &boot);
        if let Some(pins) = &pins {
            pins.release();
        }
    }
    lost.map_or(Ok(()), Err)
}

/// The programs, their maps and what attached, or, when they could not be loaded, nothing:
/// the degraded mode where every metric comes from netlink and the kernel's own counters.
pub fn or_without_ebpf(
    loaded: Result<(Programs, Maps, Attached)>,
) -> (Option<Programs>, Option<Maps>, Option<Attached>) {
    match loaded {
        Ok((programs, maps, attached)) => (Some(programs), Some(maps), Some(attached)),
        Err(err) => {
            warn!(
                "degraded: no eBPF ({err:#}); every metric comes from netlink and the kernel's \
                 own counters, and the metrics only events give are left out"
            );
            (None, None, None)
        }
    }
}

/// What the link child attaches with: the programs, and a watch of link changes of its own.
pub type ForLinkChild = (Programs, LinkWatch);

/// Opens the watch of link changes and applies the links there are now. When the programs
/// count traffic and `new_interfaces` are to be counted, they go with a watch of their own
/// into the third value, for the link child; else they stay in the second.
pub fn follow_links(
    mut programs: Option<Programs>,
    new_interfaces: bool,
) -> Result<(LinkWatch, Option<Programs>, Option<ForLinkChild>)> {
    // Both sockets subscribe before the dump, so a link created meanwhile reaches the child,
    // which attaches the TC programs to new interfaces when they count the traffic.
    let mut links = LinkWatch::open()?;
    let mut child = match programs.take() {
        Some(attaching) if attaching.count_traffic() && new_interfaces => {
            Some((attaching, LinkWatch::open()?))
        }
        other => {
            programs = other;
            None
        }
    };
    for event in links.dump()? {
        match (&mut programs, &mut child) {
            (Some(programs), _) | (None, Some((programs, _))) => programs.apply(event),
            (None, None) => {}
        }
    }
    Ok((links, programs, child))
}

/// Step 3 of [`process`]: forks the link child when `child` holds the programs that attach
/// the interfaces added from now on, and sheds what the main process does not need. The
/// child drops `parent_only` (what only the main process reads) and never returns; the
/// parent gets it back with the programs it keeps and the child's pid.
pub fn fork_link_child<T>(
    child: Option<ForLinkChild>,
    mut programs: Option<Programs>,
    account: &process::Account,
    parent_only: T,
) -> Result<(Option<Programs>, Option<libc::pid_t>, T)> {
    let parent = std::process::id();
    let mut link_child_pid = None;
    if let Some((attaching, watch)) = child {
        match link_child::fork()? {
            Fork::Child => {
                drop(parent_only);
                link_child::serve(attaching, watch, account, parent)
            }
            Fork::Parent(pid) => {
                drop(watch);
                link_child_pid = Some(pid);
                programs = Some(attaching);
            }
        }
    }
    if let Some(programs) = programs.as_mut() {
        programs.set_new_interfaces(match link_child_pid {
            Some(_) => NewInterfaces::LinkChild,
            None => NewInterfaces::Ignore,
        });
        // Reading maps needs no program: what a network flaw could reach is only the maps
        // (and, with no link child to hold them, the links).
        programs.shed(link_child_pid.is_some());
    }
    Ok((programs, link_child_pid, parent_only))
}
