//! `tern watch`: a live view, in the terminal, of what the kernel programs see, redrawn every
//! second. tern has no inbound channel a view could attach to, so the view loads programs of
//! its own, as `run` does, collects one report a second from them, and judges the
//! behaviours given on reports of the configured interval folded from those seconds.
//!
//! Built only with the `watch` feature: the release artifacts leave it out, so the deployed
//! agent carries no terminal UI library. Like `run`, it attaches as root and forks the link
//! child, then drops to the configured account before it draws anything; it goes without
//! run's system-call filter, which does not allow the terminal library's calls.

mod alarms;
mod log;
mod screen;
mod seen;

use std::{
    collections::{HashMap, HashSet},
    io::IsTerminal,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use ratatui::{
    DefaultTerminal,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
};

use crate::{
    agent::{follow_links, fork_link_child, or_without_ebpf},
    collect::{Collectors, SocketOptions},
    config::{self, ConfigArgs},
    detect::{Detector, violation::Violation},
    host::{
        descriptors,
        links::{LinkEvent, LinkWatch},
    },
    kernel::{
        preflight,
        programs::{LoadOptions, Programs},
    },
    process::{self, link_child, stop},
    report::{
        Report,
        catalog::{self, Selection},
    },
};
use alarms::Alarm;
pub use log::Kept as LogLines;
use screen::{SMALLEST, View};
use seen::{Order, Seen};

/// How often the view collects and redraws.
const EVERY: Duration = Duration::from_secs(1);
/// The longest a key or a stop request waits to be seen.
const KEYS_EVERY: Duration = Duration::from_millis(100);
/// The most connections a second's report keeps, for the remote addresses: the view's memory
/// stays bounded however many sockets there are.
const MOST_LISTED: usize = 65_536;
/// The view's netlink TC filter names (kernels without TCX): not the agent's, so that a view
/// and an agent on the same interfaces leave each other's filters alone.
const FILTERS: [&str; 2] = ["w00", "w01"];
/// How many of the log's newest lines the view shows.
const LOG_LINES: usize = 2;

#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Count loopback traffic too.
    #[arg(long)]
    pub include_loopback: bool,
    /// Show the sockets of every network namespace, not only tern's own.
    #[arg(long)]
    pub all_namespaces: bool,
}

/// Why the view ended.
enum End {
    /// `q`, Esc, Ctrl-C or a stop signal.
    Asked,
    /// The terminal became smaller than the view can be drawn in.
    TooSmall(u16, u16),
}

/// Runs the view until it ends; what tern logged meanwhile then goes to stderr, where the
/// error that ended it, if any, follows.
pub fn watch(args: &WatchArgs) -> Result<()> {
    let watched = view(args);
    log::release();
    watched
}

fn view(args: &WatchArgs) -> Result<()> {
    if !std::io::stdout().is_terminal() {
        bail!(
            "tern watch draws on a terminal and stdout is not one; for reports a program \
             reads, use tern run --output stdout"
        );
    }
    // As `run`: nothing the starting process left open reaches the account the view drops to.
    if let Err(err) = descriptors::close_inherited() {
        ::log::warn!("{err:#}; descriptors tern inherited stay open");
    }
    let (settings, account) = config::load(&args.config)?;
    stop::install()?;
    process::check_start_capabilities()?;
    let loaded = preflight::check().and_then(|()| {
        Programs::load(&LoadOptions {
            include_loopback: args.include_loopback,
            record_connections: false,
            pins: None,
            filter_names: FILTERS,
        })
    });
    let (programs, maps, attached) = or_without_ebpf(loaded);
    let (links, programs, child) = follow_links(programs, true)?;
    let mut names = LinkWatch::open()?;
    let mut named = HashMap::new();
    name(&mut named, names.dump()?);
    let collectors = Collectors::start(
        maps.zip(attached.as_ref()),
        &SocketOptions {
            all_namespaces: args.all_namespaces,
            interval_connections: false,
            most_listed: MOST_LISTED,
        },
        args.include_loopback,
        settings.metrics.clone(),
    )?;
    let (programs, link_child_pid, (collectors, links)) =
        fork_link_child(child, programs, &account, (collectors, links))?;
    process::drop_to(&account, &process::main_process_keeps())?;
    let mut watched = Watched {
        collectors,
        programs,
        links,
        names,
        named,
        detector: settings
            .detection
            .as_ref()
            .map(|d| d.detector(settings.interval)),
        so_far: None,
        judged_at: Instant::now(),
    };
    let mut state = State {
        seen: Seen::default(),
        order: Order::default(),
        paused: false,
        alarms: Vec::new(),
        interval: settings.interval,
    };
    if let Some(detector) = &watched.detector {
        alarms::update(&mut state.alarms, detector, &[]);
    }
    let ended = ratatui::try_init()
        .context("taking the terminal for the view")
        .and_then(|mut terminal| show(&mut terminal, &mut state, &mut watched));
    let restored = ratatui::try_restore().context("giving the terminal back");
    if let Some(pid) = link_child_pid {
        link_child::stop(pid);
    }
    match (ended?, restored) {
        (_, Err(err)) => Err(err),
        (End::Asked, Ok(())) => Ok(()),
        (End::TooSmall(width, height), Ok(())) => bail!(
            "the terminal is {width}x{height}: tern watch needs at least {}x{}",
            SMALLEST.0,
            SMALLEST.1
        ),
    }
}

/// What the view shows that is not collected: the order, the pause, the alarms.
struct State {
    seen: Seen,
    order: Order,
    paused: bool,
    alarms: Vec<Alarm>,
    interval: u64,
}

/// What the view collects from and judges with.
struct Watched {
    collectors: Collectors,
    programs: Option<Programs>,
    /// Link changes for the programs, and for the interfaces' names.
    links: LinkWatch,
    names: LinkWatch,
    named: HashMap<u32, String>,
    detector: Option<Detector>,
    /// The seconds since the behaviours were last judged, folded into one report.
    so_far: Option<Report>,
    judged_at: Instant,
}

/// Collects and draws every second, and answers keys, until the view ends.
fn show(terminal: &mut DefaultTerminal, state: &mut State, watched: &mut Watched) -> Result<End> {
    let mut collected_at = Instant::now();
    let mut next = collected_at + EVERY;
    let mut draw = true;
    loop {
        let size = terminal.size().context("reading the terminal's size")?;
        if size.width < SMALLEST.0 || size.height < SMALLEST.1 {
            return Ok(End::TooSmall(size.width, size.height));
        }
        if draw {
            let lines = log::newest(LOG_LINES);
            terminal
                .draw(|frame| {
                    screen::draw(
                        frame,
                        &View {
                            seen: &state.seen,
                            order: state.order,
                            paused: state.paused,
                            alarms: &state.alarms,
                            interval: state.interval,
                            log: &lines,
                        },
                    );
                })
                .context("drawing the view")?;
            draw = false;
        }
        let wait = next
            .saturating_duration_since(Instant::now())
            .min(KEYS_EVERY);
        if event::poll(wait).context("reading the terminal")? {
            match event::read().context("reading the terminal")? {
                Event::Key(key) if key.kind == KeyEventKind::Press => match key.code {
                    KeyCode::Char('q' | 'Q') | KeyCode::Esc => return Ok(End::Asked),
                    KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                        return Ok(End::Asked);
                    }
                    KeyCode::Char('p' | 'P' | ' ') => {
                        state.paused = !state.paused;
                        draw = true;
                    }
                    KeyCode::Char('s' | 'S') => {
                        state.order = state.order.next();
                        draw = true;
                    }
                    _ => {}
                },
                Event::Resize(..) => draw = true,
                _ => {}
            }
        }
        if stop::stop_requested() {
            return Ok(End::Asked);
        }
        let now = Instant::now();
        if now < next {
            continue;
        }
        while next <= now {
            next += EVERY;
        }
        let elapsed = now.duration_since(collected_at);
        collected_at = now;
        if let Some(report) = watched.second(state, elapsed) {
            let due = watched.judged_at.elapsed().as_secs() >= state.interval;
            let events = watched.judge(report, due);
            if let Some(detector) = &watched.detector {
                alarms::update(&mut state.alarms, detector, &events);
            }
        }
        // A paused view still collects, so its totals and minute stay whole.
        draw = !state.paused;
    }
}

impl Watched {
    /// Follows link changes and collects the last second into `state`; returns the second's
    /// report.
    fn second(&mut self, state: &mut State, elapsed: Duration) -> Option<Report> {
        match self.links.changes() {
            Ok(events) => {
                if let Some(programs) = self.programs.as_mut() {
                    events.into_iter().for_each(|e| programs.apply(e));
                }
            }
            Err(err) => ::log::error!("reading link changes: {err:#}"),
        }
        match self.names.changes() {
            Ok(events) => name(&mut self.named, events),
            Err(err) => ::log::error!("reading link changes: {err:#}"),
        }
        let counted: HashSet<u32> = self.programs.iter().flat_map(Programs::counted).collect();
        let none = HashSet::new();
        let gone = self.programs.as_ref().map_or(&none, Programs::gone);
        let (interval, each) = self.collectors.collect_each(&counted, gone)?;
        if let Some(programs) = self.programs.as_mut() {
            programs.clear_gone();
        }
        let report = interval.into_report(state.seen.seconds + 1, &Selection::All);
        state.seen.take(&report, &each, &self.named, elapsed);
        Some(report)
    }

    /// Folds the second's `report` into the interval's so far and judges the behaviours: on
    /// the whole interval when it is `due`, else on what can only grow until then.
    fn judge(&mut self, report: Report, due: bool) -> Vec<Violation> {
        let Some(detector) = self.detector.as_mut() else {
            return Vec::new();
        };
        let mut folded = report;
        if let Some(older) = self.so_far.take() {
            folded.absorb(&older, catalog::merge_rule);
        }
        let now = SystemTime::now();
        let events = if due {
            self.judged_at = Instant::now();
            detector.judge(&folded, now)
        } else {
            let running: Vec<(&str, _)> = folded
                .custom_metrics
                .iter()
                .filter(|(name, _)| detector.early().any(|early| early == name.as_str()))
                .map(|(name, [value])| (name.as_str(), value.clone()))
                .collect();
            let events = detector.judge_running(&running, now);
            self.so_far = Some(folded);
            events
        };
        events.iter().for_each(Violation::log);
        events
    }
}

/// Keeps the interfaces' names by index as `events` tell them.
fn name(named: &mut HashMap<u32, String>, events: Vec<LinkEvent>) {
    for event in events {
        match event {
            LinkEvent::Present(interface) => {
                named.insert(interface.index, interface.name);
            }
            LinkEvent::Removed(index) => {
                named.remove(&index);
            }
        }
    }
}
