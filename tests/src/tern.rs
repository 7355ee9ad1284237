// Over 400 lines: the process under test, started every way the tests need and read every
// way they check it.
//! The tern process under test: started in a namespace, its reports and log read as it prints
//! them, stopped or waited for.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    Netns,
    deny::{deny_bpf, deny_perf_events},
    schema, wait_until,
};

/// How tern enters its namespace, and what it has to do without.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launch {
    /// `nsenter --net`: the host's mounts as they are.
    Nsenter,
    /// `ip netns exec`, which mounts a sysfs of the namespace's own: no tracefs and no
    /// cgroup2 below it.
    IpNetnsExec,
    /// bpf() and perf_event_open denied by a seccomp filter.
    DenyBpf,
    /// perf_event_open alone denied by a seccomp filter: bpf() works, but no tracepoint
    /// program can be attached.
    DenyPerfEvents,
    /// The kernel's BTF hidden: an empty tmpfs over /sys/kernel/btf, in a mount namespace of
    /// tern's.
    HideBtf,
}

/// The tern binary under test, built by `cargo xtask test`.
pub fn tern_bin() -> PathBuf {
    let path = std::env::var_os("TERN_BIN")
        .expect("TERN_BIN is not set: run the kernel tests with `cargo xtask test`");
    let path = PathBuf::from(path);
    assert!(path.is_file(), "TERN_BIN={} is not a file", path.display());
    path
}

/// A running tern with its state directory; killed (and the directory removed, unless the
/// test owns it) when dropped.
pub struct Tern {
    child: Child,
    pub state_dir: PathBuf,
    owns_state: bool,
    /// Each report with the moment it was read from tern's stdout.
    reports: Receiver<(Instant, Result<Value, String>)>,
    /// Each violation event printed, with the moment it was read.
    violations: Receiver<(Instant, Value)>,
    log: Receiver<String>,
    sizes: Arc<Mutex<Vec<usize>>>,
}

impl Tern {
    /// Starts `tern run --output stdout` with `args` in `ns`, and waits until it has attached.
    pub fn start(ns: &Netns, args: &[&str]) -> Self {
        Self::start_with_env(ns, args, &[])
    }

    /// As `start`, with more environment variables for tern (e.g. TERN_LOG).
    pub fn start_with_env(ns: &Netns, args: &[&str], env: &[(&str, &str)]) -> Self {
        let tern = Self::spawn_env(ns, args, env);
        tern.wait_log("attached", Duration::from_secs(20));
        tern
    }

    /// Starts `tern run --output stdout` with `args` in `ns` as `launch` says, and waits until
    /// it runs; returns it with its start-up lines.
    pub fn start_launched(ns: &Netns, launch: Launch, args: &[&str]) -> (Self, Vec<String>) {
        let mut all = vec!["--output", "stdout"];
        all.extend_from_slice(args);
        let tern = Self::spawn_launched(ns, launch, None, &all, &[]);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut lines = Vec::new();
        while lines
            .last()
            .is_none_or(|l: &String| !l.contains("running as"))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match tern.log.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(_) => panic!("tern did not start within 20 s: {lines:?}"),
            }
        }
        (tern, lines)
    }

    /// Starts `tern run --output stdout` with `args` in `ns` without waiting for anything.
    pub fn spawn(ns: &Netns, args: &[&str]) -> Self {
        Self::spawn_env(ns, args, &[])
    }

    /// As [`Tern::spawn`], with extra environment variables.
    pub fn spawn_env(ns: &Netns, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut all = vec!["--output", "stdout"];
        all.extend_from_slice(args);
        Self::spawn_in(ns, None, &all, env)
    }

    /// Starts `tern run --state-dir STATE_DIR` with `args` (and no output of its own choosing)
    /// in `ns`, and waits until it has attached. The state directory outlives this tern (a
    /// restart can reuse it).
    pub fn launch(ns: &Netns, state_dir: &Path, args: &[&str]) -> Self {
        let tern = Self::spawn_in(ns, Some(state_dir), args, &[]);
        tern.wait_log("attached", Duration::from_secs(20));
        tern
    }

    /// As [`Tern::launch`], also returning every line tern logged until it attached.
    pub fn launch_logged(ns: &Netns, state_dir: &Path, args: &[&str]) -> (Self, Vec<String>) {
        let tern = Self::spawn_in(ns, Some(state_dir), args, &[]);
        let lines = tern.log_until("attached", Duration::from_secs(20));
        (tern, lines)
    }

    /// Starts tern in `ns`, with `state_dir` or else a state directory of its own that goes
    /// when it does.
    fn spawn_in(ns: &Netns, state_dir: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_launched(ns, Launch::Nsenter, state_dir, args, env)
    }

    fn spawn_launched(
        ns: &Netns,
        launch: Launch,
        state_dir: Option<&Path>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let owns_state = state_dir.is_none();
        let state_dir = state_dir.map_or_else(
            || {
                std::env::temp_dir().join(format!(
                    "tern-test-state-{}-{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::SeqCst)
                ))
            },
            Path::to_path_buf,
        );
        // nsenter by default, not `ip netns exec`: the latter remounts /sys, which hides
        // tracefs. Each way execs tern in place, so the child's pid is tern's.
        let mut command = match launch {
            Launch::IpNetnsExec => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", &ns.name]);
                command
            }
            Launch::HideBtf => {
                let mut command = Command::new("unshare");
                command.args([
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    "mount -t tmpfs none /sys/kernel/btf && exec \"$@\"",
                    "sh",
                    "nsenter",
                    &format!("--net={}", ns.path()),
                ]);
                command
            }
            Launch::Nsenter | Launch::DenyBpf | Launch::DenyPerfEvents => {
                let mut command = Command::new("nsenter");
                command.arg(format!("--net={}", ns.path()));
                command
            }
        };
        match launch {
            Launch::DenyBpf => deny_bpf(&mut command),
            Launch::DenyPerfEvents => deny_perf_events(&mut command),
            Launch::Nsenter | Launch::IpNetnsExec | Launch::HideBtf => {}
        }
        // This machine has no account of tern's own: tests run it as nobody, which they
        // accept as shared, unless a test names its user.
        let user: &[&str] = match args.contains(&"--user") {
            true => &[],
            false => &["--user", "nobody", "--shared-user"],
        };
        let mut child = command
            .arg(tern_bin())
            .args(["run", "--state-dir"])
            .arg(&state_dir)
            .args(user)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tern");
        let (report_tx, reports) = mpsc::channel();
        let (violation_tx, violations) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let sizes_seen = sizes.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with(r#"{"violation":"#) {
                    let event = serde_json::from_str(&line).unwrap_or_else(|e| {
                        panic!("a violation line that is no JSON ({e}): {line}")
                    });
                    let _ = violation_tx.send((Instant::now(), event));
                    continue;
                }
                let bytes = if line.starts_with('{') {
                    line.len()
                } else {
                    line.len() / 2
                };
                sizes_seen.lock().expect("sizes").push(bytes);
                if report_tx.send((Instant::now(), decode(&line))).is_err() {
                    break;
                }
            }
        });
        let (log_tx, log) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("tern: {line}");
                if log_tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            state_dir,
            owns_state,
            reports,
            violations,
            log,
            sizes,
        }
    }

    /// The pid of the tern process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Encoded size in bytes of every report printed so far (hex CBOR counted as bytes).
    pub fn encoded_sizes(&self) -> Vec<usize> {
        self.sizes.lock().expect("sizes").clone()
    }

    /// Waits for a log line containing `needle`; panics after `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let mut lines = self.log_until(needle, timeout);
        lines.pop().expect("the line found")
    }

    /// Waits for a log line containing any of `needles`; panics after `timeout`.
    pub fn wait_log_any(&self, needles: &[&str], timeout: Duration) -> String {
        let mut lines = self.log_until_any(needles, timeout);
        lines.pop().expect("the line found")
    }

    /// Every line logged from now until one containing `needle`, that one last; panics
    /// after `timeout`.
    pub fn log_until(&self, needle: &str, timeout: Duration) -> Vec<String> {
        self.log_until_any(&[needle], timeout)
    }

    fn log_until_any(&self, needles: &[&str], timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    let found = needles.iter().any(|needle| line.contains(needle));
                    lines.push(line);
                    if found {
                        return lines;
                    }
                }
                Err(_) => panic!("tern did not log any of {needles:?} within {timeout:?}"),
            }
        }
    }

    /// The next violation event tern printed (`{"violation": {...}}`) and when it was read;
    /// panics after `timeout`.
    pub fn next_violation(&self, timeout: Duration) -> (Instant, Value) {
        match self.violations.recv_timeout(timeout) {
            Ok((at, event)) => (at, event["violation"].clone()),
            Err(_) => panic!("no violation event within {timeout:?}"),
        }
    }

    /// The next report, checked against the document rules and with long names whatever
    /// its encoding; panics after `timeout`.
    pub fn next_report(&self, timeout: Duration) -> Value {
        self.next_timed(timeout).1
    }

    /// As [`Tern::next_report`], with the moment the report was read.
    pub fn next_timed(&self, timeout: Duration) -> (Instant, Value) {
        match self.reports.recv_timeout(timeout) {
            Ok((at, report)) => (at, report.unwrap_or_else(|e| panic!("{e}"))),
            Err(RecvTimeoutError::Timeout) => panic!("no report within {timeout:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("tern exited before reporting"),
        }
    }

    /// Every report not read yet, up to and including the first one collected after
    /// `since`: whatever happened before `since` is counted in these reports, however slow the
    /// machine. tern collects a report every interval and prints it as soon as it is built,
    /// so the report after the first one printed after `since` was collected after `since`. Panics when a
    /// report takes longer than `timeout` or 100 reports go by.
    pub fn reports_through(&self, since: Instant, timeout: Duration) -> Vec<Value> {
        let mut reports = Vec::new();
        let mut printed_after = false;
        for _ in 0..100 {
            let (at, report) = self.next_timed(timeout);
            reports.push(report);
            if printed_after {
                return reports;
            }
            printed_after = at > since;
        }
        panic!("100 reports went by without one collected after the moment asked for");
    }

    /// Stops tern with SIGTERM; returns its exit code and what it printed that the test
    /// had not read yet.
    pub fn stop(self) -> Stopped {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait_exit(Duration::from_secs(10))
    }

    /// Kills tern with SIGKILL, as a crash would; returns what it printed that the test had
    /// not read yet. What tern keeps for its successor (pinned maps) stays.
    pub fn kill(self) -> Stopped {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        self.wait_exit(Duration::from_secs(10))
    }

    /// Waits for tern to exit on its own; panics after `timeout`.
    pub fn wait_exit(mut self, timeout: Duration) -> Stopped {
        let code = wait_until(timeout, Duration::from_millis(20), || {
            match self.child.try_wait() {
                Ok(Some(status)) => Ok(status.code()),
                _ => Err(()),
            }
        })
        .unwrap_or_else(|()| panic!("tern did not exit within {timeout:?}"));
        let deadline = Instant::now() + Duration::from_secs(5);
        Stopped {
            code,
            reports: drain(&self.reports, deadline)
                .into_iter()
                .map(|(_, r)| r.unwrap_or_else(|e| panic!("{e}")))
                .collect(),
            log: drain(&self.log, deadline),
        }
    }
}

/// How many reports wait in the spool of `state_dir`.
pub fn spooled(state_dir: &Path) -> usize {
    std::fs::read_dir(state_dir.join("spool")).map_or(0, |d| {
        d.filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".json"))
        })
        .count()
    })
}

/// Where tern pins the maps of `state_dir` (`/sys/fs/bpf/<binary>-<FNV-1a of the path>`, as
/// the README says).
pub fn pins_of(state_dir: &Path) -> PathBuf {
    let hash = state_dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, &b| {
            (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    let binary = tern_bin();
    let name = binary.file_name().expect("a binary name").to_string_lossy();
    PathBuf::from(format!("/sys/fs/bpf/{name}-{hash:016x}"))
}

/// What a stopped tern left: its exit code and what it printed that the test had not read.
pub struct Stopped {
    pub code: Option<i32>,
    pub reports: Vec<Value>,
    pub log: Vec<String>,
}

impl Drop for Tern {
    fn drop(&mut self) {
        // Still running: the test ends it, and removes the maps it would keep for a successor.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(pins_of(&self.state_dir));
        }
        if self.owns_state {
            let _ = std::fs::remove_dir_all(&self.state_dir);
        }
    }
}

/// One line of tern's stdout: a JSON document, or a CBOR document in hex. Every report is
/// checked against the document rules.
fn decode(line: &str) -> Result<Value, String> {
    let doc: Value = if line.starts_with('{') {
        serde_json::from_str(line).map_err(|e| format!("not JSON ({e}): {line}"))?
    } else {
        let bytes = (0..line.len())
            .step_by(2)
            .map(|i| {
                line.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| format!("neither JSON nor hex: {line}"))?;
        ciborium::from_reader(bytes.as_slice()).map_err(|e| format!("not CBOR ({e}): {line}"))?
    };
    schema::validate(&doc)
}

/// Everything a channel yields until its sender is gone or `deadline` passes.
fn drain<T>(rx: &Receiver<T>, deadline: Instant) -> Vec<T> {
    let mut all = Vec::new();
    while let Ok(item) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        all.push(item);
    }
    all
}
