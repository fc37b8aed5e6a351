//! Talking to `kiln supervise`: one JSON request and one JSON answer per connection on its
//! Unix socket, and starting the daemon on demand (detached: its own session, its output to
//! its log, so that it outlives the deploy or command that started it and holds none of its
//! pipes).

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::runtime::supervisor::state::{SupervisorError, SupervisorPaths};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Ping,
    /// Make `project`'s instances match its formation file.
    Sync {
        project: String,
    },
    /// Stop and start `project`'s instances (of `kind` only, if given).
    Restart {
        project: String,
        kind: Option<String>,
    },
    /// `kiln supervise --stop` (the node is held already): stop every instance of every
    /// project, answer, and exit.
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub pid: u32,
    pub error: Option<String>,
}

/// How long a started daemon may take to answer.
const DAEMON_START: Duration = Duration::from_secs(10);

/// Sends one request and waits up to `timeout` for the answer.
pub fn send(
    paths: &SupervisorPaths,
    request: &Request,
    timeout: Duration,
) -> Result<Response, SupervisorError> {
    let socket = paths.socket();
    let unreachable = |reason: String| SupervisorError::Unreachable {
        socket: socket.clone(),
        log: paths.daemon_log(),
        reason,
    };
    let mut stream = UnixStream::connect(&socket).map_err(|e| unreachable(e.to_string()))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(5))))
        .map_err(|e| unreachable(e.to_string()))?;
    let mut line = serde_json::to_vec(request).unwrap_or_default();
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(|e| unreachable(e.to_string()))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| unreachable(format!("no answer within {}s: {e}", timeout.as_secs())))?;
    serde_json::from_str(&answer)
        .map_err(|e| unreachable(format!("an answer that is not kiln's: {e}")))
}

/// The pid of the running daemon, if one runs (it holds its lock for as long as it lives).
pub fn daemon_pid(paths: &SupervisorPaths) -> Option<u32> {
    let lock = fs::File::open(paths.daemon_lock()).ok()?;
    match lock.try_lock() {
        Ok(()) => None,
        Err(_) => fs::read_to_string(paths.daemon_pid())
            .ok()
            .and_then(|text| text.trim().parse().ok()),
    }
}

/// Makes sure a daemon answers, starting one if none runs.
pub fn ensure_daemon(paths: &SupervisorPaths) -> Result<(), Error> {
    if send(paths, &Request::Ping, Duration::from_secs(5)).is_ok() {
        return Ok(());
    }
    paths.ensure()?;
    if daemon_pid(paths).is_none() {
        spawn_daemon(paths)?;
    }
    let started = Instant::now();
    loop {
        match send(paths, &Request::Ping, Duration::from_secs(5)) {
            Ok(_) => return Ok(()),
            Err(e) if started.elapsed() > DAEMON_START => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn spawn_daemon(paths: &SupervisorPaths) -> Result<(), Error> {
    let exe = crate::fs::exe::kiln()
        .map_err(|e| SupervisorError::io("find", std::path::Path::new("kiln"), e))?;
    let log_path = paths.daemon_log();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| SupervisorError::io("open", &log_path, e))?;
    let err = log
        .try_clone()
        .map_err(|e| SupervisorError::io("open", &log_path, e))?;
    let mut command = Command::new(&exe);
    command
        .arg("--root")
        .arg(&paths.root)
        .args(["supervise", "--detach"])
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        )
        .env("LANG", "C.UTF-8")
        .current_dir(&paths.dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err);
    if let Some(home) = std::env::var_os("HOME") {
        command.env("HOME", home);
    }
    // Not waited for: it detaches (setsid) and outlives this process; init reaps it.
    command
        .spawn()
        .map(drop)
        .map_err(|e| SupervisorError::io("start", &exe, e).into())
}
