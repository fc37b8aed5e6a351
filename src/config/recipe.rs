//! The project's recipe, `kiln.yml` at the root of the pushed app (docs/kiln-yml.md): what
//! to run at each stage, how to stop and start the app, how to check it and back it up.
//! It is parsed strictly, before anything changes, so a typo refuses the push instead of
//! half-running a deploy.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::config::buildpack_ref::BuildpackRef;
use crate::config::config_error::{ConfigError, parse_yaml_or_default};
use crate::config::duration;
use crate::config::processes::ProcessLimits;

/// Between SIGTERM and SIGKILL when a process is stopped, unless kiln.yml says `stop_grace`.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// How a project is deployed on this node (README.md, "Modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Editable,
    Cooking,
    Final,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Editable, Mode::Cooking, Mode::Final];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Editable => "editable",
            Mode::Cooking => "cooking",
            Mode::Final => "final",
        }
    }
}

/// The stages of every deploy, in the order they run (docs/kiln-yml.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Gather,
    PreInstall,
    Configure,
    Build,
    Bundle,
    Deploy,
    PostDeploy,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Gather,
        Stage::PreInstall,
        Stage::Configure,
        Stage::Build,
        Stage::Bundle,
        Stage::Deploy,
        Stage::PostDeploy,
    ];

    /// The name used in kiln.yml, logs and `KILN_STAGE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Gather => "gather",
            Stage::PreInstall => "pre_install",
            Stage::Configure => "configure",
            Stage::Build => "build",
            Stage::Bundle => "bundle",
            Stage::Deploy => "deploy",
            Stage::PostDeploy => "post_deploy",
        }
    }
}

/// A name given on the command line that is not one of a fixed set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{value}`, expected one of {expected}")]
pub struct UnknownName {
    pub kind: &'static str,
    pub value: String,
    /// The valid names, already formatted (`` `a`, `b` ``).
    pub expected: String,
}

impl UnknownName {
    pub(crate) fn new(kind: &'static str, value: &str, names: &[&str]) -> Self {
        let expected: Vec<String> = names.iter().map(|name| format!("`{name}`")).collect();
        UnknownName {
            kind,
            value: value.to_owned(),
            expected: expected.join(", "),
        }
    }
}

macro_rules! named_enum {
    ($type:ty, $kind:literal) => {
        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $type {
            type Err = UnknownName;

            fn from_str(text: &str) -> Result<Self, UnknownName> {
                <$type>::ALL
                    .into_iter()
                    .find(|value| value.as_str() == text)
                    .ok_or_else(|| {
                        let names: Vec<&str> = <$type>::ALL.iter().map(|v| v.as_str()).collect();
                        UnknownName::new($kind, text, &names)
                    })
            }
        }
    };
}
pub(crate) use named_enum;

named_enum!(Mode, "mode");
named_enum!(Stage, "stage");

/// What a deploy does with manual edits it finds in run/ (README.md, "Manual fixes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Drift {
    /// Save them under archives/, report them, and deploy.
    #[default]
    Save,
    /// Refuse the deploy until an operator deals with them.
    Refuse,
}

/// The parsed kiln.yml. Every field has a default, so an empty file is a valid recipe.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Recipe {
    /// Good releases (and their data snapshots) to keep. Default 5; at least 1.
    #[serde(deserialize_with = "at_least_one")]
    pub keep: u32,
    pub stages: StageCommands,
    pub services: Services,
    pub check: Option<Check>,
    /// Extra backup commands, run with `$KILN_BACKUP_DIR` set.
    #[serde(deserialize_with = "commands")]
    pub backup: Vec<String>,
    /// Commands that load the extra backups back, on rollback.
    #[serde(deserialize_with = "commands")]
    pub restore: Vec<String>,
    /// Default settings; the pillar is merged over them.
    pub defaults: serde_json::Map<String, serde_json::Value>,
    /// Per-stage timeouts; a stage without one gets the node's default.
    pub timeouts: StageTimeouts,
    pub drift: Drift,
    /// Paths in run/ that drift leaves out, in gitignore syntax, on top of the release's
    /// `.gitignore` files (what the app writes there itself).
    #[serde(deserialize_with = "drift_ignore")]
    pub drift_ignore: Vec<String>,
    pub modes: ModeOverrides,
    /// Deploy from the pre-receive hook, so that a failed deploy refuses the push and the
    /// branch does not move. Default false; node.yml or project.yml decide when they say.
    pub reject_failed_push: bool,
    /// Instances per process type (the Procfile's types; default 1 of each). `kiln ps scale`
    /// overrides these node-side.
    #[serde(deserialize_with = "crate::config::processes::counts")]
    pub processes: BTreeMap<String, u32>,
    /// How long a stopped process gets between SIGTERM and SIGKILL. Default 10s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub stop_grace: Duration,
    /// Per-instance resource limits (the systemd backend).
    pub limits: ProcessLimits,
    /// URL prefixes the front door serves itself from directories of run/
    /// (`/static: public/static`), without asking the app.
    #[serde(
        rename = "static",
        deserialize_with = "crate::config::proxy_config::deserialize_static"
    )]
    pub static_paths: BTreeMap<String, String>,
    /// The buildpacks to run, in order, before the build commands (cooking and editable mode).
    /// None: kiln's own are detected when the mode has no build commands; `[]`: none run.
    pub buildpacks: Option<Vec<BuildpackRef>>,
    /// kiln's supervisor holds each web instance's listening socket and passes it to the app
    /// as fd 3 (`LISTEN_FDS`, as systemd does), so connections wait in the kernel's queue
    /// while the app restarts. Default false: the app binds `127.0.0.1:$PORT` itself.
    pub socket_activation: bool,
    /// How a deploy takes the new release's processes live. Default `stop`.
    pub cutover: Cutover,
}

/// kiln.yml `cutover:` (README.md, "Domains and the front door").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cutover {
    /// Stop the live release, snapshot data/, switch, migrate, start the new one: the
    /// snapshot is consistent (nothing writes data/ while it is taken and caught up).
    #[default]
    Stop,
    /// Start the new release's processes beside the live ones on fresh ports, check them,
    /// point the front door at them, then stop the old ones: no moment without a release
    /// serving, but the snapshot is taken while the live release runs.
    Overlap,
}

impl Cutover {
    pub fn as_str(self) -> &'static str {
        match self {
            Cutover::Stop => "stop",
            Cutover::Overlap => "overlap",
        }
    }
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe {
            keep: 5,
            stages: StageCommands::default(),
            services: Services::default(),
            check: None,
            backup: Vec::new(),
            restore: Vec::new(),
            defaults: serde_json::Map::new(),
            timeouts: StageTimeouts::default(),
            drift: Drift::default(),
            drift_ignore: Vec::new(),
            modes: ModeOverrides::default(),
            reject_failed_push: false,
            processes: BTreeMap::new(),
            stop_grace: DEFAULT_STOP_GRACE,
            limits: ProcessLimits::default(),
            static_paths: BTreeMap::new(),
            buildpacks: None,
            socket_activation: false,
            cutover: Cutover::Stop,
        }
    }
}

/// The project's commands per stage. `None`: the stage is not listed (as opposed to an
/// empty list), which matters for mode overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StageCommands {
    #[serde(deserialize_with = "optional_commands")]
    pub gather: Option<Vec<String>>,
    #[serde(deserialize_with = "optional_commands")]
    pub pre_install: Option<Vec<String>>,
    #[serde(deserialize_with = "optional_commands")]
    pub configure: Option<Vec<String>>,
    #[serde(deserialize_with = "optional_commands")]
    pub build: Option<Vec<String>>,
    #[serde(deserialize_with = "optional_commands")]
    pub bundle: Option<Vec<String>>,
    #[serde(deserialize_with = "optional_commands")]
    pub deploy: Option<Vec<String>>,
    #[serde(deserialize_with = "optional_commands")]
    pub post_deploy: Option<Vec<String>>,
}

impl StageCommands {
    /// The commands listed for `stage`, or `None` when the stage is not listed.
    pub fn get(&self, stage: Stage) -> Option<&[String]> {
        let listed = match stage {
            Stage::Gather => &self.gather,
            Stage::PreInstall => &self.pre_install,
            Stage::Configure => &self.configure,
            Stage::Build => &self.build,
            Stage::Bundle => &self.bundle,
            Stage::Deploy => &self.deploy,
            Stage::PostDeploy => &self.post_deploy,
        };
        listed.as_deref()
    }
}

/// How to stop and start the app around the switch of run/.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Services {
    pub stop: Option<String>,
    pub start: Option<String>,
}

/// The health check run after the services and processes start; failing it rolls the deploy
/// back. Without a command, a `web` process is checked with an HTTP GET of `/` (the default
/// check when there is no `check:` at all).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    #[serde(default)]
    pub command: Option<String>,
    /// How long the check may keep failing before the deploy is rolled back. Default 30s.
    #[serde(
        default = "default_check_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub timeout: Duration,
    /// The pause between attempts. Default 1s.
    #[serde(
        default = "default_check_interval",
        deserialize_with = "duration::deserialize"
    )]
    pub interval: Duration,
}

fn default_check_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_check_interval() -> Duration {
    Duration::from_secs(1)
}

/// Per-stage timeouts from kiln.yml.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StageTimeouts {
    #[serde(deserialize_with = "duration::deserialize_option")]
    pub gather: Option<Duration>,
    #[serde(deserialize_with = "duration::deserialize_option")]
    pub pre_install: Option<Duration>,
    #[serde(deserialize_with = "duration::deserialize_option")]
    pub configure: Option<Duration>,
    #[serde(deserialize_with = "duration::deserialize_option")]
    pub build: Option<Duration>,
    #[serde(deserialize_with = "duration::deserialize_option")]
    pub bundle: Option<Duration>,
    #[serde(deserialize_with = "duration::deserialize_option")]
    pub deploy: Option<Duration>,
    #[serde(deserialize_with = "duration::deserialize_option")]
    pub post_deploy: Option<Duration>,
}

impl StageTimeouts {
    pub fn get(&self, stage: Stage) -> Option<Duration> {
        match stage {
            Stage::Gather => self.gather,
            Stage::PreInstall => self.pre_install,
            Stage::Configure => self.configure,
            Stage::Build => self.build,
            Stage::Bundle => self.bundle,
            Stage::Deploy => self.deploy,
            Stage::PostDeploy => self.post_deploy,
        }
    }
}

/// `modes:` in kiln.yml: per-mode replacements of stage command lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModeOverrides {
    pub editable: Option<ModeOverride>,
    pub cooking: Option<ModeOverride>,
    #[serde(rename = "final")]
    pub final_: Option<ModeOverride>,
}

impl ModeOverrides {
    pub fn get(&self, mode: Mode) -> Option<&ModeOverride> {
        match mode {
            Mode::Editable => self.editable.as_ref(),
            Mode::Cooking => self.cooking.as_ref(),
            Mode::Final => self.final_.as_ref(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModeOverride {
    pub stages: StageCommands,
}

impl Recipe {
    /// Parses kiln.yml. `file` is only used to name the file in errors. A blank or
    /// comment-only file is the default recipe.
    pub fn parse(text: &str, file: &Path) -> Result<Recipe, ConfigError> {
        parse_yaml_or_default(text, file)
    }

    /// The project's commands for `stage` in `mode`: the mode's own list when
    /// `modes.<mode>.stages` names the stage (even as an empty list), else the top-level list.
    pub fn commands(&self, mode: Mode, stage: Stage) -> &[String] {
        self.modes
            .get(mode)
            .and_then(|over| over.stages.get(stage))
            .or_else(|| self.stages.get(stage))
            .unwrap_or(&[])
    }

    /// The buildpacks to run in `mode`'s build stage: `Some(list)` when kiln.yml names them,
    /// `None` when kiln's own are to be detected (kiln.yml has no `buildpacks:` and gives the
    /// mode no build commands: a project that builds itself keeps building as it did), and an
    /// empty list when none run. Final mode never builds.
    pub fn buildpacks(&self, mode: Mode) -> Option<&[BuildpackRef]> {
        const NONE: &[BuildpackRef] = &[];
        match &self.buildpacks {
            _ if mode == Mode::Final => Some(NONE),
            Some(list) => Some(list),
            None if self.commands(mode, Stage::Build).is_empty() => None,
            None => Some(NONE),
        }
    }

    /// The timeout for `stage`: kiln.yml's `timeouts.<stage>`, else `default` (the node's).
    pub fn timeout(&self, stage: Stage, default: Duration) -> Duration {
        self.timeouts.get(stage).unwrap_or(default)
    }
}

/// A list of shell commands, where a single string stands for a one-element list.
struct CommandList(Vec<String>);

impl<'de> Deserialize<'de> for CommandList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = CommandList;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a command or a list of commands")
            }

            fn visit_str<E: serde::de::Error>(self, command: &str) -> Result<CommandList, E> {
                Ok(CommandList(vec![command.to_owned()]))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<CommandList, A::Error> {
                let mut commands = Vec::new();
                while let Some(command) = seq.next_element::<String>()? {
                    commands.push(command);
                }
                Ok(CommandList(commands))
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

fn commands<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    Ok(CommandList::deserialize(deserializer)?.0)
}

fn optional_commands<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<String>>, D::Error> {
    Ok(Option::<CommandList>::deserialize(deserializer)?.map(|list| list.0))
}

/// A pattern or a list of them, each a valid gitignore pattern (git would skip an invalid
/// one silently; here it is a mistake worth saying at its line).
fn drift_ignore<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    let patterns = CommandList::deserialize(deserializer)?.0;
    for pattern in &patterns {
        if let Some(reason) = check_pattern(pattern) {
            return Err(serde::de::Error::custom(format!(
                "invalid `drift_ignore` pattern `{pattern}`: {reason}"
            )));
        }
    }
    Ok(patterns)
}

fn at_least_one<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let keep = u32::deserialize(deserializer)?;
    if keep == 0 {
        // Keeping no good release would leave nothing to roll back to.
        return Err(serde::de::Error::custom(
            "`keep` must be at least 1: kiln needs a good release to roll back to",
        ));
    }
    Ok(keep)
}

/// The recipe file at the root of the pushed app.
pub const RECIPE_FILE: &str = "kiln.yml";

/// Reads and validates kiln.yml of a commit (no kiln.yml: no project commands).
pub fn read_recipe(
    repo: &git2::Repository,
    commit: git2::Oid,
) -> Result<Recipe, crate::error::Error> {
    match crate::fs::git::read_file(repo, commit, RECIPE_FILE)? {
        Some(bytes) => {
            let text = String::from_utf8(bytes).map_err(|_| crate::error::Error::Refused {
                message: format!("{RECIPE_FILE}: not valid UTF-8"),
            })?;
            Ok(Recipe::parse(&text, Path::new(RECIPE_FILE))?)
        }
        None => Ok(Recipe::parse("", Path::new(RECIPE_FILE))?),
    }
}

/// Why a `drift_ignore` pattern is not valid gitignore syntax (None: it is).
pub fn check_pattern(pattern: &str) -> Option<String> {
    ignore::gitignore::GitignoreBuilder::new("/")
        .add_line(None, pattern)
        .err()
        .map(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Result<Recipe, ConfigError> {
        Recipe::parse(text, Path::new("kiln.yml"))
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| (*item).to_owned()).collect()
    }

    /// The first published kiln.yml example, verbatim: it must keep parsing (docs/kiln-yml.md
    /// shows the current one).
    const DESIGN_EXAMPLE: &str = r#"keep: 5                      # good releases (and their data snapshots) to keep
stages:                      # any stage name from section 3; each a list of shell commands
  build:
    - make
  deploy:
    - ./manage.py migrate
services:                    # how to stop and start the app around the switch
  stop: systemctl stop myapp
  start: systemctl start myapp
check:                       # health check after start; failure rolls back
  command: curl -fsS http://127.0.0.1:8000/health
  timeout: 30s
backup:                      # extra backup commands (e.g. database dumps) into $KILN_BACKUP_DIR
  - pg_dump mydb > "$KILN_BACKUP_DIR/db.sql"
restore:                     # how to load them back on rollback
  - psql mydb < "$KILN_BACKUP_DIR/db.sql"
defaults:                    # default settings; the pillar overrides them
  env:
    DJANGO_SETTINGS_MODULE: app.settings
timeouts:                    # per stage (default 30m); a command past it is killed with its children
  build: 20m
drift: save                  # manual edits found in run/ at deploy: save them (default) or refuse
drift_ignore: [instance/]    # what the app writes in run/: not drift (like the .gitignore files)
modes:                       # per-mode overrides of `stages`
  editable:
    stages:
      build: [make dev]
"#;

    #[test]
    fn socket_activation_and_cutover_parse() {
        let recipe = parse("socket_activation: true\ncutover: overlap\n").expect("parses");
        assert!(recipe.socket_activation);
        assert_eq!(recipe.cutover, Cutover::Overlap);
        let recipe = parse("").expect("parses");
        assert!(!recipe.socket_activation);
        assert_eq!(recipe.cutover, Cutover::Stop);
        let error = parse("cutover: rolling\n").unwrap_err().to_string();
        assert!(
            error.starts_with(
                "kiln.yml:1:10: unknown variant `rolling`, expected one of `stop`, `overlap`"
            ),
            "{error}"
        );
    }

    #[test]
    fn process_settings_parse() {
        let recipe = parse(
            "processes: {web: 2, worker: 0}\nstop_grace: 30s\nlimits: {memory: 512M, cpu: 150%}\ncheck:\n  timeout: 5s\n",
        )
        .unwrap();
        assert_eq!(recipe.processes["web"], 2);
        assert_eq!(recipe.processes["worker"], 0);
        assert_eq!(recipe.stop_grace, Duration::from_secs(30));
        assert_eq!(recipe.limits.memory, Some(512 << 20));
        assert_eq!(recipe.limits.cpu, Some(150));
        // A check without a command: the default HTTP check, with this timeout.
        let check = recipe.check.unwrap();
        assert_eq!(check.command, None);
        assert_eq!(check.timeout, Duration::from_secs(5));
        assert_eq!(Recipe::default().stop_grace, Duration::from_secs(10));
    }

    #[test]
    fn design_example_parses() {
        let recipe = parse(DESIGN_EXAMPLE).expect("the design example parses");
        assert_eq!(recipe.keep, 5);
        assert_eq!(recipe.stages.build, Some(strings(&["make"])));
        assert_eq!(
            recipe.stages.deploy,
            Some(strings(&["./manage.py migrate"]))
        );
        assert_eq!(recipe.stages.configure, None);
        assert_eq!(
            recipe.services,
            Services {
                stop: Some("systemctl stop myapp".into()),
                start: Some("systemctl start myapp".into()),
            }
        );
        assert_eq!(
            recipe.check,
            Some(Check {
                command: Some("curl -fsS http://127.0.0.1:8000/health".into()),
                timeout: Duration::from_secs(30),
                interval: Duration::from_secs(1),
            })
        );
        assert_eq!(
            recipe.backup,
            strings(&[r#"pg_dump mydb > "$KILN_BACKUP_DIR/db.sql""#])
        );
        assert_eq!(
            recipe.restore,
            strings(&[r#"psql mydb < "$KILN_BACKUP_DIR/db.sql""#])
        );
        assert_eq!(
            serde_json::Value::Object(recipe.defaults.clone()),
            json!({"env": {"DJANGO_SETTINGS_MODULE": "app.settings"}})
        );
        assert_eq!(recipe.timeouts.build, Some(Duration::from_secs(20 * 60)));
        assert_eq!(recipe.drift, Drift::Save);
        assert_eq!(recipe.drift_ignore, ["instance/"]);
        assert_eq!(recipe.commands(Mode::Editable, Stage::Build), ["make dev"]);
        assert_eq!(recipe.commands(Mode::Cooking, Stage::Build), ["make"]);
    }

    #[test]
    fn blank_files_are_the_default_recipe() {
        for text in ["", "\n\n", "# nothing here\n  # still nothing\n"] {
            let recipe = parse(text).expect("blank recipe");
            assert_eq!(recipe, Recipe::default(), "{text:?}");
        }
        let recipe = Recipe::default();
        assert_eq!(recipe.keep, 5);
        assert_eq!(recipe.drift, Drift::Save);
        assert!(!recipe.reject_failed_push);
        assert!(
            parse("reject_failed_push: true\n")
                .expect("parses")
                .reject_failed_push
        );
        for stage in Stage::ALL {
            assert!(recipe.commands(Mode::Final, stage).is_empty());
        }
    }

    #[test]
    fn mode_overrides_replace_only_the_stages_they_list() {
        let recipe = parse(
            "stages:\n  configure: ./render\n  build: [make, make test]\n  deploy: [migrate]\n\
             modes:\n  editable:\n    stages:\n      build: make dev\n      deploy: []\n  \
             final:\n    stages:\n      configure: [./render --prod]\n",
        )
        .expect("recipe parses");
        let cases: [(Mode, Stage, &[&str]); 9] = [
            (Mode::Editable, Stage::Configure, &["./render"]),
            (Mode::Editable, Stage::Build, &["make dev"]),
            (Mode::Editable, Stage::Deploy, &[]),
            (Mode::Cooking, Stage::Configure, &["./render"]),
            (Mode::Cooking, Stage::Build, &["make", "make test"]),
            (Mode::Cooking, Stage::Deploy, &["migrate"]),
            (Mode::Final, Stage::Configure, &["./render --prod"]),
            (Mode::Final, Stage::Build, &["make", "make test"]),
            (Mode::Final, Stage::PostDeploy, &[]),
        ];
        for (mode, stage, expected) in cases {
            assert_eq!(recipe.commands(mode, stage), expected, "{mode} {stage}");
        }
    }

    #[test]
    fn single_strings_are_one_element_lists() {
        let recipe = parse(
            "stages:\n  build: make all\n  post_deploy: 'echo done'\nbackup: ./dump\nrestore: [./load]\n",
        )
        .expect("recipe parses");
        assert_eq!(recipe.commands(Mode::Cooking, Stage::Build), ["make all"]);
        assert_eq!(
            recipe.commands(Mode::Cooking, Stage::PostDeploy),
            ["echo done"]
        );
        assert_eq!(recipe.backup, ["./dump"]);
        assert_eq!(recipe.restore, ["./load"]);
    }

    #[test]
    fn timeouts_fall_back_to_the_given_default() {
        let recipe = parse(
            "timeouts:\n  build: 1h30m\n  deploy: 500ms\ncheck:\n  command: true\n  interval: 2s\n",
        )
        .expect("recipe parses");
        let fallback = Duration::from_secs(1800);
        assert_eq!(
            recipe.timeout(Stage::Build, fallback),
            Duration::from_secs(5400)
        );
        assert_eq!(
            recipe.timeout(Stage::Deploy, fallback),
            Duration::from_millis(500)
        );
        assert_eq!(recipe.timeout(Stage::Configure, fallback), fallback);
        let check = recipe.check.expect("check is set");
        assert_eq!(check.timeout, Duration::from_secs(30));
        assert_eq!(check.interval, Duration::from_secs(2));
    }

    #[test]
    fn refuses_bad_recipes_with_their_position() {
        let cases = [
            (
                "keep: 3\nstagez:\n  build: make\n",
                "kiln.yml:2:1: unknown field `stagez`, expected one of `keep`, `stages`, `services`, `check`, `backup`, `restore`, `defaults`, `timeouts`, `drift`, `drift_ignore`, `modes`, `reject_failed_push`, `processes`, `stop_grace`, `limits`, `static`, `buildpacks`, `socket_activation`, `cutover`",
            ),
            (
                "stages:\n  biuld: make\n",
                "kiln.yml:2:3: unknown field `biuld`, expected one of `gather`, `pre_install`, `configure`, `build`, `bundle`, `deploy`, `post_deploy`",
            ),
            (
                "timeouts:\n  compile: 5m\n",
                "kiln.yml:2:3: unknown field `compile`, expected one of `gather`, `pre_install`, `configure`, `build`, `bundle`, `deploy`, `post_deploy`",
            ),
            (
                "modes:\n  prod:\n    stages: {}\n",
                "kiln.yml:2:3: unknown field `prod`, expected one of `editable`, `cooking`, `final`",
            ),
            (
                "keep: 0\n",
                "kiln.yml:1:7: `keep` must be at least 1: kiln needs a good release to roll back to",
            ),
            (
                "keep: five\n",
                "kiln.yml:1:7: expected a whole number, 0 or more",
            ),
            (
                "keep: -2\n",
                "kiln.yml:1:7: expected a whole number, 0 or more",
            ),
            (
                "timeouts:\n  build: 20 minutes\n",
                "kiln.yml:2:10: invalid duration `20 minutes`: unit ` minutes` is unknown, expected `ms`, `s`, `m` or `h`",
            ),
            (
                "check:\n  command: ./health\n  timeout: 30\n",
                "kiln.yml:3:12: invalid duration `30`, expected e.g. `500ms`, `30s`, `20m` or `1h30m`",
            ),
            (
                "check:\n  command: ./health\n  interval: 0s\n",
                "kiln.yml:3:13: duration `0s` must be greater than zero",
            ),
            (
                "processes:\n  web.1: 2\n",
                "kiln.yml:2:3: invalid process type `web.1`: use 1 to 63 letters, digits, `_` or `-` (as in a Procfile)",
            ),
            (
                "processes:\n  release: 1\n",
                "kiln.yml:2:3: `release` is the release-phase command, not a process type: it runs once per deploy",
            ),
            (
                "processes:\n  web: -1\n",
                "kiln.yml:2:8: expected a whole number, 0 or more",
            ),
            (
                "limits:\n  cpu: half\n",
                "kiln.yml:2:8: invalid cpu limit `half`: expected a percentage of one CPU such as `50%` or `200%`",
            ),
            (
                "stop_grace: 0s\n",
                "kiln.yml:1:13: duration `0s` must be greater than zero",
            ),
            (
                "drift_ignore: ['a{b']\n",
                "kiln.yml:1:15: invalid `drift_ignore` pattern `a{b`: error parsing glob 'a{b': unclosed alternate group; missing '}' (maybe escape '{' with '[{]'?)",
            ),
            (
                "drift: ignore\n",
                "kiln.yml:1:8: unknown variant `ignore`, expected one of `save`, `refuse`",
            ),
            (
                "reject_failed_push: sometimes\n",
                "kiln.yml:1:21: invalid boolean (strict mode expects true/false)",
            ),
            (
                "stages:\n  build:\n    - make\n    - [nested]\n",
                "kiln.yml:4:7: expected string scalar",
            ),
            (
                "stages:\n  build: 42\n",
                "kiln.yml:2:3: invalid type: integer `42`, expected a command or a list of commands",
            ),
            (
                "defaults: [a, b]\n",
                "kiln.yml:1:11: expected a mapping (`key: value` lines)",
            ),
            ("keep: 5\nkeep: 6\n", "kiln.yml:2:1: duplicate key `keep`"),
            (
                "stages:\n  build: [make\n",
                "kiln.yml:2:10: unclosed bracket '['",
            ),
            ("stages:\n  build: 'make\n", "kiln.yml:2:10: unclosed quote"),
            (
                "stages:\n  build: make\n deploy: x\n",
                "kiln.yml:3:2: while parsing a block mapping, did not find expected key",
            ),
            (
                "- make\n",
                "kiln.yml:1:1: expected a mapping (`key: value` lines)",
            ),
            (
                "keep: 1\n---\nkeep: 2\n",
                "kiln.yml:3:1: more than one YAML document (`---`), expected exactly one",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(text).expect_err(text);
            assert_eq!(error.to_string(), expected, "{text:?}");
        }
    }

    #[test]
    fn buildpacks_are_detected_only_for_projects_without_build_commands() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let listed = parse(&format!(
            "buildpacks: [python, ./bp, 'file:///srv/bp.git#{sha}']\n"
        ))
        .expect("parses");
        assert_eq!(
            listed.buildpacks(Mode::Cooking),
            Some(
                &[
                    BuildpackRef::Builtin("python".into()),
                    BuildpackRef::AppDir("bp".into()),
                    BuildpackRef::Git {
                        url: "file:///srv/bp.git".into(),
                        commit: sha.into()
                    }
                ][..]
            )
        );
        assert_eq!(listed.buildpacks(Mode::Final), Some(&[][..]));
        assert_eq!(Recipe::default().buildpacks(Mode::Editable), None);
        let builds = parse("stages:\n  build: make\n").expect("parses");
        assert_eq!(builds.buildpacks(Mode::Cooking), Some(&[][..]));
        let off = parse("buildpacks: []\n").expect("parses");
        assert_eq!(off.buildpacks(Mode::Cooking), Some(&[][..]));
        let cases = [
            (
                "buildpacks: [python, 'https://example.com/bp.git']\n",
                "kiln.yml:1:22: buildpack `https://example.com/bp.git` is not pinned to a commit",
            ),
            (
                "buildpacks: [ruby]\n",
                "kiln.yml:1:14: `ruby` is not a buildpack",
            ),
            ("buildpacks: python\n", "kiln.yml:1:13: "),
        ];
        for (text, expected) in cases {
            let error = parse(text).expect_err(text).to_string();
            assert!(error.starts_with(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn names_parse_and_print() {
        for mode in Mode::ALL {
            assert_eq!(mode.as_str().parse::<Mode>(), Ok(mode));
        }
        let names: Vec<String> = Stage::ALL.iter().map(|stage| stage.to_string()).collect();
        assert_eq!(
            names,
            [
                "gather",
                "pre_install",
                "configure",
                "build",
                "bundle",
                "deploy",
                "post_deploy"
            ]
        );
        for stage in Stage::ALL {
            assert_eq!(stage.as_str().parse::<Stage>(), Ok(stage));
        }
        assert_eq!(
            "prod".parse::<Mode>().map_err(|error| error.to_string()),
            Err("unknown mode `prod`, expected one of `editable`, `cooking`, `final`".to_owned())
        );
    }

    #[test]
    fn invalid_drift_ignore_patterns_are_named() {
        assert_eq!(check_pattern("instance/"), None);
        assert!(check_pattern("a{b").is_some());
    }
}
