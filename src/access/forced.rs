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

use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::access::request::{self, GitService, KilnCommand, Need, Request};
use crate::access::{AccessError, refused, shell};
use crate::config::node_config::{Right, User};
use crate::config::project::Node;
use crate::error::Error;
use crate::push::hook::Repo;

/// The variables the forced command sets for what it runs.
pub const USER_VAR: &str = crate::push::hook::SSH_USER_VAR;
pub const KEY_VAR: &str = crate::push::hook::SSH_KEY_VAR;

/// Who came in over SSH.
#[derive(Debug, Clone)]
pub struct Caller<'a> {
    pub name: &'a str,
    pub key: Option<&'a str>,
    pub user: &'a User,
}

impl Caller<'_> {
    /// Sets who came in on a command kiln is about to run.
    pub fn mark(&self, command: &mut Command) {
        command
            .env("KILN_USER", self.name)
            .env(USER_VAR, self.name)
            .env_remove(KEY_VAR);
        if let Some(key) = self.key {
            command.env(KEY_VAR, key);
        }
    }

    /// Refuses unless the user has `right` on `project`. A project the user has no right on
    /// at all is answered like one that does not exist, so names do not leak.
    pub fn require(&self, project: &str, need: Need) -> Result<(), AccessError> {
        let rights = self.user.rights(project);
        let ok = match need {
            Need::Nothing => true,
            Need::Admin => self.user.admin,
            Need::Read => !rights.is_empty(),
            Need::Right(right) => rights.contains(&right),
        };
        if ok {
            return Ok(());
        }
        if rights.is_empty() && need != Need::Admin {
            return Err(refused(format!(
                "`{}` has no project `{project}`; {}",
                self.name,
                self.projects_line()
            )));
        }
        let what = match need {
            Need::Admin => "node-wide admin rights".to_string(),
            Need::Right(right) => format!("the `{right}` right"),
            Need::Read | Need::Nothing => "a right".to_string(),
        };
        let grant = match need {
            Need::Admin => format!("kiln access grant {} '*' admin", self.name),
            Need::Right(right) => format!("kiln access grant {} {project} {right}", self.name),
            Need::Read | Need::Nothing => {
                format!("kiln access grant {} {project} deploy", self.name)
            }
        };
        Err(refused(format!(
            "`{}` needs {what} on `{project}` for this; an admin can give it with `{grant}`",
            self.name
        )))
    }

    /// `your projects: shop (deploy, config), * (deploy)`.
    pub fn projects_line(&self) -> String {
        if self.user.admin {
            return "you are an admin of this node: every right on every project".into();
        }
        if self.user.projects.is_empty() {
            return "you have no rights on any project yet: ask an admin".into();
        }
        let list: Vec<String> = self
            .user
            .projects
            .iter()
            .map(|(project, rights)| {
                let names: Vec<&str> = rights.iter().map(|r| r.as_str()).collect();
                format!("{project} ({})", names.join(", "))
            })
            .collect();
        format!("your projects: {}", list.join(", "))
    }
}

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

/// Replaces this process with `command`; returns only if that failed.
pub fn exec(mut command: Command, program: &str) -> AccessError {
    let source = command.exec();
    AccessError::Exec {
        program: program.to_string(),
        source,
    }
}
