//! Reading pushed commits and materialising them: the bare repos receive pushes, kiln reads
//! kiln.yml from a commit, exports a commit's tree into build/, and keeps project/ (and pillar/)
//! as checkouts that share the bare repo's objects.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use git2::{ObjectType, Oid, Repository, StatusOptions};

use crate::error::{Error, git_error, io_error};

/// Opens a bare repo. Inside a pre-receive hook the pushed objects are still in git's
/// quarantine directory, which libgit2 does not know about: add it as an alternate.
pub fn open_bare(path: &Path) -> Result<Repository, Error> {
    let repo =
        Repository::open_bare(path).map_err(git_error(format!("open `{}`", path.display())))?;
    see_quarantine(&repo)?;
    Ok(repo)
}

/// Inside a pre-receive hook, lets `repo` read the pushed objects from git's quarantine. Only
/// this process sees them there: nothing is written, so nothing refers to the quarantine once
/// git has moved the objects into the repo (or deleted them, when the push is refused).
fn see_quarantine(repo: &Repository) -> Result<(), Error> {
    if let Some(quarantine) = std::env::var_os("GIT_QUARANTINE_PATH") {
        let odb = repo.odb().map_err(git_error("read the object database"))?;
        odb.add_disk_alternate(&quarantine.to_string_lossy())
            .map_err(git_error("read the pushed objects"))?;
    }
    Ok(())
}

/// Creates a bare repo if missing, with `master`-style HEAD pointing at `branch`.
pub fn init_bare(path: &Path, branch: &str) -> Result<bool, Error> {
    if path.join("HEAD").exists() {
        return Ok(false);
    }
    let mut opts = git2::RepositoryInitOptions::new();
    opts.bare(true).initial_head(branch).mkpath(true);
    Repository::init_opts(path, &opts)
        .map_err(git_error(format!("create `{}`", path.display())))?;
    Ok(true)
}

/// Makes git write the repo's files readable by their owner only (the pillar's secrets).
pub fn restrict_repo(path: &Path) -> Result<(), Error> {
    let repo =
        Repository::open_bare(path).map_err(git_error(format!("open `{}`", path.display())))?;
    let mut config = repo.config().map_err(git_error(format!(
        "read the config of `{}`",
        path.display()
    )))?;
    config
        .set_str("core.sharedRepository", "0600")
        .map_err(git_error(format!("configure `{}`", path.display())))
}

/// Resolves `rev` (a branch, tag, or commit id) to a commit.
pub fn resolve(repo: &Repository, rev: &str) -> Result<Oid, Error> {
    let unknown = || Error::UnknownRev {
        rev: rev.to_string(),
        repo: repo.path().to_path_buf(),
    };
    let object = repo.revparse_single(rev).map_err(|_| unknown())?;
    let commit = object.peel_to_commit().map_err(|_| unknown())?;
    Ok(commit.id())
}

/// The tip of `refs/heads/<branch>`, if the branch exists.
pub fn branch_tip(repo: &Repository, branch: &str) -> Option<Oid> {
    repo.refname_to_id(&format!("refs/heads/{branch}")).ok()
}

fn commit_tree(repo: &Repository, oid: Oid) -> Result<git2::Tree<'_>, Error> {
    repo.find_commit(oid)
        .map_err(git_error(format!("read commit {oid}")))?
        .tree()
        .map_err(git_error(format!("read the tree of {oid}")))
}

/// The content of `path` in commit `oid`, or None when the commit has no such file.
pub fn read_file(repo: &Repository, oid: Oid, path: &str) -> Result<Option<Vec<u8>>, Error> {
    let tree = commit_tree(repo, oid)?;
    let entry = match tree.get_path(Path::new(path)) {
        Ok(entry) => entry,
        Err(_) => return Ok(None),
    };
    if entry.kind() != Some(ObjectType::Blob) {
        return Ok(None);
    }
    let blob = repo
        .find_blob(entry.id())
        .map_err(git_error(format!("read `{path}` of {oid}")))?;
    Ok(Some(blob.content().to_vec()))
}

/// Every file named `name` in commit `oid` (e.g. all its `.gitignore`s): the directory it is
/// in (`""` at the top, else `a/b`) and its content.
pub fn files_named(
    repo: &Repository,
    oid: Oid,
    name: &str,
) -> Result<Vec<(PathBuf, Vec<u8>)>, Error> {
    let tree = commit_tree(repo, oid)?;
    let mut found = Vec::new();
    tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
        if entry.kind() == Some(ObjectType::Blob) && entry.name_bytes() == name.as_bytes() {
            found.push((PathBuf::from(OsStr::from_bytes(dir.as_bytes())), entry.id()));
        }
        git2::TreeWalkResult::Ok
    })
    .map_err(git_error(format!("read the tree of {oid}")))?;
    found
        .into_iter()
        .map(|(dir, blob)| {
            let blob = repo.find_blob(blob).map_err(git_error(format!(
                "read `{}` of {oid}",
                dir.join(name).display()
            )))?;
            Ok((dir, blob.content().to_vec()))
        })
        .collect()
}

/// The first line of a commit's message, for logs.
pub fn summary(repo: &Repository, oid: Oid) -> String {
    repo.find_commit(oid)
        .ok()
        .and_then(|c| {
            c.summary_bytes()
                .map(|b| String::from_utf8_lossy(b).into_owned())
        })
        .unwrap_or_default()
}

/// The release an export follows: its commit, its tree on disk, and when its deploy started.
pub struct Previous<'a> {
    pub commit: Oid,
    pub tree: &'a Path,
    pub started: SystemTime,
    /// Nothing will write to the export before it becomes an immutable release tree (the
    /// recipe has no configure, build or bundle commands): unchanged files may then be hard
    /// links to the previous release's, which costs neither a copy nor a flush to disk.
    pub share: bool,
}

/// Writes the tree of commit `oid` into `dest` (which must exist and be empty): regular files
/// with git's modes, symlinks, directories. Submodules are skipped: kiln deploys one repo.
/// Walking the tree and writing blobs directly avoids libgit2's checkout machinery, which
/// NOTES.md measured at twice the time of `git archive | tar -x`.
///
/// Every file written gets the mtime `stamp` (a moment before this deploy started), so that
/// anything the build changes afterwards has a later mtime. A file whose blob is the same as in
/// `previous` and which that release's build left untouched (its mtime is before that deploy
/// started) is copied from the previous release tree with its mtime: the size and mtime quick
/// check then sees it as unchanged, and preparing the next live tree copies only what changed
/// instead of everything a fresh export would otherwise look like.
pub fn export(
    repo: &Repository,
    oid: Oid,
    dest: &Path,
    previous: Option<Previous>,
    stamp: SystemTime,
) -> Result<u64, Error> {
    // index-pack verified every object when it was pushed; hashing each blob again on read is
    // a tenth of an export's time.
    git2::opts::strict_hash_verification(false);
    let old_tree = previous
        .as_ref()
        .and_then(|p| repo.find_commit(p.commit).ok())
        .and_then(|c| c.tree().ok());
    let tree = commit_tree(repo, oid)?;
    let mut count = 0u64;
    let mut failure: Option<Error> = None;
    tree.walk(git2::TreeWalkMode::PreOrder, |parent, entry| {
        let rel = Path::new(parent).join(OsStr::from_bytes(entry.name_bytes()));
        let path = dest.join(&rel);
        let pristine = match (&old_tree, &previous) {
            (Some(old), Some(previous)) => pristine_copy(old, entry, &rel, previous),
            _ => None,
        };
        let result = match pristine {
            Some((old_path, _)) if previous.as_ref().is_some_and(|p| p.share) => {
                fs::hard_link(&old_path, &path)
                    .map(|()| 1)
                    .map_err(|e| io_error("link", &old_path, e))
            }
            Some((old_path, mtime)) => copy_pristine(&old_path, &path, entry, mtime),
            None => write_entry(repo, entry, &path, stamp),
        };
        match result {
            Ok(written) => {
                count += written;
                git2::TreeWalkResult::Ok
            }
            Err(e) => {
                failure = Some(e);
                git2::TreeWalkResult::Abort
            }
        }
    })
    .ok();
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(count)
}

/// The previous release's copy of this blob, if it is the same blob and its build left it
/// untouched: (path, mtime).
fn pristine_copy(
    old: &git2::Tree,
    entry: &git2::TreeEntry,
    rel: &Path,
    previous: &Previous,
) -> Option<(PathBuf, SystemTime)> {
    if entry.kind() != Some(ObjectType::Blob) || entry.filemode() == i32::from(git2::FileMode::Link)
    {
        return None;
    }
    let old_entry = old.get_path(rel).ok()?;
    if old_entry.id() != entry.id() || old_entry.filemode() != entry.filemode() {
        return None;
    }
    let old_path = previous.tree.join(rel);
    let meta = fs::symlink_metadata(&old_path).ok()?;
    let mtime = meta.modified().ok()?;
    // A build may also have chmod-ed the file, which leaves its mtime alone.
    let same_mode = meta.permissions().mode() & 0o7777 == file_mode(entry);
    (meta.is_file() && same_mode && mtime < previous.started).then_some((old_path, mtime))
}

fn file_mode(entry: &git2::TreeEntry) -> u32 {
    if entry.filemode() == i32::from(git2::FileMode::BlobExecutable) {
        0o755
    } else {
        0o644
    }
}

fn copy_pristine(
    old: &Path,
    path: &Path,
    entry: &git2::TreeEntry,
    mtime: SystemTime,
) -> Result<u64, Error> {
    // copy_file_range: the kernel copies (or reflinks) without inflating the blob again.
    fs::copy(old, path).map_err(|e| io_error("copy", old, e))?;
    let file = fs::File::options()
        .write(true)
        .open(path)
        .map_err(|e| io_error("open", path, e))?;
    file.set_permissions(fs::Permissions::from_mode(file_mode(entry)))
        .and_then(|()| file.set_modified(mtime))
        .map_err(|e| io_error("write", path, e))?;
    Ok(1)
}

fn write_entry(
    repo: &Repository,
    entry: &git2::TreeEntry,
    path: &Path,
    stamp: SystemTime,
) -> Result<u64, Error> {
    match entry.kind() {
        Some(ObjectType::Tree) => {
            fs::create_dir(path).map_err(|e| io_error("create", path, e))?;
            Ok(0)
        }
        Some(ObjectType::Blob) => {
            let blob = repo
                .find_blob(entry.id())
                .map_err(git_error(format!("read `{}`", path.display())))?;
            if entry.filemode() == i32::from(git2::FileMode::Link) {
                let target = OsStr::from_bytes(blob.content());
                symlink(target, path).map_err(|e| io_error("create symlink", path, e))?;
            } else {
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(file_mode(entry))
                    .open(path)
                    .map_err(|e| io_error("create", path, e))?;
                file.write_all(blob.content())
                    .and_then(|()| file.set_modified(stamp))
                    .map_err(|e| io_error("write", path, e))?;
            }
            Ok(1)
        }
        // Submodule commits and anything else have no content here.
        _ => Ok(0),
    }
}

/// A checkout (project/ or pillar/) that shares the bare repo's objects through
/// `objects/info/alternates`, like `git clone --shared`: no copy, no fetch.
pub struct Checkout {
    repo: Repository,
    dir: PathBuf,
}

impl Checkout {
    pub fn open_or_init(dir: &Path, bare: &Path) -> Result<Checkout, Error> {
        let repo = match Repository::open(dir) {
            Ok(repo) => repo,
            Err(_) => {
                fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
                Repository::init(dir).map_err(git_error(format!("create `{}`", dir.display())))?
            }
        };
        let alternates = repo.path().join("objects/info/alternates");
        let objects = bare.join("objects");
        let wanted = format!("{}\n", objects.display());
        if fs::read_to_string(&alternates).ok().as_deref() != Some(wanted.as_str()) {
            fs::write(&alternates, wanted).map_err(|e| io_error("write", &alternates, e))?;
        }
        // Re-open so libgit2 sees the alternate.
        let repo = Repository::open(dir).map_err(git_error(format!("open `{}`", dir.display())))?;
        see_quarantine(&repo)?;
        Ok(Checkout {
            repo,
            dir: dir.to_path_buf(),
        })
    }

    /// The commit checked out, if any.
    pub fn head(&self) -> Option<Oid> {
        self.repo.head().ok().and_then(|h| h.target())
    }

    /// Files changed, added or deleted by hand since the last checkout (ignored files excluded:
    /// build output listed in .gitignore is not an edit).
    pub fn local_edits(&self) -> Result<Vec<String>, Error> {
        if self.head().is_none() {
            return Ok(Vec::new());
        }
        self.status_paths(true, |status| status != git2::Status::CURRENT)
    }

    /// The untracked paths git does not ignore (a directory as `dir/`, not its content).
    pub fn untracked(&self) -> Result<Vec<String>, Error> {
        self.status_paths(false, |status| status.contains(git2::Status::WT_NEW))
    }

    /// The sorted paths of `git status` (untracked included, ignored not) whose status
    /// `keep` accepts; `recurse`: untracked directories listed file by file.
    fn status_paths(
        &self,
        recurse: bool,
        keep: impl Fn(git2::Status) -> bool,
    ) -> Result<Vec<String>, Error> {
        let mut opts = StatusOptions::new();
        opts.include_untracked(true)
            .recurse_untracked_dirs(recurse)
            .include_ignored(false);
        let statuses = self
            .repo
            .statuses(Some(&mut opts))
            .map_err(git_error(format!(
                "read the status of `{}`",
                self.dir.display()
            )))?;
        let mut paths: Vec<String> = statuses
            .iter()
            .filter(|s| keep(s.status()))
            .map(|s| String::from_utf8_lossy(s.path_bytes()).into_owned())
            .collect();
        paths.sort();
        Ok(paths)
    }

    /// Keeps what a buildpack added next to the checkout (`.venv/`, `node_modules/`,
    /// `.profile.d/`) from counting as manual edits: every untracked path that git does not
    /// ignore and that was not there `before` is added to `.git/info/exclude` (never to the
    /// app's own `.gitignore`), in kiln's section, and stays there. Returns the lines added.
    pub fn exclude_untracked(&self, before: &[String]) -> Result<Vec<String>, Error> {
        let added: Vec<String> = self
            .untracked()?
            .into_iter()
            .filter(|path| !before.contains(path))
            .map(|path| {
                // Anchored at the top, with glob characters escaped: the path, not a pattern.
                let mut line = String::from("/");
                for c in path.chars() {
                    if "*?[\\".contains(c) {
                        line.push('\\');
                    }
                    line.push(c);
                }
                line
            })
            .collect();
        if added.is_empty() {
            return Ok(added);
        }
        let info = self.repo.path().join("info");
        fs::create_dir_all(&info).map_err(|e| io_error("create", &info, e))?;
        let path = info.join("exclude");
        let mut text = fs::read_to_string(&path).unwrap_or_default();
        const SECTION: &str = "# kiln: what buildpacks built here (not manual edits)";
        if !text.contains(SECTION) {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(SECTION);
            text.push('\n');
        }
        for line in &added {
            text.push_str(line);
            text.push('\n');
        }
        fs::write(&path, text).map_err(|e| io_error("write", &path, e))?;
        Ok(added)
    }

    /// Checks out `oid` (detached), overwriting tracked files and removing files the old
    /// commit had and the new one has not. Ignored files (build output) stay.
    pub fn checkout(&self, oid: Oid) -> Result<(), Error> {
        let commit = self
            .repo
            .find_commit(oid)
            .map_err(git_error(format!("read commit {oid}")))?;
        // HEAD may name a commit that is gone: one whose push was refused after it had been
        // checked out here during pre-receive (git deletes a refused push's objects). libgit2
        // diffs against HEAD's tree and would fail; start from the new commit instead (files
        // only the gone commit had then stay, as untracked files).
        let head_gone = self
            .head()
            .is_some_and(|head| self.repo.find_commit(head).is_err());
        if head_gone {
            self.repo
                .set_head_detached(oid)
                .map_err(git_error(format!("move HEAD of `{}`", self.dir.display())))?;
        }
        let mut builder = git2::build::CheckoutBuilder::new();
        builder.force().remove_untracked(false);
        self.repo
            .checkout_tree(commit.as_object(), Some(&mut builder))
            .map_err(git_error(format!(
                "check out {oid} in `{}`",
                self.dir.display()
            )))?;
        self.repo
            .set_head_detached(oid)
            .map_err(git_error(format!("move HEAD of `{}`", self.dir.display())))?;
        Ok(())
    }
}

/// The commit checked out in `dir`, if it is a checkout with one (nothing is created).
pub fn checked_out(dir: &Path) -> Option<Oid> {
    Repository::open(dir).ok()?.head().ok()?.target()
}

pub fn short(oid: Oid) -> String {
    oid.to_string()[..7].to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is a test failure
mod tests {
    use super::*;

    fn commit_file(repo: &Repository, name: &str, content: &str) -> Oid {
        let blob = repo.blob(content.as_bytes()).unwrap();
        let mut builder = repo.treebuilder(None).unwrap();
        builder.insert(name, blob, 0o100644).unwrap();
        let tree = repo.find_tree(builder.write().unwrap()).unwrap();
        let who = git2::Signature::now("Tester", "tester@example.invalid").unwrap();
        repo.commit(None, &who, &who, name, &tree, &[]).unwrap()
    }

    #[test]
    fn exclude_untracked_adds_only_what_appeared_since_before() {
        let dir = tempfile::tempdir().unwrap();
        let bare = dir.path().join("project.git");
        init_bare(&bare, "master").unwrap();
        let commit = commit_file(&Repository::open_bare(&bare).unwrap(), "app.py", "v1\n");
        let project = dir.path().join("project");
        let checkout = Checkout::open_or_init(&project, &bare).unwrap();
        checkout.checkout(commit).unwrap();
        fs::write(project.join("configured.txt"), "by configure").unwrap();
        let before = checkout.untracked().unwrap();
        assert_eq!(before, ["configured.txt"]);
        fs::create_dir_all(project.join(".venv/bin")).unwrap();
        fs::write(project.join(".venv/bin/python"), "").unwrap();
        fs::write(project.join("odd[name]*"), "").unwrap();
        assert_eq!(
            checkout.exclude_untracked(&before).unwrap(),
            ["/.venv/", "/odd\\[name]\\*"]
        );
        assert_eq!(checkout.untracked().unwrap(), ["configured.txt"]);
        assert_eq!(checkout.local_edits().unwrap(), ["configured.txt"]);
        assert_eq!(
            checkout.exclude_untracked(&before).unwrap(),
            Vec::<String>::new()
        );
    }

    /// A push refused by pre-receive after its commit was checked out in project/ (read from
    /// git's quarantine, which git then deletes) left HEAD and the index naming objects that
    /// are gone; the next checkout must still work.
    #[test]
    fn regression_checkout_works_when_head_names_a_commit_that_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let bare_path = dir.path().join("project.git");
        init_bare(&bare_path, "master").unwrap();
        let good = commit_file(
            &Repository::open_bare(&bare_path).unwrap(),
            "app.txt",
            "v1\n",
        );
        let quarantine_path = dir.path().join("quarantine.git");
        init_bare(&quarantine_path, "master").unwrap();
        let gone = commit_file(
            &Repository::open_bare(&quarantine_path).unwrap(),
            "refused.txt",
            "v2\n",
        );
        let project = dir.path().join("project");
        let checkout = Checkout::open_or_init(&project, &bare_path).unwrap();
        checkout
            .repo
            .odb()
            .unwrap()
            .add_disk_alternate(&quarantine_path.join("objects").to_string_lossy())
            .unwrap();
        checkout.checkout(gone).unwrap();
        fs::remove_dir_all(&quarantine_path).unwrap();

        let checkout = Checkout::open_or_init(&project, &bare_path).unwrap();
        checkout.checkout(good).unwrap();
        assert_eq!(checkout.head(), Some(good));
        assert_eq!(fs::read_to_string(project.join("app.txt")).unwrap(), "v1\n");
        assert_eq!(checked_out(&project), Some(good));
    }
}
