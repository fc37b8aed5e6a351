//! What is kept to undo a deploy, under archives/<release>/: a snapshot of data/ taken before
//! services stop, the operator's manual edits found in run/ (drift), and the failed tree.
//! Drift leaves out what the app itself writes there ([`DriftIgnore`]).
//!
//! A snapshot is a real copy as far as data/ is concerned: files unchanged since the previous
//! snapshot are hard-linked to that (immutable) snapshot, never to data/ itself, so a later
//! in-place write to data/ cannot reach any snapshot.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use git2::{Oid, Repository};
use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

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

/// What drift leaves out: the files the app generates in run/ (`__pycache__/`, `*.pyc`, an
/// `instance/` dir), as the live release's `.gitignore` files say (each in its directory,
/// deeper ones first, with git's semantics: a `!` pattern re-includes, nothing under an
/// ignored directory can be) and kiln.yml `drift_ignore` (gitignore syntax, relative to the
/// tree's top; it decides before the `.gitignore`s). Matching is the `ignore` crate's
/// gitignore module, the one ripgrep uses.
#[derive(Default)]
pub struct DriftIgnore {
    /// One matcher per directory of the release that has a `.gitignore`, deepest first. The
    /// matchers are rooted at `/<dir>` and asked about `/<path>`: paths are release-relative.
    gitignores: Vec<Gitignore>,
    drift_ignore: Option<Gitignore>,
}

impl DriftIgnore {
    /// Only kiln.yml's `drift_ignore` patterns (editable mode: git itself applies the
    /// `.gitignore`s of the checkout).
    pub fn patterns(drift_ignore: &[String]) -> DriftIgnore {
        DriftIgnore {
            gitignores: Vec::new(),
            drift_ignore: matcher(Path::new("/"), drift_ignore.iter().map(String::as_str)),
        }
    }

    /// The `.gitignore`s of the live release's commit and its kiln.yml `drift_ignore`.
    pub fn of_commit(
        repo: &Repository,
        commit: Oid,
        drift_ignore: &[String],
    ) -> Result<DriftIgnore, Error> {
        let files = crate::fs::git::files_named(repo, commit, ".gitignore")?;
        Ok(DriftIgnore::of_files(files, drift_ignore))
    }

    /// `.gitignore` files (the directory each is in, its content) and `drift_ignore`.
    fn of_files(files: Vec<(PathBuf, Vec<u8>)>, drift_ignore: &[String]) -> DriftIgnore {
        let mut gitignores: Vec<(usize, Gitignore)> = files
            .into_iter()
            .filter_map(|(dir, text)| {
                let text = String::from_utf8_lossy(&text);
                let root = Path::new("/").join(&dir);
                matcher(&root, text.lines()).map(|m| (dir.components().count(), m))
            })
            .collect();
        gitignores.sort_by_key(|(depth, _)| std::cmp::Reverse(*depth));
        DriftIgnore {
            gitignores: gitignores.into_iter().map(|(_, m)| m).collect(),
            ..DriftIgnore::patterns(drift_ignore)
        }
    }

    /// Whether `rel` (relative to the tree's top) is left out: it, or a directory above it,
    /// is ignored.
    pub fn is_ignored(&self, rel: &Path, is_dir: bool) -> bool {
        let mut above: Vec<&Path> = rel
            .ancestors()
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        above.reverse();
        above
            .iter()
            .any(|path| self.decides_ignored(path, *path != rel || is_dir))
    }

    /// The first matcher with an opinion on `path` itself decides.
    fn decides_ignored(&self, path: &Path, is_dir: bool) -> bool {
        let absolute = Path::new("/").join(path);
        let asked = self.drift_ignore.iter().chain(
            self.gitignores
                .iter()
                .filter(|m| absolute.starts_with(m.path()) && absolute != m.path()),
        );
        for matcher in asked {
            match matcher.matched(&absolute, is_dir) {
                Match::None => continue,
                Match::Ignore(_) => return true,
                Match::Whitelist(_) => return false,
            }
        }
        false
    }
}

/// What drift leaves out while `commit` is live: its `.gitignore`s and its kiln.yml's
/// `drift_ignore` (None: nothing is live, so nothing in run/ is the app's own).
pub fn live_ignore(repo: &Repository, commit: Option<Oid>) -> Result<DriftIgnore, Error> {
    match commit {
        Some(commit) => {
            let recipe = crate::config::recipe::read_recipe(repo, commit)?;
            DriftIgnore::of_commit(repo, commit, &recipe.drift_ignore)
        }
        None => Ok(DriftIgnore::default()),
    }
}

/// Editable mode's edits in project/ (from git, which applies the `.gitignore`s) without
/// those kiln.yml `drift_ignore` of the live commit leaves out.
pub fn editable_edits(
    repo: &Repository,
    live: Option<Oid>,
    checkout: &Path,
    edits: Vec<String>,
) -> Result<Vec<String>, Error> {
    let drift_ignore = match live {
        Some(commit) => crate::config::recipe::read_recipe(repo, commit)?.drift_ignore,
        None => Vec::new(),
    };
    let ignore = DriftIgnore::patterns(&drift_ignore);
    Ok(edits
        .into_iter()
        .filter(|edit| !ignore.is_ignored(Path::new(edit), checkout.join(edit).is_dir()))
        .collect())
}

/// A matcher of `lines` (gitignore syntax) rooted at `root`; None when no line is a pattern.
/// Lines that are not valid patterns are skipped, as git skips them: kiln.yml's are checked
/// when it is parsed ([`crate::config::recipe::check_pattern`]).
fn matcher<'a>(root: &Path, lines: impl Iterator<Item = &'a str>) -> Option<Gitignore> {
    let mut builder = GitignoreBuilder::new(root);
    for line in lines {
        let _ = builder.add_line(None, line);
    }
    builder.build().ok().filter(|m| !m.is_empty())
}

/// Compares run/ with the release tree it was switched to (`None`: nothing was live, so
/// anything in run/ was put there by hand), leaving out what `ignore` ignores.
pub fn find_drift(
    run: &Path,
    release_tree: Option<&Path>,
    ignore: &DriftIgnore,
) -> Result<Drift, Error> {
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
    let is_dir = |rel: &Path| {
        [run, base]
            .iter()
            .any(|root| fs::symlink_metadata(root.join(rel)).is_ok_and(|m| m.is_dir()))
    };
    // A directory's mtime changes whenever an entry is added to it or removed from it; those
    // entries are reported themselves, or ignored on purpose. Only its permissions count.
    let only_mtime = |rel: &Path| {
        let mode = |root: &Path| {
            fs::symlink_metadata(root.join(rel))
                .ok()
                .filter(fs::Metadata::is_dir)
                .map(|m| m.permissions().mode())
        };
        matches!((mode(base), mode(run)), (Some(a), Some(b)) if a == b)
    };
    let changes = tree::diff(base, run)?
        .into_iter()
        .filter(|c| !ignore.is_ignored(&c.path, is_dir(&c.path)))
        .filter(|c| !(c.kind == ChangeKind::Modified && only_mtime(&c.path)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_ignore_has_gitignore_semantics() {
        let files = vec![
            (
                PathBuf::new(),
                b"__pycache__/\n*.pyc\n/instance/\n*.log\n!keep.log\n# comment\nbuild\n".to_vec(),
            ),
            (
                PathBuf::from("app"),
                b"local.cfg\n!important.pyc\n".to_vec(),
            ),
            (PathBuf::from("app/sub/"), b"*.tmp\n".to_vec()),
        ];
        let ignore =
            DriftIgnore::of_files(files, &["uploads/".to_owned(), "!build/keep".to_owned()]);
        let cases = [
            ("__pycache__", true, true),
            ("app/__pycache__/views.cpython-311.pyc", false, true),
            ("app/views.pyc", false, true),
            ("app/important.pyc", false, false),
            ("instance", true, true),
            ("instance/app.sqlite", false, true),
            ("app/instance/app.sqlite", false, false),
            ("error.log", false, true),
            ("keep.log", false, false),
            ("app/local.cfg", false, true),
            ("local.cfg", false, false),
            ("app/sub/x.tmp", false, true),
            ("x.tmp", false, false),
            ("uploads/a.png", false, true),
            ("static/uploads/a.png", false, true),
            ("build/keep", false, true),
            ("app.py", false, false),
            ("app", true, false),
            ("comment", false, false),
        ];
        for (path, is_dir, expected) in cases {
            assert_eq!(
                ignore.is_ignored(Path::new(path), is_dir),
                expected,
                "{path}"
            );
        }
        assert!(!DriftIgnore::default().is_ignored(Path::new("x.pyc"), false));
    }
}
