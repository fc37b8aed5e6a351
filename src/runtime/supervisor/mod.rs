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
//! - **systemd** ([`crate::runtime::systemd`]): one generated unit per instance. `kiln
//!   supervise` then only checks (below): systemd runs the processes.
//!
//! The daemon also runs the periodic web check of every running project ([`watch`]), which
//! turns a check that starts failing into one alert and one "recovered", and each project's
//! waiting room ([`waiting_room`]), where the front door's requests wait while its web
//! instances restart.
//!
//! Node-wide state lives in `<root>/.kiln/supervisor/` (mode 0700: environments hold
//! secrets): `projects/<project>.json` (the formation each project runs, written by the kiln
//! command that changes it, under the project's lock), `instances/<project>/<instance>/` (lock,
//! spec, status), `waiting-rooms/<project>.json` (its waiting room's port), the daemon's
//! lock, pid, control socket and log.

pub mod control;
pub mod daemon;
pub mod instance;
pub mod ports;
pub mod proc;
pub mod state;
pub mod waiting_room;
pub mod watch;

pub use state::{
    Backend, Held, Instance, InstanceStatus, ProjectState, RunState, ShimSpec, SupervisorError,
    SupervisorPaths,
};

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use chrono::Utc;

use crate::config::processes::SupervisorConfig;
use crate::error::Error;
use crate::runtime::formation::{Formation, InstanceName, InstanceSpec};
use crate::runtime::supervisor::control::Request;
use crate::runtime::supervisor::ports::Assign;

/// What a stop does with the listening sockets the supervisor holds for socket-activated web
/// instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sockets {
    /// Keep them: the next start (a deploy's, an undo's) takes them over, and connections
    /// wait in their queues meanwhile.
    Hold,
    /// Close them: nothing will listen there (connections are refused at once).
    Close,
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
        self.refuse_if_held()?;
        {
            let _ports = ports::assign(
                &self.paths,
                &self.config.ports,
                &mut formation,
                Assign::Keep,
            )?;
            // The instances keep their directories (an earlier overlap may have left the
            // project in the other slot).
            if let Some(state) = self.state(&formation.project)? {
                formation.slot = state.formation.slot;
            }
            ProjectState {
                running: true,
                formation: formation.clone(),
                draining: None,
                hold_sockets: false,
            }
            .save(&self.paths)?;
        }
        // Nothing to run and nothing running (every type scaled to 0): no daemon needed.
        if !formation.is_idle() || self.any_instance_left(&formation.project) {
            self.sync(&formation.project, formation.grace)?;
        }
        Ok(formation)
    }

    /// An overlap cutover's first half: runs `formation` beside the formation `project` runs
    /// now, in the other slot and on ports the project does not hold, so both serve until
    /// [`Supervisor::finish_overlap`] stops the old one (or [`Supervisor::cancel_overlap`] the
    /// new one). Returns the new formation with its ports.
    pub fn start_beside(&self, mut formation: Formation) -> Result<Formation, Error> {
        if self.backend != Backend::Kiln {
            return Err(SupervisorError::NeedsKiln {
                what: "`cutover: overlap`",
            }
            .into());
        }
        let project = formation.project.clone();
        let Some(live) = self.running(&project)? else {
            return self.start(formation);
        };
        {
            let _ports = ports::assign(
                &self.paths,
                &self.config.ports,
                &mut formation,
                Assign::Fresh,
            )?;
            formation.slot = live.slot.other();
            ProjectState {
                running: true,
                formation: formation.clone(),
                draining: Some(live),
                hold_sockets: false,
            }
            .save(&self.paths)?;
        }
        self.sync(&project, formation.grace)?;
        Ok(formation)
    }

    /// The port of `project`'s waiting room ([`waiting_room`]), where the front door sends
    /// the requests that find no web instance accepting. None with the systemd backend (no
    /// daemon of kiln's runs the processes) and before the daemon first ran the project's web
    /// processes.
    pub fn waiting_room(&self, project: &str) -> Option<u16> {
        match self.backend {
            Backend::Kiln => ports::waiting_room(&self.paths, project),
            Backend::Systemd => None,
        }
    }

    /// The formation an overlap cutover is leaving, if one is under way.
    pub fn draining(&self, project: &str) -> Result<Option<Formation>, Error> {
        Ok(self.state(project)?.and_then(|s| s.draining))
    }

    /// An overlap cutover's end: the old formation's instances are stopped (each with its
    /// grace: they finish what they serve), and their sockets closed.
    pub fn finish_overlap(&self, project: &str) -> Result<Option<Formation>, Error> {
        let Some(mut state) = self.state(project)? else {
            return Ok(None);
        };
        let Some(old) = state.draining.take() else {
            return Ok(None);
        };
        state.save(&self.paths)?;
        self.sync(project, old.grace)?;
        Ok(Some(old))
    }

    /// Undoes an overlap cutover's first half: the old formation is the project's again, and
    /// the new one's instances are stopped. Returns false when none was under way.
    pub fn cancel_overlap(&self, project: &str) -> Result<bool, Error> {
        let Some(state) = self.state(project)? else {
            return Ok(false);
        };
        let Some(old) = state.draining else {
            return Ok(false);
        };
        let grace = state.formation.grace;
        ProjectState {
            running: true,
            formation: old,
            draining: None,
            hold_sockets: false,
        }
        .save(&self.paths)?;
        self.sync(project, grace)?;
        Ok(true)
    }

    /// Stops every process of `project` (each with SIGTERM, then SIGKILL after its grace).
    /// Returns false when nothing was running. The formation file stays, marked stopped.
    /// `sockets`: whether the web instances' listening sockets (socket activation) stay open
    /// for the start that follows (a deploy's switch), or close.
    pub fn stop(&self, project: &str, sockets: Sockets) -> Result<bool, Error> {
        let Some(state) = self.state(project)? else {
            return Ok(false);
        };
        let was_running = state.running || state.draining.is_some();
        let hold_sockets = sockets == Sockets::Hold;
        // An overlap interrupted by a crash leaves two formations: the current one is what a
        // start after this would replace.
        let changed = was_running || state.hold_sockets != hold_sockets;
        if changed {
            ProjectState {
                running: false,
                formation: state.formation.clone(),
                draining: None,
                hold_sockets,
            }
            .save(&self.paths)?;
        }
        // `kiln supervise --stop` stopped every process already, and `kiln boot` starts only
        // what its formation file says: nothing is left to ask of the daemon.
        if self.held().is_some() {
            return Ok(was_running);
        }
        // Also when the file says stopped: a stop interrupted by a crash may have left some.
        if changed || self.any_instance_left(project) {
            self.sync(project, state.formation.grace)?;
        }
        Ok(was_running)
    }

    /// Writes `formation` as its project's, stopped (nothing is started or stopped): an undo
    /// puts back the formation of a project stopped with `kiln stop`.
    pub fn keep_stopped(&self, formation: Formation) -> Result<(), Error> {
        ProjectState {
            running: false,
            formation,
            draining: None,
            hold_sockets: false,
        }
        .save(&self.paths)
    }

    /// Restarts the instances of `project` (only those of `kind`, if given).
    pub fn restart(&self, project: &str, kind: Option<&str>) -> Result<(), Error> {
        let Some(formation) = self.running(project)? else {
            return Ok(());
        };
        self.refuse_if_held()?;
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
            Backend::Systemd => crate::runtime::systemd::restart(&formation, kind),
        }
    }

    /// Every instance of `project`'s formation, as it is now.
    pub fn instances(&self, project: &str) -> Result<Vec<Instance>, Error> {
        let Some(state) = self.state(project)? else {
            return Ok(Vec::new());
        };
        if self.backend == Backend::Systemd {
            return crate::runtime::systemd::instances(&state);
        }
        let now = Utc::now();
        let held = self.held().is_some();
        let specs: BTreeMap<InstanceName, InstanceSpec> = state
            .formation
            .instances()
            .into_iter()
            .map(|spec| (spec.name.clone(), spec))
            .collect();
        Ok(specs
            .into_iter()
            .map(|(name, spec)| {
                let status = InstanceStatus::load(&self.paths.instance_dir(project, &spec.key()))
                    .filter(|s| s.release == spec.release);
                let (state_text, pid, uptime, restarts, last_exit) = match &status {
                    _ if !state.running || held => ("stopped".to_string(), None, None, 0, None),
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
        if self.backend != Backend::Kiln || self.held().is_some() {
            return Ok(());
        }
        let wanted =
            self.paths.projects().iter().any(
                |p| matches!(self.state(p), Ok(Some(s)) if s.running && !s.formation.is_idle()),
            );
        if wanted {
            control::ensure_daemon(&self.paths)?;
        }
        Ok(())
    }

    /// One line for `kiln status`: which backend, and whether it runs.
    pub fn describe(&self) -> String {
        match self.backend {
            Backend::Systemd => format!("systemd (units in {})", self.config.unit_dir.display()),
            Backend::Kiln => match (self.held(), control::daemon_pid(&self.paths)) {
                (Some(held), _) => format!(
                    "kiln (stopped with `kiln supervise --stop` {}: `kiln boot` starts it and every app again)",
                    held.describe()
                ),
                (None, Some(pid)) => format!("kiln (`kiln supervise`, pid {pid})"),
                (None, None) => "kiln (`kiln supervise`, not running)".to_string(),
            },
        }
    }

    /// `kiln supervise --stop` was run, and `kiln boot` not since.
    pub fn held(&self) -> Option<Held> {
        Held::load(&self.paths)
    }

    fn refuse_if_held(&self) -> Result<(), Error> {
        match self.held() {
            Some(held) if self.backend == Backend::Kiln => Err(SupervisorError::Held {
                held: held.describe(),
            }
            .into()),
            _ => Ok(()),
        }
    }

    /// `kiln supervise --stop`: stops every process of every project and the daemon, for
    /// machine maintenance. The formation files stay as they are (what should run), and
    /// nothing starts again until `kiln boot` ([`Supervisor::release`]). Returns the
    /// instances that were running, per project.
    pub fn hold(&self, by: &str) -> Result<Vec<(String, Vec<InstanceName>)>, Error> {
        if self.backend == Backend::Systemd {
            return Err(SupervisorError::HoldSystemd.into());
        }
        let mut running = Vec::new();
        let mut grace = Duration::ZERO;
        for project in self.paths.projects() {
            if let Some(formation) = self.running(&project)?.filter(|f| !f.is_idle()) {
                grace = grace.max(formation.grace);
                running.push((project, formation.instance_names()));
            }
        }
        // First: a daemon started from now on (by this command, or any other) comes up held
        // and starts nothing.
        Held {
            by: by.to_string(),
            at: Utc::now(),
        }
        .save(&self.paths)?;
        let anything_left = control::daemon_pid(&self.paths).is_some()
            || self
                .paths
                .projects()
                .iter()
                .any(|p| self.any_instance_left(p));
        if anything_left {
            control::ensure_daemon(&self.paths)?;
            let timeout = grace * 2 + Duration::from_secs(30);
            let response = control::send(&self.paths, &Request::Shutdown, timeout)?;
            if let Some(reason) = response.error {
                return Err(SupervisorError::Failed {
                    what: "stop every process of",
                    project: "the node".into(),
                    reason,
                }
                .into());
            }
        }
        Ok(running)
    }

    /// `kiln boot`: ends a `kiln supervise --stop`; [`Supervisor::wake`] then starts what the
    /// formation files say.
    pub fn release(&self) -> Result<(), Error> {
        match fs::remove_file(self.paths.held()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(SupervisorError::io("remove", &self.paths.held(), e).into())
            }
            _ => Ok(()),
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
            Backend::Systemd => crate::runtime::systemd::sync(&self.paths, &self.config, project),
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
