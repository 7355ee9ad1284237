//! tern commands that end on their own: `check-config`, and a `run` refused before it loads
//! anything. Their exit code and output, and the check that both refuse a setting, each
//! naming the cause.

use std::{path::Path, process::Command};

use crate::tern_bin;

/// The account tern runs as in these tests: this machine has no account of tern's own.
pub const AS_NOBODY: [&str; 3] = ["--user", "nobody", "--shared-user"];

/// How a tern command ended.
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `tern ARGS` to its end.
pub fn finish(args: &[&str]) -> Finished {
    let output = Command::new(tern_bin())
        .args(args)
        .output()
        .expect("running tern");
    Finished {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Asserts a command that failed, naming every one of `expected`.
pub fn assert_refused(finished: &Finished, expected: &[&str]) {
    assert_eq!(finished.code, Some(1), "stderr: {}", finished.stderr);
    for needle in expected {
        assert!(
            finished.stderr.contains(needle),
            "expected {needle:?} in: {}",
            finished.stderr
        );
    }
}

/// `tern check-config ARGS` and `tern run ARGS` both refuse, naming every one of `expected`;
/// as nobody unless ARGS name a user, with `state` as the state directory. A run that is
/// not refused ends after one report, a second later.
pub fn both_refuse(state: &Path, args: &[&str], expected: &[&str]) {
    let state = state.to_str().expect("a UTF-8 path");
    for command in [
        &["check-config"][..],
        &[
            "run",
            "--output",
            "stdout",
            "--count",
            "1",
            "--interval",
            "1",
        ],
    ] {
        let mut all = command.to_vec();
        all.extend(["--state-dir", state]);
        if !args.contains(&"--user") {
            all.extend(AS_NOBODY);
        }
        all.extend_from_slice(args);
        let finished = finish(&all);
        assert_refused(&finished, expected);
    }
}

/// The least value a refusal names for `key` ("... set KEY ... at least N").
pub fn least(stderr: &str, key: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.contains(&format!("{key} ")) && l.contains("at least "))
        .unwrap_or_else(|| panic!("no minimum for {key} in: {stderr}"));
    let after = line.rsplit("at least ").next().unwrap_or_default();
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after \"at least\" in: {line}"))
}
