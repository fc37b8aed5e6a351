//! Final mode: production deploys the exact tarball staging baked for a commit, never building.
//! [`fetch_release`] finds the newest release of the commit (in this node's releases/, where
//! `kiln release import` and earlier pulls put them, or at the project's source), checks it and
//! unpacks it into `deploy/<release>`.
//!
//! Checks come in an order that refuses as early and as cheaply as possible, and a refused
//! release changes nothing: the manifest's signature (when project.yml has a `trusted_key`)
//! before the tarball is even downloaded, the tarball's sha256 before it is unpacked, the
//! unpacked tree's digest before the tree is used. Files arrive in a private `.incoming-*` dir
//! inside releases/ and take their staging names there only once everything passed.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use git2::Oid;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::config::layout::ProjectPaths;
use crate::config::project::{Node, Project};
use crate::error::Error;
use crate::exec::report::{Reporter, seconds};
use crate::fs::tree;
use crate::release::bake::HashingWriter;
use crate::release::manifest::{self as release, Manifest, ManifestError};
use crate::release::signing::{BadSignature, TrustedKey};
use crate::release::source::{Listed, Part, Source, SourceError};
use crate::release::unpack::{self, Limits, LinkRules, UnpackError, UnpackInfo, UnpackOptions};
use crate::transaction::release_log::ReleaseLog;

/// Largest manifest or signature accepted.
const SMALL_LIMIT: u64 = 1 << 20;
const BUFFER: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "no release of {commit} at {at}; push it to staging first (staging offers its good releases, not those that failed or that it rolled back)"
    )]
    NoRelease { commit: String, at: String },
    #[error(
        "no release of {commit} in `{}` and project.yml has no `source`: import it with `kiln release import {name} FILE`, or set a source with `kiln init {name} --source URL`",
        releases.display()
    )]
    NoReleaseNoSource {
        commit: String,
        name: String,
        releases: PathBuf,
    },
    #[error("{0}")]
    Source(#[from] SourceError),
    #[error("release {release} refused: {reason}")]
    Refused { release: String, reason: Refusal },
    #[error("could not {action} `{}`: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("could not unpack release {release}: {source}")]
    Unpack {
        release: String,
        source: UnpackError,
    },
    #[error("could not check the tree of release {release}: {source}")]
    Tree {
        release: String,
        source: tree::TreeError,
    },
    #[error(
        "`{}` is not a release tarball: import the `<release>.tar.zst` file baked by staging, with its `.json` (and `.json.sig`) next to it",
        path.display()
    )]
    NotATarball { path: PathBuf },
    #[error(
        "the manifest `{}` is missing: copy it next to the tarball, as staging keeps it",
        path.display()
    )]
    MissingManifest { path: PathBuf },
}

impl From<FetchError> for Error {
    fn from(e: FetchError) -> Self {
        Error::Fetch(Box::new(e))
    }
}

/// Why a release was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Signature(#[from] BadSignature),
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    #[error("its manifest names release `{named}`")]
    WrongRelease { named: String },
    #[error("its manifest names commit {named}, not {expected}")]
    WrongCommit { named: String, expected: String },
    #[error("the tarball's sha256 is {actual} but its manifest says {expected}")]
    Checksum { expected: String, actual: String },
    #[error("{0}")]
    Archive(UnpackError),
    #[error("the unpacked tree's digest is {actual} but its manifest says {expected}")]
    TreeDigest { expected: String, actual: String },
}

impl From<SourceError> for Error {
    fn from(e: SourceError) -> Error {
        Error::Fetch(Box::new(FetchError::Source(e)))
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FetchError {
    let path = path.to_path_buf();
    move |source| FetchError::Io {
        action,
        path,
        source,
    }
}

fn refused(release: &str, reason: impl Into<Refusal>) -> FetchError {
    FetchError::Refused {
        release: release.to_string(),
        reason: reason.into(),
    }
}

/// What a release must be to be accepted.
struct Expect<'a> {
    release: &'a str,
    /// None for an import: any commit.
    commit: Option<&'a str>,
    trusted: Option<&'a TrustedKey>,
}

/// Pulls, checks and unpacks the newest release of `commit` into `deploy/<release>` (this
/// deploy's own id); called by the configure stage in final mode.
pub fn fetch_release(
    node: &Node,
    project: &Project,
    commit: Oid,
    release: &str,
    out: &mut Reporter,
) -> Result<String, Error> {
    let paths = &project.paths;
    let commit = commit.to_string();
    let trusted = trusted_key(project)?;
    let source = project
        .config
        .source
        .as_deref()
        .map(|text| Source::parse(text, &node.config.s3))
        .transpose()?;

    let local: Vec<Listed> = local_releases(&paths.releases)?
        .into_iter()
        .filter(|l| l.commit == commit)
        .collect();
    let remote: Vec<Listed> = match source.as_ref().map(Source::list) {
        None => Vec::new(),
        Some(Ok(listed)) => listed.into_iter().filter(|l| l.commit == commit).collect(),
        // An unreachable source need not stop a deploy this node can do on its own.
        Some(Err(e)) if !local.is_empty() => {
            out.note(&format!("warning: {e}; using this node's copy"));
            Vec::new()
        }
        Some(Err(e)) => return Err(e.into()),
    };
    // Newest by the manifest's creation time; this node's copy wins a tie (same release).
    let chosen = remote
        .iter()
        .map(|l| (l, false))
        .chain(local.iter().map(|l| (l, true)))
        .fold(None::<(&Listed, bool)>, |best, next| match best {
            Some(b) if (b.0.created, &b.0.release) > (next.0.created, &next.0.release) => Some(b),
            _ => Some(next),
        });
    let Some((listed, is_local)) = chosen else {
        return Err(match &source {
            Some(source) => FetchError::NoRelease {
                commit,
                at: source.to_string(),
            },
            None => FetchError::NoReleaseNoSource {
                commit,
                name: paths.name.clone(),
                releases: paths.releases.clone(),
            },
        }
        .into());
    };
    let id = listed.release.clone();
    let expect = Expect {
        release: &id,
        commit: Some(&commit),
        trusted: trusted.as_ref(),
    };
    let dest = paths.release_dir(release);
    let started = Instant::now();
    let (manifest, info, from) = match (&source, is_local) {
        (Some(source), false) => {
            out.note(&format!("pulling release {id} from {source}"));
            let incoming = Incoming::pull(paths, source, &expect, node_limits(node).max_bytes)?;
            let info = unpack_checked(node, paths, &incoming.tarball, &incoming.manifest, &dest)?;
            incoming.keep(paths)?;
            (incoming.manifest, info, source.to_string())
        }
        _ => {
            out.note(&format!("using release {id} from this node's releases/"));
            let manifest = check_local(paths, &expect)?;
            let info = unpack_checked(node, paths, &paths.tarball(&id), &manifest, &dest)?;
            (manifest, info, "this node's releases/".to_string())
        }
    };
    let signed = if trusted.is_some() {
        "signature verified"
    } else {
        "no trusted_key: signature not checked"
    };
    out.note(&format!(
        "release {id} of {} from {from}: sha256 {}, {signed}, {} files unpacked into deploy/{release} in {}, tree digest matches",
        &commit[..7],
        manifest.sha256.get(..16).unwrap_or(&manifest.sha256),
        info.files,
        seconds(started.elapsed())
    ));
    out.event(json!({
        "event": "pulled", "source_release": id, "source": from, "commit": commit,
        "sha256": manifest.sha256, "signature_checked": trusted.is_some(),
        "files": info.files, "bytes": info.bytes, "outcome": "ok",
        "duration_ms": crate::exec::report::millis(started.elapsed()),
    }));
    Ok(id)
}

fn trusted_key(project: &Project) -> Result<Option<TrustedKey>, Error> {
    Ok(project
        .config
        .trusted_key
        .as_deref()
        .map(TrustedKey::parse)
        .transpose()?)
}

fn node_limits(node: &Node) -> Limits {
    Limits::for_node(&node.config)
}

/// The releases in this node's releases/ (pulled before, or imported by hand).
fn local_releases(dir: &Path) -> Result<Vec<Listed>, Error> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    Ok(crate::release::source::scan_dir(dir)?)
}

/// Checks a manifest's signature and content; returns it parsed.
fn check_manifest(
    expect: &Expect,
    bytes: &[u8],
    signature: Option<&[u8]>,
) -> Result<Manifest, FetchError> {
    let release = expect.release;
    if let Some(key) = expect.trusted {
        key.verify(bytes, signature)
            .map_err(|e| refused(release, e))?;
    }
    let manifest = Manifest::parse(bytes).map_err(|e| refused(release, e))?;
    if manifest.release != release {
        return Err(refused(
            release,
            Refusal::WrongRelease {
                named: manifest.release,
            },
        ));
    }
    if let Some(commit) = expect.commit.filter(|c| *c != manifest.commit) {
        return Err(refused(
            release,
            Refusal::WrongCommit {
                named: manifest.commit,
                expected: commit.to_string(),
            },
        ));
    }
    Ok(manifest)
}

fn check_checksum(release: &str, manifest: &Manifest, actual: String) -> Result<(), FetchError> {
    if !actual.eq_ignore_ascii_case(&manifest.sha256) {
        return Err(refused(
            release,
            Refusal::Checksum {
                expected: manifest.sha256.clone(),
                actual,
            },
        ));
    }
    Ok(())
}

/// A release already in releases/: checked again, since it may have been damaged on disk or
/// the trusted key may have changed since it arrived.
fn check_local(paths: &ProjectPaths, expect: &Expect) -> Result<Manifest, FetchError> {
    let manifest_path = paths.manifest(expect.release);
    let bytes = fs::read(&manifest_path).map_err(io_err("read", &manifest_path))?;
    let sig_path = crate::release::signing::signature_path(&manifest_path);
    let signature = read_optional(&sig_path)?;
    let manifest = check_manifest(expect, &bytes, signature.as_deref())?;
    let tarball = paths.tarball(expect.release);
    let file = File::open(&tarball).map_err(io_err("open", &tarball))?;
    let (actual, _) = copy_hashing(file, &mut io::sink(), u64::MAX)
        .map_err(|e| e.into_fetch(&tarball, u64::MAX))?;
    check_checksum(expect.release, &manifest, actual)?;
    Ok(manifest)
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, FetchError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

/// A release being received into a private dir inside releases/. Dropped without
/// [`Incoming::keep`], it leaves nothing behind.
struct Incoming {
    dir: tempfile::TempDir,
    release: String,
    tarball: PathBuf,
    manifest_bytes: Vec<u8>,
    signature: Option<Vec<u8>>,
    manifest: Manifest,
}

impl Incoming {
    fn new_dir(paths: &ProjectPaths) -> Result<tempfile::TempDir, FetchError> {
        fs::create_dir_all(&paths.releases).map_err(io_err("create", &paths.releases))?;
        tempfile::Builder::new()
            .prefix(".incoming-")
            .tempdir_in(&paths.releases)
            .map_err(io_err("create a temp dir in", &paths.releases))
    }

    /// Fetches the manifest and signature, checks them, then fetches and checks the tarball.
    fn pull(
        paths: &ProjectPaths,
        source: &Source,
        expect: &Expect,
        max_bytes: u64,
    ) -> Result<Incoming, FetchError> {
        let release = expect.release;
        let mut manifest_bytes = Vec::new();
        if !source.copy(release, Part::Manifest, &mut manifest_bytes, SMALL_LIMIT)? {
            return Err(FetchError::NoRelease {
                commit: expect.commit.unwrap_or_default().to_string(),
                at: source.to_string(),
            });
        }
        let mut signature = Vec::new();
        let signature = source
            .copy(release, Part::Signature, &mut signature, SMALL_LIMIT)?
            .then_some(signature);
        let manifest = check_manifest(expect, &manifest_bytes, signature.as_deref())?;

        let dir = Self::new_dir(paths)?;
        let tarball = dir.path().join(Part::Tarball.file_name(release));
        let file = File::create(&tarball).map_err(io_err("create", &tarball))?;
        let mut hashing = HashingWriter::new(io::BufWriter::with_capacity(BUFFER, file));
        // The compressed archive of a tree within the limit stays within it, give or take
        // tar's headers; anything far beyond is not a release this node would unpack anyway.
        let limit = max_bytes
            .saturating_add(max_bytes / 8)
            .saturating_add(1 << 20);
        if !source.copy(release, Part::Tarball, &mut hashing, limit)? {
            return Err(FetchError::NoRelease {
                commit: expect.commit.unwrap_or_default().to_string(),
                at: source.to_string(),
            });
        }
        let actual = hashing.finish().map_err(io_err("write", &tarball))?;
        check_checksum(release, &manifest, actual)?;
        Ok(Incoming {
            dir,
            release: release.to_string(),
            tarball,
            manifest_bytes,
            signature,
            manifest,
        })
    }

    /// Gives the files their staging names in releases/. The tarball goes last, so a crash
    /// in between leaves no tarball without its manifest (the listing ignores manifests
    /// without a tarball).
    fn keep(&self, paths: &ProjectPaths) -> Result<(), FetchError> {
        let mut files = vec![(Part::Manifest, Some(self.manifest_bytes.as_slice()))];
        if let Some(signature) = &self.signature {
            files.push((Part::Signature, Some(signature.as_slice())));
        } else {
            // A stale signature of an earlier copy must not sit next to this one.
            let stale = paths
                .releases
                .join(Part::Signature.file_name(&self.release));
            let _ = fs::remove_file(stale);
        }
        files.push((Part::Tarball, None));
        for (part, bytes) in files {
            let name = part.file_name(&self.release);
            let staged = self.dir.path().join(&name);
            if let Some(bytes) = bytes {
                write_synced(&staged, bytes)?;
            } else {
                File::open(&staged)
                    .and_then(|f| f.sync_all())
                    .map_err(io_err("sync", &staged))?;
            }
            let final_path = paths.releases.join(&name);
            fs::rename(&staged, &final_path).map_err(io_err("move", &staged))?;
        }
        crate::fs::durable::fsync_dir(&paths.releases).map_err(io_err("sync", &paths.releases))
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), FetchError> {
    let mut file = File::create(path).map_err(io_err("create", path))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_err("write", path))
}

/// Unpacks into `dest` and checks the tree against the manifest; a refused tree is removed.
fn unpack_checked(
    node: &Node,
    paths: &ProjectPaths,
    tarball: &Path,
    manifest: &Manifest,
    dest: &Path,
) -> Result<UnpackInfo, FetchError> {
    let release = &manifest.release;
    let links = LinkRules::for_project(node, paths);
    let opts = UnpackOptions {
        limits: node_limits(node),
        links: &links,
    };
    // A refused archive is never kept: name it by its file name, not the temp dir it sat in.
    let name = PathBuf::from(tarball.file_name().unwrap_or(tarball.as_os_str()));
    let info = unpack::unpack(tarball, dest, &opts).map_err(|e| match e {
        UnpackError::Refused { entry, reason, .. } => refused(
            release,
            Refusal::Archive(UnpackError::Refused {
                archive: name,
                entry,
                reason,
            }),
        ),
        UnpackError::Corrupt { after, source, .. } => refused(
            release,
            Refusal::Archive(UnpackError::Corrupt {
                archive: name,
                after,
                source,
            }),
        ),
        other => FetchError::Unpack {
            release: release.clone(),
            source: other,
        },
    })?;
    let digest = match tree::digest(dest) {
        Ok(digest) => digest,
        Err(source) => {
            let _ = fs::remove_dir_all(dest);
            return Err(FetchError::Tree {
                release: release.clone(),
                source,
            });
        }
    };
    if digest != manifest.tree_digest {
        let _ = fs::remove_dir_all(dest);
        return Err(refused(
            release,
            Refusal::TreeDigest {
                expected: manifest.tree_digest.clone(),
                actual: digest,
            },
        ));
    }
    Ok(info)
}

/// `kiln release import`: adds the release whose tarball is `file` (with `<release>.json`, and
/// `<release>.json.sig` if signed, next to it) to releases/, after the same checks as a pull,
/// so that a later deploy of its commit uses it. Returns its manifest.
pub fn import(
    node: &Node,
    project: &Project,
    file: &Path,
    out: &mut Reporter,
) -> Result<Manifest, Error> {
    let paths = &project.paths;
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let id = name
        .strip_suffix(".tar.zst")
        .filter(|id| release::valid_id(id))
        .ok_or_else(|| FetchError::NotATarball {
            path: file.to_path_buf(),
        })?;
    let dir = file.parent().unwrap_or(Path::new("."));
    let manifest_path = dir.join(Part::Manifest.file_name(id));
    let manifest_bytes = match read_optional(&manifest_path)? {
        Some(bytes) => bytes,
        None => {
            return Err(FetchError::MissingManifest {
                path: manifest_path,
            }
            .into());
        }
    };
    let signature = read_optional(&crate::release::signing::signature_path(&manifest_path))?;
    let trusted = trusted_key(project)?;
    let expect = Expect {
        release: id,
        commit: None,
        trusted: trusted.as_ref(),
    };
    let manifest = check_manifest(&expect, &manifest_bytes, signature.as_deref())?;

    // Pruning and deploys read releases/: add to it under the project lock.
    let _lock = crate::transaction::lock::lock(project, "release import", out)?;
    paths.ensure()?;
    let incoming_dir = Incoming::new_dir(paths)?;
    let tarball = incoming_dir.path().join(Part::Tarball.file_name(id));
    let source = File::open(file).map_err(io_err("open", file))?;
    let target = File::create(&tarball).map_err(io_err("create", &tarball))?;
    let mut writer = io::BufWriter::with_capacity(BUFFER, target);
    let (actual, _) =
        copy_hashing(source, &mut writer, u64::MAX).map_err(|e| e.into_fetch(file, u64::MAX))?;
    writer
        .into_inner()
        .map_err(|e| io_err("write", &tarball)(e.into_error()))?;
    check_checksum(id, &manifest, actual)?;

    // The tree is unpacked only to be checked, next to where deploys unpack it.
    let check_dir = tempfile::Builder::new()
        .prefix(".import-")
        .tempdir_in(&paths.deploy)
        .map_err(io_err("create a temp dir in", &paths.deploy))?;
    let info = unpack_checked(node, paths, &tarball, &manifest, &check_dir.path().join(id))?;
    drop(check_dir);
    let incoming = Incoming {
        dir: incoming_dir,
        release: id.to_string(),
        tarball,
        manifest_bytes,
        signature,
        manifest,
    };
    incoming.keep(paths)?;
    out.note(&format!(
        "checked {id}: sha256 matches, {}, tree of {} files matches its digest",
        if trusted.is_some() {
            "signature verified"
        } else {
            "no trusted_key: signature not checked"
        },
        info.files
    ));
    Ok(incoming.manifest)
}

/// Final mode: pulled files carry staging's release ids, not this node's, so pruning by id
/// misses them. A pulled release goes once every release deployed from its commit was pruned
/// (one never deployed, e.g. freshly imported, stays).
pub fn prune_pulled(paths: &ProjectPaths, log: &ReleaseLog, pruned: &[String]) {
    let kept: Vec<&str> = log
        .records
        .iter()
        .filter(|r| !pruned.contains(&r.id))
        .map(|r| r.commit.as_str())
        .collect();
    let gone: Vec<&str> = log
        .records
        .iter()
        .filter(|r| pruned.contains(&r.id) && !kept.contains(&r.commit.as_str()))
        .map(|r| r.commit.as_str())
        .collect();
    if gone.is_empty() {
        return;
    }
    for listed in local_releases(&paths.releases).unwrap_or_default() {
        if gone.contains(&listed.commit.as_str()) {
            for part in [Part::Tarball, Part::Signature, Part::Manifest] {
                let _ = fs::remove_file(paths.releases.join(part.file_name(&listed.release)));
            }
        }
    }
}

/// Failures of [`copy_hashing`], told apart so a too-large source is named as such.
enum CopyError {
    TooLarge,
    Io(io::Error),
}

impl CopyError {
    fn into_fetch(self, path: &Path, limit: u64) -> FetchError {
        match self {
            CopyError::TooLarge => SourceError::TooLarge {
                from: path.display().to_string(),
                limit,
            }
            .into(),
            CopyError::Io(source) => FetchError::Io {
                action: "copy",
                path: path.to_path_buf(),
                source,
            },
        }
    }
}

/// Copies at most `limit` bytes, returning their sha256 (hex) and count.
fn copy_hashing(
    mut reader: impl Read,
    out: &mut dyn Write,
    limit: u64,
) -> Result<(String, u64), CopyError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUFFER];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Io(e)),
        };
        total += n as u64;
        if total > limit {
            return Err(CopyError::TooLarge);
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(CopyError::Io)?;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "20260101T000000Z-0123abcd";

    fn manifest_bytes(release: &str, commit: &str, format: u32) -> Vec<u8> {
        let manifest = Manifest {
            format,
            release: release.into(),
            project: "shop".into(),
            commit: commit.into(),
            pillar_rev: None,
            created: chrono::Utc::now(),
            sha256: "ab".repeat(32),
            files: 1,
            bytes: 1,
            tree_digest: "sha256:00".into(),
            who: None,
            who_key: None,
            process_types: Default::default(),
            buildpacks: Vec::new(),
        };
        manifest.to_json()
    }

    #[test]
    fn manifests_are_checked_before_anything_is_downloaded() {
        let commit = "c".repeat(40);
        let good = manifest_bytes(ID, &commit, 1);
        let expect = Expect {
            release: ID,
            commit: Some(&commit),
            trusted: None,
        };
        assert!(check_manifest(&expect, &good, None).is_ok());
        let cases: [(Vec<u8>, &str); 4] = [
            (b"not json".to_vec(), "its manifest is not valid"),
            (manifest_bytes(ID, &commit, 2), "has format 2"),
            (
                manifest_bytes("20260101T000000Z-ffffffff", &commit, 1),
                "names release `20260101T000000Z-ffffffff`",
            ),
            (manifest_bytes(ID, &"d".repeat(40), 1), "names commit dddd"),
        ];
        for (bytes, expected) in cases {
            let error = check_manifest(&expect, &bytes, None)
                .unwrap_err()
                .to_string();
            assert!(
                error.starts_with(&format!("release {ID} refused: ")) && error.contains(expected),
                "{error} should say {expected}"
            );
        }
    }

    #[test]
    fn a_trusted_key_requires_a_signature() {
        let dir = tempfile::tempdir().unwrap();
        let public = crate::release::signing::generate(dir.path()).unwrap();
        let key = TrustedKey::parse(&public).unwrap();
        let commit = "c".repeat(40);
        let expect = Expect {
            release: ID,
            commit: None,
            trusted: Some(&key),
        };
        let error = check_manifest(&expect, &manifest_bytes(ID, &commit, 1), None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("is not signed"), "{error}");
    }

    #[test]
    fn checksums_compare_whole_digests() {
        let manifest: Manifest =
            serde_json::from_slice(&manifest_bytes(ID, &"c".repeat(40), 1)).unwrap();
        assert!(check_checksum(ID, &manifest, "AB".repeat(32)).is_ok());
        let error = check_checksum(ID, &manifest, "ab".repeat(31))
            .unwrap_err()
            .to_string();
        assert!(error.contains("sha256"), "{error}");
    }

    #[test]
    fn copies_are_hashed_and_capped() {
        let mut out = Vec::new();
        let (sha, n) = copy_hashing(&b"abc"[..], &mut out, 3).ok().unwrap();
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!((n, out.as_slice()), (3, &b"abc"[..]));
        assert!(matches!(
            copy_hashing(&b"abcd"[..], &mut Vec::new(), 3),
            Err(CopyError::TooLarge)
        ));
        let mut writer = HashingWriter::new(Vec::new());
        writer.write_all(b"abc").unwrap();
        assert_eq!(writer.finish().unwrap(), sha);
    }
}
