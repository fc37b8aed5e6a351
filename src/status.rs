//! What operators read: `kiln status`, `kiln releases`, `kiln logs` (of deploys, and of the
//! app with `--app`), `kiln ps`, `kiln config`, and `kiln mode`.

use std::fs;

use serde_json::{Value, json};

use crate::config::pillar::Pillar;
use crate::config::project::{Node, Project};
use crate::config::recipe::Mode;
use crate::config::settings;
use crate::deploy::pipeline as deploy;
use crate::error::{Error, io_error};
use crate::fs::git;
use crate::notify::spool::{self, Delivery, Status as DeliveryStatus};
use crate::proxy::front_door::{ConfigState, FrontDoor};
use crate::transaction::backup;
use crate::transaction::journal::Journal;
use crate::transaction::lock;
use crate::transaction::release_log::{Record, ReleaseLog};
use crate::transaction::switch;

/// How run/ shows the live tree.
pub fn run_kind(project: &Project) -> String {
    let run = &project.paths.run;
    match fs::symlink_metadata(run) {
        Ok(meta) if meta.file_type().is_symlink() => format!(
            "symlink to {}",
            fs::read_link(run).map(|t| t.display().to_string()).unwrap_or_default()
        ),
        Ok(_) => match switch::method(run, &project.paths.shadow) {
            switch::Method::Exchange => "own tree, switched atomically (rename exchange)".into(),
            switch::Method::InPlace => {
                "own tree, synced in place while services are stopped (no atomic exchange on this filesystem)".into()
            }
        },
        Err(_) => "missing".into(),
    }
}

/// A record of the release log with what the views add: how long it took and what became of
/// its notification.
fn release_json(node: &Node, project: &Project, record: &Record) -> Value {
    let mut value = serde_json::to_value(record).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("duration_ms".into(), json!(duration_ms(record)));
        map.insert(
            "notifications".into(),
            json!(spool::results(&node.root, &project.paths, &record.id)),
        );
    }
    value
}

fn duration_ms(record: &Record) -> Option<i64> {
    record
        .finished
        .map(|finished| (finished - record.started).num_milliseconds())
}

/// `4.2s`, or `-` while it runs.
fn took(record: &Record) -> String {
    duration_ms(record)
        .map(|ms| {
            crate::exec::report::seconds(std::time::Duration::from_millis(
                u64::try_from(ms).unwrap_or(0),
            ))
        })
        .unwrap_or_else(|| "-".into())
}

/// `2/2 sent`, `1/2 sent, 1 FAILED`, `0/1 sent, 1 pending`, or `-` when nobody was notified.
fn notified(deliveries: Option<&[Delivery]>) -> String {
    let Some(deliveries) = deliveries.filter(|d| !d.is_empty()) else {
        return "-".into();
    };
    let count = |status| deliveries.iter().filter(|d| d.status == status).count();
    let mut text = format!(
        "{}/{} sent",
        count(DeliveryStatus::Delivered),
        deliveries.len()
    );
    for (status, word) in [
        (DeliveryStatus::Failed, "FAILED"),
        (DeliveryStatus::Pending, "pending"),
    ] {
        if count(status) > 0 {
            text.push_str(&format!(", {} {word}", count(status)));
        }
    }
    text
}

/// One recipient on one line: `mail ops@example.com: delivered`.
fn delivery_line(delivery: &Delivery) -> String {
    let what = match (delivery.status, &delivery.error) {
        (DeliveryStatus::Delivered, _) => "delivered".to_string(),
        (status, Some(error)) => format!(
            "{} after {} attempt(s): {error}",
            if status == DeliveryStatus::Failed {
                "FAILED"
            } else {
                "pending"
            },
            delivery.attempts
        ),
        (status, None) => status.as_str().to_string(),
    };
    format!("{} {}: {what}", delivery.channel.as_str(), delivery.to)
}

pub fn status(node: &Node, project: &Project, as_json: bool) -> Result<(), Error> {
    let paths = &project.paths;
    let environment = project.config.environment(&node.config);
    let log = ReleaseLog::load(&paths.release_log())?;
    let last = log.records.last();
    let running = lock::current_holder(&paths.state);
    let interrupted = Journal::load(&paths.journal())?.filter(|_| running.is_none());
    let repo = git::open_bare(&paths.project_repo)?;
    let live_commit = log
        .current
        .as_ref()
        .and_then(|id| log.get(id))
        .and_then(|record| git2::Oid::from_str(&record.commit).ok());
    let drift = if project.config.mode == Mode::Editable {
        // Reading must not create anything: no checkout yet means no edits.
        if paths.project.join(".git").exists() {
            let edits = crate::fs::git::Checkout::open_or_init(&paths.project, &paths.project_repo)
                .and_then(|c| c.local_edits())
                .unwrap_or_default();
            backup::editable_edits(&repo, live_commit, &paths.project, edits)?
        } else {
            Vec::new()
        }
    } else {
        let live_tree = log.current.as_ref().map(|r| paths.release_dir(r));
        let ignore = backup::live_ignore(&repo, live_commit)?;
        backup::find_drift(&paths.run, live_tree.as_deref(), &ignore)?.paths()
    };
    let run = run_kind(project);
    let supervisor = crate::deploy::operate::supervisor(node);
    let processes = supervisor.instances(&paths.name).unwrap_or_default();
    let stopped = crate::runtime::stopped::Stopped::load(&paths.state);
    // The supervisor's periodic web check of the running release (none when stopped).
    let web_check =
        crate::runtime::supervisor::watch::CheckStatus::load(&supervisor.paths, &paths.name)
            .filter(|_| supervisor.running(&paths.name).ok().flatten().is_some());
    let last_notified = last.and_then(|r| spool::results(&node.root, paths, &r.id));
    let undelivered: Vec<Value> = spool::pending(&node.root, Some(&paths.name))
        .iter()
        .filter(|entry| {
            entry
                .targets
                .iter()
                .any(|t| t.status != DeliveryStatus::Delivered)
        })
        .map(|entry| {
            json!({"id": entry.id, "about": entry.message.outcome.as_str(),
                "release": entry.message.release, "created": entry.created,
                "deliveries": entry.results()})
        })
        .collect();
    let front = front_door(node, project)?;
    let behind = behind(node, project, &log, &repo);
    let published = crate::release::publish::PublishState::load(paths);
    // What built the live tree (run/ is it, or shows project/ in editable mode), and what the
    // build cache holds.
    let built_with = crate::runtime::buildpack::read_buildpacks_file(&paths.run);
    let cache: Vec<(String, u64)> = crate::runtime::cache::cached(&paths.cache)
        .into_iter()
        .map(|name| {
            let bytes = crate::runtime::cache::size(&paths.cache.join(&name));
            (name, bytes)
        })
        .collect();
    if as_json {
        let value = json!({
            "project": paths.name,
            "mode": project.config.mode.as_str(),
            "environment": environment.as_str(),
            "branch": project.config.branch,
            "live": log.current,
            "last_good": log.last_good().map(|r| &r.id),
            "last_deploy": last.map(|r| release_json(node, project, r)),
            "undelivered": undelivered,
            "running": running,
            "interrupted": interrupted.as_ref().map(|j| &j.release),
            "drift": drift,
            "run": run,
            "shells": crate::access::shell::recent(&paths.state, 5),
            "supervisor": {"backend": supervisor.backend.as_str(), "daemon": crate::runtime::supervisor::control::daemon_pid(&supervisor.paths)},
            "processes": processes,
            "stopped": stopped,
            "web_check": web_check,
            "front_door": front.as_ref().map(FrontDoorView::json),
            "behind": behind,
            "publish": published,
            "buildpacks": built_with.as_ref().map(|file| &file.buildpacks),
            "cache": cache.iter().map(|(name, bytes)| (name.clone(), json!(bytes))).collect::<serde_json::Map<_, _>>(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return Ok(());
    }
    println!("project:     {}", paths.name);
    println!("mode:        {}", project.config.mode.as_str());
    println!("environment: {environment}");
    println!("branch:      {}", project.config.branch);
    println!("run/:        {run}");
    println!("live:        {}", log.current.as_deref().unwrap_or("none"));
    println!("supervisor:  {}", supervisor.describe());
    if let Some(mark) = &stopped {
        println!(
            "stopped:     with `kiln stop` {}: `kiln start {}` starts it",
            mark.describe(),
            paths.name
        );
    }
    if processes.is_empty() {
        println!("processes:   none");
    } else {
        let listed: Vec<String> = processes
            .iter()
            .map(|i| format!("{} {}", i.name, i.state))
            .collect();
        println!("processes:   {}", listed.join(", "));
    }
    if let Some(check) = &web_check {
        let ago = (chrono::Utc::now() - check.time).num_seconds().max(0) as u64;
        match &check.detail {
            None => println!(
                "web check:   passing ({} checks of {}, the last {} ago)",
                check.checks,
                check.release,
                uptime(ago)
            ),
            Some(detail) => println!(
                "web check:   FAILING ({} in a row{}, the last {} ago): {detail}",
                check.failures,
                if check.alerted { ", alert sent" } else { "" },
                uptime(ago)
            ),
        }
    }
    if let Some(file) = &built_with {
        let names: Vec<String> = file
            .buildpacks
            .iter()
            .map(|b| format!("{} ({})", b.name, b.source))
            .collect();
        println!("buildpacks:  {}", names.join(", "));
    }
    if !cache.is_empty() {
        let sizes: Vec<String> = cache
            .iter()
            .map(|(name, bytes)| format!("{name} {}", crate::runtime::cache::human(*bytes)))
            .collect();
        println!("build cache: {}", sizes.join(", "));
    }
    if let Some(last) = last {
        println!(
            "last deploy: {} ({}) {} by {} at {}{}{}",
            last.id,
            &last.commit[..last.commit.len().min(7)],
            last.status.as_str(),
            match &last.who_key {
                Some(key) => format!("{} ({key})", last.who),
                None => last.who.clone(),
            },
            last.started.format("%Y-%m-%d %H:%M:%SZ"),
            duration_ms(last)
                .map(|_| format!(" in {}", took(last)))
                .unwrap_or_default(),
            last.failure
                .as_ref()
                .map(|f| format!(": {f}"))
                .unwrap_or_default()
        );
        if !last.stages.is_empty() {
            let stages: Vec<String> = last
                .stages
                .iter()
                .map(|s| format!("{} {}", s.stage, crate::exec::report::seconds(s.took())))
                .collect();
            println!("stages:      {}", stages.join(", "));
        }
        for delivery in last_notified.iter().flatten() {
            println!("notified:    {}", delivery_line(delivery));
        }
    }
    if !undelivered.is_empty() {
        println!(
            "undelivered: {} notification(s) in {}; `kiln notify retry {}` sends them now (the next deploy does too):",
            undelivered.len(),
            crate::notify::spool::spool_dir(&node.root)
                .join(&paths.name)
                .display(),
            paths.name
        );
        for entry in spool::pending(&node.root, Some(&paths.name)) {
            for target in entry
                .targets
                .iter()
                .filter(|t| t.status != DeliveryStatus::Delivered)
            {
                println!(
                    "  {} ({}): {}",
                    entry.id,
                    entry.message.outcome.as_str(),
                    delivery_line(&target.result())
                );
            }
        }
    }
    match &running {
        Some(h) => println!(
            "running:     {} of {} (pid {}) since {}",
            h.action,
            h.release.as_deref().unwrap_or("-"),
            h.pid,
            h.since.format("%H:%M:%SZ")
        ),
        None => println!("running:     nothing"),
    }
    if let Some(journal) = interrupted {
        println!(
            "interrupted: the deploy of {} was interrupted; the next kiln command (or `kiln recover {}`) undoes it",
            journal.release, paths.name
        );
    }
    for shell in crate::access::shell::recent(&paths.state, 5) {
        println!(
            "shell:       {} ({}) at {}{}",
            shell.user,
            shell.key.as_deref().unwrap_or("key unknown"),
            shell.at.format("%Y-%m-%d %H:%M:%SZ"),
            shell.from.map(|f| format!(" from {f}")).unwrap_or_default()
        );
    }
    if let Some(front) = &front {
        front.print();
    }
    if let Some(tip) = &behind.branch {
        println!(
            "behind:      branch {} is at {}, which is not live: `kiln deploy {}` deploys it",
            project.config.branch,
            &tip[..tip.len().min(7)],
            paths.name
        );
    }
    if let Some(newer) = &behind.source {
        println!(
            "behind:      the source offers {} of {}, newer than the live release: push that commit here, or roll it out to this node",
            newer.release,
            &newer.commit[..newer.commit.len().min(7)],
        );
    }
    if let Some(error) = &behind.source_error {
        println!("source:      cannot list its releases: {error}");
    }
    if let Some(state) = &published {
        match &state.error {
            None => println!(
                "publish:     {} to {} at {}",
                state.release.as_deref().unwrap_or("-"),
                state.to,
                state.at.format("%Y-%m-%d %H:%M:%SZ")
            ),
            Some(error) => println!(
                "publish:     FAILED to {} at {}: {error}; retry with `kiln release publish {}`",
                state.to,
                state.at.format("%Y-%m-%d %H:%M:%SZ"),
                paths.name
            ),
        }
    }
    if drift.is_empty() {
        println!("drift:       none");
    } else {
        println!(
            "drift:       {} manual change(s), saved at the next deploy:",
            drift.len()
        );
        for line in drift {
            println!("  {line}");
        }
    }
    Ok(())
}

/// A project's front door, for `kiln status` and `kiln proxy status`.
struct FrontDoorView {
    domains: Vec<String>,
    https: Vec<String>,
    upstreams: Vec<String>,
    /// The supervisor's waiting room, nginx's backup server.
    waiting_room: Option<String>,
    /// What nginx serves from run/ itself: `/static from run/public/static`.
    statics: Vec<String>,
    /// None: node.yml has no `proxy`.
    config: Option<ConfigState>,
}

impl FrontDoorView {
    fn json(&self) -> Value {
        json!({
            "domains": self.domains,
            "https": self.https,
            "upstreams": self.upstreams,
            "waiting_room": self.waiting_room,
            "static": self.statics,
            "config": self.config.map(|c| c.as_str()),
        })
    }

    fn print(&self) {
        let https = |d: &String| {
            if self.https.contains(d) {
                format!("{d} (https)")
            } else {
                d.clone()
            }
        };
        let domains: Vec<String> = self.domains.iter().map(https).collect();
        let none = |list: &[String]| {
            if list.is_empty() {
                "none".to_owned()
            } else {
                list.join(", ")
            }
        };
        println!("domains:     {}", none(&domains));
        println!("upstreams:   {}", none(&self.upstreams));
        if let Some(room) = &self.waiting_room {
            println!(
                "backup:      {room} (kiln's waiting room: requests wait there while the web processes restart)"
            );
        }
        if !self.statics.is_empty() {
            println!("static:      {}", self.statics.join(", "));
        }
        println!(
            "front door:  {}",
            match self.config {
                None => "none: node.yml has no `proxy`".to_owned(),
                Some(state @ (ConfigState::Current | ConfigState::NoDomains)) =>
                    state.as_str().to_owned(),
                Some(state) => format!("{}; run `kiln proxy reload`", state.as_str()),
            }
        );
    }
}

/// The front door of `project`; None when the node has no proxy and the project no domains.
fn front_door(node: &Node, project: &Project) -> Result<Option<FrontDoorView>, Error> {
    let front = FrontDoor::of(node);
    if front.is_none() && project.config.domains.is_empty() {
        return Ok(None);
    }
    let site = crate::proxy::front_door::live_site(node, project)?;
    let config = front.map(|f| f.config_state(project)).transpose()?;
    Ok(Some(FrontDoorView {
        https: site
            .domains
            .iter()
            .filter(|d| site.tls.contains_key(*d))
            .cloned()
            .collect(),
        domains: site.domains,
        upstreams: site.upstreams.iter().map(ToString::to_string).collect(),
        waiting_room: site.waiting_room.map(|room| room.to_string()),
        statics: site
            .static_dirs
            .iter()
            .map(|(prefix, dir)| {
                let shown = dir.strip_prefix(&project.paths.base).unwrap_or(dir);
                format!("{prefix} from {}", shown.display())
            })
            .collect(),
        config,
    }))
}

/// `kiln proxy status`: the nginx, and every project's front door.
pub fn proxy_status(node: &Node, front: &FrontDoor, as_json: bool) -> Result<(), Error> {
    let pid = front.master_pid();
    let mut projects = Vec::new();
    for name in crate::proxy::front_door::node_projects(node) {
        let project = node.project(&name)?;
        if let Some(view) = front_door(node, &project)? {
            projects.push((name, view));
        }
    }
    let listen: Vec<String> = front.nginx.listen.iter().map(ToString::to_string).collect();
    let listen_tls: Vec<String> = front
        .nginx
        .listen_tls
        .iter()
        .map(ToString::to_string)
        .collect();
    if as_json {
        let value = json!({
            "private": front.is_private(),
            "binary": front.nginx.binary,
            "config_dir": front.conf_dir(),
            "pid": pid,
            "listen": listen,
            "listen_tls": listen_tls,
            "projects": projects
                .iter()
                .map(|(name, view)| {
                    let mut value = view.json();
                    value["project"] = json!(name);
                    value
                })
                .collect::<Vec<_>>(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return Ok(());
    }
    let which = if front.is_private() {
        format!("node-private, under {}", front.state_dir().display())
    } else {
        format!("the machine's, {}", front.nginx.binary.display())
    };
    let running = match (pid, front.is_private()) {
        (Some(pid), _) => format!("running (pid {pid})"),
        (None, true) => "not running: start it with `kiln proxy start`".to_owned(),
        (None, false) => "no running master found through its pid file".to_owned(),
    };
    println!("nginx:       {which}; {running}");
    println!("config:      {}", front.conf_dir().display());
    println!("listen:      {}", listen.join(", "));
    println!("listen_tls:  {}", listen_tls.join(", "));
    if front.is_private() {
        println!("error log:   {}", front.error_log().display());
    }
    for (name, view) in projects {
        let state = view.config.map(|c| c.as_str()).unwrap_or("-");
        // A site nginx serves from run/ (the static buildpack's, kiln.yml `static:`) needs
        // no upstream: say what it serves instead.
        let served: Vec<String> = view
            .upstreams
            .iter()
            .cloned()
            .chain(view.statics.iter().map(|s| format!("static {s}")))
            .collect();
        let upstreams = if served.is_empty() {
            "no upstream".to_owned()
        } else {
            served.join(", ")
        };
        let domains = if view.domains.is_empty() {
            "no domains".to_owned()
        } else {
            view.domains.join(", ")
        };
        println!("{name}: {domains} -> {upstreams} [{state}]");
    }
    Ok(())
}

/// How the live release compares with what this node could deploy.
#[derive(Debug, Default, serde::Serialize)]
pub struct Behind {
    /// The deploy branch's tip, when it is not the live commit (pushed, then failed or not
    /// deployed yet).
    pub branch: Option<String>,
    /// Final mode: the newest release at the source, when it is of another commit and newer
    /// than the live one (a node that was down during a rollout).
    pub source: Option<crate::release::source::Listed>,
    /// Final mode: why the source could not be listed.
    pub source_error: Option<String>,
}

fn behind(node: &Node, project: &Project, log: &ReleaseLog, repo: &git2::Repository) -> Behind {
    let live = log.current.as_ref().and_then(|id| log.get(id));
    let mut behind = Behind {
        branch: git::branch_tip(repo, &project.config.branch)
            .map(|tip| tip.to_string())
            .filter(|tip| live.is_none_or(|r| r.commit != *tip)),
        ..Behind::default()
    };
    let Some(text) = project
        .config
        .source
        .as_deref()
        .filter(|_| project.config.mode == Mode::Final)
    else {
        return behind;
    };
    let listed = crate::release::source::Source::parse(text, &node.config.s3)
        .and_then(|source| source.list());
    let listed = match listed {
        Ok(listed) => listed,
        Err(e) => {
            behind.source_error = Some(crate::error::chain(&e));
            return behind;
        }
    };
    // When the live release was baked: its manifest came with it into releases/.
    let live_created = live
        .and_then(|r| r.source_release.as_deref())
        .and_then(|id| crate::release::manifest::Manifest::load(&project.paths.manifest(id)).ok())
        .map(|m| m.created);
    behind.source = listed
        .into_iter()
        .max_by(|a, b| (a.created, &a.release).cmp(&(b.created, &b.release)))
        .filter(|newest| {
            live.is_none_or(|r| r.commit != newest.commit)
                && live_created.is_none_or(|created| newest.created > created)
        });
    behind
}

pub fn releases(node: &Node, project: &Project, as_json: bool) -> Result<(), Error> {
    let log = ReleaseLog::load(&project.paths.release_log())?;
    if as_json {
        let releases: Vec<Value> = log
            .records
            .iter()
            .map(|r| release_json(node, project, r))
            .collect();
        let value = json!({"current": log.current, "releases": releases});
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return Ok(());
    }
    println!(
        "  {:<25}  {:<7}  {:<7}  {:<11}  {:<10}  {:<20}  {:>7}  {:<18}  note",
        "release", "commit", "pillar", "status", "who", "started", "took", "notified"
    );
    for r in log.records.iter().rev() {
        let live = if log.current.as_deref() == Some(r.id.as_str()) {
            "*"
        } else {
            " "
        };
        let short = |s: &str| s[..s.len().min(7)].to_string();
        let deliveries = spool::results(&node.root, &project.paths, &r.id);
        println!(
            "{live} {:<25}  {:<7}  {:<7}  {:<11}  {:<10}  {:<20}  {:>7}  {:<18}  {}",
            r.id,
            short(&r.commit),
            r.pillar_rev
                .as_deref()
                .map(short)
                .unwrap_or_else(|| "-".into()),
            r.status.as_str(),
            r.who,
            r.started.format("%Y-%m-%d %H:%M:%SZ").to_string(),
            took(r),
            notified(deliveries.as_deref()),
            match (&r.failure, &r.source_release) {
                (Some(failure), _) => failure.clone(),
                (None, Some(source)) => format!("from {source}"),
                (None, None) => String::new(),
            }
        );
    }
    Ok(())
}

/// `<target>-rollback-<id>`: the name of a manual rollback's log.
fn is_rollback_log(name: &str) -> bool {
    name.split_once("-rollback-").is_some_and(|(target, id)| {
        crate::release::manifest::valid_id(target) && crate::release::manifest::valid_id(id)
    })
}

/// `kiln logs`: the log of a deploy (by release id) or of a manual rollback (by the name it
/// printed); without a name, the newest one.
pub fn logs(project: &Project, release: Option<&str>, as_json: bool) -> Result<(), Error> {
    let paths = &project.paths;
    let log = ReleaseLog::load(&paths.release_log())?;
    let id = match release {
        Some(id) => {
            let rollback = is_rollback_log(id) && paths.log_file(id).is_file();
            if log.get(id).is_none() && !rollback {
                return Err(Error::UnknownRelease {
                    project: paths.name.clone(),
                    release: id.to_string(),
                });
            }
            id.to_string()
        }
        None => {
            // The log written last: ids say the time only to the second, and a rollback often
            // follows a deploy within one.
            let newest = fs::read_dir(&paths.logs)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|entry| {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let stem = name.strip_suffix(".log")?.to_string();
                    let ours = log.get(&stem).is_some() || is_rollback_log(&stem);
                    let written = entry.metadata().and_then(|m| m.modified()).ok()?;
                    ours.then_some((written, stem))
                })
                .max();
            match (newest, log.records.last()) {
                (Some((_, name)), _) => name,
                (None, Some(record)) => record.id.clone(),
                (None, None) => {
                    // JSON lines: no deploy is no line.
                    if !as_json {
                        println!("no deploys of `{}` yet", paths.name);
                    }
                    return Ok(());
                }
            }
        }
    };
    let path = if as_json {
        paths.events_file(&id)
    } else {
        paths.log_file(&id)
    };
    let mut file = fs::File::open(&path).map_err(|e| io_error("read", &path, e))?;
    // Streamed: a long deploy's events need not fit in memory, and a closed pipe (`| head`)
    // is not an error.
    let _ = std::io::copy(&mut file, &mut std::io::stdout().lock());
    Ok(())
}

/// `kiln mode`: rewrites project.yml. data/ is never touched; run/ changes shape at the next
/// deploy (a tree left by cooking mode is kept under archives/ when editable mode links run/).
pub fn set_mode(node: &Node, project: &Project, mode: Mode) -> Result<(), Error> {
    let mut config = project.config.clone();
    if mode == Mode::Final && config.source.is_none() {
        return Err(Error::Usage(
            "final mode needs a release source: run `kiln init <name> --mode final --source URL`"
                .into(),
        ));
    }
    config.mode = mode;
    let _ = node;
    crate::fs::durable::write_atomic(
        &project.paths.project_yml,
        config.to_yaml().as_bytes(),
        0o644,
    )?;
    println!(
        "project `{}` is now in {} mode; the next deploy uses it",
        project.paths.name,
        mode.as_str()
    );
    Ok(())
}

/// `kiln config`: the merged settings of the live release (or the deploy branch's tip), in the
/// project's environment, secrets masked unless `reveal`.
pub fn config(node: &Node, project: &Project, reveal: bool) -> Result<Value, Error> {
    let paths = &project.paths;
    let log = ReleaseLog::load(&paths.release_log())?;
    let repo = git::open_bare(&paths.project_repo)?;
    let live = log.current.as_ref().and_then(|id| log.get(id));
    let commit = match live {
        Some(record) => git2::Oid::from_str(&record.commit).ok(),
        None => git::branch_tip(&repo, &project.config.branch),
    };
    let recipe = match commit {
        Some(oid) => deploy::read_recipe(&repo, oid)?,
        None => crate::config::recipe::Recipe::default(),
    };
    let pillar = Pillar::current(paths)?;
    let environment = project.config.environment(&node.config).as_str();
    let merged = settings::merge(
        serde_json::json!({
            "project": paths.name,
            "mode": project.config.mode.as_str(),
            "release": log.current,
            "commit": commit.map(|c| c.to_string()),
            "environment": environment,
        }),
        &recipe.defaults,
        pillar.settings.as_ref(),
        environment,
    );
    if reveal {
        return Ok(merged);
    }
    let secrets = pillar
        .settings
        .as_ref()
        .map(settings::secrets)
        .unwrap_or_default();
    Ok(settings::mask(&merged, &secrets))
}

/// `kiln ps`: each instance of the project's processes: state, pid, port, uptime, restarts.
pub fn ps(node: &Node, project: &Project, as_json: bool) -> Result<(), Error> {
    let supervisor = crate::deploy::operate::supervisor(node);
    let name = &project.paths.name;
    // Looking is a reason to start a daemon that should run: the apps come back.
    supervisor.wake()?;
    let state = supervisor.state(name)?;
    let instances = supervisor.instances(name)?;
    let stopped = crate::runtime::stopped::Stopped::load(&project.paths.state);
    if as_json {
        let value = json!({
            "project": name,
            "backend": supervisor.backend.as_str(),
            "running": state.as_ref().is_some_and(|s| s.running),
            "stopped": stopped,
            "release": state.as_ref().map(|s| &s.formation.release),
            "instances": instances,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return Ok(());
    }
    let Some(state) = state else {
        println!(
            "`{name}` runs no supervised processes (no Procfile in its live release, or nothing deployed yet)"
        );
        return Ok(());
    };
    let how = match (&stopped, state.running) {
        (Some(mark), false) => format!(
            "stopped with `kiln stop` {}: `kiln start {name}` starts it",
            mark.describe()
        ),
        (_, true) => "running".to_string(),
        (None, false) => "stopped".to_string(),
    };
    println!(
        "=== {name}: release {}, {how} ({})",
        state.formation.release,
        supervisor.describe()
    );
    for i in &instances {
        let dash = || "-".to_string();
        println!(
            "{:<12} {:<9} pid {:<8} port {:<6} up {:<9} restarts {:<4} {}{}",
            i.name,
            i.state,
            i.pid.map_or_else(dash, |p| p.to_string()),
            i.port.map_or_else(dash, |p| p.to_string()),
            i.uptime_seconds.map_or_else(dash, uptime),
            i.restarts,
            i.command,
            i.last_exit
                .as_ref()
                .map(|e| format!("  (last: {e})"))
                .unwrap_or_default()
        );
    }
    for i in instances.iter().filter(|i| i.state == "up") {
        let exposed = i.port.map(crate::runtime::listeners::exposed);
        if let Some(warning) =
            crate::runtime::listeners::warning(&i.name, &exposed.unwrap_or_default())
        {
            println!("warning: {warning}");
        }
    }
    Ok(())
}

fn uptime(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        s => format!("{}d{:02}h", s / 86400, s / 3600 % 24),
    }
}

/// `kiln logs <name> --app`: the processes' output, from logs/app/ (kiln's own supervisor) or
/// the journal (systemd).
pub fn app_logs(
    node: &Node,
    project: &Project,
    query: &crate::runtime::applog::LogQuery,
    follow: bool,
) -> Result<(), Error> {
    let supervisor = crate::deploy::operate::supervisor(node);
    let dir = project.paths.logs.join("app");
    if let Some(kind) = &query.kind {
        // A mistyped type would print nothing, as if the process had said nothing.
        let mut known = crate::runtime::applog::kinds(&dir);
        if let Some(state) = supervisor.state(&project.paths.name)? {
            known.extend(state.formation.types.into_keys());
        }
        if !known.contains(kind) {
            let known: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
            return Err(Error::Usage(format!(
                "{} has no process type `{kind}` (its types: {})",
                project.paths.name,
                if known.is_empty() {
                    "none yet".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
    }
    if supervisor.backend == crate::runtime::supervisor::Backend::Systemd {
        let Some(state) = supervisor.state(&project.paths.name)? else {
            return Ok(());
        };
        let args = crate::runtime::systemd::journal_args(
            &state,
            query.kind.as_deref(),
            query.lines,
            follow,
        );
        let status = std::process::Command::new("journalctl")
            .args(&args)
            .status()
            .map_err(|e| io_error("run", std::path::Path::new("journalctl"), e))?;
        return if status.success() {
            Ok(())
        } else {
            Err(Error::Refused {
                message: format!("`journalctl {}` failed ({status})", args.join(" ")),
            })
        };
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if follow {
        // Ends when the reader goes away (a closed pipe is not an error).
        let _ = crate::runtime::applog::follow(&dir, query, &mut out);
        return Ok(());
    }
    use std::io::Write;
    for line in crate::runtime::applog::tail(&dir, query) {
        if out
            .write_all(&line)
            .and_then(|()| out.write_all(b"\n"))
            .is_err()
        {
            break;
        }
    }
    Ok(())
}
