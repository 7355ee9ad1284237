//! The state directory: tern's only writable place. Created owner-only (0700) so no other
//! user reads or plants what tern keeps there.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::Path,
};

use anyhow::{Context, Result, bail};

pub fn prepare(dir: &Path) -> Result<()> {
    match fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => bail!(
            "state directory {} is not a directory; point --state-dir at a directory",
            dir.display()
        ),
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).with_context(|| {
                    format!("making state directory {} private (0700)", dir.display())
                })?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating state directory {}", dir.display())),
        Err(e) => Err(e).with_context(|| format!("reading state directory {}", dir.display())),
    }
}
