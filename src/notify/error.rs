//! How notifying can fail on kiln's side (the spool, starting the background delivery). What
//! a mail server or webhook answers is not an error of kiln's: it is a delivery's result.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("could not {action} `{}`: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("the notification spool entry `{}`: {message}", path.display())]
    Spool { path: PathBuf, message: String },

    #[error("could not start the background delivery `{} notify deliver`: {source}", program.display())]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
}

impl From<NotifyError> for crate::error::Error {
    fn from(e: NotifyError) -> Self {
        crate::error::Error::Notify(Box::new(e))
    }
}
