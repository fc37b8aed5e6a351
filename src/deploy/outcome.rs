//! The one machine-readable result of `kiln deploy --json` and `kiln rollback --json`, for
//! orchestrators that drive many nodes (contrib/ansible): what happened, to which release, what
//! is live now, and how long each stage took. It is printed on stdout once the command is over
//! (the progress goes to stderr), whatever the outcome; the exit status is unchanged
//! (docs/commands.md).

use serde::Serialize;

use crate::config::project::Project;
use crate::deploy::pipeline::{Deployed, RolledBack};
use crate::error::{EXIT_OK, Error};
use crate::exec::report::Timeline;
use crate::transaction::release_log::ReleaseLog;

/// What a deploy or a rollback ended as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A new release is live (exit 0).
    Deployed,
    /// The commit was already live with the same pillar, or `--to-before` found nothing of
    /// the release to undo: nothing changed (exit 0).
    Unchanged,
    /// A rollback took an older release live (exit 0).
    RolledBack,
    /// The deploy (or rollback) failed and everything was put back (exit 1).
    Failed,
    /// Undoing the failure failed too: an operator must look (exit 3).
    RollbackFailed,
    /// Finishing an earlier interrupted deploy failed, so this one did not start.
    NotDeployed,
    /// Bad input or usage, or the command could not start: nothing changed (exit 2).
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub project: String,
    /// `deploy` or `rollback`.
    pub action: &'static str,
    pub outcome: Kind,
    /// The exit status kiln exits with.
    pub exit: i32,
    /// The release deployed (or tried), the one already live when unchanged, or the one a
    /// rollback went to.
    pub release: Option<String>,
    pub commit: Option<String>,
    /// Final mode: the staging release whose tarball was deployed.
    pub source_release: Option<String>,
    /// What was live before the command.
    pub previous: Option<String>,
    /// What is live now.
    pub live: Option<String>,
    /// A failed deploy: the release live again after the rollback (None: nothing was live).
    pub rolled_back_to: Option<String>,
    /// A failed deploy: the stage that failed.
    pub stage: Option<String>,
    /// Why it failed, or the error; None when it worked.
    pub error: Option<String>,
    pub seconds: f64,
    /// Each stage in order with its duration; a failed deploy's last stages are the one that
    /// failed (`"failed": true`) and `rollback`.
    pub stages: Vec<StageTime>,
}

/// One step of the run as `--json` shows it: its name and seconds, and whether it failed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageTime {
    pub stage: String,
    pub seconds: f64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
}

impl Outcome {
    /// The result of `kiln deploy`; `seconds` is the whole command's time.
    pub fn of_deploy(
        project: &Project,
        result: &Result<Deployed, Error>,
        timeline: Timeline,
        seconds: f64,
    ) -> Outcome {
        let mut outcome = Outcome::new(project, "deploy", timeline, seconds);
        match result {
            Ok(deployed) => {
                outcome.outcome = if deployed.unchanged {
                    Kind::Unchanged
                } else {
                    Kind::Deployed
                };
                outcome.release = Some(deployed.release.clone());
                outcome.commit = Some(deployed.commit.to_string());
            }
            Err(error) => outcome.failed(error),
        }
        outcome.fill_from_log(project);
        if outcome.outcome == Kind::Failed {
            outcome.rolled_back_to = outcome.live.clone();
        }
        outcome
    }

    /// The result of `kiln rollback`.
    pub fn of_rollback(
        project: &Project,
        result: &Result<RolledBack, Error>,
        timeline: Timeline,
        seconds: f64,
    ) -> Outcome {
        let mut outcome = Outcome::new(project, "rollback", timeline, seconds);
        match result {
            Ok(RolledBack::To(release)) => {
                outcome.outcome = Kind::RolledBack;
                outcome.release = Some(release.clone());
            }
            Ok(RolledBack::Unchanged { .. }) => outcome.outcome = Kind::Unchanged,
            Err(error) => outcome.failed(error),
        }
        outcome.fill_from_log(project);
        if outcome.outcome == Kind::Unchanged {
            outcome.release = outcome.live.clone();
        }
        outcome
    }

    /// An error before the command could start on the project (it does not exist, say).
    pub fn of_error(name: &str, action: &'static str, error: &Error, seconds: f64) -> Outcome {
        let mut outcome = Outcome::blank(name, action, Timeline::default(), seconds);
        outcome.failed(error);
        outcome
    }

    fn new(project: &Project, action: &'static str, timeline: Timeline, seconds: f64) -> Outcome {
        Outcome::blank(&project.paths.name, action, timeline, seconds)
    }

    fn blank(name: &str, action: &'static str, timeline: Timeline, seconds: f64) -> Outcome {
        Outcome {
            project: name.to_string(),
            action,
            outcome: Kind::Error,
            exit: EXIT_OK,
            release: timeline.release.clone(),
            commit: None,
            source_release: None,
            previous: timeline.previous.clone(),
            live: None,
            rolled_back_to: None,
            stage: None,
            error: None,
            seconds,
            stages: timeline
                .steps()
                .iter()
                .map(|step| StageTime {
                    stage: step.name.clone(),
                    seconds: step.took.as_secs_f64(),
                    failed: step.failed,
                })
                .collect(),
        }
    }

    fn failed(&mut self, error: &Error) {
        self.exit = error.exit_code();
        self.outcome = match error {
            Error::DeployFailed { stage, reason, .. } => {
                self.stage = Some(stage.clone());
                self.error = Some(reason.clone());
                Kind::Failed
            }
            Error::RollbackFailed { .. } => Kind::RollbackFailed,
            Error::NotDeployed { .. } => Kind::NotDeployed,
            _ => Kind::Error,
        };
        if self.error.is_none() {
            self.error = Some(crate::error::chain(error));
        }
    }

    /// What is live now, and the commit and source of the release, from the release log.
    fn fill_from_log(&mut self, project: &Project) {
        let Ok(log) = ReleaseLog::load(&project.paths.release_log()) else {
            return;
        };
        self.live = log.current.clone();
        if let Some(record) = self.release.as_deref().and_then(|id| log.get(id)) {
            self.commit = Some(record.commit.clone());
            self.source_release = record.source_release.clone();
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}
