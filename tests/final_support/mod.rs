//! Helpers for the final-mode tests: throwaway kiln nodes driven through the real binary, a
//! git app pushed with the real `git`, tree snapshots to compare, and a minimal static HTTP
//! server on 127.0.0.1 (a stand-in for any web server publishing staging's releases/).

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const PROJECT: &str = "shop";

pub fn kiln_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kiln")
}

/// A command with a predictable environment: no inherited KILN_* or GIT_* settings.
fn clean(mut command: Command) -> Command {
    for (key, _) in std::env::vars_os() {
        if key.as_bytes().starts_with(b"KILN_") || key.as_bytes().starts_with(b"GIT_") {
            command.env_remove(key);
        }
    }
    command
}

pub fn text(output: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A kiln node rooted in a temp dir, with one project.
pub struct Node {
    pub root: PathBuf,
}

impl Node {
    pub fn new(root: PathBuf) -> Node {
        Node { root }
    }

    pub fn kiln(&self, args: &[&str]) -> Output {
        let mut command = clean(Command::new(kiln_bin()));
        command.arg("--root").arg(&self.root).args(args);
        command.output().unwrap()
    }

    /// Runs kiln and insists that it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.kiln(args);
        assert!(output.status.success(), "kiln {args:?}\n{}", text(&output));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn project(&self) -> PathBuf {
        self.root.join(PROJECT)
    }

    pub fn repo(&self) -> PathBuf {
        self.project().join("git/project.git")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.project().join("run")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.project().join("data")
    }

    pub fn releases_dir(&self) -> PathBuf {
        self.project().join("releases")
    }

    /// Appends a line to project.yml (kiln init has no flag for `trusted_key`).
    pub fn add_setting(&self, line: &str) {
        let path = self.project().join("project.yml");
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str(line);
        text.push('\n');
        fs::write(path, text).unwrap();
    }

    /// The release log as (id, status, commit) triples, oldest first.
    pub fn release_log(&self) -> Vec<(String, String, String)> {
        let json = self.ok(&["releases", PROJECT, "--json"]);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        value["releases"]
            .as_array()
            .unwrap_or_else(|| panic!("no releases in {json}"))
            .iter()
            .map(|r| {
                let field = |name: &str| r[name].as_str().unwrap_or_default().to_string();
                (field("id"), field("status"), field("commit"))
            })
            .collect()
    }

    /// The release this node offers for `commit` (from `kiln release list --json`).
    pub fn offered_release(&self, commit: &str) -> String {
        let json = self.ok(&["release", "list", PROJECT, "--json"]);
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
        let logs = self.project().join("logs");
        let mut names: Vec<PathBuf> = fs::read_dir(&logs)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        names.sort();
        fs::read_to_string(names.last().expect("a deploy log")).unwrap()
    }

    /// Names in releases/ (hidden temp dirs included: a refusal must not leave any).
    pub fn release_files(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.releases_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

/// A git working copy of the app.
pub struct App {
    pub dir: PathBuf,
}

impl App {
    pub fn new(dir: PathBuf) -> App {
        fs::create_dir_all(&dir).unwrap();
        let app = App { dir };
        app.git(&["init", "-q", "-b", "master"]);
        app
    }

    pub fn git(&self, args: &[&str]) -> String {
        let output = clean(Command::new("git"))
            .current_dir(&self.dir)
            .args([
                "-c",
                "user.name=kiln test",
                "-c",
                "user.email=test@kiln.invalid",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "git {args:?}\n{}", text(&output));
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    pub fn write(&self, path: &str, content: &str) {
        let path = self.dir.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    /// Commits everything; returns the full commit id.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }

    /// Pushes HEAD to `branch` of the node's project repo (master deploys; others do not).
    pub fn push(&self, node: &Node, branch: &str) -> Output {
        self.push_env(node, branch, &[])
    }

    /// [`App::push`] with extra environment for the hooks.
    pub fn push_env(&self, node: &Node, branch: &str, env: &[(&str, &Path)]) -> Output {
        let refspec = format!("HEAD:refs/heads/{branch}");
        let mut command = clean(Command::new("git"));
        command
            .current_dir(&self.dir)
            .arg("push")
            .arg(node.repo())
            .arg(refspec);
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().unwrap()
    }

    /// Pushes to master and insists that the deploy succeeded.
    pub fn deploy(&self, node: &Node) -> String {
        self.deploy_env(node, &[])
    }

    pub fn deploy_env(&self, node: &Node, env: &[(&str, &Path)]) -> String {
        let output = self.push_env(node, "master", env);
        let all = text(&output);
        assert!(
            output.status.success() && all.contains("-----> deployed"),
            "push to {}\n{all}",
            node.root.display()
        );
        all
    }
}

/// What a tree holds, entry by entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32 },
    File { mode: u32, content: Vec<u8> },
    Symlink { target: PathBuf },
}

/// Every entry below `root` with kind, permission bits, content and symlink target.
pub fn tree(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), &mut out, &mut None);
    out
}

/// Like [`tree`], plus every entry's mtime in nanoseconds: "unchanged" means unchanged.
pub fn tree_with_mtimes(root: &Path) -> BTreeMap<PathBuf, (Entry, i64)> {
    let mut times = Some(BTreeMap::new());
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), &mut out, &mut times);
    let times = times.unwrap();
    out.into_iter()
        .map(|(path, entry)| {
            let time = times[&path];
            (path, (entry, time))
        })
        .collect()
}

fn walk(
    root: &Path,
    rel: &Path,
    out: &mut BTreeMap<PathBuf, Entry>,
    times: &mut Option<BTreeMap<PathBuf, i64>>,
) {
    let dir = root.join(rel);
    for entry in fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        let path = rel.join(entry.file_name());
        let full = root.join(&path);
        let meta = fs::symlink_metadata(&full).unwrap();
        if let Some(times) = times {
            times.insert(
                path.clone(),
                meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            );
        }
        let mode = meta.mode() & 0o7777;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&full).unwrap();
            out.insert(path, Entry::Symlink { target });
        } else if meta.is_dir() {
            out.insert(path.clone(), Entry::Dir { mode });
            walk(root, &path, out, times);
        } else {
            let content = fs::read(&full).unwrap();
            out.insert(path, Entry::File { mode, content });
        }
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
