//! Sending what the spool holds. In the background (`kiln notify deliver`, started detached at
//! the end of a deploy): every due recipient is tried, failures are retried with a doubling
//! pause until node.yml's `notify.attempts` are used up, and recipients left failed by earlier
//! runs get one more try. By hand (`kiln notify retry`): one attempt per recipient still
//! waiting, now. Each attempt is recorded in the deploy's `logs/<log>.jsonl` (alerts:
//! `logs/alerts.jsonl`); a failure never reaches the deploy it belongs to.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::config::pillar::Pillar;
use crate::config::project::{Node, Project};
use crate::config::settings;
use crate::exec::redact::Redactor;
use crate::exec::report::{EventContext, event_record};
use crate::notify::error::NotifyError;
use crate::notify::mail;
use crate::notify::spool::{self, Channel, Entry, EntryLock, Status, Target};
use crate::notify::webhook::{self, Post};

/// The log of alert notifications, in the project's logs/.
pub const ALERTS_LOG: &str = "alerts.jsonl";

/// The longest pause between two attempts, however many there were.
const MAX_BACKOFF_DOUBLINGS: u32 = 6;

/// How attempts are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// The background delivery: retries with backoff within the budget.
    Automatic,
    /// `kiln notify retry`: one attempt, now.
    ByHand,
}

/// What one attempt came to.
struct Attempt {
    error: Option<String>,
    permanent: bool,
    took: Duration,
}

/// The background delivery: works until nothing in the spool is due any more, then exits.
/// Entries another process holds are left to it.
pub fn deliver_in_background(node: &Node) -> Result<(), NotifyError> {
    let mut flushed: HashSet<String> = HashSet::new();
    loop {
        let mut wake: Option<DateTime<Utc>> = None;
        for path in spool::entry_paths(&node.root, None) {
            let Some(_lock) = EntryLock::try_acquire(&path)? else {
                continue;
            };
            let Some(mut entry) = spool::load(&path)? else {
                continue;
            };
            // What earlier runs left failed gets one more try (the next deploy flushes).
            if flushed.insert(path.display().to_string()) {
                let mut again = false;
                for target in entry
                    .targets
                    .iter_mut()
                    .filter(|t| t.status == Status::Failed)
                {
                    target.status = Status::Pending;
                    target.budget = 1;
                    target.next_attempt = None;
                    again = true;
                }
                // Saved at once: the spool says it is being tried again while it is.
                if again {
                    spool::save(&node.root, &entry)?;
                }
            }
            work_on(node, &mut entry, Run::Automatic, &mut |_| {})?;
            if let Some(due) = entry
                .targets
                .iter()
                .filter(|t| t.status == Status::Pending)
                .filter_map(|t| t.next_attempt)
                .min()
            {
                wake = Some(wake.map_or(due, |w| w.min(due)));
            }
        }
        let Some(wake) = wake else {
            return Ok(());
        };
        // Sleep in short steps: a node root that disappears (a test's temp dir) ends the wait.
        while Utc::now() < wake {
            if !spool::spool_dir(&node.root).is_dir() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// What `kiln notify retry` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Retried {
    /// Recipients it delivered to.
    pub delivered: usize,
    /// Recipients it could not deliver to.
    pub failed: usize,
    /// Notifications left in the spool.
    pub left: usize,
}

/// `kiln notify retry [NAME]`: one attempt now for every recipient still waiting, of one
/// project or all; `say` gets one line per attempt.
pub fn retry(
    node: &Node,
    project: Option<&str>,
    say: &mut dyn FnMut(String),
) -> Result<Retried, NotifyError> {
    let mut retried = Retried::default();
    for path in spool::entry_paths(&node.root, project) {
        let _lock = EntryLock::acquire(&path)?;
        let Some(mut entry) = spool::load(&path)? else {
            continue;
        };
        let label = format!("{} {}", entry.project, entry.id);
        work_on(node, &mut entry, Run::ByHand, &mut |target: &Target| {
            let result = match (&target.status, &target.last_error) {
                (Status::Delivered, _) => {
                    retried.delivered += 1;
                    "delivered".to_string()
                }
                (_, error) => {
                    retried.failed += 1;
                    format!("failed: {}", error.as_deref().unwrap_or("unknown error"))
                }
            };
            say(format!(
                "{label}: {} to {}: {result}",
                target.channel.as_str(),
                target.shown()
            ));
        })?;
        if !entry.is_done() {
            retried.left += 1;
        }
    }
    Ok(retried)
}

/// Tries every due recipient of `entry`, saving it after each attempt; takes it out of the
/// spool once all have it. `attempted` sees each target after its attempt.
fn work_on(
    node: &Node,
    entry: &mut Entry,
    run: Run,
    attempted: &mut dyn FnMut(&Target),
) -> Result<(), NotifyError> {
    let project = node.project(&entry.project).ok();
    let redactor = project
        .as_ref()
        .map(crate::notify::project_redactor)
        .unwrap_or_default();
    let notify = &node.config.notify;
    for index in 0..entry.targets.len() {
        let now = Utc::now();
        let target = &entry.targets[index];
        let due = match run {
            Run::ByHand => target.status != Status::Delivered,
            Run::Automatic => {
                target.status == Status::Pending && target.next_attempt.is_none_or(|at| at <= now)
            }
        };
        if !due {
            continue;
        }
        let attempt = attempt(node, project.as_ref(), entry, target);
        let target = &mut entry.targets[index];
        record(target, &attempt, run, notify.backoff, Utc::now());
        log_attempt(node, project.as_ref(), entry, index, &attempt, &redactor);
        attempted(&entry.targets[index]);
        spool::save(&node.root, entry)?;
    }
    if entry.is_done() {
        spool::finish(&node.root, project.as_ref().map(|p| &p.paths), entry)?;
    }
    Ok(())
}

/// Applies an attempt's result to its target: delivered, or another try after a pause that
/// doubles each time, or failed once the budget is used up (at once for a permanent error or
/// an attempt by hand).
fn record(target: &mut Target, attempt: &Attempt, run: Run, backoff: Duration, now: DateTime<Utc>) {
    target.attempts += 1;
    match &attempt.error {
        None => {
            target.status = Status::Delivered;
            target.delivered_at = Some(now);
            target.last_error = None;
            target.next_attempt = None;
            target.budget = 0;
        }
        Some(error) => {
            target.last_error = Some(error.clone());
            target.budget = target.budget.saturating_sub(1);
            if run == Run::Automatic && !attempt.permanent && target.budget > 0 {
                let doublings = target.attempts.saturating_sub(1).min(MAX_BACKOFF_DOUBLINGS);
                let pause = backoff.saturating_mul(1 << doublings);
                target.status = Status::Pending;
                target.next_attempt =
                    Some(now + chrono::Duration::from_std(pause).unwrap_or_default());
            } else {
                target.status = Status::Failed;
                target.next_attempt = None;
                target.budget = 0;
            }
        }
    }
}

/// One attempt to deliver `entry` to `target`.
fn attempt(node: &Node, project: Option<&Project>, entry: &Entry, target: &Target) -> Attempt {
    let started = Instant::now();
    let notify = &node.config.notify;
    let result: Result<(), (String, bool)> = match target.channel {
        Channel::Mail => match &notify.smtp {
            None => Err((
                "node.yml has no `notify.smtp`: add the mail server, then `kiln notify retry`"
                    .to_string(),
                true,
            )),
            Some(smtp) => mail::send(smtp, notify.timeout, &target.to, &entry.message)
                .map_err(|e| (e.to_string(), e.is_permanent())),
        },
        Channel::Webhook => signing_key(node, project, target).and_then(|key| {
            let body = serde_json::to_vec(&entry.message.webhook_json()).unwrap_or_default();
            let shown = target.shown();
            webhook::post(&Post {
                url: &target.to,
                shown_url: &shown,
                body: &body,
                event: entry.message.event.as_str(),
                delivery: &format!("{}/{}", entry.project, entry.id),
                key: key.as_deref().map(str::as_bytes),
                timeout: notify.timeout,
            })
            .map_err(|e| (e.to_string(), e.is_permanent()))
        }),
    };
    let (error, permanent) = match result {
        Ok(()) => (None, false),
        Err((error, permanent)) => (Some(error), permanent),
    };
    Attempt {
        error,
        permanent,
        took: started.elapsed(),
    }
}

/// The webhook's HMAC key from the project's pillar, read now (so a rotated secret signs the
/// next attempt). A configured key that the pillar lacks is an error, never an unsigned POST.
fn signing_key(
    node: &Node,
    project: Option<&Project>,
    target: &Target,
) -> Result<Option<String>, (String, bool)> {
    let Some(key) = &target.secret else {
        return Ok(None);
    };
    let project = project.ok_or_else(|| {
        (
            "the project is gone, so its pillar cannot sign the webhook".to_string(),
            true,
        )
    })?;
    let pillar = Pillar::current(&project.paths).map_err(|e| (crate::error::chain(&e), false))?;
    let environment = project.config.environment(&node.config);
    let merged = settings::merge(
        json!({}),
        &serde_json::Map::new(),
        pillar.settings.as_ref(),
        environment.as_str(),
    );
    let value = key
        .split('.')
        .try_fold(&merged, |value, part| value.get(part))
        .and_then(|value| match value {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .filter(|value| !value.is_empty());
    match value {
        Some(value) => Ok(Some(value)),
        None => Err((
            format!(
                "the pillar of `{}` has no `{key}` to sign the webhook with: add it to pillar.yml, then `kiln notify retry {}`",
                project.paths.name, project.paths.name
            ),
            true,
        )),
    }
}

/// One `notification` event in the deploy's jsonl (or alerts.jsonl), appended.
fn log_attempt(
    node: &Node,
    project: Option<&Project>,
    entry: &Entry,
    index: usize,
    attempt: &Attempt,
    redactor: &Redactor,
) {
    let Some(project) = project else {
        return;
    };
    let _ = node;
    let target = &entry.targets[index];
    let path = match &entry.log {
        Some(log) => project.paths.events_file(log),
        None => project.paths.logs.join(ALERTS_LOG),
    };
    if !path.parent().is_some_and(Path::is_dir) {
        return;
    }
    let context = EventContext {
        project: Some(entry.project.clone()),
        release: entry.message.release.clone(),
        stage: None,
        command: None,
    };
    let value = event_record(
        &context,
        json!({
            "event": "notification",
            "outcome": target.status.as_str(),
            "duration_ms": attempt.took.as_millis() as u64,
            "notification": {
                "id": entry.id,
                "about": entry.message.outcome.as_str(),
                "channel": target.channel.as_str(),
                "to": target.shown(),
                "attempt": target.attempts,
                "status": target.status.as_str(),
                "error": target.last_error,
                "next_attempt": target.next_attempt,
            },
        }),
        redactor,
    );
    let mut line = serde_json::to_vec(&value).unwrap_or_default();
    line.push(b'\n');
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        // One write of a whole line: appends of other writers never split it.
        let _ = file.write_all(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing(permanent: bool) -> Attempt {
        Attempt {
            error: Some("no".into()),
            permanent,
            took: Duration::ZERO,
        }
    }

    #[test]
    fn failures_are_retried_with_a_doubling_pause_until_the_budget_is_used_up() {
        let now = Utc::now();
        let backoff = Duration::from_secs(5);
        let mut target = Target::new(Channel::Mail, "ops@example.com".into(), None, 3);
        record(&mut target, &failing(false), Run::Automatic, backoff, now);
        assert_eq!(target.status, Status::Pending);
        assert_eq!(
            target.next_attempt,
            Some(now + chrono::Duration::seconds(5))
        );
        record(&mut target, &failing(false), Run::Automatic, backoff, now);
        assert_eq!(
            target.next_attempt,
            Some(now + chrono::Duration::seconds(10))
        );
        record(&mut target, &failing(false), Run::Automatic, backoff, now);
        assert_eq!(
            (target.status, target.attempts, target.budget),
            (Status::Failed, 3, 0)
        );
        assert_eq!(target.last_error.as_deref(), Some("no"));
    }

    #[test]
    fn a_permanent_failure_or_a_retry_by_hand_is_not_retried_automatically() {
        let now = Utc::now();
        let mut target = Target::new(Channel::Webhook, "http://x/".into(), None, 4);
        record(
            &mut target,
            &failing(true),
            Run::Automatic,
            Duration::from_secs(1),
            now,
        );
        assert_eq!(target.status, Status::Failed);
        let mut by_hand = Target::new(Channel::Webhook, "http://x/".into(), None, 4);
        record(
            &mut by_hand,
            &failing(false),
            Run::ByHand,
            Duration::from_secs(1),
            now,
        );
        assert_eq!(by_hand.status, Status::Failed);
        let ok = Attempt {
            error: None,
            permanent: false,
            took: Duration::ZERO,
        };
        record(&mut by_hand, &ok, Run::ByHand, Duration::from_secs(1), now);
        assert_eq!(by_hand.status, Status::Delivered);
        assert_eq!((by_hand.attempts, by_hand.last_error.clone()), (2, None));
    }
}
