//! How kiln.yml names a buildpack (`buildpacks: [python, ./bp, https://host/bp.git#<commit>]`).
//! The names are checked when kiln.yml is parsed, in pre-receive, so a git URL that is not
//! pinned to a commit refuses the push with its line and column instead of failing a build.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Deserializer};

/// kiln's own buildpacks (the repository's `buildpacks/`), in the order kiln tries their
/// `bin/detect` when kiln.yml names none.
pub const BUILTIN: [&str; 4] = ["python", "nodejs", "static", "procfile"];

/// One entry of kiln.yml's `buildpacks:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildpackRef {
    /// One of [`BUILTIN`].
    Builtin(String),
    /// A directory on the node (an absolute path).
    NodeDir(PathBuf),
    /// A directory inside the pushed app (`./vendor/bp`), relative to its root.
    AppDir(PathBuf),
    /// A git repository at one commit: cloned once per node, never followed to a newer commit.
    Git { url: String, commit: String },
}

/// Why a `buildpacks:` entry is not one kiln can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildpackRefError {
    #[error(
        "buildpack `{value}` is not pinned to a commit: append `#<commit>` (the 40 hex digits of \
         a commit id), since a branch or tag could change what a rebuild of this release runs"
    )]
    Unpinned { value: String },
    #[error(
        "`{value}` is not a buildpack: name one of kiln's own ({builtin}), a directory on the \
         node (`/opt/buildpacks/x`), one in the app (`./buildpacks/x`), or a git URL pinned to a \
         commit (`https://host/x.git#<commit>`)",
        builtin = BUILTIN.map(|name| format!("`{name}`")).join(", ")
    )]
    Unknown { value: String },
    #[error("buildpack directory `{value}` must not contain `..`")]
    DotDot { value: String },
}

const GIT_SCHEMES: [&str; 5] = ["https://", "http://", "file://", "ssh://", "git://"];

impl BuildpackRef {
    pub fn parse(value: &str) -> Result<BuildpackRef, BuildpackRefError> {
        if BUILTIN.contains(&value) {
            return Ok(BuildpackRef::Builtin(value.to_string()));
        }
        if GIT_SCHEMES.iter().any(|scheme| value.starts_with(scheme)) {
            let pinned = value.rsplit_once('#').filter(|(url, commit)| {
                !url.is_empty()
                    && commit.len() == 40
                    && commit.bytes().all(|b| b.is_ascii_hexdigit())
            });
            return match pinned {
                Some((url, commit)) => Ok(BuildpackRef::Git {
                    url: url.to_string(),
                    commit: commit.to_ascii_lowercase(),
                }),
                None => Err(BuildpackRefError::Unpinned {
                    value: value.to_string(),
                }),
            };
        }
        let path = Path::new(value);
        let dir = || {
            if path.components().any(|c| c == Component::ParentDir) {
                Err(BuildpackRefError::DotDot {
                    value: value.to_string(),
                })
            } else {
                Ok(path
                    .components()
                    .filter(|c| *c != Component::CurDir)
                    .collect::<PathBuf>())
            }
        };
        if path.is_absolute() {
            return dir().map(BuildpackRef::NodeDir);
        }
        if value.starts_with("./") {
            let rel = dir()?;
            if rel.as_os_str().is_empty() || rel == Path::new(".") {
                return Err(BuildpackRefError::Unknown {
                    value: value.to_string(),
                });
            }
            return Ok(BuildpackRef::AppDir(rel));
        }
        Err(BuildpackRefError::Unknown {
            value: value.to_string(),
        })
    }

    /// The name of its build cache, `cache/<name>/`: kiln's own by name, a directory by its
    /// last component, a git repository by its last path segment without `.git`. Only
    /// letters, digits, `.`, `_` and `-`, never starting with a dot.
    pub fn cache_name(&self) -> String {
        let raw = match self {
            BuildpackRef::Builtin(name) => name.clone(),
            BuildpackRef::NodeDir(path) | BuildpackRef::AppDir(path) => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            BuildpackRef::Git { url, .. } => {
                let last = url.trim_end_matches('/').rsplit('/').next().unwrap_or("");
                last.strip_suffix(".git").unwrap_or(last).to_string()
            }
        };
        let clean: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let clean = clean.trim_start_matches('.').to_string();
        if clean.is_empty() {
            "buildpack".into()
        } else {
            clean
        }
    }
}

impl fmt::Display for BuildpackRef {
    /// As kiln.yml writes it, and as `.kiln/buildpacks.json` records its source.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildpackRef::Builtin(name) => write!(f, "{name}"),
            BuildpackRef::NodeDir(path) => write!(f, "{}", path.display()),
            BuildpackRef::AppDir(path) => write!(f, "./{}", path.display()),
            BuildpackRef::Git { url, commit } => write!(f, "{url}#{commit}"),
        }
    }
}

impl<'de> Deserialize<'de> for BuildpackRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        BuildpackRef::parse(&value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn parses_each_kind() {
        let cases = [
            ("python", Ok(BuildpackRef::Builtin("python".into()))),
            (
                "/opt/bp/go",
                Ok(BuildpackRef::NodeDir(PathBuf::from("/opt/bp/go"))),
            ),
            (
                "./vendor//bp/",
                Ok(BuildpackRef::AppDir(PathBuf::from("vendor/bp"))),
            ),
            (
                &format!("https://example.com/bp.git#{SHA}") as &str,
                Ok(BuildpackRef::Git {
                    url: "https://example.com/bp.git".into(),
                    commit: SHA.into(),
                }),
            ),
            (
                "https://example.com/bp.git",
                Err(BuildpackRefError::Unpinned {
                    value: "https://example.com/bp.git".into(),
                }),
            ),
            (
                "file:///srv/bp.git#main",
                Err(BuildpackRefError::Unpinned {
                    value: "file:///srv/bp.git#main".into(),
                }),
            ),
            (
                "heroku/python",
                Err(BuildpackRefError::Unknown {
                    value: "heroku/python".into(),
                }),
            ),
            (
                "./a/../../b",
                Err(BuildpackRefError::DotDot {
                    value: "./a/../../b".into(),
                }),
            ),
            ("./", Err(BuildpackRefError::Unknown { value: "./".into() })),
        ];
        for (text, expected) in cases {
            assert_eq!(BuildpackRef::parse(text), expected, "{text}");
        }
    }

    #[test]
    fn cache_names_are_plain_file_names() {
        let cases = [
            ("nodejs", "nodejs"),
            ("/opt/bp/my bp", "my-bp"),
            ("./.hidden", "hidden"),
            (
                &format!("file:///srv/x/heroku-buildpack-go.git#{SHA}") as &str,
                "heroku-buildpack-go",
            ),
            (&format!("https://example.com/#{SHA}"), "example.com"),
        ];
        for (text, expected) in cases {
            let parsed = BuildpackRef::parse(text).expect(text);
            assert_eq!(parsed.cache_name(), expected, "{text}");
        }
    }

    #[test]
    fn displays_as_written() {
        for text in ["python", "/opt/bp", "./bp", &format!("file:///x.git#{SHA}")] {
            assert_eq!(BuildpackRef::parse(text).expect(text).to_string(), text);
        }
    }
}
