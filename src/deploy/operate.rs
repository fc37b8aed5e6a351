//! What operators do with a project's running processes: `kiln ps scale`, `kiln restart`,
//! `kiln run` (a one-off in run/ with the live release's environment) and `kiln boot` (at
//! machine start: finish interrupted deploys, then bring every project's processes back).
//! Each takes the project's lock and finishes an interrupted deploy first, like a deploy, so
//! that it never acts on a half-switched node.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use crate::config::pillar::Pillar;
use crate::config::project::{Node, Project};
use crate::config::recipe::{Cutover, Recipe};
use crate::deploy::pipeline::{Settings, read_recipe};
use crate::deploy::rollback;
use crate::error::Error;
use crate::exec::report::Reporter;
use crate::fs::git;
use crate::proxy::front_door::{Applied, FrontDoor, live_site};
use crate::runtime::formation::{self, RUN_SCRIPT, Scale};
use crate::runtime::procfile::ProcessTypes;
use crate::runtime::readiness::Readiness;
use crate::runtime::supervisor::{Backend, Supervisor};
use crate::transaction::lock::lock;
use crate::transaction::release_log::ReleaseLog;

pub fn supervisor(node: &Node) -> Supervisor {
    Supervisor::new(&node.root, &node.config.supervisor)
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
        return Ok(format!(
            "recorded {listed} for `{}`; the next deploy runs it",
            paths.name
        ));
    };
    for (kind, count) in &counts {
        if let Some(process) = formation.types.get_mut(kind) {
            process.count = *count;
        }
    }
    supervisor.start(formation)?;
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
        return Err(Error::Usage(format!(
            "`{name}` runs no supervised processes: deploy a release with a Procfile first"
        )));
    };
    let recipe = live_recipe(project)?;
    let overlap = kind.is_none()
        && recipe.cutover == Cutover::Overlap
        && supervisor.backend == Backend::Kiln
        && !formation.is_idle();
    if !overlap {
        supervisor.restart(name, kind)?;
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

/// The environment of `kiln run`: the live release's, as its processes get it (from the
/// pillar checked out now), with `KILN_PROCESS=run`; no `PORT` (a one-off serves nothing).
fn run_env(node: &Node, project: &Project) -> Result<BTreeMap<String, String>, Error> {
    let paths = &project.paths;
    let log = ReleaseLog::load(&paths.release_log())?;
    let record = log
        .current
        .as_ref()
        .and_then(|id| log.get(id))
        .ok_or_else(|| {
            Error::Usage(format!(
                "`{}` has no live release to run a command in: deploy first",
                paths.name
            ))
        })?;
    let repo = git::open_bare(&paths.project_repo)?;
    let commit = git2::Oid::from_str(&record.commit).map_err(crate::error::git_error(format!(
        "read commit {}",
        record.commit
    )))?;
    let recipe = read_recipe(&repo, commit)?;
    let pillar = Pillar::current(paths)?;
    // Dropped at once: its `$KILN_COMMON` file exists only during a deploy.
    let settings = Settings::gather(node, project, &recipe, &pillar, &record.id, commit)?;
    let mut env = formation::process_env(&settings.env);
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
    // kiln's own supervisor starts what the formation files say should run; systemd's units
    // are enabled, so systemd started them already.
    let supervisor = supervisor(node);
    supervisor.wake()?;
    let mut lines = Vec::new();
    for name in supervisor.paths.projects() {
        if let Some(formation) = supervisor.running(&name)? {
            lines.push(format!(
                "{name}: {} ({})",
                formation.release,
                formation
                    .instance_names()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
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
