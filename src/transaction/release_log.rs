//! The release log in state/: every release with its status and times. "Live", "last good",
//! the rollback target and what pruning keeps all come from here, never from names or mtimes.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, io_error};
use crate::fs::durable;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A deploy is under way (or was interrupted and not yet recovered).
    Running,
    /// Went live and passed every stage.
    Good,
    /// Failed; the node was put back as it was.
    Failed,
    /// Was good, then an operator rolled back away from it.
    RolledBack,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Good => "good",
            Status::Failed => "failed",
            Status::RolledBack => "rolled back",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub commit: String,
    pub pillar_rev: Option<String>,
    pub mode: String,
    pub status: Status,
    pub who: String,
    pub started: DateTime<Utc>,
    pub finished: Option<DateTime<Utc>>,
    /// Where and why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Final mode: the staging release whose tarball this release deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_release: Option<String>,
    /// When the data snapshot taken before this release went live was complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReleaseLog {
    /// The release whose tree is live in run/.
    pub current: Option<String>,
    pub records: Vec<Record>,
}

impl ReleaseLog {
    pub fn load(path: &Path) -> Result<ReleaseLog, Error> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Refused {
                message: format!(
                    "the release log `{}` is damaged ({e}): restore it from a backup or move it away",
                    path.display()
                ),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ReleaseLog::default()),
            Err(e) => Err(io_error("read", path, e)),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        durable::write_atomic(path, &bytes, 0o600)
    }

    pub fn get(&self, id: &str) -> Option<&Record> {
        self.records.iter().find(|r| r.id == id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Record> {
        self.records.iter_mut().find(|r| r.id == id)
    }

    /// The newest good release, in log order.
    pub fn last_good(&self) -> Option<&Record> {
        self.records.iter().rev().find(|r| r.status == Status::Good)
    }

    /// The newest release with a complete data snapshot other than `except`, to share
    /// unchanged files with.
    pub fn last_snapshot(&self, except: &str) -> Option<&Record> {
        self.records
            .iter()
            .rev()
            .find(|r| r.id != except && r.snapshot_at.is_some())
    }

    /// Releases whose leftovers (deploy dir, tarball, archives) may go: everything but the newest
    /// `keep` good releases, the live one, the last good one, and the newest `keep` failures.
    pub fn prunable(&self, keep: usize) -> Vec<String> {
        let mut kept: Vec<&str> = Vec::new();
        let good: Vec<&Record> = self
            .records
            .iter()
            .rev()
            .filter(|r| r.status == Status::Good)
            .collect();
        kept.extend(good.iter().take(keep).map(|r| r.id.as_str()));
        kept.extend(
            self.records
                .iter()
                .rev()
                .filter(|r| r.status != Status::Good)
                .take(keep)
                .map(|r| r.id.as_str()),
        );
        if let Some(current) = &self.current {
            kept.push(current);
        }
        if let Some(last) = self.last_good() {
            kept.push(&last.id);
        }
        self.records
            .iter()
            .filter(|r| r.status != Status::Running && !kept.contains(&r.id.as_str()))
            .map(|r| r.id.clone())
            .collect()
    }
}

/// A record for unit tests of code that reads the log.
#[cfg(test)]
pub(crate) fn test_record(id: &str, status: Status) -> Record {
    Record {
        id: id.into(),
        commit: "a".repeat(40),
        pillar_rev: None,
        mode: "cooking".into(),
        status,
        who: "t".into(),
        started: Utc::now(),
        finished: None,
        failure: None,
        source_release: None,
        snapshot_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, status: Status) -> Record {
        test_record(id, status)
    }

    #[test]
    fn prune_never_removes_live_or_last_good_after_many_failures() {
        use Status::*;
        let mut log = ReleaseLog::default();
        log.records.push(record("a", Good));
        for i in 0..10 {
            log.records.push(record(&format!("f{i}"), Failed));
        }
        log.current = Some("a".into());
        let prunable = log.prunable(2);
        assert!(!prunable.contains(&"a".to_string()));
        assert!(prunable.contains(&"f0".to_string()));
        assert!(
            !prunable.contains(&"f9".to_string()),
            "newest failures kept for inspection"
        );
        assert_eq!(prunable.len(), 8);
    }

    #[test]
    fn prune_keeps_newest_good_and_current() {
        use Status::*;
        let mut log = ReleaseLog::default();
        for id in ["a", "b", "c", "d"] {
            log.records.push(record(id, Good));
        }
        log.records.push(record("e", RolledBack));
        log.current = Some("a".into());
        let prunable = log.prunable(2);
        assert_eq!(prunable, vec!["b".to_string()]);
    }

    #[test]
    fn last_good_follows_log_order_not_names() {
        use Status::*;
        let mut log = ReleaseLog::default();
        log.records.push(record("z", Good));
        log.records.push(record("a", Good));
        log.records.push(record("m", Failed));
        assert_eq!(log.last_good().map(|r| r.id.as_str()), Some("a"));
    }
}
