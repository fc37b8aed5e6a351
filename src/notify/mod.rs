//! Telling people what happened (README.md, "Notifications"): a mail and a webhook POST per
//! deploy, rollback and alert, to the recipients node.yml and project.yml name. A deploy only
//! writes its [`message::Message`] to the [`spool`] and starts a detached `kiln notify deliver`
//! ([`deliver`]), so that no mail server or webhook can change a deploy's outcome, exit status
//! or the time its last line reaches the pusher. [`alert`] is the side the process supervisor
//! calls.

pub mod alert;
pub mod deliver;
pub mod error;
pub mod mail;
pub mod message;
pub mod spool;
pub mod webhook;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::Utc;

use crate::config::notify_config::NotifyEvent;
use crate::config::pillar::Pillar;
use crate::config::project::{Node, Project};
use crate::config::settings;
use crate::exec::redact::Redactor;
pub use crate::notify::error::NotifyError;
use crate::notify::message::{
    FailureInfo, LOG_TAIL_LINES, Message, Outcome, Pusher, StageDuration,
};
use crate::notify::spool::{Channel, Entry, Target};

/// A notification ready to spool.
pub struct Outgoing {
    /// Unique within the project (the deploy's log name, or `alert-...`).
    pub id: String,
    /// The deploy's or rollback's name in logs/, where its results go.
    pub log: Option<String>,
    /// Already masked.
    pub message: Message,
    /// The mail address of the deployed commit's author, if it is to be mailed too.
    pub author: Option<String>,
}

/// Who gets the project's notifications of `event` (deduplicated): project.yml's recipients,
/// node.yml's webhooks, and the commit's author when node.yml or project.yml say so.
pub fn targets(
    node: &Node,
    project: &Project,
    event: NotifyEvent,
    author: Option<&str>,
) -> Vec<Target> {
    let notify = &node.config.notify;
    let ours = &project.config.notify;
    let on = ours.on.as_ref().unwrap_or(&notify.on);
    if !on.contains(&event) {
        return Vec::new();
    }
    let budget = notify.attempts;
    let mut mail: Vec<String> = ours.mail().map(str::to_string).collect();
    if ours.author.unwrap_or(notify.author)
        && let Some(author) = author.filter(|a| a.contains('@'))
    {
        mail.push(author.to_string());
    }
    let mut targets: Vec<Target> = Vec::new();
    for address in mail {
        if !targets.iter().any(|t| t.to.eq_ignore_ascii_case(&address)) {
            targets.push(Target::new(Channel::Mail, address, None, budget));
        }
    }
    for hook in notify.webhooks.iter().chain(ours.webhooks()) {
        if !targets.iter().any(|t| t.to == hook.url) {
            targets.push(Target::new(
                Channel::Webhook,
                hook.url.clone(),
                hook.secret.clone(),
                budget,
            ));
        }
    }
    targets
}

/// Spools `outgoing` for the project's recipients of its event and starts the background
/// delivery, which also sends whatever earlier notifications left in the spool. Returns the
/// recipients (none: nobody is to hear about it).
pub fn send(
    node: &Node,
    project: &Project,
    outgoing: Outgoing,
) -> Result<Vec<Target>, NotifyError> {
    let targets = targets(
        node,
        project,
        outgoing.message.event,
        outgoing.author.as_deref(),
    );
    if !targets.is_empty() {
        let entry = Entry::new(outgoing.id, outgoing.log, outgoing.message, targets.clone());
        spool::save(&node.root, &entry)?;
    }
    if !spool::entry_paths(&node.root, None).is_empty() {
        spawn_deliverer(node)?;
    }
    Ok(targets)
}

/// Starts `kiln notify deliver` detached: no stdio of ours (git's receive-pack waits for
/// every holder of the hook's output to close it), and its own session (setsid, done by the
/// child), so neither the pusher hanging up nor our exit stops it. A thread reaps it if this
/// process outlives it (the supervisor daemon).
pub fn spawn_deliverer(node: &Node) -> Result<(), NotifyError> {
    let program = crate::fs::exe::kiln().map_err(|source| NotifyError::Spawn {
        program: PathBuf::from("kiln"),
        source,
    })?;
    let mut command = Command::new(&program);
    command
        .arg("--root")
        .arg(&node.root)
        .args(["notify", "deliver"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GIT_") {
            command.env_remove(key);
        }
    }
    let mut child = command
        .spawn()
        .map_err(|source| NotifyError::Spawn { program, source })?;
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(())
}

/// The project's pillar secrets, to mask what notifications say.
pub fn project_redactor(project: &Project) -> Redactor {
    let secrets = Pillar::current(&project.paths)
        .ok()
        .and_then(|pillar| pillar.settings)
        .map(|settings| settings::secrets(&settings))
        .unwrap_or_default();
    Redactor::new(&secrets)
}

/// How a deploy or rollback ended, for [`finished`].
pub struct Finished<'a> {
    pub event: NotifyEvent,
    pub outcome: Outcome,
    /// One line for the subject: `deployed 20261123T101500Z-3f2a9c1e (a1b2c3d)`.
    pub summary: String,
    /// The push's last line.
    pub headline: String,
    pub release: Option<&'a str>,
    /// The deployed commit, for its subject line and author.
    pub commit: Option<(&'a git2::Repository, git2::Oid)>,
    pub who: &'a str,
    pub who_key: Option<&'a str>,
    pub stages: Vec<StageDuration>,
    pub duration: Option<Duration>,
    pub failure: Option<FailureInfo>,
    /// The name of its log in logs/ (also the spool entry's id).
    pub log_name: Option<&'a str>,
    /// The deploy's redactor: secrets are masked exactly as in the push output.
    pub redactor: &'a Redactor,
}

/// Notifies the end of a deploy or rollback: the message (with the last lines of its log) is
/// spooled for the project's recipients and sent in the background.
pub fn finished(node: &Node, project: &Project, end: Finished) -> Result<Vec<Target>, NotifyError> {
    let paths = &project.paths;
    let log = end.log_name.map(|name| paths.log_file(name));
    let log_tail = log
        .as_ref()
        .and_then(|path| std::fs::read(path).ok())
        .map(|bytes| message::tail(&String::from_utf8_lossy(&bytes), LOG_TAIL_LINES))
        .unwrap_or_default();
    let commit = end.commit.map(|(repo, oid)| {
        let author = repo
            .find_commit(oid)
            .ok()
            .and_then(|c| c.author().email().ok().map(str::to_string));
        (oid, crate::fs::git::summary(repo, oid), author)
    });
    let message = Message {
        event: end.event,
        outcome: end.outcome,
        project: paths.name.clone(),
        environment: project
            .config
            .environment(&node.config)
            .as_str()
            .to_string(),
        mode: project.config.mode.as_str().to_string(),
        host: message::host_name(),
        summary: end.summary,
        headline: end.headline,
        release: end.release.map(str::to_string),
        commit: commit.as_ref().map(|(oid, _, _)| oid.to_string()),
        short_commit: commit
            .as_ref()
            .map(|(oid, _, _)| crate::fs::git::short(*oid)),
        commit_subject: commit.as_ref().map(|(_, subject, _)| subject.clone()),
        pusher: Some(Pusher {
            who: end.who.to_string(),
            key: end.who_key.map(str::to_string),
        }),
        stages: end.stages,
        duration_ms: end.duration.map(|d| d.as_millis() as u64),
        failure: end.failure,
        log,
        log_name: end.log_name.map(str::to_string),
        log_tail,
        time: Utc::now(),
    }
    .redacted(end.redactor);
    let id = end.log_name.map(str::to_string).unwrap_or_else(|| {
        format!(
            "{}-{}",
            end.outcome.as_str(),
            Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        )
    });
    send(
        node,
        project,
        Outgoing {
            id,
            log: end.log_name.map(str::to_string),
            message,
            author: commit.and_then(|(_, _, author)| author),
        },
    )
}
