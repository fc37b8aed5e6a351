//! Who came in over SSH (a node.yml user and their key), what they may do, and how that
//! travels on to what kiln runs for them.

use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::access::request::Need;
use crate::access::{AccessError, refused};
use crate::config::node_config::User;

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

/// Replaces this process with `command`; returns only if that failed.
pub fn exec(mut command: Command, program: &str) -> AccessError {
    let source = command.exec();
    AccessError::Exec {
        program: program.to_string(),
        source,
    }
}
