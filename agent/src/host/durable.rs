//! Files that survive a crash: a file is replaced whole or not at all, and a file that cannot
//! be used is moved aside for a person to look at, neither lost nor read again. Knows nothing
//! of what the files hold.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

/// At most this much is written over a file in place: one page, which one write puts in
/// whole or not at all.
const IN_PLACE_MAX: usize = 4096;

/// Replaces `path` with `bytes` so that a crash leaves the old file or the new one, never
/// half: written to `*.tmp` and synced, renamed over `path`, and the rename synced in the
/// directory. The `*.tmp` is created new, owner-only, never through a symbolic link: one
/// that is there already (a crash's, or planted) is removed first, the link itself and not
/// what it names. A write that fails (a full disk) removes its `*.tmp`: nothing empty or
/// partial is left behind.
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_and_rename(path, bytes, true)
}

/// As `replace`, for a file that matters only until the machine stops, in a format that
/// allows trailing spaces (JSON): nothing is synced, so no disk write waits and flash is not
/// worn at every replacement, and a power loss may leave anything, which the next boot does
/// not read anyway. Bytes of at most a page go over the start of a plain file of at most a
/// page in one write, padded with spaces to its length: the kernel looks for a fatal signal
/// only between pages, so a process's crash leaves the old bytes or the new ones; and no
/// file is renamed over another, which makes ext4 write the new one out at once. Larger
/// bytes, or a file that is missing or not such a file, are replaced by rename, which a
/// crash of the process leaves whole too (it is atomic in the page cache).
pub fn replace_for_this_boot(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if bytes.len() <= IN_PLACE_MAX && overwrite(path, bytes) {
        return Ok(());
    }
    write_and_rename(path, bytes, false)
}

/// Writes `bytes` over `path` in one write if it is a plain file of at most a page; returns
/// whether it did. One that fails (a full disk) leaves the replacement to a rename, which
/// says what went wrong if it fails too.
fn overwrite(path: &Path, bytes: &[u8]) -> bool {
    // Never through a link, and never waiting on a FIFO planted there.
    let Ok(file) = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return false;
    };
    let Ok(meta) = file.metadata() else {
        return false;
    };
    let len = meta.len() as usize;
    if !meta.file_type().is_file() || len > IN_PLACE_MAX {
        return false;
    }
    let mut page = bytes.to_vec();
    page.resize(bytes.len().max(len), b' ');
    // Freshly opened, the file is written from its start.
    (&file).write(&page).is_ok_and(|n| n == page.len())
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
        // In place, padded to the longer bytes before; then larger than a page, by rename.
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        let before = inode(&path);
        replace_for_this_boot(&path, b"one").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one  ");
        assert_eq!(inode(&path), before, "written in place");
        let big = vec![b'x'; IN_PLACE_MAX + 1];
        replace_for_this_boot(&path, &big).unwrap();
        assert_eq!(fs::read(&path).unwrap(), big);
        assert_ne!(inode(&path), before, "replaced");
        replace_for_this_boot(&path, b"small").unwrap();
        assert_eq!(
            fs::read(&path).unwrap(),
            b"small",
            "a file over a page is replaced"
        );
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
    fn a_link_or_fifo_planted_in_the_way_is_not_written_through() {
        let dir = std::env::temp_dir().join(format!("tern-durable-link-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        fs::write(&victim, b"theirs").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("state.tmp")).unwrap();
        replace(&dir.join("state"), b"ours").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"theirs");
        assert_eq!(fs::read(dir.join("state")).unwrap(), b"ours");
        // Nor one planted as the file itself, nor a FIFO, which would block a write.
        let target = dir.join("kept");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        replace_for_this_boot(&target, b"ours").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"theirs");
        assert_eq!(fs::read(&target).unwrap(), b"ours");
        let fifo = dir.join("fifo");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        replace_for_this_boot(&fifo, b"ours").unwrap();
        assert_eq!(fs::read(&fifo).unwrap(), b"ours");
        fs::remove_dir_all(&dir).unwrap();
    }
}
