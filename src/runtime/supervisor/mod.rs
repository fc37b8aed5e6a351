//! Supervision of the apps' processes: one interface ([`Supervisor`]) over two backends.
//!
//! - **kiln's own** (`kiln supervise`, the default where systemd is not PID 1): one daemon per
//!   node ([`daemon`]) keeps every project's formation running. Each instance has its own small
//!   supervisor process ([`instance`], `kiln supervise-instance`), which runs the app in its
//!   own process group, writes its output to logs/app/, restarts it with a backoff and stops
//!   it with SIGTERM then SIGKILL. The daemon only reconciles: it starts and stops instance
//!   supervisors to match the formation files. Killing the daemon (even with SIGKILL) leaves
//!   every app running and logging; the next kiln command starts it again, and it adopts what
//!   runs, because each instance supervisor holds a lock on its instance for as long as it
//!   lives (no duplicate can start).
//! - **systemd** ([`crate::runtime::systemd`]): one generated unit per instance.
//!
//! Node-wide state lives in `<root>/.kiln/supervisor/` (mode 0700: environments hold
//! secrets): `projects/<project>.json` (the formation each project runs, written by the kiln
//! command that changes it, under the project's lock), `instances/<project>/<instance>/` (lock,
//! spec, status), the daemon's lock, pid, control socket and log.

pub mod control;
pub mod daemon;
pub mod instance;
pub mod proc;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::processes::{BackendChoice, SupervisorConfig};
use crate::error::Error;
use crate::runtime::formation::{Formation, InstanceName, InstanceSpec};
use crate::runtime::supervisor::control::Request;
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
    pub fn instance_dir(&self, project: &str, name: &InstanceName) -> PathBuf {
        self.instances_dir(project).join(name.to_string())
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

impl From<SupervisorError> for Error {
    fn from(e: SupervisorError) -> Self {
        Error::Runtime(Box::new(e))
    }
}

/// The one interface the deploy and the commands use, whichever backend runs the processes.
#[derive(Debug, Clone)]
pub struct Supervisor {
    pub paths: SupervisorPaths,
    pub config: SupervisorConfig,
    pub backend: Backend,
}

impl Supervisor {
    pub fn new(root: &Path, config: &SupervisorConfig) -> Supervisor {
        Supervisor {
            paths: SupervisorPaths::new(root),
            config: config.clone(),
            backend: Backend::choose(config.backend),
        }
    }

    /// The formation file of `project` (running or stopped).
    pub fn state(&self, project: &str) -> Result<Option<ProjectState>, Error> {
        ProjectState::load(&self.paths, project)
    }

    /// The formation `project` runs now, if it runs one.
    pub fn running(&self, project: &str) -> Result<Option<Formation>, Error> {
        Ok(self
            .state(project)?
            .filter(|s| s.running)
            .map(|s| s.formation))
    }

    /// Runs `formation` for its project: web ports are given (a web instance keeps its port
    /// across restarts and deploys), the formation file written, and the backend made to match
    /// it: instances whose command or environment changed are restarted, extra ones stopped,
    /// missing ones started; the others keep running. Returns the formation with its ports.
    pub fn start(&self, mut formation: Formation) -> Result<Formation, Error> {
        {
            let _ports =
                crate::runtime::ports::assign(&self.paths, &self.config.ports, &mut formation)?;
            ProjectState {
                running: true,
                formation: formation.clone(),
            }
            .save(&self.paths)?;
        }
        self.sync(&formation.project, formation.grace)?;
        Ok(formation)
    }

    /// Stops every process of `project` (each with SIGTERM, then SIGKILL after its grace).
    /// Returns false when nothing was running. The formation file stays, marked stopped.
    pub fn stop(&self, project: &str) -> Result<bool, Error> {
        let Some(state) = self.state(project)? else {
            return Ok(false);
        };
        let was_running = state.running;
        if was_running {
            ProjectState {
                running: false,
                formation: state.formation.clone(),
            }
            .save(&self.paths)?;
        }
        // Also when the file says stopped: a stop interrupted by a crash may have left some.
        if was_running || self.any_instance_left(project) {
            self.sync(project, state.formation.grace)?;
        }
        Ok(was_running)
    }

    /// Restarts the instances of `project` (only those of `kind`, if given).
    pub fn restart(&self, project: &str, kind: Option<&str>) -> Result<(), Error> {
        let Some(formation) = self.running(project)? else {
            return Ok(());
        };
        if let Some(kind) = kind.filter(|k| !formation.types.contains_key(*k)) {
            return Err(SupervisorError::UnknownType {
                project: project.to_string(),
                kind: kind.to_string(),
                types: formation
                    .types
                    .keys()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
            }
            .into());
        }
        match self.backend {
            Backend::Kiln => self.daemon_request(
                &Request::Restart {
                    project: project.to_string(),
                    kind: kind.map(str::to_string),
                },
                "restart",
                project,
                formation.grace,
            ),
            Backend::Systemd => crate::runtime::systemd::restart(self, &formation, kind),
        }
    }

    /// Every instance of `project`'s formation, as it is now.
    pub fn instances(&self, project: &str) -> Result<Vec<Instance>, Error> {
        let Some(state) = self.state(project)? else {
            return Ok(Vec::new());
        };
        if self.backend == Backend::Systemd {
            return crate::runtime::systemd::instances(self, &state);
        }
        let now = Utc::now();
        let specs: BTreeMap<InstanceName, InstanceSpec> = state
            .formation
            .instances()
            .into_iter()
            .map(|spec| (spec.name.clone(), spec))
            .collect();
        Ok(specs
            .into_iter()
            .map(|(name, spec)| {
                let status = InstanceStatus::load(&self.paths.instance_dir(project, &name))
                    .filter(|s| s.release == spec.release);
                let (state_text, pid, uptime, restarts, last_exit) = match &status {
                    _ if !state.running => ("stopped".to_string(), None, None, 0, None),
                    None => ("starting".to_string(), None, None, 0, None),
                    Some(s) => {
                        let live = s.shim.alive();
                        let text = if live { s.state.as_str() } else { "down" };
                        let app = s.app.filter(|a| a.alive());
                        (
                            text.to_string(),
                            app.map(|a| a.pid),
                            s.since
                                .filter(|_| app.is_some())
                                .map(|since| (now - since).num_seconds().max(0) as u64),
                            s.restarts,
                            s.last_exit.clone(),
                        )
                    }
                };
                Instance {
                    name: name.to_string(),
                    kind: name.kind.clone(),
                    index: name.index,
                    pid,
                    port: spec.port,
                    state: state_text,
                    uptime_seconds: uptime,
                    restarts,
                    command: spec.command,
                    release: spec.release,
                    last_exit,
                }
            })
            .collect())
    }

    /// Makes the backend run what the formation files say: for kiln's own, starts the daemon
    /// when a project should run and it does not (it then restarts what is missing). Cheap when
    /// nothing is supervised: no daemon is started for a node without processes.
    pub fn wake(&self) -> Result<(), Error> {
        if self.backend != Backend::Kiln {
            return Ok(());
        }
        let wanted = self
            .paths
            .projects()
            .iter()
            .any(|p| matches!(self.state(p), Ok(Some(s)) if s.running));
        if wanted {
            control::ensure_daemon(&self.paths)?;
        }
        Ok(())
    }

    /// One line for `kiln status`: which backend, and whether it runs.
    pub fn describe(&self) -> String {
        match self.backend {
            Backend::Systemd => format!("systemd (units in {})", self.config.unit_dir.display()),
            Backend::Kiln => match control::daemon_pid(&self.paths) {
                Some(pid) => format!("kiln (`kiln supervise`, pid {pid})"),
                None => "kiln (`kiln supervise`, not running)".to_string(),
            },
        }
    }

    fn any_instance_left(&self, project: &str) -> bool {
        fs::read_dir(self.paths.instances_dir(project))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    }

    /// Makes the backend match `project`'s formation file.
    fn sync(&self, project: &str, grace: Duration) -> Result<(), Error> {
        match self.backend {
            Backend::Kiln => self.daemon_request(
                &Request::Sync {
                    project: project.to_string(),
                },
                "start or stop the processes of",
                project,
                grace,
            ),
            Backend::Systemd => crate::runtime::systemd::sync(self, project),
        }
    }

    fn daemon_request(
        &self,
        request: &Request,
        what: &'static str,
        project: &str,
        grace: Duration,
    ) -> Result<(), Error> {
        control::ensure_daemon(&self.paths)?;
        // Stopping waits for each instance's grace (in parallel), starting for a moment.
        let timeout = grace * 2 + Duration::from_secs(30);
        let response = control::send(&self.paths, request, timeout)?;
        match response.error {
            None => Ok(()),
            Some(reason) => Err(SupervisorError::Failed {
                what,
                project: project.to_string(),
                reason,
            }
            .into()),
        }
    }
}

/// The instances of `project` on the node at `root`: the library function the front proxy
/// reads its upstreams from (type, index, pid, port, state).
pub fn instances(
    root: &Path,
    config: &SupervisorConfig,
    project: &str,
) -> Result<Vec<Instance>, Error> {
    Supervisor::new(root, config).instances(project)
}
