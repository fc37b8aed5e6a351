//! The supervisor's state on disk and its vocabulary, shared by the daemon, the instance
//! supervisors, the port allocator, the systemd backend and the commands: where it lives
//! (`<root>/.kiln/supervisor/`), the formation file of each project, the spec and status of
//! each instance, and the errors.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::processes::BackendChoice;
use crate::error::Error;
use crate::runtime::formation::{Formation, InstanceSpec};
use crate::runtime::supervisor::proc::ProcessId;

/// Where the node-wide supervisor state lives.
#[derive(Debug, Clone)]
pub struct SupervisorPaths {
    pub root: PathBuf,
    pub dir: PathBuf,
}

impl SupervisorPaths {
    pub fn new(root: &Path) -> SupervisorPaths {
        SupervisorPaths {
            root: root.to_path_buf(),
            dir: root.join(".kiln").join("supervisor"),
        }
    }

    pub fn daemon_lock(&self) -> PathBuf {
        self.dir.join("daemon.lock")
    }
    pub fn daemon_pid(&self) -> PathBuf {
        self.dir.join("daemon.pid")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
    pub fn daemon_log(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }
    /// `kiln supervise --stop`'s mark: every app stays down until `kiln boot`.
    pub fn held(&self) -> PathBuf {
        self.dir.join("held.json")
    }
    pub fn ports_lock(&self) -> PathBuf {
        self.dir.join("ports.lock")
    }
    pub fn projects_dir(&self) -> PathBuf {
        self.dir.join("projects")
    }
    pub fn project_file(&self, project: &str) -> PathBuf {
        self.projects_dir().join(format!("{project}.json"))
    }
    pub fn instances_dir(&self, project: &str) -> PathBuf {
        self.dir.join("instances").join(project)
    }
    /// `key`: the instance's directory name, [`InstanceSpec::key`] (`web.1`, `web.1.b`).
    pub fn instance_dir(&self, project: &str, key: &str) -> PathBuf {
        self.instances_dir(project).join(key)
    }

    /// Creates the private directories.
    pub fn ensure(&self) -> Result<(), SupervisorError> {
        for dir in [
            self.dir.clone(),
            self.projects_dir(),
            self.dir.join("instances"),
        ] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| SupervisorError::io("create", &dir, e))?;
        }
        // A dir made by an older kiln (or by hand) must become private too.
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| SupervisorError::io("protect", &self.dir, e))
    }

    /// The names of projects with a formation file.
    pub fn projects(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.projects_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_suffix(".json")
                    .map(str::to_string)
            })
            .collect();
        names.sort();
        names
    }
}

/// `projects/<project>.json`: the formation a project runs, or ran before it was stopped
/// (kept so that its ports stay reserved and an operator sees what ran).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectState {
    pub running: bool,
    pub formation: Formation,
    /// An overlap cutover is under way: the formation that was live, still running beside
    /// `formation` (in the other slot) until the front door has left it.
    #[serde(default)]
    pub draining: Option<Formation>,
    /// Stopped for a switch: the supervisor keeps the web instances' listening sockets
    /// (socket activation), so connections wait in their queues until the next start.
    #[serde(default)]
    pub hold_sockets: bool,
}

impl ProjectState {
    /// Every instance that should run for this project now: the formation's (when running)
    /// and the draining one's.
    pub fn wanted(&self) -> Vec<InstanceSpec> {
        let mut all = if self.running {
            self.formation.instances()
        } else {
            Vec::new()
        };
        if let Some(draining) = &self.draining {
            all.extend(draining.instances());
        }
        all
    }

    /// The ports whose listening sockets the supervisor must hold: the socket-activated web
    /// instances that run, or that wait for the next start.
    pub fn held_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = Vec::new();
        let running = self.running || self.hold_sockets;
        for formation in std::iter::once(&self.formation)
            .filter(|_| running)
            .chain(self.draining.as_ref())
            .filter(|f| f.socket_activation)
        {
            ports.extend(formation.ports.values());
        }
        ports
    }

    /// Every port this project holds (its formation's and a draining one's).
    pub fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.formation.ports.values().copied().collect();
        if let Some(draining) = &self.draining {
            ports.extend(draining.ports.values());
        }
        ports
    }
}

impl ProjectState {
    pub fn load(paths: &SupervisorPaths, project: &str) -> Result<Option<ProjectState>, Error> {
        let path = paths.project_file(project);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| SupervisorError::Unreadable {
                    path,
                    reason: e.to_string(),
                })
                .map_err(Error::from),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SupervisorError::io("read", &path, e).into()),
        }
    }

    pub fn save(&self, paths: &SupervisorPaths) -> Result<(), Error> {
        paths.ensure()?;
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        crate::fs::durable::write_atomic(
            &paths.project_file(&self.formation.project),
            &bytes,
            0o600,
        )
    }
}

/// `held.json`: the node's processes were stopped with `kiln supervise --stop`, by whom and
/// when. While it is there nothing starts them (no daemon is woken, the daemon reconciles
/// nothing); `kiln boot` removes it and starts them again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub by: String,
    pub at: DateTime<Utc>,
}

impl Held {
    pub fn load(paths: &SupervisorPaths) -> Option<Held> {
        let bytes = fs::read(paths.held()).ok()?;
        Some(serde_json::from_slice(&bytes).unwrap_or(Held {
            by: "?".into(),
            at: DateTime::<Utc>::UNIX_EPOCH,
        }))
    }

    pub fn save(&self, paths: &SupervisorPaths) -> Result<(), Error> {
        paths.ensure()?;
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        crate::fs::durable::write_atomic(&paths.held(), &bytes, 0o600)
    }

    /// `by ann at 2026-11-23 10:15:00Z`.
    pub fn describe(&self) -> String {
        format!("by {} at {}", self.by, self.at.format("%Y-%m-%d %H:%M:%SZ"))
    }
}

/// What an instance supervisor runs: `spec.json` in its instance dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimSpec {
    pub instance: InstanceSpec,
    /// The app log's rotation size.
    pub log_size: u64,
    /// Names this start: an instance supervisor started with another nonce (left waiting by a
    /// daemon that died mid-start) finds it changed and exits instead of running the app.
    pub nonce: String,
}

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Its supervisor runs, the app is being started.
    Starting,
    Up,
    /// The app exited and is restarted after a pause.
    Backoff,
    Stopping,
    Stopped,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Starting => "starting",
            RunState::Up => "up",
            RunState::Backoff => "crashed",
            RunState::Stopping => "stopping",
            RunState::Stopped => "stopped",
        }
    }
}

/// `status.json` in an instance dir, written by its supervisor at each change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub release: String,
    /// The instance supervisor.
    pub shim: ProcessId,
    /// The app, when it runs; it leads its own process group.
    pub app: Option<ProcessId>,
    pub state: RunState,
    /// Times the app exited and was started again since this supervisor started it.
    pub restarts: u32,
    /// When the running app started.
    pub since: Option<DateTime<Utc>>,
    /// How it last ended: `exit 1`, `SIGKILL`.
    pub last_exit: Option<String>,
    /// When a crashed app is started again.
    pub next_start: Option<DateTime<Utc>>,
}

impl InstanceStatus {
    pub fn load(dir: &Path) -> Option<InstanceStatus> {
        serde_json::from_slice(&fs::read(dir.join("status.json")).ok()?).ok()
    }

    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        crate::fs::durable::write_atomic(&dir.join("status.json"), &bytes, 0o600)
    }
}

/// One instance as `kiln ps` shows it (and as the front proxy reads its upstreams).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instance {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub index: u32,
    pub pid: Option<i32>,
    pub port: Option<u16>,
    /// `starting`, `up`, `crashed` (waiting to restart), `stopping`, `stopped`, or `down`
    /// (its supervisor is gone: the next kiln command starts it again).
    pub state: String,
    pub uptime_seconds: Option<u64>,
    pub restarts: u32,
    pub command: String,
    pub release: String,
    pub last_exit: Option<String>,
}

/// The backend that runs the processes of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Kiln,
    Systemd,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Kiln => "kiln",
            Backend::Systemd => "systemd",
        }
    }

    /// `auto` is systemd when systemd runs as PID 1 (its runtime dir exists and PID 1 is
    /// called systemd), else kiln's own.
    pub fn choose(choice: BackendChoice) -> Backend {
        match choice {
            BackendChoice::Kiln => Backend::Kiln,
            BackendChoice::Systemd => Backend::Systemd,
            BackendChoice::Auto => {
                let booted = Path::new("/run/systemd/system").is_dir();
                let pid1 = fs::read_to_string("/proc/1/comm").unwrap_or_default();
                if booted && pid1.trim() == "systemd" {
                    Backend::Systemd
                } else {
                    Backend::Kiln
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("could not {action} `{}`: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("`{}` is unreadable ({reason}): move it away and deploy again", path.display())]
    Unreadable { path: PathBuf, reason: String },
    #[error(
        "the process supervisor (`kiln supervise`) does not answer on `{}` ({reason}); see its log `{}`",
        socket.display(),
        log.display()
    )]
    Unreachable {
        socket: PathBuf,
        log: PathBuf,
        reason: String,
    },
    #[error("the process supervisor could not {what} `{project}`: {reason}")]
    Failed {
        what: &'static str,
        project: String,
        reason: String,
    },
    #[error(
        "no free port left in node.yml's `supervisor.ports` ({range}) for `{instance}` of `{project}`: widen the range"
    )]
    NoPort {
        range: String,
        instance: String,
        project: String,
    },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error(
        "the node's processes were stopped with `kiln supervise --stop` ({held}): run `kiln boot` to start them again first"
    )]
    Held { held: String },
    #[error(
        "with the systemd backend, systemd runs the processes: stop them with `systemctl stop 'kiln-*'` (or one project with `kiln stop <name>`)"
    )]
    HoldSystemd,
    #[error(
        "{what} needs kiln's own process supervisor, and this node runs its processes with systemd: set node.yml `supervisor.backend: kiln`, or drop {what} from kiln.yml"
    )]
    NeedsKiln { what: &'static str },
    #[error(
        "cannot listen on 127.0.0.1:{port} for `{instance}` of `{project}` (socket activation): {reason}"
    )]
    Listen {
        port: u16,
        instance: String,
        project: String,
        reason: String,
    },
    #[error("`{kind}` is not a process type of `{project}` (it has {types})")]
    UnknownType {
        project: String,
        kind: String,
        types: String,
    },
}

impl SupervisorError {
    pub fn io(action: &'static str, path: &Path, source: io::Error) -> SupervisorError {
        SupervisorError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Opens (creating it) a file the supervisor holds an flock on: the daemon's, the ports', an
/// instance's. Never truncated: the daemon's names its holder.
pub fn open_lock(path: &Path) -> Result<fs::File, SupervisorError> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| SupervisorError::io("open", path, e))
}

impl From<SupervisorError> for Error {
    fn from(e: SupervisorError) -> Self {
        Error::Runtime(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::formation::{ProcessType, Slot};
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn formation(release: &str, port: u16, socket_activation: bool) -> Formation {
        Formation {
            project: "shop".into(),
            release: release.into(),
            cwd: PathBuf::from("/x"),
            env: BTreeMap::new(),
            secrets: Vec::new(),
            types: BTreeMap::from([(
                "web".to_string(),
                ProcessType {
                    command: "serve".into(),
                    count: 1,
                },
            )]),
            grace: Duration::from_secs(1),
            limits: Default::default(),
            log_dir: PathBuf::from("/x"),
            ports: BTreeMap::from([("web.1".to_string(), port)]),
            check_command: None,
            socket_activation,
            slot: Slot::A,
        }
    }

    #[test]
    fn sockets_are_held_while_running_stopped_for_a_switch_or_draining() {
        let state = |running, hold_sockets, draining| ProjectState {
            running,
            formation: formation("new", 20001, true),
            draining,
            hold_sockets,
        };
        assert_eq!(state(true, false, None).held_ports(), [20001]);
        assert_eq!(state(false, true, None).held_ports(), [20001]);
        assert!(state(false, false, None).held_ports().is_empty());
        let mut old = formation("old", 20002, true);
        old.slot = Slot::B;
        let overlap = state(true, false, Some(old.clone()));
        assert_eq!(overlap.held_ports(), [20001, 20002]);
        assert_eq!(overlap.ports(), [20001, 20002]);
        let keys: Vec<String> = overlap.wanted().iter().map(InstanceSpec::key).collect();
        assert_eq!(keys, ["web.1", "web.1.b"]);
        old.socket_activation = false;
        assert_eq!(state(true, false, Some(old)).held_ports(), [20001]);
    }
}
