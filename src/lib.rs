//! kiln: a git-push PaaS node. The binary in `main.rs` only calls [`run`]; everything else
//! lives here so that tests reach it. The pipeline reads in module order: `hook` receives a
//! push, `deploy` runs the stages, `bake`/`fetch` make the release tree, `backup` and `switch`
//! take it live, `rollback` undoes it, `journal` and `lock` keep it crash-safe.

pub mod backup;
pub mod bake;
pub mod cli;
pub mod config_error;
pub mod deploy;
pub mod durable;
pub mod duration;
pub mod error;
pub mod fetch;
pub mod git;
pub mod hook;
pub mod init;
pub mod journal;
pub mod layout;
pub mod lock;
pub mod node_config;
pub mod pillar;
pub mod project;
pub mod project_config;
pub mod publish;
pub mod recipe;
pub mod redact;
pub mod release;
pub mod release_log;
pub mod report;
pub mod rollback;
pub mod settings;
pub mod signing;
pub mod source;
pub mod stage;
pub mod status;
pub mod switch;
pub mod sync;
pub mod tree;
pub mod unpack;

/// Parses the command line, runs the command, prints any error as one `error: ...` line and
/// returns the exit status (DESIGN.md section 7).
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
