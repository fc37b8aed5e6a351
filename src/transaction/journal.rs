//! The deploy journal in state/: before each step that changes run/, data/ or the release log,
//! kiln records (and fsyncs) where it is, so that after a crash at any instant the next kiln
//! command knows exactly what to undo.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, io_error};
use crate::fs::durable;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Building or preparing: nothing live has changed.
    Started,
    /// The data snapshot is complete; services still run, nothing live changed.
    Snapshotted,
    /// services.stop is about to run (or ran): data/ and run/ may change from here on.
    Stopping,
    /// run/ is about to be switched (or was): compare run/'s inode with `run_inode`.
    Switching,
    /// run/ is the new release; services start, deploy commands and the check run.
    Switched,
}

/// What recovery needs to undo a deploy without kiln.yml or the deploying process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UndoCommands {
    pub stop: Option<String>,
    pub start: Option<String>,
    pub restore: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub timeout: Duration,
    /// Where project commands run during a rollback (the live tree).
    pub cwd: std::path::PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub release: String,
    pub action: String,
    /// The release live before this deploy, if any.
    pub previous: Option<String>,
    pub phase: Phase,
    /// run/'s inode before the switch: if run/ has another inode, the switch happened.
    pub run_inode: Option<u64>,
    /// How run/ is switched: "exchange" (atomic rename) or "in-place" (sync while stopped).
    pub switch: String,
    /// Restore data/ from this snapshot when undoing (None: data/ was not touched).
    pub snapshot: Option<std::path::PathBuf>,
    /// archives/<...> of this deploy or rollback: where the failed tree is kept.
    pub archive: std::path::PathBuf,
    pub undo: UndoCommands,
    pub pid: u32,
}

impl Journal {
    pub fn load(path: &Path) -> Result<Option<Journal>, Error> {
        match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| Error::RollbackFailed {
                        reason: format!("the journal `{}` is unreadable ({e})", path.display()),
                        hint: "inspect run/ and data/ by hand, then remove the journal".into(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("read", path, e)),
        }
    }

    /// Records the journal durably before the step it announces.
    pub fn record(&mut self, path: &Path, phase: Phase) -> Result<(), Error> {
        self.phase = phase;
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        durable::write_atomic(path, &bytes, 0o600)
    }

    pub fn remove(path: &Path) -> Result<(), Error> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error("remove", path, e)),
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        durable::fsync_dir(dir).map_err(|e| io_error("sync", dir, e))
    }
}
