//! `kiln ssh <user> --key <fingerprint>`: the forced command of every key in authorized_keys.
//! It parses what the client asked for ([`crate::access::request`]), checks the user's rights
//! in node.yml, and only then replaces itself (exec, no shell) with `git receive-pack|
//! upload-pack <repo>`, kiln itself, or the operator's login shell.
//!
//! Who came in travels to the hooks in `KILN_SSH_USER` and `KILN_SSH_KEY` (and `KILN_USER`):
//! git receive-pack passes its environment on to pre-receive, which checks the rights again
//! per ref. A client cannot set these over SSH: sshd passes a client's variables only when
//! its `AcceptEnv` names them (Debian's names `LANG` and `LC_*`) and a user's
//! `environment=` options only with `PermitUserEnvironment`, which is off by default; both
//! must stay so for KILN_* variables.

use std::process::Command;

use crate::access::caller::{Caller, exec};
use crate::access::request::{self, GitService, KilnCommand, Need, Request};
use crate::access::{AccessError, refused, shell};
use crate::config::node_config::Right;
use crate::config::project::Node;
use crate::error::Error;
use crate::push::hook::Repo;

/// Runs what the client asked for, if `name` may. Returns only on refusal or failure.
pub fn run(node: &Node, name: &str, key: Option<&str>) -> Result<(), Error> {
    let user = node
        .config
        .user(name)
        .ok_or_else(|| AccessError::UnknownUser {
            user: name.to_string(),
        })?;
    let caller = Caller { name, key, user };
    let original = match std::env::var_os("SSH_ORIGINAL_COMMAND") {
        None => None,
        Some(text) => Some(
            text.into_string()
                .map_err(|_| refused("the command is not UTF-8"))?,
        ),
    };
    match request::parse(original.as_deref())? {
        Request::Shell => shell::open(node, &caller),
        Request::Git { service, path } => git(node, &caller, service, &path),
        Request::Kiln { args } => {
            let command = request::kiln_command(&args, &node.root)?;
            kiln(node, &caller, &command)
        }
    }
}

fn git(node: &Node, caller: &Caller, service: GitService, path: &str) -> Result<(), Error> {
    let (name, repo) = request::resolve_repo(node, path)?;
    let need = match (service, repo) {
        (GitService::ReceivePack, Repo::Project) => Need::Right(Right::Deploy),
        (GitService::UploadPack, Repo::Project) => Need::Read,
        (_, Repo::Pillar) => Need::Right(Right::Config),
    };
    caller.require(&name, need)?;
    let project = node.project(&name).map_err(|_| {
        refused(format!(
            "there is no project `{name}` on this node; {}",
            caller.projects_line()
        ))
    })?;
    let dir = match repo {
        Repo::Project => &project.paths.project_repo,
        Repo::Pillar => &project.paths.pillar_repo,
    };
    let mut command = Command::new("git");
    command.arg(service.subcommand()).arg(dir);
    caller.mark(&mut command);
    Err(exec(command, "git").into())
}

fn kiln(node: &Node, caller: &Caller, command: &KilnCommand) -> Result<(), Error> {
    if let Some(project) = &command.project {
        caller.require(project, command.need)?;
    } else if command.need == Need::Admin && !caller.user.admin {
        return Err(refused(format!(
            "`kiln {}` needs node-wide admin rights, which `{}` does not have",
            command.args.first().map(String::as_str).unwrap_or(""),
            caller.name
        ))
        .into());
    }
    let exe = std::env::current_exe().map_err(|source| AccessError::Exec {
        program: "kiln".into(),
        source,
    })?;
    let mut run = Command::new(&exe);
    run.arg("--root").arg(&node.root).args(&command.args);
    caller.mark(&mut run);
    Err(exec(run, &exe.display().to_string()).into())
}
