//! The interactive session over SSH: a user with `operate` on a project gets a login shell
//! in its directory (after a chooser when there are several), with a banner saying what
//! manual changes mean; everyone else gets a short note of their projects and rights. Each
//! shell is recorded in the project's `state/shells.jsonl`, which `kiln status` shows.

use std::fs::OpenOptions;
use std::io::{BufRead, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::access::caller::{Caller, exec};
use crate::access::{AccessError, io, refused};
use crate::config::node_config::{ALL_PROJECTS, Right};
use crate::config::project::{Node, Project};
use crate::error::Error;

const LOG: &str = "shells.jsonl";

/// One shell opened over SSH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub at: DateTime<Utc>,
    /// The client's address, from sshd's `SSH_CONNECTION`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// The newest `count` shells opened on a project, oldest first. Unreadable lines are skipped:
/// this is a record for people, not state kiln acts on.
pub fn recent(state: &Path, count: usize) -> Vec<Session> {
    let Ok(file) = std::fs::File::open(state.join(LOG)) else {
        return Vec::new();
    };
    let all: Vec<Session> = std::io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str(&line).ok())
        .collect();
    all[all.len().saturating_sub(count)..].to_vec()
}

/// Appends one line; O_APPEND keeps concurrent sessions' lines whole.
fn record(state: &Path, session: &Session) -> Result<(), AccessError> {
    let path = state.join(LOG);
    let mut line = serde_json::to_string(session).unwrap_or_default();
    line.push('\n');
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(line.as_bytes()))
        .map_err(io("record the shell in", &path))
}

/// The projects on this node the caller may open a shell in, by name.
fn operated(node: &Node, caller: &Caller) -> Vec<String> {
    let everything = caller.user.admin
        || caller
            .user
            .projects
            .get(ALL_PROJECTS)
            .is_some_and(|rights| rights.contains(&Right::Operate));
    let mut names: Vec<String> = if everything {
        std::fs::read_dir(&node.root)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    } else {
        caller.user.projects.keys().cloned().collect()
    };
    names.retain(|name| caller.user.may(name, Right::Operate) && node.project(name).is_ok());
    names.sort();
    names
}

pub fn open(node: &Node, caller: &Caller) -> Result<(), Error> {
    let names = operated(node, caller);
    if names.is_empty() {
        println!(
            "hello {}: this node gives shells only to users with the `operate` right; {}.",
            caller.name,
            caller.projects_line()
        );
        println!(
            "push with `git push` to ssh://<this host>/<project> (the pillar: <project>/pillar), \
             or run e.g. `ssh <this host> kiln status <project>`."
        );
        return Ok(());
    }
    let name = if let [only] = names.as_slice() {
        only.clone()
    } else {
        choose(&names)?
    };
    let project = node.project(&name)?;
    let session = Session {
        user: caller.name.to_string(),
        key: caller.key.map(str::to_string),
        at: Utc::now(),
        from: std::env::var("SSH_CONNECTION")
            .ok()
            .and_then(|c| c.split(' ').next().map(str::to_string)),
    };
    record(&project.paths.state, &session)?;
    Err(login_shell(node, caller, &project).into())
}

/// Asks which project, reading one line byte by byte so that nothing after it is taken from
/// the shell's input.
fn choose(names: &[String]) -> Result<String, AccessError> {
    let mut err = std::io::stderr();
    let _ = writeln!(err, "kiln: you operate several projects:");
    for (i, name) in names.iter().enumerate() {
        let _ = writeln!(err, "  {}) {name}", i + 1);
    }
    let _ = write!(err, "project (name or number): ");
    let _ = err.flush();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let mut stdin = std::io::stdin().lock();
    while stdin.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let answer = String::from_utf8_lossy(&line).trim().to_string();
    let chosen = answer
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| names.get(i))
        .or_else(|| names.iter().find(|name| **name == answer));
    chosen
        .cloned()
        .ok_or_else(|| refused(format!("`{answer}` is not one of your projects")))
}

/// Replaces this process with the node user's login shell in the project dir.
fn login_shell(node: &Node, caller: &Caller, project: &Project) -> AccessError {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("kiln"));
    let shell = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|user| user.shell)
        .filter(|shell| shell.is_file() && !shell.ends_with("git-shell"))
        .unwrap_or_else(|| PathBuf::from("/bin/sh"));
    let name = &project.paths.name;
    let mut err = std::io::stderr();
    let _ = writeln!(
        err,
        "kiln: shell for {} ({}) in {}, as the node user",
        caller.name,
        caller.key.unwrap_or("key unknown"),
        project.paths.base.display()
    );
    let _ = writeln!(
        err,
        "kiln: edits in run/ are drift: `kiln status {name}` lists them and the next deploy saves them under archives/"
    );
    let _ = writeln!(
        err,
        "kiln: this shell is recorded in `kiln status {name}`; kiln is {} ($KILN)",
        exe.display()
    );
    let mut command = Command::new(&shell);
    // A leading `-` in argv[0] is how login(1) and sshd ask any shell to be a login shell.
    let base = shell
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sh".into());
    command.arg0(format!("-{base}"));
    command
        .current_dir(&project.paths.base)
        .env("KILN_ROOT", &node.root)
        .env("KILN_PROJECT", name)
        .env("KILN", &exe);
    if let Some(dir) = exe.parent() {
        let path = std::env::var("PATH").unwrap_or_default();
        command.env("PATH", format!("{}:{path}", dir.display()));
    }
    caller.mark(&mut command);
    exec(command, &shell.display().to_string())
}
