//! Files that survive a crash: a file is replaced whole or not at all, and a file that cannot
//! be used is moved aside for a person to look at, neither lost nor read again. Knows nothing
//! of what the files hold.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

/// Replaces `path` with `bytes` so that a crash leaves the old file or the new one, never
/// half: written to `*.tmp` and synced, renamed over `path`, and the rename synced in the
/// directory. A `*.tmp` left by a crash is the caller's to remove.
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
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
        let aside = set_aside(&path).unwrap();
        assert_eq!(aside, dir.join("state.corrupt"));
        assert_eq!(fs::read(&aside).unwrap(), b"new");
        assert!(!path.exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
