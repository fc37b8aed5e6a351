//! Release identities and manifests. A release id sorts by time (`YYYYMMDDTHHMMSSZ-xxxxxxxx`)
//! but ordering always comes from the release log; the manifest is what production trusts.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, io_error};
use crate::fs::durable;

pub fn new_id(now: DateTime<Utc>) -> String {
    let mut bytes = [0u8; 4];
    // A failing OS random source is not worth failing a deploy: the time part stays unique
    // per second and the lock serialises deploys of one project.
    if getrandom::fill(&mut bytes).is_err() {
        bytes = std::process::id().to_be_bytes();
    }
    format!("{}-{}", now.format("%Y%m%dT%H%M%SZ"), hex::encode(bytes))
}

/// `^\d{8}T\d{6}Z-[0-9a-f]{8}$`: checked before a release id from a user or a remote is used
/// in a path.
pub fn valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 25
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[17..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// `releases/<release>.json`: what was baked, from what, and how to verify it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub release: String,
    pub project: String,
    pub commit: String,
    pub pillar_rev: Option<String>,
    pub created: DateTime<Utc>,
    /// sha256 of `<release>.tar.zst`, hex.
    pub sha256: String,
    pub files: u64,
    pub bytes: u64,
    /// tree::digest of the release tree.
    pub tree_digest: String,
    /// Who pushed the commit this release was baked from, and the fingerprint of their SSH
    /// key when they pushed over SSH. Absent in manifests of older kiln versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who_key: Option<String>,
    /// The buildpacks that built the tree (its `.kiln/buildpacks.json`). Absent when none ran,
    /// and in manifests of older kiln versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buildpacks: Vec<BuiltWith>,
}

/// A buildpack that built a release: its name (`python`) and where it came from
/// (`kiln:python@<content hash>`, a directory, `<git url>#<commit>`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BuiltWith {
    pub name: String,
    pub source: String,
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest, Error> {
        let text = std::fs::read(path).map_err(|e| io_error("read", path, e))?;
        serde_json::from_slice(&text).map_err(|e| Error::Refused {
            message: format!("`{}` is not a valid release manifest: {e}", path.display()),
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    pub fn save(&self, path: &Path) -> Result<(), Error> {
        durable::write_atomic(path, &self.to_json(), 0o644)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_and_sort_by_time() {
        let a = new_id(DateTime::from_timestamp(1_700_000_000, 0).unwrap());
        let b = new_id(DateTime::from_timestamp(1_700_000_001, 0).unwrap());
        assert!(valid_id(&a), "{a}");
        assert!(a < b);
        assert!(a.starts_with("20231114T221320Z-"), "{a}");
    }

    #[test]
    fn invalid_ids() {
        for id in [
            "",
            "../etc",
            "20231114T221320Z-ABCDEF12",
            "20231114T221320Z-abcdef1",
            "20231114X221320Z-abcdef12",
            "20231114T221320Z-abcdef12/",
        ] {
            assert!(!valid_id(id), "{id}");
        }
    }
}
