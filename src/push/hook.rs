//! The git hooks installed in the bare repos call `kiln hook pre-receive|post-receive`.
//! pre-receive refuses a push whose kiln.yml (or pillar.yml) is invalid, so the branch does
//! not move; post-receive deploys a push of the deploy branch and says other refs are ignored.
//! A pillar push is checked out in pillar/ and the live release deployed again with it.
//! With `reject_failed_push`, pre-receive deploys instead, so a failed deploy refuses the push.

use std::fs;
use std::io::BufRead;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::node_config::{PillarPush, Right};
use crate::config::pillar::{self, Pillar};
use crate::config::project::{Node, Project};
use crate::config::recipe::{Mode, Recipe};
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

/// Refuses a push whose kiln.yml (or pillar.yml) is invalid. With `reject_failed_push` it
/// also deploys the pushed deploy branch, before git moves it: a failed deploy then refuses
/// the push ([`deploys_in_pre_receive`]).
pub fn pre_receive(
    node: &Node,
    name: &str,
    repo: Repo,
    updates: &[RefUpdate],
    out: &mut Reporter,
) -> Result<(), Error> {
    let project = node.project(name)?;
    for update in updates {
        check_ref_name(&update.name)?;
    }
    check_pusher_rights(node, name, repo, updates)?;
    if repo == Repo::Pillar {
        return validate_pillar_push(&project, updates);
    }
    let bare = git::open_bare(&project.paths.project_repo)?;
    let mut target = None;
    for update in deploy_branch_updates(&project, updates) {
        let oid = git2::Oid::from_str(&update.new).map_err(|_| Error::UnknownRev {
            rev: update.new.clone(),
            repo: project.paths.project_repo.clone(),
        })?;
        let recipe = deploy::read_recipe(&bare, oid)?;
        crate::runtime::procfile::check_commit(&bare, oid)?;
        target = Some((update, recipe));
    }
    match target {
        Some((update, recipe)) if deploys_in_pre_receive(node, &project, &recipe) => {
            announce_ignored(&project, updates, out);
            deploy_before_the_branch_moves(node, &project, update, out)
        }
        _ => Ok(()),
    }
}

/// Deploys the pushed deploy branch (when pre-receive has not); returns the exit status.
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
    let target = deploy_branch_updates(&project, updates).last();
    if let Some(update) = target
        && deployed_by_pre_receive(&project, update)
    {
        // pre-receive deployed it and said so; its final line stays the push's last line.
        let _ = fs::remove_file(project.paths.state.join(PENDING_PUSH));
        return Ok(());
    }
    announce_ignored(&project, updates, out);
    let Some(update) = target else {
        return Ok(());
    };
    keep_going_without_pusher();
    deploy::deploy(
        node,
        &project,
        &DeployRequest {
            rev: Some(update.new.clone()),
            who: pusher(),
            who_key: pusher_key(),
            settings_only: false,
            // Pushing the same commit again deploys nothing: git answers `Everything
            // up-to-date` and runs no hook.
            retry: Some(format!("retry with `kiln deploy {}`", project.paths.name)),
            receive_pack: None,
            force: false,
        },
        out,
    )
    .map(|_| ())
}

/// Whether a push of the deploy branch deploys from pre-receive, so that a failed deploy
/// refuses the push and the branch does not move (Heroku's and Dokku's behaviour), instead of
/// from post-receive, after git moved the branch.
///
/// project.yml decides, else node.yml, else the pushed kiln.yml: it changes who may move the
/// branch and how long a push holds its connection, which is the operators' call (as every
/// node-side setting), and a push must not be able to turn off what they rely on (the branch
/// only ever names a commit that deployed). Editable mode never rolls back: a failed deploy
/// leaves the tree as pushed, which needs the pushed commit, and git deletes the objects of a
/// refused push; it always deploys from post-receive.
pub fn deploys_in_pre_receive(node: &Node, project: &Project, recipe: &Recipe) -> bool {
    project.config.mode != Mode::Editable
        && project
            .config
            .reject_failed_push
            .or(node.config.reject_failed_push)
            .unwrap_or(recipe.reject_failed_push)
}

/// In post-receive: pre-receive deployed this update already. Its note says so, not the
/// settings, which an operator may have changed in between: the note names this commit and
/// this push's receive-pack, which runs both hooks.
fn deployed_by_pre_receive(project: &Project, update: &RefUpdate) -> bool {
    PendingPush::read(project).is_some_and(|pending| {
        pending.receive_pack == nix::unistd::getppid().as_raw() && pending.new == update.new
    })
}

fn deploy_branch_updates<'a>(
    project: &Project,
    updates: &'a [RefUpdate],
) -> impl Iterator<Item = &'a RefUpdate> {
    let deploy_ref = format!("refs/heads/{}", project.config.branch);
    updates
        .iter()
        .filter(move |u| u.name == deploy_ref && !u.is_delete())
}

/// Says which refs of the push do not deploy.
fn announce_ignored(project: &Project, updates: &[RefUpdate], out: &mut Reporter) {
    let deploy_ref = format!("refs/heads/{}", project.config.branch);
    for update in updates
        .iter()
        .filter(|u| u.name != deploy_ref || u.is_delete())
    {
        if update.is_delete() {
            out.headline(&format!("ignoring the deletion of {}", update.name));
        } else {
            out.headline(&format!(
                "ignoring {}: only {} deploys",
                update.name, project.config.branch
            ));
        }
    }
}

/// pre-receive's deploy: the pushed commit is read from git's quarantine. If the deploy
/// fails, the push is refused: git deletes the pushed objects and the branch does not move,
/// so nothing that stays may refer to them except the failed release's record and logs.
fn deploy_before_the_branch_moves(
    node: &Node,
    project: &Project,
    update: &RefUpdate,
    out: &mut Reporter,
) -> Result<(), Error> {
    keep_going_without_pusher();
    // The hook is exec-ed by git receive-pack: see DeployRequest::receive_pack.
    let receive_pack = nix::unistd::getppid().as_raw();
    let paths = &project.paths;
    let request = DeployRequest {
        rev: Some(update.new.clone()),
        who: pusher(),
        who_key: pusher_key(),
        settings_only: false,
        retry: Some("the push is refused (the branch did not move); push again to retry".into()),
        receive_pack: Some(receive_pack),
        force: false,
    };
    let lock = crate::transaction::lock::lock(project, "deploy", out)?;
    deploy::recover_first(node, project, "push again", &request, out)?;
    // A push that waited for another push's deploy of this branch must not deploy over it:
    // git would then refuse to move the branch (it checks the old tip), and the node would
    // run a commit that no branch names.
    wait_for_the_branch_of_the_push_before(project, out);
    let bare = git::open_bare(&paths.project_repo)?;
    let tip = git::branch_tip(&bare, &project.config.branch);
    if tip_text(tip) != update.old {
        return Err(Error::Refused {
            message: format!(
                "`{}` moved to {} while this push waited for another deploy: fetch, merge and push again",
                project.config.branch,
                tip.map(git::short).unwrap_or_else(|| "nothing".into())
            ),
        });
    }
    let checked_out = git::checked_out(&paths.project);
    let result = deploy::deploy_locked(node, project, &request, &lock, out);
    if result.is_ok() {
        leave_pending_push(project, receive_pack, update, out);
    } else if let Some(before) = checked_out {
        // project/ shows the refused commit, whose objects git is about to delete.
        let back = git::Checkout::open_or_init(&paths.project, &paths.project_repo)
            .and_then(|checkout| checkout.checkout(before));
        if let Err(e) = back {
            out.note(&format!(
                "warning: could not check {} out in project/ again: {}",
                git::short(before),
                crate::error::chain(&e)
            ));
        }
    }
    result.map(|_| ())
}

/// `state/pending-push`: `<pid of git receive-pack> <new tip>`, left by a pre-receive deploy
/// that worked, for two readers. git moves the branch only once the hook has exited, and with
/// it released the project lock: a push waiting for that lock could check the branch a moment
/// before git moves it, deploy, and then have git refuse to move the branch (it checks the old
/// tip), leaving the node running a commit that no branch names; it waits instead. And the
/// post-receive hook of the same push learns from it not to deploy again (and removes it).
const PENDING_PUSH: &str = "pending-push";

struct PendingPush {
    receive_pack: i32,
    new: String,
}

impl PendingPush {
    fn read(project: &Project) -> Option<PendingPush> {
        let text = fs::read_to_string(project.paths.state.join(PENDING_PUSH)).ok()?;
        let mut parts = text.split_whitespace();
        Some(PendingPush {
            receive_pack: parts.next()?.parse().ok()?,
            new: parts.next()?.to_string(),
        })
    }
}

/// How long a push waits for git to move the branch for the push before it, at most.
const PENDING_PUSH_WAIT: Duration = Duration::from_secs(60);

fn leave_pending_push(project: &Project, git: i32, update: &RefUpdate, out: &mut Reporter) {
    // A receive-pack that is gone moves no branch.
    if git <= 1 || nix::unistd::getppid().as_raw() != git {
        return;
    }
    let path = project.paths.state.join(PENDING_PUSH);
    let text = format!("{git} {}\n", update.new);
    if let Err(e) = crate::fs::durable::write_atomic(&path, text.as_bytes(), 0o600) {
        out.note(&format!(
            "warning: {}; post-receive will deploy {} again",
            crate::error::chain(&e),
            update.new.get(..7).unwrap_or(&update.new)
        ));
    }
}

/// Waits until git has moved the branch for the push that deployed before this one (or has
/// given up: its receive-pack is gone).
fn wait_for_the_branch_of_the_push_before(project: &Project, out: &mut Reporter) {
    let Some(pending) = PendingPush::read(project) else {
        return;
    };
    let started = Instant::now();
    let mut told = false;
    while started.elapsed() < PENDING_PUSH_WAIT {
        let tip = git::open_bare(&project.paths.project_repo)
            .ok()
            .and_then(|bare| git::branch_tip(&bare, &project.config.branch));
        let alive = !matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pending.receive_pack), None),
            Err(nix::errno::Errno::ESRCH)
        );
        if tip_text(tip) == pending.new || !alive {
            return;
        }
        if !told {
            out.headline(&format!(
                "waiting for git to move {} for the push before this one",
                project.config.branch
            ));
            told = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tip_text(tip: Option<git2::Oid>) -> String {
    tip.map_or_else(|| ZERO.to_string(), |oid| oid.to_string())
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
        // `kiln deploy` would not use the pillar pushed: it is put back on failure.
        retry: None,
        receive_pack: None,
        force: false,
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
