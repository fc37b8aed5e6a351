//! The one helper the end-to-end tests share: a throwaway node in a temp dir, an app repo pushed
//! with the real `git` binary, and a fingerprint of a tree that sees everything the guarantees
//! talk about (content, modes, mtimes, symlink targets, empty dirs, non-UTF-8 names).

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

pub const KILN: &str = env!("CARGO_BIN_EXE_kiln");

pub struct Node {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
}

impl Node {
    pub fn new() -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("node");
        Node { dir, root }
    }

    /// `kiln --root <root> <args>`
    pub fn kiln(&self, args: &[&str]) -> Output {
        self.kiln_env(args, &[])
    }

    pub fn kiln_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(KILN);
        cmd.arg("--root").arg(&self.root).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run kiln")
    }

    pub fn init(&self, name: &str, mode: &str) -> Project {
        let out = self.kiln(&["init", name, "--mode", mode]);
        assert_success(&out, "kiln init");
        self.project(name)
    }

    pub fn write_node_yml(&self, text: &str) {
        fs::create_dir_all(&self.root).unwrap();
        fs::write(self.root.join("node.yml"), text).unwrap();
    }

    pub fn project(&self, name: &str) -> Project {
        Project {
            name: name.to_string(),
            base: self.root.join(name),
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
    pub fn release_log(&self) -> serde_json::Value {
        match fs::read(self.path("state/releases.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap(),
            Err(_) => serde_json::json!({"current": null, "records": []}),
        }
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
}

pub struct App {
    pub dir: PathBuf,
}

impl App {
    pub fn git(&self, args: &[&str]) -> Output {
        Command::new("git")
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
        let out = self.git(&["push", "-f", project.repo().to_str().unwrap(), refspec]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
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

/// Walks `root` (not following symlinks) into path -> fingerprint; the root itself is "".
/// Directory mtimes are included: a restored tree must match them too.
pub fn fingerprint(root: &Path) -> BTreeMap<Vec<u8>, Fingerprint> {
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
pub fn tree_fingerprint(root: &Path) -> BTreeMap<Vec<u8>, Fingerprint> {
    let mut map = fingerprint(root);
    map.remove(&Vec::new());
    map
}

/// Asserts two fingerprints are equal, printing the first differences readably.
pub fn assert_same(
    before: &BTreeMap<Vec<u8>, Fingerprint>,
    after: &BTreeMap<Vec<u8>, Fingerprint>,
    what: &str,
) {
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
