//! The `Procfile` (Heroku's format) and the process types of a release: `name: command`
//! lines, comments and blank lines; the tree's Procfile overrides, name by name, the
//! `default_process_types` a buildpack recorded in `.kiln/buildpacks.json`. A `release:` entry
//! is not a process type but the release-phase command the deploy stage runs.
//!
//! A bad Procfile is refused at push, in pre-receive, with `Procfile:LINE:COLUMN: ...`, the way
//! kiln.yml is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::config_error::ConfigError;
use crate::config::processes::{RELEASE_ENTRY, valid_type_name};

pub const PROCFILE: &str = "Procfile";

use crate::runtime::buildpack::BUILDPACKS_FILE;

/// A parsed Procfile: process types in file order, and the release-phase command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Procfile {
    pub types: BTreeMap<String, String>,
    pub release: Option<String>,
}

impl Procfile {
    /// Parses a Procfile's text; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Procfile, ConfigError> {
        let mut procfile = Procfile::default();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (index, raw) in text.split('\n').enumerate() {
            let number = index + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let column = line.len() - trimmed.len() + 1;
            let error = |column: usize, message: String| ConfigError {
                file: file.to_path_buf(),
                line: Some(number),
                column: Some(column),
                message,
            };
            let Some((name, command)) = trimmed.split_once(':') else {
                return Err(error(
                    column,
                    "expected `name: command` (e.g. `web: gunicorn app:app`)".into(),
                ));
            };
            let name = name.trim_end();
            if !valid_type_name(name) {
                // `web gunicorn --bind 127.0.0.1:$PORT app:app`: the colon kiln split at is
                // the command's; the line's own is missing.
                let hint = name
                    .split_once(char::is_whitespace)
                    .filter(|(first, _)| valid_type_name(first))
                    .map(|(first, _)| {
                        format!(" (a line is `name: command`: is the `:` after `{first}` missing?)")
                    })
                    .unwrap_or_default();
                return Err(error(
                    column,
                    format!(
                        "invalid process type `{name}`: use 1 to 63 letters, digits, `_` or `-`{hint}"
                    ),
                ));
            }
            let command = command.trim();
            if command.is_empty() {
                return Err(error(
                    column + name.len() + 1,
                    format!("process type `{name}` has no command"),
                ));
            }
            if let Some(first) = seen.insert(name.to_string(), number) {
                return Err(error(
                    column,
                    format!("process type `{name}` is already defined on line {first}"),
                ));
            }
            if name == RELEASE_ENTRY {
                procfile.release = Some(command.to_string());
            } else {
                procfile.types.insert(name.to_string(), command.to_string());
            }
        }
        Ok(procfile)
    }

    /// Parses the bytes of a Procfile (from a commit or a tree).
    pub fn parse_bytes(bytes: &[u8], file: &Path) -> Result<Procfile, ConfigError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| ConfigError::whole_file(file, "not valid UTF-8"))?;
        Procfile::parse(text, file)
    }
}

/// Refuses a commit whose Procfile is not valid (pre-receive, and `kiln deploy` before
/// anything changes): `Procfile:LINE:COLUMN: ...`.
pub fn check_commit(repo: &git2::Repository, commit: git2::Oid) -> Result<(), crate::error::Error> {
    if let Some(bytes) = crate::fs::git::read_file(repo, commit, PROCFILE)? {
        Procfile::parse_bytes(&bytes, Path::new(PROCFILE))?;
    }
    Ok(())
}

/// The process types a release runs and its release-phase command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessTypes {
    pub types: BTreeMap<String, String>,
    pub release: Option<String>,
    /// The types only a buildpack proposed (the Procfile does not name them).
    pub proposed: std::collections::BTreeSet<String>,
}

impl ProcessTypes {
    /// Reads `tree`'s Procfile over its `.kiln/buildpacks.json` `default_process_types`. Neither
    /// file: no process types (the app runs through kiln.yml `services`, or not at all).
    pub fn of_tree(tree: &Path) -> Result<ProcessTypes, ConfigError> {
        let mut types = default_process_types(tree)?;
        let procfile_path = tree.join(PROCFILE);
        let procfile = match std::fs::read(&procfile_path) {
            Ok(bytes) => Procfile::parse_bytes(&bytes, Path::new(PROCFILE))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Procfile::default(),
            Err(e) => {
                return Err(ConfigError::whole_file(
                    Path::new(PROCFILE),
                    format!("could not read `{}`: {e}", procfile_path.display()),
                ));
            }
        };
        let proposed = types
            .keys()
            .filter(|name| !procfile.types.contains_key(*name))
            .cloned()
            .collect();
        types.extend(procfile.types);
        Ok(ProcessTypes {
            types,
            release: procfile.release,
            proposed,
        })
    }
}

#[derive(Deserialize)]
struct BuildpacksFile {
    #[serde(default)]
    default_process_types: Option<BTreeMap<String, String>>,
}

/// `default_process_types` of `.kiln/buildpacks.json` in `tree` (none without the file).
fn default_process_types(tree: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let path: PathBuf = tree.join(BUILDPACKS_FILE);
    let label = Path::new(BUILDPACKS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => {
            return Err(ConfigError::whole_file(
                label,
                format!("could not read `{}`: {e}", path.display()),
            ));
        }
    };
    let file: BuildpacksFile = serde_json::from_slice(&bytes).map_err(|e| ConfigError {
        file: label.to_path_buf(),
        line: Some(e.line()),
        column: Some(e.column()),
        message: format!("not the JSON the buildpacks runner writes: {e}"),
    })?;
    let types = file.default_process_types.unwrap_or_default();
    for (name, command) in &types {
        if !valid_type_name(name) || name == RELEASE_ENTRY || command.trim().is_empty() {
            return Err(ConfigError::whole_file(
                label,
                format!("invalid default process type `{name}: {command}`"),
            ));
        }
    }
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Procfile, String> {
        Procfile::parse(text, Path::new("Procfile")).map_err(|e| e.to_string())
    }

    #[test]
    fn heroku_procfiles_parse() {
        let procfile = parse(
            "# the app\nweb: gunicorn app:app --bind 127.0.0.1:$PORT\n\n  worker:python worker.py  \r\nrelease: ./manage.py migrate\nclock_2: ./clock\n",
        )
        .unwrap();
        assert_eq!(
            procfile.types.get("web").map(String::as_str),
            Some("gunicorn app:app --bind 127.0.0.1:$PORT")
        );
        assert_eq!(
            procfile.types.get("worker").map(String::as_str),
            Some("python worker.py")
        );
        assert_eq!(procfile.types.len(), 3);
        assert_eq!(procfile.release.as_deref(), Some("./manage.py migrate"));
        assert_eq!(parse("").unwrap(), Procfile::default());
        // Colons in the command belong to it.
        assert_eq!(
            parse("web: gunicorn a:b").unwrap().types["web"],
            "gunicorn a:b"
        );
    }

    #[test]
    fn bad_lines_name_their_line_and_column() {
        let cases = [
            (
                "web: ok\njust words\n",
                "Procfile:2:1: expected `name: command`",
            ),
            (
                "web: ok\n  we b: x\n",
                "Procfile:2:3: invalid process type `we b`",
            ),
            ("web.1: x\n", "Procfile:1:1: invalid process type `web.1`"),
            ("web:\n", "Procfile:1:5: process type `web` has no command"),
            (
                "web: a\n\nweb: b\n",
                "Procfile:3:1: process type `web` is already defined on line 1",
            ),
            (": x\n", "Procfile:1:1: invalid process type ``"),
        ];
        for (text, expected) in cases {
            let error = parse(text).unwrap_err();
            assert!(error.starts_with(expected), "{text:?}: {error}");
        }
        let error = Procfile::parse_bytes(b"web: \xff\n", Path::new("Procfile")).unwrap_err();
        assert_eq!(error.to_string(), "Procfile: not valid UTF-8");
    }

    /// Regression: a missing `:` after the type was reported as an invalid type cut at the
    /// command's own colon, with no word of what was wrong.
    #[test]
    fn regression_a_missing_colon_after_the_type_says_so() {
        assert_eq!(
            parse("web gunicorn --bind 127.0.0.1:$PORT app:app\n").unwrap_err(),
            "Procfile:1:1: invalid process type `web gunicorn --bind 127.0.0.1`: use 1 to 63 letters, digits, `_` or `-` (a line is `name: command`: is the `:` after `web` missing?)"
        );
        // A type with a space in it gets the same guess: its first word is a type.
        let error = parse("we b: x\n").unwrap_err();
        assert!(
            error.ends_with("(a line is `name: command`: is the `:` after `we` missing?)"),
            "{error}"
        );
    }

    #[test]
    fn the_procfile_overrides_the_buildpacks_default_types_name_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".kiln")).unwrap();
        std::fs::write(
            dir.path().join(BUILDPACKS_FILE),
            r#"{"buildpacks": [{"name": "python", "source": "buildpacks/python"}],
                "default_process_types": {"web": "python -m app", "worker": "python w.py"}}"#,
        )
        .unwrap();
        let types = ProcessTypes::of_tree(dir.path()).unwrap();
        assert_eq!(types.types["web"], "python -m app");
        std::fs::write(
            dir.path().join(PROCFILE),
            "web: gunicorn app:app\nrelease: migrate\n",
        )
        .unwrap();
        let types = ProcessTypes::of_tree(dir.path()).unwrap();
        assert_eq!(types.types["web"], "gunicorn app:app");
        assert_eq!(types.types["worker"], "python w.py");
        assert_eq!(types.release.as_deref(), Some("migrate"));
        assert_eq!(types.proposed.iter().collect::<Vec<_>>(), ["worker"]);

        std::fs::write(dir.path().join(BUILDPACKS_FILE), "{not json").unwrap();
        let error = ProcessTypes::of_tree(dir.path()).unwrap_err().to_string();
        assert!(error.starts_with(".kiln/buildpacks.json:1:2: "), "{error}");
        assert_eq!(
            ProcessTypes::of_tree(&dir.path().join("missing")).unwrap(),
            ProcessTypes::default()
        );
    }
}
