//! The one helper the end-to-end tests share: throwaway nodes in a temp dir driven through the
//! real kiln binary (several can share the dir, as staging and production do), an app repo
//! pushed with the real `git` binary, a fingerprint of a tree that sees everything the
//! guarantees talk about (content, modes, mtimes, symlink targets, empty dirs, non-UTF-8
//! names), and a minimal static HTTP server on 127.0.0.1.

#![allow(dead_code, clippy::unwrap_used)]

pub mod processes;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::rc::Rc;

pub mod notify;

use sha2::{Digest, Sha256};

pub mod http;
pub mod load;

pub const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// A command with a predictable environment: no inherited KILN_* or GIT_* settings.
fn clean(mut command: Command) -> Command {
    for (key, _) in std::env::vars_os() {
        if key.as_bytes().starts_with(b"KILN_") || key.as_bytes().starts_with(b"GIT_") {
            command.env_remove(key);
        }
    }
    command
}

/// The temp dir of one test's nodes. Whatever still runs for a node in it (the supervisor
/// daemon, the apps' processes of a project that deployed a Procfile) is killed before it is
/// removed, also when the test panics.
pub struct NodeDir(tempfile::TempDir);

impl NodeDir {
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for NodeDir {
    fn drop(&mut self) {
        processes::kill_everything(self.0.path());
    }
}

/// A kiln node: a root inside a temp dir that lives as long as any node or project in it.
#[derive(Clone)]
pub struct Node {
    pub dir: Rc<NodeDir>,
    pub root: PathBuf,
    ports: Rc<PortSlot>,
}

/// The web ports a node hands out, held while the node lives: one slot of [`SLOT_PORTS`] in
/// 21000-30999, claimed with an flock in the machine's temp dir. So the nodes alive at once
/// never share a port: those of this test binary, of the others, and of another checkout's
/// suite on the same machine (regression: two nodes whose roots hashed to the same slot gave
/// the same port to two apps, and one failed with "Address already in use").
struct PortSlot {
    first: u32,
    _lock: fs::File,
}

const SLOT_PORTS: u32 = 25;
const SLOTS: u32 = 400;

impl PortSlot {
    /// The first free slot from the one `root` hashes to.
    fn claim(root: &Path) -> PortSlot {
        use std::hash::{Hash, Hasher};
        let dir = std::env::temp_dir().join("kiln-test-port-slots");
        fs::create_dir_all(&dir).unwrap();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        root.hash(&mut hasher);
        let start = (hasher.finish() % u64::from(SLOTS)) as u32;
        for slot in (0..SLOTS).map(|i| (start + i) % SLOTS) {
            let lock = fs::File::create(dir.join(format!("{slot}.lock"))).unwrap();
            if lock.try_lock().is_ok() {
                return PortSlot {
                    first: 21_000 + slot * SLOT_PORTS,
                    _lock: lock,
                };
            }
        }
        panic!("all {SLOTS} port slots in {} are held", dir.display());
    }
}

impl Node {
    pub fn new() -> Node {
        let dir = Rc::new(NodeDir(tempfile::tempdir().expect("temp dir")));
        let root = dir.path().join("node");
        let ports = Rc::new(PortSlot::claim(&root));
        Node { dir, root, ports }
    }

    /// The web ports of this node's apps: a range no other node alive has (see [`PortSlot`]).
    pub fn port_range(&self) -> (u32, u32) {
        let first = self.ports.first;
        (first, first + SLOT_PORTS - 1)
    }

    /// Another node in the same temp dir, rooted at `<dir>/<name>`, with ports of its own.
    pub fn sibling(&self, name: &str) -> Node {
        let root = self.dir.path().join(name);
        Node {
            dir: Rc::clone(&self.dir),
            ports: Rc::new(PortSlot::claim(&root)),
            root,
        }
    }

    /// `kiln --root <root> <args>`
    pub fn kiln(&self, args: &[&str]) -> Output {
        self.kiln_env(args, &[])
    }

    pub fn kiln_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = clean(Command::new(KILN));
        cmd.arg("--root").arg(&self.root).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run kiln")
    }

    /// `kiln --root <root> <args>` not yet started, for a child the test drives itself (a
    /// follower, stdin of its own).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = clean(Command::new(KILN));
        cmd.arg("--root").arg(&self.root).args(args);
        cmd
    }

    /// Runs kiln, insists that it succeeds and returns its stdout.
    /// Runs `kiln <args>` with the failpoint `point` armed (the `failpoints` feature) and
    /// asserts that kiln was killed there with SIGKILL, as a crash would kill it.
    pub fn killed_at(&self, point: &str, args: &[&str]) {
        let out = self.kiln_env(args, &[("FAILPOINTS", &format!("{point}=return"))]);
        assert_eq!(
            out.status.code(),
            None,
            "{point}: expected SIGKILL: {}",
            text(&out)
        );
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kiln(args);
        assert_success(&out, &format!("kiln {args:?}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn init(&self, name: &str, mode: &str) -> Project {
        self.init_with(name, &["--mode", mode])
    }

    /// `kiln init <name> <args>`, e.g. with `--source` for final mode.
    pub fn init_with(&self, name: &str, args: &[&str]) -> Project {
        if !self.root.join("node.yml").exists() {
            self.write_node_yml("");
        }
        let mut all = vec!["init", name];
        all.extend_from_slice(args);
        self.ok(&all);
        self.project(name)
    }

    /// Writes node.yml, with this node's own web port range unless `text` gives one.
    pub fn write_node_yml(&self, text: &str) {
        fs::create_dir_all(&self.root).unwrap();
        let (first, last) = self.port_range();
        let ports = format!("  ports: {first}-{last}\n");
        let text = if text.contains("  ports:") {
            text.to_string()
        } else if text.contains("supervisor:\n") {
            text.replacen("supervisor:\n", &format!("supervisor:\n{ports}"), 1)
        } else {
            format!(
                "{text}{}supervisor:\n{ports}",
                if text.is_empty() || text.ends_with('\n') {
                    ""
                } else {
                    "\n"
                }
            )
        };
        fs::write(self.root.join("node.yml"), text).unwrap();
    }

    pub fn project(&self, name: &str) -> Project {
        Project {
            name: name.to_string(),
            base: self.root.join(name),
            node: self.clone(),
        }
    }

    /// A fresh app repo (a normal git work tree) in the temp dir.
    pub fn app(&self, name: &str) -> App {
        let dir = self.dir.path().join(format!("app-{name}"));
        fs::create_dir_all(&dir).unwrap();
        let app = App { dir };
        app.git(&["init", "-q", "-b", "master"]);
        app
    }
}

pub struct Project {
    pub name: String,
    pub base: PathBuf,
    pub node: Node,
}

impl Project {
    pub fn path(&self, rel: &str) -> PathBuf {
        self.base.join(rel)
    }
    pub fn run(&self) -> PathBuf {
        self.path("run")
    }
    pub fn data(&self) -> PathBuf {
        self.path("data")
    }
    pub fn repo(&self) -> PathBuf {
        self.path("git/project.git")
    }
    pub fn releases_dir(&self) -> PathBuf {
        self.path("releases")
    }
    pub fn release_log(&self) -> serde_json::Value {
        match fs::read(self.path("state/releases.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap(),
            Err(_) => serde_json::json!({"current": null, "records": []}),
        }
    }
    /// The events of logs/<log>.jsonl (`log`: a release, or a rollback's log name).
    pub fn events(&self, log: &str) -> Vec<serde_json::Value> {
        fs::read_to_string(self.path(&format!("logs/{log}.jsonl")))
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
    pub fn current(&self) -> Option<String> {
        self.release_log()["current"].as_str().map(str::to_string)
    }
    pub fn releases(&self) -> Vec<(String, String)> {
        self.release_log()["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_string(),
                    r["status"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
    pub fn branch_tip(&self, branch: &str) -> Option<String> {
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(self.repo())
            .args(["rev-parse", "--verify", "-q"])
            .arg(format!("refs/heads/{branch}"))
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Appends a line to project.yml (kiln init has no flag for e.g. `trusted_key`).
    pub fn add_setting(&self, line: &str) {
        let path = self.path("project.yml");
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str(line);
        text.push('\n');
        fs::write(path, text).unwrap();
    }

    /// The release this project's node offers for `commit` (from `kiln release list --json`).
    pub fn offered_release(&self, commit: &str) -> String {
        let json = self.node.ok(&["release", "list", &self.name, "--json"]);
        let list: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
        list.iter()
            .rev()
            .find(|m| m["commit"] == commit)
            .and_then(|m| m["release"].as_str())
            .unwrap_or_else(|| panic!("no release of {commit} offered:\n{json}"))
            .to_string()
    }

    /// The newest deploy log under logs/.
    pub fn last_log(&self) -> String {
        let mut names: Vec<PathBuf> = fs::read_dir(self.path("logs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        names.sort();
        fs::read_to_string(names.last().expect("a deploy log")).unwrap()
    }

    /// Names in `rel` (hidden temp dirs included: a refusal must not leave any), sorted.
    pub fn names_in(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.path(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Names in releases/.
    pub fn release_files(&self) -> Vec<String> {
        self.names_in("releases")
    }
}

pub struct App {
    pub dir: PathBuf,
}

impl App {
    pub fn git(&self, args: &[&str]) -> Output {
        clean(Command::new("git"))
            .current_dir(&self.dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "Tester")
            .env("GIT_AUTHOR_EMAIL", "tester@example.invalid")
            .env("GIT_COMMITTER_NAME", "Tester")
            .env("GIT_COMMITTER_EMAIL", "tester@example.invalid")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .expect("run git")
    }

    pub fn write(&self, rel: &str, content: &str) -> &App {
        let path = self.dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
        self
    }

    pub fn remove(&self, rel: &str) -> &App {
        fs::remove_file(self.dir.join(rel)).unwrap();
        self
    }

    pub fn commit(&self, message: &str) -> String {
        assert_success(&self.git(&["add", "-A"]), "git add");
        assert_success(
            &self.git(&["commit", "-q", "--allow-empty", "-m", message]),
            "git commit",
        );
        let out = self.git(&["rev-parse", "HEAD"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `git push <repo> <refspec>`; returns (success, combined output).
    pub fn push_ref(&self, project: &Project, refspec: &str) -> (bool, String) {
        self.push_env(project, refspec, &[])
    }

    /// [`App::push_ref`] with extra environment for the hooks.
    pub fn push_env(
        &self,
        project: &Project,
        refspec: &str,
        env: &[(&str, &Path)],
    ) -> (bool, String) {
        let mut cmd = clean(Command::new("git"));
        cmd.current_dir(&self.dir)
            .args(["push", "-f"])
            .arg(project.repo())
            .arg(refspec);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run git push");
        (out.status.success(), text(&out))
    }

    /// Force-pushes HEAD to the branch `next`, which does not deploy, so a test can run
    /// `kiln deploy --rev next` and read its exit status.
    pub fn push_next(&self, project: &Project) {
        let (ok, output) = self.push_ref(project, "HEAD:refs/heads/next");
        assert!(ok, "{output}");
    }

    pub fn push(&self, project: &Project) -> (bool, String) {
        self.push_ref(project, "HEAD:master")
    }

    /// Pushes HEAD to master and insists that it deployed; returns the push's output.
    pub fn deploy(&self, project: &Project) -> String {
        self.deploy_env(project, &[])
    }

    pub fn deploy_env(&self, project: &Project, env: &[(&str, &Path)]) -> String {
        let (ok, output) = self.push_env(project, "HEAD:master", env);
        assert!(
            ok && output.contains("-----> deployed"),
            "push to {}\n{output}",
            project.base.display()
        );
        output
    }
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Everything the guarantees promise about one entry of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub kind: &'static str,
    pub mode: u32,
    pub mtime: (i64, i64),
    pub content: String,
}

/// A whole tree's fingerprints, by path relative to its root.
pub type Tree = BTreeMap<Vec<u8>, Fingerprint>;

/// Walks `root` (not following symlinks) into path -> fingerprint; the root itself is "".
/// Directory mtimes are included: a restored tree must match them too.
pub fn fingerprint(root: &Path) -> Tree {
    let mut map = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(root).unwrap();
        let meta = entry.path().symlink_metadata().unwrap();
        let ft = meta.file_type();
        let (kind, content) = if ft.is_symlink() {
            (
                "symlink",
                fs::read_link(entry.path())
                    .unwrap()
                    .as_os_str()
                    .to_string_lossy()
                    .into_owned(),
            )
        } else if ft.is_dir() {
            ("dir", String::new())
        } else {
            let mut hasher = Sha256::new();
            let mut file = fs::File::open(entry.path()).unwrap();
            let mut buf = vec![0u8; 65536];
            loop {
                let n = file.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            ("file", hex::encode(hasher.finalize()))
        };
        map.insert(
            rel.as_os_str().as_bytes().to_vec(),
            Fingerprint {
                kind,
                mode: meta.permissions().mode() & 0o7777,
                mtime: (meta.mtime(), meta.mtime_nsec()),
                content,
            },
        );
    }
    map
}

/// Like [`fingerprint`] without the root's own entry, for comparing two different roots.
pub fn tree_fingerprint(root: &Path) -> Tree {
    let mut map = fingerprint(root);
    map.remove(&Vec::new());
    map
}

/// Asserts two fingerprints are equal, printing the first differences readably.
pub fn assert_same(before: &Tree, after: &Tree, what: &str) {
    if before == after {
        return;
    }
    let mut diffs = Vec::new();
    for (k, v) in before {
        match after.get(k) {
            None => diffs.push(format!("missing after: {}", String::from_utf8_lossy(k))),
            Some(w) if w != v => diffs.push(format!(
                "changed: {}: {v:?} -> {w:?}",
                String::from_utf8_lossy(k)
            )),
            _ => {}
        }
    }
    for k in after.keys() {
        if !before.contains_key(k) {
            diffs.push(format!("added after: {}", String::from_utf8_lossy(k)));
        }
    }
    panic!("{what}: trees differ:\n{}", diffs.join("\n"));
}

/// The `stage` names of `value["stages"]`, in order: the stages of `kiln deploy --json`, of a
/// release log record, or of a notification.
pub fn stage_names(value: &serde_json::Value) -> Vec<String> {
    value["stages"]
        .as_array()
        .unwrap_or_else(|| panic!("no stages in {value}"))
        .iter()
        .map(|s| s["stage"].as_str().unwrap().to_string())
        .collect()
}

/// run/ and data/ of a project as they are, to hold a failed, killed or refused command to
/// "byte for byte as before" (the failure rows of ARCHITECTURE.md and docs/guarantees.md).
pub struct Before {
    pub run: Tree,
    pub data: Tree,
}

impl Before {
    pub fn take(project: &Project) -> Before {
        Before {
            run: fingerprint(&project.run()),
            data: fingerprint(&project.data()),
        }
    }

    /// Panics naming `what` (the case, may be empty) and the tree that changed.
    pub fn assert_unchanged(&self, project: &Project, what: &str) {
        let said = |tree: &str| match what {
            "" => tree.to_string(),
            what => format!("{what}: {tree}"),
        };
        assert_same(&self.run, &fingerprint(&project.run()), &said("run/"));
        assert_same(&self.data, &fingerprint(&project.data()), &said("data/"));
    }
}

/// A static file server on 127.0.0.1 serving `dir`, as any web server would publish
/// staging's releases/: GET only, 404 for anything missing, no directory listings.
pub struct HttpServer {
    pub port: u16,
}

impl HttpServer {
    pub fn serve(dir: PathBuf) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let _ = answer(stream, &dir);
                });
            }
        });
        HttpServer { port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
}

fn answer(stream: TcpStream, dir: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let mut stream = stream;
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let name = path.trim_start_matches('/');
    let file = (!name.is_empty() && !name.contains('/') && !name.starts_with('.'))
        .then(|| dir.join(name))
        .filter(|p| p.is_file());
    match file {
        Some(file) => {
            let body = fs::read(file)?;
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            stream.write_all(&body)?;
        }
        None => {
            stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
            )?;
        }
    }
    stream.flush()
}

/// The last line the node wrote to a push (`remote: ...`): what a pusher reads as the outcome.
pub fn last_remote_line(output: &str) -> &str {
    output
        .lines()
        .rfind(|line| line.starts_with("remote:"))
        .unwrap_or_else(|| panic!("no remote: line in:\n{output}"))
        .trim_end()
}

/// A throwaway ed25519 key pair at `path` (and `path`.pub).
pub fn ssh_keygen(path: &Path, comment: &str) {
    let out = Command::new("/usr/bin/ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen: {}", text(&out));
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An sshd of the test's own on 127.0.0.1: key logins only, no PAM, its host key, pid file and
/// log in `dir`; stopped when dropped.
pub struct Sshd {
    child: std::process::Child,
    pub port: u16,
}

impl Sshd {
    /// Generates `dir/host_key` and starts sshd with the common settings plus `extra` lines
    /// (AuthorizedKeysFile, PermitRootLogin, AllowUsers ...).
    pub fn spawn(dir: &Path, extra: &str) -> Result<Sshd, String> {
        fs::create_dir_all("/run/sshd").map_err(|e| format!("cannot create /run/sshd: {e}"))?;
        ssh_keygen(&dir.join("host_key"), "host_key");
        let port = free_port();
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\n{extra}",
                d = dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-f")
            .arg(&config)
            .arg("-E")
            .arg(dir.join("sshd.log"))
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start sshd: {e}"))?;
        Ok(Sshd { child, port })
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
