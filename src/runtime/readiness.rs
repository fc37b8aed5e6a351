//! Whether a deploy's processes came up: every instance must still run a moment after it
//! started, and every web instance must accept connections on its `PORT` within the check's
//! timeout; with no check command, each must also answer an HTTP GET of `/` below 500 (the
//! default check). A process that does not come up fails the deploy, which rolls it back.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::runtime::applog::{self, LogQuery};
use crate::runtime::formation::{Formation, InstanceName};
use crate::runtime::supervisor::Supervisor;

/// How long every process must keep running after it started for the deploy to count it up:
/// one that exits within this is broken, not merely restarting.
pub const STARTUP: Duration = Duration::from_secs(2);

const POLL: Duration = Duration::from_millis(100);

/// Log lines of a failed instance shown with the failure.
const TAIL: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ReadinessError {
    #[error(
        "process `{instance}` (`{command}`) {how} while starting: see `kiln logs {project} --app --type {kind}`"
    )]
    Exited {
        project: String,
        instance: String,
        kind: String,
        command: String,
        /// `exited (exit 1)`, `exited (SIGKILL)`, `could not be started (...)`.
        how: String,
    },
    #[error(
        "process `{instance}` (`{command}`) did not accept connections on its PORT {port} within {}s: it must listen on 127.0.0.1:$PORT",
        timeout.as_secs_f64()
    )]
    NotListening {
        instance: String,
        command: String,
        port: u16,
        timeout: Duration,
    },
    #[error(
        "the default check failed: GET {url} of `{instance}` {answer} within {}s (add a `check:` to kiln.yml to check otherwise)",
        timeout.as_secs_f64()
    )]
    HttpCheck {
        instance: String,
        url: String,
        answer: String,
        timeout: Duration,
    },
    #[error("process `{instance}` did not start within {}s", timeout.as_secs_f64())]
    NotStarted { instance: String, timeout: Duration },
}

impl From<ReadinessError> for Error {
    fn from(e: ReadinessError) -> Self {
        Error::Runtime(Box::new(e))
    }
}

/// What to wait for.
pub struct Readiness<'a> {
    pub formation: &'a Formation,
    /// For the web ports to accept (and the HTTP check to pass).
    pub timeout: Duration,
    /// Run the default HTTP check on every web instance.
    pub http_check: bool,
    /// How long every process must have kept running: [`STARTUP`] for a deploy; zero when
    /// an undo only waits for the old release to serve again.
    pub startup: Duration,
    /// Only these instances (those a restart or a scale started); None: all of them.
    pub only: Option<&'a [InstanceName]>,
}

/// Waits until the formation's processes are up, or says why they are not; returns how long
/// the web instances took to accept connections. `tail` receives the last log lines of an
/// instance that failed, for the pusher.
pub fn wait_up(
    supervisor: &Supervisor,
    readiness: &Readiness,
    tail: &mut dyn FnMut(&str),
) -> Result<Duration, ReadinessError> {
    let formation = readiness.formation;
    let project = &formation.project;
    let started = Instant::now();
    let timeout = readiness.timeout.max(readiness.startup);
    let wanted = |name: &InstanceName| readiness.only.is_none_or(|only| only.contains(name));
    let webs: Vec<InstanceName> = formation
        .web_instances()
        .into_iter()
        .filter(|name| wanted(name))
        .collect();
    let mut accepting: Vec<InstanceName> = Vec::new();
    let mut answered: Vec<InstanceName> = Vec::new();
    let mut last_answer: Option<(InstanceName, String)> = None;
    let mut accepted_after: Option<Duration> = None;
    let agent = http_agent(Duration::from_secs(2));
    loop {
        let instances: Vec<_> = supervisor
            .instances(project)
            .map_err(|e| ReadinessError::Exited {
                project: project.clone(),
                instance: "?".into(),
                kind: "web".into(),
                command: String::new(),
                how: format!("could not be looked at ({})", crate::error::chain(&e)),
            })?
            .into_iter()
            .filter(|i| InstanceName::parse(&i.name).is_none_or(|name| wanted(&name)))
            .collect();
        for instance in &instances {
            if instance.restarts > 0
                || matches!(instance.state.as_str(), "crashed" | "stopped" | "down")
            {
                let lines = applog::tail(
                    &formation.log_dir,
                    &LogQuery {
                        kind: Some(instance.kind.clone()),
                        lines: TAIL,
                    },
                );
                for line in lines {
                    tail(&String::from_utf8_lossy(&line));
                }
                let how = match &instance.last_exit {
                    Some(exit) if exit.starts_with("could not") => exit.clone(),
                    Some(exit) => format!("exited ({exit})"),
                    None => format!("is {}", instance.state),
                };
                return Err(ReadinessError::Exited {
                    project: project.clone(),
                    instance: instance.name.clone(),
                    kind: instance.kind.clone(),
                    command: instance.command.clone(),
                    how,
                });
            }
        }
        let all_up = instances.iter().all(|i| i.state == "up");
        let pending: Vec<InstanceName> = webs
            .iter()
            .filter(|n| !accepting.contains(n))
            .cloned()
            .collect();
        for name in pending {
            let Some(port) = formation.ports.get(&name.to_string()) else {
                continue;
            };
            let address = SocketAddr::from(([127, 0, 0, 1], *port));
            if TcpStream::connect_timeout(&address, Duration::from_millis(250)).is_ok() {
                accepting.push(name);
            }
        }
        let listening = accepting.len() == webs.len();
        if listening && accepted_after.is_none() {
            accepted_after = Some(started.elapsed());
        }
        if all_up && listening && readiness.http_check {
            let pending: Vec<InstanceName> = webs
                .iter()
                .filter(|n| !answered.contains(n))
                .cloned()
                .collect();
            for name in pending {
                let port = formation.ports.get(&name.to_string()).copied().unwrap_or(0);
                let url = format!("http://127.0.0.1:{port}/");
                match agent.get(&url).call() {
                    Ok(response) if response.status().as_u16() < 500 => {
                        answered.push(name);
                    }
                    Ok(response) => {
                        last_answer =
                            Some((name, format!("answered {}", response.status().as_u16())));
                    }
                    Err(e) => last_answer = Some((name, format!("failed ({e})"))),
                }
            }
        }
        let checked = !readiness.http_check || answered.len() == webs.len();
        if all_up && listening && checked && started.elapsed() >= readiness.startup {
            return Ok(accepted_after.unwrap_or_default());
        }
        if started.elapsed() >= timeout {
            let instance = |name: &InstanceName| {
                instances
                    .iter()
                    .find(|i| i.name == name.to_string())
                    .cloned()
            };
            if let Some(name) = webs.iter().find(|n| !accepting.contains(n)) {
                return Err(ReadinessError::NotListening {
                    instance: name.to_string(),
                    command: instance(name).map(|i| i.command).unwrap_or_default(),
                    port: formation.ports.get(&name.to_string()).copied().unwrap_or(0),
                    timeout,
                });
            }
            if let Some((name, answer)) = last_answer.filter(|_| !checked) {
                let port = formation.ports.get(&name.to_string()).copied().unwrap_or(0);
                return Err(ReadinessError::HttpCheck {
                    instance: name.to_string(),
                    url: format!("http://127.0.0.1:{port}/"),
                    answer,
                    timeout,
                });
            }
            let waiting = instances
                .iter()
                .find(|i| i.state != "up")
                .map_or_else(|| "?".to_string(), |i| i.name.clone());
            return Err(ReadinessError::NotStarted {
                instance: waiting,
                timeout,
            });
        }
        std::thread::sleep(POLL);
    }
}

/// An HTTP client for the app's own port: no proxy, every status an answer, `timeout` for
/// the whole request, and redirects not followed: `/` redirecting to a login page or to
/// `https://` (which the app's port does not speak) answered below 500, and is up.
pub fn http_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        // The app is on this machine: no proxy from the environment.
        .proxy(None)
        .build()
        .new_agent()
}

/// The last lines of an instance's log, for messages.
pub fn last_lines(log_dir: &Path, kind: &str, lines: usize) -> Vec<String> {
    applog::tail(
        log_dir,
        &LogQuery {
            kind: Some(kind.to_string()),
            lines,
        },
    )
    .iter()
    .map(|l| String::from_utf8_lossy(l).into_owned())
    .collect()
}
