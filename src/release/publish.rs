//! What a node offers to final-mode nodes: the manifests of its good releases, as
//! `releases/index.json` (for static HTTP servers, which need not list directories) and as
//! `kiln release list --json` (for `ssh://` sources), and the release files themselves through
//! `kiln release export`.

use std::fs::{self, File};
use std::io::{self, Write};

use crate::config::layout::ProjectPaths;
use crate::config::recipe::Mode;
use crate::error::{Error, io_error};
use crate::release::manifest::{self as release, Manifest};
use crate::release::source::{INDEX_FILE, Part};
use crate::transaction::release_log::{ReleaseLog, Status};

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
