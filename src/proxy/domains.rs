//! `kiln domains add|remove|list`: a project's domains live in its project.yml (the node
//! operators' side); adding or removing one rewrites the file and the project's front door,
//! and puts project.yml back when nginx refuses the result, so nothing changes on a refusal.

use std::fs;

use crate::config::project::{Node, Project};
use crate::config::proxy_config::domain_problem;
use crate::error::{Error, io_error};
use crate::fs::durable::write_atomic;
use crate::proxy::ProxyError;
use crate::proxy::front_door::{Applied, FrontDoor, live_site, node_projects};

/// A change to a project's domains.
pub enum Edit {
    Add(Vec<String>),
    Remove(Vec<String>),
}

/// Applies `edit` to `project`'s project.yml and front door; returns what to tell the
/// operator, one line each. The caller holds the project's lock.
pub fn edit(node: &Node, project: &Project, edit: &Edit) -> Result<Vec<String>, Error> {
    let name = &project.paths.name;
    let mut config = project.config.clone();
    let mut said = Vec::new();
    match edit {
        Edit::Add(domains) => {
            for domain in domains {
                // Host names are case-insensitive; project.yml keeps them lowercase.
                let domain = domain.to_ascii_lowercase();
                if let Some(problem) = domain_problem(&domain) {
                    return Err(Error::Usage(problem));
                }
                if config.domains.contains(&domain) {
                    said.push(format!("`{domain}` is already a domain of `{name}`"));
                    continue;
                }
                if let Some(owner) = owner_of(node, &domain, name) {
                    return Err(ProxyError::DomainTaken { domain, owner }.into());
                }
                said.push(format!("added `{domain}` to `{name}`"));
                config.domains.push(domain);
            }
        }
        Edit::Remove(domains) => {
            for domain in domains {
                let domain = domain.to_ascii_lowercase();
                let Some(at) = config.domains.iter().position(|d| *d == domain) else {
                    return Err(Error::Usage(format!(
                        "`{domain}` is not a domain of `{name}` (see `kiln domains list {name}`)"
                    )));
                };
                config.domains.remove(at);
                if config.tls.remove(&domain).is_some() {
                    said.push(format!(
                        "removed `{domain}` and its `tls` entry from `{name}`"
                    ));
                } else {
                    said.push(format!("removed `{domain}` from `{name}`"));
                }
            }
        }
    }
    if config == project.config {
        return Ok(said);
    }
    let path = &project.paths.project_yml;
    let before = fs::read(path).map_err(|e| io_error("read", path, e))?;
    write_atomic(path, config.to_yaml().as_bytes(), 0o644)?;
    let Some(front) = FrontDoor::of(node) else {
        said.push(
            "node.yml has no `proxy`: kiln routes these domains once it has one (see docs/node-config.md)"
                .into(),
        );
        return Ok(said);
    };
    let updated = Project {
        paths: project.paths.clone(),
        config,
    };
    let installed = live_site(node, &updated).and_then(|site| front.install(&site));
    match installed {
        Ok(Applied::NotRunning) => said.push(
            "the node-private nginx is not running: it routes them once started (`kiln proxy start`)"
                .into(),
        ),
        Ok(_) => said.push("the front door was reloaded".into()),
        Err(e) => {
            write_atomic(path, &before, 0o644)?;
            return Err(e);
        }
    }
    Ok(said)
}

/// The project other than `except` that has `domain`, if one does.
fn owner_of(node: &Node, domain: &str, except: &str) -> Option<String> {
    node_projects(node)
        .into_iter()
        .filter(|name| name != except)
        .find(|name| {
            node.project(name)
                .is_ok_and(|p| p.config.domains.iter().any(|d| d == domain))
        })
}

/// `kiln domains list`: one domain a line, `(https)` after those with a certificate.
pub fn list(project: &Project) -> String {
    project
        .config
        .domains
        .iter()
        .map(|domain| {
            if project.config.tls.contains_key(domain) {
                format!("{domain} (https)\n")
            } else {
                format!("{domain}\n")
            }
        })
        .collect()
}
