//! The state directory: tern's only writable place. Owned by the agent's account and closed
//! to everyone else (0700), so no other user reads or plants what tern keeps there. Made
//! ready before the privilege drop (created and given to the account if need be); what is
//! inside is read and written only after it, as the account.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::Path,
};

use anyhow::{Context, Result, bail};

use super::Account;

/// The state directory's mode: its owner's alone.
pub const MODE: u32 = 0o700;

pub fn prepare(dir: &Path, account: &Account) -> Result<()> {
    match fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => bail!(
            "state directory {} is not a directory; point --state-dir at a directory",
            dir.display()
        ),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(MODE)
            .create(dir)
            .with_context(|| format!("creating state directory {}", dir.display()))?,
        Err(e) => {
            return Err(e).with_context(|| format!("reading state directory {}", dir.display()));
        }
    }
    let meta = fs::metadata(dir)?;
    // Before the chown: changing the mode needs owning the directory.
    if meta.permissions().mode() & 0o777 != MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(MODE))
            .with_context(|| format!("making state directory {} private (0700)", dir.display()))?;
    }
    if meta.uid() != account.uid || meta.gid() != account.gid {
        std::os::unix::fs::chown(dir, Some(account.uid), Some(account.gid)).with_context(|| {
            format!(
                "giving state directory {} to {}: run tern as root, or make the \
                     directory {}'s (tern install does)",
                dir.display(),
                account.name,
                account.name
            )
        })?;
    }
    Ok(())
}
