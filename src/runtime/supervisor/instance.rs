//! `kiln supervise-instance <project> <instance> <nonce>`: the supervisor of one process
//! instance, started by the daemon. It holds the instance's lock for as long as it lives (so
//! there is never a second one), runs the app in run/ in its own process group with the
//! instance's environment, writes its output to logs/app/ line by line, restarts it when it
//! exits (after 1 s, doubling up to 60 s; back to 1 s once it ran 60 s) and, on SIGTERM, stops
//! it: SIGTERM to the app, then to what is left of its group, SIGKILL to the whole group after
//! the grace.
//!
//! A socket-activated web instance gets its listening socket from the daemon as fd 3; this
//! process keeps it (close-on-exec) and passes it to each start of the app as fd 3, so that
//! connections wait in its queue across the app's restarts.
//!
//! The app writes to a pipe this process reads; this process outlives the app, so the app
//! never writes into a closed pipe, and it does not depend on the daemon, which may come and
//! go.

use std::os::fd::OwnedFd;

use command_fds::{CommandFdExt, FdMapping};
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::project::Node;
use crate::error::Error;
use crate::exec::redact::Redactor;
use crate::notify::alert::{self, Report};
use crate::runtime::applog::{AppLog, Source};
use crate::runtime::formation::{InstanceSpec, PROCESS_SCRIPT, SOCKET_SCRIPT, Slot, exec_form};
use crate::runtime::supervisor::daemon::LISTEN_FD;
use crate::runtime::supervisor::proc::{self, ProcessId};
use crate::runtime::supervisor::state::{
    InstanceStatus, RunState, ShimSpec, SupervisorError, SupervisorPaths, open_lock,
};

/// The first pause before restarting a crashed app, and the longest.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// An app that ran this long crashed "once", not in a loop: its backoff starts over.
const BACKOFF_RESET: Duration = Duration::from_secs(60);

/// A line longer than this is written in pieces.
const MAX_LINE: usize = 64 * 1024;

type SharedLog = Arc<Mutex<AppLog>>;

pub fn run(root: &Path, project: &str, instance: &str, nonce: &str) -> Result<(), Error> {
    let paths = SupervisorPaths::new(root);
    if Slot::parse_key(instance).is_none() {
        return Err(Error::Usage(format!(
            "`{instance}` is not an instance name such as `web.1`"
        )));
    }
    let dir = paths.instance_dir(project, instance);
    let lock_path = dir.join("lock");
    let lock = open_lock(&lock_path)?;
    lock.lock()
        .map_err(|e| SupervisorError::io("lock", &lock_path, e))?;
    let spec_path = dir.join("spec.json");
    let spec: ShimSpec = std::fs::read(&spec_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| SupervisorError::Unreadable {
            path: spec_path.clone(),
            reason: "missing or not a spec".into(),
        })?;
    if spec.nonce != nonce {
        // Started by a daemon that died before this got the lock; another start replaced it.
        return Ok(());
    }
    let socket = if spec.instance.socket_activation {
        Some(inherited_socket().map_err(|e| SupervisorError::io("take the socket of", &dir, e))?)
    } else {
        None
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SupervisorError::io("start", &dir, e))?;
    let alerts = Alerts {
        root: root.to_path_buf(),
        project: project.to_string(),
    };
    runtime.block_on(supervise(&dir, &spec, &alerts, socket.as_ref()));
    drop(lock);
    Ok(())
}

enum Outcome {
    Exited(std::io::Result<ExitStatus>),
    Stop,
}

/// Where an instance's restarts and recoveries are reported: `notify::alert`, which turns a
/// crash loop into one alert and its end into one "recovered" (node.yml `notify.alerts`).
struct Alerts {
    root: std::path::PathBuf,
    project: String,
}

impl Alerts {
    /// How long a restarted app must stay up to count as recovered (node.yml
    /// `notify.alerts.stable`).
    fn stable(&self) -> Duration {
        Node::open(Some(self.root.clone()))
            .map(|node| node.config.notify.alerts.stable)
            .unwrap_or(Duration::from_secs(60))
    }

    /// Reports in the background: the app's supervision never waits for mail or webhooks.
    fn report(&self, instance: &InstanceSpec, seen: Seen, log: &SharedLog) {
        let root = self.root.clone();
        let project = self.project.clone();
        let kind = instance.name.kind.clone();
        let release = instance.release.clone();
        let log_dir = instance.log_dir.clone();
        let log = Arc::clone(log);
        std::thread::spawn(move || {
            let reported = (|| -> Result<(), Error> {
                let node = Node::open(Some(root))?;
                let project = node.project(&project)?;
                let lines: Vec<String> = crate::runtime::readiness::last_lines(&log_dir, &kind, 20);
                let report = match seen {
                    Seen::Restarted => Report::Restarted { process: &kind },
                    Seen::Running(since) => Report::Running {
                        process: &kind,
                        since,
                    },
                };
                let source = alert::Source {
                    node: &node,
                    project: &project,
                    release: Some(&release),
                };
                alert::report(&source, report, &lines)?;
                Ok(())
            })();
            if let Err(e) = reported {
                log.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .note(&format!(
                        "could not report to the alerts: {}",
                        crate::error::chain(&e)
                    ));
            }
        });
    }
}

#[derive(Clone, Copy)]
enum Seen {
    Restarted,
    Running(chrono::DateTime<Utc>),
}

/// The listening socket the daemon passed as fd 3, made close-on-exec so that nothing this
/// process starts but the app (which gets it mapped explicitly) keeps it open.
#[allow(unsafe_code)]
fn inherited_socket() -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::FileTypeExt;
    let fd = format!("/proc/self/fd/{LISTEN_FD}");
    let is_socket = std::fs::metadata(&fd).is_ok_and(|m| m.file_type().is_socket());
    if !is_socket {
        return Err(std::io::Error::other(format!(
            "fd {LISTEN_FD} is not the listening socket the supervisor passes"
        )));
    }
    // SAFETY: the daemon maps the instance's listening socket to fd 3 of this process when it
    // starts it (`daemon::start_instance`), checked just above; nothing else in this process
    // opened, owns or closes fd 3.
    let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(LISTEN_FD) };
    nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(std::io::Error::from)?;
    Ok(owned)
}

async fn supervise(dir: &Path, spec: &ShimSpec, alerts: &Alerts, socket: Option<&OwnedFd>) {
    let instance = &spec.instance;
    let me = std::process::id() as i32;
    let log: SharedLog = Arc::new(Mutex::new(AppLog::open(
        &instance.log_dir,
        &instance.name,
        spec.log_size,
        Redactor::new(&instance.secrets),
    )));
    let note = |text: &str| {
        log.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .line(Source::Kiln, text.as_bytes());
    };
    let mut term = signal(SignalKind::terminate()).ok();
    let mut status = InstanceStatus {
        release: instance.release.clone(),
        shim: ProcessId::of(me).unwrap_or(ProcessId { pid: me, start: 0 }),
        app: None,
        state: RunState::Starting,
        restarts: 0,
        since: None,
        last_exit: None,
        next_start: None,
    };
    let save = |status: &InstanceStatus| {
        let _ = status.save(dir);
    };
    save(&status);
    let mut backoff = Duration::ZERO;
    let stable = alerts.stable();
    loop {
        let started = Instant::now();
        let ended = match spawn_app(instance, socket) {
            Err(e) => format!("could not be started ({e})"),
            Ok((mut child, app, output)) => {
                status.app = Some(app);
                status.state = RunState::Up;
                status.since = Some(Utc::now());
                status.next_start = None;
                save(&status);
                note(&format!(
                    "started pid {}: `{}` (release {}{})",
                    app.pid,
                    instance.command,
                    instance.release,
                    instance
                        .port
                        .map(|p| format!(", PORT {p}"))
                        .unwrap_or_default()
                ));
                // After the note, so that the app's first lines come after it in the log.
                let pumped = Arc::clone(&log);
                std::thread::spawn(move || pump(output, &pumped));
                let since = status.since.unwrap_or_else(Utc::now);
                let mut reported_running = false;
                let outcome = loop {
                    tokio::select! {
                        exit = child.wait() => break Outcome::Exited(exit),
                        () = terminated(&mut term) => break Outcome::Stop,
                        () = dir_gone(dir) => break Outcome::Stop,
                        // Up for `stable` after restarts: whatever alert went out can end.
                        () = tokio::time::sleep(stable), if !reported_running && status.restarts > 0 => {
                            reported_running = true;
                            alerts.report(instance, Seen::Running(since), &log);
                        }
                    }
                };
                match outcome {
                    Outcome::Stop => {
                        status.state = RunState::Stopping;
                        save(&status);
                        note(&format!(
                            "stopping (SIGTERM; SIGKILL after {}s)",
                            instance.grace.as_secs_f64()
                        ));
                        stop_app(app, &mut child, instance.grace).await;
                        status.app = None;
                        status.state = RunState::Stopped;
                        save(&status);
                        note("stopped");
                        return;
                    }
                    Outcome::Exited(exit) => {
                        // What the app started in its group dies with it.
                        app.signal_group(Signal::SIGKILL);
                        match exit {
                            Ok(exit) => describe(exit),
                            Err(e) => format!("could not be waited for ({e})"),
                        }
                    }
                }
            }
        };
        let ran = started.elapsed();
        backoff = if ran >= BACKOFF_RESET {
            BACKOFF_FIRST
        } else {
            (backoff * 2).clamp(BACKOFF_FIRST, BACKOFF_MAX)
        };
        status.app = None;
        status.restarts += 1;
        alerts.report(instance, Seen::Restarted, &log);
        status.last_exit = Some(ended.clone());
        status.state = RunState::Backoff;
        status.next_start = chrono::Duration::from_std(backoff)
            .ok()
            .map(|b| Utc::now() + b);
        save(&status);
        note(&format!(
            "{} after {:.1}s; restarting in {}s",
            if ended.starts_with("could not") {
                ended.clone()
            } else {
                format!("exited ({ended})")
            },
            ran.as_secs_f64(),
            backoff.as_secs()
        ));
        let stop = tokio::select! {
            () = tokio::time::sleep(backoff) => false,
            () = terminated(&mut term) => true,
            () = dir_gone(dir) => true,
        };
        if stop {
            status.state = RunState::Stopped;
            status.next_start = None;
            save(&status);
            note("stopped");
            return;
        }
    }
}

/// `exit 1`, `SIGKILL`.
fn describe(exit: ExitStatus) -> String {
    match (exit.code(), exit.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => Signal::try_from(signal)
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|_| format!("signal {signal}")),
        (None, None) => "ended".to_string(),
    }
}

async fn terminated(term: &mut Option<tokio::signal::unix::Signal>) {
    match term {
        Some(term) => {
            term.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Completes once the instance dir is gone (the node root was removed): then nothing should
/// run for it any more, daemon or not.
async fn dir_gone(dir: &Path) {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        if !dir.join("spec.json").exists() {
            return;
        }
    }
}

/// Runs the app: `sh -c PROCESS_SCRIPT kiln-web.1 COMMAND` in its own process group, its
/// stdout and stderr on one pipe (so their lines keep their order), whose reading end is
/// returned for [`pump`]. A socket-activated one gets `socket` as fd 3, and runs its command
/// so that it keeps the shell's pid ([`SOCKET_SCRIPT`], [`exec_form`]).
fn spawn_app(
    instance: &InstanceSpec,
    socket: Option<&OwnedFd>,
) -> std::io::Result<(tokio::process::Child, ProcessId, std::io::PipeReader)> {
    let (reader, writer) = std::io::pipe()?;
    let mut command = tokio::process::Command::new("/bin/sh");
    command.arg("-c");
    match socket {
        Some(socket) => {
            command
                .arg(SOCKET_SCRIPT)
                .arg(format!("kiln-{}", instance.name))
                .arg(exec_form(&instance.command));
            command
                .fd_mappings(vec![FdMapping {
                    parent_fd: socket.try_clone()?,
                    child_fd: LISTEN_FD,
                }])
                .map_err(std::io::Error::other)?;
        }
        None => {
            command
                .arg(PROCESS_SCRIPT)
                .arg(format!("kiln-{}", instance.name))
                .arg(&instance.command);
        }
    }
    let child = command
        .env_clear()
        .envs(&instance.env)
        .current_dir(&instance.cwd)
        .stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .process_group(0)
        .spawn()?;
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .ok_or_else(|| std::io::Error::other("the app has no process id"))?;
    let app = ProcessId::of(pid).unwrap_or(ProcessId { pid, start: 0 });
    Ok((child, app, reader))
}

/// Copies the app's output to its log, one line at a time, until every writer has closed it.
fn pump(mut reader: std::io::PipeReader, log: &SharedLog) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut line: Vec<u8> = Vec::new();
    let write = |line: &[u8]| {
        log.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .line(Source::App, line);
    };
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for byte in &buf[..n] {
            if *byte == b'\n' {
                write(line.strip_suffix(b"\r").unwrap_or(&line));
                line.clear();
            } else {
                line.push(*byte);
                if line.len() >= MAX_LINE {
                    write(&line);
                    line.clear();
                }
            }
        }
    }
    if !line.is_empty() {
        write(&line);
    }
}

/// SIGTERM to the app, then to whatever of its group is left once it has exited (a shell's
/// children, workers that outlive their master); SIGKILL to the whole group after `grace`.
/// The app gets the signal first, and alone, so that a server with workers (gunicorn, a
/// node cluster) shuts them down in its own order, which a group-wide signal upsets.
async fn stop_app(app: ProcessId, child: &mut tokio::process::Child, grace: Duration) {
    app.signal(Signal::SIGTERM);
    let until = tokio::time::Instant::now() + grace;
    let mut leader_done = false;
    let mut group_told = false;
    while tokio::time::Instant::now() < until {
        if !leader_done {
            leader_done = matches!(child.try_wait(), Ok(Some(_)));
        }
        if leader_done && !proc::group_alive(app.pid) {
            return;
        }
        if leader_done && !group_told {
            group_told = true;
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(app.pid), Signal::SIGTERM);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(app.pid), Signal::SIGKILL);
    let _ = child.wait().await;
}
