//! The pillar: the project's private configuration, pushed to git/pillar.git and checked out in
//! pillar/. Its pillar.yml is merged over kiln.yml's `defaults`; its secrets (which values
//! are is decided in `settings::secrets`) are masked wherever settings are shown.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;

use crate::config::layout::ProjectPaths;
use crate::error::{Error, io_error};
use crate::fs::git;

pub const FILE: &str = "pillar.yml";

/// The pillar as checked out in pillar/: its settings (None: no pillar pushed yet) and commit.
pub struct Pillar {
    pub settings: Option<Value>,
    pub rev: Option<String>,
}

impl Pillar {
    pub fn current(paths: &ProjectPaths) -> Result<Pillar, Error> {
        let rev = if paths.pillar.join(".git").exists() {
            git::Checkout::open_or_init(&paths.pillar, &paths.pillar_repo)?
                .head()
                .map(|oid| oid.to_string())
        } else {
            None
        };
        let file = paths.pillar.join(FILE);
        let settings = match std::fs::read_to_string(&file) {
            Ok(text) => Some(crate::config::settings::parse_pillar(
                &text,
                Path::new(&file),
            )?),
            Err(_) => None,
        };
        Ok(Pillar { settings, rev })
    }
}

/// Checks out pillar commit `oid` in pillar/, readable only by kiln's user.
pub fn checkout(paths: &ProjectPaths, oid: git2::Oid) -> Result<(), Error> {
    let checkout = git::Checkout::open_or_init(&paths.pillar, &paths.pillar_repo)?;
    checkout.checkout(oid)?;
    restrict(&paths.pillar)
}

/// Empties pillar/ (the project had no pillar before the push that failed).
pub fn clear(paths: &ProjectPaths) -> Result<(), Error> {
    std::fs::remove_dir_all(&paths.pillar).map_err(|e| io_error("remove", &paths.pillar, e))?;
    std::fs::create_dir(&paths.pillar).map_err(|e| io_error("create", &paths.pillar, e))?;
    restrict(&paths.pillar)
}

/// Directories 0700, files 0600 (0700 if executable): the pillar holds secrets.
pub fn restrict(dir: &Path) -> Result<(), Error> {
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let entry = entry.map_err(|e| Error::Io {
            action: "read",
            path: dir.to_path_buf(),
            source: e.into(),
        })?;
        let meta = entry
            .path()
            .symlink_metadata()
            .map_err(|e| io_error("read", entry.path(), e))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = if meta.is_dir() || meta.permissions().mode() & 0o100 != 0 {
            0o700
        } else {
            0o600
        };
        if meta.permissions().mode() & 0o7777 != mode {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))
                .map_err(|e| io_error("restrict", entry.path(), e))?;
        }
    }
    Ok(())
}
