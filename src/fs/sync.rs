//! Making one directory tree an exact copy of another, like `rsync -a --delete` but stricter.
//!
//! The release switch and the data snapshots both need "dst equals src" down to nanosecond
//! mtimes, setuid bits, dangling symlinks and non-UTF-8 names, and they need it fast on trees
//! of 100,000 files where little changed. rsync's one-second quick check misses same-size
//! rewrites within a second (see NOTES.md), so this module compares mtimes to the nanosecond.
//! For snapshots it can hard-link unchanged files from the previous snapshot instead of
//! copying them, like `rsync --link-dest`, but never from the live source.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, Metadata, OpenOptions, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{UtimensatFlags, futimens, utimensat};
use nix::sys::time::TimeSpec;

use crate::fs::tree::Kind;

/// A previous snapshot to hard-link unchanged files from.
pub struct LinkBase<'a> {
    /// The previous snapshot. It must never be written to again: its files become shared
    /// with the new snapshot.
    pub path: &'a Path,
    /// When the previous snapshot was taken. A file whose mtime is within two seconds of this
    /// (or later) is copied even if it looks unchanged, because a rewrite within the same
    /// timestamp tick could have left size and mtime as they were.
    pub taken_at: SystemTime,
}

#[derive(Default)]
pub struct SyncOptions<'a> {
    /// Hard-link unchanged files from an earlier snapshot. Default: none, copy everything.
    pub link_base: Option<LinkBase<'a>>,
    /// Flush everything to disk before returning. Default: false.
    pub durable: bool,
}

/// What [`sync_tree`] did, counted in entries.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct SyncStats {
    /// Files copied, symlinks created and directories created.
    pub copied: u64,
    /// Files hard-linked from the link base.
    pub linked: u64,
    /// Entries deleted from dst; a deleted directory counts once, with its content.
    pub removed: u64,
    /// Entries kept (directories included), also those whose mode or mtime only needed fixing.
    pub unchanged: u64,
    /// Bytes of file content copied.
    pub bytes_copied: u64,
}

impl SyncStats {
    fn add(&mut self, other: &SyncStats) {
        self.copied += other.copied;
        self.linked += other.linked;
        self.removed += other.removed;
        self.unchanged += other.unchanged;
        self.bytes_copied += other.bytes_copied;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("cannot {action} `{path}`")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot sync `{path}`: it is a device, fifo or socket")]
    Special { path: PathBuf },
    #[error("cannot sync from `{path}`: it is not a directory")]
    SourceNotDir { path: PathBuf },
    #[error("cannot sync `{src}` into `{dst}`: one lies inside the other")]
    Overlap { src: PathBuf, dst: PathBuf },
}

/// Make `dst` an exact copy of `src`: same entries, kinds, content, permission bits, mtimes
/// (files, directories and symlinks, to the nanosecond) and symlink targets. Entries of `dst`
/// not in `src` are deleted. `dst` is created if missing, and its own mode and mtime are
/// taken from `src`. `src` may be a symlink to a directory; nothing below it is followed.
///
/// A file is left alone when its copy has the same size and mtime; a copied file is written
/// under a temporary name and renamed into place, so readers never see half of it. On error
/// `dst` is left partly synced: run it again.
pub fn sync_tree(src: &Path, dst: &Path, opts: &SyncOptions) -> Result<SyncStats, SyncError> {
    let src_meta = fs::metadata(src).map_err(|e| io_err("read", src, e))?;
    if !src_meta.is_dir() {
        return Err(SyncError::SourceNotDir {
            path: src.to_path_buf(),
        });
    }
    check_overlap(src, dst)?;
    let mut dst_meta = match fs::symlink_metadata(dst) {
        Ok(m) if m.is_dir() => Some(m),
        Ok(_) => {
            fs::remove_file(dst).map_err(|e| io_err("remove", dst, e))?;
            None
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("read", dst, e)),
    };
    if dst_meta.is_none() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dst)
            .map_err(|e| io_err("create directory", dst, e))?;
        // Re-read: an empty directory already there is as good as a new one, and the walk
        // needs its actual mode.
        dst_meta = Some(fs::symlink_metadata(dst).map_err(|e| io_err("read", dst, e))?);
    }

    let syncer = Syncer::new(opts);
    let mut stats = SyncStats::default();
    let root = DirJob {
        src: src.to_path_buf(),
        dst: dst.to_path_buf(),
        base: opts.link_base.as_ref().map(|b| b.path.to_path_buf()),
        src_meta,
        dst_meta,
    };
    syncer.sync_dir(&root, true, &mut stats)?;

    if opts.durable {
        let dir = File::open(dst).map_err(|e| io_err("open", dst, e))?;
        nix::unistd::syncfs(&dir).map_err(|e| io_err("flush to disk", dst, e.into()))?;
    }
    Ok(stats)
}

/// Syncing a tree into itself would copy without end or delete the source: refuse it before
/// anything is created.
fn check_overlap(src: &Path, dst: &Path) -> Result<(), SyncError> {
    let s = fs::canonicalize(src).map_err(|e| io_err("resolve", src, e))?;
    let d = resolve_missing(dst).map_err(|e| io_err("resolve", dst, e))?;
    if s.starts_with(&d) || d.starts_with(&s) {
        return Err(SyncError::Overlap {
            src: src.to_path_buf(),
            dst: dst.to_path_buf(),
        });
    }
    Ok(())
}

/// `path` with its deepest existing ancestor resolved. The last component is never resolved,
/// because a symlink at dst is replaced, not followed.
fn resolve_missing(path: &Path) -> io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    let mut rest = Vec::new();
    let mut cur = absolute.as_path();
    if let (Some(parent), Some(name)) = (cur.parent(), cur.file_name()) {
        rest.push(name.to_os_string());
        cur = parent;
    }
    loop {
        match fs::canonicalize(cur) {
            Ok(mut resolved) => {
                resolved.extend(rest.iter().rev());
                return Ok(resolved);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match (cur.parent(), cur.file_name()) {
                    (Some(parent), Some(name)) => {
                        rest.push(name.to_os_string());
                        cur = parent;
                    }
                    _ => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// One directory to sync. A subdirectory that is already in dst carries its lstat so it is
/// not read twice; a new one has `dst_meta: None`.
struct DirJob {
    src: PathBuf,
    dst: PathBuf,
    base: Option<PathBuf>,
    src_meta: Metadata,
    dst_meta: Option<Metadata>,
}

struct Child {
    name: OsString,
    meta: Metadata,
}

struct Syncer {
    /// Files with an mtime at or past this (ns since the epoch) are never linked from the base.
    racy_from_ns: i128,
    temp_seq: AtomicU64,
    pid: u32,
    threads: usize,
    /// Set by a worker thread that failed, so that the others stop early.
    failed: AtomicBool,
}

const RACY_WINDOW_NS: i128 = 2_000_000_000;
const MAX_THREADS: usize = 4;

impl Syncer {
    fn new(opts: &SyncOptions) -> Syncer {
        let racy_from_ns = match &opts.link_base {
            Some(base) => system_time_ns(base.taken_at) - RACY_WINDOW_NS,
            None => i128::MIN,
        };
        Syncer {
            racy_from_ns,
            temp_seq: AtomicU64::new(0),
            pid: std::process::id(),
            // Most of the time goes into the kernel (stat, open, copy_file_range), which runs
            // in parallel across cores; more threads than cores only adds contention.
            threads: std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS)),
            failed: AtomicBool::new(false),
        }
    }

    /// Sync one directory's entries, recursing into subdirectories, then give the directory
    /// its mode and mtime: last, because every entry created or removed changes its mtime.
    ///
    /// With `fan_out`, subdirectories are synced on worker threads once the tree branches.
    fn sync_dir(
        &self,
        job: &DirJob,
        fan_out: bool,
        stats: &mut SyncStats,
    ) -> Result<(), SyncError> {
        if self.failed.load(Ordering::Relaxed) {
            return Ok(()); // another worker failed; its error is the one reported
        }
        let (src, dst, base) = (job.src.as_path(), job.dst.as_path(), job.base.as_deref());
        let (src_meta, dst_meta) = (&job.src_meta, job.dst_meta.as_ref());
        let src_children = read_children(src)?;
        // Refuse before touching this directory rather than half way through it.
        if let Some(c) = src_children
            .iter()
            .find(|c| Kind::of(&c.meta) == Kind::Other)
        {
            return Err(SyncError::Special {
                path: src.join(&c.name),
            });
        }
        let dst_children = match dst_meta {
            Some(_) => read_children(dst)?,
            None => Vec::new(),
        };
        let mut dst_mode = dst_meta.map(|m| m.mode() & 0o7777);
        if let Some(mode) = dst_mode
            && mode & 0o700 != 0o700
        {
            // Changing a directory's entries needs owner write and search permission (for a
            // caller that is not root); the final mode is restored below.
            set_mode(dst, mode | 0o700)?;
            dst_mode = Some(mode | 0o700);
        }
        let mut touched = false;
        let mut subdirs = Vec::new();

        let mut d_iter = dst_children.iter().peekable();
        for s in &src_children {
            // Everything in dst that sorts before this name is not in src.
            while let Some(d) = d_iter.next_if(|d| name_lt(&d.name, &s.name)) {
                remove_entry(&dst.join(&d.name), &d.meta)?;
                stats.removed += 1;
                touched = true;
            }
            let d = d_iter.next_if(|d| d.name == s.name);
            touched |=
                self.sync_entry(src, dst, base, s, d.map(|d| &d.meta), &mut subdirs, stats)?;
        }
        for d in d_iter {
            remove_entry(&dst.join(&d.name), &d.meta)?;
            stats.removed += 1;
            touched = true;
        }
        self.sync_subdirs(&subdirs, fan_out, stats)?;

        let mode = src_meta.mode() & 0o7777;
        if dst_mode != Some(mode) {
            set_mode(dst, mode)?;
        }
        if touched || dst_meta.is_none_or(|d| !same_mtime(src_meta, d)) {
            set_mtime(dst, src_meta)?;
        }
        Ok(())
    }

    /// Sync the subdirectories of one directory: on this thread, or, with `fan_out`, on
    /// worker threads as soon as there are two or more of them. Below a single subdirectory
    /// the search for a branching point goes on, so `app/` alone at the top still fans out.
    fn sync_subdirs(
        &self,
        jobs: &[DirJob],
        fan_out: bool,
        stats: &mut SyncStats,
    ) -> Result<(), SyncError> {
        if !fan_out || self.threads < 2 || jobs.len() < 2 {
            for job in jobs {
                self.sync_dir(job, fan_out && jobs.len() == 1, stats)?;
            }
            return Ok(());
        }
        let next = AtomicUsize::new(0);
        let worker = || {
            let mut stats = SyncStats::default();
            while let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                if let Err(e) = self.sync_dir(job, false, &mut stats) {
                    self.failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
            Ok(stats)
        };
        let results: Vec<_> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..self.threads.min(jobs.len()))
                .map(|_| scope.spawn(worker))
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        for result in results {
            stats.add(&result?);
        }
        Ok(())
    }

    /// Returns whether `dst`'s directory entries changed (so its mtime must be set again).
    /// Subdirectories are not synced here but pushed to `subdirs`.
    #[allow(clippy::too_many_arguments)]
    fn sync_entry(
        &self,
        src_dir: &Path,
        dst_dir: &Path,
        base_dir: Option<&Path>,
        s: &Child,
        d: Option<&Metadata>,
        subdirs: &mut Vec<DirJob>,
        stats: &mut SyncStats,
    ) -> Result<bool, SyncError> {
        let src = src_dir.join(&s.name);
        let dst = dst_dir.join(&s.name);
        let d_kind = d.map(Kind::of);
        match Kind::of(&s.meta) {
            Kind::File => {
                if let Some(d) = d
                    && d_kind == Some(Kind::File)
                    && d.size() == s.meta.size()
                    && same_mtime(&s.meta, d)
                {
                    let mode = s.meta.mode() & 0o7777;
                    if d.mode() & 0o7777 == mode {
                        stats.unchanged += 1;
                        return Ok(false);
                    }
                    // A chmod on an inode with other names (a file linked from a snapshot)
                    // would change the snapshot too: replace the file instead.
                    if d.nlink() == 1 {
                        set_mode(&dst, mode)?;
                        stats.unchanged += 1;
                        return Ok(false);
                    }
                }
                let base = base_dir.map(|b| b.join(&s.name));
                self.place_file(&src, &dst, dst_dir, base.as_deref(), &s.meta, d, stats)?;
                Ok(true)
            }
            Kind::Symlink => {
                let target = fs::read_link(&src).map_err(|e| io_err("read link", &src, e))?;
                if let Some(d) = d
                    && d_kind == Some(Kind::Symlink)
                {
                    let dst_target =
                        fs::read_link(&dst).map_err(|e| io_err("read link", &dst, e))?;
                    if dst_target == target {
                        if !same_mtime(&s.meta, d) {
                            set_mtime(&dst, &s.meta)?;
                        }
                        stats.unchanged += 1;
                        return Ok(false);
                    }
                }
                self.install(dst_dir, &dst, d, "create symlink", |tmp| {
                    std::os::unix::fs::symlink(&target, tmp)
                })?;
                set_mtime(&dst, &s.meta)?;
                stats.copied += 1;
                Ok(true)
            }
            Kind::Dir => {
                let mut job = DirJob {
                    src,
                    dst,
                    base: base_dir.map(|b| b.join(&s.name)),
                    src_meta: s.meta.clone(),
                    dst_meta: None,
                };
                if let Some(d) = d
                    && d_kind == Some(Kind::Dir)
                {
                    stats.unchanged += 1;
                    job.dst_meta = Some(d.clone());
                    subdirs.push(job);
                    return Ok(false);
                }
                let dst = &job.dst;
                if let Some(d) = d {
                    remove_entry(dst, d)?;
                    stats.removed += 1;
                }
                DirBuilder::new()
                    .mode(0o700)
                    .create(dst)
                    .map_err(|e| io_err("create directory", dst, e))?;
                stats.copied += 1;
                subdirs.push(job);
                Ok(true)
            }
            Kind::Other => Err(SyncError::Special { path: src }),
        }
    }

    /// Put a copy of the file `src` at `dst`: hard-linked from the base when the base has it
    /// unchanged, else copied under a temporary name and renamed into place.
    #[allow(clippy::too_many_arguments)]
    fn place_file(
        &self,
        src: &Path,
        dst: &Path,
        dst_dir: &Path,
        base: Option<&Path>,
        meta: &Metadata,
        existing: Option<&Metadata>,
        stats: &mut SyncStats,
    ) -> Result<(), SyncError> {
        if let Some(base) = base
            && self.linkable(base, meta)
        {
            self.install(dst_dir, dst, existing, "link", |tmp| {
                fs::hard_link(base, tmp)
            })?;
            stats.linked += 1;
            return Ok(());
        }

        let mut input = File::open(src).map_err(|e| io_err("open", src, e))?;
        let (tmp, mut output) = self.create_temp_file(dst_dir)?;
        let written = (|| {
            // io::copy between two files uses copy_file_range: no round trip through userspace.
            let n = io::copy(&mut input, &mut output).map_err(|e| io_err("copy", src, e))?;
            output
                .set_permissions(Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(|e| io_err("set mode of", &tmp, e))?;
            futimens(&output, &TimeSpec::UTIME_OMIT, &mtime_spec(meta))
                .map_err(|e| io_err("set mtime of", &tmp, e.into()))?;
            Ok(n)
        })();
        drop(output);
        let n = match written {
            Ok(n) => n,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        self.replace(&tmp, dst, existing)?;
        stats.copied += 1;
        stats.bytes_copied += n;
        Ok(())
    }

    fn linkable(&self, base: &Path, meta: &Metadata) -> bool {
        if mtime_ns(meta) >= self.racy_from_ns {
            return false;
        }
        // Any failure to read the base just means copying: always correct, only slower.
        match fs::symlink_metadata(base) {
            Ok(b) => {
                b.is_file()
                    && b.size() == meta.size()
                    && same_mtime(&b, meta)
                    && b.mode() & 0o7777 == meta.mode() & 0o7777
            }
            Err(_) => false,
        }
    }

    /// Create an entry with `create` and move it to `dst`, replacing what is there. Without
    /// an existing entry there is nothing a reader could see half-made, so `create` makes
    /// `dst` directly and saves a rename.
    fn install(
        &self,
        dst_dir: &Path,
        dst: &Path,
        existing: Option<&Metadata>,
        action: &'static str,
        mut create: impl FnMut(&Path) -> io::Result<()>,
    ) -> Result<(), SyncError> {
        if existing.is_none() {
            return create(dst).map_err(|e| io_err(action, dst, e));
        }
        loop {
            let tmp = dst_dir.join(self.temp_name());
            match create(&tmp) {
                Ok(()) => return self.replace(&tmp, dst, existing),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(action, &tmp, e)),
            }
        }
    }

    fn create_temp_file(&self, dir: &Path) -> Result<(PathBuf, File), SyncError> {
        loop {
            let tmp = dir.join(self.temp_name());
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
            {
                Ok(f) => return Ok((tmp, f)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("create", &tmp, e)),
            }
        }
    }

    /// Rename `tmp` over `dst`. rename(2) replaces a file or symlink atomically, but not a
    /// directory, so a directory in the way is removed first.
    fn replace(
        &self,
        tmp: &Path,
        dst: &Path,
        existing: Option<&Metadata>,
    ) -> Result<(), SyncError> {
        let result = (|| {
            if let Some(e) = existing
                && e.is_dir()
            {
                fs::remove_dir_all(dst).map_err(|e| io_err("remove", dst, e))?;
            }
            fs::rename(tmp, dst).map_err(|e| io_err("rename into place", dst, e))
        })();
        if result.is_err() {
            let _ = fs::remove_file(tmp);
        }
        result
    }

    fn temp_name(&self) -> String {
        let n = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        format!(".kiln-sync.{}.{n}.tmp", self.pid)
    }
}

/// One directory's entries with their lstat, sorted by name bytes.
fn read_children(dir: &Path) -> Result<Vec<Child>, SyncError> {
    let read = fs::read_dir(dir).map_err(|e| io_err("read directory", dir, e))?;
    let mut children = Vec::new();
    for item in read {
        let item = item.map_err(|e| io_err("read directory", dir, e))?;
        // An lstat relative to the open directory handle: no walk down the path again.
        let meta = item
            .metadata()
            .map_err(|e| io_err("read", &item.path(), e))?;
        children.push(Child {
            name: item.file_name(),
            meta,
        });
    }
    children.sort_unstable_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    Ok(children)
}

fn name_lt(a: &OsString, b: &OsString) -> bool {
    a.as_bytes() < b.as_bytes()
}

fn remove_entry(path: &Path, meta: &Metadata) -> Result<(), SyncError> {
    let result = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    result.map_err(|e| io_err("remove", path, e))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), SyncError> {
    fs::set_permissions(path, Permissions::from_mode(mode))
        .map_err(|e| io_err("set mode of", path, e))
}

/// Set the mtime of `path` itself, never of what a symlink points to.
fn set_mtime(path: &Path, from: &Metadata) -> Result<(), SyncError> {
    utimensat(
        AT_FDCWD,
        path,
        &TimeSpec::UTIME_OMIT,
        &mtime_spec(from),
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| io_err("set mtime of", path, e.into()))
}

fn mtime_spec(meta: &Metadata) -> TimeSpec {
    TimeSpec::new(meta.mtime(), meta.mtime_nsec())
}

fn same_mtime(a: &Metadata, b: &Metadata) -> bool {
    a.mtime() == b.mtime() && a.mtime_nsec() == b.mtime_nsec()
}

fn mtime_ns(meta: &Metadata) -> i128 {
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

fn system_time_ns(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

fn io_err(action: &'static str, path: &Path, source: io::Error) -> SyncError {
    SyncError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fs::tree;
    use crate::fs::tree::tests::{N, build, p, set_mtime};
    use std::io::Write;
    use std::time::Duration;

    /// `dst` equals `src`: no metadata difference, the same digest, and the roots' own mode
    /// and mtime (which neither of those looks at) equal too.
    fn assert_identical(src: &Path, dst: &Path, case: &str) {
        assert_eq!(tree::diff(src, dst).unwrap(), vec![], "case: {case}");
        assert_eq!(
            tree::digest(src).unwrap(),
            tree::digest(dst).unwrap(),
            "case: {case}"
        );
        let (s, d) = (
            fs::symlink_metadata(src).unwrap(),
            fs::symlink_metadata(dst).unwrap(),
        );
        assert_eq!(s.mode(), d.mode(), "root mode, case: {case}");
        assert_eq!(
            (s.mtime(), s.mtime_nsec()),
            (d.mtime(), d.mtime_nsec()),
            "root mtime, case: {case}"
        );
        // diff compares these too, but say it outright for every entry: mode and mtime to the
        // nanosecond, for files, directories and symlinks.
        let (se, de) = (tree::scan(src).unwrap(), tree::scan(dst).unwrap());
        assert_eq!(se.len(), de.len(), "case: {case}");
        for (a, b) in se.iter().zip(&de) {
            assert_eq!(
                (
                    &a.path,
                    a.kind,
                    a.mode,
                    a.mtime_sec,
                    a.mtime_nsec,
                    &a.target
                ),
                (
                    &b.path,
                    b.kind,
                    b.mode,
                    b.mtime_sec,
                    b.mtime_nsec,
                    &b.target
                ),
                "case: {case}"
            );
        }
    }

    fn sync(src: &Path, dst: &Path) -> SyncStats {
        sync_tree(src, dst, &SyncOptions::default()).unwrap()
    }

    const APP: &[N] = &[
        N::D(b"app", 0o755),
        N::F(b"app/main.py", b"print(1)\n", 0o644),
        N::F(b"app/run.sh", b"#!/bin/sh\n", 0o755),
        N::D(b"app/static", 0o755),
        N::F(b"app/static/a.css", b"a{}", 0o644),
        N::D(b"app/static/img", 0o755),
        N::F(b"app/static/img/logo.png", b"PNG", 0o644),
        N::L(b"current", b"app"),
        N::L(b"dangling", b"../nowhere/at/all"),
        N::D(b"empty", 0o700),
        N::D(b"empty/nested", 0o750),
        N::F(b"bad\xffname", b"x", 0o600),
        N::F(b"setuid", b"#!/bin/sh\n", 0o4755),
        N::D(b"sticky", 0o1777),
        N::D(b"readonly", 0o555),
        N::F(b"readonly/locked", b"secret", 0o400),
    ];

    #[test]
    fn dst_equals_src_after_sync() {
        // (case, tree in src, what dst held before; None: dst missing)
        type Tree = &'static [N<'static>];
        let cases: &[(&str, Tree, Option<Tree>)] = &[
            ("fresh copy into a missing dst", APP, None),
            ("into an empty dst", APP, Some(&[])),
            ("everything removed", &[], Some(APP)),
            ("already equal", APP, Some(APP)),
            (
                "content changed, files added and deleted",
                // build() gives both main.py the same mtime, so the size must differ.
                &[
                    N::D(b"app", 0o755),
                    N::F(b"app/main.py", b"print(22)\n", 0o644),
                    N::F(b"app/new.py", b"new", 0o644),
                ],
                Some(&[
                    N::D(b"app", 0o755),
                    N::F(b"app/main.py", b"print(1)\n", 0o644),
                    N::F(b"app/old.py", b"old", 0o644),
                ]),
            ),
            (
                "type changes in every direction",
                &[
                    N::D(b"was_file", 0o755),
                    N::F(b"was_file/inner", b"i", 0o644),
                    N::F(b"was_dir", b"now a file", 0o644),
                    N::L(b"was_dir2", b"somewhere"),
                    N::F(b"was_link", b"now a file", 0o644),
                    N::D(b"was_link2", 0o755),
                    N::L(b"was_file2", b"was_dir"),
                ],
                Some(&[
                    N::F(b"was_file", b"f", 0o644),
                    N::D(b"was_dir", 0o755),
                    N::F(b"was_dir/inner", b"i", 0o644),
                    N::D(b"was_dir2", 0o755),
                    N::D(b"was_dir2/deeper", 0o755),
                    N::F(b"was_dir2/deeper/x", b"x", 0o644),
                    N::L(b"was_link", b"was_file"),
                    N::L(b"was_link2", b"nowhere"),
                    N::F(b"was_file2", b"f", 0o644),
                ]),
            ),
            (
                "extra nested dirs removed",
                &[N::D(b"a", 0o755)],
                Some(&[
                    N::D(b"a", 0o755),
                    N::D(b"a/b", 0o755),
                    N::D(b"a/b/c", 0o755),
                    N::F(b"a/b/c/d", b"d", 0o644),
                    N::D(b"a/b/e", 0o500),
                    N::D(b"x", 0o755),
                    N::D(b"x/y", 0o755),
                ]),
            ),
            (
                "symlink retargeted, dangling kept",
                &[N::L(b"l", b"new-target"), N::L(b"d", b"missing")],
                Some(&[N::L(b"l", b"old-target"), N::L(b"d", b"missing")]),
            ),
            (
                "read-only dirs in dst are changed too",
                &[N::D(b"ro", 0o555), N::F(b"ro/f", b"newer", 0o444)],
                Some(&[
                    N::D(b"ro", 0o500),
                    N::F(b"ro/f", b"old", 0o444),
                    N::F(b"ro/g", b"", 0o444),
                ]),
            ),
        ];
        for (case, src_tree, dst_tree) in cases {
            let tmp = tempfile::tempdir().unwrap();
            let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
            build(&src, src_tree);
            if let Some(dst_tree) = dst_tree {
                build(&dst, dst_tree);
                // Different root metadata, so that the test sees it being set.
                set_mtime(&dst, 1, 1);
            }
            sync(&src, &dst);
            assert_identical(&src, &dst, case);
            let again = sync(&src, &dst);
            assert_eq!(
                (
                    again.copied,
                    again.linked,
                    again.removed,
                    again.bytes_copied
                ),
                (0, 0, 0, 0),
                "second sync must find nothing to do, case: {case}"
            );
            assert_identical(&src, &dst, case);
        }
    }

    #[test]
    fn stats_count_what_was_done() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        build(
            &src,
            &[
                N::D(b"d", 0o755),
                N::F(b"d/same", b"same", 0o644),
                N::F(b"d/changed", b"12345", 0o644),
                N::F(b"d/added", b"123", 0o644),
                N::L(b"link", b"d"),
            ],
        );
        build(
            &dst,
            &[
                N::D(b"d", 0o755),
                N::F(b"d/same", b"same", 0o644),
                N::F(b"d/changed", b"1234", 0o644),
                N::D(b"gone", 0o755),
                N::F(b"gone/inside", b"", 0o644),
            ],
        );
        let stats = sync(&src, &dst);
        assert_eq!(
            stats,
            SyncStats {
                copied: 3,
                linked: 0,
                removed: 1,
                unchanged: 2, // d/same and d itself
                bytes_copied: 8,
            }
        );
        assert_identical(&src, &dst, "stats");
    }

    #[test]
    fn same_size_rewrite_in_the_same_second_is_copied() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        build(&src, &[N::F(b"f", b"aaaa", 0o644)]);
        set_mtime(&src.join("f"), 1_700_000_000, 100);
        sync(&src, &dst);
        fs::write(src.join("f"), b"bbbb").unwrap();
        set_mtime(&src.join("f"), 1_700_000_000, 200);
        let stats = sync(&src, &dst);
        assert_eq!((stats.copied, stats.bytes_copied), (1, 4));
        assert_eq!(fs::read(dst.join("f")).unwrap(), b"bbbb");
        assert_identical(&src, &dst, "ns rewrite");
    }

    #[test]
    fn quick_check_trusts_size_and_mtime_without_reading_content() {
        // Pins the documented behaviour: equal size and nanosecond mtime means unchanged.
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        build(&src, &[N::F(b"f", b"aaaa", 0o644)]);
        build(&dst, &[N::F(b"f", b"zzzz", 0o644)]);
        let stats = sync(&src, &dst);
        assert_eq!((stats.copied, stats.unchanged), (0, 1));
        assert_eq!(fs::read(dst.join("f")).unwrap(), b"zzzz");
    }

    #[test]
    fn mode_only_change_is_a_chmod_not_a_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        build(&src, &[N::F(b"f", b"data", 0o644), N::D(b"d", 0o755)]);
        sync(&src, &dst);
        let ino = fs::metadata(dst.join("f")).unwrap().ino();
        fs::set_permissions(src.join("f"), Permissions::from_mode(0o6750)).unwrap();
        fs::set_permissions(src.join("d"), Permissions::from_mode(0o2700)).unwrap();
        let stats = sync(&src, &dst);
        assert_eq!((stats.copied, stats.bytes_copied), (0, 0));
        assert_eq!(fs::metadata(dst.join("f")).unwrap().ino(), ino);
        assert_eq!(fs::metadata(dst.join("f")).unwrap().mode() & 0o7777, 0o6750);
        assert_identical(&src, &dst, "chmod");
    }

    #[test]
    fn dir_mtimes_survive_changes_deep_below_them() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        build(
            &src,
            &[
                N::D(b"a", 0o755),
                N::D(b"a/b", 0o755),
                N::F(b"a/b/f", b"1", 0o644),
            ],
        );
        sync(&src, &dst);
        // Change only the deepest level; each parent's mtime in dst must still match src.
        fs::remove_file(src.join("a/b/f")).unwrap();
        fs::write(src.join("a/b/g"), b"2").unwrap();
        set_mtime(&src.join("a/b"), 1_650_000_000, 5);
        sync(&src, &dst);
        assert_identical(&src, &dst, "deep change");
    }

    #[test]
    fn copies_are_not_links_to_src_and_ignore_later_writes_to_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, snap1, snap2) = (
            tmp.path().join("src"),
            tmp.path().join("snap1"),
            tmp.path().join("snap2"),
        );
        build(&src, &[N::F(b"db", b"version-1", 0o644)]);
        sync(&src, &snap1);
        let base = LinkBase {
            path: &snap1,
            taken_at: SystemTime::now(),
        };
        let opts = SyncOptions {
            link_base: Some(base),
            durable: false,
        };
        sync_tree(&src, &snap2, &opts).unwrap();
        let src_ino = fs::metadata(src.join("db")).unwrap().ino();
        for snap in [&snap1, &snap2] {
            assert_ne!(fs::metadata(snap.join("db")).unwrap().ino(), src_ino);
        }
        // In place: same inode, no truncation, like a database writing its pages.
        let mut f = OpenOptions::new().write(true).open(src.join("db")).unwrap();
        f.write_all(b"VERSION").unwrap();
        drop(f);
        for snap in [&snap1, &snap2] {
            assert_eq!(fs::read(snap.join("db")).unwrap(), b"version-1");
        }
    }

    #[test]
    fn link_base_links_unchanged_files_and_copies_changed_and_racy_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, base, snap) = (
            tmp.path().join("src"),
            tmp.path().join("base"),
            tmp.path().join("snap"),
        );
        build(
            &src,
            &[
                N::D(b"d", 0o755),
                N::F(b"d/unchanged", b"u", 0o644),
                N::F(b"d/rewritten", b"r1", 0o644),
                N::F(b"d/touched", b"t", 0o644),
                N::F(b"d/chmodded", b"c", 0o644),
                N::F(b"racy", b"same", 0o644),
                N::F(b"removed", b"", 0o644),
            ],
        );
        let taken_at = SystemTime::now();
        // Written just before the base snapshot: a rewrite in the same tick could look the
        // same, so it must not be trusted even though its metadata matches the base.
        let racy_time = taken_at - Duration::from_millis(1500);
        let racy = racy_time.duration_since(UNIX_EPOCH).unwrap();
        set_mtime(
            &src.join("racy"),
            racy.as_secs() as i64,
            racy.subsec_nanos() as i64,
        );
        sync(&src, &base);

        fs::write(src.join("d/rewritten"), b"r2").unwrap();
        set_mtime(&src.join("d/rewritten"), 1_600_000_002, 2008);
        set_mtime(&src.join("d/touched"), 1_600_000_003, 1);
        fs::set_permissions(src.join("d/chmodded"), Permissions::from_mode(0o600)).unwrap();
        fs::remove_file(src.join("removed")).unwrap();
        fs::write(src.join("added"), b"new").unwrap();

        let opts = SyncOptions {
            link_base: Some(LinkBase {
                path: &base,
                taken_at,
            }),
            durable: true,
        };
        let stats = sync_tree(&src, &snap, &opts).unwrap();
        assert_identical(&src, &snap, "link base");
        let ino = |root: &Path, name: &str| fs::metadata(root.join(name)).unwrap().ino();
        let cases = [
            ("d/unchanged", true),
            ("d/rewritten", false),
            ("d/touched", false),
            ("d/chmodded", false),
            ("racy", false),
        ];
        for (name, linked) in cases {
            assert_eq!(ino(&snap, name) == ino(&base, name), linked, "file: {name}");
            assert_ne!(ino(&snap, name), ino(&src, name), "file: {name}");
        }
        assert_eq!(
            (stats.linked, stats.copied, stats.removed),
            (1, 6, 0),
            "{stats:?}"
        );
        assert!(base.join("removed").exists());
    }

    #[test]
    fn chmod_in_a_linked_snapshot_leaves_the_base_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, base, snap) = (
            tmp.path().join("src"),
            tmp.path().join("base"),
            tmp.path().join("snap"),
        );
        build(&src, &[N::F(b"f", b"data", 0o644)]);
        sync(&src, &base);
        let opts = SyncOptions {
            link_base: Some(LinkBase {
                path: &base,
                taken_at: SystemTime::now(),
            }),
            durable: false,
        };
        sync_tree(&src, &snap, &opts).unwrap();
        assert_eq!(
            fs::metadata(snap.join("f")).unwrap().ino(),
            fs::metadata(base.join("f")).unwrap().ino()
        );
        fs::set_permissions(src.join("f"), Permissions::from_mode(0o600)).unwrap();
        sync(&src, &snap);
        assert_eq!(fs::metadata(base.join("f")).unwrap().mode() & 0o7777, 0o644);
        assert_identical(&src, &snap, "chmod after link");
    }

    #[test]
    fn special_files_are_refused_before_their_dir_is_touched() {
        // The fifo at the top, below a lone subdirectory, and inside one of several
        // subdirectories (synced on worker threads).
        let cases: &[&[u8]] = &[b"fifo", b"d/fifo", b"d/e/fifo"];
        for fifo_at in cases {
            let tmp = tempfile::tempdir().unwrap();
            let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
            build(
                &src,
                &[
                    N::D(b"d", 0o755),
                    N::D(b"d/a", 0o755),
                    N::D(b"d/e", 0o755),
                    N::F(b"d/e/f", b"f", 0o644),
                    N::D(b"d/z", 0o755),
                ],
            );
            let fifo = src.join(p(fifo_at));
            fs::write(fifo.with_file_name("f"), b"next to the fifo").unwrap();
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
            let err = sync_tree(&src, &dst, &SyncOptions::default()).unwrap_err();
            assert!(
                matches!(&err, SyncError::Special { path } if *path == fifo),
                "{err:?}"
            );
            let sibling = dst.join(p(fifo_at)).with_file_name("f");
            assert!(!sibling.exists(), "{}", sibling.display());
        }
    }

    #[test]
    fn dst_that_is_not_a_dir_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        build(&src, APP);
        for make in [
            (|d: &Path| fs::write(d, b"file").unwrap()) as fn(&Path),
            |d| std::os::unix::fs::symlink("src", d).unwrap(),
        ] {
            let _ = fs::remove_dir_all(&dst);
            make(&dst);
            sync(&src, &dst);
            assert!(fs::symlink_metadata(&dst).unwrap().is_dir());
            assert_identical(&src, &dst, "dst replaced");
        }
        // The symlink was replaced, not followed: src is intact.
        assert_eq!(tree::diff(&src, &dst).unwrap(), vec![]);
    }

    #[test]
    fn overlapping_trees_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        build(&src, APP);
        for dst in [src.join("app/copy"), src.clone(), tmp.path().to_path_buf()] {
            let err = sync_tree(&src, &dst, &SyncOptions::default()).unwrap_err();
            assert!(matches!(err, SyncError::Overlap { .. }), "{err:?}");
        }
        assert!(!src.join("app/copy").exists());
    }

    #[test]
    fn stale_temp_files_in_dst_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        build(&src, &[N::F(b"f", b"data", 0o644)]);
        build(&dst, &[N::F(b".kiln-sync.1.0.tmp", b"half", 0o600)]);
        let stats = sync(&src, &dst);
        assert_eq!(stats.removed, 1);
        assert_identical(&src, &dst, "stale temp");
    }
}
