//! A terminal as a person uses one: a tmux server of the test's own (its own socket, no
//! configuration read), one pane running a command, the screen read with `capture-pane` and
//! keys typed with `send-keys`. The server and everything in its pane go when dropped.

use std::{
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::wait_until;

pub struct Pane {
    socket: String,
}

impl Pane {
    /// A `width` x `height` terminal running `command` in `sh`.
    pub fn start(command: &str, width: u16, height: u16) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let pane = Self {
            socket: format!(
                "tern-t{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::SeqCst)
            ),
        };
        let (width, height) = (width.to_string(), height.to_string());
        pane.tmux(&[
            "new-session",
            "-d",
            "-x",
            &width,
            "-y",
            &height,
            "sh",
            "-c",
            command,
        ]);
        pane
    }

    /// The screen as it is now, one line per row, a line the terminal wrapped whole again.
    pub fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-J"])
    }

    /// Everything the terminal printed, the lines scrolled off the screen included.
    pub fn history(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-J", "-S", "-"])
    }

    /// Types `keys`, each as tmux names it (`q`, `C-c`, `Enter`, or literal text).
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys"];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    /// Makes the terminal `width` x `height`.
    pub fn resize(&self, width: u16, height: u16) {
        let (width, height) = (width.to_string(), height.to_string());
        self.tmux(&["resize-window", "-x", &width, "-y", &height]);
    }

    /// The first screen, read every 200 ms for at most `limit`, that `holds`; the last one
    /// read in the panic message otherwise.
    pub fn wait_for(&self, what: &str, limit: Duration, holds: impl Fn(&str) -> bool) -> String {
        wait_until(limit, Duration::from_millis(200), || {
            let screen = self.screen();
            if holds(&screen) {
                Ok(screen)
            } else {
                Err(screen)
            }
        })
        .unwrap_or_else(|screen| panic!("no screen with {what} within {limit:?}:\n{screen}"))
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("running tmux (cargo xtask test installs it)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}
