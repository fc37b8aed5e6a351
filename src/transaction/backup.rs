//! What is kept to undo a deploy, under archives/<release>/: a snapshot of data/ taken before
//! services stop, the operator's manual edits found in run/ (drift), and the failed tree.
//!
//! A snapshot is a real copy as far as data/ is concerned: files unchanged since the previous
//! snapshot are hard-linked to that (immutable) snapshot, never to data/ itself, so a later
//! in-place write to data/ cannot reach any snapshot.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Error, io_error};
use crate::fs::sync::{self, LinkBase, SyncOptions, SyncStats};
use crate::fs::tree::{self, ChangeKind};

/// Copies `data` into `dest` (which must not exist yet), sharing unchanged files with `base`.
pub fn snapshot(
    data: &Path,
    dest: &Path,
    base: Option<(&Path, SystemTime)>,
) -> Result<SyncStats, Error> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(|e| io_error("create", parent, e))?;
    }
    let partial = dest.with_extension("partial");
    if partial.exists() {
        fs::remove_dir_all(&partial).map_err(|e| io_error("remove", &partial, e))?;
    }
    let opts = SyncOptions {
        link_base: base.map(|(path, taken_at)| LinkBase { path, taken_at }),
        durable: true,
    };
    let stats = sync::sync_tree(data, &partial, &opts)?;
    fs::rename(&partial, dest).map_err(|e| io_error("complete", dest, e))?;
    Ok(stats)
}

/// Brings a snapshot up to date with data/ once services are stopped, so writes the app made
/// after the snapshot was taken are not lost by a rollback. Cheap: only changed files are
/// copied, and a file shared with an older snapshot is replaced, never written in place.
pub fn catch_up(data: &Path, snapshot: &Path) -> Result<SyncStats, Error> {
    let opts = SyncOptions {
        link_base: None,
        durable: true,
    };
    Ok(sync::sync_tree(data, snapshot, &opts)?)
}

/// Puts data/ back exactly as the snapshot holds it (copies: data/ must never share inodes with
/// a snapshot).
pub fn restore(snapshot: &Path, data: &Path) -> Result<SyncStats, Error> {
    let opts = SyncOptions {
        link_base: None,
        durable: true,
    };
    Ok(sync::sync_tree(snapshot, data, &opts)?)
}

/// Manual edits in run/ against the release it was switched to.
pub struct Drift {
    pub changes: Vec<(ChangeKind, PathBuf)>,
}

impl Drift {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn paths(&self) -> Vec<String> {
        self.changes
            .iter()
            .map(|(kind, p)| format!("{} {}", kind_word(*kind), p.display()))
            .collect()
    }
}

fn kind_word(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Added => "added",
        ChangeKind::Removed => "deleted",
        ChangeKind::Modified => "modified",
    }
}

/// Compares run/ with the release tree it was switched to (`None`: nothing was live, so
/// anything in run/ was put there by hand).
pub fn find_drift(run: &Path, release_tree: Option<&Path>) -> Result<Drift, Error> {
    if fs::symlink_metadata(run)
        .map(|m| !m.is_dir())
        .unwrap_or(true)
    {
        return Ok(Drift { changes: vec![] });
    }
    let empty;
    let base = match release_tree {
        Some(tree) if tree.is_dir() => tree,
        _ => {
            empty = tempfile::tempdir().map_err(|e| io_error("create", Path::new("/tmp"), e))?;
            empty.path()
        }
    };
    let changes = tree::diff(base, run)?
        .into_iter()
        .map(|c| (c.kind, c.path))
        .collect();
    Ok(Drift { changes })
}

/// Saves drifted files under `dest` (archives/<release>/drift/): the files as they are in run/,
/// and `changes.txt` listing every change.
pub fn save_drift(run: &Path, drift: &Drift, dest: &Path) -> Result<(), Error> {
    fs::create_dir_all(dest).map_err(|e| io_error("create", dest, e))?;
    let files = dest.join("files");
    for (kind, rel) in &drift.changes {
        if *kind == ChangeKind::Removed {
            continue;
        }
        let src = run.join(rel);
        let meta = match fs::symlink_metadata(&src) {
            Ok(meta) => meta,
            Err(_) => continue,
        };
        let target = files.join(rel);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| io_error("create", parent, e))?;
        }
        if meta.is_dir() {
            fs::create_dir_all(&target).map_err(|e| io_error("create", &target, e))?;
        } else if meta.file_type().is_symlink() {
            let link = fs::read_link(&src).map_err(|e| io_error("read", &src, e))?;
            let _ = fs::remove_file(&target);
            std::os::unix::fs::symlink(link, &target)
                .map_err(|e| io_error("create symlink", &target, e))?;
        } else {
            fs::copy(&src, &target).map_err(|e| io_error("copy", &src, e))?;
        }
    }
    let mut list = String::new();
    for line in drift.paths() {
        list.push_str(&line);
        list.push('\n');
    }
    let list_path = dest.join("changes.txt");
    fs::write(&list_path, list).map_err(|e| io_error("write", &list_path, e))
}
