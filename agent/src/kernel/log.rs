//! The kernel programs' own log: the trouble they meet (a full map, a tracepoint field or
//! kernel memory they could not read) reaches tern's log, each line starting with
//! "kernel programs:".
//!
//! The programs write through aya-log into its ring buffer (Linux 5.8+), which [`start`]
//! takes right after the object is loaded. No thread reads it: the main loop's wait also
//! wakes when the ring is readable and drains it then (`host::links::wake_also_for`).
//! Draining reads the ring's memory mapping, set up while privileged, so it needs no
//! capability after the drop; the link child, forked later, leaves it to its parent.
//!
//! Rate: the programs let through at most one line a second per CPU and kind of trouble,
//! each starting with how many of that kind the CPU kept quiet since its previous line
//! ("<count> <message>"). Here the lines of all CPUs are limited again to one per kind every
//! [`QUIET`]; the next line let through says how many were kept quiet meanwhile, in all.

use std::{
    collections::HashMap,
    os::fd::{AsFd, BorrowedFd},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use aya::Ebpf;
use aya_log::EbpfLogger;
use log::{Log, Metadata, Record, warn};

use crate::host::links::{self, AlsoWatched};

/// Shortest time between two lines of one kind of trouble.
const QUIET: Duration = Duration::from_secs(10);

/// Takes the programs' log ring from the loaded object and has the main loop drain it. A
/// failure costs only these lines (the counters still count the trouble), so it is logged and
/// tern goes on.
pub fn start(ebpf: &mut Ebpf) {
    match EbpfLogger::init_with_logger(ebpf, Lines::default()) {
        Ok(logger) => links::wake_also_for(Box::new(Ring(logger))),
        Err(err) => warn!("the kernel programs' own log cannot be read, so it is not shown: {err}"),
    }
}

struct Ring(EbpfLogger<Lines>);

impl AsFd for Ring {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AlsoWatched for Ring {
    fn readable(&mut self) {
        self.0.flush();
    }
}

/// Receives each line aya-log decodes from the ring and passes it on to tern's log, limited.
#[derive(Default)]
struct Lines {
    limit: Mutex<Limit>,
}

impl Log for Lines {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        let text = record.args().to_string();
        let (quiet, message) = parse(&text);
        let mut limit = self.limit.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(quiet) = limit.let_through(message, quiet, Instant::now()) else {
            return;
        };
        match quiet {
            0 => log::log!(record.level(), "kernel programs: {message}"),
            n => log::log!(
                record.level(),
                "kernel programs: {message} ({n} more since the last such line)"
            ),
        }
    }

    fn flush(&self) {}
}

/// A line of the programs: how many they kept quiet before it, and the message. A line
/// without the count is taken whole.
fn parse(text: &str) -> (u64, &str) {
    text.split_once(' ')
        .and_then(|(count, message)| Some((count.parse().ok()?, message)))
        .unwrap_or((0, text))
}

/// Per kind of trouble (its message, one of the programs' fixed few): when its last line
/// went out, and how many were kept quiet since.
#[derive(Default)]
struct Limit {
    kinds: HashMap<String, (Instant, u64)>,
}

impl Limit {
    /// Whether a line of `message` may go out at `now`, and if so how many it stands for
    /// besides itself: `quiet` of its own, plus every line held back since the last one, with
    /// their own counts.
    fn let_through(&mut self, message: &str, quiet: u64, now: Instant) -> Option<u64> {
        match self.kinds.get_mut(message) {
            Some((logged, held)) if now.duration_since(*logged) < QUIET => {
                *held = held.saturating_add(quiet).saturating_add(1);
                None
            }
            Some((logged, held)) => {
                let total = std::mem::take(held).saturating_add(quiet);
                *logged = now;
                Some(total)
            }
            None => {
                self.kinds.insert(message.to_owned(), (now, 0));
                Some(quiet)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_carries_its_count_first() {
        assert_eq!(parse("12 TCP_SOCKS is full"), (12, "TCP_SOCKS is full"));
        assert_eq!(parse("0 a b"), (0, "a b"));
        assert_eq!(parse("no count here"), (0, "no count here"));
        assert_eq!(parse("single"), (0, "single"));
    }

    #[test]
    fn one_line_per_kind_goes_out_each_quiet_period_and_the_next_counts_the_rest() {
        let mut limit = Limit::default();
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(limit.let_through("full", 3, at(0)), Some(3));
        // Other CPUs' lines within the period: held, each with what its CPU kept quiet.
        assert_eq!(limit.let_through("full", 0, at(10)), None);
        assert_eq!(limit.let_through("full", 5, at(9_000)), None);
        // Another kind is limited on its own.
        assert_eq!(limit.let_through("unreadable", 0, at(20)), Some(0));
        // 1 + 0 and 1 + 5 held, and 2 of its own.
        assert_eq!(limit.let_through("full", 2, at(10_000)), Some(9));
        assert_eq!(limit.let_through("full", 0, at(10_001)), None);
        assert_eq!(limit.let_through("full", 0, at(20_000)), Some(1));
    }
}
