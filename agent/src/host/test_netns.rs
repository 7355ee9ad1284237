//! Tests' own network namespace: a thread that unshares a fresh one (loopback up), so what a
//! test opens and sends meets nothing else, and the commands that read ground truth there
//! (`ss`, `ip`, `nstat`), which inherit the thread's namespace; veth pairs, whose frames the
//! kernel counts. Needs root.

use std::{process::Command, thread, time::Duration};

use serde_json::Value;

/// Runs `f` on a new thread in a new network namespace with loopback up, and returns what it
/// returns. The namespace goes away with the thread and the sockets `f` opened.
pub fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    thread::spawn(move || {
        // SAFETY: unshare has no memory preconditions; CLONE_NEWNET changes only this
        // thread's namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!(
                "cannot make a network namespace ({}): run these tests as root",
                std::io::Error::last_os_error()
            );
        }
        sh("ip", &["link", "set", "lo", "up"]);
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Runs a command in the calling thread's namespace; panics with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A veth pair with both ends in this namespace and up. Returns once both carry traffic:
/// until the kernel has seen the carrier come up, frames wait in a queue and are counted
/// only when they leave it.
pub fn veth(a: &str, b: &str) {
    sh("ip", &["link", "add", a, "type", "veth", "peer", "name", b]);
    for dev in [a, b] {
        sh("ip", &["link", "set", dev, "up"]);
    }
    for dev in [a, b] {
        wait_for(&format!("{dev} to come up"), || {
            let json: Value =
                serde_json::from_str(&sh("ip", &["-j", "link", "show", "dev", dev])).unwrap();
            json[0]["operstate"] == "UP"
        });
    }
}

/// Waits until `ready` holds; panics naming `what` after 5 s.
pub fn wait_for(what: &str, ready: impl Fn() -> bool) {
    for _ in 0..500 {
        if ready() {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    panic!("waited 5 s for {what}");
}
