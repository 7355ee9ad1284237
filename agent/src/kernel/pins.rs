//! Pins: the maps that hold counts (traffic, event counters, the interval sets and the
//! interval number) are kept in bpffs, so that what the kernel counted before tern died is
//! still there for the next tern, which adopts them; the programs and their attachments
//! still die with the process. Each state directory has a directory of pins of its own,
//! `/sys/fs/bpf/<binary>-<FNV-1a of the state directory's path, in hex>`, and in it one per
//! eBPF object (a different tern sets the maps of another aside). A graceful stop, which
//! reports everything, removes them.

use std::{
    ffi::CString,
    fs,
    os::unix::{ffi::OsStrExt, fs::DirBuilderExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use aya::maps::MapInfo;
use log::{info, warn};
use tern_common::names;

use super::object::OBJECT;

const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;

/// The maps whose contents outlive the process.
pub const KEPT: [&str; 10] = [
    names::IF_TRAFFIC_BY_INDEX,
    names::IF_TRAFFIC,
    names::TCP_LISTENED,
    names::UDP_LISTENED,
    names::REMOTES_SEEN,
    names::CONNECTIONS_SEEN,
    names::CONTACTED,
    names::EXECUTED,
    names::COUNTERS,
    names::EPOCH,
];

/// Where one state directory's maps are pinned.
#[derive(Clone, Debug)]
pub struct Pins {
    /// `<bpffs>/<binary>-<hash>`: the state directory's.
    root: PathBuf,
    /// `<root>/<hash of the object>`: this object's maps.
    dir: PathBuf,
    /// Whether the maps were there already: counts of an earlier tern, adopted.
    pub adopted: bool,
}

impl Pins {
    /// Makes the directory of pins for `state_dir` (setting aside the maps of another
    /// object); an error says why counts cannot outlive this process.
    pub fn prepare(state_dir: &Path) -> Result<Self> {
        if !is_bpffs(Path::new(BPFFS)) {
            bail!("no BPF file system is mounted at {BPFFS} (mount -t bpf bpf {BPFFS})");
        }
        let root = root_of(&crate::config::program_name(), state_dir);
        let dir = root.join(format!("{:016x}", fnv1a(OBJECT)));
        let builder = || {
            let mut builder = fs::DirBuilder::new();
            builder.mode(0o700);
            builder
        };
        for path in [&root, &dir] {
            match builder().create(path) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(e).with_context(|| format!("creating {}", path.display()));
                }
                _ => {}
            }
        }
        for entry in fs::read_dir(&root).with_context(|| format!("reading {}", root.display()))? {
            let other = entry?.path();
            if other != dir {
                warn!(
                    "the counts another version of tern left unreported in {} are set aside",
                    other.display()
                );
                remove(&other);
            }
        }
        let adopted = dir.join(names::COUNTERS).exists();
        Ok(Self { root, dir, adopted })
    }

    /// Where map `name` is pinned.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The kernel's id of the counters map: which generation of maps the counts are in.
    pub fn generation(&self) -> Result<u32> {
        Ok(MapInfo::from_pin(self.path(names::COUNTERS))
            .context("reading the pinned counters map")?
            .id())
    }

    /// Hands the pins to `uid`, so that the account tern drops to can remove them at stop.
    pub fn hand_to(&self, uid: u32, gid: u32) -> Result<()> {
        for path in [&self.root, &self.dir] {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .with_context(|| format!("handing {} to uid {uid}", path.display()))?;
        }
        Ok(())
    }

    /// Unpins the maps: what they held is reported.
    pub fn release(&self) {
        remove(&self.dir);
        remove(&self.root);
        info!("released the maps pinned in {}", self.root.display());
    }
}

/// The directory of pins of binary `name` with state directory `state_dir`.
pub fn root_of(name: &str, state_dir: &Path) -> PathBuf {
    Path::new(BPFFS).join(format!(
        "{name}-{:016x}",
        fnv1a(state_dir.as_os_str().as_bytes())
    ))
}

/// Removes a directory of pins (the pins, then the directory), saying what it cannot.
fn remove(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if let Err(err) = fs::remove_file(entry.path()) {
                warn!("cannot remove {}: {err}", entry.path().display());
            }
        }
    }
    let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
        return;
    };
    // unlinkat rather than rmdir: one call on every architecture, as the filter allows it.
    // SAFETY: a valid C string; unlinkat touches nothing of this process.
    if unsafe { libc::unlinkat(libc::AT_FDCWD, path.as_ptr(), libc::AT_REMOVEDIR) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::NotFound {
            warn!("cannot remove {}: {err}", dir.display());
        }
    }
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct it is given.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a struct of statfs's own type.
    (unsafe { libc::statfs(path.as_ptr(), &mut stat) } == 0)
        // f_type's width differs between C libraries; the magic fits 32 bits.
        && stat.f_type as u32 == BPF_FS_MAGIC
}

/// FNV-1a, 64 bits: a stable, dependency-free name for a path or an object.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_is_the_published_function() {
        // The reference values of FNV-1a 64.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x85944171f73967e8);
    }
}
