//! The git hooks installed in the bare repos call `kiln hook pre-receive|post-receive`.
//! pre-receive refuses a push whose kiln.yml (or pillar.yml) is invalid, so the branch does
//! not move; post-receive deploys a push of the deploy branch and says other refs are ignored.
//! A pillar push is checked out in pillar/ and the live release deployed again with it.

use std::io::BufRead;
use std::path::Path;

use crate::config::node_config::{PillarPush, Right};
use crate::config::pillar::{self, Pillar};
use crate::config::project::{Node, Project};
use crate::deploy::pipeline::{self as deploy, DeployRequest};
use crate::error::Error;
use crate::exec::report::Reporter;
use crate::fs::git;
use crate::transaction::release_log::ReleaseLog;

const ZERO: &str = "0000000000000000000000000000000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repo {
    Project,
    Pillar,
}

/// One line of a hook's stdin: `<old> <new> <ref>`.
#[derive(Debug, Clone, PartialEq)]
pub struct RefUpdate {
    pub old: String,
    pub new: String,
    pub name: String,
}

impl RefUpdate {
    pub fn is_delete(&self) -> bool {
        self.new == ZERO
    }
}

pub fn parse_updates(input: impl BufRead) -> Vec<RefUpdate> {
    input
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            Some(RefUpdate {
                old: parts.next()?.to_string(),
                new: parts.next()?.to_string(),
                name: parts.next()?.to_string(),
            })
        })
        .collect()
}

/// Set by `kiln ssh` (src/access/) for what it runs: the node.yml user who came in over SSH,
/// and the fingerprint of their key. pre-receive checks this user's rights again per ref.
pub const SSH_USER_VAR: &str = "KILN_SSH_USER";
pub const SSH_KEY_VAR: &str = "KILN_SSH_KEY";

/// Who pushed: the SSH layer sets KILN_USER; a local push is the Unix user.
pub fn pusher() -> String {
    std::env::var("KILN_USER")
        .or_else(|_| std::env::var("USER"))
        .ok()
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The fingerprint of the key the pusher came in with over SSH, if they did.
pub fn pusher_key() -> Option<String> {
    std::env::var(SSH_KEY_VAR)
        .ok()
        .filter(|key| !key.is_empty())
}

/// Ref names reach kiln's output, logs and the deploy's environment: letters, digits and
/// `._/-+` only, whoever pushes.
fn check_ref_name(name: &str) -> Result<(), Error> {
    let safe = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._/-+".contains(c));
    if safe {
        Ok(())
    } else {
        Err(Error::Refused {
            message: format!(
                "refused: the ref name `{}` may only hold letters, digits and `._/-+`",
                name.escape_debug()
            ),
        })
    }
}

/// A push that came through `kiln ssh`: the user's rights on this project are checked again
/// for every ref, with the project this hook belongs to, whatever path git was called with.
fn check_pusher_rights(
    node: &Node,
    name: &str,
    repo: Repo,
    updates: &[RefUpdate],
) -> Result<(), Error> {
    let Ok(user) = std::env::var(SSH_USER_VAR) else {
        return Ok(());
    };
    let right = match repo {
        Repo::Project => Right::Deploy,
        Repo::Pillar => Right::Config,
    };
    let allowed = node
        .config
        .user(&user)
        .is_some_and(|entry| entry.may(name, right));
    match updates.first() {
        Some(update) if !allowed => Err(Error::Refused {
            message: format!(
                "refused: `{user}` may not push {} of `{name}`: that needs the `{right}` right (`kiln access grant {user} {name} {right}`)",
                update.name
            ),
        }),
        _ => Ok(()),
    }
}

pub fn pre_receive(
    node: &Node,
    name: &str,
    repo: Repo,
    updates: &[RefUpdate],
) -> Result<(), Error> {
    let project = node.project(name)?;
    for update in updates {
        check_ref_name(&update.name)?;
    }
    check_pusher_rights(node, name, repo, updates)?;
    match repo {
        Repo::Project => {
            let deploy_ref = format!("refs/heads/{}", project.config.branch);
            let bare = git::open_bare(&project.paths.project_repo)?;
            for update in updates
                .iter()
                .filter(|u| u.name == deploy_ref && !u.is_delete())
            {
                let oid = git2::Oid::from_str(&update.new).map_err(|_| Error::UnknownRev {
                    rev: update.new.clone(),
                    repo: project.paths.project_repo.clone(),
                })?;
                deploy::read_recipe(&bare, oid)?;
            }
            Ok(())
        }
        Repo::Pillar => validate_pillar_push(&project, updates),
    }
}

/// Deploys the pushed deploy branch; returns the exit status.
pub fn post_receive(
    node: &Node,
    name: &str,
    repo: Repo,
    updates: &[RefUpdate],
    out: &mut Reporter,
) -> Result<(), Error> {
    let project = node.project(name)?;
    if repo == Repo::Pillar {
        return after_pillar_push(node, &project, updates, out);
    }
    let deploy_ref = format!("refs/heads/{}", project.config.branch);
    let mut target = None;
    for update in updates {
        if update.name == deploy_ref && !update.is_delete() {
            target = Some(update.new.clone());
        } else if update.is_delete() {
            out.headline(&format!("ignoring the deletion of {}", update.name));
        } else {
            out.headline(&format!(
                "ignoring {}: only {} deploys",
                update.name, project.config.branch
            ));
        }
    }
    let Some(commit) = target else {
        return Ok(());
    };
    keep_going_without_pusher();
    deploy::deploy(
        node,
        &project,
        &DeployRequest {
            rev: Some(commit),
            who: pusher(),
            who_key: pusher_key(),
            settings_only: false,
        },
        out,
    )
    .map(|_| ())
}

/// pre-receive of git/pillar.git: pillar.yml of the pushed commit must be a valid mapping.
pub fn validate_pillar_push(project: &Project, updates: &[RefUpdate]) -> Result<(), Error> {
    let branch_ref = format!("refs/heads/{}", project.config.branch);
    let repo = git::open_bare(&project.paths.pillar_repo)?;
    for update in updates
        .iter()
        .filter(|u| u.name == branch_ref && !u.is_delete())
    {
        let oid = git2::Oid::from_str(&update.new).map_err(|_| Error::UnknownRev {
            rev: update.new.clone(),
            repo: project.paths.pillar_repo.clone(),
        })?;
        if let Some(bytes) = git::read_file(&repo, oid, pillar::FILE)? {
            let text = String::from_utf8_lossy(&bytes);
            crate::config::settings::parse_pillar(&text, Path::new(pillar::FILE))?;
        }
    }
    Ok(())
}

/// post-receive of git/pillar.git: check the new pillar out in pillar/ and, unless the node or
/// project says to only record it, deploy the live release again with the new settings. If that
/// deploy fails, pillar/ goes back to the settings the live release runs with.
pub fn after_pillar_push(
    node: &Node,
    project: &Project,
    updates: &[RefUpdate],
    out: &mut Reporter,
) -> Result<(), Error> {
    let branch_ref = format!("refs/heads/{}", project.config.branch);
    let Some(update) = updates
        .iter()
        .find(|u| u.name == branch_ref && !u.is_delete())
    else {
        out.headline(&format!(
            "ignoring this pillar push: only {} is used",
            project.config.branch
        ));
        return Ok(());
    };
    let oid = git2::Oid::from_str(&update.new).map_err(|_| Error::UnknownRev {
        rev: update.new.clone(),
        repo: project.paths.pillar_repo.clone(),
    })?;
    keep_going_without_pusher();
    let lock = crate::transaction::lock::lock(project, "pillar update", out)?;
    crate::deploy::rollback::recover(node, project, out)?;
    let previous = Pillar::current(&project.paths)?.rev;
    pillar::checkout(&project.paths, oid)?;
    let policy = project
        .config
        .pillar_push
        .unwrap_or(node.config.pillar_push);
    let live = ReleaseLog::load(&project.paths.release_log())?.current;
    if policy == PillarPush::Record || live.is_none() {
        out.headline(&format!(
            "pillar {} recorded; the next deploy uses it",
            git::short(oid)
        ));
        return Ok(());
    }
    out.headline(&format!(
        "pillar {} checked out; deploying the live release again with it",
        git::short(oid)
    ));
    let request = DeployRequest {
        rev: None,
        who: pusher(),
        who_key: pusher_key(),
        settings_only: true,
    };
    match deploy::deploy_locked(node, project, &request, &lock, out) {
        Ok(_) => Ok(()),
        Err(error) => {
            let back = match previous.as_deref().map(git2::Oid::from_str) {
                Some(Ok(old)) => pillar::checkout(&project.paths, old).map(|()| git::short(old)),
                _ => pillar::clear(&project.paths).map(|()| "no pillar".to_string()),
            };
            match back {
                Ok(old) => out.headline(&format!(
                    "pillar/ is back at {old}, the settings the live release runs with; fix the pillar and push again"
                )),
                Err(e) => out.headline(&format!(
                    "could not put pillar/ back: {}",
                    crate::error::chain(&e)
                )),
            }
            Err(error)
        }
    }
}

/// A pusher who disconnects (SIGHUP, closed pipe) must not abort a deploy halfway. A handler
/// rather than SIG_IGN: handlers are reset on exec, so the app's own processes still get
/// SIGHUP normally (nginx and friends reload on it).
pub fn keep_going_without_pusher() {
    if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            // Leaking the stream keeps the handler installed for the process's lifetime.
            if let Ok(stream) = signal(SignalKind::hangup()) {
                std::mem::forget(stream);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hook_input() {
        let input = format!("{ZERO} abc refs/heads/master\nabc {ZERO} refs/tags/v1\nbad\n");
        let updates = parse_updates(input.as_bytes());
        assert_eq!(updates.len(), 2);
        assert_eq!(updates[0].name, "refs/heads/master");
        assert!(!updates[0].is_delete());
        assert!(updates[1].is_delete());
    }
}
