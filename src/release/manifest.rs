//! Release identities and manifests. A release id sorts by time (`YYYYMMDDTHHMMSSZ-xxxxxxxx`)
//! but ordering always comes from the release log; the manifest is what production trusts.
//!
//! A manifest is read strictly: a field this kiln does not know is refused, since production
//! must not run a release whose manifest says something it cannot check. Staging and
//! production may run different kiln versions, so that refusal names the field and says that
//! a newer kiln made the manifest: upgrade production before staging.

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

/// The manifest format this kiln writes and reads. A change that an older kiln could not
/// read safely bumps it; a new optional field does not (an older kiln names it, see
/// [`ManifestError::Newer`]).
pub const FORMAT: u32 = 1;

/// `releases/<release>.json`: what was baked, from what, and how to verify it. Parse it with
/// [`Manifest::parse`], which refuses unknown fields (serde's `deny_unknown_fields` cannot say
/// which field it was and that a newer kiln wrote it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
    /// The process types the release runs (its Procfile over its buildpacks' defaults), for
    /// whoever reads the manifest; production runs those of the tree, which the digest covers.
    /// Absent in manifests of older kiln versions and of releases without processes.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub process_types: std::collections::BTreeMap<String, String>,
    /// The buildpacks that built the tree (its `.kiln/buildpacks.json`). Absent when none ran,
    /// and in manifests of older kiln versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buildpacks: Vec<BuiltWith>,
}

/// A buildpack that built a release: its name (`python`) and where it came from
/// (`kiln:python@<content hash>`, a directory, `<git url>#<commit>`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BuiltWith {
    pub name: String,
    pub source: String,
}

/// Why a manifest cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "its manifest was made by a newer kiln: it has the field `{field}` (manifest format {format}), which this kiln does not know; upgrade kiln on this node first (upgrade production before staging)"
    )]
    Newer { field: String, format: u32 },
    #[error(
        "its manifest has format {format} and this kiln reads format {FORMAT}: it was made by a newer kiln; upgrade kiln on this node first (upgrade production before staging)"
    )]
    NewerFormat { format: u64 },
    #[error(
        "its manifest has format {format}, which no kiln writes (this kiln reads format {FORMAT})"
    )]
    UnknownFormat { format: u64 },
    #[error("its manifest is not valid ({reason})")]
    Invalid { reason: String },
}

impl Manifest {
    /// Reads a manifest's bytes: the format must be this kiln's and every field one it knows.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let invalid = |e: serde_json::Error| ManifestError::Invalid {
            reason: e.to_string(),
        };
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(invalid)?;
        match value.get("format").and_then(serde_json::Value::as_u64) {
            Some(format) if format > u64::from(FORMAT) => {
                return Err(ManifestError::NewerFormat { format });
            }
            Some(format) if format < u64::from(FORMAT) => {
                return Err(ManifestError::UnknownFormat { format });
            }
            _ => {}
        }
        let mut unknown = Vec::new();
        let manifest: Manifest =
            serde_ignored::deserialize(value, |path| unknown.push(path.to_string()))
                .map_err(invalid)?;
        match unknown.into_iter().next() {
            Some(field) => Err(ManifestError::Newer {
                field,
                format: manifest.format,
            }),
            None => Ok(manifest),
        }
    }

    pub fn load(path: &Path) -> Result<Manifest, Error> {
        let text = std::fs::read(path).map_err(|e| io_error("read", path, e))?;
        Manifest::parse(&text).map_err(|e| Error::Refused {
            message: format!("`{}`: {e}", path.display()),
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

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT,
            release: "20231114T221320Z-abcdef12".into(),
            project: "shop".into(),
            commit: "c".repeat(40),
            pillar_rev: None,
            created: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            sha256: "0".repeat(64),
            files: 1,
            bytes: 2,
            tree_digest: "d".repeat(64),
            who: Some("ann".into()),
            who_key: None,
            process_types: [("web".to_string(), "python3 app.py".to_string())].into(),
            buildpacks: vec![BuiltWith {
                name: "python".into(),
                source: "kiln:python".into(),
            }],
        }
    }

    #[test]
    fn a_manifest_reads_back_what_was_written() {
        let written = manifest();
        assert_eq!(Manifest::parse(&written.to_json()), Ok(written));
    }

    /// Regression: production running an older kiln refused a newer staging's manifest with
    /// serde's bare "unknown field" (A added `buildpacks`, B `process_types`). It still
    /// refuses, but says why and what to do, naming the field, also inside a list.
    #[test]
    fn regression_a_newer_kilns_manifest_names_the_field_and_says_to_upgrade() {
        let with = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut value = serde_json::to_value(manifest()).unwrap();
            edit(&mut value);
            Manifest::parse(&serde_json::to_vec(&value).unwrap())
        };
        let top = with(&|v| v["sbom"] = serde_json::json!("x")).unwrap_err();
        assert_eq!(
            top,
            ManifestError::Newer {
                field: "sbom".into(),
                format: 1
            }
        );
        assert_eq!(
            top.to_string(),
            "its manifest was made by a newer kiln: it has the field `sbom` (manifest format 1), which this kiln does not know; upgrade kiln on this node first (upgrade production before staging)"
        );
        let nested = with(&|v| v["buildpacks"][0]["version"] = serde_json::json!(3)).unwrap_err();
        assert_eq!(
            nested,
            ManifestError::Newer {
                field: "buildpacks.0.version".into(),
                format: 1
            }
        );
        let format = with(&|v| v["format"] = serde_json::json!(2)).unwrap_err();
        assert_eq!(format, ManifestError::NewerFormat { format: 2 });
        assert!(
            format
                .to_string()
                .contains("upgrade kiln on this node first")
        );
        let missing = with(&|v| {
            v.as_object_mut().unwrap().remove("sha256");
        })
        .unwrap_err();
        assert!(
            matches!(&missing, ManifestError::Invalid { reason } if reason.contains("sha256")),
            "{missing}"
        );
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
