//! Walking and comparing directory trees without following symlinks.
//!
//! Two questions come up around a release switch: "is this unpacked tree exactly what staging
//! baked?" ([`digest`], content only, so it survives a tarball round trip that loses
//! timestamps) and "what did an operator change by hand in run/?" ([`diff`], metadata only, so
//! it is cheap enough to run on every deploy of a 100,000-file app).

use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("cannot {action} `{path}`")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{path}` is a device, fifo or socket, which a release tree must not contain")]
    Special { path: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// A device node, fifo or socket.
    Other,
}

impl Kind {
    pub fn of(meta: &Metadata) -> Kind {
        let ft = meta.file_type();
        if ft.is_file() {
            Kind::File
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else {
            debug_assert!(
                ft.is_block_device() || ft.is_char_device() || ft.is_fifo() || ft.is_socket()
            );
            Kind::Other
        }
    }

    fn tag(self) -> u8 {
        match self {
            Kind::File => b'f',
            Kind::Dir => b'd',
            Kind::Symlink => b'l',
            Kind::Other => b'o',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the scanned root; raw bytes, possibly not UTF-8.
    pub path: PathBuf,
    pub kind: Kind,
    /// `st_mode & 0o7777`: permission bits including setuid, setgid and sticky.
    pub mode: u32,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
    /// The link's target, for symlinks only.
    pub target: Option<PathBuf>,
}

/// Every entry under `root` (the root itself excluded), sorted by path bytes. Symlinks are
/// reported as links, never followed; `root` itself may be a symlink to a directory.
pub fn scan(root: &Path) -> Result<Vec<Entry>, TreeError> {
    let mut entries = Vec::new();
    scan_dir(root, Path::new(""), &mut entries)?;
    entries.sort_unstable_by(|a, b| {
        a.path
            .as_os_str()
            .as_bytes()
            .cmp(b.path.as_os_str().as_bytes())
    });
    Ok(entries)
}

fn scan_dir(root: &Path, rel: &Path, out: &mut Vec<Entry>) -> Result<(), TreeError> {
    let dir = root.join(rel);
    let read = fs::read_dir(&dir).map_err(|source| io_err("read directory", &dir, source))?;
    for item in read {
        let item = item.map_err(|source| io_err("read directory", &dir, source))?;
        // DirEntry::metadata is an lstat relative to the open directory: no path walk.
        let meta = item
            .metadata()
            .map_err(|source| io_err("stat", &item.path(), source))?;
        let path = rel.join(item.file_name());
        let kind = Kind::of(&meta);
        let target = match kind {
            Kind::Symlink => {
                let full = item.path();
                Some(fs::read_link(&full).map_err(|source| io_err("read link", &full, source))?)
            }
            _ => None,
        };
        out.push(Entry {
            path,
            kind,
            mode: meta.mode() & 0o7777,
            size: meta.size(),
            mtime_sec: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            target,
        });
        if kind == Kind::Dir {
            let sub = out[out.len() - 1].path.clone();
            scan_dir(root, &sub, out)?;
        }
    }
    Ok(())
}

/// A `sha256:<hex>` digest of the tree's names, kinds, permission bits, file contents and
/// symlink targets. Timestamps, owners and the root directory's own metadata are left out,
/// so an unpacked copy of a tree has the digest of the original.
pub fn digest(root: &Path) -> Result<String, TreeError> {
    let entries = scan(root)?;
    let mut tree = Sha256::new();
    let mut buf = vec![0u8; 128 * 1024];
    for entry in &entries {
        // Length prefixes keep the encoding unambiguous whatever bytes a name holds.
        let path = entry.path.as_os_str().as_bytes();
        tree.update((path.len() as u64).to_le_bytes());
        tree.update(path);
        tree.update([entry.kind.tag()]);
        tree.update(entry.mode.to_le_bytes());
        match entry.kind {
            Kind::File => {
                let full = root.join(&entry.path);
                tree.update(hash_file(&full, &mut buf)?);
            }
            Kind::Symlink => {
                let target = entry.target.as_deref().unwrap_or(Path::new(""));
                let target = target.as_os_str().as_bytes();
                tree.update((target.len() as u64).to_le_bytes());
                tree.update(target);
            }
            Kind::Dir => {}
            Kind::Other => {
                return Err(TreeError::Special {
                    path: root.join(&entry.path),
                });
            }
        }
    }
    Ok(format!("sha256:{}", hex::encode(tree.finalize())))
}

fn hash_file(path: &Path, buf: &mut [u8]) -> Result<[u8; 32], TreeError> {
    let mut file = File::open(path).map_err(|source| io_err("open", path, source))?;
    let mut hasher = Sha256::new();
    loop {
        let n = match file.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(io_err("read", path, source)),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Removed,
    Modified,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub path: PathBuf,
    pub kind: ChangeKind,
}

/// What differs between two trees by metadata: kind, permission bits, size, mtime to the
/// nanosecond and symlink target. Sorted by path bytes; a removed (or added) directory is
/// reported together with everything under it.
///
/// A directory's size is not compared: on ext4 a directory never shrinks, so two directories
/// with the same entries can differ in size for reasons no one can see or fix.
pub fn diff(old_root: &Path, new_root: &Path) -> Result<Vec<Change>, TreeError> {
    let old = scan(old_root)?;
    let new = scan(new_root)?;
    let mut changes = Vec::new();
    let (mut i, mut j) = (0, 0);
    loop {
        let change = match (old.get(i), new.get(j)) {
            (None, None) => break,
            (Some(o), None) => {
                i += 1;
                Change {
                    path: o.path.clone(),
                    kind: ChangeKind::Removed,
                }
            }
            (None, Some(n)) => {
                j += 1;
                Change {
                    path: n.path.clone(),
                    kind: ChangeKind::Added,
                }
            }
            (Some(o), Some(n)) => match o
                .path
                .as_os_str()
                .as_bytes()
                .cmp(n.path.as_os_str().as_bytes())
            {
                std::cmp::Ordering::Less => {
                    i += 1;
                    Change {
                        path: o.path.clone(),
                        kind: ChangeKind::Removed,
                    }
                }
                std::cmp::Ordering::Greater => {
                    j += 1;
                    Change {
                        path: n.path.clone(),
                        kind: ChangeKind::Added,
                    }
                }
                std::cmp::Ordering::Equal => {
                    i += 1;
                    j += 1;
                    if same_metadata(o, n) {
                        continue;
                    }
                    Change {
                        path: n.path.clone(),
                        kind: ChangeKind::Modified,
                    }
                }
            },
        };
        changes.push(change);
    }
    Ok(changes)
}

fn same_metadata(a: &Entry, b: &Entry) -> bool {
    a.kind == b.kind
        && a.mode == b.mode
        && (a.kind == Kind::Dir || a.size == b.size)
        && a.mtime_sec == b.mtime_sec
        && a.mtime_nsec == b.mtime_nsec
        && a.target == b.target
}

/// Gives every regular file under `root` that has other names (hard links, e.g. to the live
/// release's immutable tree) a copy of its own, with its mode and mtime, so that writing to
/// it cannot change the other names. Returns how many files were copied.
pub fn break_hard_links(root: &Path) -> Result<u64, TreeError> {
    let mut copied = 0;
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(root).to_path_buf();
            io_err("read directory", &path, io::Error::other(e.to_string()))
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let path = entry.path();
        let meta = fs::symlink_metadata(path).map_err(|source| io_err("stat", path, source))?;
        if meta.nlink() < 2 {
            continue;
        }
        let mut name = std::ffi::OsString::from(".kiln-unshare-");
        name.push(entry.file_name());
        let tmp = path.with_file_name(name);
        // fs::copy gives the copy the file's permission bits.
        fs::copy(path, &tmp).map_err(|source| io_err("copy", path, source))?;
        let times = fs::FileTimes::new()
            .set_accessed(
                meta.accessed()
                    .map_err(|source| io_err("stat", path, source))?,
            )
            .set_modified(
                meta.modified()
                    .map_err(|source| io_err("stat", path, source))?,
            );
        File::open(&tmp)
            .and_then(|file| file.set_times(times))
            .and_then(|()| fs::rename(&tmp, path))
            .map_err(|source| {
                let _ = fs::remove_file(&tmp);
                io_err("copy", path, source)
            })?;
        copied += 1;
    }
    Ok(copied)
}

fn io_err(action: &'static str, path: &Path, source: io::Error) -> TreeError {
    TreeError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {

    #[test]
    fn break_hard_links_keeps_content_mode_and_mtime_and_frees_the_other_name() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let live = tmp.path().join("live");
        let build = tmp.path().join("build");
        fs::create_dir_all(live.join("d")).unwrap();
        fs::create_dir_all(build.join("d")).unwrap();
        fs::write(live.join("d/f"), "live").unwrap();
        fs::set_permissions(live.join("d/f"), fs::Permissions::from_mode(0o751)).unwrap();
        let then = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::new(1_600_000_000, 7);
        File::options()
            .write(true)
            .open(live.join("d/f"))
            .unwrap()
            .set_modified(then)
            .unwrap();
        fs::hard_link(live.join("d/f"), build.join("d/f")).unwrap();
        fs::write(build.join("own"), "own").unwrap();
        assert_eq!(break_hard_links(&build).unwrap(), 1);
        assert_eq!(break_hard_links(&build).unwrap(), 0);
        let meta = fs::metadata(build.join("d/f")).unwrap();
        assert_eq!(meta.nlink(), 1);
        assert_eq!(meta.permissions().mode() & 0o7777, 0o751);
        assert_eq!(meta.modified().unwrap(), then);
        fs::write(build.join("d/f"), "changed by a build").unwrap();
        assert_eq!(fs::read_to_string(live.join("d/f")).unwrap(), "live");
        assert_eq!(fs::read_dir(build.join("d")).unwrap().count(), 1);
    }

    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::fs::{PermissionsExt, symlink};

    use nix::fcntl::AT_FDCWD;
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;

    /// One entry of a test tree; paths and contents are bytes so that names need not be UTF-8.
    pub(crate) enum N<'a> {
        F(&'a [u8], &'a [u8], u32),
        D(&'a [u8], u32),
        L(&'a [u8], &'a [u8]),
    }

    pub(crate) fn p(bytes: &[u8]) -> &Path {
        Path::new(OsStr::from_bytes(bytes))
    }

    pub(crate) fn set_mtime(path: &Path, sec: i64, nsec: i64) {
        utimensat(
            AT_FDCWD,
            path,
            &TimeSpec::UTIME_OMIT,
            &TimeSpec::new(sec, nsec),
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    /// Build `nodes` under `root` (parents before children) with distinct, fixed mtimes in
    /// the past, so that nothing depends on when the test runs.
    pub(crate) fn build(root: &Path, nodes: &[N]) {
        fs::create_dir_all(root).unwrap();
        for node in nodes {
            match *node {
                N::F(path, content, mode) => {
                    let path = root.join(p(path));
                    fs::write(&path, content).unwrap();
                    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
                }
                N::D(path, mode) => {
                    let path = root.join(p(path));
                    fs::create_dir(&path).unwrap();
                    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
                }
                N::L(path, target) => symlink(p(target), root.join(p(path))).unwrap(),
            }
        }
        // Children first: setting a child's mtime leaves its parent's alone.
        for (i, node) in nodes.iter().enumerate().rev() {
            let (N::F(path, ..) | N::D(path, _) | N::L(path, _)) = *node;
            set_mtime(
                &root.join(p(path)),
                1_600_000_000 + i as i64,
                1000 * i as i64 + 7,
            );
        }
        set_mtime(root, 1_500_000_000, 123_456_789);
    }

    fn changes(list: &[(&[u8], ChangeKind)]) -> Vec<Change> {
        list.iter()
            .map(|(path, kind)| Change {
                path: p(path).to_path_buf(),
                kind: *kind,
            })
            .collect()
    }

    const BASE: &[N] = &[
        N::D(b"app", 0o755),
        N::F(b"app/main.py", b"print(1)\n", 0o644),
        N::F(b"app/run.sh", b"#!/bin/sh\n", 0o755),
        N::D(b"app/static", 0o755),
        N::F(b"app/static/a.css", b"a{}", 0o644),
        N::F(b"app/static/b.css", b"b{}", 0o644),
        N::L(b"current", b"app"),
        N::F(b"bad\xffname", b"x", 0o600),
    ];

    #[test]
    fn scan_sorts_by_bytes_and_keeps_raw_names() {
        let tmp = tempfile::tempdir().unwrap();
        build(
            tmp.path(),
            &[
                N::D(b"a", 0o755),
                N::F(b"a/b", b"1", 0o644),
                N::F(b"a-b", b"22", 0o4755),
                N::L(b"z\xfe", b"nowhere"),
            ],
        );
        let entries = scan(tmp.path()).unwrap();
        let paths: Vec<&[u8]> = entries
            .iter()
            .map(|e| e.path.as_os_str().as_bytes())
            .collect();
        // Byte order puts `a-b` before `a/b`, unlike Path's component order.
        assert_eq!(paths, vec![&b"a"[..], b"a-b", b"a/b", b"z\xfe"]);
        assert_eq!(entries[1].mode, 0o4755);
        assert_eq!(entries[1].size, 2);
        assert_eq!(entries[1].kind, Kind::File);
        assert_eq!(entries[0].kind, Kind::Dir);
        assert_eq!(entries[3].kind, Kind::Symlink);
        assert_eq!(entries[3].target.as_deref(), Some(p(b"nowhere")));
        assert_eq!(
            (entries[2].mtime_sec, entries[2].mtime_nsec),
            (1_600_000_001, 1007)
        );
    }

    type Edit = fn(&Path);
    type Expected = &'static [(&'static [u8], ChangeKind)];

    #[test]
    fn diff_reports_each_kind_of_change() {
        let cases: &[(&str, Edit, Expected)] = &[
            ("no change", |_| {}, &[]),
            (
                "content rewritten, size changed, mtime kept",
                |r| {
                    let f = r.join("app/main.py");
                    fs::write(&f, b"print(22)\n").unwrap();
                    set_mtime(&f, 1_600_000_001, 1007);
                },
                &[(b"app/main.py", ChangeKind::Modified)],
            ),
            (
                "only the nanoseconds of an mtime",
                |r| set_mtime(&r.join("app/run.sh"), 1_600_000_002, 2008),
                &[(b"app/run.sh", ChangeKind::Modified)],
            ),
            (
                "mode only",
                |r| {
                    fs::set_permissions(r.join("app/run.sh"), fs::Permissions::from_mode(0o700))
                        .unwrap()
                },
                &[(b"app/run.sh", ChangeKind::Modified)],
            ),
            (
                "symlink retargeted",
                |r| {
                    fs::remove_file(r.join("current")).unwrap();
                    symlink("app/static", r.join("current")).unwrap();
                    set_mtime(&r.join("current"), 1_600_000_006, 6007);
                },
                &[(b"current", ChangeKind::Modified)],
            ),
            (
                "file added in a dir whose mtime is restored",
                |r| {
                    fs::write(r.join("app/static/c.css"), b"c").unwrap();
                    set_mtime(&r.join("app/static"), 1_600_000_003, 3007);
                },
                &[(b"app/static/c.css", ChangeKind::Added)],
            ),
            (
                "directory removed with its content",
                |r| {
                    fs::remove_dir_all(r.join("app/static")).unwrap();
                    set_mtime(&r.join("app"), 1_600_000_000, 7);
                },
                &[
                    (b"app/static", ChangeKind::Removed),
                    (b"app/static/a.css", ChangeKind::Removed),
                    (b"app/static/b.css", ChangeKind::Removed),
                ],
            ),
            (
                "directory replaced by a file",
                |r| {
                    fs::remove_dir_all(r.join("app/static")).unwrap();
                    fs::write(r.join("app/static"), b"").unwrap();
                    set_mtime(&r.join("app"), 1_600_000_000, 7);
                },
                &[
                    (b"app/static", ChangeKind::Modified),
                    (b"app/static/a.css", ChangeKind::Removed),
                    (b"app/static/b.css", ChangeKind::Removed),
                ],
            ),
            (
                "non-utf8 name removed, dir mtime changed by it",
                |r| fs::remove_file(r.join(p(b"bad\xffname"))).unwrap(),
                &[(b"bad\xffname", ChangeKind::Removed)],
            ),
        ];
        for (name, edit, expected) in cases {
            let tmp = tempfile::tempdir().unwrap();
            let (old, new) = (tmp.path().join("old"), tmp.path().join("new"));
            build(&old, BASE);
            build(&new, BASE);
            edit(&new);
            assert_eq!(diff(&old, &new).unwrap(), changes(expected), "case: {name}");
            // The same changes seen the other way round: added and removed swap.
            let reversed: Vec<Change> = changes(expected)
                .into_iter()
                .map(|c| Change {
                    kind: match c.kind {
                        ChangeKind::Added => ChangeKind::Removed,
                        ChangeKind::Removed => ChangeKind::Added,
                        ChangeKind::Modified => ChangeKind::Modified,
                    },
                    ..c
                })
                .collect();
            assert_eq!(diff(&new, &old).unwrap(), reversed, "case reversed: {name}");
        }
    }

    #[test]
    fn digest_ignores_mtimes_but_not_content_mode_target_or_names() {
        let cases: &[(&str, Edit, bool)] = &[
            ("nothing", |_| {}, true),
            (
                "file mtime",
                |r| set_mtime(&r.join("app/main.py"), 1, 2),
                true,
            ),
            ("dir mtime", |r| set_mtime(&r.join("app"), 1, 2), true),
            (
                "symlink mtime",
                |r| set_mtime(&r.join("current"), 1, 2),
                true,
            ),
            (
                "root mode",
                |r| fs::set_permissions(r, fs::Permissions::from_mode(0o700)).unwrap(),
                true,
            ),
            (
                "same-size content",
                |r| fs::write(r.join("app/static/a.css"), b"x{}").unwrap(),
                false,
            ),
            (
                "file mode",
                |r| {
                    fs::set_permissions(r.join("app/main.py"), fs::Permissions::from_mode(0o4644))
                        .unwrap()
                },
                false,
            ),
            (
                "dir mode",
                |r| {
                    fs::set_permissions(r.join("app/static"), fs::Permissions::from_mode(0o700))
                        .unwrap()
                },
                false,
            ),
            (
                "symlink target",
                |r| {
                    fs::remove_file(r.join("current")).unwrap();
                    symlink("apq", r.join("current")).unwrap();
                },
                false,
            ),
            (
                "rename",
                |r| fs::rename(r.join("app/static/b.css"), r.join("app/static/c.css")).unwrap(),
                false,
            ),
            (
                "empty dir added",
                |r| fs::create_dir(r.join("app/empty")).unwrap(),
                false,
            ),
        ];
        let tmp = tempfile::tempdir().unwrap();
        let original = tmp.path().join("original");
        build(&original, BASE);
        let want = digest(&original).unwrap();
        assert!(
            want.starts_with("sha256:") && want.len() == 7 + 64,
            "{want}"
        );
        for (name, edit, same) in cases {
            let tmp = tempfile::tempdir().unwrap();
            build(tmp.path(), BASE);
            edit(tmp.path());
            assert_eq!(digest(tmp.path()).unwrap() == want, *same, "case: {name}");
        }
    }

    #[test]
    fn digest_refuses_special_files_naming_them() {
        let tmp = tempfile::tempdir().unwrap();
        build(tmp.path(), BASE);
        let fifo = tmp.path().join("app/pipe");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let err = digest(tmp.path()).unwrap_err();
        assert!(
            matches!(&err, TreeError::Special { path } if *path == fifo),
            "{err:?}"
        );
        assert!(err.to_string().contains("app/pipe"), "{err}");
    }
}
