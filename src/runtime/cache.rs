//! A project's build cache, `cache/<buildpack>/` (docs/layout.md): what buildpacks keep
//! between builds (pip's and npm's downloads, an installed virtualenv or node_modules keyed by
//! the lockfile). It is outside build/, so it is never baked into a release; `kiln cache
//! clear` wipes it when a cached install went bad.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("could not {action} `{}`", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "project `{project}` has no build cache of buildpack `{buildpack}` ({}): nothing was removed",
        if cached.is_empty() { "its cache is empty".to_string() } else { format!("it has: {}", cached.join(", ")) }
    )]
    NotCached {
        project: String,
        buildpack: String,
        cached: Vec<String>,
    },
}

impl From<CacheError> for crate::error::Error {
    fn from(e: CacheError) -> Self {
        match e {
            // Bad input: exit 2, like any unknown name.
            CacheError::NotCached { .. } => crate::error::Error::Usage(e.to_string()),
            CacheError::Io { .. } => crate::error::Error::Buildpack(Box::new(e)),
        }
    }
}

/// What `kiln cache clear` removed: each buildpack's cache with its size in bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cleared {
    pub removed: Vec<(String, u64)>,
}

/// The buildpacks with a cache under `cache`, sorted.
pub fn cached(cache: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(cache)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Removes the cache of `buildpack`, or every buildpack's. The caller holds the project lock,
/// so no build is using it.
pub fn clear(cache: &Path, project: &str, buildpack: Option<&str>) -> Result<Cleared, CacheError> {
    let present = cached(cache);
    let names = match buildpack {
        None => present,
        Some(name) if present.iter().any(|p| p == name) => vec![name.to_string()],
        Some(name) => {
            return Err(CacheError::NotCached {
                project: project.to_string(),
                buildpack: name.to_string(),
                cached: present,
            });
        }
    };
    let mut cleared = Cleared::default();
    for name in names {
        let dir = cache.join(&name);
        let bytes = size(&dir);
        fs::remove_dir_all(&dir).map_err(|source| CacheError::Io {
            action: "remove",
            path: dir.clone(),
            source,
        })?;
        cleared.removed.push((name, bytes));
    }
    Ok(cleared)
}

/// Bytes of the regular files below `dir` (symlinks not followed).
pub fn size(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// `12.3 MB`, for people.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clears_one_or_all() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        for (name, bytes) in [("python", 10), ("nodejs", 2000)] {
            fs::create_dir_all(cache.join(name).join("deep")).unwrap();
            fs::write(cache.join(name).join("deep/file"), vec![0u8; bytes]).unwrap();
        }
        assert_eq!(cached(&cache), ["nodejs", "python"]);
        let error = clear(&cache, "shop", Some("ruby")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "project `shop` has no build cache of buildpack `ruby` (it has: nodejs, python): nothing was removed"
        );
        assert_eq!(
            clear(&cache, "shop", Some("python")).unwrap().removed,
            [("python".to_string(), 10)]
        );
        assert_eq!(cached(&cache), ["nodejs"]);
        assert_eq!(
            clear(&cache, "shop", None).unwrap().removed,
            [("nodejs".to_string(), 2000)]
        );
        assert_eq!(clear(&cache, "shop", None).unwrap(), Cleared::default());
        assert!(
            clear(&cache, "shop", Some("python"))
                .unwrap_err()
                .to_string()
                .contains("(its cache is empty)")
        );
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human(999), "999 bytes");
        assert_eq!(human(12_345_678), "12.3 MB");
        assert_eq!(human(2_000), "2.0 KB");
    }
}
