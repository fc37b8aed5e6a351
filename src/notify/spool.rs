//! The spool: notifications not yet delivered, under `<root>/.kiln/spool/<project>/<id>.json`
//! (mode 0700, files 0600: messages carry log lines). A deploy writes its notification here and
//! returns; a background `kiln notify deliver` sends it, `kiln notify retry` and the next
//! deploy send what is left. Once every recipient has it, the entry leaves the spool and its
//! results go to `logs/<log>.notify.json` beside the deploy's log, pruned with it.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::layout::ProjectPaths;
use crate::fs::durable;
use crate::notify::error::NotifyError;
use crate::notify::message::Message;
use crate::notify::webhook::shown_url;

/// Under the node root; `.kiln` is never a valid project name.
pub const SPOOL_DIR: &str = ".kiln/spool";

/// The format of spool entries and results files.
const FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Mail,
    Webhook,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Mail => "mail",
            Channel::Webhook => "webhook",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Not sent yet; the background delivery will try (again) at `next_attempt`.
    Pending,
    Delivered,
    /// The automatic attempts are used up: `kiln notify retry` or the next deploy tries again.
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Delivered => "delivered",
            Status::Failed => "failed",
        }
    }
}

/// One recipient of one notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub channel: Channel,
    /// A mail address, or the webhook's whole URL.
    pub to: String,
    /// Webhooks: the pillar key whose value signs the body (never the value itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub status: Status,
    pub attempts: u32,
    /// Automatic attempts left before it waits for `kiln notify retry` or the next deploy.
    pub budget: u32,
    pub next_attempt: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
}

impl Target {
    pub fn new(channel: Channel, to: String, secret: Option<String>, budget: u32) -> Target {
        Target {
            channel,
            to,
            secret,
            status: Status::Pending,
            attempts: 0,
            budget,
            next_attempt: None,
            last_error: None,
            delivered_at: None,
        }
    }

    /// The recipient as shown in status and logs (a webhook without its path).
    pub fn shown(&self) -> String {
        match self.channel {
            Channel::Mail => self.to.clone(),
            Channel::Webhook => shown_url(&self.to),
        }
    }

    pub fn result(&self) -> Delivery {
        Delivery {
            channel: self.channel,
            to: self.shown(),
            status: self.status,
            attempts: self.attempts,
            error: self.last_error.clone(),
            delivered_at: self.delivered_at,
        }
    }
}

/// What became of one recipient, as `kiln status`, `kiln releases` and the results file show
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub channel: Channel,
    pub to: String,
    pub status: Status,
    pub attempts: u32,
    pub error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// One spooled notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub format: u32,
    /// Unique within the project: the log name of a deploy or rollback, or `alert-...`.
    pub id: String,
    pub project: String,
    /// The deploy's or rollback's name in logs/ (None for alerts).
    pub log: Option<String>,
    pub created: DateTime<Utc>,
    pub message: Message,
    pub targets: Vec<Target>,
}

impl Entry {
    pub fn new(id: String, log: Option<String>, message: Message, targets: Vec<Target>) -> Entry {
        Entry {
            format: FORMAT,
            id,
            project: message.project.clone(),
            log,
            created: Utc::now(),
            message,
            targets,
        }
    }

    pub fn is_done(&self) -> bool {
        self.targets.iter().all(|t| t.status == Status::Delivered)
    }

    pub fn results(&self) -> Vec<Delivery> {
        self.targets.iter().map(Target::result).collect()
    }
}

/// `logs/<log>.notify.json`: the results once everything was delivered.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ResultsFile {
    format: u32,
    id: String,
    deliveries: Vec<Delivery>,
}

pub fn spool_dir(root: &Path) -> PathBuf {
    root.join(SPOOL_DIR)
}

fn project_dir(root: &Path, project: &str) -> PathBuf {
    spool_dir(root).join(project)
}

pub fn entry_path(root: &Path, project: &str, id: &str) -> PathBuf {
    project_dir(root, project).join(format!("{id}.json"))
}

/// `logs/<log>.notify.json`.
pub fn results_path(paths: &ProjectPaths, log: &str) -> PathBuf {
    paths.logs.join(format!("{log}.notify.json"))
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NotifyError {
    let path = path.to_path_buf();
    move |source| NotifyError::Io {
        action,
        path,
        source,
    }
}

/// Creates `dir` and its parents, the spool's own dirs private.
fn private_dir(dir: &Path) -> Result<(), NotifyError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("create", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io("restrict", dir))
}

/// Writes a new entry (or replaces one, under its lock).
pub fn save(root: &Path, entry: &Entry) -> Result<PathBuf, NotifyError> {
    let dir = project_dir(root, &entry.project);
    private_dir(&spool_dir(root))?;
    private_dir(&dir)?;
    let path = entry_path(root, &entry.project, &entry.id);
    let mut bytes = serde_json::to_vec_pretty(entry).unwrap_or_default();
    bytes.push(b'\n');
    durable::write_atomic(&path, &bytes, 0o600).map_err(|e| NotifyError::Spool {
        path: path.clone(),
        message: crate::error::chain(&e),
    })?;
    Ok(path)
}

/// The entry at `path`; None when it is gone (delivered by another process meanwhile).
pub fn load(path: &Path) -> Result<Option<Entry>, NotifyError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| NotifyError::Spool {
                path: path.to_path_buf(),
                message: format!("unreadable ({e}): move it away"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", path)(e)),
    }
}

/// The entries' paths, of one project or all, oldest first (ids sort by time within a kind).
pub fn entry_paths(root: &Path, project: Option<&str>) -> Vec<PathBuf> {
    let projects: Vec<PathBuf> = match project {
        Some(name) => vec![project_dir(root, name)],
        None => fs::read_dir(spool_dir(root))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect(),
    };
    let mut paths: Vec<(DateTime<Utc>, PathBuf)> = projects
        .iter()
        .flat_map(|dir| fs::read_dir(dir).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .map(|p| {
            let at = fs::metadata(&p)
                .and_then(|m| m.created().or_else(|_| m.modified()))
                .map(DateTime::<Utc>::from)
                .unwrap_or_default();
            (at, p)
        })
        .collect();
    paths.sort();
    paths.into_iter().map(|(_, p)| p).collect()
}

/// Every entry still in the spool, of one project or all.
pub fn pending(root: &Path, project: Option<&str>) -> Vec<Entry> {
    entry_paths(root, project)
        .iter()
        .filter_map(|p| load(p).ok().flatten())
        .collect()
}

/// What became of the notification of the deploy or rollback logged as `log`: from the
/// spool while some recipient still waits, else from its results file. None: it notified
/// nobody.
pub fn results(root: &Path, paths: &ProjectPaths, log: &str) -> Option<Vec<Delivery>> {
    if let Ok(Some(entry)) = load(&entry_path(root, &paths.name, log)) {
        return Some(entry.results());
    }
    let bytes = fs::read(results_path(paths, log)).ok()?;
    serde_json::from_slice::<ResultsFile>(&bytes)
        .ok()
        .map(|file| file.deliveries)
}

/// Takes a delivered entry out of the spool; a deploy's results stay beside its log.
pub fn finish(root: &Path, paths: Option<&ProjectPaths>, entry: &Entry) -> Result<(), NotifyError> {
    // A log pruned meanwhile takes no results file.
    if let (Some(paths), Some(log)) = (paths, &entry.log)
        && paths.log_file(log).is_file()
    {
        let file = ResultsFile {
            format: FORMAT,
            id: entry.id.clone(),
            deliveries: entry.results(),
        };
        let mut bytes = serde_json::to_vec_pretty(&file).unwrap_or_default();
        bytes.push(b'\n');
        let path = results_path(paths, log);
        durable::write_atomic(&path, &bytes, 0o644).map_err(|e| NotifyError::Spool {
            path: path.clone(),
            message: crate::error::chain(&e),
        })?;
    }
    let path = entry_path(root, &entry.project, &entry.id);
    fs::remove_file(&path).map_err(io("remove", &path))?;
    let _ = fs::remove_file(lock_path(&path));
    Ok(())
}

fn lock_path(entry: &Path) -> PathBuf {
    entry.with_extension("lock")
}

/// Held while a process works on one entry, so that two deliverers never send it twice.
pub struct EntryLock {
    _file: File,
}

impl EntryLock {
    fn open(entry: &Path) -> Result<File, NotifyError> {
        let path = lock_path(entry);
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("open", &path))
    }

    /// None when another process holds it.
    pub fn try_acquire(entry: &Path) -> Result<Option<EntryLock>, NotifyError> {
        let file = Self::open(entry)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(EntryLock { _file: file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(io("lock", entry)(e)),
        }
    }

    /// Waits for another process to finish its attempt.
    pub fn acquire(entry: &Path) -> Result<EntryLock, NotifyError> {
        let file = Self::open(entry)?;
        file.lock().map_err(io("lock", entry))?;
        Ok(EntryLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::message::example;

    #[test]
    fn an_entry_round_trips_and_leaves_its_results_beside_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let paths = crate::config::layout::Layout::default_layout().project(root, "shop");
        fs::create_dir_all(&paths.logs).expect("logs");
        fs::write(
            paths.log_file("20261123T101500Z-3f2a9c1e"),
            "-----> deployed\n",
        )
        .expect("log");
        let mut entry = Entry::new(
            "20261123T101500Z-3f2a9c1e".into(),
            Some("20261123T101500Z-3f2a9c1e".into()),
            example(),
            vec![
                Target::new(Channel::Mail, "ops@example.com".into(), None, 4),
                Target::new(
                    Channel::Webhook,
                    "https://hooks.example.com/secret-path".into(),
                    Some("secrets.hook".into()),
                    4,
                ),
            ],
        );
        let path = save(root, &entry).expect("saved");
        let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&spool_dir(root)), 0o700);
        assert_eq!(load(&path).expect("loads"), Some(entry.clone()));
        assert_eq!(pending(root, Some("shop")).len(), 1);
        assert_eq!(pending(root, Some("blog")).len(), 0);

        let waiting = results(root, &paths, "20261123T101500Z-3f2a9c1e").expect("in the spool");
        assert_eq!(waiting[1].to, "https://hooks.example.com/…");
        assert_eq!(waiting[1].status, Status::Pending);

        for target in &mut entry.targets {
            target.status = Status::Delivered;
        }
        assert!(entry.is_done());
        finish(root, Some(&paths), &entry).expect("finished");
        assert!(!path.exists() && pending(root, None).is_empty());
        let done = results(root, &paths, "20261123T101500Z-3f2a9c1e").expect("results file");
        assert!(done.iter().all(|d| d.status == Status::Delivered));
        assert!(results(root, &paths, "20261124T101500Z-00000000").is_none());
    }

    #[test]
    fn one_process_at_a_time_holds_an_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let entry = dir.path().join("x.json");
        let held = EntryLock::try_acquire(&entry).expect("lock").expect("free");
        assert!(EntryLock::try_acquire(&entry).expect("lock").is_none());
        drop(held);
        assert!(EntryLock::try_acquire(&entry).expect("lock").is_some());
    }
}
