//! `kiln supervise`: the node's process supervisor daemon. It reconciles: for each project
//! whose formation file says running, one instance supervisor (`kiln supervise-instance`) per
//! instance, started with that instance's spec; for the rest, none. It does so when a kiln
//! command asks (over its socket), when it starts (adopting the instance supervisors that
//! still run: each holds its instance's lock), and every second (an instance supervisor that
//! died is started again, after its orphaned app is stopped).
//!
//! It never runs an app itself, so killing it stops nothing. Its lock makes it one per node.
//!
//! It owns the listening sockets of socket-activated web instances (kiln.yml
//! `socket_activation`): it binds 127.0.0.1:PORT once, hands a copy to each instance
//! supervisor it starts (fd 3, passed on to the app), and keeps its own copy while the
//! project's formation runs or is stopped for a switch, so that connections wait in the
//! socket's queue instead of being refused while the app restarts. A daemon that was
//! restarted has no copy of the sockets its adopted instances hold: it binds each again when
//! the instance next starts.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use nix::sys::signal::Signal;
use socket2::{Domain, Socket, Type};

use crate::config::processes::SupervisorConfig;
use crate::error::Error;
use crate::runtime::supervisor::control::{Request, Response};
use crate::runtime::supervisor::proc::{self, ProcessId};
use crate::runtime::supervisor::state::{
    Backend, InstanceStatus, ProjectState, ShimSpec, SupervisorError, SupervisorPaths, open_lock,
};
use crate::runtime::supervisor::watch::{self, Commands};

/// How often the daemon checks that what should run runs.
const TICK: Duration = Duration::from_secs(1);

/// Beyond an instance's grace, how long its supervisor gets to report it stopped.
const STOP_MARGIN: Duration = Duration::from_secs(5);

/// How long a started instance supervisor may take to take its lock.
const SHIM_START: Duration = Duration::from_secs(10);

/// The queue of a held listening socket: connections that wait while the app restarts (the
/// kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// The fd a socket-activated app gets its listening socket on (systemd's `SD_LISTEN_FDS_START`).
pub const LISTEN_FD: i32 = 3;

struct Daemon {
    paths: SupervisorPaths,
    config: SupervisorConfig,
    exe: PathBuf,
    /// One reconciliation at a time per project; projects do not wait for each other.
    projects: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Instance supervisors this daemon started, until they have taken their lock and written
    /// their status (which then names them).
    started: Mutex<HashMap<PathBuf, ProcessId>>,
    /// The systemd backend runs the processes: this daemon only runs the web check.
    check_only: bool,
    /// The listening sockets of socket-activated web instances, by port, with their project.
    sockets: Mutex<HashMap<u16, (String, Socket)>>,
}

/// Runs the daemon until it is killed or its node root disappears. `detach`: started on
/// demand by a kiln command, so leave its session and drop whatever it inherited.
/// `commands` tells the web check when kiln's own commands work on a project. With the
/// systemd backend it only checks: systemd runs the processes.
pub fn run(
    root: &Path,
    config: &SupervisorConfig,
    detach: bool,
    commands: Arc<dyn Commands>,
) -> Result<(), Error> {
    if detach {
        // Not a group leader (spawned without one), so this cannot fail in practice; if it
        // did, the daemon would only share the caller's session.
        let _ = nix::unistd::setsid();
        close_inherited_fds();
    }
    let paths = SupervisorPaths::new(root);
    paths.ensure()?;
    let lock_path = paths.daemon_lock();
    let lock = open_lock(&lock_path)?;
    if lock.try_lock().is_err() {
        let pid = fs::read_to_string(paths.daemon_pid()).unwrap_or_default();
        println!(
            "kiln supervise already runs for {} (pid {})",
            root.display(),
            pid.trim()
        );
        return Ok(());
    }
    crate::fs::durable::write_atomic(
        &paths.daemon_pid(),
        format!("{}\n", std::process::id()).as_bytes(),
        0o600,
    )?;
    let socket = paths.socket();
    let _ = fs::remove_file(&socket);
    let listener =
        UnixListener::bind(&socket).map_err(|e| SupervisorError::io("listen on", &socket, e))?;
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o600))
        .map_err(|e| SupervisorError::io("protect", &socket, e))?;
    let exe =
        crate::fs::exe::kiln().map_err(|e| SupervisorError::io("find", Path::new("kiln"), e))?;
    let check_only = Backend::choose(config.backend) == Backend::Systemd;
    let daemon = Arc::new(Daemon {
        paths,
        config: config.clone(),
        exe,
        projects: Mutex::new(HashMap::new()),
        started: Mutex::new(HashMap::new()),
        check_only,
        sockets: Mutex::new(HashMap::new()),
    });
    say(&format!(
        "started (pid {}) for {}{}",
        std::process::id(),
        root.display(),
        if check_only {
            ": the systemd backend runs the processes, this daemon only checks them"
        } else {
            ""
        }
    ));
    if !check_only {
        if daemon.held() {
            say("held by `kiln supervise --stop`: nothing starts until `kiln boot`");
        }
        for project in daemon.paths.projects().iter().filter(|_| !daemon.held()) {
            if let Err(e) = daemon.reconcile(project, true) {
                say(&format!("{project}: {e}"));
            }
        }
        let ticking = Arc::clone(&daemon);
        std::thread::spawn(move || ticking.tick_forever());
    }
    let watched = root.to_path_buf();
    std::thread::spawn(move || watch::run_forever(&watched, &commands, say));
    for stream in listener.incoming().flatten() {
        let daemon = Arc::clone(&daemon);
        std::thread::spawn(move || daemon.answer(stream));
    }
    drop(lock);
    Ok(())
}

/// Started by a kiln command that may run from a git hook, the daemon must not keep git's (or
/// anyone's) pipes open: a push would never end. Every descriptor above stderr is one it
/// inherited (nothing of its own is open yet).
#[allow(unsafe_code)]
fn close_inherited_fds() {
    let inherited: Vec<i32> = fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in inherited {
        // SAFETY: called first thing in the daemon, before it opens anything: no Rust object
        // owns these descriptors (the one read_dir used is closed already and fails EBADF).
        unsafe {
            libc::close(fd);
        }
    }
}

/// A line in the daemon's log (its stderr).
pub fn say(text: &str) {
    eprintln!(
        "{} kiln supervise: {text}",
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ")
    );
}

impl Daemon {
    fn project_lock(&self, project: &str) -> Arc<Mutex<()>> {
        let mut projects = self
            .projects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(projects.entry(project.to_string()).or_default())
    }

    fn answer(&self, stream: UnixStream) {
        let mut line = String::new();
        if BufReader::new(&stream).read_line(&mut line).is_err() {
            return;
        }
        let request = serde_json::from_str::<Request>(&line);
        let shutting_down = matches!(request, Ok(Request::Shutdown));
        let error = match request {
            Err(e) => Some(format!("not a request kiln sends: {e}")),
            Ok(Request::Ping) => None,
            Ok(_) if self.check_only => Some(
                "this `kiln supervise` only checks: node.yml's supervisor backend is systemd, which runs the processes".to_string(),
            ),
            Ok(Request::Sync { project }) => self.reconcile(&project, true).err(),
            Ok(Request::Restart { project, kind }) => self.restart(&project, kind.as_deref()).err(),
            Ok(Request::Shutdown) => self.shutdown().err(),
        };
        let shutdown = shutting_down && error.is_none();
        let mut answer = serde_json::to_vec(&Response {
            pid: std::process::id(),
            error,
        })
        .unwrap_or_default();
        answer.push(b'\n');
        let mut stream = stream;
        let _ = stream.write_all(&answer);
        if shutdown {
            say("every process stopped (`kiln supervise --stop`): exiting");
            std::process::exit(0);
        }
    }

    /// `kiln supervise --stop` held the node.
    fn held(&self) -> bool {
        self.paths.held().exists()
    }

    /// Stops every instance of every project, in parallel, each with its grace; their dirs
    /// go (`kiln boot` starts them again from the formation files). Only once the node is
    /// held, so that no reconciliation starts them again meanwhile.
    fn shutdown(&self) -> Result<(), String> {
        if !self.held() {
            return Err("the node is not held: run `kiln supervise --stop`".into());
        }
        let projects = self.paths.projects();
        let locks: Vec<Arc<Mutex<()>>> = projects.iter().map(|p| self.project_lock(p)).collect();
        let _guards: Vec<_> = locks
            .iter()
            .map(|l| l.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
            .collect();
        let dirs: Vec<PathBuf> = projects
            .iter()
            .flat_map(|project| {
                fs::read_dir(self.paths.instances_dir(project))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path())
            })
            .collect();
        std::thread::scope(|scope| {
            for dir in &dirs {
                scope.spawn(move || self.stop_instance(dir));
            }
        });
        for dir in dirs {
            let _ = fs::remove_dir_all(dir);
        }
        Ok(())
    }

    /// Every second: what should run, runs; a vanished node root ends the daemon.
    fn tick_forever(&self) {
        loop {
            std::thread::sleep(TICK);
            if !self.paths.dir.is_dir() {
                say("the node root is gone: stopping every process and exiting");
                self.stop_everything();
                std::process::exit(0);
            }
            if self.held() {
                continue;
            }
            for project in self.paths.projects() {
                if let Err(e) = self.reconcile(&project, false) {
                    say(&format!("{project}: {e}"));
                }
            }
        }
    }

    /// The instances wanted for `project` (none when stopped or absent), and the ports whose
    /// sockets must be held.
    fn wanted(&self, project: &str) -> Result<(Vec<ShimSpec>, Vec<u16>), String> {
        let state = ProjectState::load(&self.paths, project).map_err(|e| e.to_string())?;
        let Some(state) = state else {
            return Ok((Vec::new(), Vec::new()));
        };
        let specs = state
            .wanted()
            .into_iter()
            .map(|instance| ShimSpec {
                instance,
                log_size: self.config.app_log_size,
                nonce: String::new(),
            })
            .collect();
        Ok((specs, state.held_ports()))
    }

    fn sockets(&self) -> std::sync::MutexGuard<'_, HashMap<u16, (String, Socket)>> {
        self.sockets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Closes the sockets of `project` that no instance needs any more (after its instances
    /// have stopped: connections still queued there are refused), and binds those of a
    /// formation stopped for a switch that this daemon does not hold yet (it was restarted).
    fn settle_sockets(&self, project: &str, held: &[u16]) {
        let mut sockets = self.sockets();
        sockets.retain(|port, (owner, _)| owner != project || held.contains(port));
        let stopped = ProjectState::load(&self.paths, project)
            .ok()
            .flatten()
            .is_some_and(|s| !s.running && s.hold_sockets);
        if !stopped {
            return;
        }
        for port in held {
            if !sockets.contains_key(port) {
                match listen(*port) {
                    Ok(socket) => {
                        sockets.insert(*port, (project.to_string(), socket));
                    }
                    Err(e) => say(&format!("{project}: cannot hold 127.0.0.1:{port}: {e}")),
                }
            }
        }
    }

    /// A copy of the listening socket of `spec`'s port for its instance supervisor, bound now
    /// if this daemon does not hold it yet.
    fn socket_for(&self, spec: &ShimSpec) -> Result<Option<std::os::fd::OwnedFd>, String> {
        let instance = &spec.instance;
        let Some(port) = instance.port.filter(|_| instance.socket_activation) else {
            return Ok(None);
        };
        let mut sockets = self.sockets();
        let (_, socket) = match sockets.entry(port) {
            std::collections::hash_map::Entry::Occupied(held) => held.into_mut(),
            std::collections::hash_map::Entry::Vacant(free) => {
                let socket = listen(port).map_err(|e| {
                    SupervisorError::Listen {
                        port,
                        instance: instance.name.to_string(),
                        project: instance.project.clone(),
                        reason: e.to_string(),
                    }
                    .to_string()
                })?;
                free.insert((instance.project.clone(), socket))
            }
        };
        let copy = socket
            .try_clone()
            .map_err(|e| format!("copy the socket of 127.0.0.1:{port}: {e}"))?;
        Ok(Some(copy.into()))
    }

    /// Makes `project`'s instances match its formation file. `wait`: a kiln command asked and
    /// waits for the answer; the periodic check does not queue behind one.
    fn reconcile(&self, project: &str, wait: bool) -> Result<(), String> {
        let lock = self.project_lock(project);
        let _guard = if wait {
            lock.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        } else {
            match lock.try_lock() {
                Ok(guard) => guard,
                Err(_) => return Ok(()),
            }
        };
        let (wanted, held) = self.wanted(project)?;
        let dir = self.paths.instances_dir(project);
        let existing: Vec<String> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let mut stop: Vec<PathBuf> = Vec::new();
        let mut start: Vec<ShimSpec> = Vec::new();
        let mut gone: Vec<PathBuf> = Vec::new();
        for name in &existing {
            if !wanted.iter().any(|s| s.instance.key() == *name) {
                stop.push(dir.join(name));
                gone.push(dir.join(name));
            }
        }
        for spec in wanted {
            let instance_dir = self.paths.instance_dir(project, &spec.instance.key());
            let running = supervised(&instance_dir);
            let same = read_spec(&instance_dir)
                .is_some_and(|old| old.instance == spec.instance && old.log_size == spec.log_size);
            match (running, same) {
                (true, true) => {}
                (true, false) => {
                    stop.push(instance_dir);
                    start.push(spec);
                }
                (false, _) => start.push(spec),
            }
        }
        if !wait && start.is_empty() && stop.is_empty() {
            return Ok(());
        }
        std::thread::scope(|scope| {
            for instance_dir in &stop {
                scope.spawn(move || self.stop_instance(instance_dir));
            }
        });
        for instance_dir in gone {
            let _ = fs::remove_dir_all(instance_dir);
        }
        self.settle_sockets(project, &held);
        let mut errors = Vec::new();
        for spec in start {
            if !wait {
                say(&format!(
                    "{project} {}: not running; starting it",
                    spec.instance.name
                ));
            }
            if let Err(e) = self.start_instance(spec) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn restart(&self, project: &str, kind: Option<&str>) -> Result<(), String> {
        let lock = self.project_lock(project);
        let _guard = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let state = ProjectState::load(&self.paths, project).map_err(|e| e.to_string())?;
        // The project's formation only: an overlap's draining instances are on their way out.
        let specs: Vec<ShimSpec> = state
            .filter(|s| s.running)
            .map(|s| s.formation.instances())
            .unwrap_or_default()
            .into_iter()
            .filter(|i| kind.is_none_or(|k| i.name.kind == k))
            .map(|instance| ShimSpec {
                instance,
                log_size: self.config.app_log_size,
                nonce: String::new(),
            })
            .collect();
        std::thread::scope(|scope| {
            for spec in &specs {
                let dir = self.paths.instance_dir(project, &spec.instance.key());
                scope.spawn(move || self.stop_instance(&dir));
            }
        });
        let errors: Vec<String> = specs
            .into_iter()
            .filter_map(|spec| self.start_instance(spec).err())
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Starts the supervisor of one instance and waits until it holds the instance's lock. An
    /// app left running by a supervisor that died is stopped first: it holds the port and
    /// would be a duplicate.
    fn start_instance(&self, mut spec: ShimSpec) -> Result<(), String> {
        let project = spec.instance.project.clone();
        let name = spec.instance.name.clone();
        let key = spec.instance.key();
        let dir = self.paths.instance_dir(&project, &key);
        fs::create_dir_all(&dir).map_err(|e| format!("create `{}`: {e}", dir.display()))?;
        if let Some(orphan) = InstanceStatus::load(&dir).and_then(|s| s.app) {
            proc::terminate_group(orphan, spec.instance.grace);
        }
        let _ = fs::remove_file(dir.join("status.json"));
        spec.nonce = nonce();
        let bytes = serde_json::to_vec_pretty(&spec).unwrap_or_default();
        crate::fs::durable::write_atomic(&dir.join("spec.json"), &bytes, 0o600)
            .map_err(|e| e.to_string())?;
        let socket = self.socket_for(&spec)?;
        let mut command = Command::new(&self.exe);
        command
            .arg("--root")
            .arg(&self.paths.root)
            .arg("supervise-instance")
            .arg(&project)
            .arg(&key)
            .arg(&spec.nonce)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .current_dir(&dir)
            .stdin(Stdio::null())
            // Its own group: a signal meant for the daemon's group is not for it.
            .process_group(0);
        if let Some(socket) = socket {
            // Only this child gets it (every socket the daemon holds is close-on-exec).
            command
                .fd_mappings(vec![FdMapping {
                    parent_fd: socket,
                    child_fd: LISTEN_FD,
                }])
                .map_err(|e| format!("pass the socket of {project} {name}: {e}"))?;
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("start the supervisor of {project} {name}: {e}"))?;
        if let Some(id) = ProcessId::of(child.id() as i32) {
            self.started
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(dir.clone(), id);
        }
        // Reaped when it ends, so no zombie is left behind.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        let since = Instant::now();
        while !supervised(&dir) {
            if since.elapsed() > SHIM_START {
                return Err(format!(
                    "the supervisor of {project} {name} did not start within {}s",
                    SHIM_START.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Asks an instance's supervisor to stop it (SIGTERM: it stops the app with its grace)
    /// and waits; one that does not finish in time is killed, with its app's whole group.
    fn stop_instance(&self, dir: &Path) {
        let status = InstanceStatus::load(dir);
        let grace = read_spec(dir).map_or(Duration::from_secs(10), |s| s.instance.grace);
        if supervised(dir) {
            let shim = status.as_ref().map(|s| s.shim).or_else(|| {
                self.started
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(dir)
                    .copied()
            });
            if let Some(shim) = shim {
                shim.signal(Signal::SIGTERM);
            }
            let until = Instant::now() + grace + STOP_MARGIN;
            while supervised(dir) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            if supervised(dir) {
                say(&format!(
                    "{}: its supervisor did not stop in time; killing it",
                    dir.display()
                ));
                if let Some(shim) = shim {
                    shim.signal(Signal::SIGKILL);
                }
            }
        }
        // Whatever is left of the app (its supervisor was killed, or died before).
        if let Some(app) = InstanceStatus::load(dir).and_then(|s| s.app) {
            proc::terminate_group(app, Duration::ZERO);
        }
        self.started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(dir);
    }

    /// The node root is gone (a removed test node, or an operator's `rm -r`): nothing should
    /// keep running for it. Instance dirs are gone too, so the processes are found by the
    /// supervisors this daemon knows and by their statuses read last.
    fn stop_everything(&self) {
        let started: Vec<ProcessId> = self
            .started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .copied()
            .collect();
        for shim in started {
            shim.signal(Signal::SIGTERM);
        }
    }
}

/// A listening socket on 127.0.0.1:`port` (close-on-exec, like every socket2 socket).
fn listen(port: u16) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    // A port whose previous socket left connections in TIME_WAIT can be bound again.
    socket.set_reuse_address(true)?;
    socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())?;
    socket.listen(BACKLOG)?;
    Ok(socket)
}

/// Whether an instance supervisor holds this instance's lock (it does for as long as it
/// lives, so this never mistakes a reused pid for it).
pub fn supervised(dir: &Path) -> bool {
    let Ok(file) = File::open(dir.join("lock")) else {
        return false;
    };
    file.try_lock().is_err()
}

fn read_spec(dir: &Path) -> Option<ShimSpec> {
    serde_json::from_slice(&fs::read(dir.join("spec.json")).ok()?).ok()
}

/// A value no other start of this instance has had.
fn nonce() -> String {
    let mut bytes = [0u8; 8];
    // Without OS randomness the time alone is unique enough: starts are seconds apart.
    let _ = getrandom::fill(&mut bytes);
    format!(
        "{}-{}",
        chrono::Utc::now().timestamp_micros(),
        hex::encode(bytes)
    )
}
