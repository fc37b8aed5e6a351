//! Undoing deploys: after a failure (called by the pipeline), after a crash (the next kiln
//! command on the project finds the journal and finishes the job), and by hand
//! (`kiln rollback`). Every path leaves run/ and data/ exactly as they were before the deploy.

use std::fs;
use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use serde_json::json;

use crate::config::layout::ProjectPaths;
use crate::config::project::{Node, Project};
use crate::config::recipe::Cutover;
use crate::error::{Error, io_error};
use crate::exec::redact::Redactor;
use crate::exec::report::Reporter;
use crate::exec::stage::CommandSpec;
use crate::fs::sync::{self, SyncOptions};
use crate::runtime::formation::Formation;
use crate::runtime::readiness::Readiness;
use crate::runtime::supervisor::{Sockets, Supervisor};

/// How long an undo waits for the old release's web processes to accept again.
const RESTART_WAIT: Duration = Duration::from_secs(30);
use crate::transaction::backup;
use crate::transaction::journal::{Journal, Phase};
use crate::transaction::release_log::{ReleaseLog, Status};
use crate::transaction::switch::{self, Method};

/// Puts the node back as it was before the journaled deploy; returns the outcome for the final
/// line ("rolled back to <release>"). On error the journal stays, for `kiln recover`.
pub fn undo(
    node: &Node,
    project: &Project,
    journal: &Journal,
    reason: &str,
    out: &mut Reporter,
) -> Result<String, Error> {
    let paths = &project.paths;
    let supervisor = Supervisor::new(&node.root, &node.config.supervisor);
    let release = &journal.release;
    out.headline(&format!("rolling back {release}"));
    let redactor = Redactor::new(&journal.undo.secrets);
    out.set_redactor(redactor.clone());
    let overlap = journal.cutover == Cutover::Overlap;
    // The live release's services were stopped (data/ may have changed from here on); an
    // overlap cutover stops them only once the new release passed its check ...
    let stopped = if overlap {
        journal.live_stopped
    } else {
        journal.phase >= Phase::Stopping
    };
    // ... and the new release's may have been started.
    let started = journal.phase >= Phase::Switched;
    // An overlap whose old processes still run (the cutover had not stopped them): they keep
    // running, only the new ones go.
    let old_running = overlap && supervisor.draining(&paths.name)?.is_some();
    // data/ goes back to the snapshot once something other than the live release may have
    // written it: after the stop (whatever ran then), or, in an overlap, the deploy commands
    // or the new release serving alone.
    let restore_data = if overlap {
        journal.migrated || (journal.live_stopped && !old_running)
    } else {
        stopped
    };
    // The old release starts again after this undo: its listening sockets stay open meanwhile.
    let restarts = journal.previous.is_some() && journal.undo.processes.is_some();
    let sockets = if restarts {
        Sockets::Hold
    } else {
        Sockets::Close
    };
    let run_with = |label: &str,
                    command: &str,
                    env: &std::collections::BTreeMap<String, String>,
                    out: &mut Reporter|
     -> Result<(), Error> {
        let spec = CommandSpec {
            stage: label,
            command,
            cwd: &journal.undo.cwd,
            env,
            timeout: journal.undo.timeout,
            profile: false,
        };
        out.run(&spec, &redactor)?;
        Ok(())
    };
    let run = |label: &str, command: &str, out: &mut Reporter| {
        run_with(label, command, &journal.undo.env, out)
    };

    // An overlap that had not cut over yet: the live release's processes never stopped. The
    // front door goes back to them first, then the new release's processes stop: no request
    // finds neither.
    if old_running {
        if let Some(old) = &journal.undo.processes {
            point_front_door_at(node, project, old, out);
        }
        match supervisor.cancel_overlap(&paths.name) {
            Ok(true) => out.note(&format!(
                "stopped the processes of {release}; those of {} kept running",
                journal.previous.as_deref().unwrap_or("the live release")
            )),
            Ok(false) => {}
            Err(e) => out.note(&format!(
                "stopping the processes failed ({}); carrying on",
                crate::error::chain(&e)
            )),
        }
    }
    // The app of the failed release may be running: stop it, with its own stop command,
    // before touching its files.
    if let Some(stop) = journal.undo.stop.as_ref().filter(|_| started && stopped)
        && let Err(e) = run("rollback", stop, out)
    {
        out.note(&format!(
            "stopping the services failed ({}); carrying on",
            crate::error::chain(&e)
        ));
    }
    // Its supervised processes too (whatever the project's formation runs now is its own).
    if started && !old_running && (stopped || !overlap) {
        match supervisor.stop(&paths.name, sockets) {
            Ok(true) => out.note(&format!("stopped the processes of {release}")),
            Ok(false) => {}
            Err(e) => out.note(&format!(
                "stopping the processes failed ({}); carrying on",
                crate::error::chain(&e)
            )),
        }
    }
    // A project stopped with `kiln stop` stays stopped, with the live release's formation.
    if let Some(formation) = &journal.undo.stopped_processes
        && let Err(e) = supervisor.keep_stopped(formation.clone())
    {
        out.note(&format!(
            "warning: could not put back the stopped processes of {}: {}",
            formation.release,
            crate::error::chain(&e)
        ));
    }
    let failed = journal.archive.join("failed");
    let is_deploy = journal.action == "deploy";
    let method = Method::parse(&journal.switch);
    let switched = match method {
        Method::Exchange => {
            journal.run_inode.is_some() && switch::inode(&paths.run) != journal.run_inode
        }
        Method::InPlace => journal.phase >= Phase::Switching,
    };
    fs::create_dir_all(&journal.archive).map_err(|e| io_error("create", &journal.archive, e))?;
    if switched {
        match method {
            Method::Exchange => {
                switch::exchange(&paths.run, &paths.shadow)?;
                crate::failpoint("rollback-after-exchange");
                // The shadow now holds the failed live tree: keep it for inspection.
                keep_failed(&paths.shadow, &failed)?;
            }
            Method::InPlace => {
                if !failed.exists() {
                    sync::sync_tree(&paths.run, &failed, &SyncOptions::default())?;
                }
                sync::sync_tree(&paths.shadow, &paths.run, &SyncOptions::default())?;
            }
        }
        out.note("run/ switched back");
    } else if is_deploy {
        let tree = paths.release_dir(release);
        if tree.exists() {
            keep_failed(&tree, &failed)?;
        } else if fs::read_dir(&paths.build)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
        {
            keep_failed(&paths.build, &failed)?;
            fs::create_dir_all(&paths.build).map_err(|e| io_error("create", &paths.build, e))?;
        }
    }
    if restore_data && let Some(snapshot) = &journal.snapshot {
        let stats = backup::restore(snapshot, &paths.data)?;
        out.note(&format!(
            "data/ restored from the snapshot ({} files put back, {} removed)",
            stats.copied, stats.removed
        ));
        for command in &journal.undo.restore {
            run("restore", command, out)?;
        }
    }
    if stopped {
        // The release live before starts again with its own start command; when nothing was
        // live, nothing starts (the new release's start would run in an empty run/).
        if let Some(start) = journal
            .undo
            .start
            .as_ref()
            .filter(|_| journal.previous.is_some())
        {
            let env = journal.undo.start_env.as_ref().unwrap_or(&journal.undo.env);
            run_with("rollback", start, env, out)?;
        }
        // And its processes, as they ran: its commands, environment, counts and ports (an
        // overlap's still run).
        if let Some(formation) = journal
            .undo
            .processes
            .as_ref()
            .filter(|_| journal.previous.is_some() && !old_running)
        {
            let formation = supervisor.start(formation.clone())?;
            if overlap {
                // Its ports may be those the front door left: point it back.
                point_front_door_at(node, project, &formation, out);
            }
            out.note(&format!(
                "started the processes of {} again ({})",
                formation.release,
                formation.instance_list()
            ));
            // The pusher reads "rolled back" as "serving again": wait for the web ports. The
            // old release ran before, so a slow start is its own business, not a failed undo.
            let readiness = Readiness {
                formation: &formation,
                timeout: RESTART_WAIT,
                http_check: false,
                startup: Duration::ZERO,
                only: None,
            };
            if let Err(e) = crate::runtime::readiness::wait_up(&supervisor, &readiness, &mut |_| {})
            {
                out.note(&format!("warning: {e}"));
            }
        }
    }
    if is_deploy {
        mark_failed(paths, release, reason)?;
    }
    Journal::remove(&paths.journal())?;
    out.event(
        json!({"event": "rolled_back", "stage": "rollback", "outcome": "rolled_back",
        "to": journal.previous}),
    );
    Ok(match &journal.previous {
        Some(previous) => format!("rolled back to {previous}"),
        None => "rolled back (no release was live before)".to_string(),
    })
}

/// Moves the failed tree aside for inspection. A rollback finished by `kiln recover` after an
/// interruption may get here twice: the first tree kept (the failed live tree) is the one to keep.
fn keep_failed(tree: &Path, failed: &Path) -> Result<(), Error> {
    if failed.exists() {
        return Ok(());
    }
    fs::rename(tree, failed).map_err(|e| io_error("keep", tree, e))
}

/// Records in the release log that `release` failed.
pub fn mark_failed(paths: &ProjectPaths, release: &str, reason: &str) -> Result<(), Error> {
    let mut log = ReleaseLog::load(&paths.release_log())?;
    if let Some(record) = log.get_mut(release) {
        record.status = Status::Failed;
        record.finished = Some(Utc::now());
        record.failure = Some(reason.to_string());
    }
    log.save(&paths.release_log())
}

/// Finishes an interrupted deploy, if there is one: run by every command that takes the lock.
pub fn recover(node: &Node, project: &Project, out: &mut Reporter) -> Result<bool, Error> {
    let paths = &project.paths;
    let journal = Journal::load(&paths.journal())?;
    let mut log = ReleaseLog::load(&paths.release_log())?;
    let Some(journal) = journal else {
        // A deploy without journal (editable mode) that died: nothing to undo, but the log
        // must not say it is still running.
        let mut changed = false;
        for record in log
            .records
            .iter_mut()
            .filter(|r| r.status == Status::Running)
        {
            record.status = Status::Failed;
            record.finished = Some(Utc::now());
            record.failure = Some("interrupted".into());
            changed = true;
        }
        if changed {
            log.save(&paths.release_log())?;
        }
        return Ok(false);
    };
    if log.current.as_deref() == Some(journal.release.as_str()) {
        // The crash came after the commit point (the release log names the release live, in
        // the same atomic write that marks it good): the deploy or rollback is complete.
        Journal::remove(&paths.journal())?;
        return Ok(false);
    }
    let log_name = journal.log_name();
    let _ = out.open_logs(&paths.log_file(&log_name), &paths.events_file(&log_name));
    out.set_context(&paths.name, &journal.release);
    out.event(json!({"event": "recovery_start", "stage": "rollback",
        "interrupted": journal.action, "phase": format!("{:?}", journal.phase).to_lowercase(),
        "pid": journal.pid}));
    out.headline(&format!(
        "recovering the interrupted {} of {} (pid {}, stopped at {:?})",
        journal.action, journal.release, journal.pid, journal.phase
    ));
    let reason = format!("interrupted during {:?}", journal.phase).to_lowercase();
    let outcome =
        undo(node, project, &journal, &reason, out).map_err(|e| Error::RollbackFailed {
            reason: format!(
                "recovering {} failed: {}",
                journal.release,
                crate::error::chain(&e)
            ),
            hint: recovery_hint(paths),
        })?;
    // The interrupted run may have installed its release's front door once its services ran.
    if journal.phase >= Phase::Switched {
        restore_front_door(node, project, out);
    }
    out.headline(&format!("recovered: {outcome}"));
    out.event(json!({"event": "recovery_end", "stage": "rollback", "outcome": "rolled_back"}));
    out.close_logs();
    Ok(true)
}

/// After an undo, the front door goes back to the configuration of the release that is live
/// again (a failed deploy may have installed its own once its services ran). run/ and data/
/// are already back, so a failure here is a warning with the command that retries it.
pub fn restore_front_door(node: &Node, project: &Project, out: &mut Reporter) {
    let Some(front) = crate::proxy::front_door::FrontDoor::of(node) else {
        return;
    };
    let restored =
        crate::proxy::front_door::live_site(node, project).and_then(|site| front.install(&site));
    match restored {
        Ok(crate::proxy::front_door::Applied::Reloaded) => {
            out.note("front door: back to the configuration of the live release");
        }
        Ok(_) => {}
        Err(e) => out.note(&format!(
            "warning: the front door could not be put back ({}); fix it, then run `kiln proxy reload`",
            crate::error::chain(&e)
        )),
    }
}

/// Points the front door at `formation`'s web instances (an overlap's undo: the release that
/// kept running), before the processes it leaves are stopped. A failure is a warning: the
/// undo goes on, and the front door is installed again at its end.
fn point_front_door_at(node: &Node, project: &Project, formation: &Formation, out: &mut Reporter) {
    let Some(front) = crate::proxy::front_door::FrontDoor::of(node) else {
        return;
    };
    let pointed = crate::proxy::front_door::live_site_with(project, &formation.web_ports())
        .and_then(|site| front.install(&site));
    match pointed {
        Ok(crate::proxy::front_door::Applied::Reloaded) => out.note(&format!(
            "front door: back to the processes of {}",
            formation.release
        )),
        Ok(_) => {}
        Err(e) => out.note(&format!(
            "warning: the front door could not be pointed back ({}); carrying on",
            crate::error::chain(&e)
        )),
    }
}

/// What an operator can do about a rollback that could not finish.
pub fn recovery_hint(paths: &ProjectPaths) -> String {
    format!(
        "the journal is kept in {}; fix the cause and run `kiln recover {name}`, or give up the \
         undo with `kiln recover {name} --abandon` (run/ and data/ are then left as they are)",
        paths.journal().display(),
        name = paths.name
    )
}

/// `kiln recover --abandon`: gives up undoing an interrupted or failed deploy or rollback.
/// The release log records the failure and the journal goes; run/ and data/ are left exactly
/// as they are, for the operator to check. Returns false when there was nothing to abandon.
pub fn abandon(project: &Project, out: &mut Reporter) -> Result<bool, Error> {
    let paths = &project.paths;
    let path = paths.journal();
    // An unreadable journal is one more reason to abandon: it can only be removed.
    let journal = match Journal::load(&path) {
        Ok(None) => return Ok(false),
        Ok(Some(journal)) => Some(journal),
        Err(Error::RollbackFailed { .. }) => None,
        Err(e) => return Err(e),
    };
    let mut log = ReleaseLog::load(&paths.release_log())?;
    let committed = journal
        .as_ref()
        .is_some_and(|j| log.current.as_deref() == Some(j.release.as_str()));
    if let Some(journal) = journal.as_ref().filter(|_| !committed) {
        let name = journal.log_name();
        let _ = out.open_logs(&paths.log_file(&name), &paths.events_file(&name));
        out.set_context(&paths.name, &journal.release);
        out.headline(&format!(
            "abandoning the undo of the {} of {} (stopped at {:?})",
            journal.action, journal.release, journal.phase
        ));
    } else {
        out.headline("abandoning the undo");
    }
    let reason = "the undo was abandoned by an operator (kiln recover --abandon)";
    let mut marked = Vec::new();
    for record in log.records.iter_mut().filter(|r| {
        r.status == Status::Running
            || journal.as_ref().is_some_and(|j| {
                !committed && j.action == "deploy" && j.release == r.id && r.status != Status::Good
            })
    }) {
        record.status = Status::Failed;
        record.finished = Some(Utc::now());
        record.failure = Some(reason.into());
        marked.push(record.id.clone());
    }
    log.save(&paths.release_log())?;
    Journal::remove(&path)?;
    for id in &marked {
        out.note(&format!("release {id} is marked failed in the release log"));
    }
    if let Some(journal) = journal.as_ref().filter(|_| !committed) {
        if journal.action == "rollback" {
            out.note(&format!(
                "the release log still names {} live",
                log.current.as_deref().unwrap_or("no release")
            ));
        }
        if let Some(snapshot) = journal.snapshot.as_ref().filter(|s| s.is_dir()) {
            out.note(&format!(
                "data/ as it was before is kept in {}",
                snapshot.display()
            ));
        }
    }
    out.note("the journal is removed; data/ and run/ were not touched: check them by hand");
    out.event(json!({"event": "abandoned", "outcome": "abandoned", "marked_failed": marked}));
    out.close_logs();
    Ok(true)
}
