//! Helpers for tests whose apps run under kiln's supervisor: a node with its own port range,
//! a guard that kills everything that runs for a node when the test ends (also on panic), a
//! tiny HTTP client, and a Python web app to push.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, getpgid};

use super::{Node, Project, assert_success};

/// Kills every process of a node when dropped: the supervisor daemon, the instance
/// supervisors (their command line names the root) and the apps with whatever they started
/// (their environment names it in `KILN_ROOT`), so that no test leaves a daemon behind.
pub struct ProcessGuard {
    root: PathBuf,
    // Keeps the node's temp dir until everything running in it is dead.
    _node: Option<Node>,
}

impl ProcessGuard {
    pub fn new(node: &Node) -> ProcessGuard {
        ProcessGuard {
            root: node.root.clone(),
            _node: Some(node.clone()),
        }
    }

    /// For a node made by something else (the demo script); declare it after the temp dir.
    pub fn for_root(root: &Path) -> ProcessGuard {
        ProcessGuard {
            root: root.to_path_buf(),
            _node: None,
        }
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        kill_everything(&self.root);
    }
}

/// The pids of processes whose command line or environment names `root`.
pub fn processes_of(root: &Path) -> Vec<i32> {
    let needle = root.as_os_str().as_encoded_bytes().to_vec();
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let mentions = ["cmdline", "environ"].iter().any(|file| {
            std::fs::read(entry.path().join(file))
                .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_slice()))
                .unwrap_or(false)
        });
        if mentions {
            found.push(pid);
        }
    }
    found
}

pub fn kill_everything(root: &Path) {
    for _ in 0..3 {
        let pids = processes_of(root);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let pid = Pid::from_raw(pid);
            // A group is killed only when this process leads it (the apps do): never the test
            // runner's own group.
            if getpgid(Some(pid)).ok() == Some(pid) {
                let _ = killpg(pid, Signal::SIGKILL);
            }
            let _ = kill(pid, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A node whose web instances get ports from a range of their own (tests run in parallel,
/// each with its own node and daemon), run by kiln's own supervisor, and the guard that stops
/// its processes.
pub fn supervised_node() -> (Node, ProcessGuard) {
    let node = Node::new();
    node.write_node_yml("supervisor:\n  backend: kiln\n");
    let guard = ProcessGuard::new(&node);
    (node, guard)
}

/// Another supervised node in the same temp dir (staging and production), with its own ports.
pub fn supervised_sibling(node: &Node, name: &str) -> (Node, ProcessGuard) {
    let sibling = node.sibling(name);
    sibling.write_node_yml("supervisor:\n  backend: kiln\n");
    let guard = ProcessGuard::new(&sibling);
    (sibling, guard)
}

/// GET `path` from 127.0.0.1:`port`: the status and the body, or None if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Polls `probe` until it gives a value or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `kiln ps <name> --json`.
pub fn ps(project: &Project) -> serde_json::Value {
    let out = project.node.kiln(&["ps", &project.name, "--json"]);
    assert_success(&out, "kiln ps --json");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One instance of `kiln ps --json` by name (`web.1`).
pub fn instance(project: &Project, name: &str) -> serde_json::Value {
    let ps = ps(project);
    ps["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no {name} in {ps:#}"))
}

pub fn web_port(project: &Project) -> u16 {
    instance(project, "web.1")["port"].as_u64().unwrap() as u16
}

/// The body `/` answers on the web port, trimmed.
pub fn answer(project: &Project) -> Option<String> {
    http_get(web_port(project), "/").map(|(_, body)| body.trim().to_string())
}

/// The apps running for `root` as instance `name` (`web.1`): the group leaders whose
/// environment says `KILN_PROCESS=<name>`, and their `KILN_RELEASE`.
pub fn apps(root: &Path, name: &str) -> Vec<(i32, String)> {
    let wanted = format!("KILN_PROCESS={name}");
    processes_of(root)
        .into_iter()
        .filter(|pid| getpgid(Some(Pid::from_raw(*pid))).ok() == Some(Pid::from_raw(*pid)))
        .filter_map(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let vars: Vec<String> = environ
                .split(|b| *b == 0)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect();
            vars.contains(&wanted).then(|| {
                let release = vars
                    .iter()
                    .find_map(|v| v.strip_prefix("KILN_RELEASE="))
                    .unwrap_or("")
                    .to_string();
                (pid, release)
            })
        })
        .collect()
}

/// A web app on the standard library only: `/` answers message.txt, `/env/NAME` the value of
/// an environment variable; it says on stdout where it listens.
pub const PY_APP: &str = r#"import http.server, os, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith('/env/'):
            body = os.environ.get(self.path[5:], 'unset')
        else:
            body = open('message.txt').read().strip()
        data = (body + '\n').encode()
        self.send_response(200)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        print('served', self.path, flush=True)
port = int(os.environ['PORT'])
print('listening on', port, flush=True)
http.server.HTTPServer(('127.0.0.1', port), Handler).serve_forever()
"#;
