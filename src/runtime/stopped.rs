//! `kiln stop`'s mark on a project (`state/stopped.json`): its processes and services were
//! stopped on purpose, by whom and when. Like Dokku's `ps:stop`, a stopped project stays
//! stopped across `kiln boot` (its formation file says so too) until `kiln start` or a
//! deploy, which starts it again and removes the mark. While it is set, a deploy does not
//! run the live release's `services.stop` again, and a failed deploy does not start the
//! live release again: the project stays as the operator left it.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, io_error};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopped {
    /// Who ran `kiln stop` (the SSH user, else the Unix user).
    pub by: String,
    pub at: DateTime<Utc>,
}

impl Stopped {
    pub fn path(state: &Path) -> PathBuf {
        state.join("stopped.json")
    }

    /// The mark, if the project is stopped (an unreadable mark counts as one by nobody).
    pub fn load(state: &Path) -> Option<Stopped> {
        let bytes = std::fs::read(Stopped::path(state)).ok()?;
        Some(serde_json::from_slice(&bytes).unwrap_or(Stopped {
            by: "?".into(),
            at: DateTime::<Utc>::UNIX_EPOCH,
        }))
    }

    pub fn save(&self, state: &Path) -> Result<(), Error> {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        crate::fs::durable::write_atomic(&Stopped::path(state), &bytes, 0o600)
    }

    /// Removes the mark (nothing to do when there is none).
    pub fn clear(state: &Path) -> Result<(), Error> {
        let path = Stopped::path(state);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error("remove", &path, e)),
            _ => Ok(()),
        }
    }

    /// `by ann at 2026-11-23 10:15:00Z`.
    pub fn describe(&self) -> String {
        format!("by {} at {}", self.by, self.at.format("%Y-%m-%d %H:%M:%SZ"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_is_saved_read_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Stopped::load(dir.path()), None);
        let mark = Stopped {
            by: "ann".into(),
            at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        };
        mark.save(dir.path()).unwrap();
        assert_eq!(Stopped::load(dir.path()), Some(mark.clone()));
        assert_eq!(mark.describe(), "by ann at 2027-01-15 08:00:00Z");
        Stopped::clear(dir.path()).unwrap();
        Stopped::clear(dir.path()).unwrap();
        assert_eq!(Stopped::load(dir.path()), None);
    }
}
