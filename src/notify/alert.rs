//! Alerts about a running app, for the process supervisor to call: it reports each restart of
//! a process, that a process has been up since some time, and each result of the web check
//! after a deploy. A process restarting more than node.yml's `notify.alerts.restarts` times
//! within `within`, or a failing check, sends one alert, however many reports follow; the next
//! report that it is fine again (up for `stable`, or the check passing) sends one "recovered".
//! That state lives under `<root>/.kiln/alerts/<project>.json`, so it survives a restart of
//! the supervisor and is shared by every process that reports.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::duration::HumanDuration;
use crate::config::notify_config::{Alerts, NotifyEvent};
use crate::config::project::{Node, Project};
use crate::fs::durable;
use crate::notify::error::NotifyError;
use crate::notify::message::{Message, Outcome, host_name};

/// Under the node root, beside the spool.
pub const ALERTS_DIR: &str = ".kiln/alerts";

/// What the supervisor saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report<'a> {
    /// An instance of `process` (a Procfile process type) exited and was started again.
    Restarted { process: &'a str },
    /// `process` has been running, without a restart, since `since`.
    Running {
        process: &'a str,
        since: DateTime<Utc>,
    },
    /// The web check (`check`, e.g. `web` or the command) failed; `detail` says how.
    CheckFailed { check: &'a str, detail: &'a str },
    /// The web check passed.
    CheckPassed { check: &'a str },
}

/// Where the report comes from.
pub struct Source<'a> {
    pub node: &'a Node,
    pub project: &'a Project,
    /// The live release, if the supervisor knows it.
    pub release: Option<&'a str>,
}

/// What a report decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub summary: String,
    pub headline: String,
}

/// The alert state of one project: per process (`process:web`) or check (`check:web`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub subjects: BTreeMap<String, Subject>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// Restarts within the window, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restarts: Vec<DateTime<Utc>>,
    /// When the alert went out; None while there is nothing to recover from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerted: Option<DateTime<Utc>>,
}

impl State {
    /// Applies one report; Some when it sends an alert or a recovery.
    pub fn apply(
        &mut self,
        report: Report,
        alerts: &Alerts,
        now: DateTime<Utc>,
    ) -> Option<Decision> {
        let within = chrono::Duration::from_std(alerts.within).unwrap_or_default();
        let stable = chrono::Duration::from_std(alerts.stable).unwrap_or_default();
        match report {
            Report::Restarted { process } => {
                let subject = self
                    .subjects
                    .entry(format!("process:{process}"))
                    .or_default();
                subject.restarts.push(now);
                subject.restarts.retain(|at| now - *at <= within);
                let count = subject.restarts.len();
                if subject.alerted.is_some() || count <= alerts.restarts as usize {
                    return None;
                }
                subject.alerted = Some(now);
                let within = HumanDuration(alerts.within);
                Some(Decision {
                    outcome: Outcome::CrashLooping,
                    summary: format!(
                        "ALERT: `{process}` is crash-looping ({count} restarts within {within})"
                    ),
                    headline: format!(
                        "the process `{process}` restarted {count} times within {within} (node.yml allows {} before it alerts); one \"recovered\" message follows once it has been up for {}",
                        alerts.restarts,
                        HumanDuration(alerts.stable)
                    ),
                })
            }
            Report::Running { process, since } => {
                let key = format!("process:{process}");
                let subject = self.subjects.get_mut(&key)?;
                subject.restarts.retain(|at| now - *at <= within);
                if subject.alerted.is_none() || now - since < stable {
                    return None;
                }
                *subject = Subject::default();
                Some(Decision {
                    outcome: Outcome::Recovered,
                    summary: format!("recovered: `{process}` is running again"),
                    headline: format!(
                        "the process `{process}` has been up for {} without a restart",
                        HumanDuration(whole_seconds((now - since).to_std().unwrap_or_default()))
                    ),
                })
            }
            Report::CheckFailed { check, detail } => {
                let subject = self.subjects.entry(format!("check:{check}")).or_default();
                if subject.alerted.is_some() {
                    return None;
                }
                subject.alerted = Some(now);
                Some(Decision {
                    outcome: Outcome::CheckFailing,
                    summary: format!("ALERT: the `{check}` check is failing"),
                    headline: format!(
                        "the `{check}` check started failing after the deploy: {detail}"
                    ),
                })
            }
            Report::CheckPassed { check } => {
                let subject = self.subjects.get_mut(&format!("check:{check}"))?;
                subject.alerted?;
                *subject = Subject::default();
                Some(Decision {
                    outcome: Outcome::Recovered,
                    summary: format!("recovered: the `{check}` check passes again"),
                    headline: format!("the `{check}` check passes again"),
                })
            }
        }
    }
}

fn state_path(root: &Path, project: &str) -> PathBuf {
    root.join(ALERTS_DIR).join(format!("{project}.json"))
}

/// The process types of `project` with an alert out and no "recovered" yet: what a
/// supervisor that does not see each start itself (the systemd backend's) reports uptimes of.
pub fn alerted_processes(root: &Path, project: &str) -> Vec<String> {
    let Ok(bytes) = fs::read(state_path(root, project)) else {
        return Vec::new();
    };
    let state: State = serde_json::from_slice(&bytes).unwrap_or_default();
    state
        .subjects
        .iter()
        .filter(|(_, subject)| subject.alerted.is_some())
        .filter_map(|(key, _)| key.strip_prefix("process:").map(str::to_string))
        .collect()
}

/// Records `report` for the project and, when it decides so, spools the alert (or recovery)
/// for the project's recipients and starts the background delivery. `lines`: what the
/// process printed last (masked with the project's pillar secrets before it is spooled).
pub fn report(
    source: &Source,
    report: Report,
    lines: &[String],
) -> Result<Option<Decision>, NotifyError> {
    report_at(source, report, lines, Utc::now())
}

/// [`report`] at a given time.
pub fn report_at(
    source: &Source,
    report: Report,
    lines: &[String],
    now: DateTime<Utc>,
) -> Result<Option<Decision>, NotifyError> {
    let root = &source.node.root;
    let name = &source.project.paths.name;
    let dir = root.join(ALERTS_DIR);
    fs::create_dir_all(&dir).map_err(|source| NotifyError::Io {
        action: "create",
        path: dir.clone(),
        source,
    })?;
    let path = state_path(root, name);
    let _lock = lock(&path.with_extension("lock"))?;
    let mut state: State = match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Err(_) => State::default(),
    };
    let decision = state.apply(report, &source.node.config.notify.alerts, now);
    let mut bytes = serde_json::to_vec_pretty(&state).unwrap_or_default();
    bytes.push(b'\n');
    durable::write_atomic(&path, &bytes, 0o600).map_err(|e| NotifyError::Spool {
        path: path.clone(),
        message: crate::error::chain(&e),
    })?;
    if let Some(decision) = &decision {
        let project = source.project;
        let message = Message {
            event: NotifyEvent::Alert,
            outcome: decision.outcome,
            project: name.clone(),
            environment: project
                .config
                .environment(&source.node.config)
                .as_str()
                .to_string(),
            mode: project.config.mode.as_str().to_string(),
            host: host_name(),
            summary: decision.summary.clone(),
            headline: decision.headline.clone(),
            release: source.release.map(str::to_string),
            commit: None,
            short_commit: None,
            commit_subject: None,
            pusher: None,
            stages: Vec::new(),
            duration_ms: None,
            failure: None,
            log: None,
            log_name: None,
            log_tail: lines.to_vec(),
            time: now,
        };
        let id = format!(
            "alert-{}-{}",
            now.format("%Y%m%dT%H%M%S%.3fZ"),
            decision.outcome.as_str()
        );
        let redactor = crate::notify::project_redactor(project);
        crate::notify::send(
            source.node,
            project,
            crate::notify::Outgoing {
                id,
                log: None,
                message: message.redacted(&redactor),
                author: None,
            },
        )?;
    }
    Ok(decision)
}

fn lock(path: &Path) -> Result<File, NotifyError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| NotifyError::Io {
            action: "open",
            path: path.to_path_buf(),
            source,
        })?;
    file.lock().map_err(|source| NotifyError::Io {
        action: "lock",
        path: path.to_path_buf(),
        source,
    })?;
    Ok(file)
}

/// A measured time as people say it: `1m`, not `1m11ms` (below a second, as it is).
fn whole_seconds(took: Duration) -> Duration {
    if took < Duration::from_secs(1) {
        took
    } else {
        Duration::from_secs(took.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn alerts() -> Alerts {
        Alerts {
            restarts: 3,
            within: Duration::from_secs(300),
            stable: Duration::from_secs(60),
            ..Alerts::default()
        }
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + seconds, 0).unwrap_or_default()
    }

    /// What the systemd backend's uptime reports wait on: processes alerted and not recovered,
    /// not the check, not a process that only restarted.
    #[test]
    fn alerted_processes_are_those_with_an_alert_out() {
        let dir = tempfile::tempdir().unwrap();
        assert!(alerted_processes(dir.path(), "shop").is_empty());
        let mut state = State::default();
        for i in 0..4 {
            state.apply(Report::Restarted { process: "web" }, &alerts(), at(i));
        }
        state.apply(Report::Restarted { process: "worker" }, &alerts(), at(5));
        let check = Report::CheckFailed {
            check: "web",
            detail: "500",
        };
        state.apply(check, &alerts(), at(6));
        let path = state_path(dir.path(), "shop");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
        assert_eq!(alerted_processes(dir.path(), "shop"), ["web"]);
    }

    #[test]
    fn a_crash_loop_sends_one_alert_then_one_recovery() {
        let mut state = State::default();
        let web = Report::Restarted { process: "web" };
        let mut sent = Vec::new();
        // Ten restarts, ten seconds apart: the fourth is one too many; no more alerts follow.
        for i in 0..10 {
            if let Some(d) = state.apply(web, &alerts(), at(i * 10)) {
                sent.push((i, d.outcome));
            }
        }
        assert_eq!(sent, [(3, Outcome::CrashLooping)]);
        let decision = state
            .clone()
            .apply(web, &alerts(), at(100))
            .map(|d| d.summary);
        assert_eq!(decision, None);
        // Up for less than `stable`: nothing; then up long enough: one recovery, once.
        let running = |since| Report::Running {
            process: "web",
            since,
        };
        assert_eq!(state.apply(running(at(100)), &alerts(), at(130)), None);
        let recovered = state
            .apply(running(at(100)), &alerts(), at(160))
            .expect("recovered");
        assert_eq!(recovered.outcome, Outcome::Recovered);
        assert_eq!(recovered.summary, "recovered: `web` is running again");
        assert_eq!(state.apply(running(at(100)), &alerts(), at(220)), None);
        // A new crash loop later alerts again.
        let again: Vec<_> = (0..4)
            .filter_map(|i| state.apply(web, &alerts(), at(1000 + i)))
            .collect();
        assert_eq!(again.len(), 1);
    }

    /// Regression: a recovery said `has been up for 1m11ms without a restart`.
    #[test]
    fn regression_a_recovery_says_how_long_in_whole_seconds() {
        let mut state = State::default();
        for i in 0..4 {
            state.apply(Report::Restarted { process: "web" }, &alerts(), at(i));
        }
        let since = at(10);
        let now = at(70) + chrono::Duration::milliseconds(11);
        let recovered = state
            .apply(
                Report::Running {
                    process: "web",
                    since,
                },
                &alerts(),
                now,
            )
            .expect("recovered");
        assert_eq!(
            recovered.headline,
            "the process `web` has been up for 1m without a restart"
        );
        assert_eq!(
            whole_seconds(Duration::from_millis(300)),
            Duration::from_millis(300)
        );
    }

    #[test]
    fn restarts_spread_wider_than_the_window_never_alert() {
        let mut state = State::default();
        for i in 0..20 {
            let report = Report::Restarted { process: "worker" };
            assert_eq!(state.apply(report, &alerts(), at(i * 120)), None, "{i}");
        }
        assert_eq!(state.subjects["process:worker"].restarts.len(), 3);
    }

    #[test]
    fn a_failing_check_alerts_once_and_recovers_once() {
        let mut state = State::default();
        let failed = Report::CheckFailed {
            check: "web",
            detail: "curl: exit 7",
        };
        let first = state.apply(failed, &alerts(), at(0)).expect("an alert");
        assert_eq!(first.outcome, Outcome::CheckFailing);
        assert!(
            first.headline.ends_with("curl: exit 7"),
            "{}",
            first.headline
        );
        assert_eq!(state.apply(failed, &alerts(), at(10)), None);
        let passed = Report::CheckPassed { check: "web" };
        assert_eq!(
            state.apply(passed, &alerts(), at(20)).map(|d| d.outcome),
            Some(Outcome::Recovered)
        );
        assert_eq!(state.apply(passed, &alerts(), at(30)), None);
        // A check that never failed recovers from nothing.
        assert_eq!(
            State::default().apply(Report::CheckPassed { check: "x" }, &alerts(), at(0)),
            None
        );
    }
}
