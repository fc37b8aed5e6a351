//! What a deploy tells its audience: the pusher (live `remote:` lines through the hook's
//! stdout), logs/<release>.log (the same text) and logs/<release>.jsonl (structured events,
//! every one with the fields of docs/events.md). A pusher who disconnects must not stop the
//! deploy, so write errors to stdout are ignored.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::error::{Error, io_error};
use crate::exec::redact::Redactor;
use crate::exec::stage::{CommandSpec, OutputSink, StageError, Stream};

pub const INDENT: &str = "       ";

pub struct Reporter {
    stdout: Option<Box<dyn Write + Send>>,
    log: Option<File>,
    events: Option<File>,
    /// Text written before the log was opened, so the log holds the whole story.
    pending: Vec<u8>,
    /// Pillar secrets never leave kiln: everything written is redacted (stage output already
    /// is, line by line, by the runner; this also covers kiln's own lines and events).
    redactor: Redactor,
    /// What every event says about where it happened.
    context: EventContext,
    /// What `kiln deploy --json` reports once the run is over.
    timeline: Timeline,
}

/// The release a run worked on and how long each of its stages took: the one record of stage
/// times, kept with the audience because a failed deploy returns only its error. Everything
/// that shows stage times reads it: the `stage_end` events, `kiln deploy --json`
/// (src/deploy/outcome.rs, with the failed stage and the rollback) and, through
/// [`Timeline::stage_durations`], the release log (`kiln status`, `kiln releases`) and the
/// notifications.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// The release id the run picked (a deploy) or took live (a rollback).
    pub release: Option<String>,
    /// The release live when the run started.
    pub previous: Option<String>,
    /// Finished steps in order; a stage that failed is the last stage, with `failed` set.
    steps: Vec<TimedStep>,
    open: Option<(String, Instant)>,
}

/// One finished step of a run: a stage, or the undo after a failure.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedStep {
    pub name: String,
    pub took: Duration,
    pub failed: bool,
    /// A pipeline stage (`gather` ... `post_deploy`), not the undo (`rollback`).
    pub is_stage: bool,
}

impl Timeline {
    /// Every finished step in order, the stages and then the undo of a failed run.
    pub fn steps(&self) -> &[TimedStep] {
        &self.steps
    }

    /// The stages so far, as the release log and notifications keep them: the finished ones
    /// (the failed one last), then the one still running with its time until now.
    pub fn stage_durations(&self) -> Vec<StageDuration> {
        let finished = self
            .steps
            .iter()
            .filter(|step| step.is_stage)
            .map(|step| (step.name.clone(), step.took));
        let running = self
            .open
            .as_ref()
            .map(|(stage, started)| (stage.clone(), started.elapsed()));
        finished
            .chain(running)
            .map(|(stage, took)| StageDuration {
                stage,
                duration_ms: millis(took),
            })
            .collect()
    }

    fn close(&mut self, failed: bool) -> Option<TimedStep> {
        let (name, started) = self.open.take()?;
        let step = TimedStep {
            name,
            took: started.elapsed(),
            failed,
            is_stage: true,
        };
        self.steps.push(step.clone());
        Some(step)
    }
}

/// The fields every event carries (docs/events.md), null where they do not apply; an event
/// may add its own after them.
pub const EVENT_FIELDS: [&str; 10] = [
    "time",
    "project",
    "release",
    "event",
    "stage",
    "command",
    "exit_code",
    "duration_ms",
    "outcome",
    "notification",
];

/// How long one stage of a deploy took, as the release log and notifications keep it (a
/// view of the run's [`Timeline`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StageDuration {
    pub stage: String,
    pub duration_ms: u64,
}

impl StageDuration {
    pub fn took(&self) -> Duration {
        Duration::from_millis(self.duration_ms)
    }
}

/// Where an event happens: filled into every event that does not say otherwise.
#[derive(Debug, Clone, Default)]
pub struct EventContext {
    pub project: Option<String>,
    /// The correlation id: the release being deployed (or rolled back to).
    pub release: Option<String>,
    pub stage: Option<String>,
    /// The project command running, for its output.
    pub command: Option<String>,
}

/// `value` (an object with at least `event`) with every field of [`EVENT_FIELDS`], taken
/// from `context` (and the clock) where `value` does not give it, and every string redacted.
pub fn event_record(
    context: &EventContext,
    value: serde_json::Value,
    redactor: &Redactor,
) -> serde_json::Value {
    use serde_json::Value;
    let text = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String);
    let mut record = serde_json::Map::new();
    for field in EVENT_FIELDS {
        let default = match field {
            "time" => Value::String(now()),
            "project" => text(&context.project),
            "release" => text(&context.release),
            "stage" => text(&context.stage),
            "command" => text(&context.command),
            _ => Value::Null,
        };
        record.insert(field.to_string(), default);
    }
    if let Value::Object(given) = value {
        record.extend(given);
    }
    redact_value(Value::Object(record), redactor)
}

impl Reporter {
    pub fn to_stdout() -> Reporter {
        Reporter {
            stdout: Some(Box::new(std::io::stdout())),
            log: None,
            events: None,
            pending: Vec::new(),
            redactor: Redactor::default(),
            context: EventContext::default(),
            timeline: Timeline::default(),
        }
    }

    /// Progress on stderr, for `--json`, whose one result owns stdout.
    pub fn to_stderr() -> Reporter {
        Reporter {
            stdout: Some(Box::new(std::io::stderr())),
            ..Reporter::silent()
        }
    }

    pub fn silent() -> Reporter {
        Reporter {
            stdout: None,
            log: None,
            events: None,
            pending: Vec::new(),
            redactor: Redactor::default(),
            context: EventContext::default(),
            timeline: Timeline::default(),
        }
    }

    /// Starts writing logs/<release>.log and .jsonl (appending: a recovery adds to the log of
    /// the release it undoes).
    pub fn open_logs(&mut self, log: &Path, events: &Path) -> Result<(), Error> {
        let open = |path: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| io_error("open", path, e))
        };
        let mut file = open(log)?;
        let _ = file.write_all(&self.pending);
        self.pending.clear();
        self.log = Some(file);
        self.events = Some(open(events)?);
        Ok(())
    }

    pub fn set_redactor(&mut self, redactor: Redactor) {
        self.redactor = redactor;
    }

    /// The project and release every following event names.
    pub fn set_context(&mut self, project: &str, release: &str) {
        self.context = EventContext {
            project: Some(project.to_string()),
            release: Some(release.to_string()),
            stage: None,
            command: None,
        };
    }

    /// A line for logs/<release>.log only, after the push's last line (which must stay last
    /// for the pusher).
    pub fn log_only(&mut self, text: &str) {
        if let Some(log) = &mut self.log {
            let line = format!("{INDENT}{text}\n");
            let redacted = self.redactor.redact(line.as_bytes());
            let _ = log.write_all(&redacted);
        }
    }

    pub fn close_logs(&mut self) {
        self.log = None;
        self.events = None;
    }

    fn write_text(&mut self, bytes: &[u8]) {
        let redacted = self.redactor.redact(bytes);
        let bytes = redacted.as_ref();
        if let Some(out) = &mut self.stdout {
            // A closed pipe (the pusher went away) must not abort the deploy.
            if out.write_all(bytes).and_then(|_| out.flush()).is_err() {
                self.stdout = None;
            }
        }
        match &mut self.log {
            Some(log) => {
                let _ = log.write_all(bytes);
            }
            None => self.pending.extend_from_slice(bytes),
        }
    }

    pub fn event(&mut self, value: serde_json::Value) {
        if let Some(events) = &mut self.events {
            let value = event_record(&self.context, value, &self.redactor);
            let mut line = serde_json::to_vec(&value).unwrap_or_default();
            line.push(b'\n');
            let _ = events.write_all(&line);
        }
    }

    /// `-----> text`
    pub fn headline(&mut self, text: &str) {
        self.write_text(format!("-----> {text}\n").as_bytes());
    }

    /// An indented line under the current header.
    pub fn note(&mut self, text: &str) {
        self.write_text(format!("{INDENT}{text}\n").as_bytes());
    }

    pub fn stage_start(&mut self, stage: &str) {
        self.timeline.open = Some((stage.to_string(), Instant::now()));
        self.headline(stage);
        self.context.stage = Some(stage.to_string());
        self.event(json!({"event": "stage_start"}));
    }

    /// The stage started last ended well: its time goes to the timeline, the pusher and the
    /// `stage_end` event.
    pub fn stage_end(&mut self) {
        let Some(step) = self.timeline.close(false) else {
            return;
        };
        self.note(&format!("{} done in {}", step.name, seconds(step.took)));
        self.event(
            json!({"event": "stage_end", "stage": step.name, "outcome": "ok",
            "duration_ms": millis(step.took)}),
        );
        self.context.stage = None;
    }

    /// The stage started and not ended failed: it ends now (before the rollback starts).
    pub fn stage_failed(&mut self) {
        self.timeline.close(true);
    }

    /// Records how long a step that is not a stage took (the undo of a failed run), for the
    /// JSON result, without printing anything.
    pub fn timed(&mut self, step: &str, took: Duration) {
        self.timeline.steps.push(TimedStep {
            name: step.to_string(),
            took,
            failed: false,
            is_stage: false,
        });
    }

    /// Where the pipeline notes the release and what was live before it.
    pub fn timeline_mut(&mut self) -> &mut Timeline {
        &mut self.timeline
    }

    /// The stages so far (see [`Timeline::stage_durations`]).
    pub fn stage_durations(&self) -> Vec<StageDuration> {
        self.timeline.stage_durations()
    }

    /// The timeline so far, a stage still open counted as failed.
    pub fn timeline(&mut self) -> Timeline {
        self.stage_failed();
        self.timeline.clone()
    }

    /// A project command (or kiln's run of the services, check, rollback commands) starts;
    /// `stage` is the stage, or `rollback`/`restore` for an undo.
    pub fn command(&mut self, stage: &str, command: &str) {
        self.note(&format!("$ {command}"));
        self.program_start(stage, command);
    }

    /// A program kiln runs for the stage itself (a buildpack's `bin/compile`, named by its
    /// label) starts: its `command` event, and the events of its output name it. No `$` line:
    /// what it prints says what it does.
    pub fn program_start(&mut self, stage: &str, label: &str) {
        self.context.command = Some(label.to_string());
        self.event(json!({"event": "command", "stage": stage}));
    }

    /// The command announced by [`Reporter::command`] or [`Reporter::program_start`] ended:
    /// well (`failed` None) or as `failed` says, its `command_end` event with `exit_code`
    /// (None when it was killed or did not run) and `outcome` (`ok`, `exit`, `signal`,
    /// `timeout`, `not_run`).
    pub fn command_end(&mut self, stage: &str, failed: Option<&StageError>, took: Duration) {
        let (exit_code, outcome) = match failed {
            None => (Some(0), "ok"),
            Some(e) => (e.exit_code(), e.outcome()),
        };
        self.event(
            json!({"event": "command_end", "stage": stage, "exit_code": exit_code,
            "outcome": outcome, "duration_ms": millis(took)}),
        );
        self.context.command = None;
    }

    /// Runs a project command as the pusher and the events see it: its `$` line, its output,
    /// its `command` and `command_end` events.
    pub fn run(&mut self, spec: &CommandSpec, redactor: &Redactor) -> Result<Duration, StageError> {
        self.command(spec.stage, spec.command);
        let started = Instant::now();
        let result = crate::exec::stage::run_command(spec, redactor, self);
        self.command_end(spec.stage, result.as_ref().err(), started.elapsed());
        result
    }
}

impl Reporter {
    /// A line of a buildpack's output, shown the way Heroku shows it: the buildpack's own
    /// `-----> ` headers and ` !     ` warnings stay at the left edge and lines it indented
    /// itself are kept as they are; anything else is indented like a command's output.
    pub fn buildpack_line(&mut self, stream: Stream, line: &[u8]) {
        let own = [b"-----> " as &[u8], b" !     ", INDENT.as_bytes()];
        if own.iter().any(|start| line.starts_with(start)) {
            self.output_line(stream, b"", line);
        } else {
            self.output_line(stream, INDENT.as_bytes(), line);
        }
    }

    fn output_line(&mut self, stream: Stream, indent: &[u8], line: &[u8]) {
        let mut text = Vec::with_capacity(line.len() + 8);
        text.extend_from_slice(indent);
        text.extend_from_slice(line);
        text.push(b'\n');
        self.write_text(&text);
        if self.events.is_some() {
            let stream = match stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            };
            self.event(
                json!({"event": "output", "stream": stream, "line": String::from_utf8_lossy(line)}),
            );
        }
    }
}

impl OutputSink for Reporter {
    fn line(&mut self, stream: Stream, line: &[u8]) {
        self.output_line(stream, INDENT.as_bytes(), line);
    }
}

/// Redacts every string inside an event before it is encoded (JSON escaping could otherwise
/// hide a secret with quotes or backslashes from a redaction of the encoded text).
pub fn redact_value(value: serde_json::Value, redactor: &Redactor) -> serde_json::Value {
    use serde_json::Value;
    if redactor.is_empty() {
        return value;
    }
    match value {
        Value::String(s) => {
            Value::String(String::from_utf8_lossy(&redactor.redact(s.as_bytes())).into_owned())
        }
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| redact_value(v, redactor))
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, redact_value(v, redactor)))
                .collect(),
        ),
        other => other,
    }
}

/// A duration in whole milliseconds, as events give them.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(durations: &[StageDuration]) -> Vec<&str> {
        durations.iter().map(|d| d.stage.as_str()).collect()
    }

    /// One record serves both views: `--json` sees every step (the failed stage marked, the
    /// rollback after it), the release log and notifications only the stages.
    #[test]
    fn the_timeline_gives_the_json_steps_and_the_stage_durations() {
        let mut out = Reporter::silent();
        out.stage_start("gather");
        out.stage_end();
        out.stage_start("build");
        assert_eq!(
            names(&out.stage_durations()),
            ["gather", "build"],
            "running"
        );
        out.stage_failed();
        out.timed("rollback", Duration::from_millis(1500));
        assert_eq!(names(&out.stage_durations()), ["gather", "build"]);
        let timeline = out.timeline();
        let steps: Vec<(&str, bool, bool)> = timeline
            .steps()
            .iter()
            .map(|s| (s.name.as_str(), s.failed, s.is_stage))
            .collect();
        assert_eq!(
            steps,
            [
                ("gather", false, true),
                ("build", true, true),
                ("rollback", false, false)
            ]
        );
        assert_eq!(timeline.steps()[2].took, Duration::from_millis(1500));
        // A stage ended is not ended again, and nothing is open any more.
        out.stage_end();
        assert_eq!(out.timeline().steps().len(), 3);
    }

    #[test]
    fn seconds_are_shown_with_one_decimal() {
        assert_eq!(seconds(Duration::from_millis(4249)), "4.2s");
        let kept = StageDuration {
            stage: "build".into(),
            duration_ms: 50,
        };
        assert_eq!(seconds(kept.took()), "0.1s");
    }
}
