//! Writing small state files so that a crash leaves either the old or the new content, never a
//! torn file: write a temp file, fsync it, rename it over the old one, fsync the directory.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{Error, io_error};

pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fsync_dir(dir)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_error("write", path, e)
    })
}

pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Replaces `link` by a symlink to `target` atomically (a reader sees the old or the new one).
pub fn replace_symlink(target: &Path, link: &Path) -> Result<(), Error> {
    let dir = link.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".kiln-link.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(|e| io_error("create symlink", &tmp, e))?;
    fs::rename(&tmp, link).map_err(|e| io_error("replace", link, e))?;
    fsync_dir(dir).map_err(|e| io_error("sync", dir, e))
}
