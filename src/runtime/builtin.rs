//! kiln's own buildpacks (the repository's `buildpacks/`: python, nodejs, static, procfile)
//! travel inside the kiln binary, so a node needs no source tree. On first use each is written
//! out under `<root>/.kiln/buildpacks/builtin/<name>-<content hash>/`: a kiln whose buildpacks
//! changed writes a new directory and never runs an older copy.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use include_dir::{Dir, DirEntry, include_dir};
use sha2::{Digest, Sha256};

static BUILDPACKS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/buildpacks");

/// Writing a buildpack out failed (a full disk, a root kiln may not write to).
#[derive(Debug, thiserror::Error)]
#[error("could not {action} `{}` (writing out kiln's buildpack `{name}`)", path.display())]
pub struct MaterializeError {
    pub name: String,
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Where a node keeps the buildpacks it materialized or cloned (docs/layout.md).
pub fn node_dir(root: &Path) -> PathBuf {
    root.join(".kiln").join("buildpacks")
}

/// The embedded files of buildpack `name`: (path relative to the buildpack, content), in a
/// fixed order. Its own tests (`test/`) stay in the repository.
fn files(name: &str) -> Vec<(PathBuf, &'static [u8])> {
    let mut found = Vec::new();
    let Some(dir) = BUILDPACKS.get_dir(name) else {
        return found;
    };
    let mut stack = vec![dir];
    while let Some(dir) = stack.pop() {
        for entry in dir.entries() {
            match entry {
                DirEntry::Dir(sub) if sub.path().ends_with("test") => {}
                DirEntry::Dir(sub) => stack.push(sub),
                DirEntry::File(file) => {
                    let rel = file
                        .path()
                        .strip_prefix(name)
                        .unwrap_or(file.path())
                        .to_path_buf();
                    found.push((rel, file.contents()));
                }
            }
        }
    }
    found.sort();
    found
}

/// Whether kiln ships a buildpack called `name`.
pub fn exists(name: &str) -> bool {
    !files(name).is_empty()
}

/// The directory of kiln's buildpack `name` on this node (None: kiln has no such buildpack),
/// written out if this kiln has not done so yet. Written into a temp dir and renamed into
/// place, so a directory that exists is complete (two deploys writing it at once both end up
/// with the same, whole one).
pub fn materialize(root: &Path, name: &str) -> Result<Option<PathBuf>, MaterializeError> {
    let files = files(name);
    if files.is_empty() {
        return Ok(None);
    }
    let mut hasher = Sha256::new();
    for (path, content) in &files {
        hasher.update(path.as_os_str().as_encoded_bytes());
        hasher.update([0]);
        hasher.update((content.len() as u64).to_le_bytes());
        hasher.update(content);
    }
    let hash = hex::encode(hasher.finalize());
    let parent = node_dir(root).join("builtin");
    let dir = parent.join(format!("{name}-{}", &hash[..12]));
    if dir.is_dir() {
        return Ok(Some(dir));
    }
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| MaterializeError {
            name: name.to_string(),
            action,
            path,
            source,
        }
    };
    fs::create_dir_all(&parent).map_err(io("create", &parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".tmp-{name}-"))
        .tempdir_in(&parent)
        .map_err(io("create a temp dir in", &parent))?;
    for (rel, content) in &files {
        let path = tmp.path().join(rel);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io("create", dir))?;
        }
        // bin/detect, bin/compile, bin/release and any script kiln runs must be executable.
        let executable = rel.starts_with("bin") || content.starts_with(b"#!");
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if executable { 0o755 } else { 0o644 })
            .open(&path)
            .and_then(|mut file| file.write_all(content))
            .map_err(io("write", &path))?;
    }
    let tmp = tmp.keep();
    if let Err(source) = fs::rename(&tmp, &dir) {
        let _ = fs::remove_dir_all(&tmp);
        // Another deploy put the same content there first.
        if !dir.is_dir() {
            return Err(MaterializeError {
                name: name.to_string(),
                action: "create",
                path: dir,
                source,
            });
        }
    }
    Ok(Some(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::buildpack_ref::BUILTIN;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn every_builtin_is_embedded_complete_and_executable() {
        let root = tempfile::tempdir().unwrap();
        for name in BUILTIN {
            assert!(exists(name), "{name}");
            let dir = materialize(root.path(), name).unwrap().unwrap();
            for bin in ["detect", "compile", "release"] {
                let mode = fs::metadata(dir.join("bin").join(bin))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o755, "{name} bin/{bin}");
            }
            assert!(!dir.join("test").exists(), "{name}: tests are not shipped");
            // The second use finds the same directory.
            assert_eq!(materialize(root.path(), name).unwrap(), Some(dir));
        }
        assert!(!exists("ruby"));
        assert!(materialize(root.path(), "ruby").unwrap().is_none());
        let leftovers: Vec<_> = fs::read_dir(root.path().join(".kiln/buildpacks/builtin"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
