//! The web check of running apps: every node.yml `notify.alerts.check_every` the node's
//! supervisor daemon checks each running project's web processes (an HTTP GET of `/` on every
//! web instance's PORT, which must answer below 500, or the release's kiln.yml
//! `check.command` when it has one) and reports to [`crate::notify::alert`]:
//! `check_failures` failed checks in a row send one alert, the next passing check one
//! "recovered".
//!
//! kiln's own commands stop and start processes (a deploy, a rollback, `kiln restart`,
//! `ps scale`, `stop`, `start`). While one works on a project, or a deploy of it was
//! interrupted, the project is not checked; a check that overlapped one is not counted; and
//! counting starts over after one. So their own restart window never alerts. Those commands
//! live above the supervisor: the daemon's caller says what they are doing ([`Commands`]).
//!
//! The checker runs in the daemon, one per node, so one failure is never reported twice. If
//! the daemon is killed, checks stop until the next kiln command starts it again; the alert
//! state is on disk (`.kiln/alerts/`), so a "recovered" is still sent once, by the next one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::duration::HumanDuration;
use crate::config::notify_config::Alerts;
use crate::config::project::Node;
use crate::error::Error;
use crate::exec::redact::Redactor;
use crate::exec::stage::{self, CommandSpec};
use crate::notify::alert::{self, Report};
use crate::runtime::formation::Formation;
use crate::runtime::supervisor::state::{Backend, ProjectState, SupervisorPaths};

/// The name alerts give the check (`ALERT: the `web` check is failing`).
pub const CHECK: &str = "web";

/// What the checker needs to know about kiln's commands on a project: the project lock and
/// the journal are above the supervisor, so whoever starts the daemon provides this.
pub trait Commands: Send + Sync {
    /// A kiln command works on the project now, or a deploy of it was interrupted (its
    /// journal is left for the next command to finish): do not check it.
    fn busy(&self, project: &str) -> bool;
    /// When a kiln command last let go of the project.
    fn released(&self, project: &str) -> Option<SystemTime>;
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    /// How it failed: `GET http://127.0.0.1:20001/ of web.1 answered 500`.
    Failed(String),
}

/// `<root>/.kiln/supervisor/checks/<project>.json`: the last check of a project, for `kiln
/// status` and `kiln ps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckStatus {
    pub release: String,
    /// When the last counted check ended.
    pub time: DateTime<Utc>,
    pub passed: bool,
    /// How the last failed check failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Failed checks in a row (0 after a pass).
    pub failures: u32,
    /// Checks counted since the daemon started checking this release.
    pub checks: u64,
    /// An alert went out for the current run of failures.
    pub alerted: bool,
}

impl CheckStatus {
    pub fn path(paths: &SupervisorPaths, project: &str) -> PathBuf {
        paths.dir.join("checks").join(format!("{project}.json"))
    }

    pub fn load(paths: &SupervisorPaths, project: &str) -> Option<CheckStatus> {
        serde_json::from_slice(&std::fs::read(CheckStatus::path(paths, project)).ok()?).ok()
    }

    fn save(&self, paths: &SupervisorPaths, project: &str) -> Result<(), Error> {
        let path = CheckStatus::path(paths, project);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| crate::error::io_error("create", dir, e))?;
        }
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        crate::fs::durable::write_atomic(&path, &bytes, 0o600)
    }
}

/// Checks a formation once: its check command, else GET `/` on each web instance. Each
/// request, or the command, may take `timeout`. None: it has nothing to check (no web
/// process, no command).
pub fn check(formation: &Formation, timeout: Duration) -> Option<Verdict> {
    if let Some(command) = &formation.check_command {
        return Some(check_command(formation, command, timeout));
    }
    let webs = formation.web_instances();
    if webs.is_empty() {
        return None;
    }
    let agent = crate::runtime::readiness::http_agent(timeout);
    for name in webs {
        let Some(port) = formation.ports.get(&name.to_string()) else {
            continue;
        };
        let url = format!("http://127.0.0.1:{port}/");
        let answer = match agent.get(&url).call() {
            Ok(response) if response.status().as_u16() < 500 => continue,
            Ok(response) => format!("answered {}", response.status().as_u16()),
            Err(e) => format!("failed ({e})"),
        };
        return Some(Verdict::Failed(format!("GET {url} of {name} {answer}")));
    }
    Some(Verdict::Passed)
}

/// kiln.yml's `check.command`, run once as the deploy runs it: `sh -c` in run/, with the
/// processes' environment; its last output line explains a failure.
fn check_command(formation: &Formation, command: &str, timeout: Duration) -> Verdict {
    let redactor = Redactor::new(&formation.secrets);
    let mut last = String::new();
    let spec = CommandSpec {
        stage: "check",
        command,
        cwd: &formation.cwd,
        env: &formation.env,
        timeout,
        profile: false,
    };
    let mut sink = |_stream, line: &[u8]| {
        let line = String::from_utf8_lossy(line);
        if !line.trim().is_empty() {
            last = line.trim().to_string();
        }
    };
    let failure = match stage::run_command(&spec, &redactor, &mut sink) {
        Ok(_) => return Verdict::Passed,
        Err(e) if last.is_empty() => e.to_string(),
        Err(e) => format!("{e}: {last}"),
    };
    // The command line itself may hold a secret too.
    Verdict::Failed(String::from_utf8_lossy(&redactor.redact(failure.as_bytes())).into_owned())
}

/// What the checker remembers of a project between rounds.
#[derive(Default)]
struct Watch {
    release: String,
    failures: u32,
    checks: u64,
    /// What was last reported to the alerts: Some(true) failing, Some(false) passing, None
    /// nothing yet (a new daemon: a pass is reported once, in case an earlier one alerted).
    reported_failing: Option<bool>,
    released: Option<SystemTime>,
    detail: Option<String>,
}

/// Checks every running project, every `check_every`, until the node root disappears.
/// `say` writes to the daemon's log.
pub fn run_forever(root: &Path, commands: &Arc<dyn Commands>, say: fn(&str)) {
    let paths = SupervisorPaths::new(root);
    let mut watches: HashMap<String, Watch> = HashMap::new();
    loop {
        let node = Node::open(Some(root.to_path_buf())).ok();
        let alerts = node
            .as_ref()
            .map(|node| node.config.notify.alerts.clone())
            .unwrap_or_default();
        // systemd runs the processes: their crashes reach the alerts from the units, their
        // recoveries from here (`report_uptimes`).
        let systemd = node.as_ref().is_some_and(|node| {
            Backend::choose(node.config.supervisor.backend) == Backend::Systemd
        });
        std::thread::sleep(alerts.check_every);
        if !paths.dir.is_dir() {
            return;
        }
        if paths.held().exists() {
            // `kiln supervise --stop`: nothing runs, on purpose.
            watches.clear();
            continue;
        }
        let projects = paths.projects();
        watches.retain(|name, _| projects.contains(name));
        for project in projects {
            let state = ProjectState::load(&paths, &project).ok().flatten();
            let Some(state) = state.filter(|s| s.running) else {
                watches.remove(&project);
                continue;
            };
            let watch = watches.entry(project.clone()).or_default();
            let round = Round {
                root,
                paths: &paths,
                project: &project,
                formation: &state.formation,
                alerts: &alerts,
                commands: commands.as_ref(),
                say,
            };
            if systemd {
                round.report_uptimes(&state);
            }
            round.run(watch);
        }
    }
}

/// One project's check in one round.
struct Round<'a> {
    root: &'a Path,
    paths: &'a SupervisorPaths,
    project: &'a str,
    formation: &'a Formation,
    alerts: &'a Alerts,
    commands: &'a dyn Commands,
    say: fn(&str),
}

impl Round<'_> {
    fn run(&self, watch: &mut Watch) {
        let released = self.commands.released(self.project);
        if watch.release != self.formation.release || watch.released != released {
            // A deploy, restart or scale since the last round: count from zero.
            watch.release.clone_from(&self.formation.release);
            watch.released = released;
            watch.failures = 0;
        }
        if self.commands.busy(self.project) {
            return;
        }
        let Some(verdict) = check(self.formation, self.alerts.check_every) else {
            return;
        };
        // A command that started (or ended) while the check ran may have stopped the app.
        if self.commands.busy(self.project) || self.commands.released(self.project) != released {
            return;
        }
        watch.checks += 1;
        match verdict {
            Verdict::Passed => {
                if watch.failures > 0 {
                    (self.say)(&format!("{}: the web check passes again", self.project));
                }
                watch.failures = 0;
                watch.detail = None;
                if watch.reported_failing != Some(false)
                    && self.report(Report::CheckPassed { check: CHECK })
                {
                    watch.reported_failing = Some(false);
                }
            }
            Verdict::Failed(detail) => {
                watch.failures += 1;
                (self.say)(&format!(
                    "{}: the web check failed ({} of {} before an alert): {detail}",
                    self.project, watch.failures, self.alerts.check_failures
                ));
                if watch.failures >= self.alerts.check_failures
                    && watch.reported_failing != Some(true)
                {
                    let detail = format!(
                        "{detail} ({} checks in a row, {} apart)",
                        watch.failures,
                        HumanDuration(self.alerts.check_every)
                    );
                    if self.report(Report::CheckFailed {
                        check: CHECK,
                        detail: &detail,
                    }) {
                        watch.reported_failing = Some(true);
                    }
                }
                watch.detail = Some(detail);
            }
        }
        let status = CheckStatus {
            release: self.formation.release.clone(),
            time: Utc::now(),
            passed: watch.failures == 0,
            detail: watch.detail.clone(),
            failures: watch.failures,
            checks: watch.checks,
            alerted: watch.reported_failing == Some(true),
        };
        if let Err(e) = status.save(self.paths, self.project) {
            (self.say)(&format!("{}: {}", self.project, crate::error::chain(&e)));
        }
    }

    /// With the systemd backend: how long the units of each process type that has an alert
    /// out have been up, so that the alerts send one "recovered" once that is
    /// `alerts.stable` (kiln's own instance supervisors report this themselves).
    fn report_uptimes(&self, state: &ProjectState) {
        let waiting = alert::alerted_processes(self.root, self.project);
        if waiting.is_empty() || self.commands.busy(self.project) {
            return;
        }
        let up = crate::runtime::systemd::up_since(state);
        for process in &waiting {
            if let Some(since) = up.get(process) {
                self.report(Report::Running {
                    process,
                    since: *since,
                });
            }
        }
    }

    /// Tells the alerts; false when that failed (it is tried again next round).
    fn report(&self, report: Report) -> bool {
        let reported = (|| -> Result<_, Error> {
            let node = Node::open(Some(self.root.to_path_buf()))?;
            let project = node.project(self.project)?;
            let lines = crate::runtime::readiness::last_lines(&self.formation.log_dir, CHECK, 20);
            let source = alert::Source {
                node: &node,
                project: &project,
                release: Some(&self.formation.release),
            };
            Ok(alert::report(&source, report, &lines)?)
        })();
        match reported {
            Ok(Some(decision)) => {
                (self.say)(&format!(
                    "{}: notifying: {}",
                    self.project, decision.summary
                ));
                true
            }
            Ok(None) => true,
            Err(e) => {
                (self.say)(&format!(
                    "{}: could not report to the alerts: {}",
                    self.project,
                    crate::error::chain(&e)
                ));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use crate::runtime::formation::ProcessType;

    fn formation(dir: &Path, port: Option<u16>, command: Option<&str>) -> Formation {
        Formation {
            project: "shop".into(),
            release: "r1".into(),
            cwd: dir.to_path_buf(),
            env: [("PATH".to_string(), "/usr/bin:/bin".to_string())].into(),
            secrets: vec!["s3cret".into()],
            types: [(
                "web".to_string(),
                ProcessType {
                    command: "true".into(),
                    count: 1,
                },
            )]
            .into(),
            grace: Duration::from_secs(1),
            limits: Default::default(),
            log_dir: dir.join("logs"),
            ports: port
                .map(|p| BTreeMap::from([("web.1".to_string(), p)]))
                .unwrap_or_default(),
            check_command: command.map(str::to_string),
            socket_activation: false,
            slot: Default::default(),
        }
    }

    /// A server on 127.0.0.1 answering every request with `status` (a redirect to https).
    fn server(status: u16) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut stream = stream;
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nLocation: https://shop.example.com/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        port
    }

    /// Regression: the HTTP check followed redirects, so a `/` redirecting to `https://`
    /// (which the app's own port does not speak) failed the deploy's default check. A redirect
    /// is an answer below 500.
    #[test]
    fn regression_a_redirect_to_https_passes_the_http_check() {
        let dir = tempfile::tempdir().unwrap();
        for status in [301, 302, 308] {
            let f = formation(dir.path(), Some(server(status)), None);
            assert_eq!(
                check(&f, Duration::from_secs(2)),
                Some(Verdict::Passed),
                "{status}"
            );
        }
    }

    #[test]
    fn get_slash_below_500_passes_and_500_or_nothing_listening_fails() {
        let dir = tempfile::tempdir().unwrap();
        let second = Duration::from_secs(1);
        for status in [200, 302, 404] {
            let f = formation(dir.path(), Some(server(status)), None);
            assert_eq!(check(&f, second), Some(Verdict::Passed), "{status}");
        }
        let port = server(500);
        let f = formation(dir.path(), Some(port), None);
        assert_eq!(
            check(&f, second),
            Some(Verdict::Failed(format!(
                "GET http://127.0.0.1:{port}/ of web.1 answered 500"
            )))
        );
        // Nothing listens on a port that was just free.
        let free = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let f = formation(dir.path(), Some(free), None);
        assert!(
            matches!(check(&f, second), Some(Verdict::Failed(why)) if why.contains("failed (")),
        );
        let mut idle = formation(dir.path(), None, None);
        idle.types.clear();
        assert_eq!(
            check(&idle, second),
            None,
            "no web process: nothing to check"
        );
    }

    #[test]
    fn the_check_command_runs_in_run_with_the_environment_and_says_why_it_failed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("healthy"), "").unwrap();
        let second = Duration::from_secs(5);
        let ok = formation(
            dir.path(),
            None,
            Some("test -e healthy && test -n \"$PATH\""),
        );
        assert_eq!(check(&ok, second), Some(Verdict::Passed));
        let failing = formation(
            dir.path(),
            None,
            Some("echo 'db unreachable, password s3cret'; exit 3"),
        );
        assert_eq!(
            check(&failing, second),
            Some(Verdict::Failed(
                "`echo 'db unreachable, password ********'; exit 3` exited with status 3: db unreachable, password ********".into()
            ))
        );
        let slow = formation(dir.path(), None, Some("sleep 5"));
        assert!(matches!(
            check(&slow, Duration::from_millis(300)),
            Some(Verdict::Failed(why)) if why.contains("timed out")
        ));
    }
}
