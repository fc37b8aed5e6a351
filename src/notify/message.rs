//! What a notification says, whichever way it travels: one [`Message`] per deploy, rollback or
//! alert, rendered as a mail (subject and plain-text body) or a webhook's JSON document with
//! a Slack/Mattermost `text`. Every string in it has been through the deploy's redactor
//! before it is spooled, so pillar secrets are masked exactly as in the push output.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::notify_config::NotifyEvent;
use crate::exec::redact::Redactor;
pub use crate::exec::report::StageDuration;
use crate::exec::report::seconds;

/// How many lines of the deploy log a mail carries.
pub const LOG_TAIL_LINES: usize = 50;

/// What happened, in one word (docs/events.md lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A deploy went live.
    Deployed,
    /// A deploy (or a `kiln rollback`) failed and everything was put back.
    Failed,
    /// A deploy failed and undoing it failed too: an operator must look (exit 3).
    RollbackFailed,
    /// A deploy did not start: recovering the one before it failed.
    NotDeployed,
    /// `kiln rollback` took an older release live.
    RolledBack,
    /// A process restarted more often than node.yml's `notify.alerts` allow.
    CrashLooping,
    /// The web check started failing after a deploy.
    CheckFailing,
    /// What an alert was about is fine again.
    Recovered,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Deployed => "deployed",
            Outcome::Failed => "failed",
            Outcome::RollbackFailed => "rollback_failed",
            Outcome::NotDeployed => "not_deployed",
            Outcome::RolledBack => "rolled_back",
            Outcome::CrashLooping => "crash_looping",
            Outcome::CheckFailing => "check_failing",
            Outcome::Recovered => "recovered",
        }
    }
}

/// Where a deploy stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureInfo {
    pub stage: String,
    /// The project command that failed, when a command failed.
    pub command: Option<String>,
    pub exit_code: Option<i32>,
    /// The whole reason, as the release log keeps it.
    pub reason: String,
}

/// Who pushed: the user, and the fingerprint of their SSH key when they came in over SSH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pusher {
    pub who: String,
    pub key: Option<String>,
}

/// One notification, as spooled and as sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Which `on:` setting selects it.
    pub event: NotifyEvent,
    pub outcome: Outcome,
    pub project: String,
    pub environment: String,
    pub mode: String,
    /// The node it happened on.
    pub host: String,
    /// One line saying what happened: the subject after `[kiln] <project> (<environment>): `.
    pub summary: String,
    /// The push's last line (for a deploy) or the alert's detail.
    pub headline: String,
    pub release: Option<String>,
    pub commit: Option<String>,
    pub short_commit: Option<String>,
    /// The first line of the commit message.
    pub commit_subject: Option<String>,
    pub pusher: Option<Pusher>,
    pub stages: Vec<StageDuration>,
    pub duration_ms: Option<u64>,
    pub failure: Option<FailureInfo>,
    /// logs/<name>.log of the deploy or rollback.
    pub log: Option<PathBuf>,
    /// The name `kiln logs <project> <name>` takes.
    pub log_name: Option<String>,
    /// The last [`LOG_TAIL_LINES`] lines of the log (for mail only).
    pub log_tail: Vec<String>,
    pub time: DateTime<Utc>,
}

impl Message {
    /// Every string masked by `redactor` (the log tail already is: the log is written
    /// redacted; the commit subject or a failing command may not be).
    pub fn redacted(self, redactor: &Redactor) -> Message {
        if redactor.is_empty() {
            return self;
        }
        let value = serde_json::to_value(&self).unwrap_or(Value::Null);
        let masked = crate::exec::report::redact_value(value, redactor);
        serde_json::from_value(masked).unwrap_or(self)
    }

    /// `[kiln] shop (staging): deployed 20261123T101500Z-3f2a9c1e (a1b2c3d)`
    pub fn subject(&self) -> String {
        format!(
            "[kiln] {} ({}): {}",
            self.project, self.environment, self.summary
        )
    }

    /// The text of a chat message: one line, plus the failure on a second.
    pub fn chat_text(&self) -> String {
        let mut text = format!(
            "*{}* ({}): {}",
            self.project, self.environment, self.summary
        );
        if let Some(pusher) = &self.pusher {
            let _ = write!(text, " by {}", pusher.who);
        }
        if let Some(ms) = self.duration_ms {
            let _ = write!(text, " in {}", seconds(Duration::from_millis(ms)));
        }
        if let Some(failure) = &self.failure {
            let _ = write!(text, "\n{}: {}", failure.stage, failure.reason);
        }
        text
    }

    /// The plain-text body of a mail.
    pub fn mail_body(&self) -> String {
        let mut body = format!("{}\n\n", self.headline);
        let mut field = |name: &str, value: &str| {
            let _ = writeln!(body, "{:<13}{value}", format!("{name}:"));
        };
        field(
            "project",
            &format!(
                "{} ({}, {} mode)",
                self.project, self.environment, self.mode
            ),
        );
        field("outcome", self.outcome.as_str());
        if let Some(release) = &self.release {
            field("release", release);
        }
        if let Some(commit) = &self.commit {
            let subject = self.commit_subject.as_deref().unwrap_or("");
            field("commit", format!("{commit} {subject}").trim_end());
        }
        if let Some(pusher) = &self.pusher {
            let who = match &pusher.key {
                Some(key) => format!("{} ({key})", pusher.who),
                None => pusher.who.clone(),
            };
            field("pushed by", &who);
        }
        if let Some(failure) = &self.failure {
            field("failed at", &failure.stage);
            if let Some(command) = &failure.command {
                field("command", command);
            }
            if let Some(code) = failure.exit_code {
                field("exit code", &code.to_string());
            }
            field("reason", &failure.reason);
        }
        if let Some(ms) = self.duration_ms {
            field("took", &seconds(Duration::from_millis(ms)));
        }
        if let Some(log) = &self.log {
            let how = self
                .log_name
                .as_ref()
                .map(|name| format!(" (`kiln logs {} {name}`)", self.project))
                .unwrap_or_default();
            field("log", &format!("{}{how}", log.display()));
        }
        field("node", &self.host);
        field("at", &self.time.format("%Y-%m-%d %H:%M:%S UTC").to_string());
        if !self.stages.is_empty() {
            body.push_str("\nstages:\n");
            for stage in &self.stages {
                let _ = writeln!(body, "  {:<13}{}", stage.stage, seconds(stage.took()));
            }
        }
        if !self.log_tail.is_empty() {
            let _ = writeln!(body, "\nthe last {} lines of the log:", self.log_tail.len());
            for line in &self.log_tail {
                let _ = writeln!(body, "  {line}");
            }
        }
        body
    }

    /// The webhook's JSON document: the message without the log tail (chat services show
    /// `text`; the log stays on the node), plus `text` and a format number.
    pub fn webhook_json(&self) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or_else(|_| json!({}));
        if let Value::Object(map) = &mut value {
            map.remove("log_tail");
            map.insert("text".into(), Value::String(self.chat_text()));
            map.insert("format".into(), json!(1));
        }
        value
    }
}

/// The last `n` lines of `text`, without trailing blank lines.
pub fn tail(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|line| line.to_string())
        .collect()
}

/// This machine's name, for the reader of a mail from one of many nodes.
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
pub(crate) fn example() -> Message {
    Message {
        event: NotifyEvent::Failure,
        outcome: Outcome::Failed,
        project: "shop".into(),
        environment: "staging".into(),
        mode: "cooking".into(),
        host: "node1".into(),
        summary: "FAILED at build: 20261123T101500Z-3f2a9c1e (a1b2c3d), rolled back".into(),
        headline: "deploy FAILED at build (make: exit 2); rolled back to 20261122T101500Z-9c0d1e2f"
            .into(),
        release: Some("20261123T101500Z-3f2a9c1e".into()),
        commit: Some("a1b2c3d4e5f60718293a4b5c6d7e8f9012345678".into()),
        short_commit: Some("a1b2c3d".into()),
        commit_subject: Some("Print hunter22".into()),
        pusher: Some(Pusher {
            who: "ann".into(),
            key: Some("SHA256:abc".into()),
        }),
        stages: vec![
            StageDuration {
                stage: "gather".into(),
                duration_ms: 12,
            },
            StageDuration {
                stage: "build".into(),
                duration_ms: 4210,
            },
        ],
        duration_ms: Some(4300),
        failure: Some(FailureInfo {
            stage: "build".into(),
            command: Some("make".into()),
            exit_code: Some(2),
            reason: "make: exit 2".into(),
        }),
        log: Some(PathBuf::from(
            "/srv/projects/shop/logs/20261123T101500Z-3f2a9c1e.log",
        )),
        log_name: Some("20261123T101500Z-3f2a9c1e".into()),
        log_tail: vec!["       $ make".into(), "       hunter22 leaked".into()],
        time: DateTime::parse_from_rfc3339("2026-11-23T10:15:04Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_and_body_say_what_happened() {
        let message = example();
        assert_eq!(
            message.subject(),
            "[kiln] shop (staging): FAILED at build: 20261123T101500Z-3f2a9c1e (a1b2c3d), rolled back"
        );
        let body = message.mail_body();
        for expected in [
            "deploy FAILED at build (make: exit 2); rolled back to 20261122T101500Z-9c0d1e2f\n\n",
            "pushed by:   ann (SHA256:abc)\n",
            "failed at:   build\n",
            "command:     make\n",
            "exit code:   2\n",
            "took:        4.3s\n",
            "log:         /srv/projects/shop/logs/20261123T101500Z-3f2a9c1e.log (`kiln logs shop 20261123T101500Z-3f2a9c1e`)\n",
            "  build        4.2s\n",
            "the last 2 lines of the log:\n",
        ] {
            assert!(body.contains(expected), "missing {expected:?} in:\n{body}");
        }
    }

    #[test]
    fn redaction_reaches_every_string() {
        let message = example().redacted(&Redactor::new(&["hunter22".to_string()]));
        let text = serde_json::to_string(&message).expect("serializes");
        assert!(!text.contains("hunter22"), "{text}");
        assert_eq!(message.commit_subject.as_deref(), Some("Print ********"));
        assert_eq!(message.duration_ms, Some(4300), "numbers stay numbers");
    }

    #[test]
    fn the_webhook_document_has_the_documented_fields_and_no_log_tail() {
        let value = example().webhook_json();
        for field in [
            "project",
            "environment",
            "outcome",
            "release",
            "commit",
            "pusher",
            "stages",
            "log",
            "text",
            "event",
            "failure",
        ] {
            assert!(value.get(field).is_some(), "{field} missing: {value}");
        }
        assert!(value.get("log_tail").is_none());
        assert_eq!(value["stages"][1]["duration_ms"], 4210);
        assert_eq!(
            value["text"],
            "*shop* (staging): FAILED at build: 20261123T101500Z-3f2a9c1e (a1b2c3d), rolled back by ann in 4.3s\nbuild: make: exit 2"
        );
    }

    /// docs/events.md shows the document with exactly the fields kiln sends.
    #[test]
    fn the_documented_document_has_the_fields_kiln_sends() {
        let doc = include_str!("../../docs/events.md");
        let json = doc
            .split("```json\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("docs/events.md has a json block");
        let documented: Value = serde_json::from_str(json).expect("the example is JSON");
        let keys = |value: &Value| -> Vec<String> {
            value
                .as_object()
                .map(|map| map.keys().cloned().collect())
                .unwrap_or_default()
        };
        let sent = example().webhook_json();
        assert_eq!(keys(&documented), keys(&sent));
        assert_eq!(keys(&documented["failure"]), keys(&sent["failure"]));
        assert_eq!(documented["text"], sent["text"]);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let text: String = (1..=60).map(|i| format!("line {i}\n")).collect();
        let last = tail(&text, LOG_TAIL_LINES);
        assert_eq!(last.len(), 50);
        assert_eq!(last[0], "line 11");
        assert_eq!(last[49], "line 60");
        assert_eq!(tail("a\nb\n\n", 5), ["a", "b"]);
    }
}
