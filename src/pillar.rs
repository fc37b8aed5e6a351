//! The pillar: the project's private configuration, pushed to git/pillar.git and checked out in
//! pillar/. Its pillar.yml is merged over kiln.yml's `defaults`; its values are secrets.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;

use crate::deploy::{self, DeployRequest};
use crate::error::{Error, io_error};
use crate::git;
use crate::layout::ProjectPaths;
use crate::node_config::PillarPush;
use crate::project::{Node, Project};
use crate::release_log::ReleaseLog;
use crate::report::Reporter;
use crate::settings;

pub const FILE: &str = "pillar.yml";

/// The pillar as checked out in pillar/: its settings (None: no pillar pushed yet) and commit.
pub struct Pillar {
    pub settings: Option<Value>,
    pub rev: Option<String>,
}

impl Pillar {
    pub fn current(paths: &ProjectPaths) -> Result<Pillar, Error> {
        let rev = if paths.pillar.join(".git").exists() {
            git::Checkout::open_or_init(&paths.pillar, &paths.pillar_repo)?
                .head()
                .map(|oid| oid.to_string())
        } else {
            None
        };
        let file = paths.pillar.join(FILE);
        let settings = match std::fs::read_to_string(&file) {
            Ok(text) => Some(crate::settings::parse_pillar(&text, Path::new(&file))?),
            Err(_) => None,
        };
        Ok(Pillar { settings, rev })
    }
}

/// pre-receive of git/pillar.git: pillar.yml of the pushed commit must be a valid mapping.
pub fn validate_push(project: &Project, updates: &[crate::hook::RefUpdate]) -> Result<(), Error> {
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
        if let Some(bytes) = git::read_file(&repo, oid, FILE)? {
            let text = String::from_utf8_lossy(&bytes);
            crate::settings::parse_pillar(&text, Path::new(FILE))?;
        }
    }
    Ok(())
}

/// post-receive of git/pillar.git: check the new pillar out in pillar/ and, unless the node or
/// project says to only record it, deploy the live release again with the new settings. If that
/// deploy fails, pillar/ goes back to the settings the live release runs with.
pub fn after_push(
    node: &Node,
    project: &Project,
    updates: &[crate::hook::RefUpdate],
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
    crate::hook::keep_going_without_pusher();
    let lock = deploy::lock(project, "pillar update", out)?;
    crate::rollback::recover(node, project, out)?;
    let previous = Pillar::current(&project.paths)?.rev;
    checkout(&project.paths, oid)?;
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
        who: crate::hook::pusher(),
        settings_only: true,
        // `kiln deploy` would not use the pillar pushed: it is put back on failure.
        retry: None,
        receive_pack: None,
    };
    match deploy::deploy_locked(node, project, &request, &lock, out) {
        Ok(_) => Ok(()),
        Err(error) => {
            let back = match previous.as_deref().map(git2::Oid::from_str) {
                Some(Ok(old)) => checkout(&project.paths, old).map(|()| git::short(old)),
                _ => clear(&project.paths).map(|()| "no pillar".to_string()),
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

/// Checks out pillar commit `oid` in pillar/, readable only by kiln's user.
pub fn checkout(paths: &ProjectPaths, oid: git2::Oid) -> Result<(), Error> {
    let checkout = git::Checkout::open_or_init(&paths.pillar, &paths.pillar_repo)?;
    checkout.checkout(oid)?;
    restrict(&paths.pillar)
}

/// Empties pillar/ (the project had no pillar before the push that failed).
fn clear(paths: &ProjectPaths) -> Result<(), Error> {
    std::fs::remove_dir_all(&paths.pillar).map_err(|e| io_error("remove", &paths.pillar, e))?;
    std::fs::create_dir(&paths.pillar).map_err(|e| io_error("create", &paths.pillar, e))?;
    restrict(&paths.pillar)
}

/// Directories 0700, files 0600 (0700 if executable): the pillar holds secrets.
pub fn restrict(dir: &Path) -> Result<(), Error> {
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let entry = entry.map_err(|e| Error::Io {
            action: "read",
            path: dir.to_path_buf(),
            source: e.into(),
        })?;
        let meta = entry
            .path()
            .symlink_metadata()
            .map_err(|e| io_error("read", entry.path(), e))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = if meta.is_dir() || meta.permissions().mode() & 0o100 != 0 {
            0o700
        } else {
            0o600
        };
        if meta.permissions().mode() & 0o7777 != mode {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))
                .map_err(|e| io_error("restrict", entry.path(), e))?;
        }
    }
    Ok(())
}

/// `kiln config`: the merged settings of the live release (or the deploy branch's tip),
/// secrets masked unless `reveal`.
pub fn show(node: &Node, project: &Project, reveal: bool) -> Result<Value, Error> {
    let paths = &project.paths;
    let log = ReleaseLog::load(&paths.release_log())?;
    let repo = git::open_bare(&paths.project_repo)?;
    let live = log.current.as_ref().and_then(|id| log.get(id));
    let commit = match live {
        Some(record) => git2::Oid::from_str(&record.commit).ok(),
        None => git::branch_tip(&repo, &project.config.branch),
    };
    let recipe = match commit {
        Some(oid) => deploy::read_recipe(&repo, oid)?,
        None => crate::recipe::Recipe::default(),
    };
    let pillar = Pillar::current(paths)?;
    let environment = node.config.environment.as_str();
    let merged = settings::merge(
        serde_json::json!({
            "project": paths.name,
            "mode": project.config.mode.as_str(),
            "release": log.current,
            "commit": commit.map(|c| c.to_string()),
            "environment": environment,
        }),
        &recipe.defaults,
        pillar.settings.as_ref(),
        environment,
    );
    if reveal {
        return Ok(merged);
    }
    let secrets = pillar
        .settings
        .as_ref()
        .map(settings::secrets)
        .unwrap_or_default();
    Ok(settings::mask(&merged, &secrets))
}
