//! `kiln init`: creates a project's layout, its two bare repos with kiln's hooks, and its
//! project.yml. Running it again repairs what is missing and never touches data/, run/ or the
//! releases.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::project::Node;
use crate::config::project_config::ProjectConfig;
use crate::config::recipe::Mode;
use crate::error::{Error, io_error};
use crate::fs::git;

pub const PRE_RECEIVE: &str = include_str!("../../hooks/pre-receive");
pub const POST_RECEIVE: &str = include_str!("../../hooks/post-receive");

pub struct InitRequest {
    pub name: String,
    pub mode: Option<Mode>,
    pub branch: Option<String>,
    pub source: Option<String>,
}

pub struct InitReport {
    pub created: Vec<PathBuf>,
    pub project_repo: PathBuf,
    pub pillar_repo: PathBuf,
    pub existed: bool,
}

pub fn init(node: &Node, request: &InitRequest, kiln: &Path) -> Result<InitReport, Error> {
    let paths = node.paths(&request.name)?;
    let existed = paths.project_yml.exists();
    let mut config = if existed {
        ProjectConfig::load(&paths.project_yml)?
    } else {
        ProjectConfig::new(node.config.environment.unwrap_or_default().default_mode())
    };
    if let Some(mode) = request.mode {
        config.mode = mode;
    }
    if let Some(branch) = &request.branch {
        config.branch = branch.clone();
    }
    if let Some(source) = &request.source {
        config.source = Some(source.clone());
    }
    // Validate before creating anything: a bad branch or source must change nothing.
    let text = config.to_yaml();
    let config = ProjectConfig::parse(&text, &paths.project_yml)?;
    if config.mode == Mode::Final && config.source.is_none() {
        return Err(Error::Usage(
            "final mode needs a release source: pass `--source URL` (a directory, ssh:// or http(s)://)".into(),
        ));
    }
    fs::create_dir_all(&node.root).map_err(|e| io_error("create", &node.root, e))?;
    let mut created = paths.ensure()?;
    for (repo, branch) in [
        (&paths.project_repo, config.branch.as_str()),
        (&paths.pillar_repo, config.branch.as_str()),
    ] {
        if git::init_bare(repo, branch)? {
            created.push(repo.clone());
        }
        if repo == &paths.pillar_repo {
            git::restrict_repo(repo)?;
        }
        install_hooks(repo, kiln, &node.root, &request.name)?;
    }
    for private in &paths.private {
        fs::set_permissions(private, fs::Permissions::from_mode(0o700))
            .map_err(|e| io_error("restrict", private, e))?;
    }
    crate::fs::durable::write_atomic(&paths.project_yml, config.to_yaml().as_bytes(), 0o644)?;
    Ok(InitReport {
        created,
        project_repo: paths.project_repo.clone(),
        pillar_repo: paths.pillar_repo.clone(),
        existed,
    })
}

/// Writes the hooks from hooks/ of this repository, calling this kiln binary by absolute path.
fn install_hooks(repo: &Path, kiln: &Path, root: &Path, name: &str) -> Result<(), Error> {
    let hooks = repo.join("hooks");
    fs::create_dir_all(&hooks).map_err(|e| io_error("create", &hooks, e))?;
    let which = if repo.ends_with("pillar.git") {
        "pillar"
    } else {
        "project"
    };
    for (file, template) in [("pre-receive", PRE_RECEIVE), ("post-receive", POST_RECEIVE)] {
        let text = template
            .replace("@KILN@", &shell_quote_inner(&kiln.display().to_string()))
            .replace("@ROOT@", &shell_quote_inner(&root.display().to_string()))
            .replace("@PROJECT@", name)
            .replace("@REPO@", which);
        let path = hooks.join(file);
        crate::fs::durable::write_atomic(&path, text.as_bytes(), 0o755)?;
    }
    Ok(())
}

/// The inside of a single-quoted shell word: `'` becomes `'\''`. Project names are validated
/// and need no quoting; paths may hold anything.
fn shell_quote_inner(s: &str) -> String {
    s.replace('\'', r"'\''")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_templates_call_kiln_hook() {
        assert!(PRE_RECEIVE.contains("hook pre-receive"));
        assert!(POST_RECEIVE.contains("hook post-receive"));
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(shell_quote_inner("/a'b"), r"/a'\''b");
    }
}
