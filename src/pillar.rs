//! The pillar: the project's private configuration, pushed to git/pillar.git and checked out in
//! pillar/. Its pillar.yml is merged over kiln.yml's `defaults`; its values are secrets.

use std::path::Path;

use serde_json::Value;

use crate::error::Error;
use crate::git;
use crate::layout::ProjectPaths;

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
pub fn validate_push(
    project: &crate::project::Project,
    updates: &[crate::hook::RefUpdate],
) -> Result<(), Error> {
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

/// post-receive of git/pillar.git: check the new pillar out in pillar/.
pub fn after_push(
    _node: &crate::project::Node,
    project: &crate::project::Project,
    updates: &[crate::hook::RefUpdate],
    out: &mut crate::report::Reporter,
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
    let checkout = git::Checkout::open_or_init(&project.paths.pillar, &project.paths.pillar_repo)?;
    checkout.checkout(oid)?;
    out.headline(&format!(
        "pillar {} checked out; the next deploy uses it",
        git::short(oid)
    ));
    Ok(())
}
