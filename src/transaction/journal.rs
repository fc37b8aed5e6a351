//! The deploy journal in state/: before each step that changes run/, data/ or the release log,
//! kiln records (and fsyncs) where it is, so that after a crash at any instant the next kiln
//! command knows exactly what to undo.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::recipe::Cutover;
use crate::error::{Error, io_error};
use crate::fs::durable;
use crate::runtime::formation::Formation;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Building or preparing: nothing live has changed.
    Started,
    /// The data snapshot is complete; services still run, nothing live changed.
    Snapshotted,
    /// The live release's services.stop is about to run (or ran): data/ and run/ may change
    /// from here on.
    Stopping,
    /// run/ is about to be switched (or was): compare run/'s inode with `run_inode`.
    Switching,
    /// run/ is the new release and the deploy commands (migrations) run; the new release's
    /// services have not been started.
    Migrating,
    /// The new release's services are about to start (or did); the check runs. Journals of
    /// older kiln versions say this from the switch on, when the services started first.
    Switched,
}

/// What recovery needs to undo a deploy without kiln.yml or the deploying process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UndoCommands {
    /// The new release's `services.stop`: stops what the deploy started.
    pub stop: Option<String>,
    /// The `services.start` of the release live before (None: nothing was live, so nothing
    /// is started again).
    pub start: Option<String>,
    pub restore: Vec<String>,
    /// The environment of the new release's commands (stop, restore).
    pub env: BTreeMap<String, String>,
    /// The environment of the live release's start; None in journals of older kiln versions,
    /// which ran everything with `env`.
    #[serde(default)]
    pub start_env: Option<BTreeMap<String, String>>,
    pub secrets: Vec<String>,
    pub timeout: Duration,
    /// Where project commands run during a rollback (the live tree).
    pub cwd: std::path::PathBuf,
    /// The supervised processes of the release live before (its own commands, environment,
    /// counts and ports): started again by an undo once its services are. None: it ran none,
    /// or the journal is of an older kiln version.
    #[serde(default)]
    pub processes: Option<Formation>,
    /// The formation of a project stopped with `kiln stop` (the live release's, stopped):
    /// an undo writes it back, still stopped, so that `kiln start` starts the live release's
    /// processes and not the failed release's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_processes: Option<Formation>,
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
    /// The name of the log in logs/ that this deploy or rollback writes (and its recovery
    /// appends to); None in journals of older kiln versions.
    #[serde(default)]
    pub log: Option<String>,
    /// How the new release goes live (kiln.yml `cutover`); `stop` in older journals.
    #[serde(default)]
    pub cutover: Cutover,
    /// `cutover: overlap` only: the deploy commands or `release:` are about to run (or ran)
    /// while the live release serves, so data/ may have changed: an undo restores it.
    #[serde(default)]
    pub migrated: bool,
    /// `cutover: overlap` only: the live release is being stopped (or was), after the new
    /// one passed its check: an undo starts it again.
    #[serde(default)]
    pub live_stopped: bool,
}

impl Journal {
    /// The name of this run's log in logs/.
    pub fn log_name(&self) -> String {
        if let Some(log) = &self.log {
            return log.clone();
        }
        match (self.action.as_str(), self.archive.file_name()) {
            // Older versions kept a rollback's log in its archive: start one in logs/.
            ("rollback", Some(name)) => name.to_string_lossy().into_owned(),
            _ => self.release.clone(),
        }
    }

    pub fn load(path: &Path) -> Result<Option<Journal>, Error> {
        match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| Error::RollbackFailed {
                        reason: format!("the journal `{}` is unreadable ({e})", path.display()),
                        hint: "inspect run/ and data/ by hand, then remove it with \
                               `kiln recover <name> --abandon`"
                            .into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A node may be upgraded between a crash and its recovery: the journal of the previous
    /// version must still load.
    #[test]
    fn a_journal_of_the_previous_version_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.json");
        let old = r#"{"release": "20261122T101500Z-3f2a9c1e", "action": "rollback",
            "previous": "20261121T101500Z-00000001", "phase": "switched", "run_inode": 12,
            "switch": "exchange", "snapshot": null,
            "archive": "/p/archives/20261122T101500Z-3f2a9c1e-rollback-20261123T101500Z-0000abcd",
            "undo": {"stop": "stop", "start": "start", "restore": [], "env": {"A": "1"},
                     "secrets": [], "timeout": {"secs": 60, "nanos": 0}, "cwd": "/p/run"},
            "pid": 7}"#;
        std::fs::write(&path, old).unwrap();
        let journal = Journal::load(&path).unwrap().unwrap();
        assert_eq!(journal.phase, Phase::Switched);
        assert!(journal.phase > Phase::Migrating);
        assert_eq!(journal.undo.start_env, None);
        assert_eq!(journal.undo.processes, None);
        assert_eq!(journal.cutover, Cutover::Stop);
        assert!(!journal.migrated && !journal.live_stopped);
        assert_eq!(
            journal.log_name(),
            "20261122T101500Z-3f2a9c1e-rollback-20261123T101500Z-0000abcd"
        );
    }
}
