//! A formation: everything one project's supervised processes need to run, whichever backend
//! runs them: the release, the working directory (run/), the environment, the process types
//! with their instance counts, the stop grace, the limits and the web ports. The deploy builds
//! it from the release tree ([`crate::runtime::procfile`]), kiln.yml and the node-side scale;
//! the journal keeps the live one, so that an undo starts the old release's processes with
//! their own commands and environment.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::processes::{ProcessLimits, WEB, check_type_name};
use crate::error::{Error, io_error};
use crate::runtime::procfile::ProcessTypes;

/// Deploy-time variables the processes do not get: they name things that exist only while a
/// deploy runs (build/, the backup dir, the `$KILN_COMMON` file removed at its end).
const DEPLOY_ONLY: [&str; 4] = [
    "KILN_STAGE",
    "KILN_BUILD_DIR",
    "KILN_BACKUP_DIR",
    "KILN_COMMON",
];

/// Runs a Procfile command after the tree's `.profile.d/*.sh` (see the stage runner's).
pub use crate::exec::stage::PROFILE_SCRIPT as PROCESS_SCRIPT;

/// A socket-activated web process (kiln.yml `socket_activation`): its listening socket is fd 3
/// (passed by its instance supervisor) and, as systemd does, `LISTEN_FDS=1` says so and
/// `LISTEN_PID` names the process that owns it, which servers such as gunicorn check against
/// their own pid. The shell's pid is that process's pid once it `exec`s the command, which
/// [`exec_form`] makes sure of for a simple command.
pub const SOCKET_SCRIPT: &str = "for kiln_profile in ./.profile.d/*.sh; do if [ -r \"$kiln_profile\" ]; then . \"$kiln_profile\"; fi; done; unset kiln_profile; if [ -r ./.profile ]; then . ./.profile; fi; LISTEN_PID=$$; export LISTEN_PID; if [ -x /bin/bash ]; then exec /bin/bash -c \"$1\"; fi; exec /bin/sh -c \"$1\"";

/// Shell keywords and builtins that `exec` cannot run: a command starting with one is not
/// given an `exec`.
const NOT_EXECUTABLE: [&str; 20] = [
    "cd", "export", "if", "for", "while", "until", "case", "{", ".", "source", "set", "eval",
    "unset", "alias", "read", "trap", "wait", "shift", "exit", "!",
];

/// `command` as the shell must run it so that the server it starts keeps the shell's pid
/// (`LISTEN_PID`): `exec gunicorn ...` for one simple command (words, quotes and `$VARIABLES`
/// after optional `NAME=value` assignments), unchanged for anything else (a list, a pipe, a
/// redirection, a keyword), which must `exec` its server itself (`cd app && exec gunicorn
/// ...`).
pub fn exec_form(command: &str) -> String {
    let trimmed = command.trim();
    let compound = has_unquoted_operator(trimmed);
    let is_assignment = |word: &str| {
        word.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    let mut assignments = Vec::new();
    let mut rest = trimmed;
    loop {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let word = &rest[..end];
        if word.is_empty() || !is_assignment(word) {
            break;
        }
        assignments.push(word);
        rest = rest[end..].trim_start();
    }
    let first = rest.split_whitespace().next().unwrap_or("");
    let quoted_assignment = assignments.iter().any(|w| w.contains(['\'', '"']));
    if compound
        || quoted_assignment
        || first.is_empty()
        || first == "exec"
        || NOT_EXECUTABLE.contains(&first)
    {
        return command.to_string();
    }
    let mut text = assignments.join(" ");
    if !text.is_empty() {
        text.push(' ');
    }
    text.push_str("exec ");
    text.push_str(rest);
    text
}

/// Whether `command` holds, outside quotes, something that makes it more than one simple
/// command: `;`, `&`, `|`, a redirection, a subshell, a command substitution or a newline.
fn has_unquoted_operator(command: &str) -> bool {
    let (mut single, mut double, mut escaped) = (false, false, false);
    let mut previous = ' ';
    for c in command.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if !single => escaped = true,
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            // `$(...)` and backticks substitute even inside double quotes.
            '`' if !single => return true,
            '(' if !single && previous == '$' => return true,
            ';' | '&' | '|' | '<' | '>' | '(' | ')' | '\n' if !single && !double => return true,
            _ => {}
        }
        previous = c;
    }
    false
}

/// The same for `kiln run`: the command's words are `"$@"`, run without a shell of their own.
pub const RUN_SCRIPT: &str = "for kiln_profile in ./.profile.d/*.sh; do if [ -r \"$kiln_profile\" ]; then . \"$kiln_profile\"; fi; done; unset kiln_profile; if [ -r ./.profile ]; then . ./.profile; fi; exec \"$@\"";

/// One process type of a formation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessType {
    pub command: String,
    pub count: u32,
}

/// One project's processes, as a backend runs them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Formation {
    pub project: String,
    /// The release these processes run.
    pub release: String,
    /// Where they run: the project's run/.
    pub cwd: PathBuf,
    /// The release's environment (without `PORT`, `KILN_PROCESS` and `DYNO`, which are per
    /// instance).
    pub env: BTreeMap<String, String>,
    /// Pillar secrets, masked in the app logs.
    #[serde(default)]
    pub secrets: Vec<String>,
    pub types: BTreeMap<String, ProcessType>,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
    #[serde(default)]
    pub limits: ProcessLimits,
    /// logs/app/ of the project.
    pub log_dir: PathBuf,
    /// The port of each web instance (`web.1` -> 20001), given when the formation starts.
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    /// The release's kiln.yml `check.command`: what the supervisor's periodic web check runs
    /// instead of GET / on each web instance (`supervisor::watch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_command: Option<String>,
    /// kiln.yml `socket_activation`: the supervisor holds each web instance's listening
    /// socket and passes it to the app as fd 3.
    #[serde(default)]
    pub socket_activation: bool,
    /// Which of a project's two sets of instance directories this formation runs in: an
    /// overlap cutover starts the new release in the other one while the old one runs.
    #[serde(default)]
    pub slot: Slot,
}

/// One of the two sets of instances a project can run at once (during an overlap cutover).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    #[default]
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The instance directory's name of `name` in this slot: `web.1`, or `web.1.b`.
    pub fn key(self, name: &InstanceName) -> String {
        match self {
            Slot::A => name.to_string(),
            Slot::B => format!("{name}.b"),
        }
    }

    /// Parses an instance directory's name: (instance, slot).
    pub fn parse_key(key: &str) -> Option<(InstanceName, Slot)> {
        match key.strip_suffix(".b") {
            Some(name) => Some((InstanceName::parse(name)?, Slot::B)),
            None => Some((InstanceName::parse(key)?, Slot::A)),
        }
    }
}

/// `web.1`: a process type and a 1-based index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InstanceName {
    pub kind: String,
    pub index: u32,
}

impl fmt::Display for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.kind, self.index)
    }
}

impl InstanceName {
    /// Parses `web.1`.
    pub fn parse(text: &str) -> Option<InstanceName> {
        let (kind, index) = text.rsplit_once('.')?;
        let index: u32 = index.parse().ok().filter(|i| *i > 0)?;
        check_type_name(kind).is_none().then(|| InstanceName {
            kind: kind.to_string(),
            index,
        })
    }

    pub fn is_web(&self) -> bool {
        self.kind == WEB
    }
}

/// What one instance runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub project: String,
    pub release: String,
    pub name: InstanceName,
    pub command: String,
    pub cwd: PathBuf,
    /// The whole environment: the formation's, plus `KILN_PROCESS`, `DYNO` and (web) `PORT`.
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub grace: Duration,
    pub port: Option<u16>,
    pub log_dir: PathBuf,
    /// The app gets its listening socket as fd 3 (a web instance of a socket-activated
    /// formation).
    #[serde(default)]
    pub socket_activation: bool,
    #[serde(default)]
    pub slot: Slot,
}

impl InstanceSpec {
    /// Its instance directory's name (see [`Slot::key`]).
    pub fn key(&self) -> String {
        self.slot.key(&self.name)
    }
}

impl Formation {
    /// Every instance to run, in type then index order.
    pub fn instances(&self) -> Vec<InstanceSpec> {
        let mut all = Vec::new();
        for (kind, process) in &self.types {
            for index in 1..=process.count {
                let name = InstanceName {
                    kind: kind.clone(),
                    index,
                };
                let port = self.ports.get(&name.to_string()).copied();
                let mut env = self.env.clone();
                env.insert("KILN_PROCESS".into(), name.to_string());
                // Heroku's name for it, which libraries and log formats read.
                env.insert("DYNO".into(), name.to_string());
                if let Some(port) = port {
                    env.insert("PORT".into(), port.to_string());
                }
                let socket_activation = self.socket_activation && port.is_some();
                if socket_activation {
                    env.insert("LISTEN_FDS".into(), "1".into());
                    env.insert("LISTEN_FDNAMES".into(), WEB.into());
                }
                all.push(InstanceSpec {
                    project: self.project.clone(),
                    release: self.release.clone(),
                    name,
                    command: process.command.clone(),
                    cwd: self.cwd.clone(),
                    env,
                    secrets: self.secrets.clone(),
                    grace: self.grace,
                    port,
                    log_dir: self.log_dir.clone(),
                    socket_activation,
                    slot: self.slot,
                });
            }
        }
        all
    }

    /// The instances that get a `PORT`: the `web` ones.
    pub fn web_instances(&self) -> Vec<InstanceName> {
        self.instance_names()
            .into_iter()
            .filter(InstanceName::is_web)
            .collect()
    }

    /// The ports of the web instances, in instance order (those that have one).
    pub fn web_ports(&self) -> Vec<u16> {
        self.web_instances()
            .iter()
            .filter_map(|name| self.ports.get(&name.to_string()).copied())
            .collect()
    }

    pub fn instance_names(&self) -> Vec<InstanceName> {
        self.types
            .iter()
            .flat_map(|(kind, process)| {
                (1..=process.count).map(move |index| InstanceName {
                    kind: kind.clone(),
                    index,
                })
            })
            .collect()
    }

    /// The instances as the operator reads them: `web.1, web.2, worker.1`.
    pub fn instance_list(&self) -> String {
        self.instance_names()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// No instance to run (no process types, or all scaled to 0).
    pub fn is_idle(&self) -> bool {
        self.types.values().all(|p| p.count == 0)
    }
}

/// The environment of the processes: the deploy commands' environment without what exists
/// only during a deploy (docs/kiln-yml.md).
pub fn process_env(deploy_env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    deploy_env
        .iter()
        .filter(|(key, _)| !DEPLOY_ONLY.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// Which setting named a process type the release does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{origin} names the process type `{name}`, which release {release} does not have ({}): fix the name or add it to the Procfile",
    if types.is_empty() { "it has none".to_string() } else { format!("it has {}", types.join(", ")) }
)]
pub struct UnknownType {
    pub origin: &'static str,
    pub name: String,
    pub release: String,
    /// The release's types, in backticks.
    pub types: Vec<String>,
}

impl From<UnknownType> for Error {
    fn from(e: UnknownType) -> Self {
        Error::Refused {
            message: e.to_string(),
        }
    }
}

/// What a formation is built from.
pub struct FormationSetup<'a> {
    pub project: &'a str,
    pub release: &'a str,
    pub types: &'a ProcessTypes,
    pub cwd: &'a Path,
    /// The deploy commands' environment of the release (see [`process_env`]).
    pub deploy_env: &'a BTreeMap<String, String>,
    pub secrets: &'a [String],
    /// kiln.yml `processes:`.
    pub counts: &'a BTreeMap<String, u32>,
    /// `kiln ps scale`, which wins over kiln.yml.
    pub scale: &'a Scale,
    pub grace: Duration,
    pub limits: &'a ProcessLimits,
    pub log_dir: &'a Path,
    /// kiln.yml `check.command`.
    pub check_command: Option<&'a str>,
    /// kiln.yml `socket_activation`.
    pub socket_activation: bool,
}

/// Builds the formation of a release. Every type runs 1 instance unless kiln.yml's
/// `processes:` or `kiln ps scale` say otherwise; kiln.yml asking for instances of a type the
/// release lacks is a mistake worth failing for (a scale of a type that a later release dropped is not: it is
/// the node's state, not the push's).
pub fn build(setup: &FormationSetup) -> Result<Formation, UnknownType> {
    let known: Vec<String> = setup.types.types.keys().map(|k| format!("`{k}`")).collect();
    // `web: 0` for a release without web processes asks for nothing: not a mistake.
    if let Some(name) = setup
        .counts
        .iter()
        .find(|(name, count)| **count > 0 && !setup.types.types.contains_key(*name))
        .map(|(name, _)| name)
    {
        return Err(UnknownType {
            origin: "kiln.yml `processes`",
            name: name.clone(),
            release: setup.release.to_string(),
            types: known,
        });
    }
    let types = setup
        .types
        .types
        .iter()
        .map(|(kind, command)| {
            let count = setup
                .scale
                .0
                .get(kind)
                .or_else(|| setup.counts.get(kind))
                .copied()
                .unwrap_or(1);
            (
                kind.clone(),
                ProcessType {
                    command: command.clone(),
                    count,
                },
            )
        })
        .collect();
    Ok(Formation {
        project: setup.project.to_string(),
        release: setup.release.to_string(),
        cwd: setup.cwd.to_path_buf(),
        env: process_env(setup.deploy_env),
        secrets: setup.secrets.to_vec(),
        types,
        grace: setup.grace,
        limits: setup.limits.clone(),
        log_dir: setup.log_dir.to_path_buf(),
        ports: BTreeMap::new(),
        check_command: setup.check_command.map(str::to_string),
        socket_activation: setup.socket_activation,
        slot: Slot::A,
    })
}

/// `kiln ps scale`: instance counts per type, node-side state in `state/scale.json`, kept
/// across deploys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scale(pub BTreeMap<String, u32>);

impl Scale {
    pub fn path(state: &Path) -> PathBuf {
        state.join("scale.json")
    }

    pub fn load(state: &Path) -> Result<Scale, Error> {
        let path = Scale::path(state);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Refused {
                message: format!(
                    "`{}` is unreadable ({e}): fix or remove it, then scale again",
                    path.display()
                ),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Scale::default()),
            Err(e) => Err(io_error("read", &path, e)),
        }
    }

    pub fn save(&self, state: &Path) -> Result<(), Error> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        crate::fs::durable::write_atomic(&Scale::path(state), &bytes, 0o600)
    }
}

/// Parses `kiln ps scale` arguments: `web=2 worker=0`.
pub fn parse_scale_args(args: &[String]) -> Result<BTreeMap<String, u32>, String> {
    let mut counts = BTreeMap::new();
    for arg in args {
        let parsed = arg
            .split_once('=')
            .and_then(|(kind, n)| Some((kind, n.parse::<u32>().ok()?)));
        let Some((kind, count)) = parsed else {
            return Err(format!(
                "`{arg}` is not `TYPE=COUNT`: write e.g. `kiln ps scale shop web=2 worker=1`"
            ));
        };
        if let Some(reason) = check_type_name(kind) {
            return Err(reason);
        }
        if count > crate::config::processes::MAX_INSTANCES {
            return Err(format!(
                "`{arg}` is more than {} instances of one process type",
                crate::config::processes::MAX_INSTANCES
            ));
        }
        counts.insert(kind.to_string(), count);
    }
    if counts.is_empty() {
        return Err("say what to scale: `kiln ps scale <name> TYPE=COUNT...`".into());
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(pairs: &[(&str, &str)]) -> ProcessTypes {
        ProcessTypes {
            types: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            release: None,
            proposed: Default::default(),
        }
    }

    fn setup_build(
        types: &ProcessTypes,
        counts: &BTreeMap<String, u32>,
        scale: &Scale,
    ) -> Result<Formation, UnknownType> {
        let env = BTreeMap::from([
            ("KILN_STAGE".to_string(), "deploy".to_string()),
            ("KILN_COMMON".to_string(), "/x".to_string()),
            ("KILN_RELEASE".to_string(), "r1".to_string()),
            ("A".to_string(), "1".to_string()),
        ]);
        build(&FormationSetup {
            project: "shop",
            release: "r1",
            types,
            cwd: Path::new("/n/shop/run"),
            deploy_env: &env,
            secrets: &[],
            counts,
            scale,
            grace: Duration::from_secs(10),
            limits: &ProcessLimits::default(),
            log_dir: Path::new("/n/shop/logs/app"),
            check_command: None,
            socket_activation: false,
        })
    }

    #[test]
    fn counts_come_from_scale_then_kiln_yml_then_one_each() {
        let types = types(&[("web", "serve"), ("worker", "work"), ("clock", "tick")]);
        let counts = BTreeMap::from([("web".to_string(), 2), ("clock".to_string(), 0)]);
        let scale = Scale(BTreeMap::from([
            ("web".to_string(), 3),
            ("gone".to_string(), 5),
        ]));
        let mut formation = setup_build(&types, &counts, &scale).unwrap();
        assert_eq!(formation.types["web"].count, 3);
        assert_eq!(formation.types["worker"].count, 1);
        assert_eq!(formation.types["clock"].count, 0);
        assert_eq!(formation.env.get("KILN_STAGE"), None);
        assert_eq!(formation.env.get("KILN_COMMON"), None);
        assert_eq!(formation.env["A"], "1");
        formation.ports.insert("web.2".into(), 20002);
        let names: Vec<String> = formation
            .instances()
            .iter()
            .map(|i| i.name.to_string())
            .collect();
        assert_eq!(names, ["web.1", "web.2", "web.3", "worker.1"]);
        let web2 = &formation.instances()[1];
        assert_eq!(web2.env["PORT"], "20002");
        assert_eq!(web2.env["DYNO"], "web.2");
        assert_eq!(formation.instances()[3].env.get("PORT"), None);
        assert_eq!(formation.web_instances().len(), 3);
    }

    #[test]
    fn kiln_yml_naming_a_missing_type_is_refused() {
        let types = types(&[("web", "serve")]);
        let counts = BTreeMap::from([("wbe".to_string(), 2)]);
        let error = setup_build(&types, &counts, &Scale::default())
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "kiln.yml `processes` names the process type `wbe`, which release r1 does not have (it has `web`): fix the name or add it to the Procfile"
        );
    }

    #[test]
    fn scale_arguments() {
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_scale_args(&args(&["web=2", "worker=0"])).unwrap(),
            BTreeMap::from([("web".to_string(), 2), ("worker".to_string(), 0)])
        );
        for bad in [
            &["web"][..],
            &["web=-1"],
            &["web=x"],
            &["a.b=1"],
            &[],
            &["web=101"],
        ] {
            assert!(parse_scale_args(&args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_simple_command_is_execed_so_that_it_keeps_the_shells_pid() {
        let cases = [
            (
                "gunicorn app:app --bind 127.0.0.1:$PORT",
                "exec gunicorn app:app --bind 127.0.0.1:$PORT",
            ),
            (
                "  python -m gunicorn 'app:create()'",
                "exec python -m gunicorn 'app:create()'",
            ),
            (
                "WEB_CONCURRENCY=3 FOO=x gunicorn app:app",
                "WEB_CONCURRENCY=3 FOO=x exec gunicorn app:app",
            ),
            ("exec gunicorn app:app", "exec gunicorn app:app"),
            (
                "cd app && exec gunicorn app:app",
                "cd app && exec gunicorn app:app",
            ),
            ("gunicorn app:app 2>&1", "gunicorn app:app 2>&1"),
            ("gunicorn app:app | tee log", "gunicorn app:app | tee log"),
            (
                "gunicorn \"app:make(1)\" -w 2",
                "exec gunicorn \"app:make(1)\" -w 2",
            ),
            ("gunicorn \"$(cat app)\"", "gunicorn \"$(cat app)\""),
            ("gunicorn 'a;b'; true", "gunicorn 'a;b'; true"),
            ("cd app", "cd app"),
            ("X='a b' gunicorn app:app", "X='a b' gunicorn app:app"),
            ("A=1", "A=1"),
            ("", ""),
        ];
        for (command, expected) in cases {
            assert_eq!(exec_form(command), expected, "{command:?}");
        }
    }

    #[test]
    fn slots_name_instance_directories_apart() {
        let web1 = InstanceName::parse("web.1").unwrap();
        assert_eq!(Slot::A.key(&web1), "web.1");
        assert_eq!(Slot::B.key(&web1), "web.1.b");
        assert_eq!(Slot::parse_key("web.1.b"), Some((web1.clone(), Slot::B)));
        assert_eq!(Slot::parse_key("web.1"), Some((web1, Slot::A)));
        assert_eq!(Slot::A.other(), Slot::B);
        for bad in ["web", "web.b", "web.1.c", "../x.1"] {
            assert_eq!(Slot::parse_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn socket_activated_web_instances_are_told_so_and_the_others_not() {
        let types = types(&[("web", "serve"), ("worker", "work")]);
        let mut formation = setup_build(&types, &BTreeMap::new(), &Scale::default()).unwrap();
        formation.socket_activation = true;
        formation.slot = Slot::B;
        formation.ports.insert("web.1".into(), 20001);
        let all = formation.instances();
        assert!(all[0].socket_activation);
        assert_eq!(all[0].env["LISTEN_FDS"], "1");
        assert_eq!(all[0].key(), "web.1.b");
        assert!(!all[1].socket_activation);
        assert_eq!(all[1].env.get("LISTEN_FDS"), None);
        assert_eq!(formation.web_ports(), [20001]);
    }

    #[test]
    fn instance_names() {
        assert_eq!(
            InstanceName::parse("web.12"),
            Some(InstanceName {
                kind: "web".into(),
                index: 12
            })
        );
        for bad in ["web", "web.0", ".1", "we b.1", "web.x"] {
            assert_eq!(InstanceName::parse(bad), None, "{bad}");
        }
    }
}
