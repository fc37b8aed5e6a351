//! Who may come in over SSH and do what (README.md, "SSH access"). node.yml lists the users,
//! their keys and their rights per project; `kiln access` edits that list and writes the kiln
//! section of the node user's authorized_keys, where every key is forced to run `kiln ssh
//! <user>`. That forced command parses the client's request itself, without a shell, checks
//! the rights and only then runs git or kiln. An entry point beside `cli.rs`.

use std::path::PathBuf;

pub mod caller;
pub mod forced;
pub mod keys;
pub mod request;
pub mod shell;
pub mod users;

use crate::error::Error;

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// A request over SSH that kiln does not run: nothing ran.
    #[error("refused: {message}")]
    Refused { message: String },
    #[error(
        "user `{user}` is not in node.yml: ask an admin to add them (`kiln access add-key {user} <file>`)"
    )]
    UnknownUser { user: String },
    #[error("{}:{line}: {reason}", path.display())]
    BadAuthorizedKeys {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("cannot write the forced command for {what} `{}`: {reason}", path.display())]
    Unquotable {
        what: &'static str,
        path: PathBuf,
        reason: &'static str,
    },
    #[error("{reason}")]
    Edit { reason: String },
    #[error("could not {action} `{}`: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not run `{program}`: {source}")]
    Exec {
        program: String,
        source: std::io::Error,
    },
}

impl From<AccessError> for Error {
    fn from(e: AccessError) -> Self {
        Error::Access(Box::new(e))
    }
}

pub(crate) fn refused(message: impl Into<String>) -> AccessError {
    AccessError::Refused {
        message: message.into(),
    }
}

pub(crate) fn io(
    action: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> AccessError {
    let path = path.to_path_buf();
    move |source| AccessError::Io {
        action,
        path,
        source,
    }
}
