//! What a node offers to final-mode nodes: the manifests of its good releases, as
//! `releases/index.json` (for static HTTP servers, which need not list directories) and as
//! `kiln release list --json` (for `ssh://` sources), the release files themselves through
//! `kiln release export`, and the same files published to an S3-compatible store
//! (`kiln release publish`, project.yml `publish`), which production pulls from as a source.

use std::fs::{self, File};
use std::io::{self, Write};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::layout::ProjectPaths;
use crate::config::node_config::S3Config;
use crate::config::recipe::Mode;
use crate::error::{Error, io_error};
use crate::release::manifest::{self as release, Manifest};
use crate::release::s3::{Location, S3Error, Store};
use crate::release::source::{INDEX_FILE, Part};
use crate::transaction::release_log::{ReleaseLog, Status};

/// Largest store index read back before it is extended.
const INDEX_LIMIT: u64 = 64 << 20;
/// The outcome of the last publish, for `kiln status` (a failed automatic publish is only a
/// warning in the deploy's output, which scrolls away).
pub const PUBLISH_STATE: &str = "publish.json";

/// The releases a node offers, oldest first: in cooking mode the good releases of the
/// release log whose files are still in releases/; in final mode every release in releases/
/// (each was verified when it was pulled or imported), so a production node can feed another.
pub fn offered(paths: &ProjectPaths, log: &ReleaseLog, mode: Mode) -> Result<Vec<Manifest>, Error> {
    let mut manifests = match mode {
        Mode::Editable => Vec::new(),
        Mode::Cooking => log
            .records
            .iter()
            .filter(|r| r.status == Status::Good)
            .filter_map(|r| load(paths, &r.id))
            .collect(),
        Mode::Final => {
            let entries =
                fs::read_dir(&paths.releases).map_err(|e| io_error("list", &paths.releases, e))?;
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name();
                    let id = name.to_str()?.strip_suffix(".json")?.to_string();
                    load(paths, &id)
                })
                .collect()
        }
    };
    if mode == Mode::Final {
        manifests.sort_by(|a, b| (a.created, &a.release).cmp(&(b.created, &b.release)));
    }
    Ok(manifests)
}

/// A release's manifest when both it and its tarball are present and the manifest parses.
fn load(paths: &ProjectPaths, id: &str) -> Option<Manifest> {
    if !release::valid_id(id) || !paths.releases.join(Part::Tarball.file_name(id)).is_file() {
        return None;
    }
    Manifest::load(&paths.releases.join(Part::Manifest.file_name(id)))
        .ok()
        .filter(|m| m.release == id)
}

fn listing(manifests: &[Manifest]) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(manifests).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Rewrites `releases/index.json` (atomically: a server may be reading it).
pub fn write_index(paths: &ProjectPaths, log: &ReleaseLog, mode: Mode) -> Result<(), Error> {
    let manifests = offered(paths, log, mode)?;
    crate::fs::durable::write_atomic(
        &paths.releases.join(INDEX_FILE),
        &listing(&manifests),
        0o644,
    )
}

/// `kiln release list`: the offered releases, as JSON (what `ssh://` sources read) or one
/// line each.
pub fn list(
    paths: &ProjectPaths,
    mode: Mode,
    as_json: bool,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let log = ReleaseLog::load(&paths.release_log())?;
    let manifests = offered(paths, &log, mode)?;
    let written = if as_json {
        out.write_all(&listing(&manifests))
    } else {
        manifests.iter().try_for_each(|m| {
            let signed = paths
                .releases
                .join(Part::Signature.file_name(&m.release))
                .is_file();
            writeln!(
                out,
                "{}  {}  {}  {} files  {}",
                m.release,
                m.commit.get(..7).unwrap_or(&m.commit),
                m.created.format("%Y-%m-%d %H:%M:%S UTC"),
                m.files,
                if signed { "signed" } else { "unsigned" }
            )
        })
    };
    ignore_broken_pipe(written)
}

/// `kiln release export`: copies one file of a release to `out`. An unsigned release has an
/// empty signature, so that the puller can tell "unsigned" from "failed".
pub fn export(
    paths: &ProjectPaths,
    release: &str,
    part: Part,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let unknown = || Error::UnknownRelease {
        project: paths.name.clone(),
        release: release.to_string(),
    };
    if !release::valid_id(release) {
        return Err(unknown());
    }
    let path = paths.releases.join(part.file_name(release));
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let tarball = paths.releases.join(Part::Tarball.file_name(release));
            return if part == Part::Signature && tarball.is_file() {
                Ok(())
            } else {
                Err(unknown())
            };
        }
        Err(e) => return Err(io_error("open", &path, e)),
    };
    let copied = io::copy(&mut file, out).and_then(|_| out.flush());
    match ignore_broken_pipe(copied) {
        Ok(()) => Ok(()),
        Err(Error::Io { source, .. }) => Err(io_error("export", &path, source)),
        Err(e) => Err(e),
    }
}

impl From<S3Error> for Error {
    fn from(e: S3Error) -> Error {
        Error::Store(Box::new(e))
    }
}

/// What [`publish`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    /// Releases uploaded now.
    pub uploaded: Vec<String>,
    /// Releases the store already had (listed in its index, tarball of the same size).
    pub present: Vec<String>,
}

/// `kiln release publish`: uploads every release this node offers that `store` lacks — the
/// tarball, the signature, then the manifest — and then the store's `index.json`: what it
/// listed before plus these, oldest first. A production node lists the store through that
/// index only, so a release is offered once all its files are there. Nothing is ever deleted
/// from the store (expire old objects with the bucket's lifecycle rules), and publishing
/// again uploads nothing. One staging node publishes to one prefix: the index is read,
/// extended and written back.
pub fn publish(
    paths: &ProjectPaths,
    log: &ReleaseLog,
    mode: Mode,
    store: &Store,
) -> Result<Published, Error> {
    let offered = offered(paths, log, mode)?;
    if offered.is_empty() {
        return Err(Error::Usage(format!(
            "project `{}` offers no good release to publish: deploy one first",
            paths.name
        )));
    }
    let mut index_bytes = Vec::new();
    let mut index: Vec<serde_json::Value> =
        match store.get(INDEX_FILE, &mut index_bytes, INDEX_LIMIT)? {
            None => Vec::new(),
            Some(_) => serde_json::from_slice(&index_bytes).map_err(|e| Error::Refused {
                message: format!(
                    "`{}/{INDEX_FILE}` is not a JSON array of manifests ({e}): move it away, then publish again",
                    store.location
                ),
            })?,
        };
    let listed = |index: &[serde_json::Value], id: &str| {
        index
            .iter()
            .any(|entry| entry.get("release").and_then(|r| r.as_str()) == Some(id))
    };
    let mut done = Published::default();
    for manifest in &offered {
        let id = &manifest.release;
        let tarball = paths.releases.join(Part::Tarball.file_name(id));
        let size = fs::metadata(&tarball)
            .map_err(|e| io_error("read", &tarball, e))?
            .len();
        if listed(&index, id) && store.head(&Part::Tarball.file_name(id))? == Some(size) {
            done.present.push(id.clone());
            continue;
        }
        store.put_file(&Part::Tarball.file_name(id), &tarball)?;
        let signature = paths.releases.join(Part::Signature.file_name(id));
        if signature.is_file() {
            store.put_file(&Part::Signature.file_name(id), &signature)?;
        }
        // Byte for byte: the signature covers the manifest's exact bytes.
        let manifest_path = paths.releases.join(Part::Manifest.file_name(id));
        store.put_file(&Part::Manifest.file_name(id), &manifest_path)?;
        index.retain(|entry| entry.get("release").and_then(|r| r.as_str()) != Some(id));
        index.push(serde_json::to_value(manifest).unwrap_or_default());
        done.uploaded.push(id.clone());
    }
    if !done.uploaded.is_empty() {
        let key = |entry: &serde_json::Value| {
            let created = entry
                .get("created")
                .and_then(|v| serde_json::from_value::<DateTime<Utc>>(v.clone()).ok());
            let id = entry
                .get("release")
                .and_then(|v| v.as_str())
                .map(str::to_string);
            (created, id)
        };
        index.sort_by_key(key);
        let mut bytes = serde_json::to_vec_pretty(&index).unwrap_or_default();
        bytes.push(b'\n');
        store.put_bytes(INDEX_FILE, &bytes, "application/json")?;
    }
    Ok(done)
}

/// [`publish`] to the store at `url` (an `s3://` URL, reached with node.yml's `s3:`
/// settings), and records the outcome in state/publish.json for `kiln status`.
pub fn publish_to(
    s3: &S3Config,
    paths: &ProjectPaths,
    log: &ReleaseLog,
    mode: Mode,
    url: &str,
) -> Result<Published, Error> {
    let result = Location::parse(url)
        .map_err(|reason| Error::Usage(format!("cannot publish to `{url}`: {reason}")))
        .and_then(|location| Ok(Store::open(location, s3)?))
        .and_then(|store| publish(paths, log, mode, &store));
    let state = PublishState {
        to: url.to_string(),
        at: Utc::now(),
        release: log.last_good().map(|r| r.id.clone()),
        error: result.as_ref().err().map(|e| crate::error::chain(e)),
    };
    // The outcome is what matters; a state/ that cannot be written fails elsewhere too.
    let _ = state.save(paths);
    result
}

/// The last publish of a project (state/publish.json).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishState {
    pub to: String,
    pub at: DateTime<Utc>,
    /// The newest release offered when it ran.
    pub release: Option<String>,
    /// None: it worked.
    pub error: Option<String>,
}

impl PublishState {
    pub fn load(paths: &ProjectPaths) -> Option<PublishState> {
        let bytes = fs::read(paths.state.join(PUBLISH_STATE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn save(&self, paths: &ProjectPaths) -> Result<(), Error> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        crate::fs::durable::write_atomic(&paths.state.join(PUBLISH_STATE), &bytes, 0o600)
    }
}

/// A reader that went away (`| head`) is not an error.
fn ignore_broken_pipe(result: io::Result<()>) -> Result<(), Error> {
    match result {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(io_error("write", std::path::Path::new("stdout"), e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transaction::release_log::Record;
    use chrono::Utc;

    fn paths(root: &std::path::Path) -> ProjectPaths {
        let paths = crate::config::layout::Layout::default_layout().project(root, "shop");
        paths.ensure().unwrap();
        paths
    }

    fn add(paths: &ProjectPaths, id: &str, tarball: bool) {
        let manifest = Manifest {
            format: 1,
            release: id.into(),
            project: "shop".into(),
            commit: "a".repeat(40),
            pillar_rev: None,
            created: Utc::now(),
            sha256: "0".repeat(64),
            files: 1,
            bytes: 1,
            tree_digest: "sha256:0".into(),
            who: None,
            who_key: None,
            buildpacks: Vec::new(),
        };
        manifest.save(&paths.manifest(id)).unwrap();
        if tarball {
            fs::write(paths.tarball(id), b"tar").unwrap();
        }
    }

    fn record(id: &str, status: Status) -> Record {
        crate::transaction::release_log::test_record(id, status)
    }

    const GOOD: &str = "20260101T000000Z-00000001";
    const FAILED: &str = "20260101T000001Z-00000002";
    const PRUNED: &str = "20260101T000002Z-00000003";

    #[test]
    fn cooking_nodes_offer_only_good_releases_with_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths(dir.path());
        add(&paths, GOOD, true);
        add(&paths, FAILED, true);
        add(&paths, PRUNED, false);
        let log = ReleaseLog {
            current: Some(GOOD.into()),
            records: vec![
                record(GOOD, Status::Good),
                record(FAILED, Status::Failed),
                record(PRUNED, Status::Good),
            ],
        };
        let ids = |mode| -> Vec<String> {
            offered(&paths, &log, mode)
                .unwrap()
                .into_iter()
                .map(|m| m.release)
                .collect()
        };
        assert_eq!(ids(Mode::Cooking), [GOOD]);
        assert_eq!(ids(Mode::Final), [GOOD, FAILED]);
        assert!(ids(Mode::Editable).is_empty());

        write_index(&paths, &log, Mode::Cooking).unwrap();
        let index: Vec<Manifest> =
            serde_json::from_slice(&fs::read(paths.releases.join(INDEX_FILE)).unwrap()).unwrap();
        assert_eq!(index.len(), 1);
        assert_eq!(index[0].release, GOOD);
    }

    #[test]
    fn export_copies_files_and_an_empty_signature_for_unsigned_releases() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths(dir.path());
        add(&paths, GOOD, true);
        let mut out = Vec::new();
        export(&paths, GOOD, Part::Tarball, &mut out).unwrap();
        assert_eq!(out, b"tar");
        let mut out = Vec::new();
        export(&paths, GOOD, Part::Manifest, &mut out).unwrap();
        assert_eq!(out, fs::read(paths.manifest(GOOD)).unwrap());
        let mut out = Vec::new();
        export(&paths, GOOD, Part::Signature, &mut out).unwrap();
        assert!(out.is_empty());
        for (id, part) in [
            (PRUNED, Part::Signature),
            (PRUNED, Part::Tarball),
            ("../../etc/passwd", Part::Tarball),
        ] {
            let error = export(&paths, id, part, &mut Vec::new()).unwrap_err();
            assert!(
                matches!(error, Error::UnknownRelease { .. }),
                "{id}: {error}"
            );
        }
    }
}
