//! The front door: the nginx that routes each project's domains to its app (README.md,
//! "Domains and the front door"). [`site`] says what one project needs, [`nginx`] writes it as
//! nginx configuration, [`front_door`] installs it (tested with `nginx -t` first, the previous
//! configuration kept when the test fails, then a graceful reload) and runs the node-private
//! nginx, and [`domains`] is `kiln domains`. The deploy pipeline checks the new release's
//! configuration before it stops anything and installs it once the new release runs.

use std::io;
use std::path::PathBuf;

use crate::error::Error;

pub mod domains;
pub mod front_door;
pub mod nginx;
pub mod site;

/// Why the front door could not be configured or run.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// `nginx -t` refused the configuration; the files were put back as they were.
    #[error(
        "nginx refused the front door's configuration of `{project}`: {message}; the previous configuration is kept"
    )]
    Invalid { project: String, message: String },

    #[error(
        "could not run `{command}`: {source}; install nginx (Debian: `apt-get install nginx`) or set node.yml `proxy.nginx.binary`"
    )]
    Spawn { command: String, source: io::Error },

    #[error("`{command}` failed ({status}): {message}")]
    Command {
        command: String,
        status: String,
        message: String,
    },

    #[error("`{command}` did not finish within {seconds}s and was killed")]
    Timeout { command: String, seconds: u64 },

    #[error(
        "nginx did not take the new configuration within {seconds}s (no new worker process): see {}",
        log.display()
    )]
    NotReloaded { seconds: u64, log: PathBuf },

    #[error(
        "domain `{domain}` already belongs to project `{owner}`: remove it there first (`kiln domains remove {owner} {domain}`)"
    )]
    DomainTaken { domain: String, owner: String },

    #[error(
        "node.yml has no `proxy`: add `proxy: nginx` (the machine's nginx) or `proxy: {{nginx: {{private: true, listen: [...]}}}}` (see docs/node-config.md)"
    )]
    NotConfigured,

    #[error(
        "the front door is the machine's nginx (node.yml `proxy.nginx.private` is not true): start and stop it with the machine's service manager; `kiln proxy reload` rewrites kiln's files and reloads it"
    )]
    NotPrivate,

    #[error("the node-private nginx did not start: {message} (see {})", log.display())]
    NotStarted { message: String, log: PathBuf },

    #[error("{what} {problem}")]
    BadPath { what: String, problem: String },
}

impl From<ProxyError> for Error {
    fn from(e: ProxyError) -> Self {
        Error::Proxy(Box::new(e))
    }
}
