//! The one way tern opens a file it reads: without blocking (a FIFO opens at once, and is
//! then refused), only when it is a regular file (never a FIFO, a device, a socket or a
//! directory), and read up to a cap that fits the file's purpose, so that no file put in
//! tern's way can hang it or make it read without end. Files of the state directory, which
//! the agent's account can write, are opened without following a symbolic link there.

use std::{
    fs::{File, Metadata, OpenOptions},
    io::{self, ErrorKind, Read},
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::Path,
};

/// Whether a symbolic link as the path's last component is followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Links {
    /// A path the operator gave (config, certificates, metric files): links are theirs.
    Follow,
    /// A file of the state directory.
    Refuse,
}

/// A file read whole, with what fstat said of it when it was opened.
pub struct Contents {
    pub bytes: Vec<u8>,
    pub meta: Metadata,
}

/// Opens `path` for reading as this module's rules say, without reading it yet.
pub fn open(path: &Path, links: Links) -> io::Result<(File, Metadata)> {
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    if links == Links::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) if links == Links::Refuse => io::Error::new(
                ErrorKind::InvalidInput,
                "it is a symbolic link, which tern does not follow there",
            ),
            _ => e,
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("it is {}, not a regular file", kind(&meta)),
        ));
    }
    Ok((file, meta))
}

/// Reads the regular file `path` whole, refusing one of more than `max` bytes.
pub fn read(path: &Path, max: u64, links: Links) -> io::Result<Contents> {
    let (file, meta) = open(path, links)?;
    read_opened(file, meta, max)
}

/// Reads a file [`open`] gave whole, refusing one of more than `max` bytes.
pub fn read_opened(file: File, meta: Metadata, max: u64) -> io::Result<Contents> {
    if meta.len() > max {
        return Err(too_large(meta.len(), max));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // A file that grows while it is read stops at the cap all the same.
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64, max));
    }
    Ok(Contents { bytes, meta })
}

/// Reads the regular file `path` whole as UTF-8 text, refusing one of more than `max` bytes.
pub fn read_text(path: &Path, max: u64, links: Links) -> io::Result<(String, Metadata)> {
    let read = read(path, max, links)?;
    let text = String::from_utf8(read.bytes)
        .map_err(|_| io::Error::new(ErrorKind::InvalidData, "it is not UTF-8 text"))?;
    Ok((text, read.meta))
}

fn too_large(len: u64, max: u64) -> io::Error {
    io::Error::new(
        ErrorKind::InvalidData,
        format!("it is {len} bytes, more than the {max} such a file may have"),
    )
}

fn kind(meta: &Metadata) -> &'static str {
    let kind = meta.file_type();
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use std::{ffi::CString, fs, os::unix::ffi::OsStrExt, path::PathBuf, time::Instant};

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tern-files-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn fifo(path: &Path) {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn a_fifo_is_refused_at_once_rather_than_waited_on() {
        let dir = scratch("fifo");
        let path = dir.join("metric");
        fifo(&path);
        let started = Instant::now();
        let err = read(&path, 1024, Links::Follow).err().unwrap();
        assert!(err.to_string().contains("a FIFO"), "{err}");
        assert!(started.elapsed().as_secs() < 5);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_device_behind_a_link_and_a_directory_are_refused() {
        let dir = scratch("device");
        let link = dir.join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let err = read(&link, 1024, Links::Follow).err().unwrap();
        assert!(err.to_string().contains("a device"), "{err}");
        let err = read(&dir, 1024, Links::Follow).err().unwrap();
        assert!(err.to_string().contains("a directory"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_link_is_followed_only_where_the_caller_allows() {
        let dir = scratch("link");
        let target = dir.join("target");
        fs::write(&target, "42\n").unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(read(&link, 16, Links::Follow).unwrap().bytes, b"42\n");
        let err = read(&link, 16, Links::Refuse).err().unwrap();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_file_over_its_cap_is_refused_and_text_must_be_utf8() {
        let dir = scratch("cap");
        let path = dir.join("big");
        fs::write(&path, vec![b'1'; 100]).unwrap();
        assert_eq!(read(&path, 100, Links::Refuse).unwrap().bytes.len(), 100);
        let err = read(&path, 99, Links::Refuse).err().unwrap();
        assert!(err.to_string().contains("more than the 99"), "{err}");
        fs::write(&path, [0xff, 0xfe]).unwrap();
        let err = read_text(&path, 99, Links::Refuse).err().unwrap();
        assert!(err.to_string().contains("UTF-8"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }
}
