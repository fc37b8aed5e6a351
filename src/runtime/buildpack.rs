//! Runs buildpacks as Heroku's buildpack API v2 defines them (README.md, "Buildpacks"):
//! `bin/detect BUILD_DIR`, `bin/compile BUILD_DIR CACHE_DIR ENV_DIR`, `bin/release BUILD_DIR`,
//! the `export` file a buildpack leaves for the ones after it, and `.profile.d/` in the tree.
//! The build stage calls [`build`] before the project's own build commands (cooking mode in
//! build/, editable mode in project/); final mode never builds.
//!
//! What the buildpacks used and the process types they propose are written into the tree as
//! `.kiln/buildpacks.json`, so that they travel with the release to production.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::buildpack_ref::{BUILTIN, BuildpackRef};
use crate::exec::redact::Redactor;
use crate::exec::report::Reporter;
use crate::exec::stage::{self, ProgramSpec, StageError, Stream};
use crate::runtime::builtin;

/// Where a built tree records its buildpacks (the team's A → B interface, docs/layout.md).
pub const BUILDPACKS_FILE: &str = ".kiln/buildpacks.json";

/// The stage buildpacks run in, for errors and `KILN_STAGE`.
const STAGE: &str = "build";

/// Tells the last buildpack that nothing writes to the tree after it (see
/// [`BuildRequest::links_ok`]).
pub const LINKS_VAR: &str = "KILN_CACHE_LINKS";

#[derive(Debug, thiserror::Error)]
pub enum BuildpackError {
    #[error("could not {action} `{}`", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "buildpack `{buildpack}` not found: `{}` is not a directory",
        path.display()
    )]
    Missing { buildpack: String, path: PathBuf },
    #[error(
        "buildpack `{buildpack}` has no executable `bin/{file}`: a buildpack needs bin/detect and bin/compile (and may have bin/release)"
    )]
    Incomplete {
        buildpack: String,
        file: &'static str,
    },
    #[error(
        "buildpack `{buildpack}` does not apply to this app (its bin/detect said no{}): remove it from `buildpacks:` in kiln.yml, or add what it looks for",
        exit.map(|code| format!(", exit {code}")).unwrap_or_default()
    )]
    NotDetected {
        buildpack: String,
        exit: Option<i32>,
    },
    #[error("buildpack `{buildpack}`: {failure}{}", last.as_ref().map(|l| format!(": {l}")).unwrap_or_default())]
    Step {
        buildpack: String,
        /// `bin/compile: exit 1`, `bin/compile: timeout after 30m`.
        failure: String,
        /// The last line the step wrote to stderr: a buildpack's own explanation.
        last: Option<String>,
        /// The step as the events name it: `python bin/compile`.
        command: String,
        /// Its exit status, if it exited non-zero.
        exit_code: Option<i32>,
    },
    #[error(
        "could not fetch buildpack `{url}` at {commit} ({failure}): check the URL and that the commit is on one of its branches or tags"
    )]
    Clone {
        url: String,
        commit: String,
        failure: String,
    },
    #[error("buildpack `{buildpack}`: bin/release printed {problem}")]
    Release { buildpack: String, problem: String },
}

impl From<BuildpackError> for crate::error::Error {
    fn from(e: BuildpackError) -> Self {
        crate::error::Error::Buildpack(Box::new(e))
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BuildpackError {
    let path = path.to_path_buf();
    move |source| BuildpackError::Io {
        action,
        path,
        source,
    }
}

/// One buildpack run: what the build stage knows.
pub struct BuildRequest<'a> {
    /// The node's root: buildpacks are materialized and cloned under `.kiln/buildpacks/`.
    pub node_root: &'a Path,
    /// The project's build cache, `cache/`; each buildpack gets `cache/<name>/`.
    pub cache: &'a Path,
    /// The tree to build: build/ (cooking) or project/ (editable).
    pub build_dir: &'a Path,
    /// kiln.yml's list, or None to detect kiln's own.
    pub listed: Option<&'a [BuildpackRef]>,
    /// The build stage's environment.
    pub env: &'a BTreeMap<String, String>,
    /// The merged `env:` settings, one file each in ENV_DIR.
    pub settings: &'a BTreeMap<String, String>,
    /// Each program's timeout: the build stage's.
    pub timeout: Duration,
    pub redactor: &'a Redactor,
    /// Files of build/ may be hard links to the live release's tree (an export for a recipe
    /// without build commands): a buildpack must not write through them, so they are copied
    /// first once a buildpack is to run.
    pub unshare: bool,
    /// Nothing writes to the tree after the last buildpack (cooking mode, no build or bundle
    /// commands): it gets `KILN_CACHE_LINKS=1` and may hard-link what it keeps in its cache
    /// into the tree instead of copying it (release trees are never written to, and cache
    /// entries are written once).
    pub links_ok: bool,
}

/// A buildpack in `.kiln/buildpacks.json` and in the release manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsedBuildpack {
    /// Its build cache's name, `cache/<name>/`: `python`, or a directory's or repo's name.
    pub name: String,
    /// Where it came from: `kiln:python@<content hash>`, a directory, or `<url>#<commit>`.
    pub source: String,
}

/// `.kiln/buildpacks.json`: the buildpacks that built the tree and the process types they
/// propose (a Procfile overrides them name by name).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildpacksFile {
    pub buildpacks: Vec<UsedBuildpack>,
    #[serde(default)]
    pub default_process_types: BTreeMap<String, String>,
}

/// What the buildpacks did.
#[derive(Debug)]
pub struct Built {
    pub file: BuildpacksFile,
    /// The build environment after the buildpacks' `export` files: the project's build
    /// commands run with it, as a buildpack after them would.
    pub env: BTreeMap<String, String>,
}

/// A buildpack ready to run: where its files are and how to name it.
struct Resolved {
    name: String,
    source: String,
    dir: PathBuf,
}

/// Runs the listed buildpacks (or the first of kiln's own whose bin/detect matches) in
/// `build_dir`. `Ok(None)`: none was listed or detected, which is not an error (the project's
/// own build commands may do the job).
pub fn build(req: &BuildRequest, out: &mut Reporter) -> Result<Option<Built>, BuildpackError> {
    // Private to kiln's user (0700): ENV_DIR holds the settings, secrets included, and the
    // buildpacks run from copies here so that their `export` files are this build's own.
    let work = tempfile::Builder::new()
        .prefix("kiln-buildpacks-")
        .tempdir()
        .map_err(io_err("create a temp dir in", &std::env::temp_dir()))?;
    let mut env = req.env.clone();
    if let Some(commit) = env.get("KILN_COMMIT").cloned() {
        // What Heroku's build system sets; some buildpacks stamp it into the app.
        env.entry("SOURCE_VERSION".into()).or_insert(commit);
    }
    let selected = match req.listed {
        Some(list) => {
            let mut selected = Vec::new();
            for (index, reference) in list.iter().enumerate() {
                let found = resolve(req, reference, &env, out)?;
                let private = work.path().join(format!("{index}-{}", found.name));
                copy_dir(&found.dir, &private)?;
                let resolved = Resolved {
                    dir: private,
                    ..found
                };
                match detect(req, &resolved, &env, out)? {
                    Ok(name) => out.headline(&format!("{name} app detected")),
                    Err(exit) => {
                        return Err(BuildpackError::NotDetected {
                            buildpack: resolved.name,
                            exit,
                        });
                    }
                }
                selected.push(resolved);
            }
            selected
        }
        None => match detect_builtin(req, &env, out)? {
            Some((found, name)) => {
                out.headline(&format!("{name} app detected"));
                let private = work.path().join(format!("0-{}", found.name));
                copy_dir(&found.dir, &private)?;
                vec![Resolved {
                    dir: private,
                    ..found
                }]
            }
            None => {
                out.note(&format!(
                    "no buildpack detected (kiln's own: {}); name one in kiln.yml `buildpacks:` if the app needs building",
                    BUILTIN.join(", ")
                ));
                return Ok(None);
            }
        },
    };
    if selected.is_empty() {
        return Ok(None);
    }
    if req.unshare {
        crate::fs::tree::break_hard_links(req.build_dir).map_err(|e| BuildpackError::Io {
            action: "copy the shared files of",
            path: req.build_dir.to_path_buf(),
            source: io::Error::other(crate::error::chain(&e)),
        })?;
    }
    let env_dir = work.path().join("env");
    write_env_dir(&env_dir, req.settings)?;

    let mut file = BuildpacksFile::default();
    for (index, buildpack) in selected.iter().enumerate() {
        let mut step_env = env.clone();
        if req.links_ok && index + 1 == selected.len() {
            step_env.insert(LINKS_VAR.into(), "1".into());
        }
        compile(req, buildpack, &env_dir, &step_env, out)?;
        if buildpack.dir.join("export").is_file() {
            let result = work.path().join(format!("{index}-{}.env", buildpack.name));
            env = apply_export(req, buildpack, &env, &result, out)?;
        }
        let types = release(req, buildpack, &env, out)?;
        // A later buildpack's process type of the same name wins, as its build comes last.
        file.default_process_types.extend(types);
        file.buildpacks.push(UsedBuildpack {
            name: buildpack.name.clone(),
            source: buildpack.source.clone(),
        });
    }
    write_buildpacks_file(req.build_dir, &file)?;
    Ok(Some(Built { file, env }))
}

/// Reads `.kiln/buildpacks.json` of a built tree (None: no buildpack built it, or the file
/// is not kiln's).
pub fn read_buildpacks_file(tree: &Path) -> Option<BuildpacksFile> {
    let bytes = fs::read(tree.join(BUILDPACKS_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write_buildpacks_file(tree: &Path, file: &BuildpacksFile) -> Result<(), BuildpackError> {
    let path = tree.join(BUILDPACKS_FILE);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    let mut bytes = serde_json::to_vec_pretty(file).unwrap_or_default();
    bytes.push(b'\n');
    fs::write(&path, bytes).map_err(io_err("write", &path))
}

/// Finds (materializes, clones) a listed buildpack.
fn resolve(
    req: &BuildRequest,
    reference: &BuildpackRef,
    env: &BTreeMap<String, String>,
    out: &mut Reporter,
) -> Result<Resolved, BuildpackError> {
    let name = reference.cache_name();
    let (dir, source) = match reference {
        BuildpackRef::Builtin(builtin_name) => {
            let dir = builtin::materialize(req.node_root, builtin_name)
                .map_err(|e| BuildpackError::Io {
                    action: e.action,
                    path: e.path,
                    source: e.source,
                })?
                .ok_or_else(|| BuildpackError::Missing {
                    buildpack: builtin_name.clone(),
                    path: PathBuf::from(format!("buildpacks/{builtin_name}")),
                })?;
            // `<name>-<content hash>` on disk: recorded as `kiln:<name>@<content hash>`.
            let on_disk = dir.file_name().unwrap_or_default().to_string_lossy();
            let source = match on_disk.rsplit_once('-') {
                Some((name, hash)) => format!("kiln:{name}@{hash}"),
                None => format!("kiln:{on_disk}"),
            };
            (dir, source)
        }
        BuildpackRef::NodeDir(path) => (path.clone(), reference.to_string()),
        BuildpackRef::AppDir(rel) => (req.build_dir.join(rel), reference.to_string()),
        BuildpackRef::Git { url, commit } => {
            (clone(req, url, commit, env, out)?, reference.to_string())
        }
    };
    if !dir.is_dir() {
        return Err(BuildpackError::Missing {
            buildpack: reference.to_string(),
            path: dir,
        });
    }
    Ok(Resolved { name, source, dir })
}

/// kiln's own buildpacks, tried in order: the first whose bin/detect says yes, with the name
/// it printed. They only read the tree, so they run from the shared, materialized copy.
fn detect_builtin(
    req: &BuildRequest,
    env: &BTreeMap<String, String>,
    out: &mut Reporter,
) -> Result<Option<(Resolved, String)>, BuildpackError> {
    for name in BUILTIN {
        let found = resolve(req, &BuildpackRef::Builtin(name.to_string()), env, out)?;
        if let Ok(detected) = detect(req, &found, env, out)? {
            return Ok(Some((found, detected)));
        }
    }
    Ok(None)
}

/// `bin/detect BUILD_DIR`: Ok(the name it printed), or Err(its exit status) when it says the
/// app is not for it.
fn detect(
    req: &BuildRequest,
    buildpack: &Resolved,
    env: &BTreeMap<String, String>,
    out: &mut Reporter,
) -> Result<Result<String, Option<i32>>, BuildpackError> {
    let program = executable(buildpack, "detect")?;
    let step = Step {
        label: format!("{} bin/detect", buildpack.name),
        program: &program,
        args: &[req.build_dir.as_os_str()],
        cwd: req.build_dir,
        env,
    };
    let (result, printed) = run_step(req, &step, Stdout::Keep, out);
    match result {
        Ok(_) => {
            let name = printed
                .stdout
                .iter()
                .map(|line| line.trim())
                .find(|line| !line.is_empty())
                .map_or_else(|| buildpack.name.clone(), str::to_string);
            Ok(Ok(name))
        }
        Err(StageError::Exit { code, .. }) => Ok(Err(Some(code))),
        Err(e) => Err(step_error(buildpack, e, None)),
    }
}

/// A program a buildpack step runs without a shell: one of its `bin/` programs, the shell
/// reading its `export` file, or the git clone of a pinned buildpack.
struct Step<'a> {
    /// How the output, the events and errors name it: `python bin/compile`.
    label: String,
    program: &'a Path,
    args: &'a [&'a OsStr],
    cwd: &'a Path,
    env: &'a BTreeMap<String, String>,
}

/// Whether a step's stdout is its answer (bin/detect's name, bin/release's YAML), kept and not
/// shown, or output shown to the pusher.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stdout {
    Keep,
    Show,
}

/// What kiln keeps of a step's output.
#[derive(Default)]
struct Printed {
    /// Its stdout lines, with [`Stdout::Keep`].
    stdout: Vec<String>,
    /// The last line it wrote to stderr: where buildpacks explain a failure.
    last_stderr: Option<String>,
}

/// Runs a step in the build stage as Heroku shows it (stderr, and stdout unless kept, through
/// [`Reporter::buildpack_line`]), with its `command` and `command_end` events: the events of
/// its output name it by its label.
fn run_step(
    req: &BuildRequest,
    step: &Step,
    stdout: Stdout,
    out: &mut Reporter,
) -> (Result<Duration, StageError>, Printed) {
    let spec = ProgramSpec {
        stage: STAGE,
        label: &step.label,
        program: step.program,
        args: step.args,
        cwd: step.cwd,
        env: step.env,
        timeout: req.timeout,
    };
    let mut printed = Printed::default();
    out.program_start(STAGE, &step.label);
    let started = std::time::Instant::now();
    let mut sink = |stream: Stream, line: &[u8]| {
        if stream == Stream::Stdout && stdout == Stdout::Keep {
            printed
                .stdout
                .push(String::from_utf8_lossy(line).into_owned());
            return;
        }
        out.buildpack_line(stream, line);
        let text = String::from_utf8_lossy(line);
        let text = text.trim().trim_start_matches("!").trim();
        if stream == Stream::Stderr && !text.is_empty() {
            printed.last_stderr = Some(text.to_string());
        }
    };
    let result = stage::run_program(&spec, req.redactor, &mut sink);
    out.command_end(STAGE, result.as_ref().err(), started.elapsed());
    (result, printed)
}

fn executable(buildpack: &Resolved, name: &'static str) -> Result<PathBuf, BuildpackError> {
    let path = buildpack.dir.join("bin").join(name);
    let runnable = fs::metadata(&path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false);
    if runnable {
        Ok(path)
    } else {
        Err(BuildpackError::Incomplete {
            buildpack: buildpack.name.clone(),
            file: name,
        })
    }
}

fn step_error(buildpack: &Resolved, e: StageError, last: Option<String>) -> BuildpackError {
    let failure = e.summary(stage::HEADLINE_COMMAND_CHARS);
    // The summary names the step by its label, `<name> bin/compile`: the name is said already.
    let failure = failure
        .strip_prefix(&format!("{} ", buildpack.name))
        .map(str::to_string)
        .unwrap_or(failure);
    BuildpackError::Step {
        buildpack: buildpack.name.clone(),
        failure,
        last,
        command: e.command().to_string(),
        exit_code: e.exit_code(),
    }
}

/// `bin/compile BUILD_DIR CACHE_DIR ENV_DIR` in the build dir, its output shown as Heroku
/// shows it; a failure carries the last line it wrote to stderr (where buildpacks explain
/// themselves). CACHE_DIR is the project's `cache/<name>/`, created if missing.
fn compile(
    req: &BuildRequest,
    buildpack: &Resolved,
    env_dir: &Path,
    env: &BTreeMap<String, String>,
    out: &mut Reporter,
) -> Result<(), BuildpackError> {
    let program = executable(buildpack, "compile")?;
    let cache = req.cache.join(&buildpack.name);
    fs::create_dir_all(&cache).map_err(io_err("create", &cache))?;
    let step = Step {
        label: format!("{} bin/compile", buildpack.name),
        program: &program,
        args: &[
            req.build_dir.as_os_str(),
            cache.as_os_str(),
            env_dir.as_os_str(),
        ],
        cwd: req.build_dir,
        env,
    };
    let (result, printed) = run_step(req, &step, Stdout::Show, out);
    result
        .map(drop)
        .map_err(|e| step_error(buildpack, e, printed.last_stderr))
}

/// `bin/release BUILD_DIR`: YAML whose `default_process_types` kiln keeps (Heroku's
/// `addons` and `config_vars` are not kiln's business: settings come from the pillar).
fn release(
    req: &BuildRequest,
    buildpack: &Resolved,
    env: &BTreeMap<String, String>,
    out: &mut Reporter,
) -> Result<BTreeMap<String, String>, BuildpackError> {
    if !buildpack.dir.join("bin/release").exists() {
        return Ok(BTreeMap::new());
    }
    let program = executable(buildpack, "release")?;
    let step = Step {
        label: format!("{} bin/release", buildpack.name),
        program: &program,
        args: &[req.build_dir.as_os_str()],
        cwd: req.build_dir,
        env,
    };
    let (result, printed) = run_step(req, &step, Stdout::Keep, out);
    result.map_err(|e| step_error(buildpack, e, printed.last_stderr))?;
    let yaml: String = printed
        .stdout
        .iter()
        .flat_map(|line| [line.as_str(), "\n"])
        .collect();
    parse_release(&yaml).map_err(|problem| BuildpackError::Release {
        buildpack: buildpack.name.clone(),
        problem,
    })
}

#[derive(Debug, Default, Deserialize)]
struct ReleaseOutput {
    #[serde(default)]
    default_process_types: Option<BTreeMap<String, String>>,
}

/// The process types of a `bin/release` output; Err says what is wrong with it.
fn parse_release(yaml: &str) -> Result<BTreeMap<String, String>, String> {
    if yaml.trim().is_empty() || yaml.trim() == "---" {
        return Ok(BTreeMap::new());
    }
    let parsed: ReleaseOutput =
        serde_saphyr::from_str(yaml).map_err(|e| format!("YAML kiln cannot read ({e})"))?;
    let types = parsed.default_process_types.unwrap_or_default();
    for name in types.keys() {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(format!(
                "the process type `{name}`: use letters, digits, `_` and `-`"
            ));
        }
    }
    Ok(types)
}

/// The environment after sourcing a buildpack's `export` file. The file is shell, so a
/// shell reads it: kiln's own fixed script, with the file's path as an argument (never
/// pasted into the script), prints the resulting environment into `result`, which kiln
/// reads back.
fn apply_export(
    req: &BuildRequest,
    buildpack: &Resolved,
    env: &BTreeMap<String, String>,
    result: &Path,
    out: &mut Reporter,
) -> Result<BTreeMap<String, String>, BuildpackError> {
    let export = buildpack.dir.join("export");
    let script = r#". "$1" >&2 && exec env -0 > "$2""#;
    let step = Step {
        label: format!("{} export", buildpack.name),
        program: Path::new("/bin/sh"),
        args: &[
            OsStr::new("-c"),
            OsStr::new(script),
            OsStr::new("sh"),
            export.as_os_str(),
            result.as_os_str(),
        ],
        cwd: req.build_dir,
        env,
    };
    let (ran, printed) = run_step(req, &step, Stdout::Show, out);
    ran.map_err(|e| step_error(buildpack, e, printed.last_stderr))?;
    let bytes = fs::read(result).map_err(io_err("read", result))?;
    // What the shell sets by itself is not the buildpack's.
    let shells_own = ["PWD", "OLDPWD", "SHLVL", "_"];
    Ok(bytes
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let text = String::from_utf8_lossy(entry);
            let (name, value) = text.split_once('=')?;
            (!name.is_empty() && !shells_own.contains(&name))
                .then(|| (name.to_string(), value.to_string()))
        })
        .collect())
}

/// ENV_DIR: one file per setting, named after it, holding its value (mode 0600, in a 0700
/// dir that is removed when the build ends).
fn write_env_dir(dir: &Path, settings: &BTreeMap<String, String>) -> Result<(), BuildpackError> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(io_err("create", dir))?;
    for (name, value) in settings {
        // settings::env_vars allows only names that are plain identifiers.
        let path = dir.join(name);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| io::Write::write_all(&mut file, value.as_bytes()))
            .map_err(io_err("write", &path))?;
    }
    Ok(())
}

/// Copies a buildpack's directory (modes and symlinks as they are).
fn copy_dir(from: &Path, to: &Path) -> Result<(), BuildpackError> {
    fs::create_dir_all(to).map_err(io_err("create", to))?;
    crate::fs::sync::sync_tree(from, to, &crate::fs::sync::SyncOptions::default())
        .map(|_| ())
        .map_err(|e| BuildpackError::Io {
            action: "copy the buildpack",
            path: from.to_path_buf(),
            source: io::Error::other(crate::error::chain(&e)),
        })
}

/// A git buildpack's directory on this node, cloned at `commit` the first time it is used
/// (`.kiln/buildpacks/git/<repo name>-<commit>`, without its `.git`). The commit is pinned in
/// kiln.yml, so the clone never needs updating.
fn clone(
    req: &BuildRequest,
    url: &str,
    commit: &str,
    env: &BTreeMap<String, String>,
    out: &mut Reporter,
) -> Result<PathBuf, BuildpackError> {
    let parent = builtin::node_dir(req.node_root).join("git");
    let name = BuildpackRef::Git {
        url: url.to_string(),
        commit: commit.to_string(),
    }
    .cache_name();
    let dir = parent.join(format!("{name}-{commit}"));
    if dir.is_dir() {
        return Ok(dir);
    }
    fs::create_dir_all(&parent).map_err(io_err("create", &parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-clone-")
        .tempdir_in(&parent)
        .map_err(io_err("create a temp dir in", &parent))?;
    out.headline(&format!("fetching buildpack {url} at {}", &commit[..7]));
    let mut env = env.clone();
    // Never wait for a password nobody will type.
    env.insert("GIT_TERMINAL_PROMPT".into(), "0".into());
    let checkout = tmp.path().join("bp");
    let steps: [(&str, &[&OsStr]); 2] = [
        (
            "clone",
            &[
                OsStr::new("clone"),
                OsStr::new("--quiet"),
                OsStr::new("--no-checkout"),
                OsStr::new("--"),
                OsStr::new(url),
                checkout.as_os_str(),
            ],
        ),
        (
            "checkout",
            &[
                OsStr::new("-C"),
                checkout.as_os_str(),
                OsStr::new("-c"),
                OsStr::new("advice.detachedHead=false"),
                OsStr::new("checkout"),
                OsStr::new("--quiet"),
                OsStr::new("--detach"),
                OsStr::new(commit),
            ],
        ),
    ];
    for (what, args) in steps {
        let step = Step {
            label: format!("git {what}"),
            program: Path::new("git"),
            args,
            cwd: tmp.path(),
            env: &env,
        };
        let (result, _) = run_step(req, &step, Stdout::Show, out);
        result.map_err(|e| BuildpackError::Clone {
            url: url.to_string(),
            commit: commit.to_string(),
            failure: e.summary(stage::HEADLINE_COMMAND_CHARS),
        })?;
    }
    let git = checkout.join(".git");
    fs::remove_dir_all(&git).map_err(io_err("remove", &git))?;
    if let Err(source) = fs::rename(&checkout, &dir)
        && !dir.is_dir()
    {
        return Err(BuildpackError::Io {
            action: "create",
            path: dir,
            source,
        });
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The process types a release output gives, or the start of the problem it has.
    type Expected = Result<&'static [(&'static str, &'static str)], &'static str>;

    #[test]
    fn release_output_gives_process_types() {
        let cases: [(&str, Expected); 6] = [
            ("", Ok(&[])),
            ("---\n", Ok(&[])),
            ("---\naddons: []\ndefault_process_types:\n", Ok(&[])),
            (
                "---\nconfig_vars:\n  A: b\ndefault_process_types:\n  web: npm start\n  worker-2: node w.js\n",
                Ok(&[("web", "npm start"), ("worker-2", "node w.js")]),
            ),
            (
                "default_process_types:\n  'bad name': x\n",
                Err("the process type `bad name`: use letters, digits, `_` and `-`"),
            ),
            (
                "default_process_types: [web]\n",
                Err("YAML kiln cannot read"),
            ),
        ];
        for (yaml, expected) in cases {
            let got = parse_release(yaml);
            match expected {
                Ok(pairs) => {
                    let want: BTreeMap<String, String> = pairs
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                    assert_eq!(got, Ok(want), "{yaml:?}");
                }
                Err(start) => {
                    let error = got.expect_err(yaml);
                    assert!(error.starts_with(start), "{yaml:?}: {error}");
                }
            }
        }
    }

    #[test]
    fn env_dir_holds_one_private_file_per_setting() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("env");
        let settings: BTreeMap<String, String> = [("DATABASE_URL", "postgres://x"), ("EMPTY", "")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        write_env_dir(&dir, &settings).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for (name, value) in &settings {
            let path = dir.join(name);
            assert_eq!(&fs::read_to_string(&path).unwrap(), value);
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[test]
    fn buildpacks_file_round_trips_and_tolerates_missing_types() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(read_buildpacks_file(tmp.path()), None);
        let file = BuildpacksFile {
            buildpacks: vec![UsedBuildpack {
                name: "nodejs".into(),
                source: "kiln:nodejs@0123456789ab".into(),
            }],
            default_process_types: [("web".to_string(), "npm start".to_string())].into(),
        };
        write_buildpacks_file(tmp.path(), &file).unwrap();
        assert_eq!(read_buildpacks_file(tmp.path()), Some(file));
        fs::write(
            tmp.path().join(BUILDPACKS_FILE),
            r#"{"buildpacks": [{"name": "x", "source": "/opt/x"}]}"#,
        )
        .unwrap();
        assert_eq!(
            read_buildpacks_file(tmp.path()).map(|f| f.default_process_types.len()),
            Some(0)
        );
    }
}
