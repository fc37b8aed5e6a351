//! Every way kiln can fail, with the wording users see. Keeping the messages in one place keeps
//! them consistent: lowercase, naming the file, stage, command or release, saying what to do next.

use std::io;
use std::path::{Path, PathBuf};

use crate::config::config_error::ConfigError;

/// Exit statuses (docs/commands.md).
pub const EXIT_OK: i32 = 0;
pub const EXIT_DEPLOY_FAILED: i32 = 1;
pub const EXIT_BAD_INPUT: i32 = 2;
pub const EXIT_ROLLBACK_FAILED: i32 = 3;

/// The error of a mechanism above this module (a stage command, bake, unpack, fetch, signing),
/// boxed so that this module, which every other one imports, imports none of them: each
/// converts its own error type with a `From` impl next to it. The message and the causes are
/// the mechanism's own, unchanged.
pub type MechanismError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "`{name}` is not a valid project name: use 1 to 63 lowercase letters, digits, `.`, `_` or `-`, starting with a letter or digit"
    )]
    BadName { name: String },

    #[error("`{value}` is not a mode: use `editable`, `cooking` or `final`")]
    BadMode { value: String },

    #[error("project `{name}` does not exist under `{}`: create it with `kiln init {name}`", root.display())]
    NoProject { name: String, root: PathBuf },

    #[error("{}: {message}", file.display())]
    BadLayout { file: PathBuf, message: String },

    #[error("{0}")]
    Config(#[from] ConfigError),

    #[error("{0}")]
    Settings(#[from] crate::config::settings::SettingsError),

    #[error("could not {action} `{}`: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error("git: could not {action}: {}", source.message())]
    Git { action: String, source: git2::Error },

    #[error("unknown revision `{rev}` in `{}`", repo.display())]
    UnknownRev { rev: String, repo: PathBuf },

    #[error(
        "project/ has uncommitted manual edits ({}): commit them to the repo or remove them, then push again",
        files.join(", ")
    )]
    LocalEdits { files: Vec<String> },

    #[error("manual edits found in run/ ({}) and kiln.yml says `drift: refuse`: save or undo them, then deploy again", files.join(", "))]
    DriftRefused { files: Vec<String> },

    #[error("unknown release `{release}` of project `{project}`")]
    UnknownRelease { project: String, release: String },

    #[error("release {release} {status}; only good releases can be rolled back to")]
    NotGoodRelease {
        release: String,
        status: &'static str,
    },

    #[error("no good release of project `{project}` to roll back to")]
    NothingToRollBack { project: String },

    #[error("{0}")]
    Stage(#[source] MechanismError),

    #[error("{0}")]
    Sync(#[from] crate::fs::sync::SyncError),

    #[error("{0}")]
    Tree(#[from] crate::fs::tree::TreeError),

    #[error("{0}")]
    Bake(#[source] MechanismError),

    #[error("{0}")]
    Unpack(#[source] MechanismError),

    #[error("{0}")]
    Fetch(#[source] MechanismError),

    #[error("{0}")]
    Signing(#[source] MechanismError),

    /// The S3-compatible release store (src/release/s3.rs).
    #[error("{0}")]
    Store(#[source] MechanismError),

    /// Buildpacks and the build cache (src/runtime/): a buildpack not found, not applying,
    /// or failing; a clone that failed.
    #[error("{0}")]
    Buildpack(#[source] MechanismError),

    /// SSH access (src/access/): a refused request, authorized_keys, node.yml's users.
    #[error("{0}")]
    Access(#[source] MechanismError),

    /// The app's processes (src/runtime/): the supervisor, its backends, a process that does
    /// not come up.
    #[error("{0}")]
    Runtime(#[source] MechanismError),

    /// Notifications (src/notify/): the spool, starting the background delivery.
    #[error("{0}")]
    Notify(#[source] MechanismError),

    /// `kiln notify retry` left notifications undelivered: exit 1.
    #[error(
        "{count} notification(s) did not reach every recipient and stay in the spool: fix the cause shown above, then run `kiln notify retry{}` again",
        project.as_ref().map(|name| format!(" {name}")).unwrap_or_default()
    )]
    Undelivered {
        count: usize,
        project: Option<String>,
    },
    /// The front door (src/proxy/): nginx refused a configuration, or could not be run.
    #[error("{0}")]
    Proxy(#[source] MechanismError),

    #[error("{message}")]
    Refused { message: String },

    /// `kiln restart`, `ps scale` or `start` started processes that did not come up: exit 1.
    /// They keep running under the supervisor, which restarts them.
    #[error(
        "the processes of `{project}` did not come up: {reason}; the supervisor keeps restarting them (`kiln ps {project}`, `kiln logs {project} --app`)"
    )]
    NotUp { project: String, reason: String },

    /// `kiln stop` or `kiln start` ran the live release's `services.stop`/`start`, which
    /// failed: exit 1.
    #[error(
        "`services.{which}` of `{project}` failed: {reason}; fix it, then run `kiln {which} {project}` again"
    )]
    Services {
        project: String,
        which: &'static str,
        reason: String,
    },

    /// The deploy failed and everything was put back: exit 1.
    #[error("deploy FAILED at {stage} ({reason}); {outcome}")]
    DeployFailed {
        stage: String,
        reason: String,
        outcome: String,
    },

    /// Undoing a failed deploy failed too: an operator must look (exit 3).
    #[error("rollback FAILED: {reason}; {hint}")]
    RollbackFailed { reason: String, hint: String },

    /// A deploy did not start because finishing the interrupted or failed deploy before it
    /// failed: nothing changed, and nothing deploys until an operator recovers the project.
    #[error(
        "NOT deployed: recovering the previous deploy failed: {cause}; run `kiln recover {project}` (or `kiln recover {project} --abandon`) then {then}"
    )]
    NotDeployed {
        project: String,
        cause: String,
        /// After the recovery: `` `kiln deploy <name>` ``, or `push again`.
        then: String,
        /// The exit status of the recovery's error.
        exit: i32,
    },

    #[error("{0}")]
    Usage(String),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::DeployFailed { .. }
            | Error::Undelivered { .. }
            | Error::NotUp { .. }
            | Error::Services { .. } => EXIT_DEPLOY_FAILED,
            Error::RollbackFailed { .. } => EXIT_ROLLBACK_FAILED,
            Error::NotDeployed { exit, .. } => *exit,
            _ => EXIT_BAD_INPUT,
        }
    }
}

/// The error with its causes, once each: `cannot copy `x`: No space left on device`. Causes
/// a message already quotes are not repeated.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

pub fn io_error(action: &'static str, path: &Path, source: io::Error) -> Error {
    Error::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

pub fn git_error(action: impl Into<String>) -> impl FnOnce(git2::Error) -> Error {
    let action = action.into();
    move |source| Error::Git { action, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_adds_causes_once() {
        let sync = crate::fs::sync::SyncError::Io {
            action: "copy",
            path: PathBuf::from("a"),
            source: io::Error::other("disk full"),
        };
        assert_eq!(chain(&Error::Sync(sync)), "cannot copy `a`: disk full");
        let io = io_error("create", Path::new("b"), io::Error::other("denied"));
        assert_eq!(chain(&io), "could not create `b`: denied");
    }
}
