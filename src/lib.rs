//! kiln: a git-push PaaS node. The binary in `main.rs` only calls [`run`]; everything else
//! lives here so that tests reach it. The folders follow a push: [`push`] receives it,
//! [`deploy`] runs the pipeline and undoes it on failure, [`release`] makes or pulls the release
//! tree, [`transaction`] takes it live crash-safely, [`exec`] runs the project's commands and
//! tells the pusher, [`notify`] tells everyone else (mail, webhooks, alerts); [`config`], [`fs`]
//! and [`error`] are the foundations every part uses.
//! [`runtime`] builds the tree into an app that runs (buildpacks, the build cache) and runs it:
//! its Procfile, its supervised processes and their logs.
//! [`access`] is the door over SSH: who may push, look and operate, checked before anything runs.
//! [`proxy`] is the front door over HTTP: the nginx that routes each project's domains to its app.
//! ARCHITECTURE.md at the repository root is the map.

pub mod access;
pub mod cli;
pub mod config;
pub mod deploy;
pub mod error;
pub mod exec;
pub mod fs;
pub mod notify;
pub mod proxy;
pub mod push;
pub mod release;
pub mod runtime;
pub mod status;
pub mod transaction;

/// Parses the command line, runs the command, prints any error as one `error: ...` line and
/// returns the exit status (docs/commands.md).
pub fn run() -> i32 {
    let _scenario = fail::FailScenario::setup();
    cli::main()
}

/// A crash-test hook: with the `failpoints` feature, `FAILPOINTS=<name>=return` kills kiln
/// with SIGKILL at that point, as a power cut would. Compiled to nothing otherwise.
pub fn failpoint(name: &str) {
    let _ = name;
    fail::fail_point!(name, |_| {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    });
}
