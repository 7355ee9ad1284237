//! tern's log while the view holds the terminal: kept in memory, its newest lines shown at the
//! foot of the view and all of what is kept written to stderr once the terminal is restored.

use std::{
    collections::VecDeque,
    io::{self, Write},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

/// The most lines kept: enough for the view and for what the operator reads after it.
const KEPT: usize = 200;

static LINES: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());
/// Set once the terminal is restored: lines go to stderr from then on.
static RELEASED: AtomicBool = AtomicBool::new(false);

/// The log's destination: each line the logger writes goes into [`LINES`].
pub struct Kept;

impl Write for Kept {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if RELEASED.load(Ordering::Acquire) {
            return io::stderr().write(buf);
        }
        let mut lines = LINES.lock().unwrap_or_else(PoisonError::into_inner);
        for line in String::from_utf8_lossy(buf)
            .lines()
            .filter(|l| !l.is_empty())
        {
            if lines.len() == KEPT {
                lines.pop_front();
            }
            lines.push_back(line.to_owned());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The newest `count` lines, oldest first.
pub fn newest(count: usize) -> Vec<String> {
    let lines = LINES.lock().unwrap_or_else(PoisonError::into_inner);
    lines
        .iter()
        .skip(lines.len().saturating_sub(count))
        .cloned()
        .collect()
}

/// Writes every line kept to stderr, and sends the lines to come there too: the terminal is
/// the operator's again.
pub fn release() {
    RELEASED.store(true, Ordering::Release);
    let lines: Vec<String> = LINES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .drain(..)
        .collect();
    let mut err = io::stderr().lock();
    for line in lines {
        // Nothing is left to tell a failure to.
        let _ = writeln!(err, "{line}");
    }
}
