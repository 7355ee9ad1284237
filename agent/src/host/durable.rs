//! Files that survive a crash: a file is replaced whole or not at all, and a file that cannot
//! be used is moved aside for a person to look at, neither lost nor read again. Knows nothing
//! of what the files hold.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

/// Replaces `path` with `bytes` so that a crash leaves the old file or the new one, never
/// half: written to `*.tmp` and synced, renamed over `path`, and the rename synced in the
/// directory. The `*.tmp` is created new, owner-only, never through a symbolic link: one
/// that is there already (a crash's, or planted) is removed first, the link itself and not
/// what it names. A write that fails (a full disk) removes its `*.tmp`: nothing empty or
/// partial is left behind.
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_and_rename(path, bytes, true)
}

/// As `replace`, for a file that matters only until the machine stops: a process's crash
/// leaves the old file or the new one (the rename is atomic in the page cache, which the
/// crash does not take), and a power loss may leave either or the old one, which the next
/// boot does not read anyway. Nothing is synced: no disk write waits, and flash is not worn
/// at every report.
pub fn replace_for_this_boot(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_and_rename(path, bytes, false)
}

fn write_and_rename(path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| if sync { file.sync_all() } else { Ok(()) })
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        drop(file);
        // Best effort: what is left is removed at the next start (the spool's) or by the
        // next write to the same path.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if !sync {
        return Ok(());
    }
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::File::open(dir)?.sync_all()
}

/// Moves `path` to `*.corrupt` next to it; returns where it went.
pub fn set_aside(path: &Path) -> io::Result<PathBuf> {
    let aside = path.with_extension("corrupt");
    fs::rename(path, &aside)?;
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_holds_the_new_bytes_and_a_bad_one_goes_aside() {
        let dir = std::env::temp_dir().join(format!("tern-durable-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state");
        replace(&path, b"old").unwrap();
        replace(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert!(!dir.join("state.tmp").exists());
        replace_for_this_boot(&path, b"newer").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"newer");
        assert!(!dir.join("state.tmp").exists());
        replace(&path, b"new").unwrap();
        let aside = set_aside(&path).unwrap();
        assert_eq!(aside, dir.join("state.corrupt"));
        assert_eq!(fs::read(&aside).unwrap(), b"new");
        assert!(!path.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("tern-durable-fail-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("state")).unwrap();
        // The rename fails: a directory cannot be replaced by a file.
        let err = replace(&dir.join("state"), b"new").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::IsADirectory, "{err}");
        assert!(!dir.join("state.tmp").exists());
        let err = replace_for_this_boot(&dir.join("state"), b"new").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::IsADirectory, "{err}");
        assert!(!dir.join("state.tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_link_planted_as_the_temporary_file_is_not_written_through() {
        let dir = std::env::temp_dir().join(format!("tern-durable-link-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        fs::write(&victim, b"theirs").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("state.tmp")).unwrap();
        replace(&dir.join("state"), b"ours").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"theirs");
        assert_eq!(fs::read(dir.join("state")).unwrap(), b"ours");
        fs::remove_dir_all(&dir).unwrap();
    }
}
