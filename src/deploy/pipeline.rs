//! The deploy pipeline: gather, pre_install, configure, build, bundle, deploy, post_deploy
//! (docs/kiln-yml.md). Each stage does kiln's own work for the mode, then the project's
//! commands. In cooking and final mode everything from the data snapshot on is journaled, and
//! any failure hands over to [`crate::deploy::rollback`], which puts run/ and data/ back.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use git2::Oid;
use serde_json::json;

use crate::config::notify_config::NotifyEvent;
use crate::config::pillar::Pillar;
use crate::config::processes::WEB;
use crate::config::project::{Node, Project};
use crate::config::recipe::{Cutover, Drift, Mode, Recipe, Services, Stage};
use crate::config::settings;
use crate::deploy::rollback;
use crate::error::{Error, io_error};
use crate::exec::redact::Redactor;
use crate::exec::report::{Reporter, millis, seconds};
use crate::exec::stage::{self, CheckSpec, CommandSpec};
use crate::fs::git;
use crate::fs::sync::{self, SyncOptions};
use crate::fs::tree;
use crate::notify::message::{FailureInfo, Outcome};
use crate::proxy::front_door::{Applied, FrontDoor};
use crate::proxy::site::{self, Site};
use crate::release::bake;
use crate::release::manifest::{self as release, Manifest};
use crate::runtime::buildpack::BuildpackError;
use crate::runtime::formation::{Formation, FormationSetup, Scale};
use crate::runtime::procfile::ProcessTypes;
use crate::runtime::readiness::Readiness;
use crate::runtime::stopped::Stopped;
use crate::runtime::supervisor::{Backend, Sockets, Supervisor};
use crate::transaction::backup;
use crate::transaction::journal::{Journal, Phase, UndoCommands};
use crate::transaction::lock::{ProjectLock, lock};
use crate::transaction::release_log::{Record, ReleaseLog, Status};
use crate::transaction::switch::{self, Method};

pub use crate::config::recipe::{RECIPE_FILE, read_recipe};

/// How long web processes get to accept and answer when kiln.yml has no `check:`.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// What to deploy and on whose behalf.
pub struct DeployRequest {
    /// A revision of git/project.git; None: the tip of the deploy branch.
    pub rev: Option<String>,
    pub who: String,
    /// The fingerprint of the SSH key `who` came in with (src/access/), if they did.
    pub who_key: Option<String>,
    /// A pillar push: deploy the live release again with the new settings. Its tree is reused
    /// (configure, deploy and post_deploy run again; build does not).
    pub settings_only: bool,
    /// How to try again, for the end of the last line when the deploy fails and is rolled
    /// back: pushing the same commit again deploys nothing (git answers `Everything
    /// up-to-date` and runs no hook).
    pub retry: Option<String>,
    /// A deploy from pre-receive: the pid of the git receive-pack that runs the hook. If it
    /// dies (a pusher's terminal hung up on a local push), git deletes the pushed objects and
    /// can no longer move the branch, so the deploy must fail and roll back rather than leave
    /// the node running a commit that no branch names.
    pub receive_pack: Option<i32>,
    /// Deploy even when the commit is already live with the same pillar (`kiln deploy
    /// --force`); otherwise that is a no-op, so that an orchestrator can run the same deploy
    /// on every node again and only the nodes that are behind change.
    pub force: bool,
}

pub struct Deployed {
    /// The new release, or the live one when nothing changed.
    pub release: String,
    pub commit: Oid,
    /// The commit was already live with the same pillar: nothing was deployed, no release
    /// was recorded.
    pub unchanged: bool,
}

/// Why a deploy stopped: the stage and the reason, in two lengths.
#[derive(Debug)]
pub struct Failure {
    pub stage: Stage,
    /// For the release log, `kiln releases` and the events: a failed command is kept whole
    /// (up to [`stage::KEPT_COMMAND_CHARS`]).
    pub reason: String,
    /// For the last line of the push: the same with a long command cut at a word boundary.
    pub brief: String,
    /// The project command that failed (kept as the release log keeps it), if one did.
    pub command: Option<String>,
    pub exit_code: Option<i32>,
}

impl Failure {
    fn new(stage: Stage, error: impl Into<Error>) -> Failure {
        let error = error.into();
        let failed = match &error {
            Error::Stage(e) => e.downcast_ref::<stage::StageError>(),
            _ => None,
        };
        let (reason, brief) = match (failed, &error) {
            (Some(e), _) => (
                e.summary(stage::KEPT_COMMAND_CHARS),
                e.summary(stage::HEADLINE_COMMAND_CHARS),
            ),
            (None, Error::Stage(e)) => {
                let text = crate::error::chain(&**e);
                (text.clone(), text)
            }
            (None, other) => {
                let text = crate::error::chain(other);
                (text.clone(), text)
            }
        };
        // A buildpack's program is named by its label (`python bin/compile`).
        let buildpack = match &error {
            Error::Buildpack(e) => match e.downcast_ref::<BuildpackError>() {
                Some(BuildpackError::Step {
                    command, exit_code, ..
                }) => Some((command.clone(), *exit_code)),
                _ => None,
            },
            _ => None,
        };
        let (command, exit_code) = match (failed, buildpack) {
            (Some(e), _) => (Some(e.kept_command()), e.exit_code()),
            (None, Some((command, exit_code))) => (Some(command), exit_code),
            (None, None) => (None, None),
        };
        Failure {
            stage,
            reason,
            brief,
            command,
            exit_code,
        }
    }
}

/// Runs a whole deploy of `project` under its lock.
pub fn deploy(
    node: &Node,
    project: &Project,
    request: &DeployRequest,
    out: &mut Reporter,
) -> Result<Deployed, Error> {
    let lock = lock(project, "deploy", out)?;
    recover_first(
        node,
        project,
        &format!("`kiln deploy {}`", project.paths.name),
        request,
        out,
    )?;
    deploy_locked(node, project, request, &lock, out)
}

/// Finishes an interrupted or failed deploy before a new one starts. When that fails the new
/// deploy must not start, and the pusher must hear it on the last line: after a post-receive
/// push the branch has moved, and a push that silently deploys nothing looks like a success.
/// `then`: what to do after recovering by hand, for the message.
pub fn recover_first(
    node: &Node,
    project: &Project,
    then: &str,
    request: &DeployRequest,
    out: &mut Reporter,
) -> Result<(), Error> {
    let Err(error) = rollback::recover(node, project, out) else {
        return Ok(());
    };
    let cause = match &error {
        Error::RollbackFailed { reason, .. } => reason.clone(),
        other => crate::error::chain(other),
    };
    let error = Error::NotDeployed {
        project: project.paths.name.clone(),
        cause,
        then: then.to_string(),
        exit: error.exit_code(),
    };
    out.headline(&error.to_string());
    out.close_logs();
    let notified = crate::notify::finished(
        node,
        project,
        crate::notify::Finished {
            event: NotifyEvent::Failure,
            outcome: Outcome::NotDeployed,
            summary: "NOT deployed: recovering the previous deploy failed".into(),
            headline: error.to_string(),
            release: None,
            commit: None,
            who: &request.who,
            who_key: request.who_key.as_deref(),
            stages: Vec::new(),
            duration: None,
            failure: None,
            log_name: None,
            redactor: &crate::notify::project_redactor(project),
        },
    );
    if let Err(e) = notified {
        // After the last line: stderr reaches an operator running kiln by hand, and the
        // status of the spool shows the rest.
        let _ = writeln!(
            std::io::stderr(),
            "warning: could not notify: {}",
            crate::error::chain(&e)
        );
    }
    Err(error)
}

/// A deploy for a caller that already holds the project lock (and ran recovery).
pub fn deploy_locked(
    node: &Node,
    project: &Project,
    request: &DeployRequest,
    lock: &ProjectLock,
    out: &mut Reporter,
) -> Result<Deployed, Error> {
    let started = Instant::now();
    let paths = &project.paths;
    let repo = git::open_bare(&paths.project_repo)?;
    let log = ReleaseLog::load(&paths.release_log())?;
    let reuse = log
        .current
        .as_ref()
        .and_then(|id| log.get(id))
        .filter(|_| request.settings_only)
        .cloned();
    let rev = match (&reuse, &request.rev) {
        (Some(live), _) => live.commit.clone(),
        (None, Some(rev)) => rev.clone(),
        (None, None) => project.config.branch.clone(),
    };
    let commit = git::resolve(&repo, &rev)?;
    let recipe = read_recipe(&repo, commit)?;
    crate::runtime::procfile::check_commit(&repo, commit)?;
    let pillar = Pillar::current(paths)?;
    let mode = project.config.mode;
    let environment = project.config.environment(&node.config).as_str();
    let inputs = Inputs {
        commit,
        pillar_rev: pillar.rev.as_deref(),
        mode,
        environment,
    };
    refuse_while_held(node, project)?;
    if !request.settings_only
        && !request.force
        && let Some(live) = already_live(&log, &inputs)
    {
        out.timeline_mut().release = Some(live.id.clone());
        out.timeline_mut().previous = Some(live.id.clone());
        out.headline(&format!(
            "{} already runs {} ({}) as {}, with the same pillar: nothing to deploy (`kiln deploy {} --force` deploys it again)",
            paths.name,
            git::short(commit),
            git::summary(&repo, commit),
            live.id,
            paths.name
        ));
        return Ok(Deployed {
            release: live.id.clone(),
            commit,
            unchanged: true,
        });
    }
    let release = release::new_id(Utc::now());
    out.timeline_mut().release = Some(release.clone());
    out.timeline_mut().previous = log.current.clone();
    lock.set_holder("deploy", Some(&release))?;
    paths.ensure()?;

    let settings = Settings::gather(node, project, &recipe, &pillar, &release, commit)?;

    out.set_redactor(Redactor::new(&settings.secrets));
    out.open_logs(&paths.log_file(&release), &paths.events_file(&release))?;
    out.set_context(&paths.name, &release);
    out.headline(&format!(
        "deploying {} ({}) of {} in {} mode as {release}",
        git::short(commit),
        git::summary(&repo, commit),
        paths.name,
        mode.as_str()
    ));
    out.event(
        json!({"event": "deploy_start", "commit": commit.to_string(),
        "mode": mode.as_str(), "environment": environment,
        "who": request.who, "who_key": request.who_key,
        "settings_only": request.settings_only}),
    );

    let mut run = Run::new(
        RunSetup {
            node,
            project,
            repo: &repo,
            recipe: &recipe,
            release: release.clone(),
            commit,
            log,
            pillar_rev: pillar.rev.clone(),
            settings: &settings,
            reuse: reuse.map(|r| r.id),
            archive: paths.archive_dir(&release),
            log_name: release.clone(),
        },
        out,
    );
    run.receive_pack = request.receive_pack;
    run.log.records.push(Record {
        id: release.clone(),
        commit: commit.to_string(),
        pillar_rev: pillar.rev.clone(),
        mode: mode.as_str().to_string(),
        environment: Some(environment.to_string()),
        status: Status::Running,
        who: request.who.clone(),
        who_key: request.who_key.clone(),
        started: Utc::now(),
        finished: None,
        failure: None,
        source_release: None,
        snapshot_at: None,
        live: Vec::new(),
        stages: Vec::new(),
    });
    run.log.save(&paths.release_log())?;
    let outcome = run.pipeline();
    let short = git::short(commit);
    match outcome {
        Ok(()) => {
            let headline = format!(
                "deployed {release} ({short}) in {}",
                seconds(started.elapsed())
            );
            run.out.headline(&headline);
            run.finish(Ended {
                event: NotifyEvent::Success,
                outcome: Outcome::Deployed,
                summary: format!("deployed {release} ({short})"),
                headline,
                who: &request.who,
                who_key: request.who_key.as_deref(),
                duration: started.elapsed(),
                failure: None,
            });
            Ok(Deployed {
                release,
                commit,
                unchanged: false,
            })
        }
        Err(failure) => {
            let info = failure_info(&failure);
            let result = run.fail(failure, request.retry.as_deref());
            let (outcome, summary) = match &result {
                Error::DeployFailed { .. } => (
                    Outcome::Failed,
                    format!("FAILED at {}: {release} ({short}), rolled back", info.stage),
                ),
                _ => (
                    Outcome::RollbackFailed,
                    format!(
                        "FAILED at {}: {release} ({short}), and the rollback FAILED: an operator must look",
                        info.stage
                    ),
                ),
            };
            run.finish(Ended {
                event: NotifyEvent::Failure,
                outcome,
                summary,
                headline: result.to_string(),
                who: &request.who,
                who_key: request.who_key.as_deref(),
                duration: started.elapsed(),
                failure: Some(info),
            });
            Err(result)
        }
    }
}

/// Deploys and rollbacks of a project with processes wait for `kiln boot` after `kiln
/// supervise --stop`: they would have to start processes the operator just stopped.
fn refuse_while_held(node: &Node, project: &Project) -> Result<(), Error> {
    let supervisor = Supervisor::new(&node.root, &node.config.supervisor);
    match supervisor.held() {
        Some(held) if supervisor.state(&project.paths.name)?.is_some() => {
            Err(crate::runtime::supervisor::SupervisorError::Held {
                held: held.describe(),
            }
            .into())
        }
        _ => Ok(()),
    }
}

/// How a deploy or rollback ended, for its notification.
struct Ended<'r> {
    event: NotifyEvent,
    outcome: Outcome,
    summary: String,
    headline: String,
    who: &'r str,
    who_key: Option<&'r str>,
    duration: Duration,
    failure: Option<FailureInfo>,
}

fn failure_info(failure: &Failure) -> FailureInfo {
    FailureInfo {
        stage: failure.stage.as_str().to_string(),
        command: failure.command.clone(),
        exit_code: failure.exit_code,
        reason: failure.reason.clone(),
    }
}

/// What a deploy would deploy: the commit, with the pillar commit checked out now, in this
/// mode and environment.
struct Inputs<'a> {
    commit: Oid,
    pillar_rev: Option<&'a str>,
    mode: Mode,
    environment: &'a str,
}

/// The live release when deploying `inputs` would change nothing: it runs the same commit
/// with the same pillar, mode and environment. A pillar recorded since (`pillar_push:
/// record`), a mode or environment changed since make it a real deploy, and so does a live
/// release recorded by a kiln that did not note its environment.
fn already_live<'l>(log: &'l ReleaseLog, inputs: &Inputs) -> Option<&'l Record> {
    let live = log.get(log.current.as_deref()?)?;
    (live.status == Status::Good
        && live.commit == inputs.commit.to_string()
        && live.pillar_rev.as_deref() == inputs.pillar_rev
        && live.mode == inputs.mode.as_str()
        && live.environment.as_deref() == Some(inputs.environment))
    .then_some(live)
}

/// The merged settings of one deploy: the environment of project commands (docs/kiln-yml.md,
/// minus KILN_STAGE), the pillar's secrets, and the `$KILN_COMMON` file, which is
/// readable only by kiln's user and removed when the deploy ends.
pub(crate) struct Settings {
    pub(crate) env: BTreeMap<String, String>,
    /// The merged `env:` settings alone (a buildpack's ENV_DIR).
    user_env: BTreeMap<String, String>,
    secrets: Vec<String>,
    common: PathBuf,
}

impl Settings {
    /// The pillar's secret values, masked in all output.
    pub(crate) fn secrets(&self) -> &[String] {
        &self.secrets
    }

    pub(crate) fn gather(
        node: &Node,
        project: &Project,
        recipe: &Recipe,
        pillar: &Pillar,
        release: &str,
        commit: Oid,
    ) -> Result<Settings, Error> {
        let p = &project.paths;
        let mode = project.config.mode;
        let environment = project.config.environment(&node.config).as_str();
        let merged = settings::merge(
            json!({
                "project": p.name,
                "mode": mode.as_str(),
                "release": release,
                "commit": commit.to_string(),
                "environment": environment,
            }),
            &recipe.defaults,
            pillar.settings.as_ref(),
            environment,
        );
        let secrets = pillar
            .settings
            .as_ref()
            .map(settings::secrets)
            .unwrap_or_default();
        let user_env = settings::env_vars(&merged)?;
        let common = p.state.join(format!("common-{release}.json"));
        crate::fs::durable::write_atomic(
            &common,
            &serde_json::to_vec_pretty(&merged).unwrap_or_default(),
            0o600,
        )?;

        let mut env = BTreeMap::new();
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
        env.insert("PATH".into(), path);
        if let Ok(home) = std::env::var("HOME") {
            env.insert("HOME".into(), home);
        }
        env.insert("LANG".into(), "C.UTF-8".into());
        let dir = |p: &Path| p.display().to_string();
        env.insert("KILN_PROJECT".into(), p.name.clone());
        env.insert("KILN_MODE".into(), mode.as_str().into());
        env.insert("KILN_RELEASE".into(), release.into());
        env.insert("KILN_COMMIT".into(), commit.to_string());
        env.insert("KILN_ROOT".into(), dir(&node.root));
        env.insert("KILN_CHECKOUT_DIR".into(), dir(&p.project));
        // The old, misleading name of the checkout, kept for the recipes that use it.
        env.insert("KILN_PROJECT_DIR".into(), dir(&p.project));
        env.insert("KILN_BUILD_DIR".into(), dir(&p.build));
        env.insert("KILN_DEPLOY_DIR".into(), dir(&p.release_dir(release)));
        env.insert("KILN_RUN_DIR".into(), dir(&p.run));
        env.insert("KILN_DATA_DIR".into(), dir(&p.data));
        env.insert("KILN_PILLAR_DIR".into(), dir(&p.pillar));
        // KILN_BACKUP_DIR depends on where the run keeps its archive: see Run::new.
        env.insert("KILN_COMMON".into(), dir(&common));
        // settings::env_vars refuses KILN_* names, so the user's env cannot override these.
        env.extend(user_env.clone());
        Ok(Settings {
            env,
            user_env,
            secrets,
            common,
        })
    }
}

impl Drop for Settings {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.common);
    }
}

/// One deploy in progress.
struct Run<'a> {
    node: &'a Node,
    project: &'a Project,
    repo: &'a git2::Repository,
    recipe: &'a Recipe,
    mode: Mode,
    release: String,
    commit: Oid,
    /// The release live before this deploy.
    live: Option<String>,
    /// The live release's own services (from its kiln.yml): what stops it, and what starts
    /// it again if this run is undone.
    live_services: Services,
    /// The environment of the live release's services commands.
    live_env: BTreeMap<String, String>,
    pillar_rev: Option<String>,
    secrets: Vec<String>,
    redactor: Redactor,
    base_env: BTreeMap<String, String>,
    /// The merged `env:` settings alone, for buildpacks.
    user_env: BTreeMap<String, String>,
    /// The build stage's environment once the buildpacks' `export` files applied.
    build_env: Option<BTreeMap<String, String>>,
    journal: Option<Journal>,
    log: ReleaseLog,
    /// A settings-only redeploy: the live release whose tree is reused.
    reuse: Option<String>,
    /// See [`DeployRequest::receive_pack`].
    receive_pack: Option<i32>,
    /// The tarball being baked: (tree digest, bake info).
    baking: Option<std::thread::JoinHandle<Result<(String, bake::BakeInfo), Error>>>,
    /// archives/<release> for a deploy; archives/<release>-rollback-<id> for a rollback, so a
    /// rollback never overwrites what the release's own deploy kept.
    archive: PathBuf,
    /// The name of this run's log in logs/ (`<release>` for a deploy).
    log_name: String,
    /// Runs the apps' processes (src/runtime/).
    supervisor: Supervisor,
    /// The processes running when this run started (the live release's): stopped with it,
    /// and started again if this run is undone.
    live_formation: Option<Formation>,
    /// The live release's formation of a project stopped with `kiln stop`: put back, still
    /// stopped, if this run is undone.
    stopped_formation: Option<Formation>,
    /// This release's processes, from its tree (None: it has no process types).
    formation: Option<Formation>,
    /// This release's release-phase command (its Procfile's `release:`).
    release_command: Option<String>,
    /// This run installed its release's front door configuration: an undo puts the live
    /// release's back.
    front_door_installed: bool,
    out: &'a mut Reporter,
}

/// What a deploy or a rollback knows once it has gathered its inputs.
struct RunSetup<'a> {
    node: &'a Node,
    project: &'a Project,
    repo: &'a git2::Repository,
    recipe: &'a Recipe,
    release: String,
    commit: Oid,
    log: ReleaseLog,
    pillar_rev: Option<String>,
    settings: &'a Settings,
    reuse: Option<String>,
    archive: PathBuf,
    log_name: String,
}

impl<'a> Run<'a> {
    fn new(setup: RunSetup<'a>, out: &'a mut Reporter) -> Run<'a> {
        // Backups go with what this run keeps: a rollback must not write into the archive of
        // the release it rolls back to.
        let mut base_env = setup.settings.env.clone();
        base_env.insert(
            "KILN_BACKUP_DIR".into(),
            setup.archive.join("backup").display().to_string(),
        );
        let paths = &setup.project.paths;
        let live = setup.log.current.as_ref().and_then(|id| setup.log.get(id));
        let mut live_env = base_env.clone();
        live_env.insert("KILN_STAGE".into(), Stage::Deploy.as_str().into());
        let live_services = match live {
            None => Services::default(),
            Some(record) => {
                live_env.insert("KILN_RELEASE".into(), record.id.clone());
                live_env.insert("KILN_COMMIT".into(), record.commit.clone());
                live_env.insert(
                    "KILN_DEPLOY_DIR".into(),
                    paths.release_dir(&record.id).display().to_string(),
                );
                let recipe = Oid::from_str(&record.commit)
                    .map_err(crate::error::git_error(format!(
                        "read commit {}",
                        record.commit
                    )))
                    .and_then(|commit| read_recipe(setup.repo, commit));
                match recipe {
                    Ok(recipe) => recipe.services,
                    Err(e) => {
                        // Stopping the live release with the new stop command is what kiln
                        // did before it read the live one's: better than not stopping it.
                        out.note(&format!(
                            "warning: cannot read {RECIPE_FILE} of the live release {} ({}); \
                             its services are stopped and started with this release's commands",
                            record.id,
                            crate::error::chain(&e)
                        ));
                        setup.recipe.services.clone()
                    }
                }
            }
        };
        // A project stopped with `kiln stop`: its services are stopped already, and if this
        // run fails it stays stopped (nothing of the live release is started again).
        let stopped = Stopped::load(&paths.state);
        let live_services = match &stopped {
            Some(mark) => {
                out.note(&format!(
                    "`{}` was stopped with `kiln stop` ({}): this {} starts it",
                    paths.name,
                    mark.describe(),
                    if setup.log_name == setup.release {
                        "deploy"
                    } else {
                        "rollback"
                    }
                ));
                Services::default()
            }
            None => live_services,
        };
        let supervisor = Supervisor::new(&setup.node.root, &setup.node.config.supervisor);
        let live_formation = match supervisor.running(&paths.name) {
            Ok(formation) => formation,
            Err(e) => {
                out.note(&format!(
                    "warning: {}; the processes that run now are not stopped by this deploy",
                    crate::error::chain(&e)
                ));
                None
            }
        };
        let stopped_formation = stopped
            .and_then(|_| supervisor.state(&paths.name).ok().flatten())
            .filter(|state| !state.running)
            .map(|state| state.formation);
        Run {
            supervisor,
            live_formation,
            stopped_formation,
            formation: None,
            release_command: None,
            node: setup.node,
            project: setup.project,
            repo: setup.repo,
            recipe: setup.recipe,
            mode: setup.project.config.mode,
            release: setup.release,
            commit: setup.commit,
            live: setup.log.current.clone(),
            live_services,
            live_env,
            pillar_rev: setup.pillar_rev,
            secrets: setup.settings.secrets.clone(),
            redactor: Redactor::new(&setup.settings.secrets),
            base_env,
            user_env: setup.settings.user_env.clone(),
            build_env: None,
            journal: None,
            log: setup.log,
            reuse: setup.reuse,
            receive_pack: None,
            baking: None,
            archive: setup.archive,
            log_name: setup.log_name,
            front_door_installed: false,
            out,
        }
    }
}

impl Run<'_> {
    fn paths(&self) -> &crate::config::layout::ProjectPaths {
        &self.project.paths
    }

    fn pipeline(&mut self) -> Result<(), Failure> {
        if self.mode != Mode::Editable {
            self.begin_journal("deploy")
                .map_err(|e| Failure::new(Stage::Gather, e))?;
        }
        for stage in Stage::ALL {
            self.push_still_open(stage)?;
            self.out.stage_start(stage.as_str());
            self.stage(stage)?;
            self.out.stage_end();
        }
        Ok(())
    }

    /// Ends a deploy or rollback after its last line: its `deploy_end` (or `rollback_end`)
    /// event, the notification spooled and its delivery started in the background, the logs
    /// closed. Nothing here may change the outcome, and the pusher's last line is already
    /// written: a problem goes to the log file and the events only.
    fn finish(&mut self, end: Ended) {
        let is_rollback = self.log_name != self.release;
        self.out.event(json!({
            "event": if is_rollback { "rollback_end" } else { "deploy_end" },
            "outcome": end.outcome.as_str(),
            "stage": end.failure.as_ref().map(|f| f.stage.clone()),
            "duration_ms": millis(end.duration),
        }));
        self.notify(end);
        self.out.close_logs();
    }

    /// Spools the notification of how this run ended and starts its delivery in the
    /// background.
    fn notify(&mut self, end: Ended) {
        let is_rollback = self.log_name != self.release;
        let result = crate::notify::finished(
            self.node,
            self.project,
            crate::notify::Finished {
                event: end.event,
                outcome: end.outcome,
                summary: end.summary,
                headline: end.headline,
                release: Some(&self.release),
                commit: Some((self.repo, self.commit)),
                who: end.who,
                who_key: end.who_key,
                stages: if is_rollback {
                    Vec::new()
                } else {
                    self.out.stage_durations()
                },
                duration: Some(end.duration),
                failure: end.failure,
                log_name: Some(&self.log_name),
                redactor: &self.redactor,
            },
        );
        match result {
            Ok(targets) if !targets.is_empty() => {
                let to: Vec<String> = targets.iter().map(|t| t.shown()).collect();
                self.out
                    .event(json!({"event": "notification", "outcome": "spooled",
                    "notification": {"to": to}}));
            }
            Ok(_) => {}
            Err(e) => {
                let error = crate::error::chain(&e);
                self.out
                    .log_only(&format!("warning: could not notify: {error}"));
                self.out
                    .event(json!({"event": "notification", "outcome": "failed",
                    "notification": {"error": error}}));
            }
        }
    }

    fn begin_journal(&mut self, action: &str) -> Result<(), Error> {
        self.journal = Some(Journal {
            release: self.release.clone(),
            action: action.into(),
            previous: self.live.clone(),
            phase: Phase::Started,
            run_inode: None,
            switch: Method::Exchange.as_str().into(),
            snapshot: None,
            archive: self.archive.clone(),
            undo: UndoCommands {
                // This release's processes are stopped with this release's command; the
                // live release starts again with its own.
                stop: self.recipe.services.stop.clone(),
                start: self
                    .live_services
                    .start
                    .clone()
                    .filter(|_| self.live.is_some()),
                restore: self.recipe.restore.clone(),
                env: self.env_for(Stage::Deploy),
                start_env: Some(self.live_env.clone()),
                secrets: self.secrets.clone(),
                timeout: self.timeout(Stage::Deploy),
                cwd: self.paths().run.clone(),
                processes: self.live_formation.clone(),
                stopped_processes: self.stopped_formation.clone(),
            },
            pid: std::process::id(),
            log: Some(self.log_name.clone()),
            cutover: Cutover::Stop,
            migrated: false,
            live_stopped: false,
        });
        self.record(Phase::Started)
    }

    fn stage(&mut self, stage: Stage) -> Result<(), Failure> {
        let fail = |e: Error| Failure::new(stage, e);
        let paths = self.paths().clone();
        match (stage, self.mode) {
            (Stage::Gather, _) => self.commands(stage, &paths.base),
            (Stage::PreInstall, Mode::Editable) => {
                paths.ensure().map_err(fail)?;
                self.checkout(true).map_err(fail)?;
                self.link_run_to_project().map_err(fail)?;
                self.commands(stage, &paths.project)
            }
            (Stage::PreInstall, _) => {
                paths.ensure().map_err(fail)?;
                self.checkout(false).map_err(fail)?;
                if self.mode == Mode::Cooking {
                    wipe_dir(&paths.build).map_err(fail)?;
                }
                self.commands(stage, &paths.project)
            }
            (Stage::Build, Mode::Editable | Mode::Cooking) if self.reuse.is_some() => {
                self.out
                    .note("skipped: only the settings changed, the release is not rebuilt");
                Ok(())
            }
            (Stage::Configure, Mode::Editable) => self.commands(stage, &paths.project),
            (Stage::Build, Mode::Editable) => {
                let checkout = git::Checkout::open_or_init(&paths.project, &paths.project_repo)
                    .map_err(fail)?;
                let before = match self.recipe.buildpacks(self.mode) {
                    Some([]) => Vec::new(),
                    _ => checkout.untracked().map_err(fail)?,
                };
                if self.buildpacks(&paths.project)? {
                    // What they added (.venv/, node_modules/) is not a manual edit of
                    // project/; what configure wrote is the app's to ignore, as before.
                    checkout.exclude_untracked(&before).map_err(fail)?;
                }
                self.commands(stage, &paths.project)
            }
            (Stage::Configure, Mode::Cooking) => {
                if let Some(live) = self.reuse.clone() {
                    let stats = sync::sync_tree(
                        &paths.release_dir(&live),
                        &paths.build,
                        &SyncOptions::default(),
                    )
                    .map_err(|e| fail(e.into()))?;
                    self.out.note(&format!(
                        "copied the tree of {live} ({} files) into build/",
                        stats.copied
                    ));
                } else {
                    let live = self.live.as_ref().and_then(|id| self.log.get(id));
                    let live_commit = live.and_then(|r| Oid::from_str(&r.commit).ok());
                    let live_started = live.map(|r| std::time::SystemTime::from(r.started));
                    let live_tree = self.live.as_ref().map(|id| paths.release_dir(id));
                    let previous = live_commit.zip(live_tree.as_deref()).zip(live_started).map(
                        |((commit, tree), started)| git::Previous {
                            commit,
                            tree,
                            started,
                            // Listed buildpacks will write into the tree; detected ones
                            // copy the shared files first (runtime::buildpack).
                            share: [Stage::Configure, Stage::Build, Stage::Bundle]
                                .iter()
                                .all(|stage| self.recipe.commands(self.mode, *stage).is_empty())
                                && self
                                    .recipe
                                    .buildpacks(self.mode)
                                    .is_none_or(|listed| listed.is_empty()),
                        },
                    );
                    // Before this deploy started: whatever the build touches is newer.
                    let stamp = self
                        .log
                        .get(&self.release)
                        .map(|r| std::time::SystemTime::from(r.started))
                        .unwrap_or_else(std::time::SystemTime::now)
                        - Duration::from_secs(1);
                    let files = git::export(self.repo, self.commit, &paths.build, previous, stamp)
                        .map_err(fail)?;
                    self.out.note(&format!(
                        "exported {} ({files} files) into build/",
                        git::short(self.commit)
                    ));
                }
                self.commands(stage, &paths.build)
            }
            (Stage::Build, Mode::Cooking) => {
                self.buildpacks(&paths.build)?;
                self.commands(stage, &paths.build)
            }
            (Stage::Configure, Mode::Final) => {
                let source_release = crate::release::fetch::fetch_release(
                    self.node,
                    self.project,
                    self.commit,
                    &self.release,
                    self.out,
                )
                .map_err(fail)?;
                if let Some(record) = self.log.get_mut(&self.release) {
                    record.source_release = Some(source_release);
                }
                self.log.save(&paths.release_log()).map_err(fail)?;
                self.commands(stage, &paths.release_dir(&self.release))
            }
            (Stage::Build, Mode::Final) => {
                self.out.note("skipped: final mode never builds");
                Ok(())
            }
            (Stage::Bundle, Mode::Editable) => self.commands(stage, &paths.project),
            (Stage::Bundle, Mode::Cooking) => {
                self.commands(stage, &paths.build)?;
                self.bundle().map_err(fail)
            }
            (Stage::Bundle, Mode::Final) => self.commands(stage, &paths.release_dir(&self.release)),
            (Stage::Deploy, Mode::Editable) => self.restart_in_place(),
            (Stage::Deploy, _) => self.go_live(),
            (Stage::PostDeploy, Mode::Editable) => {
                self.commands(stage, &paths.project)?;
                self.commit_release().map_err(fail)
            }
            (Stage::PostDeploy, _) => {
                self.finish_bake()
                    .map_err(|e| Failure::new(Stage::Bundle, e))?;
                self.commands(stage, &paths.run)?;
                self.push_still_open(stage)?;
                self.commit_release().map_err(fail)
            }
        }
    }

    /// A deploy from pre-receive stops once git's receive-pack is gone (see
    /// [`DeployRequest::receive_pack`]); the hook then has another parent.
    fn push_still_open(&self, stage: Stage) -> Result<(), Failure> {
        match self.receive_pack {
            Some(pid) if nix::unistd::getppid().as_raw() != pid => Err(Failure::new(
                stage,
                Error::Refused {
                    message: format!(
                        "the push was aborted: git receive-pack (pid {pid}) is gone and cannot move the branch any more"
                    ),
                },
            )),
            _ => Ok(()),
        }
    }

    fn timeout(&self, stage: Stage) -> Duration {
        self.recipe
            .timeout(stage, self.node.config.limits.stage_timeout)
    }

    fn env_for(&self, stage: Stage) -> BTreeMap<String, String> {
        let mut env = match &self.build_env {
            Some(env) if stage == Stage::Build => env.clone(),
            _ => self.base_env.clone(),
        };
        env.insert("KILN_STAGE".into(), stage.as_str().into());
        env
    }

    /// The buildpacks of the build stage, in `dir` (build/ or project/), before the project's
    /// build commands, which then run with the buildpacks' exports. Returns whether any ran.
    fn buildpacks(&mut self, dir: &Path) -> Result<bool, Failure> {
        let listed = self.recipe.buildpacks(self.mode);
        if listed.is_some_and(|list| list.is_empty()) {
            return Ok(false);
        }
        let env = self.env_for(Stage::Build);
        let paths = self.paths().clone();
        let request = crate::runtime::buildpack::BuildRequest {
            node_root: &self.node.root,
            cache: &paths.cache,
            build_dir: dir,
            listed,
            env: &env,
            settings: &self.user_env,
            timeout: self.timeout(Stage::Build),
            redactor: &self.redactor,
            unshare: self.mode == Mode::Cooking,
            links_ok: self.mode == Mode::Cooking
                && [Stage::Build, Stage::Bundle]
                    .iter()
                    .all(|stage| self.recipe.commands(self.mode, *stage).is_empty()),
        };
        let built = crate::runtime::buildpack::build(&request, self.out)
            .map_err(|e| Failure::new(Stage::Build, e))?;
        let Some(built) = built else {
            return Ok(false);
        };
        self.out.event(
            json!({"event": "buildpacks", "outcome": "ok", "buildpacks": built.file.buildpacks,
            "default_process_types": built.file.default_process_types}),
        );
        let mut env = built.env;
        env.remove("KILN_STAGE");
        self.build_env = Some(env);
        Ok(true)
    }

    fn commands(&mut self, stage: Stage, cwd: &Path) -> Result<(), Failure> {
        let commands: Vec<String> = self.recipe.commands(self.mode, stage).to_vec();
        for command in &commands {
            self.shell(stage, command, cwd)?;
        }
        Ok(())
    }

    fn shell(&mut self, stage: Stage, command: &str, cwd: &Path) -> Result<(), Failure> {
        let env = self.env_for(stage);
        self.shell_with(stage, command, cwd, &env)
    }

    fn shell_with(
        &mut self,
        stage: Stage,
        command: &str,
        cwd: &Path,
        env: &BTreeMap<String, String>,
    ) -> Result<(), Failure> {
        let spec = CommandSpec {
            stage: stage.as_str(),
            command,
            cwd,
            env,
            timeout: self.timeout(stage),
            profile: false,
        };
        self.out
            .run(&spec, &self.redactor)
            .map(|_| ())
            .map_err(|e| Failure::new(stage, e))
    }

    fn record(&mut self, phase: Phase) -> Result<(), Error> {
        let path = self.paths().journal();
        match &mut self.journal {
            Some(journal) => journal.record(&path, phase),
            None => Ok(()),
        }
    }

    /// Updates project/ to the commit. In editable mode project/ is the live tree: manual
    /// edits there would be lost, so they make the deploy refuse.
    fn checkout(&mut self, refuse_edits: bool) -> Result<(), Error> {
        let paths = self.paths();
        let checkout = git::Checkout::open_or_init(&paths.project, &paths.project_repo)?;
        if refuse_edits {
            let live = self.live_commit();
            let edits =
                backup::editable_edits(self.repo, live, &paths.project, checkout.local_edits()?)?;
            if !edits.is_empty() {
                return Err(Error::LocalEdits { files: edits });
            }
        }
        checkout.checkout(self.commit)
    }

    /// Editable mode: run/ shows project/.
    fn link_run_to_project(&mut self) -> Result<(), Error> {
        let paths = self.paths().clone();
        let target = Path::new(
            paths
                .project
                .file_name()
                .unwrap_or_else(|| std::ffi::OsStr::new("project")),
        )
        .to_path_buf();
        match fs::symlink_metadata(&paths.run) {
            Ok(meta)
                if meta.file_type().is_symlink()
                    && fs::read_link(&paths.run).ok().as_deref() == Some(target.as_path()) =>
            {
                return Ok(());
            }
            Ok(meta) if meta.is_dir() => {
                // A tree left by cooking or final mode: keep it, never delete it silently.
                let empty = fs::read_dir(&paths.run)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(false);
                if empty {
                    fs::remove_dir(&paths.run).map_err(|e| io_error("remove", &paths.run, e))?;
                } else {
                    let keep = paths.archive_dir(&self.release).join("run-before-editable");
                    fs::create_dir_all(paths.archive_dir(&self.release))
                        .map_err(|e| io_error("create", &keep, e))?;
                    fs::rename(&paths.run, &keep).map_err(|e| io_error("move", &paths.run, e))?;
                    self.out.note(&format!(
                        "moved the previous run/ tree to {}",
                        keep.display()
                    ));
                }
            }
            _ => {}
        }
        crate::fs::durable::replace_symlink(&target, &paths.run)
    }

    /// Cooking mode: build/ becomes the immutable release tree. It is baked into a tarball on
    /// another thread while the deploy stage prepares and switches, and the release becomes
    /// good only once the tarball and its manifest are written ([`Run::finish_bake`]).
    /// First the tree is held to production's unpack rules: a release that production would
    /// refuse fails here, before anything is baked, signed or published.
    fn bundle(&mut self) -> Result<(), Error> {
        let paths = self.paths().clone();
        let links = crate::release::unpack::LinkRules::for_project(self.node, &paths);
        let rules = crate::release::unpack::UnpackOptions {
            limits: crate::release::unpack::Limits::for_node(&self.node.config),
            links: &links,
        };
        bake::check_promotable(&paths.build, &rules)?;
        let tree_dir = paths.release_dir(&self.release);
        fs::rename(&paths.build, &tree_dir).map_err(|e| io_error("move", &paths.build, e))?;
        fs::create_dir(&paths.build).map_err(|e| io_error("create", &paths.build, e))?;
        let tarball = paths.tarball(&self.release);
        self.baking = Some(std::thread::spawn(move || {
            let digest = tree::digest(&tree_dir)?;
            let info = bake::bake(&tree_dir, &tarball, 3)?;
            Ok((digest, info))
        }));
        self.out.note(&format!(
            "baking releases/{}.tar.zst while the deploy goes on",
            self.release
        ));
        Ok(())
    }

    /// Waits for the tarball and writes the manifest (and its signature).
    fn finish_bake(&mut self) -> Result<(), Error> {
        let Some(baking) = self.baking.take() else {
            return Ok(());
        };
        let (digest, info) = baking.join().map_err(|_| Error::Refused {
            message: format!("baking release {} crashed", self.release),
        })??;
        let paths = self.paths().clone();
        let pusher = self.log.get(&self.release);
        let manifest = Manifest {
            format: 1,
            release: self.release.clone(),
            project: paths.name.clone(),
            commit: self.commit.to_string(),
            pillar_rev: self.pillar_rev.clone(),
            created: Utc::now(),
            sha256: info.sha256.clone(),
            files: info.files,
            bytes: info.bytes,
            tree_digest: digest,
            who: pusher.map(|record| record.who.clone()),
            who_key: pusher.and_then(|record| record.who_key.clone()),
            process_types: self
                .formation
                .as_ref()
                .map(|f| {
                    f.types
                        .iter()
                        .map(|(kind, p)| (kind.clone(), p.command.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            buildpacks: crate::runtime::buildpack::read_buildpacks_file(
                &paths.release_dir(&self.release),
            )
            .map(|file| {
                file.buildpacks
                    .into_iter()
                    .map(|b| release::BuiltWith {
                        name: b.name,
                        source: b.source,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        };
        manifest.save(&paths.manifest(&self.release))?;
        crate::release::signing::sign_manifest_if_keyed(self.node, &paths.manifest(&self.release))?;
        self.out.note(&format!(
            "baked releases/{}.tar.zst: {} files, {} bytes, sha256 {}",
            self.release,
            info.files,
            info.bytes,
            &info.sha256[..16]
        ));
        Ok(())
    }

    /// Editable mode: the tree is already live; restart the services around the project's
    /// deploy commands so the app runs the pushed code (the running app is stopped with the
    /// stop command it was started with).
    fn restart_in_place(&mut self) -> Result<(), Failure> {
        let project_dir = self.paths().project.clone();
        self.plan_processes(&project_dir)
            .map_err(|e| Failure::new(Stage::Deploy, e))?;
        self.check_front_door()?;
        self.stop_live(&project_dir)?;
        self.stop_processes()?;
        self.commands(Stage::Deploy, &project_dir)?;
        self.release_phase(&project_dir)?;
        if let Some(start) = self.recipe.services.start.clone() {
            self.shell(Stage::Deploy, &start, &project_dir)?;
        }
        self.start_processes(Cutover::Stop)?;
        self.install_front_door()?;
        self.check(&project_dir)
    }

    /// Reads the process types of the release tree `tree` (its Procfile over its buildpacks'
    /// defaults) and builds the formation it will run: counts from `kiln ps scale`, then
    /// kiln.yml `processes:`, else 1 of each. Before anything live changes, so a mistake here
    /// fails the deploy with nothing to undo.
    fn plan_processes(&mut self, tree: &Path) -> Result<(), Error> {
        let paths = self.paths().clone();
        let mut types = ProcessTypes::of_tree(tree)?;
        self.release_command = types.release.clone();
        // A site the front door serves whole from run/ (kiln's static buildpack's) needs no
        // web process; a Procfile's `web` still runs.
        let served_static = FrontDoor::of(self.node).is_some()
            && site::static_paths(&self.recipe.static_paths, tree).contains_key("/");
        if served_static && types.proposed.contains(WEB) && types.types.remove(WEB).is_some() {
            self.out.note(
                "the front door serves this site from run/: its buildpack's `web` process is not run",
            );
        }
        // kiln.yml `services.start` runs the app itself: what a buildpack merely proposes
        // would be a second copy. A Procfile's types run in addition (the user asked for them).
        if self.recipe.services.start.is_some() && !types.proposed.is_empty() {
            let dropped: Vec<String> = std::mem::take(&mut types.proposed).into_iter().collect();
            for name in &dropped {
                types.types.remove(name);
            }
            self.out.note(&format!(
                "kiln.yml `services.start` runs the app: the buildpack's proposed process types ({}) are not run; name them in a Procfile to run them",
                dropped.join(", ")
            ));
        }
        if types.types.is_empty() {
            if let Some(name) = self
                .recipe
                .processes
                .iter()
                .find(|(_, count)| **count > 0)
                .map(|(name, _)| name.clone())
            {
                return Err(crate::runtime::formation::UnknownType {
                    origin: "kiln.yml `processes`",
                    name,
                    release: self.release.clone(),
                    types: Vec::new(),
                }
                .into());
            }
            self.formation = None;
            return Ok(());
        }
        let scale = Scale::load(&paths.state)?;
        let env = self.env_for(Stage::Deploy);
        let formation = crate::runtime::formation::build(&FormationSetup {
            project: &paths.name,
            release: &self.release,
            types: &types,
            cwd: &paths.run,
            deploy_env: &env,
            secrets: &self.secrets,
            counts: &self.recipe.processes,
            scale: &scale,
            grace: self.recipe.stop_grace,
            limits: &self.recipe.limits,
            log_dir: &paths.logs.join("app"),
            check_command: self
                .recipe
                .check
                .as_ref()
                .and_then(|check| check.command.as_deref()),
            socket_activation: self.recipe.socket_activation,
        })?;
        let listed: Vec<String> = formation
            .types
            .iter()
            .map(|(kind, p)| format!("{kind}={}", p.count))
            .collect();
        self.out.note(&format!(
            "processes: {} (backend: {})",
            listed.join(" "),
            self.supervisor.backend.as_str()
        ));
        // The systemd backend runs each instance as a unit of its own: it neither holds their
        // sockets nor runs two sets of them.
        if self.supervisor.backend == Backend::Systemd && !formation.web_instances().is_empty() {
            let what = if self.recipe.socket_activation {
                Some("`socket_activation`")
            } else if self.recipe.cutover == Cutover::Overlap {
                Some("`cutover: overlap`")
            } else {
                None
            };
            if let Some(what) = what {
                return Err(crate::runtime::supervisor::SupervisorError::NeedsKiln { what }.into());
            }
        }
        if !formation.limits.is_empty() && self.supervisor.backend == Backend::Kiln {
            self.out.note(
                "note: kiln.yml `limits` are applied by the systemd backend only; kiln's own supervisor does not enforce them",
            );
        }
        self.formation = Some(formation);
        Ok(())
    }

    /// The front door's site of this run's release: project.yml's domains and upstreams,
    /// this release's `static:` (or its static buildpack's site).
    fn site(&self) -> Site {
        let config = &self.project.config;
        let tree = match self.mode {
            Mode::Editable => self.paths().project.clone(),
            _ => self.paths().release_dir(&self.release),
        };
        Site::new(
            self.paths(),
            config,
            site::upstreams(&self.web_ports(), config),
            &site::static_paths(&self.recipe.static_paths, &tree),
        )
    }

    /// The ports of this release's web instances, for the front door's upstreams: given when
    /// its processes start; before that (nginx checks the configuration before anything
    /// stops) the ports they will get, which are those the running instances of the same
    /// names have (a web instance keeps its port).
    fn web_ports(&self) -> Vec<u16> {
        let Some(formation) = &self.formation else {
            return Vec::new();
        };
        let known = if formation.ports.is_empty() {
            self.live_formation
                .as_ref()
                .map(|live| live.ports.clone())
                .unwrap_or_default()
        } else {
            formation.ports.clone()
        };
        formation
            .web_instances()
            .iter()
            .filter_map(|name| known.get(&name.to_string()).copied())
            .collect()
    }

    /// Before anything stops: nginx must accept the configuration this release needs, or the
    /// deploy fails here with nginx's error, and nothing live has changed.
    fn check_front_door(&mut self) -> Result<(), Failure> {
        let Some(front) = FrontDoor::of(self.node) else {
            return Ok(());
        };
        let site = self.site();
        front
            .check(&site)
            .map_err(|e| Failure::new(Stage::Deploy, e))?;
        if !site.domains.is_empty() {
            self.out.note(&format!(
                "front door: nginx accepts the configuration of {}",
                site.domains.join(", ")
            ));
        }
        Ok(())
    }

    /// Stops the processes that ran when this run started (the live release's).
    fn stop_processes(&mut self) -> Result<(), Failure> {
        let Some(live) = self.live_formation.clone() else {
            return Ok(());
        };
        let t = Instant::now();
        // The web instances' sockets stay open: connections wait for the new release.
        let stopped = self
            .supervisor
            .stop(&live.project, Sockets::Hold)
            .map_err(|e| Failure::new(Stage::Deploy, e))?;
        if stopped {
            self.out.note(&format!(
                "stopped the processes of {} in {}",
                live.release,
                seconds(t.elapsed())
            ));
        }
        Ok(())
    }

    /// The Procfile's `release:` command, after the deploy commands (migrations), like
    /// Heroku's release phase: its failure fails the deploy.
    fn release_phase(&mut self, cwd: &Path) -> Result<(), Failure> {
        let Some(command) = self.release_command.clone() else {
            return Ok(());
        };
        self.out.note("release phase (the Procfile's `release:`)");
        let env = self.env_for(Stage::Deploy);
        let spec = CommandSpec {
            stage: Stage::Deploy.as_str(),
            command: &command,
            cwd,
            env: &env,
            timeout: self.timeout(Stage::Deploy),
            profile: true,
        };
        self.out
            .run(&spec, &self.redactor)
            .map(|_| ())
            .map_err(|e| Failure::new(Stage::Deploy, e))
    }

    /// Starts this release's processes and waits until they are up: each still running after
    /// its first seconds, each web instance accepting on its PORT (and, without a check
    /// command, answering GET / below 500). Returns how long until the web ports accepted.
    fn start_processes(&mut self, cutover: Cutover) -> Result<Duration, Failure> {
        let fail = |e: Error| Failure::new(Stage::Deploy, e);
        let Some(formation) = self.formation.clone() else {
            return Ok(Duration::ZERO);
        };
        let formation = match cutover {
            Cutover::Stop => self.supervisor.start(formation),
            Cutover::Overlap => self.supervisor.start_beside(formation),
        }
        .map_err(fail)?;
        self.formation = Some(formation.clone());
        if formation.is_idle() {
            self.out
                .note("no process to start: every type is scaled to 0");
            return Ok(Duration::ZERO);
        }
        let ports: Vec<String> = formation
            .ports
            .iter()
            .map(|(name, port)| format!("{name} on port {port}"))
            .collect();
        self.out.note(&format!(
            "started {} process(es){}{}{}",
            formation.instance_names().len(),
            match cutover {
                Cutover::Overlap => " beside the live ones",
                Cutover::Stop => "",
            },
            if ports.is_empty() { "" } else { ": " },
            ports.join(", ")
        ));
        let (timeout, http_check) = match &self.recipe.check {
            Some(check) => (check.timeout, check.command.is_none()),
            None => (DEFAULT_CHECK_TIMEOUT, true),
        };
        let http_check = http_check && !formation.web_instances().is_empty();
        let mut tail = Vec::new();
        let up = crate::runtime::readiness::wait_up(
            &self.supervisor,
            &Readiness {
                formation: &formation,
                timeout,
                http_check,
                startup: crate::runtime::readiness::STARTUP,
                only: None,
            },
            &mut |line| tail.push(line.to_string()),
        );
        for line in &tail {
            self.out.note(&format!("  {line}"));
        }
        let accepted = up.map_err(|e| fail(e.into()))?;
        self.out.note(&format!(
            "processes up{}",
            if http_check {
                " (GET / answered below 500)"
            } else {
                ""
            }
        ));
        for (instance, port) in &formation.ports {
            let exposed = crate::runtime::listeners::exposed(*port);
            if let Some(warning) = crate::runtime::listeners::warning(instance, &exposed) {
                self.out.note(&format!("warning: {warning}"));
            }
        }
        Ok(accepted)
    }

    /// Once the new release runs: its configuration is written and nginx reloaded. With an
    /// overlap, nginx's old workers get up to `stop_grace` to finish the requests they send
    /// to the old processes, which stop next.
    fn install_front_door(&mut self) -> Result<(), Failure> {
        let Some(front) = FrontDoor::of(self.node) else {
            return Ok(());
        };
        let site = self.site();
        // From here an undo must put the live release's configuration back, whether this
        // install worked or failed halfway.
        self.front_door_installed = true;
        let overlapping = self
            .journal
            .as_ref()
            .is_some_and(|j| j.cutover == Cutover::Overlap);
        let applied = if overlapping {
            front.install_draining(&site, self.recipe.stop_grace)
        } else {
            front.install(&site)
        }
        .map_err(|e| Failure::new(Stage::Deploy, e))?;
        match applied {
            Applied::Reloaded => self.out.note("front door: nginx reloaded"),
            Applied::NotRunning => self.out.note(
                "front door: configuration written; the node-private nginx is not running (`kiln proxy start`)",
            ),
            Applied::Unchanged => {}
        }
        Ok(())
    }

    /// Stops the live release with its own `services.stop` (nothing is live: nothing to stop).
    fn stop_live(&mut self, cwd: &Path) -> Result<(), Failure> {
        if self.live.is_none() {
            return Ok(());
        }
        let Some(stop) = self.live_services.stop.clone() else {
            return Ok(());
        };
        let env = self.live_env.clone();
        self.shell_with(Stage::Deploy, &stop, cwd, &env)
    }

    fn check(&mut self, cwd: &Path) -> Result<(), Failure> {
        let Some(check) = self.recipe.check.clone() else {
            return Ok(());
        };
        // Without a command the check is the default HTTP one, done with the processes.
        let Some(command) = check.command.clone() else {
            return Ok(());
        };
        let env = self.env_for(Stage::Deploy);
        self.out.note(&format!("check: {command}"));
        let spec = CheckSpec {
            stage: Stage::Deploy.as_str(),
            command: &command,
            cwd,
            env: &env,
            timeout: check.timeout,
            interval: check.interval,
        };
        let started = Instant::now();
        let result = stage::run_check(&spec, &self.redactor, self.out);
        self.out
            .event(json!({"event": "check", "stage": Stage::Deploy.as_str(),
            "command": check.command,
            "exit_code": result.as_ref().map_or_else(|e| e.exit_code(), |_| Some(0)),
            "outcome": result.as_ref().map_or_else(|e| e.outcome(), |_| "ok"),
            "attempts": result.as_ref().ok(),
            "duration_ms": millis(started.elapsed())}));
        let attempts = result.map_err(|e| Failure::new(Stage::Deploy, e))?;
        self.out.note(&format!("check passed (attempt {attempts})"));
        Ok(())
    }

    /// Cooking and final mode: drift check, shadow tree, data snapshot, stop, switch, deploy
    /// commands, start, health check. Everything that can be prepared is prepared before the
    /// services stop; the deploy commands (migrations) run while nothing serves, so the new
    /// release never serves a half-migrated database.
    fn go_live(&mut self) -> Result<(), Failure> {
        let tree_dir = self.paths().release_dir(&self.release);
        self.go_live_with(&tree_dir, None)
    }

    /// Takes `tree_dir` live. `data_from`: a snapshot to put data/ back to once the services
    /// are stopped (a rollback `--with-data`).
    fn go_live_with(&mut self, tree_dir: &Path, data_from: Option<&Path>) -> Result<(), Failure> {
        let fail = |e: Error| Failure::new(Stage::Deploy, e);
        let paths = self.paths().clone();
        self.plan_processes(tree_dir).map_err(fail)?;
        let overlap = self.overlaps(data_from.is_some());
        self.check_front_door()?;
        self.save_drift().map_err(fail)?;
        ensure_run_dir(&paths.run).map_err(fail)?;

        let method = switch::method(&paths.run, &paths.shadow);
        let prepare_from = match method {
            Method::Exchange => tree_dir,
            // Keep a copy of the live tree to switch back to.
            Method::InPlace => &paths.run,
        };
        let t = Instant::now();
        let stats = sync::sync_tree(prepare_from, &paths.shadow, &SyncOptions::default())
            .map_err(|e| fail(e.into()))?;
        self.out.note(&format!(
            "prepared the next tree ({} copied, {} removed, {} unchanged) in {}",
            stats.copied,
            stats.removed,
            stats.unchanged,
            seconds(t.elapsed())
        ));
        if let Some(journal) = &mut self.journal {
            journal.switch = method.as_str().into();
            journal.run_inode = switch::inode(&paths.run);
        }

        let snapshot = self.archive.join("data");
        let base = self
            .log
            .last_snapshot(&self.release)
            .and_then(|r| {
                let dir = paths.archive_dir(&r.id).join("data");
                dir.is_dir().then_some((dir, r.snapshot_at))
            })
            .and_then(|(dir, at)| at.map(|at| (dir, std::time::SystemTime::from(at))));
        let t = Instant::now();
        let taken_at = Utc::now();
        let stats = backup::snapshot(
            &paths.data,
            &snapshot,
            base.as_ref().map(|(d, at)| (d.as_path(), *at)),
        )
        .map_err(fail)?;
        self.out.note(&format!(
            "data snapshot: {} copied, {} shared with the previous snapshot, in {}{}",
            stats.copied,
            stats.linked,
            seconds(t.elapsed()),
            if overlap {
                " (cutover: overlap: taken while the live release serves, and not caught up)"
            } else {
                ""
            }
        ));
        fs::create_dir_all(self.archive.join("backup"))
            .map_err(|e| fail(io_error("create", &paths.archives, e)))?;
        for command in self.recipe.backup.clone() {
            self.shell(Stage::Deploy, &command, &paths.run)?;
        }
        if self.journal.as_ref().map(|j| j.action.as_str()) == Some("deploy") {
            if let Some(record) = self.log.get_mut(&self.release) {
                record.snapshot_at = Some(taken_at);
            }
            self.log.save(&paths.release_log()).map_err(fail)?;
        }
        if let Some(journal) = &mut self.journal {
            journal.snapshot = Some(snapshot.clone());
        }
        self.record(Phase::Snapshotted).map_err(fail)?;
        crate::failpoint("after-snapshot");
        if overlap {
            return self.cut_over_beside(tree_dir, method);
        }

        self.record(Phase::Stopping).map_err(fail)?;
        let window = Instant::now();
        self.stop_live(&paths.run)?;
        self.stop_processes()?;
        // Writes the app made between the snapshot and the stop belong in the snapshot too.
        backup::catch_up(&paths.data, &snapshot).map_err(fail)?;
        crate::failpoint("after-stop");
        self.record(Phase::Switching).map_err(fail)?;
        self.switch_run(tree_dir, method)?;
        if let Some(data) = data_from {
            backup::restore(data, &paths.data).map_err(fail)?;
            self.out
                .note(&format!("data/ put back from {}", data.display()));
        }
        crate::failpoint("after-switch");
        self.record(Phase::Migrating).map_err(fail)?;
        self.out.note(&format!(
            "switched run/ to {} ({})",
            self.release,
            method.as_str()
        ));
        self.commands(Stage::Deploy, &paths.run)?;
        self.release_phase(&paths.run)?;
        crate::failpoint("after-deploy-commands");
        self.record(Phase::Switched).map_err(fail)?;
        if let Some(start) = self.recipe.services.start.clone() {
            self.shell(Stage::Deploy, &start, &paths.run)?;
        }
        let starting = window.elapsed();
        let accepted = self.start_processes(Cutover::Stop)?;
        // From the stop of the live release until the new one serves: its services started,
        // and its web processes (if any) accept connections.
        let stopped = starting + accepted;
        self.install_front_door()?;
        self.out.note(&match self.live {
            Some(_) => format!("services were stopped for {}", seconds(stopped)),
            // Nothing was stopped: say how long the first release took to serve.
            None => format!(
                "the first release serves, {} after the switch",
                seconds(stopped)
            ),
        });
        // duration_ms: how long no release's services (or web processes) ran.
        self.out
            .event(json!({"event": "switched", "stage": Stage::Deploy.as_str(),
            "method": method.as_str(), "cutover": Cutover::Stop.as_str(),
            "duration_ms": millis(stopped)}));
        self.check(&paths.run)
    }

    /// Whether this run takes its release live with an overlap cutover: kiln.yml says
    /// `cutover: overlap`, the live release runs processes for the new ones to start beside,
    /// and data/ is not being put back (`--with-data` needs the app stopped).
    fn overlaps(&mut self, putting_data_back: bool) -> bool {
        if self.recipe.cutover != Cutover::Overlap || self.formation.is_none() {
            return false;
        }
        let running = self
            .live_formation
            .as_ref()
            .is_some_and(|live| !live.is_idle());
        let reason = if putting_data_back {
            "`--with-data` puts data/ back while the app is stopped"
        } else if !running {
            "no process of a live release runs to serve beside the new ones"
        } else {
            return true;
        };
        self.out
            .note(&format!("cutover: stop, not overlap: {reason}"));
        false
    }

    /// Switches run/ to the release tree: the prepared `.run-next/` exchanged with run/, or
    /// (without `renameat2`) run/ synced in place.
    fn switch_run(&mut self, tree_dir: &Path, method: Method) -> Result<(), Failure> {
        let fail = |e: Error| Failure::new(Stage::Deploy, e);
        let paths = self.paths().clone();
        match method {
            Method::Exchange => switch::exchange(&paths.run, &paths.shadow).map_err(fail),
            Method::InPlace => sync::sync_tree(tree_dir, &paths.run, &SyncOptions::default())
                .map(|_| ())
                .map_err(|e| fail(e.into())),
        }
    }

    /// `cutover: overlap`, after the snapshot: run/ is switched and the deploy commands run
    /// while the live release serves (they must suit both releases), then the new release's
    /// processes start beside the live ones on fresh ports, the front door moves to them once
    /// they are up, and the check runs; only then does the live release stop (its
    /// `services.stop`, its processes finishing what they serve) and the new one's
    /// `services.start` run. The live release's processes keep their working directory, the
    /// old tree, which the exchange moves to `.run-next/`.
    fn cut_over_beside(&mut self, tree_dir: &Path, method: Method) -> Result<(), Failure> {
        let fail = |e: Error| Failure::new(Stage::Deploy, e);
        let paths = self.paths().clone();
        let migrates = !self.recipe.commands(self.mode, Stage::Deploy).is_empty()
            || self.release_command.is_some();
        if let Some(journal) = &mut self.journal {
            journal.cutover = Cutover::Overlap;
        }
        self.record(Phase::Switching).map_err(fail)?;
        self.switch_run(tree_dir, method)?;
        crate::failpoint("after-switch");
        if let Some(journal) = &mut self.journal {
            journal.migrated = migrates;
        }
        self.record(Phase::Migrating).map_err(fail)?;
        self.out.note(&format!(
            "switched run/ to {} ({}); the processes of {} keep serving",
            self.release,
            method.as_str(),
            self.live.as_deref().unwrap_or("the live release")
        ));
        self.commands(Stage::Deploy, &paths.run)?;
        self.release_phase(&paths.run)?;
        crate::failpoint("after-deploy-commands");
        self.record(Phase::Switched).map_err(fail)?;
        self.start_processes(Cutover::Overlap)?;
        self.install_front_door()?;
        self.check(&paths.run)?;

        // The cutover: from here an undo starts the live release again.
        if let Some(journal) = &mut self.journal {
            journal.live_stopped = true;
        }
        self.record(Phase::Switched).map_err(fail)?;
        crate::failpoint("before-drain");
        let t = Instant::now();
        self.stop_live(&paths.run)?;
        let drained = self.supervisor.finish_overlap(&paths.name).map_err(fail)?;
        if let Some(old) = drained {
            self.out.note(&format!(
                "stopped the processes of {} (they finished what they served) in {}",
                old.release,
                seconds(t.elapsed())
            ));
        }
        if let Some(start) = self.recipe.services.start.clone() {
            self.shell(Stage::Deploy, &start, &paths.run)?;
        }
        // duration_ms: how long no release served: none, with an overlap.
        self.out
            .event(json!({"event": "switched", "stage": Stage::Deploy.as_str(),
            "method": method.as_str(), "cutover": Cutover::Overlap.as_str(),
            "duration_ms": 0}));
        Ok(())
    }

    /// The commit of the release that was live before this run.
    fn live_commit(&self) -> Option<Oid> {
        self.live
            .as_ref()
            .and_then(|id| self.log.get(id))
            .and_then(|record| Oid::from_str(&record.commit).ok())
    }

    /// Manual edits in run/ are saved under archives/<release>/drift and reported, or refused.
    /// What the live release's `.gitignore`s and `drift_ignore` leave out is neither.
    fn save_drift(&mut self) -> Result<(), Error> {
        let paths = self.paths().clone();
        let live_tree = self.live.as_ref().map(|r| paths.release_dir(r));
        let ignore = backup::live_ignore(self.repo, self.live_commit())?;
        let drift = backup::find_drift(&paths.run, live_tree.as_deref(), &ignore)?;
        if drift.is_empty() {
            return Ok(());
        }
        let listed = drift.paths();
        if self.recipe.drift == Drift::Refuse {
            return Err(Error::DriftRefused { files: listed });
        }
        let dest = self.archive.join("drift");
        backup::save_drift(&paths.run, &drift, &dest)?;
        self.out.note(&format!(
            "manual edits found in run/ were saved under {}:",
            dest.display()
        ));
        for line in &listed {
            self.out.note(&format!("  {line}"));
        }
        self.out
            .event(json!({"event": "drift", "stage": Stage::Deploy.as_str(),
            "changes": listed, "saved": dest}));
        Ok(())
    }

    /// The commit point: the release log says the release is good and live.
    fn commit_release(&mut self) -> Result<(), Error> {
        let paths = self.paths().clone();
        crate::failpoint("before-commit");
        let previous = self.log.current.clone();
        let now = Utc::now();
        let is_rollback = self.journal.as_ref().map(|j| j.action.as_str()) == Some("rollback");
        let stages = self.out.stage_durations();
        if let Some(record) = self.log.get_mut(&self.release) {
            record.status = Status::Good;
            // A rollback's record is the target's own deploy: its end and stages stay, so
            // that `kiln releases` still shows how long that deploy took.
            if !is_rollback || record.finished.is_none() {
                record.finished = Some(now);
            }
            if !is_rollback {
                record.stages = stages;
            }
        }
        if let Some(record) = previous
            .filter(|p| is_rollback && *p != self.release)
            .and_then(|p| self.log.get_mut(&p))
        {
            record.status = Status::RolledBack;
        }
        // The snapshot this run took is data/ as it was when the release it replaces was live.
        let snapshot = self
            .archive
            .join("data")
            .is_dir()
            .then(|| self.archive.strip_prefix(&paths.archives).ok())
            .flatten()
            .map(|name| name.display().to_string());
        self.log.went_live(&self.release, now, snapshot);
        self.log.save(&paths.release_log())?;
        crate::failpoint("after-commit");
        // Past the commit point nothing may fail the deploy (it is live and logged good): what
        // follows is tidying, and a failure is a warning. A journal left behind is harmless:
        // recovery sees the release live and only removes it.
        self.journal = None;
        // It runs: a `kiln stop` before it is over.
        let mut tidy = vec![
            Journal::remove(&paths.journal()),
            Stopped::clear(&paths.state),
        ];
        if self.mode != Mode::Editable {
            tidy.push(crate::fs::durable::replace_symlink(
                Path::new(&self.release),
                &paths.deploy.join("current"),
            ));
        }
        for e in tidy.into_iter().filter_map(Result::err) {
            self.out
                .note(&format!("warning: {}", crate::error::chain(&e)));
        }
        let log = self.log.clone();
        self.prune(&log);
        // The next deploy rewrites the index.
        if self.mode != Mode::Editable
            && let Err(e) = crate::release::publish::write_index(&paths, &self.log, self.mode)
        {
            self.out.note(&format!(
                "warning: could not update releases/index.json: {}",
                crate::error::chain(&e)
            ));
        }
        self.publish();
        Ok(())
    }

    /// Staging with project.yml `publish`: uploads the new release to the store. The release
    /// is live and good already, so a failure is a warning (and `kiln status` shows it), not
    /// a failed deploy; `kiln release publish` uploads what is missing later.
    fn publish(&mut self) {
        let Some(url) = self.project.config.publish.clone() else {
            return;
        };
        if self.mode != Mode::Cooking {
            return;
        }
        let started = Instant::now();
        let paths = self.paths().clone();
        match crate::release::publish::publish_to(
            &self.node.config.s3,
            &paths,
            &self.log,
            self.mode,
            &url,
        ) {
            Ok(done) => self.out.note(&format!(
                "published {} to {url} in {}",
                match done.uploaded.as_slice() {
                    [] => "nothing new".to_string(),
                    ids => ids.join(", "),
                },
                seconds(started.elapsed())
            )),
            Err(e) => self.out.note(&format!(
                "warning: could not publish to {url}: {}; the release is live; retry with `kiln release publish {}`",
                crate::error::chain(&e),
                paths.name
            )),
        }
    }

    /// Removes what releases beyond `keep` left behind (after a good deploy, and after a
    /// failed one too: repeated failures must not fill the disk).
    fn prune(&mut self, log: &ReleaseLog) {
        let paths = self.paths().clone();
        let pruned = prune(&paths, log, self.recipe.keep as usize);
        if self.mode == Mode::Final {
            crate::release::fetch::prune_pulled(&paths, log, &pruned);
        }
        let orphans = if self.mode == Mode::Cooking {
            prune_orphans(&paths, log)
        } else {
            0
        };
        if !pruned.is_empty() {
            self.out
                .note(&format!("pruned {} old release(s)", pruned.len()));
        }
        if orphans > 0 {
            self.out.note(&format!(
                "removed {orphans} file(s) of releases/ that no release in the log names"
            ));
        }
    }

    /// Undoes the failed deploy and builds the error for the final line; `retry` (how to try
    /// again) ends that line when the undo worked.
    fn fail(&mut self, failure: Failure, retry: Option<&str>) -> Error {
        let paths = self.paths().clone();
        self.out.stage_failed();
        let undo_started = Instant::now();
        // The baker reads the release tree that the rollback is about to move away.
        if let Some(baking) = self.baking.take() {
            let _ = baking.join();
        }
        self.out
            .event(json!({"event": "failure", "stage": failure.stage.as_str(),
            "command": failure.command, "exit_code": failure.exit_code, "outcome": "failed",
            "reason": failure.reason}));
        // The stages it got through stay in the release log with the failure that the undo
        // records there (a rollback's record is the target's own deploy: left alone).
        // Read from disk, not self.log: that may hold a commit point that was never written.
        if self.log_name == self.release {
            let stages = self.out.stage_durations();
            let saved = ReleaseLog::load(&paths.release_log()).and_then(|mut log| {
                if let Some(record) = log.get_mut(&self.release) {
                    record.stages = stages;
                }
                log.save(&paths.release_log())
            });
            if let Err(e) = saved {
                self.out
                    .note(&format!("warning: {}", crate::error::chain(&e)));
            }
        }
        let outcome = match self.journal.take() {
            Some(journal) => {
                let undone =
                    rollback::undo(self.node, self.project, &journal, &failure.reason, self.out);
                if undone.is_ok() && self.front_door_installed {
                    rollback::restore_front_door(self.node, self.project, self.out);
                }
                if undone.is_ok() {
                    match ReleaseLog::load(&paths.release_log()) {
                        Ok(log) => self.prune(&log),
                        Err(e) => self
                            .out
                            .note(&format!("warning: {}", crate::error::chain(&e))),
                    }
                }
                undone
            }
            None => {
                // Editable mode: nothing was switched; the tree stays as pushed.
                rollback::mark_failed(&paths, &self.release, &failure.reason)
                    .map(|_| String::from("the tree is left as pushed"))
            }
        };
        self.out.timed("rollback", undo_started.elapsed());
        match outcome {
            Ok(outcome) => {
                let error = Error::DeployFailed {
                    stage: failure.stage.as_str().into(),
                    reason: failure.brief,
                    outcome: match retry {
                        Some(retry) => format!("{outcome}; {retry}"),
                        None => outcome,
                    },
                };
                self.out.headline(&error.to_string());
                error
            }
            Err(e) => {
                let error = Error::RollbackFailed {
                    reason: format!(
                        "deploy of {} failed at {} ({}), then undoing it failed: {}",
                        self.release,
                        failure.stage.as_str(),
                        failure.brief,
                        crate::error::chain(&e)
                    ),
                    hint: rollback::recovery_hint(&paths),
                };
                self.out.headline(&error.to_string());
                error
            }
        }
    }
}

/// Leftovers of releases beyond `keep` (deploy dirs, tarballs, archives) go; see
/// [`ReleaseLog::prunable`] for what is always kept.
pub fn prune(
    paths: &crate::config::layout::ProjectPaths,
    log: &ReleaseLog,
    keep: usize,
) -> Vec<String> {
    let prunable = log.prunable(keep);
    for id in &prunable {
        let _ = fs::remove_dir_all(paths.release_dir(id));
        let _ = fs::remove_file(paths.tarball(id));
        let _ = fs::remove_file(paths.manifest(id));
        let _ = fs::remove_file(paths.releases.join(format!("{id}.json.sig")));
        let _ = fs::remove_dir_all(paths.archive_dir(id));
    }
    // What rollbacks to a pruned release kept (`<id>-rollback-<rollback id>`) goes with it.
    if let Ok(entries) = fs::read_dir(&paths.archives) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some((id, _)) = name.split_once("-rollback-")
                && prunable.iter().any(|p| p == id)
            {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    // Its logs (and its rollbacks'): `<id>.log`, `.jsonl`, `.notify.json`.
    if let Ok(entries) = fs::read_dir(&paths.logs) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stem = [".log", ".jsonl", ".notify.json"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix));
            let id = stem.map(|stem| stem.split_once("-rollback-").map_or(stem, |(id, _)| id));
            if id.is_some_and(|id| prunable.iter().any(|p| p == id)) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    prunable
}

/// Cooking mode: tarballs, manifests and signatures in releases/ that no release in the log
/// names (left by deploys that never got a record, or by hand) go. Other files stay, and so
/// does all of a final-mode releases/, which holds staging's ids and imported releases.
pub fn prune_orphans(paths: &crate::config::layout::ProjectPaths, log: &ReleaseLog) -> usize {
    let Ok(entries) = fs::read_dir(&paths.releases) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let orphan = [".tar.zst", ".json.sig", ".json"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .is_some_and(|id| release::valid_id(id) && log.get(id).is_none());
        if orphan && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

fn wipe_dir(dir: &Path) -> Result<(), Error> {
    if fs::symlink_metadata(dir).is_ok() {
        fs::remove_dir_all(dir).map_err(|e| io_error("wipe", dir, e))?;
    }
    fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))
}

/// run/ must be a directory in cooking and final mode (editable mode leaves a symlink).
fn ensure_run_dir(run: &Path) -> Result<(), Error> {
    match fs::symlink_metadata(run) {
        Ok(meta) if meta.file_type().is_symlink() => {
            fs::remove_file(run).map_err(|e| io_error("remove", run, e))?;
            fs::create_dir(run).map_err(|e| io_error("create", run, e))
        }
        Ok(_) => Ok(()),
        Err(_) => fs::create_dir(run).map_err(|e| io_error("create", run, e)),
    }
}

/// Which release `kiln rollback` takes live.
#[derive(Debug, Clone, Copy)]
pub enum RollbackTarget<'a> {
    /// The release that was live before the current one (plain `kiln rollback`).
    Previous,
    /// This release, good or rolled back.
    Named(&'a str),
    /// The release that was live just before this one went live (`--to-before`), if this one
    /// is still live; otherwise nothing of it is left to undo and nothing changes.
    Before(&'a str),
}

pub struct RollbackRequest<'a> {
    pub target: RollbackTarget<'a>,
    /// Also put data/ back as it was when the target was last live.
    pub with_data: bool,
    /// Who asked, for the release log's notification.
    pub who: String,
    pub who_key: Option<String>,
}

/// What a rollback did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolledBack {
    /// This release is live now.
    To(String),
    /// Nothing to do (`--to-before` a release that is not live); `live` is what runs.
    Unchanged { live: Option<String>, why: String },
}

/// `kiln rollback`: takes the release that was live before the current one (or the one the
/// request names) live again through the same journaled switch as a deploy. `with_data` also
/// puts data/ back as it was when that release was last live (the snapshot taken when it was
/// last replaced).
pub fn rollback_to(
    node: &Node,
    project: &Project,
    request: &RollbackRequest,
    out: &mut Reporter,
) -> Result<RolledBack, Error> {
    let started = Instant::now();
    let paths = &project.paths;
    let with_data = request.with_data;
    if project.config.mode == Mode::Editable {
        return Err(Error::Usage(
            "editable mode has no releases to roll back to: push the commit you want".into(),
        ));
    }
    let lock = lock(project, "rollback", out)?;
    rollback::recover(node, project, out)?;
    refuse_while_held(node, project)?;
    let log = ReleaseLog::load(&paths.release_log())?;
    let named = |id: &str| -> Result<&Record, Error> {
        let record = log.get(id).ok_or_else(|| Error::UnknownRelease {
            project: paths.name.clone(),
            release: id.to_string(),
        })?;
        if !matches!(record.status, Status::Good | Status::RolledBack) {
            return Err(Error::NotGoodRelease {
                release: id.to_string(),
                status: match record.status {
                    Status::Running => "has not finished deploying",
                    _ => "failed",
                },
            });
        }
        Ok(record)
    };
    let target = match request.target {
        RollbackTarget::Named(id) => named(id)?,
        RollbackTarget::Previous => {
            log.previous_live()
                .ok_or_else(|| Error::NothingToRollBack {
                    project: paths.name.clone(),
                })?
        }
        RollbackTarget::Before(id) => {
            let record = log.get(id).ok_or_else(|| Error::UnknownRelease {
                project: paths.name.clone(),
                release: id.to_string(),
            })?;
            if log.current.as_deref() != Some(id) {
                let live = log.current.clone();
                let why = match record.status {
                    Status::Failed | Status::Running => format!(
                        "release {id} failed and never went live: nothing of it to undo"
                    ),
                    Status::Good | Status::RolledBack => format!(
                        "release {id} is not live any more: nothing of it to undo"
                    ),
                };
                let why = match &live {
                    Some(live) => format!("{why}; {live} is live"),
                    None => format!("{why}; nothing is live"),
                };
                out.timeline_mut().previous = live.clone();
                out.headline(&why);
                return Ok(RolledBack::Unchanged { live, why });
            }
            let before = log.live_before(id).ok_or_else(|| Error::Refused {
                message: format!(
                    "nothing was live before release {id} went live: there is no release to roll back to"
                ),
            })?;
            named(&before.id)?
        }
    }
    .clone();
    out.timeline_mut().release = Some(target.id.clone());
    out.timeline_mut().previous = log.current.clone();
    let tree = paths.release_dir(&target.id);
    if !tree.is_dir() {
        return Err(Error::Refused {
            message: format!(
                "the tree of release {} is gone from {}: it was pruned",
                target.id,
                paths.deploy.display()
            ),
        });
    }
    let data_from = if with_data {
        let snapshot = log
            .snapshot_when_replaced(&target.id)
            .map(|archive| paths.archives.join(archive).join("data"))
            .filter(|d| d.is_dir());
        Some(snapshot.ok_or_else(|| Error::Refused {
            message: format!(
                "no data snapshot of the time {} was live is kept: roll back without `--with-data`",
                target.id
            ),
        })?)
    } else {
        None
    };
    lock.set_holder("rollback", Some(&target.id))?;
    let repo = git::open_bare(&paths.project_repo)?;
    let commit = Oid::from_str(&target.commit).map_err(|_| Error::UnknownRev {
        rev: target.commit.clone(),
        repo: paths.project_repo.clone(),
    })?;
    let recipe = read_recipe(&repo, commit)?;
    // The release runs again with the settings it ran with: its pillar commit.
    let pillar_before = Pillar::current(paths)?.rev;
    let pillar_target = target
        .pillar_rev
        .as_deref()
        .and_then(|rev| Oid::from_str(rev).ok());
    if let Some(oid) = pillar_target.filter(|oid| Some(oid.to_string()) != pillar_before) {
        crate::config::pillar::checkout(paths, oid)?;
        out.headline(&format!(
            "pillar/ back at {}, as {} ran with",
            git::short(oid),
            target.id
        ));
    }
    let pillar = Pillar::current(paths)?;
    let settings = Settings::gather(node, project, &recipe, &pillar, &target.id, commit)?;
    // Its archive and its log in logs/ share one name, `<target>-rollback-<id>`.
    let log_name = format!("{}-rollback-{}", target.id, release::new_id(Utc::now()));
    let archive = paths.archive_dir(&log_name);
    fs::create_dir_all(&archive).map_err(|e| io_error("create", &archive, e))?;
    out.open_logs(&paths.log_file(&log_name), &paths.events_file(&log_name))?;
    out.set_context(&paths.name, &target.id);
    out.headline(&format!(
        "rolling back {} to {} ({})",
        paths.name,
        target.id,
        &target.commit[..7]
    ));
    out.event(json!({"event": "rollback_start", "commit": target.commit,
        "from": log.current, "with_data": with_data, "who": request.who,
        "who_key": request.who_key, "log": log_name}));
    out.note(&format!("log: `kiln logs {} {log_name}`", paths.name));
    let mut run = Run::new(
        RunSetup {
            node,
            project,
            repo: &repo,
            recipe: &recipe,
            release: target.id.clone(),
            commit,
            log,
            pillar_rev: pillar.rev.clone(),
            settings: &settings,
            reuse: None,
            archive,
            log_name,
        },
        out,
    );
    let outcome = run
        .begin_journal("rollback")
        .map_err(|e| Failure::new(Stage::Deploy, e))
        .and_then(|()| run.go_live_with(&tree, data_from.as_deref()))
        .and_then(|()| {
            run.commit_release()
                .map_err(|e| Failure::new(Stage::PostDeploy, e))
        });
    let short = &target.commit[..7];
    match outcome {
        Ok(()) => {
            let headline = format!("rolled back to {}", target.id);
            run.out.headline(&headline);
            run.finish(Ended {
                event: NotifyEvent::Rollback,
                outcome: Outcome::RolledBack,
                summary: format!("rolled back to {} ({short})", target.id),
                headline,
                who: &request.who,
                who_key: request.who_key.as_deref(),
                duration: started.elapsed(),
                failure: None,
            });
            Ok(RolledBack::To(target.id))
        }
        Err(failure) => {
            let info = failure_info(&failure);
            let error = run.fail(failure, None);
            let outcome = match &error {
                Error::DeployFailed { .. } => Outcome::Failed,
                _ => Outcome::RollbackFailed,
            };
            run.finish(Ended {
                event: NotifyEvent::Rollback,
                outcome,
                summary: format!(
                    "rollback to {} ({short}) FAILED at {}{}",
                    target.id,
                    info.stage,
                    if outcome == Outcome::Failed {
                        ", put back as it was"
                    } else {
                        ", and undoing it FAILED: an operator must look"
                    }
                ),
                headline: error.to_string(),
                who: &request.who,
                who_key: request.who_key.as_deref(),
                duration: started.elapsed(),
                failure: Some(info),
            });
            if let Some(Ok(oid)) = pillar_before.as_deref().map(Oid::from_str) {
                crate::config::pillar::checkout(paths, oid)?;
            }
            Err(error)
        }
    }
}
