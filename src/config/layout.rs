//! Where a project's parts live on disk. The layout is data (`layouts/default.yml`, or the file
//! node.yml names), not code, so that an operator can move parts without rebuilding kiln.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, io_error};

/// The layout shipped with kiln, used unless node.yml names another file.
pub const DEFAULT_LAYOUT: &str = include_str!("../../layouts/default.yml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayoutFile {
    dirs: Dirs,
    #[serde(default)]
    private: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Dirs {
    project_repo: PathBuf,
    pillar_repo: PathBuf,
    project: PathBuf,
    pillar: PathBuf,
    build: PathBuf,
    deploy: PathBuf,
    run: PathBuf,
    data: PathBuf,
    archives: PathBuf,
    releases: PathBuf,
    logs: PathBuf,
    state: PathBuf,
    shadow: PathBuf,
    /// Absent from layout files written before the build cache existed.
    #[serde(default = "default_cache")]
    cache: PathBuf,
}

fn default_cache() -> PathBuf {
    PathBuf::from("cache")
}

/// A parsed layout: relative paths of each part, and which parts are private.
#[derive(Debug, Clone)]
pub struct Layout {
    dirs: Dirs,
    private: Vec<String>,
}

impl Layout {
    pub fn parse(text: &str, file: &Path) -> Result<Layout, Error> {
        let parsed: LayoutFile = serde_saphyr::from_str(text).map_err(|e| Error::BadLayout {
            file: file.to_path_buf(),
            message: e.to_string(),
        })?;
        let d = &parsed.dirs;
        for (name, rel) in [
            ("project_repo", &d.project_repo),
            ("pillar_repo", &d.pillar_repo),
            ("project", &d.project),
            ("pillar", &d.pillar),
            ("build", &d.build),
            ("deploy", &d.deploy),
            ("run", &d.run),
            ("data", &d.data),
            ("archives", &d.archives),
            ("releases", &d.releases),
            ("logs", &d.logs),
            ("state", &d.state),
            ("shadow", &d.shadow),
            ("cache", &d.cache),
        ] {
            let ok = rel.is_relative()
                && rel
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !ok {
                return Err(Error::BadLayout {
                    file: file.to_path_buf(),
                    message: format!(
                        "`{name}` must be a relative path without `..`, got `{}`",
                        rel.display()
                    ),
                });
            }
        }
        Ok(Layout {
            dirs: parsed.dirs,
            private: parsed.private,
        })
    }

    pub fn default_layout() -> Layout {
        // The shipped layout is tested below; failing here would be a build defect.
        Layout::parse(DEFAULT_LAYOUT, Path::new("layouts/default.yml"))
            .unwrap_or_else(|e| panic!("the built-in layout is invalid: {e}"))
    }

    /// The absolute paths of project `name` under `root`.
    pub fn project(&self, root: &Path, name: &str) -> ProjectPaths {
        let base = root.join(name);
        let d = &self.dirs;
        ProjectPaths {
            name: name.to_string(),
            root: root.to_path_buf(),
            project_yml: base.join("project.yml"),
            project_repo: base.join(&d.project_repo),
            pillar_repo: base.join(&d.pillar_repo),
            project: base.join(&d.project),
            pillar: base.join(&d.pillar),
            build: base.join(&d.build),
            deploy: base.join(&d.deploy),
            run: base.join(&d.run),
            data: base.join(&d.data),
            archives: base.join(&d.archives),
            releases: base.join(&d.releases),
            logs: base.join(&d.logs),
            state: base.join(&d.state),
            shadow: base.join(&d.shadow),
            cache: base.join(&d.cache),
            private: self.private.iter().map(|p| self.named(&base, p)).collect(),
            base,
        }
    }

    fn named(&self, base: &Path, part: &str) -> PathBuf {
        let d = &self.dirs;
        let rel = match part {
            "project_repo" => &d.project_repo,
            "pillar_repo" => &d.pillar_repo,
            "project" => &d.project,
            "pillar" => &d.pillar,
            "build" => &d.build,
            "deploy" => &d.deploy,
            "run" => &d.run,
            "data" => &d.data,
            "archives" => &d.archives,
            "releases" => &d.releases,
            "logs" => &d.logs,
            "state" => &d.state,
            "cache" => &d.cache,
            other => Path::new(other),
        };
        base.join(rel)
    }
}

/// Absolute paths of one project's parts.
#[derive(Debug, Clone)]
pub struct ProjectPaths {
    pub name: String,
    pub root: PathBuf,
    pub base: PathBuf,
    pub project_yml: PathBuf,
    pub project_repo: PathBuf,
    pub pillar_repo: PathBuf,
    pub project: PathBuf,
    pub pillar: PathBuf,
    pub build: PathBuf,
    pub deploy: PathBuf,
    pub run: PathBuf,
    pub data: PathBuf,
    pub archives: PathBuf,
    pub releases: PathBuf,
    pub logs: PathBuf,
    pub state: PathBuf,
    pub shadow: PathBuf,
    /// The build cache, `cache/<buildpack>/`: kept across builds, never baked.
    pub cache: PathBuf,
    pub private: Vec<PathBuf>,
}

impl ProjectPaths {
    /// Creates every missing directory (never touching existing ones, so data/, run/ and
    /// releases survive a repair) and tightens the private ones to 0700. Returns what it created.
    /// run/ is created only when absent: in editable mode it is a link that the caller manages.
    pub fn ensure(&self) -> Result<Vec<PathBuf>, Error> {
        let mut created = Vec::new();
        let dirs = [
            &self.base,
            &self.project,
            &self.pillar,
            &self.build,
            &self.deploy,
            &self.data,
            &self.archives,
            &self.releases,
            &self.logs,
            &self.state,
        ];
        for dir in dirs {
            if !dir.exists() {
                let private = self.private.iter().any(|p| p == dir);
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(if private { 0o700 } else { 0o755 })
                    .create(dir)
                    .map_err(|e| io_error("create", dir, e))?;
                created.push(dir.clone());
            }
        }
        if fs::symlink_metadata(&self.run).is_err() {
            fs::create_dir(&self.run).map_err(|e| io_error("create", &self.run, e))?;
            created.push(self.run.clone());
        }
        for dir in &self.private {
            if dir.exists() {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                    .map_err(|e| io_error("restrict", dir, e))?;
            }
        }
        Ok(created)
    }

    pub fn journal(&self) -> PathBuf {
        self.state.join("journal.json")
    }

    pub fn release_log(&self) -> PathBuf {
        self.state.join("releases.json")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.state.join("lock")
    }

    pub fn release_dir(&self, release: &str) -> PathBuf {
        self.deploy.join(release)
    }

    pub fn tarball(&self, release: &str) -> PathBuf {
        self.releases.join(format!("{release}.tar.zst"))
    }

    pub fn manifest(&self, release: &str) -> PathBuf {
        self.releases.join(format!("{release}.json"))
    }

    pub fn archive_dir(&self, release: &str) -> PathBuf {
        self.archives.join(release)
    }

    pub fn log_file(&self, release: &str) -> PathBuf {
        self.logs.join(format!("{release}.log"))
    }

    pub fn events_file(&self, release: &str) -> PathBuf {
        self.logs.join(format!("{release}.jsonl"))
    }
}

/// `^[a-z0-9][a-z0-9._-]{0,62}$` (docs/layout.md).
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for (name, ok) in [
            ("shop", true),
            ("a", true),
            ("0day", true),
            ("my-app.v2_x", true),
            ("", false),
            ("-x", false),
            (".x", false),
            ("Shop", false),
            ("a/b", false),
            ("a b", false),
            (&"a".repeat(63), true),
            (&"a".repeat(64), false),
        ] {
            assert_eq!(valid_name(name), ok, "{name:?}");
        }
    }

    #[test]
    fn default_layout_places_every_part() {
        let paths = Layout::default_layout().project(Path::new("/srv/projects"), "shop");
        assert_eq!(
            paths.project_repo,
            Path::new("/srv/projects/shop/git/project.git")
        );
        assert_eq!(paths.run, Path::new("/srv/projects/shop/run"));
        assert_eq!(paths.private.len(), 3);
        assert!(
            paths
                .private
                .contains(&PathBuf::from("/srv/projects/shop/state"))
        );
    }

    #[test]
    fn layouts_without_a_cache_dir_still_parse() {
        let text = DEFAULT_LAYOUT.replace("  cache: cache\n", "");
        assert_ne!(text, DEFAULT_LAYOUT);
        let paths = Layout::parse(&text, Path::new("old.yml"))
            .unwrap()
            .project(Path::new("/srv/projects"), "shop");
        assert_eq!(paths.cache, Path::new("/srv/projects/shop/cache"));
    }

    #[test]
    fn layout_refuses_escaping_paths() {
        let text = DEFAULT_LAYOUT.replace("run: run", "run: ../elsewhere");
        let err = Layout::parse(&text, Path::new("x.yml")).unwrap_err();
        assert!(err.to_string().contains("`run`"), "{err}");
    }
}
