//! A node and its projects: where the root is, which layout and node settings apply, and the
//! node-side settings of one project (project.yml).

use std::path::{Path, PathBuf};

use crate::config::layout::{self, Layout, ProjectPaths};
use crate::config::node_config::NodeConfig;
use crate::config::project_config::ProjectConfig;
use crate::error::{Error, io_error};

pub const DEFAULT_ROOT: &str = "/srv/projects";

pub struct Node {
    pub root: PathBuf,
    pub layout: Layout,
    pub config: NodeConfig,
}

impl Node {
    /// `--root`, else `$KILN_ROOT`, else /srv/projects (docs/layout.md).
    pub fn open(root: Option<PathBuf>) -> Result<Node, Error> {
        let root = root
            .or_else(|| std::env::var_os("KILN_ROOT").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
        let root = if root.is_absolute() {
            root
        } else {
            std::env::current_dir()
                .map_err(|e| io_error("read", Path::new("."), e))?
                .join(root)
        };
        // `./node` and `/a/./b` become plain paths: they are printed and written into hooks.
        let root: PathBuf = root
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect();
        let config = NodeConfig::load(&root.join("node.yml"))?;
        let layout = match &config.layout {
            Some(file) => {
                let text = std::fs::read_to_string(file).map_err(|e| io_error("read", file, e))?;
                Layout::parse(&text, file)?
            }
            None => Layout::default_layout(),
        };
        Ok(Node {
            root,
            layout,
            config,
        })
    }

    pub fn paths(&self, name: &str) -> Result<ProjectPaths, Error> {
        if !layout::valid_name(name) {
            return Err(Error::BadName {
                name: name.to_string(),
            });
        }
        Ok(self.layout.project(&self.root, name))
    }

    /// An existing project (its project.yml must exist).
    pub fn project(&self, name: &str) -> Result<Project, Error> {
        let paths = self.paths(name)?;
        if !paths.project_yml.exists() {
            return Err(Error::NoProject {
                name: name.to_string(),
                root: self.root.clone(),
            });
        }
        let config = ProjectConfig::load(&paths.project_yml)?;
        Ok(Project { paths, config })
    }
}

pub struct Project {
    pub paths: ProjectPaths,
    pub config: ProjectConfig,
}
