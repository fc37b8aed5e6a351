//! What operators do with a project's running processes: `kiln ps scale`, `kiln restart`,
//! `kiln run` (a one-off in run/ with the live release's environment), `kiln stop` and
//! `kiln start` (a project stopped on purpose stays stopped), `kiln supervise --stop` (every
//! project, for machine maintenance) and `kiln boot` (at machine start: finish interrupted
//! deploys, then bring every project's processes back).
//! Each takes the project's lock and finishes an interrupted deploy first, like a deploy, so
//! that it never acts on a half-switched node.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use crate::config::pillar::Pillar;
use crate::config::project::{Node, Project};
use crate::config::recipe::{Cutover, Recipe, Stage};
use crate::deploy::pipeline::{Settings, read_recipe};
use crate::deploy::rollback;
use crate::error::Error;
use crate::exec::redact::Redactor;
use crate::exec::report::Reporter;
use crate::exec::stage::CommandSpec;
use crate::fs::git;
use crate::proxy::front_door::{Applied, FrontDoor, live_site};
use crate::runtime::formation::{self, Formation, InstanceName, RUN_SCRIPT, Scale};
use crate::runtime::procfile::ProcessTypes;
use crate::runtime::readiness::{self, Readiness};
use crate::runtime::stopped::Stopped;
use crate::runtime::supervisor::watch::Commands;
use crate::runtime::supervisor::{Backend, Sockets, Supervisor};
use crate::transaction::lock::lock;
use crate::transaction::release_log::ReleaseLog;

pub fn supervisor(node: &Node) -> Supervisor {
    Supervisor::new(&node.root, &node.config.supervisor)
}

/// What the supervisor's web check learns about kiln's commands on a project (it sits below
/// the lock and the journal, so it is told): the project's lock and journal.
pub struct NodeCommands {
    node: Node,
}

impl NodeCommands {
    pub fn shared(node: Node) -> std::sync::Arc<dyn Commands> {
        std::sync::Arc::new(NodeCommands { node })
    }
}

impl Commands for NodeCommands {
    fn busy(&self, project: &str) -> bool {
        match self.node.paths(project) {
            Ok(paths) => crate::transaction::lock::busy(&paths.state) || paths.journal().exists(),
            Err(_) => true,
        }
    }

    fn released(&self, project: &str) -> Option<std::time::SystemTime> {
        crate::transaction::lock::released(&self.node.paths(project).ok()?.state)
    }
}

/// `kiln ps scale <name> TYPE=N...`: records the counts node-side (kept across deploys) and
/// applies them to the running formation: only the instances that change start or stop.
/// Returns what was done, for the operator.
pub fn scale(
    node: &Node,
    project: &Project,
    args: &[String],
    out: &mut Reporter,
) -> Result<String, Error> {
    let counts = formation::parse_scale_args(args).map_err(Error::Usage)?;
    let _lock = lock(project, "scale", out)?;
    rollback::recover(node, project, out)?;
    let paths = &project.paths;
    let supervisor = supervisor(node);
    let running = supervisor.running(&paths.name)?;
    // The types to check the names against: the running formation's, else the live tree's.
    let types: Vec<String> = match &running {
        Some(formation) => formation.types.keys().cloned().collect(),
        None => ProcessTypes::of_tree(&paths.run)
            .map(|t| t.types.into_keys().collect())
            .unwrap_or_default(),
    };
    if !types.is_empty()
        && let Some(unknown) = counts.keys().find(|k| !types.contains(k))
    {
        return Err(Error::Usage(format!(
            "`{unknown}` is not a process type of `{}` (it has {})",
            paths.name,
            types
                .iter()
                .map(|t| format!("`{t}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut scale = Scale::load(&paths.state)?;
    scale.0.extend(counts.clone());
    scale.save(&paths.state)?;
    let listed = counts
        .iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect::<Vec<_>>()
        .join(" ");
    let Some(mut formation) = running else {
        return Ok(match Stopped::load(&paths.state) {
            Some(_) => format!(
                "recorded {listed} for `{}`, which is stopped: `kiln start {}` runs it",
                paths.name, paths.name
            ),
            None => format!(
                "recorded {listed} for `{}`; the next deploy runs it",
                paths.name
            ),
        });
    };
    let before = formation.instance_names();
    for (kind, count) in &counts {
        if let Some(process) = formation.types.get_mut(kind) {
            process.count = *count;
        }
    }
    let formation = supervisor.start(formation)?;
    let added: Vec<InstanceName> = formation
        .instance_names()
        .into_iter()
        .filter(|name| !before.contains(name))
        .collect();
    if !added.is_empty() {
        wait_up(
            &supervisor,
            &formation,
            &live_recipe(project)?,
            Some(&added),
        )?;
    }
    // The front door's upstreams are the web instances: a scale of `web` changes them.
    let mut said = format!("scaled `{}` to {listed}", paths.name);
    if counts.contains_key(crate::config::processes::WEB)
        && let Some(note) = update_front_door(node, project, None)?
    {
        said.push_str("; ");
        said.push_str(&note);
    }
    Ok(said)
}

/// Installs the live site (its upstreams: the web instances that run now) and says what
/// happened, if anything did. `drain`: how long nginx's old workers get to finish.
fn update_front_door(
    node: &Node,
    project: &Project,
    drain: Option<Duration>,
) -> Result<Option<String>, Error> {
    let Some(front) = FrontDoor::of(node) else {
        return Ok(None);
    };
    let site = live_site(node, project)?;
    let applied = match drain {
        Some(drain) => front.install_draining(&site, drain)?,
        None => front.install(&site)?,
    };
    Ok(match applied {
        Applied::Reloaded => Some("the front door was reloaded".into()),
        Applied::NotRunning => Some(
            "the front door's configuration was written (the node-private nginx is not running)"
                .into(),
        ),
        Applied::Unchanged => None,
    })
}

/// Waits (holding the project's lock, so that the web check waits too) until the instances a
/// command started are up, as a deploy waits: still running after their first seconds, web
/// ports accepting and, without a kiln.yml `check.command`, GET / answering below 500, within
/// the live kiln.yml's `check.timeout`.
fn wait_up(
    supervisor: &Supervisor,
    formation: &Formation,
    recipe: &Recipe,
    only: Option<&[InstanceName]>,
) -> Result<(), Error> {
    let readiness = Readiness {
        formation,
        timeout: recipe
            .check
            .as_ref()
            .map_or(crate::deploy::pipeline::DEFAULT_CHECK_TIMEOUT, |c| {
                c.timeout
            }),
        http_check: formation.check_command.is_none(),
        startup: readiness::STARTUP,
        only,
    };
    readiness::wait_up(supervisor, &readiness, &mut |_| {})
        .map(drop)
        .map_err(|e| Error::NotUp {
            project: formation.project.clone(),
            reason: e.to_string(),
        })
}

/// `kiln restart <name> [TYPE]`. Every process of a release whose kiln.yml says `cutover:
/// overlap` restarts as a deploy would cut over: new instances beside the running ones on
/// fresh ports, up and answering, the front door moved to them, then the old ones stopped.
/// Otherwise (and for one process type) each instance stops and starts again, its listening
/// socket held meanwhile when the release uses socket activation.
pub fn restart(
    node: &Node,
    project: &Project,
    kind: Option<&str>,
    out: &mut Reporter,
) -> Result<String, Error> {
    let _lock = lock(project, "restart", out)?;
    rollback::recover(node, project, out)?;
    let supervisor = supervisor(node);
    let name = &project.paths.name;
    let Some(formation) = supervisor.running(name)? else {
        return Err(Error::Usage(match Stopped::load(&project.paths.state) {
            Some(mark) => format!(
                "`{name}` is stopped ({}): `kiln start {name}` starts it",
                mark.describe()
            ),
            None => format!(
                "`{name}` runs no supervised processes: deploy a release with a Procfile first"
            ),
        }));
    };
    let recipe = live_recipe(project)?;
    let overlap = kind.is_none()
        && recipe.cutover == Cutover::Overlap
        && supervisor.backend == Backend::Kiln
        && !formation.is_idle();
    if !overlap {
        supervisor.restart(name, kind)?;
        let restarted: Option<Vec<InstanceName>> = kind.map(|kind| {
            formation
                .instance_names()
                .into_iter()
                .filter(|name| name.kind == kind)
                .collect()
        });
        wait_up(&supervisor, &formation, &recipe, restarted.as_deref())?;
        return Ok(match kind {
            Some(kind) => format!("restarted the `{kind}` processes of `{name}`"),
            None => format!("restarted the processes of `{name}`"),
        });
    }
    let started = supervisor.start_beside(formation)?;
    let (timeout, http_check) = match &recipe.check {
        Some(check) => (check.timeout, check.command.is_none()),
        None => (crate::deploy::pipeline::DEFAULT_CHECK_TIMEOUT, true),
    };
    let readiness = Readiness {
        formation: &started,
        timeout,
        http_check: http_check && !started.web_instances().is_empty(),
        startup: crate::runtime::readiness::STARTUP,
        only: None,
    };
    let mut tail = Vec::new();
    let up = crate::runtime::readiness::wait_up(&supervisor, &readiness, &mut |line| {
        tail.push(line.to_string());
    });
    let moved = up
        .map_err(Error::from)
        .and_then(|_| update_front_door(node, project, Some(recipe.stop_grace)));
    if let Err(e) = moved {
        // The running instances never stopped: take the new ones away again.
        for line in &tail {
            out.note(&format!("  {line}"));
        }
        supervisor.cancel_overlap(name)?;
        update_front_door(node, project, None)?;
        return Err(e);
    }
    supervisor.finish_overlap(name)?;
    Ok(format!(
        "restarted the processes of `{name}` beside the running ones (cutover: overlap): {}",
        started
            .ports
            .iter()
            .map(|(instance, port)| format!("{instance} on port {port}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// The kiln.yml of the live release (the default recipe when nothing is live).
fn live_recipe(project: &Project) -> Result<Recipe, Error> {
    let paths = &project.paths;
    let log = ReleaseLog::load(&paths.release_log())?;
    let Some(record) = log.current.as_ref().and_then(|id| log.get(id)) else {
        return Ok(Recipe::default());
    };
    let repo = git::open_bare(&paths.project_repo)?;
    let commit = git2::Oid::from_str(&record.commit).map_err(crate::error::git_error(format!(
        "read commit {}",
        record.commit
    )))?;
    read_recipe(&repo, commit)
}

/// The live release as the commands between deploys need it: its kiln.yml and its merged
/// settings (from the pillar checked out now). Its `$KILN_COMMON` file exists as long as
/// this does.
struct Live {
    release: String,
    recipe: Recipe,
    settings: Settings,
}

impl Live {
    /// `doing`: what needs a live release, for the error (`run a command in`).
    fn open(node: &Node, project: &Project, doing: &str) -> Result<Live, Error> {
        let paths = &project.paths;
        let log = ReleaseLog::load(&paths.release_log())?;
        let record = log
            .current
            .as_ref()
            .and_then(|id| log.get(id))
            .ok_or_else(|| {
                Error::Usage(format!(
                    "`{}` has no live release to {doing}: deploy first",
                    paths.name
                ))
            })?;
        let repo = git::open_bare(&paths.project_repo)?;
        let commit = git2::Oid::from_str(&record.commit).map_err(crate::error::git_error(
            format!("read commit {}", record.commit),
        ))?;
        let recipe = read_recipe(&repo, commit)?;
        let pillar = Pillar::current(paths)?;
        let settings = Settings::gather(node, project, &recipe, &pillar, &record.id, commit)?;
        Ok(Live {
            release: record.id.clone(),
            recipe,
            settings,
        })
    }

    /// Runs the live release's `services.stop` or `services.start` (`which`), as a deploy
    /// runs it: `sh -c` in run/, the deploy stage's environment and timeout, output masked.
    fn service(
        &self,
        node: &Node,
        project: &Project,
        which: &'static str,
        out: &mut Reporter,
    ) -> Result<(), Error> {
        let services = &self.recipe.services;
        let command = match which {
            "stop" => services.stop.as_deref(),
            _ => services.start.as_deref(),
        };
        let Some(command) = command else {
            return Ok(());
        };
        let mut env = self.settings.env.clone();
        env.insert("KILN_STAGE".into(), Stage::Deploy.as_str().into());
        let label = format!("services.{which}");
        out.set_redactor(Redactor::new(self.settings.secrets()));
        let spec = CommandSpec {
            stage: &label,
            command,
            cwd: &project.paths.run,
            env: &env,
            timeout: self
                .recipe
                .timeout(Stage::Deploy, node.config.limits.stage_timeout),
            profile: false,
        };
        let redactor = Redactor::new(self.settings.secrets());
        out.run(&spec, &redactor)
            .map(drop)
            .map_err(|e| Error::Services {
                project: project.paths.name.clone(),
                which,
                reason: e.to_string(),
            })
    }
}

/// The environment of `kiln run`: the live release's, as its processes get it (from the
/// pillar checked out now), with `KILN_PROCESS=run`; no `PORT` (a one-off serves nothing).
fn run_env(node: &Node, project: &Project) -> Result<BTreeMap<String, String>, Error> {
    // Dropped at once: its `$KILN_COMMON` file exists only during a deploy.
    let live = Live::open(node, project, "run a command in")?;
    let mut env = formation::process_env(&live.settings.env);
    env.remove("PORT");
    env.insert("KILN_PROCESS".into(), "run".into());
    env.insert("DYNO".into(), "run.1".into());
    Ok(env)
}

/// `kiln run <name> -- COMMAND...`: replaces kiln with the command, in run/, after the
/// release's `.profile.d`: stdin, stdout and the terminal are the operator's, and its exit
/// status is kiln's. Returns only if it could not be started.
pub fn run(node: &Node, project: &Project, command: &[String]) -> Result<(), Error> {
    let env = {
        let mut out = Reporter::to_stdout();
        let _lock = lock(project, "run", &mut out)?;
        rollback::recover(node, project, &mut out)?;
        run_env(node, project)?
    };
    let error = Command::new("/bin/sh")
        .arg("-c")
        .arg(RUN_SCRIPT)
        .arg("kiln-run")
        .args(command)
        .env_clear()
        .envs(&env)
        .current_dir(&project.paths.run)
        .exec();
    Err(crate::error::io_error("run", &project.paths.run, error))
}

/// `kiln stop <name>`: stops every supervised process of the project and runs its live
/// release's `services.stop`, and marks it stopped (`runtime::stopped`): it stays stopped
/// across `kiln boot` until `kiln start` or a deploy. Running it again stops again whatever
/// is left (a `services.stop` that failed the first time runs again).
pub fn stop(
    node: &Node,
    project: &Project,
    who: &str,
    out: &mut Reporter,
) -> Result<String, Error> {
    let _lock = lock(project, "stop", out)?;
    rollback::recover(node, project, out)?;
    let paths = &project.paths;
    let live = Live::open(node, project, "stop")?;
    let already = Stopped::load(&paths.state);
    // First the mark: from here nothing starts the project by itself, whatever fails next.
    already
        .clone()
        .unwrap_or_else(|| Stopped {
            by: who.to_string(),
            at: chrono::Utc::now(),
        })
        .save(&paths.state)?;
    let supervisor = supervisor(node);
    let formation = supervisor.state(&paths.name)?.map(|s| s.formation);
    supervisor.stop(&paths.name, Sockets::Close)?;
    live.service(node, project, "stop", out)?;
    let processes = formation
        .map(|f| f.instance_list())
        .filter(|names| !names.is_empty())
        .map(|names| format!(": {names}"))
        .unwrap_or_default();
    Ok(match already {
        Some(mark) => format!(
            "`{}` was stopped already ({}); stopped again whatever was left of release {}{processes}; `kiln start {}` starts it",
            paths.name,
            mark.describe(),
            live.release,
            paths.name
        ),
        None => format!(
            "stopped `{}` (release {}{processes}); it stays stopped across `kiln boot` until `kiln start {}` or a deploy",
            paths.name, live.release, paths.name
        ),
    })
}

/// `kiln start <name>`: the opposite of `kiln stop`: the live release's `services.start`,
/// then its processes as they last ran (with the counts `kiln ps scale` set since), waiting
/// until they are up.
pub fn start(node: &Node, project: &Project, out: &mut Reporter) -> Result<String, Error> {
    let _lock = lock(project, "start", out)?;
    rollback::recover(node, project, out)?;
    let paths = &project.paths;
    let live = Live::open(node, project, "start")?;
    let supervisor = supervisor(node);
    if let Some(held) = supervisor.held() {
        return Err(crate::runtime::supervisor::SupervisorError::Held {
            held: held.describe(),
        }
        .into());
    }
    let stopped = Stopped::load(&paths.state);
    let state = supervisor.state(&paths.name)?;
    if stopped.is_none() && state.as_ref().is_none_or(|s| s.running) {
        return Ok(format!(
            "`{}` is not stopped: nothing to start (`kiln restart {}` restarts its processes)",
            paths.name, paths.name
        ));
    }
    if stopped.is_some() {
        live.service(node, project, "start", out)?;
    }
    let mut started = Vec::new();
    if let Some(state) = state {
        let mut formation = state.formation;
        for (kind, count) in Scale::load(&paths.state)?.0 {
            if let Some(process) = formation.types.get_mut(&kind) {
                process.count = count;
            }
        }
        let formation = supervisor.start(formation)?;
        Stopped::clear(&paths.state)?;
        started = formation.instance_names();
        wait_up(&supervisor, &formation, &live.recipe, None)?;
    }
    Stopped::clear(&paths.state)?;
    let listed: Vec<String> = started.iter().map(ToString::to_string).collect();
    Ok(format!(
        "started `{}` (release {}{})",
        paths.name,
        live.release,
        if listed.is_empty() {
            String::new()
        } else {
            format!(": {}", listed.join(", "))
        }
    ))
}

/// `kiln supervise --stop`: for machine maintenance, every project's processes and the
/// supervisor daemon stop; nothing starts them again (no command wakes the daemon, deploys
/// of projects with processes are refused) until `kiln boot`. Projects keep their state:
/// `kiln boot` starts what ran, and a project stopped with `kiln stop` stays stopped.
pub fn hold(node: &Node, who: &str) -> Result<Vec<String>, Error> {
    let supervisor = supervisor(node);
    let stopped = supervisor.hold(who)?;
    let mut lines: Vec<String> = stopped
        .iter()
        .map(|(project, names)| {
            format!(
                "{project}: stopped {}",
                names
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    lines
        .push("the node's supervisor is stopped; `kiln boot` starts it and every app again".into());
    Ok(lines)
}

/// `kiln boot`: at machine start. Every project's interrupted deploy is finished (which may
/// stop and start processes), then the supervisor runs every formation that should run.
/// Returns one line per project that runs processes.
pub fn boot(node: &Node, out: &mut Reporter) -> Result<Vec<String>, Error> {
    let mut names: Vec<String> = std::fs::read_dir(&node.root)
        .map_err(|e| crate::error::io_error("read", &node.root, e))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|name| crate::config::layout::valid_name(name))
        .collect();
    names.sort();
    let mut failures = Vec::new();
    for name in &names {
        let Ok(project) = node.project(name) else {
            continue;
        };
        let recovered =
            lock(&project, "boot", out).and_then(|_lock| rollback::recover(node, &project, out));
        if let Err(e) = recovered {
            failures.push(format!("{name}: {}", crate::error::chain(&e)));
        }
    }
    // kiln's own supervisor starts what the formation files say should run (a project
    // stopped with `kiln stop` says stopped); systemd's units are enabled, so systemd started
    // them already. Ends a `kiln supervise --stop`.
    let supervisor = supervisor(node);
    supervisor.release()?;
    supervisor.wake()?;
    let mut lines = Vec::new();
    for name in supervisor.paths.projects() {
        if let Some(formation) = supervisor.running(&name)? {
            lines.push(format!(
                "{name}: {} ({})",
                formation.release,
                formation.instance_list()
            ));
        }
    }
    if !failures.is_empty() {
        return Err(Error::RollbackFailed {
            reason: format!(
                "the processes run, but finishing interrupted deploys failed: {}",
                failures.join("; ")
            ),
            hint: "run `kiln recover <name>` for each of them".into(),
        });
    }
    Ok(lines)
}
