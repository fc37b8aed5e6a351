//! Installing the front door's configuration and running the node-private nginx. Every change
//! goes the same way, under one node-wide lock (`<root>/.kiln/proxy/lock`, so two projects'
//! deploys never test or reload each other's half-written files): write kiln's files, test the
//! whole configuration with `nginx -t`, put the previous files back if the test fails (naming
//! nginx's error), else reload gracefully (old workers finish their requests) and wait until a
//! new worker runs. What nginx last loaded is recorded in `.kiln/proxy/loaded.json`, so
//! `kiln status` can say whether a project's configuration is current.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};

use crate::config::project::{Node, Project};
use crate::config::project_config::ProjectConfig;
use crate::config::proxy_config::{Nginx, nginx_path_problem};
use crate::config::recipe::read_recipe;
use crate::error::{Error, io_error};
use crate::fs::durable::write_atomic;
use crate::proxy::site::{self, Site};
use crate::proxy::{ProxyError, nginx as conf};
use crate::runtime::supervisor::Supervisor;
use crate::transaction::release_log::ReleaseLog;

/// How long nginx's own commands (`-t`, a reload command) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a reload may take to start a new worker.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long kiln waits, after a reload, for the old workers to stop (they finish the requests
/// they are serving; new connections already go to the new workers).
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// Files to write: (path, content; None: the file must not exist).
type Files = Vec<(PathBuf, Option<String>)>;
/// What the files [`write_files`] changed held before (None: they did not exist).
type Previous = Vec<(PathBuf, Option<Saved>)>;

/// A file's content and modification time, to put it back exactly.
#[derive(Debug)]
struct Saved {
    bytes: Vec<u8>,
    modified: Option<std::time::SystemTime>,
}

/// Where kiln keeps the front door's state: `<root>/.kiln/proxy/`.
pub fn state_dir(root: &Path) -> PathBuf {
    root.join(".kiln").join("proxy")
}

/// The node's nginx, as node.yml `proxy` describes it.
pub struct FrontDoor<'a> {
    node: &'a Node,
    pub nginx: &'a Nginx,
}

/// What installing a configuration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The files already said this, and nginx had loaded them.
    Unchanged,
    /// Written, tested and loaded by a graceful reload.
    Reloaded,
    /// Written and tested; the node-private nginx is not running and loads them when started.
    NotRunning,
}

/// Whether a project's configuration is what its project.yml and live release say, and
/// loaded by nginx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigState {
    /// The project has no domains, and kiln has no file for it.
    NoDomains,
    Current,
    /// The file is right, but nginx has not loaded it (not running, or not reloaded since).
    NotLoaded,
    /// The file differs from what kiln would write now (project.yml or node.yml changed).
    Stale,
    /// kiln has not written the file yet.
    Missing,
}

impl ConfigState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigState::NoDomains => "none (no domains)",
            ConfigState::Current => "current",
            ConfigState::NotLoaded => "written, not loaded by nginx",
            ConfigState::Stale => "stale: project.yml or node.yml changed since it was written",
            ConfigState::Missing => "not written yet",
        }
    }
}

impl<'a> FrontDoor<'a> {
    /// The node's front door, if node.yml has `proxy`.
    pub fn of(node: &'a Node) -> Option<FrontDoor<'a>> {
        node.config.proxy.as_ref().map(|proxy| FrontDoor {
            node,
            nginx: &proxy.nginx,
        })
    }

    /// Like [`FrontDoor::of`], for commands that make no sense without one.
    pub fn required(node: &'a Node) -> Result<FrontDoor<'a>, Error> {
        Self::of(node).ok_or_else(|| ProxyError::NotConfigured.into())
    }

    pub fn is_private(&self) -> bool {
        self.nginx.private
    }

    pub fn state_dir(&self) -> PathBuf {
        state_dir(&self.node.root)
    }

    /// Where kiln's files go: the private nginx's `conf.d/`, or node.yml's `config_dir`.
    pub fn conf_dir(&self) -> PathBuf {
        if self.nginx.private {
            self.state_dir().join("conf.d")
        } else {
            self.nginx.config_dir.clone()
        }
    }

    /// `kiln.<project>.conf`: project names never make `kiln.conf`, the node's file.
    pub fn project_file(&self, project: &str) -> PathBuf {
        self.conf_dir().join(format!("kiln.{project}.conf"))
    }

    pub fn node_file(&self) -> PathBuf {
        self.conf_dir().join("kiln.conf")
    }

    fn main_conf(&self) -> PathBuf {
        self.state_dir().join("nginx.conf")
    }

    /// The private nginx's error log (the machine's nginx logs where its own config says).
    pub fn error_log(&self) -> PathBuf {
        self.state_dir().join("logs").join("error.log")
    }

    fn pid_file(&self) -> PathBuf {
        if self.nginx.private {
            self.state_dir().join("nginx.pid")
        } else {
            self.nginx.pid_file.clone()
        }
    }

    /// `-p PREFIX/ -c nginx.conf -e error.log`: the private nginx never reads or writes
    /// anything of the machine's nginx.
    fn private_args(&self, main_conf: &Path) -> Vec<OsString> {
        let mut prefix = self.state_dir().into_os_string();
        prefix.push("/");
        vec![
            "-p".into(),
            prefix,
            "-c".into(),
            main_conf.as_os_str().to_owned(),
            "-e".into(),
            self.error_log().into_os_string(),
        ]
    }

    fn test_argv(&self) -> Vec<OsString> {
        match (&self.nginx.test, self.nginx.private) {
            (_, true) => {
                let mut argv = vec![self.nginx.binary.clone().into_os_string()];
                argv.extend(self.private_args(&self.main_conf()));
                argv.extend(["-t".into(), "-q".into()]);
                argv
            }
            (Some(test), false) => test.0.iter().map(OsString::from).collect(),
            (None, false) => vec![
                self.nginx.binary.clone().into_os_string(),
                "-t".into(),
                "-q".into(),
            ],
        }
    }

    /// One exclusive lock for every change to the front door's files, node-wide.
    fn lock(&self) -> Result<fs::File, Error> {
        let dir = self.state_dir();
        fs::create_dir_all(&dir).map_err(|e| io_error("create", &dir, e))?;
        let path = dir.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_error("open", &path, e))?;
        file.lock().map_err(|e| io_error("lock", &path, e))?;
        Ok(file)
    }

    /// The private nginx's nginx.conf and directories; nothing for the machine's nginx.
    fn ensure_base(&self) -> Result<(), Error> {
        self.ensure_base_in(&self.main_conf(), &self.conf_dir())
    }

    fn ensure_base_in(&self, main_conf: &Path, conf_dir: &Path) -> Result<(), Error> {
        let dir = self.state_dir();
        if let Some(problem) = nginx_path_problem(&dir) {
            return Err(ProxyError::BadPath {
                what: "the node's root:".into(),
                problem,
            }
            .into());
        }
        if !self.nginx.private {
            return Ok(());
        }
        for sub in ["conf.d", "logs", "tmp"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(|e| io_error("create", &path, e))?;
        }
        let user = (nix::unistd::geteuid().is_root())
            .then(|| root_owner(&self.node.root))
            .flatten();
        let text = conf::main_conf(&dir, conf_dir, user.as_deref());
        write_if_changed(main_conf, &text)
    }

    /// The other projects of the node, with their project.yml; those whose project.yml cannot
    /// be read are left out (their own commands say why).
    fn other_projects(&self, except: &str) -> Vec<(String, ProjectConfig)> {
        node_projects(self.node)
            .into_iter()
            .filter(|name| name != except)
            .filter_map(|name| {
                let project = self.node.project(&name).ok()?;
                Some((name, project.config))
            })
            .collect()
    }

    /// A domain belongs to one project: nginx would route it to whichever block it read
    /// first, with only a warning.
    fn check_domains(&self, site: &Site) -> Result<(), Error> {
        for (owner, config) in self.other_projects(&site.project) {
            if let Some(domain) = site.domains.iter().find(|d| config.domains.contains(d)) {
                return Err(ProxyError::DomainTaken {
                    domain: domain.clone(),
                    owner,
                }
                .into());
            }
        }
        Ok(())
    }

    /// The files `site` needs, with the node's file: (path, content; None: no file).
    fn site_files(&self, site: &Site) -> Result<Files, Error> {
        check_site_paths(site)?;
        let tls = !site.tls.is_empty()
            || self
                .other_projects(&site.project)
                .iter()
                .any(|(_, config)| !config.tls.is_empty());
        let text = (!site.domains.is_empty()).then(|| conf::project_conf(site, self.nginx));
        Ok(vec![
            (self.project_file(&site.project), text),
            (self.node_file(), Some(conf::node_conf(self.nginx, tls))),
        ])
    }

    /// Tests the configuration `site` would have without changing what nginx could load: for
    /// a deploy, before it stops anything. The private nginx's is tested as a copy
    /// (`.kiln/proxy/candidate/`); the machine's, whose nginx.conf is the operator's, in place
    /// under the lock, its files put back right after (content and times).
    pub fn check(&self, site: &Site) -> Result<(), Error> {
        let _lock = self.lock()?;
        self.ensure_base()?;
        self.check_domains(site)?;
        let files = self.site_files(site)?;
        if site.domains.is_empty() && !files[0].0.exists() {
            return Ok(());
        }
        if self.nginx.private {
            return self.check_copy(&files, &site.project);
        }
        let previous = write_files(&files)?;
        let tested = self.test(&site.project);
        restore(previous)?;
        tested
    }

    /// The private nginx's configuration with `files` applied, tested as a copy.
    fn check_copy(&self, files: &Files, project: &str) -> Result<(), Error> {
        let candidate = self.state_dir().join("candidate");
        let conf_dir = candidate.join("conf.d");
        if candidate.exists() {
            fs::remove_dir_all(&candidate).map_err(|e| io_error("remove", &candidate, e))?;
        }
        fs::create_dir_all(&conf_dir).map_err(|e| io_error("create", &conf_dir, e))?;
        for path in self.kiln_files() {
            if let Some(name) = path.file_name() {
                fs::copy(&path, conf_dir.join(name)).map_err(|e| io_error("copy", &path, e))?;
            }
        }
        let moved: Files = files
            .iter()
            .filter_map(|(path, text)| Some((conf_dir.join(path.file_name()?), text.clone())))
            .collect();
        write_files(&moved)?;
        let main = candidate.join("nginx.conf");
        self.ensure_base_in(&main, &conf_dir)?;
        let mut argv = vec![self.nginx.binary.clone().into_os_string()];
        argv.extend(self.private_args(&main));
        argv.extend(["-t".into(), "-q".into()]);
        let (ok, output) = run(&argv)?;
        let _ = fs::remove_dir_all(&candidate);
        if ok {
            return Ok(());
        }
        // nginx names the copy's files; the operator knows conf.d/.
        let message = nginx_message(&output).replace(
            &conf_dir.display().to_string(),
            &self.conf_dir().display().to_string(),
        );
        Err(ProxyError::Invalid {
            project: project.to_owned(),
            message,
        }
        .into())
    }

    /// Writes `site`'s configuration, tests it (the previous files are put back if nginx
    /// refuses it; the private nginx's is tested as a copy first, so its files never change
    /// on a refusal), and reloads nginx gracefully.
    pub fn install(&self, site: &Site) -> Result<Applied, Error> {
        self.install_draining(site, DRAIN_WAIT)
    }

    /// [`FrontDoor::install`], waiting up to `drain` after the reload for nginx's old workers to
    /// finish the requests they serve (an overlap cutover stops the processes they send them
    /// to right after).
    pub fn install_draining(&self, site: &Site, drain: Duration) -> Result<Applied, Error> {
        let _lock = self.lock()?;
        self.ensure_base()?;
        self.check_domains(site)?;
        let files = self.site_files(site)?;
        if site.domains.is_empty() && !files[0].0.exists() {
            return Ok(Applied::Unchanged);
        }
        self.write_test_reload(&files, &site.project, drain)
    }

    /// Rewrites every file from `sites` (one per project of the node), removes kiln's files of
    /// projects that have none, tests and reloads: `kiln proxy reload`.
    pub fn install_all(&self, sites: &[Site]) -> Result<Applied, Error> {
        let _lock = self.lock()?;
        self.ensure_base()?;
        let files = self.all_files(sites)?;
        self.write_test_reload(&files, "the node", DRAIN_WAIT)
    }

    fn write_test_reload(
        &self,
        files: &Files,
        project: &str,
        drain: Duration,
    ) -> Result<Applied, Error> {
        let changes = files.iter().any(|(path, text)| {
            fs::read(path).ok().as_deref() != text.as_deref().map(str::as_bytes)
        });
        if !changes && self.loaded_is_on_disk() {
            return Ok(Applied::Unchanged);
        }
        if self.nginx.private {
            self.check_copy(files, project)?;
        }
        let previous = write_files(files)?;
        if !self.nginx.private
            && let Err(e) = self.test(project)
        {
            restore(previous)?;
            return Err(e);
        }
        match self.reload(drain) {
            Ok(applied) => {
                if applied == Applied::Reloaded {
                    self.record_loaded()?;
                }
                Ok(applied)
            }
            Err(e) => {
                restore(previous)?;
                Err(e)
            }
        }
    }

    fn all_files(&self, sites: &[Site]) -> Result<Files, Error> {
        let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
        for site in sites {
            check_site_paths(site)?;
            for domain in &site.domains {
                if let Some(owner) = owners.insert(domain, &site.project) {
                    return Err(ProxyError::DomainTaken {
                        domain: domain.clone(),
                        owner: owner.to_owned(),
                    }
                    .into());
                }
            }
        }
        let mut files: Files = sites
            .iter()
            .map(|site| {
                let text = (!site.domains.is_empty()).then(|| conf::project_conf(site, self.nginx));
                (self.project_file(&site.project), text)
            })
            .collect();
        // Files of projects that are gone.
        for path in self.kiln_files() {
            if !files.iter().any(|(p, _)| *p == path) && path != self.node_file() {
                files.push((path, None));
            }
        }
        let tls = sites.iter().any(|s| !s.tls.is_empty());
        files.push((self.node_file(), Some(conf::node_conf(self.nginx, tls))));
        Ok(files)
    }

    /// `nginx -t` on the whole configuration.
    fn test(&self, project: &str) -> Result<(), Error> {
        let argv = self.test_argv();
        let (ok, output) = run(&argv)?;
        if ok {
            return Ok(());
        }
        Err(ProxyError::Invalid {
            project: project.to_owned(),
            message: nginx_message(&output),
        }
        .into())
    }

    /// A graceful reload: new workers with the new configuration take new connections, the
    /// old ones finish what they serve. Waits until a new worker runs.
    fn reload(&self, drain: Duration) -> Result<Applied, Error> {
        let master = self.master_pid();
        let before = master.map(workers).unwrap_or_default();
        if self.nginx.private {
            let Some(pid) = master else {
                return Ok(Applied::NotRunning);
            };
            kill(Pid::from_raw(pid), Signal::SIGHUP).map_err(|e| ProxyError::Command {
                command: format!("kill -HUP {pid}"),
                status: e.desc().to_owned(),
                message: "could not signal the node-private nginx".into(),
            })?;
        } else {
            let argv: Vec<OsString> = match &self.nginx.reload {
                Some(reload) => reload.0.iter().map(OsString::from).collect(),
                None => vec![
                    self.nginx.binary.clone().into_os_string(),
                    "-s".into(),
                    "reload".into(),
                ],
            };
            let (ok, output) = run(&argv)?;
            if !ok {
                return Err(ProxyError::Command {
                    command: shown(&argv),
                    status: "exit status not 0".into(),
                    message: nginx_message(&output),
                }
                .into());
            }
        }
        if let Some(pid) = master {
            self.wait_reloaded(pid, &before, drain)?;
        }
        Ok(Applied::Reloaded)
    }

    fn wait_reloaded(
        &self,
        master: i32,
        before: &BTreeSet<i32>,
        drain: Duration,
    ) -> Result<(), Error> {
        let started = Instant::now();
        loop {
            let now = workers(master);
            let fresh = now.iter().any(|pid| !before.contains(pid));
            let draining = now.iter().any(|pid| before.contains(pid));
            if fresh && (!draining || started.elapsed() >= drain) {
                return Ok(());
            }
            if !fresh && started.elapsed() >= RELOAD_TIMEOUT {
                let log = if self.nginx.private {
                    self.error_log()
                } else {
                    PathBuf::from("nginx's error log")
                };
                return Err(ProxyError::NotReloaded {
                    seconds: RELOAD_TIMEOUT.as_secs(),
                    log,
                }
                .into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The nginx master's pid, if it runs (its pid file names a live `nginx: master`).
    pub fn master_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.pid_file()).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        cmdline.starts_with(b"nginx: master").then_some(pid)
    }

    /// kiln's files in the configuration directory: `kiln.conf` and `kiln.<project>.conf`.
    fn kiln_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(self.conf_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                name == "kiln.conf" || (name.starts_with("kiln.") && name.ends_with(".conf"))
            })
            .map(|entry| entry.path())
            .collect();
        files.sort();
        files
    }

    fn hashes_on_disk(&self) -> BTreeMap<String, String> {
        self.kiln_files()
            .into_iter()
            .filter_map(|path| {
                let bytes = fs::read(&path).ok()?;
                let name = path.file_name()?.to_string_lossy().into_owned();
                Some((name, hex::encode(Sha256::digest(&bytes))))
            })
            .collect()
    }

    fn loaded(&self) -> BTreeMap<String, String> {
        fs::read(self.state_dir().join("loaded.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn loaded_is_on_disk(&self) -> bool {
        (!self.nginx.private || self.master_pid().is_some())
            && self.loaded() == self.hashes_on_disk()
    }

    fn record_loaded(&self) -> Result<(), Error> {
        let bytes = serde_json::to_vec_pretty(&self.hashes_on_disk()).unwrap_or_default();
        write_atomic(&self.state_dir().join("loaded.json"), &bytes, 0o644)
    }

    /// Whether `project`'s file is what its project.yml and live release say, and loaded.
    pub fn config_state(&self, project: &Project) -> Result<ConfigState, Error> {
        let site = live_site(self.node, project)?;
        let expected = (!site.domains.is_empty()).then(|| conf::project_conf(&site, self.nginx));
        let path = self.project_file(&project.paths.name);
        let on_disk = fs::read_to_string(&path).ok();
        Ok(match (expected, on_disk) {
            (None, None) => ConfigState::NoDomains,
            (Some(_), None) => ConfigState::Missing,
            (None, Some(_)) => ConfigState::Stale,
            (Some(expected), Some(on_disk)) if expected != on_disk => ConfigState::Stale,
            (Some(_), Some(on_disk)) => {
                let name = format!("kiln.{}.conf", project.paths.name);
                let hash = hex::encode(Sha256::digest(on_disk.as_bytes()));
                let running = !self.nginx.private || self.master_pid().is_some();
                if running && self.loaded().get(&name) == Some(&hash) {
                    ConfigState::Current
                } else {
                    ConfigState::NotLoaded
                }
            }
        })
    }

    /// `kiln proxy start`: writes every project's configuration, tests it and starts the
    /// node-private nginx (or reloads it when it runs). Returns its pid and whether it was
    /// already running.
    pub fn start(&self, sites: &[Site]) -> Result<(i32, bool), Error> {
        if !self.nginx.private {
            return Err(ProxyError::NotPrivate.into());
        }
        if let Some(pid) = self.master_pid() {
            self.install_all(sites)?;
            return Ok((pid, true));
        }
        let _lock = self.lock()?;
        self.ensure_base()?;
        let files = self.all_files(sites)?;
        self.check_copy(&files, "the node")?;
        write_files(&files)?;
        let log = self.state_dir().join("logs").join("start.log");
        let stderr = fs::File::create(&log).map_err(|e| io_error("create", &log, e))?;
        let mut argv = vec![self.nginx.binary.clone().into_os_string()];
        argv.extend(self.private_args(&self.main_conf()));
        // nginx forks its master and returns (`daemon on`), so kiln's exit never stops it.
        let status = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .status()
            .map_err(|source| ProxyError::Spawn {
                command: shown(&argv),
                source,
            })?;
        let not_started = |message: String| ProxyError::NotStarted {
            message,
            log: self.error_log(),
        };
        if !status.success() {
            let said = fs::read_to_string(&log).unwrap_or_default();
            return Err(not_started(nginx_message(&said)).into());
        }
        let started = Instant::now();
        loop {
            if let Some(pid) = self.master_pid()
                && !workers(pid).is_empty()
            {
                self.record_loaded()?;
                return Ok((pid, false));
            }
            if started.elapsed() >= RELOAD_TIMEOUT {
                let said = fs::read_to_string(self.error_log()).unwrap_or_default();
                return Err(not_started(nginx_message(&said)).into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `kiln proxy stop`: a graceful stop of the node-private nginx (workers finish their
    /// requests; after 10s it is stopped at once). Returns the pid it had, None if it was not
    /// running.
    pub fn stop(&self) -> Result<Option<i32>, Error> {
        if !self.nginx.private {
            return Err(ProxyError::NotPrivate.into());
        }
        let Some(pid) = self.master_pid() else {
            return Ok(None);
        };
        let master = Pid::from_raw(pid);
        for (signal, wait) in [
            (Signal::SIGQUIT, Duration::from_secs(10)),
            (Signal::SIGTERM, Duration::from_secs(5)),
        ] {
            let _ = kill(master, signal);
            let started = Instant::now();
            while started.elapsed() < wait {
                if kill(master, None).is_err() {
                    return Ok(Some(pid));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        for worker in workers(pid) {
            let _ = kill(Pid::from_raw(worker), Signal::SIGKILL);
        }
        let _ = kill(master, Signal::SIGKILL);
        Ok(Some(pid))
    }
}

/// The site of `project` as its live release has it (kiln.yml `static:` of the live commit,
/// or the static buildpack's site in run/; none when nothing is live), its upstreams the web
/// instances the supervisor runs for it (also while they are stopped for a switch).
pub fn live_site(node: &Node, project: &Project) -> Result<Site, Error> {
    let supervisor = Supervisor::new(&node.root, &node.config.supervisor);
    let ports = supervisor
        .state(&project.paths.name)?
        .and_then(|state| state.serving_ports())
        .unwrap_or_default();
    live_site_with(node, project, &ports)
}

/// [`live_site`] with the web instances listening on `instance_ports`, and the project's
/// waiting room.
pub fn live_site_with(
    node: &Node,
    project: &Project,
    instance_ports: &[u16],
) -> Result<Site, Error> {
    let waiting_room =
        Supervisor::new(&node.root, &node.config.supervisor).waiting_room(&project.paths.name);
    let paths = &project.paths;
    let log = ReleaseLog::load(&paths.release_log())?;
    let live_commit = log
        .current
        .as_ref()
        .and_then(|id| log.get(id))
        .and_then(|record| git2::Oid::from_str(&record.commit).ok());
    let static_paths = match live_commit {
        Some(commit) => {
            let repo = crate::fs::git::open_bare(&paths.project_repo)?;
            read_recipe(&repo, commit)?.static_paths
        }
        None => BTreeMap::new(),
    };
    Ok(Site::new(
        paths,
        &project.config,
        site::upstreams(instance_ports, &project.config),
        &site::static_paths(&static_paths, &paths.run),
    )
    .with_waiting_room(waiting_room, instance_ports))
}

/// Every project of the node, by name (directories with a valid name and a project.yml).
pub fn node_projects(node: &Node) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(&node.root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| {
            node.paths(name)
                .is_ok_and(|paths| paths.project_yml.is_file())
        })
        .collect();
    names.sort();
    names
}

/// The live site of every project of the node.
pub fn node_sites(node: &Node) -> Result<Vec<Site>, Error> {
    node_projects(node)
        .iter()
        .map(|name| live_site(node, &node.project(name)?))
        .collect()
}

/// The run/ paths of static locations go into the configuration quoted: a node root nginx
/// would misread is refused before anything is written.
fn check_site_paths(site: &Site) -> Result<(), Error> {
    let paths = site.static_dirs.values().chain(
        site.tls
            .values()
            .flat_map(|tls| [&tls.certificate, &tls.key]),
    );
    for path in paths {
        if let Some(problem) = nginx_path_problem(path) {
            return Err(ProxyError::BadPath {
                what: format!("a path of project `{}`:", site.project),
                problem,
            }
            .into());
        }
    }
    Ok(())
}

/// The owner of the node's root, by name: the user the private nginx's workers run as when
/// root starts it.
fn root_owner(root: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = fs::metadata(root).ok()?.uid();
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok()??;
    Some(user.name)
}

fn write_if_changed(path: &Path, text: &str) -> Result<(), Error> {
    if fs::read(path).ok().as_deref() == Some(text.as_bytes()) {
        return Ok(());
    }
    write_atomic(path, text.as_bytes(), 0o644)
}

/// Writes (or, for None, removes) each file whose content changes; returns what the changed
/// ones held before, for [`restore`].
fn write_files(files: &[(PathBuf, Option<String>)]) -> Result<Previous, Error> {
    let mut previous = Vec::new();
    for (path, text) in files {
        let before = fs::read(path).ok().map(|bytes| Saved {
            bytes,
            modified: fs::metadata(path).and_then(|m| m.modified()).ok(),
        });
        if before.as_ref().map(|b| b.bytes.as_slice()) == text.as_deref().map(str::as_bytes) {
            continue;
        }
        let written = match text {
            Some(text) => write_atomic(path, text.as_bytes(), 0o644),
            None => fs::remove_file(path).map_err(|e| io_error("remove", path, e)),
        };
        if let Err(e) = written {
            restore(previous)?;
            return Err(e);
        }
        previous.push((path.clone(), before));
    }
    Ok(previous)
}

fn restore(previous: Previous) -> Result<(), Error> {
    for (path, saved) in previous {
        match saved {
            Some(saved) => {
                write_atomic(&path, &saved.bytes, 0o644)?;
                // Put back as it was: nothing but kiln's own test saw the other content.
                if let Some(modified) = saved.modified {
                    let _ = fs::File::options()
                        .write(true)
                        .open(&path)
                        .and_then(|file| file.set_modified(modified));
                }
            }
            None => match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_error("remove", &path, e));
                }
                _ => {}
            },
        }
    }
    Ok(())
}

/// The worker processes of the nginx master `pid` (its children).
fn workers(master: i32) -> BTreeSet<i32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
            let after = &stat[stat.rfind(')')? + 1..];
            let ppid: i32 = after.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == master).then_some(pid)
        })
        .collect()
}

/// A command's words as one line, for messages.
fn shown(argv: &[OsString]) -> String {
    argv.iter()
        .map(|word| word.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs one of nginx's commands (never through a shell) with a timeout; returns whether it
/// exited 0, and what it printed.
fn run(argv: &[OsString]) -> Result<(bool, String), Error> {
    let command = shown(argv);
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ProxyError::Spawn {
            command: command.clone(),
            source,
        })?;
    let pid = child.id();
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = send.send(child.wait_with_output());
    });
    match receive.recv_timeout(COMMAND_TIMEOUT) {
        Ok(Ok(output)) => {
            let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stdout));
            Ok((output.status.success(), text))
        }
        Ok(Err(source)) => Err(ProxyError::Spawn { command, source }.into()),
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            Err(ProxyError::Timeout {
                command,
                seconds: COMMAND_TIMEOUT.as_secs(),
            }
            .into())
        }
    }
}

/// nginx's complaint in one line: its `[emerg]`/`[alert]`/`[crit]`/`[error]` lines without the
/// `nginx: ` prefix, else its last line.
pub fn nginx_message(output: &str) -> String {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    let levels = ["[emerg] ", "[alert] ", "[crit] ", "[error] "];
    let serious: Vec<String> = lines
        .iter()
        .filter_map(|line| {
            let level = levels.iter().find(|level| line.contains(*level))?;
            let (_, message) = line.split_once(level)?;
            // The error log's own lines start `2024/01/01 12:00:00 [emerg] 12#12: ...`.
            let message = match message.split_once("#0: ").or_else(|| {
                message
                    .split_once(": ")
                    .filter(|(head, _)| head.chars().all(|c| c.is_ascii_digit() || c == '#'))
            }) {
                Some((_, rest)) => rest,
                None => message,
            };
            Some(message.to_owned())
        })
        .collect();
    if serious.is_empty() {
        lines
            .last()
            .map(|line| line.trim_start_matches("nginx: ").to_owned())
            .unwrap_or_else(|| "no output".into())
    } else {
        serious.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_messages_are_one_line_without_prefixes() {
        let cases = [
            (
                "nginx: [emerg] cannot load certificate \"/nope.pem\": BIO_new_file() failed in /x/kiln.shop.conf:12\nnginx: configuration file /x/nginx.conf test failed\n",
                "cannot load certificate \"/nope.pem\": BIO_new_file() failed in /x/kiln.shop.conf:12",
            ),
            (
                "2026/01/01 10:00:00 [emerg] 123#123: bind() to 127.0.0.1:80 failed (98: Address already in use)\n",
                "bind() to 127.0.0.1:80 failed (98: Address already in use)",
            ),
            (
                "nginx: [warn] conflicting server name\nnginx: [error] invalid PID number \"\" in \"/run/nginx.pid\"\n",
                "invalid PID number \"\" in \"/run/nginx.pid\"",
            ),
            (
                "sudo: a password is required\n",
                "sudo: a password is required",
            ),
            ("", "no output"),
        ];
        for (output, expected) in cases {
            assert_eq!(nginx_message(output), expected, "{output:?}");
        }
    }

    #[test]
    fn write_files_changes_only_what_differs_and_restore_undoes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.conf");
        let b = dir.path().join("b.conf");
        let c = dir.path().join("c.conf");
        fs::write(&a, "old a").expect("write");
        fs::write(&b, "same").expect("write");
        let previous = write_files(&[
            (a.clone(), Some("new a".into())),
            (b.clone(), Some("same".into())),
            (c.clone(), Some("new c".into())),
        ])
        .expect("written");
        assert_eq!(previous.len(), 2, "{previous:?}");
        assert_eq!(fs::read_to_string(&a).expect("a"), "new a");
        assert_eq!(fs::read_to_string(&c).expect("c"), "new c");
        restore(previous).expect("restored");
        assert_eq!(fs::read_to_string(&a).expect("a"), "old a");
        assert_eq!(fs::read_to_string(&b).expect("b"), "same");
        assert!(!c.exists());

        let previous = write_files(&[(a.clone(), None)]).expect("removed");
        assert!(!a.exists());
        restore(previous).expect("restored");
        assert_eq!(fs::read_to_string(&a).expect("a"), "old a");
    }
}
