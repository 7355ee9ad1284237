//! What makes a directory fit to be tern's state directory, which tern gives to the agent's
//! account: never a symbolic link (followed as root, it would give away what it names), never
//! a system directory (a one-word slip such as `/var/lib`), and, when it exists already,
//! owned by root or the account and holding only what tern keeps there, so that nobody can
//! prepare one with a report of theirs inside. check-config names each problem; the start
//! checks again, knowing the account, before anything is given away.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
};

/// The spool's folder in the state directory.
pub const SPOOL: &str = "spool";

/// What tern keeps in its state directory.
pub const OWN_NAMES: &[&str] = &[
    SPOOL,
    "last_report_id",
    "last_report_id.tmp",
    "last_report_id.corrupt",
    BASELINE,
    "baseline.tmp",
    "baseline.corrupt",
];

/// The readings of the last report, for a successor after a crash.
pub const BASELINE: &str = "baseline";

/// Directories of the system that must never become the agent's.
const SYSTEM: &[&str] = &[
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/usr/bin",
    "/usr/lib",
    "/usr/libexec",
    "/usr/local",
    "/usr/local/bin",
    "/usr/local/lib",
    "/usr/sbin",
    "/usr/share",
    "/var",
    "/var/cache",
    "/var/lib",
    "/var/local",
    "/var/log",
    "/var/run",
    "/var/spool",
    "/var/tmp",
];

/// The problems of `dir` as a state directory, each with its fix. `owners`: the uids that
/// may own an existing one (root and the account), or None where the account is not
/// resolved yet.
pub fn problems(dir: &Path, owners: Option<&[u32]>) -> Vec<String> {
    let mut problems = Vec::new();
    let fix = "point --state-dir (tern.state-dir) at a directory of tern's own, such as \
               /var/lib/NAME, which tern creates";
    let shown = dir.display();
    let meta = match fs::symlink_metadata(dir) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            problems.push(format!("state directory {shown}: cannot look at it ({e})"));
            return problems;
        }
    };
    let system = [Some(lexical(dir)), fs::canonicalize(dir).ok()]
        .into_iter()
        .flatten()
        .any(|p| SYSTEM.iter().any(|s| Path::new(s) == p));
    if system {
        problems.push(format!(
            "state directory {shown} is a system directory, which tern would give to its \
             account; {fix}"
        ));
        return problems;
    }
    let Some(meta) = meta else {
        return problems;
    };
    if meta.file_type().is_symlink() {
        problems.push(format!(
            "state directory {shown} is a symbolic link, which tern does not follow; point \
             --state-dir at the directory itself"
        ));
        return problems;
    }
    if !meta.is_dir() {
        problems.push(format!("state directory {shown} is not a directory; {fix}"));
        return problems;
    }
    if let Some(owners) = owners
        && !owners.contains(&meta.uid())
    {
        problems.push(format!(
            "state directory {shown} belongs to uid {}, neither root nor tern's account: \
             someone else prepared it; {fix}",
            meta.uid()
        ));
    }
    match fs::read_dir(dir) {
        Ok(entries) => {
            let foreign: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| !OWN_NAMES.contains(&name.as_str()))
                .take(5)
                .collect();
            if !foreign.is_empty() {
                problems.push(format!(
                    "state directory {shown} holds what is not tern's ({}); {fix}, or empty it",
                    foreign.join(", ")
                ));
            }
        }
        // Root without CAP_DAC_READ_SEARCH (tern's unit grants none) cannot list its
        // account's directory: the start checks again after the drop, as the account.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
        Err(e) => problems.push(format!("state directory {shown}: cannot list it ({e})")),
    }
    problems
}

/// `dir` made absolute and rid of `.` and trailing slashes, without asking the file system.
fn lexical(dir: &Path) -> PathBuf {
    let absolute = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(dir)
    };
    let mut clean = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                clean.pop();
            }
            other => clean.push(other),
        }
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> u32 {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tern-state-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn system_directories_are_refused_however_they_are_spelt() {
        for dir in [
            "/var/lib",
            "/var/lib/",
            "/etc",
            "/var/lib/../lib",
            "/usr/./local",
        ] {
            let problems = problems(Path::new(dir), None);
            assert!(
                problems.iter().any(|p| p.contains("system directory")),
                "{dir}: {problems:?}"
            );
        }
    }

    #[test]
    fn a_link_a_file_and_a_foreign_directory_are_refused_and_a_new_one_is_fine() {
        let base = scratch("kinds");
        fs::create_dir_all(&base).unwrap();
        let new = base.join("new");
        assert!(problems(&new, Some(&[me()])).is_empty());
        let link = base.join("link");
        std::os::unix::fs::symlink(&base, &link).unwrap();
        assert!(problems(&link, None)[0].contains("symbolic link"));
        let file = base.join("file");
        fs::write(&file, "").unwrap();
        assert!(problems(&file, None)[0].contains("not a directory"));
        let prepared = base.join("prepared");
        fs::create_dir_all(prepared.join("spool")).unwrap();
        fs::write(prepared.join("last_report_id"), "1\n").unwrap();
        assert!(problems(&prepared, Some(&[me()])).is_empty());
        fs::write(prepared.join("planted"), "").unwrap();
        let found = problems(&prepared, Some(&[me()]));
        assert!(found[0].contains("not tern's (planted)"), "{found:?}");
        let others = problems(&prepared, Some(&[me() + 1]));
        assert!(
            others
                .iter()
                .any(|p| p.contains("someone else prepared it")),
            "{others:?}"
        );
        fs::remove_dir_all(&base).unwrap();
    }
}
