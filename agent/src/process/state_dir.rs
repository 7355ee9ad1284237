//! The state directory: tern's only writable place. Owned by the agent's account and closed
//! to everyone else (0700), so no other user reads or plants what tern keeps there. Made
//! ready before the privilege drop, after config's checks (never a link, a system directory
//! or a directory someone else prepared): created and given to the account if need be, its
//! mode reset. What is inside is looked at only after the drop, as the account (root
//! without CAP_DAC_READ_SEARCH, as tern's unit runs it, cannot): checked again, its spool
//! made private.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::Path,
};

use anyhow::{Context, Result, bail};

use super::Account;
use crate::config::state_dir;

/// The state directory's mode, and its spool's: their owner's alone.
pub const MODE: u32 = 0o700;

pub fn prepare(dir: &Path, account: &Account) -> Result<()> {
    let owners = [0, account.uid];
    let problems = state_dir::problems(dir, Some(&owners));
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    if fs::symlink_metadata(dir).is_err() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(MODE)
            .create(dir)
            .with_context(|| format!("creating state directory {}", dir.display()))?;
    }
    make_private(dir, account, "state directory")
}

/// After the drop, as the account: the contents checked again, and the spool, if there is
/// one, a real directory of the account's, made private.
pub fn settle(dir: &Path, account: &Account) -> Result<()> {
    let problems = state_dir::problems(dir, Some(&[0, account.uid]));
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    let spool = dir.join(state_dir::SPOOL);
    match fs::symlink_metadata(&spool) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("looking at {}", spool.display())),
        Ok(meta) if meta.file_type().is_symlink() || !meta.is_dir() => bail!(
            "{} is not a directory of tern's (a symbolic link or a file); remove it, tern \
             creates the spool itself",
            spool.display()
        ),
        Ok(meta) if meta.uid() != account.uid => bail!(
            "{} belongs to uid {}, not {}: someone else made it; remove it, tern creates the \
             spool itself",
            spool.display(),
            meta.uid(),
            account.name
        ),
        Ok(_) => make_private(&spool, account, "spool"),
    }
}

/// Mode 0700 and the account as owner, for a directory checked not to be a link.
fn make_private(dir: &Path, account: &Account, what: &str) -> Result<()> {
    let meta = fs::symlink_metadata(dir)?;
    // Before the chown: changing the mode needs owning the directory.
    if meta.permissions().mode() & 0o7777 != MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(MODE))
            .with_context(|| format!("making {what} {} private (0700)", dir.display()))?;
    }
    if meta.uid() != account.uid || meta.gid() != account.gid {
        std::os::unix::fs::chown(dir, Some(account.uid), Some(account.gid)).with_context(|| {
            format!(
                "giving {what} {} to {}: run tern as root, or make the directory {}'s (tern \
                 install does)",
                dir.display(),
                account.name,
                account.name
            )
        })?;
    }
    Ok(())
}
