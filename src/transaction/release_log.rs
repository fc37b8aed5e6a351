//! The release log in state/: every release with its status and times. "Live", "last good",
//! the rollback target and what pruning keeps all come from here, never from names or mtimes.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, io_error};
use crate::exec::report::StageDuration;
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
    /// The environment it deployed in (`dev`, `staging`, `prod`); None in logs of older kiln
    /// versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    pub status: Status,
    pub who: String,
    /// The fingerprint of the SSH key `who` pushed with (`SHA256:...`), when over SSH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who_key: Option<String>,
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
    /// Each time this release was live, oldest first (empty in logs of older kiln versions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub live: Vec<LivePeriod>,
    /// How long each stage of its deploy took, up to where it ended (empty in logs of older
    /// kiln versions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageDuration>,
}

/// One stretch of time a release was live: from the commit point of the deploy or rollback
/// that took it live to the commit point of the one that replaced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivePeriod {
    pub from: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// The archive (a name under archives/) whose `data` is the snapshot of data/ taken when
    /// the release was replaced: data/ as it was when this release was live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_snapshot: Option<String>,
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

    /// Records that `id` went live at `at`, replacing the current release, whose data/ was
    /// snapshotted into archives/`snapshot` (None: no snapshot, e.g. editable mode).
    pub fn went_live(&mut self, id: &str, at: DateTime<Utc>, snapshot: Option<String>) {
        if let Some(previous) = self
            .current
            .clone()
            .filter(|p| p != id)
            .and_then(|p| self.get_mut(&p))
        {
            if previous.live.last().is_none_or(|p| p.until.is_some()) {
                // Live since before kiln kept periods: since its deploy finished.
                let from = previous.finished.unwrap_or(previous.started);
                previous.live.push(LivePeriod {
                    from,
                    until: None,
                    replaced_snapshot: None,
                });
            }
            if let Some(period) = previous.live.last_mut() {
                period.until = Some(at);
                period.replaced_snapshot = snapshot;
            }
        }
        if self.current.as_deref() != Some(id)
            && let Some(record) = self.get_mut(id)
        {
            record.live.push(LivePeriod {
                from: at,
                until: None,
                replaced_snapshot: None,
            });
        }
        self.current = Some(id.to_string());
    }

    /// What was live, oldest first: (release, when it went live). Records from older kiln
    /// versions, without periods, count as live once, from when their deploy finished.
    pub fn history(&self) -> Vec<(&str, DateTime<Utc>)> {
        let mut history: Vec<(&str, DateTime<Utc>)> = Vec::new();
        for record in &self.records {
            if record.live.is_empty() {
                if let (Status::Good | Status::RolledBack, Some(finished)) =
                    (record.status, record.finished)
                {
                    history.push((&record.id, finished));
                }
            } else {
                history.extend(record.live.iter().map(|p| (record.id.as_str(), p.from)));
            }
        }
        history.sort_by_key(|(_, from)| *from);
        history
    }

    /// Where plain `kiln rollback` goes: the release that was live before the current one,
    /// walking back through what was live and skipping the current release and failures.
    pub fn previous_live(&self) -> Option<&Record> {
        self.history()
            .into_iter()
            .rev()
            .filter(|(id, _)| Some(*id) != self.current.as_deref())
            .filter_map(|(id, _)| self.get(id))
            .find(|r| matches!(r.status, Status::Good | Status::RolledBack))
    }

    /// What `kiln rollback --to-before <id>` goes to: the release that was live just before
    /// `id` last went live (None: `id` was the first release live, or never was).
    pub fn live_before(&self, id: &str) -> Option<&Record> {
        let history = self.history();
        let last = history.iter().rposition(|(live, _)| *live == id)?;
        history[..last]
            .last()
            .and_then(|(before, _)| self.get(before))
    }

    /// The archive (a name under archives/) holding data/ as it was when `id` was last live:
    /// the snapshot taken when it was last replaced.
    pub fn snapshot_when_replaced(&self, id: &str) -> Option<String> {
        let record = self.get(id)?;
        if record.live.is_empty() {
            // A log of an older kiln: the snapshot of the deploy that followed it.
            let position = self.records.iter().position(|r| r.id == id)?;
            return self.records[position + 1..]
                .iter()
                .find(|r| r.snapshot_at.is_some())
                .map(|r| r.id.clone());
        }
        record
            .live
            .iter()
            .rev()
            .find_map(|p| p.until.and(p.replaced_snapshot.clone()))
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
    /// `keep` good releases (rolled back ones count: they are good to return to), the live one,
    /// the last good one, the one plain `kiln rollback` goes to, and the newest `keep` failures.
    pub fn prunable(&self, keep: usize) -> Vec<String> {
        let mut kept: Vec<&str> = Vec::new();
        let good = |r: &&Record| matches!(r.status, Status::Good | Status::RolledBack);
        kept.extend(
            self.records
                .iter()
                .rev()
                .filter(good)
                .take(keep)
                .map(|r| r.id.as_str()),
        );
        kept.extend(
            self.records
                .iter()
                .rev()
                .filter(|r| r.status == Status::Failed)
                .take(keep)
                .map(|r| r.id.as_str()),
        );
        if let Some(current) = &self.current {
            kept.push(current);
        }
        if let Some(last) = self.last_good() {
            kept.push(&last.id);
        }
        // Where plain `kiln rollback` would go.
        if let Some(previous) = self.previous_live() {
            kept.push(&previous.id);
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
        environment: None,
        status,
        who: "t".into(),
        who_key: None,
        started: Utc::now(),
        finished: None,
        failure: None,
        source_release: None,
        snapshot_at: None,
        live: Vec::new(),
        stages: Vec::new(),
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
        // e was rolled away from: it is one of the newest two good releases to return to.
        assert_eq!(prunable, vec!["b".to_string(), "c".to_string()]);
    }

    fn live(log: &mut ReleaseLog, id: &str, minute: u32, snapshot: &str) {
        let at = DateTime::parse_from_rfc3339(&format!("2026-01-01T00:{minute:02}:00Z"))
            .unwrap()
            .with_timezone(&Utc);
        log.went_live(id, at, Some(snapshot.into()));
    }

    #[test]
    fn previous_live_walks_back_through_what_was_live() {
        use Status::*;
        let mut log = ReleaseLog::default();
        for id in ["a", "b", "c"] {
            log.records.push(record(id, Good));
        }
        log.records.push(record("f", Failed));
        live(&mut log, "a", 1, "a");
        live(&mut log, "b", 2, "b");
        live(&mut log, "c", 3, "c");
        live(&mut log, "a", 4, "a-rollback-1");
        // a, b, c, a: before the current a, c was live.
        assert_eq!(log.previous_live().map(|r| r.id.as_str()), Some("c"));
        live(&mut log, "c", 5, "c-rollback-2");
        assert_eq!(log.previous_live().map(|r| r.id.as_str()), Some("a"));
    }

    #[test]
    fn live_before_is_what_was_live_just_before_the_last_time_it_went_live() {
        use Status::*;
        let mut log = ReleaseLog::default();
        for id in ["a", "b", "c"] {
            log.records.push(record(id, Good));
        }
        log.records.push(record("f", Failed));
        live(&mut log, "a", 1, "a");
        assert_eq!(log.live_before("a").map(|r| r.id.as_str()), None);
        live(&mut log, "b", 2, "b");
        live(&mut log, "c", 3, "c");
        assert_eq!(log.live_before("c").map(|r| r.id.as_str()), Some("b"));
        // Rolled back from c to a, then c again: before c's last period, a was live.
        live(&mut log, "a", 4, "a-rollback-1");
        live(&mut log, "c", 5, "c-rollback-2");
        assert_eq!(log.live_before("c").map(|r| r.id.as_str()), Some("a"));
        assert_eq!(log.live_before("b").map(|r| r.id.as_str()), Some("a"));
        assert!(log.live_before("f").is_none(), "never live");
        assert!(log.live_before("x").is_none(), "unknown");
    }

    #[test]
    fn the_snapshot_of_a_release_is_the_one_taken_when_it_was_last_replaced() {
        use Status::*;
        let mut log = ReleaseLog::default();
        for id in ["a", "b", "c"] {
            log.records.push(record(id, Good));
        }
        live(&mut log, "a", 1, "a");
        live(&mut log, "b", 2, "b");
        live(&mut log, "a", 3, "a-rollback-1");
        live(&mut log, "c", 4, "c");
        assert_eq!(log.snapshot_when_replaced("a").as_deref(), Some("c"));
        assert_eq!(
            log.snapshot_when_replaced("b").as_deref(),
            Some("a-rollback-1")
        );
        assert_eq!(log.snapshot_when_replaced("c"), None, "c is live");
    }

    #[test]
    fn logs_of_older_versions_still_give_a_history_and_a_snapshot() {
        use Status::*;
        let mut a = record("a", RolledBack);
        a.finished = Some(Utc::now() - chrono::Duration::minutes(2));
        let mut b = record("b", Good);
        b.finished = Some(Utc::now() - chrono::Duration::minutes(1));
        b.snapshot_at = b.finished;
        let text = serde_json::to_string(&ReleaseLog {
            current: Some("b".into()),
            records: vec![a, b],
        })
        .unwrap();
        assert!(!text.contains("\"live\""), "{text}");
        let log: ReleaseLog = serde_json::from_str(&text).unwrap();
        assert_eq!(log.previous_live().map(|r| r.id.as_str()), Some("a"));
        assert_eq!(log.snapshot_when_replaced("a").as_deref(), Some("b"));
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
