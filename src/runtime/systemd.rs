//! The systemd backend, chosen where systemd runs as PID 1: one generated unit per process
//! instance (`kiln-<project>-<type>-<index>.service` in node.yml's `supervisor.unit_dir`),
//! `Restart=on-failure`, the whole control group stopped with SIGTERM then SIGKILL after the
//! grace, `MemoryMax`/`CPUQuota` from kiln.yml `limits:`, the environment in a 0600
//! `EnvironmentFile`, output to the journal (`kiln logs --app` reads it with `journalctl`).
//! systemd restarts the instances and starts them at boot; kiln writes the units and asks
//! `systemctl` (always with argv, never a shell).
//!
//! The units behave as kiln's own supervisor does where systemd can: restarted without end
//! (no start limit), the delay growing from 1s to 60s where systemd has `RestartSteps=` (254
//! and later; before, 1s each time), and each crash reported to kiln's alerts by an
//! `ExecStopPost=` that runs `kiln notify report <name> restarted <type>`, so that a crash loop
//! sends one alert by node.yml's `notify.alerts`, as with kiln's own. The "recovered" that
//! follows comes from `kiln supervise` (the web check's daemon, which with this backend only
//! checks): it reports how long each alerted type's units have been up ([`up_since`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{DateTime, Utc};

use crate::config::processes::SupervisorConfig;
use crate::error::Error;
use crate::runtime::formation::{Formation, InstanceName, InstanceSpec, PROCESS_SCRIPT};
use crate::runtime::supervisor::state::{Instance, ProjectState, SupervisorError, SupervisorPaths};

pub fn unit_name(project: &str, name: &InstanceName) -> String {
    format!("kiln-{project}-{}-{}.service", name.kind, name.index)
}

/// Where the env files of `project`'s units are: their presence says which units kiln owns.
fn env_dir(paths: &SupervisorPaths, project: &str) -> PathBuf {
    paths.dir.join("systemd").join(project)
}

/// One argument of an `ExecStart=` line: double-quoted, with systemd's escapes for `\` and
/// `"`, and `$`/`%` doubled so that systemd expands neither variables nor specifiers.
pub fn quote(arg: &str) -> String {
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('"');
    for c in arg.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '$' => out.push_str("$$"),
            '%' => out.push_str("%%"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[derive(Debug, thiserror::Error)]
#[error(
    "the value of `{key}` holds a newline, which a systemd EnvironmentFile cannot carry: use kiln's own supervisor (node.yml `supervisor.backend: kiln`) or a value without newlines"
)]
pub struct MultilineValue {
    pub key: String,
}

impl From<MultilineValue> for Error {
    fn from(e: MultilineValue) -> Self {
        Error::Runtime(Box::new(e))
    }
}

/// The `EnvironmentFile=` text: `KEY="value"` lines, with `\`, `"`, `$` and `` ` `` escaped.
pub fn env_file(env: &BTreeMap<String, String>) -> Result<String, MultilineValue> {
    let mut text = String::from("# written by kiln; the next deploy rewrites it\n");
    for (key, value) in env {
        if value.contains('\n') || value.contains('\r') {
            return Err(MultilineValue { key: key.clone() });
        }
        let mut escaped = String::with_capacity(value.len());
        for c in value.chars() {
            if matches!(c, '\\' | '"' | '$' | '`') {
                escaped.push('\\');
            }
            escaped.push(c);
        }
        let _ = writeln!(text, "{key}=\"{escaped}\"");
    }
    Ok(text)
}

/// What a unit needs besides the instance.
pub struct UnitSetup<'a> {
    pub formation: &'a Formation,
    pub instance: &'a InstanceSpec,
    pub env_file: &'a Path,
    /// The Unix user the node runs as (kiln's own user).
    pub user: Option<&'a str>,
    /// The kiln binary and the node's root, for the `ExecStopPost=` that reports a crash.
    pub kiln: &'a Path,
    pub root: &'a Path,
    /// systemd's version (`systemctl --version`), if known: what the unit may use.
    pub systemd_version: Option<u32>,
}

/// The first systemd with `RestartSteps=` and `RestartMaxDelaySec=`.
pub const RESTART_STEPS_SINCE: u32 = 254;

/// The restart delays of kiln's own supervisor (`instance.rs`): 1s, doubled up to 60s, which
/// systemd reaches in 6 steps (1, 2, 4, 8, 15, 30, 60).
const RESTART_FIRST_SECS: u64 = 1;
const RESTART_MAX_SECS: u64 = 60;
const RESTART_STEPS: u32 = 6;

/// Run by `ExecStopPost=` after the app's main process ended: reports a crash to kiln's
/// alerts (`"$@"` is the `kiln notify report` command line), and nothing when systemd says
/// the service ended well (`SERVICE_RESULT=success`: a stop, an exit 0).
pub const REPORT_SCRIPT: &str =
    r#"case "$SERVICE_RESULT" in success|"") exit 0 ;; esac; exec "$@""#;

/// The `ExecStopPost=` command line after `/bin/sh -c REPORT_SCRIPT`: the name `$0` and the
/// `kiln notify report` argv.
pub fn report_argv(setup: &UnitSetup) -> Vec<String> {
    vec![
        "kiln-report".to_string(),
        setup.kiln.display().to_string(),
        "--root".to_string(),
        setup.root.display().to_string(),
        "notify".to_string(),
        "report".to_string(),
        setup.formation.project.clone(),
        "restarted".to_string(),
        setup.instance.name.kind.clone(),
    ]
}

/// `systemd 252 (252.39-1~deb12u2)` -> 252.
pub fn parse_version(text: &str) -> Option<u32> {
    text.lines()
        .next()?
        .strip_prefix("systemd ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The version of the systemd that `systemctl` talks to, if it says.
pub fn systemd_version() -> Option<u32> {
    let out = Command::new("systemctl").arg("--version").output().ok()?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

/// The unit of one instance.
pub fn unit(setup: &UnitSetup) -> String {
    let f = setup.formation;
    let i = setup.instance;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# Generated by kiln for project `{}`, release {}: do not edit, the next deploy rewrites it.",
        f.project, f.release
    );
    text.push_str("[Unit]\n");
    let _ = writeln!(
        text,
        "Description=kiln {} {} (release {})",
        f.project, i.name, f.release
    );
    text.push_str("After=network.target\n");
    // Never give up restarting, as kiln's own supervisor does: with systemd's default limit
    // (5 starts in 10s) an app that crashes at once would stay down after 5 seconds.
    text.push_str("StartLimitIntervalSec=0\n");
    text.push_str("\n[Service]\nType=simple\n");
    if let Some(user) = setup.user {
        let _ = writeln!(text, "User={user}");
    }
    let _ = writeln!(text, "WorkingDirectory={}", f.cwd.display());
    let _ = writeln!(text, "EnvironmentFile={}", setup.env_file.display());
    let _ = writeln!(
        text,
        "ExecStart=/bin/sh -c {} {} {}",
        quote(PROCESS_SCRIPT),
        quote(&format!("kiln-{}", i.name)),
        quote(&i.command)
    );
    text.push_str("Restart=on-failure\n");
    let _ = writeln!(text, "RestartSec={RESTART_FIRST_SECS}");
    if setup
        .systemd_version
        .is_some_and(|v| v >= RESTART_STEPS_SINCE)
    {
        let _ = writeln!(text, "RestartSteps={RESTART_STEPS}");
        let _ = writeln!(text, "RestartMaxDelaySec={RESTART_MAX_SECS}");
    }
    // `-`: a report that fails (a node.yml kiln cannot read) does not fail the unit.
    let report: Vec<String> = report_argv(setup).iter().map(|a| quote(a)).collect();
    let _ = writeln!(
        text,
        "ExecStopPost=-/bin/sh -c {} {}",
        quote(REPORT_SCRIPT),
        report.join(" ")
    );
    text.push_str("KillMode=control-group\nKillSignal=SIGTERM\n");
    let _ = writeln!(text, "TimeoutStopSec={}ms", f.grace.as_millis().max(1));
    text.push_str("StandardOutput=journal\nStandardError=journal\n");
    let _ = writeln!(text, "SyslogIdentifier={}.{}", f.project, i.name);
    if let Some(memory) = f.limits.memory {
        let _ = writeln!(text, "MemoryMax={memory}");
    }
    if let Some(cpu) = f.limits.cpu {
        let _ = writeln!(text, "CPUQuota={cpu}%");
    }
    text.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    text
}

fn systemctl(args: &[&str]) -> Result<String, Error> {
    let output =
        Command::new("systemctl")
            .args(args)
            .output()
            .map_err(|e| SupervisorError::Command {
                command: format!("systemctl {}", args.join(" ")),
                detail: e.to_string(),
            })?;
    if !output.status.success() {
        return Err(SupervisorError::Command {
            command: format!("systemctl {}", args.join(" ")),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        }
        .into());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn node_user() -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// Makes the units of `project` match its formation file.
pub fn sync(
    paths: &SupervisorPaths,
    config: &SupervisorConfig,
    project: &str,
) -> Result<(), Error> {
    let state = ProjectState::load(paths, project)?;
    let dir = env_dir(paths, project);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| SupervisorError::io("create", &dir, e))?;
    let wanted: Vec<InstanceSpec> = match &state {
        Some(state) if state.running => state.formation.instances(),
        _ => Vec::new(),
    };
    let owned: Vec<InstanceName> = fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| InstanceName::parse(e.file_name().to_str()?.strip_suffix(".env")?))
        .collect();
    let user = node_user();
    // The units outlive this process: they name the kiln installed where this one runs
    // from (after an upgrade too), never this process's own `/proc/self/exe`.
    let kiln = crate::fs::exe::kiln()
        .ok()
        .filter(|path| path.is_absolute() && !path.starts_with("/proc"))
        .ok_or_else(|| SupervisorError::Command {
            command: "find the kiln binary (for the units' ExecStopPost=)".to_string(),
            detail: "the file this kiln runs from is gone: install kiln again".to_string(),
        })?;
    let systemd_version = systemd_version();
    let mut changed = Vec::new();
    for spec in &wanted {
        let Some(state) = &state else { break };
        let env_path = dir.join(format!("{}.env", spec.name));
        let text = unit(&UnitSetup {
            formation: &state.formation,
            instance: spec,
            env_file: &env_path,
            user: user.as_deref(),
            kiln: &kiln,
            root: &paths.root,
            systemd_version,
        });
        let env = env_file(&spec.env)?;
        let unit_path = config.unit_dir.join(unit_name(project, &spec.name));
        let same = fs::read_to_string(&unit_path).ok().as_deref() == Some(text.as_str())
            && fs::read_to_string(&env_path).ok().as_deref() == Some(env.as_str());
        if !same {
            crate::fs::durable::write_atomic(&env_path, env.as_bytes(), 0o600)?;
            crate::fs::durable::write_atomic(&unit_path, text.as_bytes(), 0o644)?;
            changed.push(unit_name(project, &spec.name));
        }
    }
    for name in owned
        .iter()
        .filter(|n| !wanted.iter().any(|s| s.name == **n))
    {
        let unit = unit_name(project, name);
        let _ = systemctl(&["disable", "--now", &unit]);
        let _ = fs::remove_file(config.unit_dir.join(&unit));
        let _ = fs::remove_file(dir.join(format!("{name}.env")));
    }
    systemctl(&["daemon-reload"])?;
    for spec in &wanted {
        let unit = unit_name(project, &spec.name);
        if changed.contains(&unit) {
            systemctl(&["enable", &unit])?;
            systemctl(&["restart", &unit])?;
        } else {
            systemctl(&["start", &unit])?;
        }
    }
    Ok(())
}

pub fn restart(formation: &Formation, kind: Option<&str>) -> Result<(), Error> {
    for name in formation
        .instance_names()
        .iter()
        .filter(|n| kind.is_none_or(|k| n.kind == k))
    {
        systemctl(&["restart", &unit_name(&formation.project, name)])?;
    }
    Ok(())
}

/// `ActiveEnterTimestamp=@1733565600` (`systemctl show --timestamp=unix`): when the unit
/// last became active; None before it ever did (`ActiveEnterTimestamp=`).
fn active_since(props: &BTreeMap<&str, &str>) -> Option<DateTime<Utc>> {
    let secs: i64 = props
        .get("ActiveEnterTimestamp")?
        .strip_prefix('@')?
        .parse()
        .ok()?;
    DateTime::from_timestamp(secs, 0)
}

/// `systemctl show` of each unit, as `kiln ps` shows instances.
pub fn instances(state: &ProjectState) -> Result<Vec<Instance>, Error> {
    Ok(shown(state)
        .into_iter()
        .map(|(instance, _)| instance)
        .collect())
}

/// For each process type whose instances are all up: since when (the latest of their starts).
/// What `kiln supervise` reports to the alerts with this backend, for the "recovered".
pub fn up_since(state: &ProjectState) -> BTreeMap<String, DateTime<Utc>> {
    latest_starts(shown(state))
}

/// Per process type: the latest start of its instances if every one of them is up.
fn latest_starts(shown: Vec<(Instance, Option<DateTime<Utc>>)>) -> BTreeMap<String, DateTime<Utc>> {
    let mut since: BTreeMap<String, Option<DateTime<Utc>>> = BTreeMap::new();
    for (instance, active) in shown {
        let latest = since.entry(instance.kind.clone()).or_insert(active);
        *latest = match (*latest, active) {
            (Some(a), Some(b)) if instance.state == "up" => Some(a.max(b)),
            _ => None,
        };
    }
    since
        .into_iter()
        .filter_map(|(kind, at)| Some((kind, at?)))
        .collect()
}

/// Each instance as `kiln ps` shows it, with when its unit last became active.
fn shown(state: &ProjectState) -> Vec<(Instance, Option<DateTime<Utc>>)> {
    let mut all = Vec::new();
    for spec in state.formation.instances() {
        let unit = unit_name(&state.formation.project, &spec.name);
        let shown = systemctl(&[
            "show",
            &unit,
            "--timestamp=unix",
            "-p",
            "MainPID,ActiveState,SubState,NRestarts,ActiveEnterTimestamp,ExecMainStatus",
        ])
        .unwrap_or_default();
        let props: BTreeMap<&str, &str> = shown
            .lines()
            .filter_map(|line| line.split_once('='))
            .collect();
        let active = active_since(&props);
        let pid = props
            .get("MainPID")
            .and_then(|p| p.parse::<i32>().ok())
            .filter(|p| *p > 0);
        let state_text = match (
            props.get("ActiveState").copied().unwrap_or(""),
            props.get("SubState").copied().unwrap_or(""),
        ) {
            ("active", _) => "up",
            ("activating", "auto-restart") | ("failed", _) => "crashed",
            ("activating", _) => "starting",
            ("deactivating", _) => "stopping",
            _ => "stopped",
        };
        let uptime_seconds = active
            .filter(|_| state_text == "up")
            .and_then(|since| u64::try_from((Utc::now() - since).num_seconds()).ok());
        let instance = Instance {
            name: spec.name.to_string(),
            kind: spec.name.kind.clone(),
            index: spec.name.index,
            pid,
            port: spec.port,
            state: state_text.to_string(),
            uptime_seconds,
            restarts: props
                .get("NRestarts")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            command: spec.command.clone(),
            release: spec.release.clone(),
            last_exit: props
                .get("ExecMainStatus")
                .filter(|s| **s != "0")
                .map(|s| format!("exit {s}")),
        };
        all.push((instance, active));
    }
    all
}

/// `journalctl` arguments for `kiln logs --app` under systemd.
pub fn journal_args(
    state: &ProjectState,
    kind: Option<&str>,
    lines: usize,
    follow: bool,
) -> Vec<String> {
    let mut args = vec![
        "--no-pager".to_string(),
        "-o".to_string(),
        "short-iso-precise".to_string(),
        "-n".to_string(),
        lines.to_string(),
    ];
    if follow {
        args.push("-f".into());
    }
    for name in state
        .formation
        .instance_names()
        .iter()
        .filter(|n| kind.is_none_or(|k| n.kind == k))
    {
        args.push("-u".into());
        args.push(unit_name(&state.formation.project, name));
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::processes::ProcessLimits;
    use crate::runtime::formation::ProcessType;
    use std::time::Duration;

    fn formation() -> Formation {
        Formation {
            project: "shop".into(),
            release: "20261123T101500Z-3f2a9c1e".into(),
            cwd: PathBuf::from("/srv/projects/shop/run"),
            env: BTreeMap::from([
                ("PATH".to_string(), "/usr/bin:/bin".to_string()),
                (
                    "GREETING".to_string(),
                    r#"say "hi" $HOME `x` \n"#.to_string(),
                ),
            ]),
            secrets: Vec::new(),
            types: BTreeMap::from([(
                "web".to_string(),
                ProcessType {
                    command: r#"gunicorn app:app --bind "127.0.0.1:$PORT" --log-format '%(h)s'"#
                        .into(),
                    count: 1,
                },
            )]),
            grace: Duration::from_secs(10),
            limits: ProcessLimits {
                memory: Some(512 << 20),
                cpu: Some(50),
            },
            log_dir: PathBuf::from("/srv/projects/shop/logs/app"),
            ports: BTreeMap::from([("web.1".to_string(), 20001)]),
            check_command: None,
            socket_activation: false,
            slot: Default::default(),
        }
    }

    #[test]
    fn a_unit_per_instance_with_limits_grace_and_restart() {
        let formation = formation();
        let instance = &formation.instances()[0];
        let text = unit(&UnitSetup {
            formation: &formation,
            instance,
            env_file: Path::new("/srv/projects/.kiln/supervisor/systemd/shop/web.1.env"),
            user: Some("root"),
            kiln: Path::new("/usr/local/bin/kiln"),
            root: Path::new("/srv/projects"),
            systemd_version: Some(252),
        });
        for line in [
            "Restart=on-failure",
            "KillMode=control-group",
            "TimeoutStopSec=10000ms",
            "MemoryMax=536870912",
            "CPUQuota=50%",
            "WorkingDirectory=/srv/projects/shop/run",
            "EnvironmentFile=/srv/projects/.kiln/supervisor/systemd/shop/web.1.env",
            "SyslogIdentifier=shop.web.1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        let exec = text.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
        assert!(
            exec.ends_with(
                r#""gunicorn app:app --bind \"127.0.0.1:$$PORT\" --log-format '%%(h)s'""#
            ),
            "{exec}"
        );
        assert_eq!(unit_name("shop", &instance.name), "kiln-shop-web-1.service");
    }

    #[test]
    fn env_files_escape_what_systemd_would_interpret() {
        let formation = formation();
        let text = env_file(&formation.instances()[0].env).unwrap();
        assert!(
            text.contains(r#"GREETING="say \"hi\" \$HOME \`x\` \\n""#),
            "{text}"
        );
        assert!(text.contains("PORT=\"20001\"\n"), "{text}");
        let bad = BTreeMap::from([("A".to_string(), "two\nlines".to_string())]);
        assert!(env_file(&bad).unwrap_err().to_string().contains("`A`"));
    }

    /// systemd itself reads the generated unit (where `systemd-analyze` is installed; CI
    /// installs it): the quoting of ExecStart and every key must be what systemd accepts.
    #[test]
    fn systemd_analyze_verify_accepts_the_generated_unit() {
        let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
            eprintln!("systemd-analyze is not installed: unit checked by the tests above only");
            return;
        };
        assert!(version.status.success());
        let dir = tempfile::tempdir().unwrap();
        let mut formation = formation();
        formation.cwd = dir.path().to_path_buf();
        let env_path = dir.path().join("web.1.env");
        let instance = &formation.instances()[0];
        fs::write(&env_path, env_file(&instance.env).unwrap()).unwrap();
        let unit_path = dir.path().join(unit_name("shop", &instance.name));
        fs::write(
            &unit_path,
            unit(&UnitSetup {
                formation: &formation,
                instance,
                env_file: &env_path,
                user: node_user().as_deref(),
                kiln: Path::new("/bin/true"),
                root: dir.path(),
                systemd_version: systemd_version(),
            }),
        )
        .unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit_path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Without systemd as PID 1 it may note that it cannot reach the manager; what matters
        // is that nothing is said about our unit's contents.
        let about_unit: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(&*unit_path.to_string_lossy()) || l.contains("kiln-shop"))
            .collect();
        assert!(
            about_unit.is_empty(),
            "systemd-analyze verify complained:\n{stderr}"
        );
    }

    /// What `kiln supervise` reports for the "recovered" under systemd: a type is up since
    /// its latest start once all its instances are up, and not at all while one is not.
    #[test]
    fn a_type_is_up_since_its_latest_start_once_every_instance_is_up() {
        let at = |secs: i64| DateTime::from_timestamp(1_733_565_600 + secs, 0);
        let instance = |name: &str, state: &str| {
            let (kind, index) = name.split_once('.').unwrap();
            Instance {
                name: name.to_string(),
                kind: kind.to_string(),
                index: index.parse().unwrap(),
                pid: None,
                port: None,
                state: state.to_string(),
                uptime_seconds: None,
                restarts: 0,
                command: String::new(),
                release: String::new(),
                last_exit: None,
            }
        };
        let up = latest_starts(vec![
            (instance("web.1", "up"), at(0)),
            (instance("web.2", "up"), at(30)),
            (instance("worker.1", "up"), at(5)),
            (instance("worker.2", "crashed"), at(10)),
            (instance("clock.1", "up"), None),
        ]);
        assert_eq!(up, BTreeMap::from([("web".to_string(), at(30).unwrap())]));

        let props = BTreeMap::from([("ActiveEnterTimestamp", "@1733565600")]);
        assert_eq!(active_since(&props), at(0));
        let never = BTreeMap::from([("ActiveEnterTimestamp", "")]);
        assert_eq!(active_since(&never), None);
    }

    fn unit_for(formation: &Formation, version: Option<u32>, kiln: &Path) -> String {
        unit(&UnitSetup {
            formation,
            instance: &formation.instances()[0],
            env_file: Path::new("/srv/projects/.kiln/supervisor/systemd/shop/web.1.env"),
            user: None,
            kiln,
            root: Path::new("/srv/my projects"),
            systemd_version: version,
        })
    }

    /// The lines of one `[section]` of a unit.
    fn section<'t>(text: &'t str, name: &str) -> Vec<&'t str> {
        text.lines()
            .skip_while(|l| *l != format!("[{name}]"))
            .skip(1)
            .take_while(|l| !l.starts_with('['))
            .collect()
    }

    /// Like kiln's own supervisor: never given up (no start limit), the delay growing to 60s
    /// where systemd can (254 and later), 1s each time where it cannot (Debian 12's 252).
    #[test]
    fn units_restart_without_end_with_the_backoff_systemd_allows() {
        let formation = formation();
        let kiln = Path::new("/usr/local/bin/kiln");
        for (version, steps) in [
            (Some(252), false),
            (None, false),
            (Some(254), true),
            (Some(257), true),
        ] {
            let text = unit_for(&formation, version, kiln);
            assert!(
                section(&text, "Unit").contains(&"StartLimitIntervalSec=0"),
                "{text}"
            );
            let service = section(&text, "Service");
            assert!(service.contains(&"Restart=on-failure"), "{text}");
            assert!(service.contains(&"RestartSec=1"), "{text}");
            assert_eq!(
                service.contains(&"RestartSteps=6"),
                steps,
                "{version:?}: {text}"
            );
            assert_eq!(
                service.contains(&"RestartMaxDelaySec=60"),
                steps,
                "{version:?}: {text}"
            );
        }
    }

    #[test]
    fn systemctl_version_is_read_from_its_first_line() {
        for (text, want) in [
            ("systemd 252 (252.39-1~deb12u2)\n+PAM +AUDIT\n", Some(252)),
            ("systemd 257 (257.7-1)\n", Some(257)),
            ("systemd 254\n", Some(254)),
            ("", None),
            ("upstart 1.13\n", None),
        ] {
            assert_eq!(parse_version(text), want, "{text:?}");
        }
    }

    /// systemd's reading of an `Exec*=` line (systemd.service(5), "Command lines"): an
    /// optional `-` prefix, words split at spaces, double-quoted words with C escapes, `$$`
    /// for `$` and `%%` for `%`. Enough for what [`quote`] writes.
    fn exec_words(line: &str) -> Vec<String> {
        let mut words = Vec::new();
        let mut chars = line.trim_start_matches('-').chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                ' ' => {}
                '"' => {
                    let mut word = String::new();
                    while let Some(c) = chars.next() {
                        match c {
                            '"' => break,
                            '\\' => match chars.next() {
                                Some('n') => word.push('\n'),
                                Some('t') => word.push('\t'),
                                Some(other) => word.push(other),
                                None => {}
                            },
                            '$' | '%' if chars.peek() == Some(&c) => {
                                chars.next();
                                word.push(c);
                            }
                            c => word.push(c),
                        }
                    }
                    words.push(word);
                }
                c => {
                    let mut word = String::from(c);
                    while let Some(c) = chars.next_if(|c| *c != ' ') {
                        word.push(c);
                    }
                    words.push(word);
                }
            }
        }
        words
    }

    /// The `ExecStopPost=` of a unit, run as systemd runs it after the main process ended:
    /// a crash (`SERVICE_RESULT` other than `success`) runs `kiln notify report <project>
    /// restarted <type>` with the node's root, a clean end runs nothing.
    #[test]
    fn exec_stop_post_reports_a_crash_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        // Stands in for the kiln binary: records the arguments it was given.
        let recorder = dir.path().join("kiln $HOME's");
        let record = dir.path().join("calls");
        fs::write(
            &recorder,
            format!(
                "#!/bin/sh\nprintf '%s|' \"$@\" >> '{}'\necho >> '{}'\n",
                record.display(),
                record.display()
            ),
        )
        .unwrap();
        fs::set_permissions(
            &recorder,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let text = unit_for(&formation(), Some(252), &recorder);
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStopPost="))
            .unwrap_or_else(|| panic!("no ExecStopPost= in\n{text}"));
        assert!(
            line.starts_with('-'),
            "a failed report does not fail the unit: {line}"
        );
        let words = exec_words(line);
        assert_eq!(words[..2], ["/bin/sh", "-c"]);
        for (result, reported) in [
            ("exit-code", true),
            ("signal", true),
            ("core-dump", true),
            ("success", false),
        ] {
            let _ = fs::remove_file(&record);
            let out = Command::new(&words[0])
                .args(&words[1..])
                .env_clear()
                .env("SERVICE_RESULT", result)
                .output()
                .unwrap();
            assert!(out.status.success(), "{result}: {out:?}");
            let calls = fs::read_to_string(&record).unwrap_or_default();
            let want = if reported {
                "--root|/srv/my projects|notify|report|shop|restarted|web|\n"
            } else {
                ""
            };
            assert_eq!(calls, want, "SERVICE_RESULT={result}");
        }
    }
}
