//! A real S3-protocol server on 127.0.0.1 for the S3 release store tests: moto's `moto_server`
//! from PyPI, installed once into a venv under target/test-cache/ (pip's cache beside it, so a
//! second run installs nothing), one server per test on a free port, killed when dropped (also
//! when the test panics). moto checks that a request is signed, not the signature itself.
//!
//! Used with `#[path = "common/moto.rs"] mod moto;` next to `mod common;`.

#![allow(dead_code, clippy::unwrap_used)]

use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The moto release the tests were written against; `s3` pulls in only the S3 backend's
/// dependencies, flask and flask-cors are what `moto_server` needs.
const PACKAGES: [&str; 3] = ["moto[s3]==5.1.22", "flask>=3,<4", "flask-cors>=5,<7"];

/// Any Authorization header makes moto treat a request as signed (it does not verify it); the
/// tests use this to read and tamper with objects behind kiln's back.
const AUTH: &str = "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0";

pub const ACCESS_KEY: &str = "AKIDKILNTEST";
pub const SECRET_KEY: &str = "kiln-test-secret";

fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-cache")
}

/// target/test-cache/moto/bin/moto_server, installed on first use. Test binaries run in
/// parallel: the install holds a lock, and a stamp marks it complete.
fn moto_server() -> PathBuf {
    let cache = cache_dir();
    fs::create_dir_all(&cache).unwrap();
    let venv = cache.join("moto");
    let stamp = venv.join("kiln-installed");
    // The venv's scripts start with its absolute path: a target/ moved elsewhere (another
    // checkout) needs a new venv, so the stamp names the path too.
    let wanted = format!("{}\n{}", venv.display(), PACKAGES.join("\n"));
    let lock = fs::File::create(cache.join("moto.lock")).unwrap();
    lock.lock().unwrap();
    if fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        let _ = fs::remove_dir_all(&venv);
        // Debian's python3 where there is one (CI), else the first on PATH.
        let python = if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        let out = Command::new(python)
            .args(["-m", "venv"])
            .arg(&venv)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "python3 -m venv (install python3-venv): {}",
            crate::common::text(&out)
        );
        let out = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PACKAGES)
            .env("PIP_CACHE_DIR", cache.join("pip"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pip install {PACKAGES:?}: {}",
            crate::common::text(&out)
        );
        fs::write(&stamp, &wanted).unwrap();
    }
    venv.join("bin/moto_server")
}

/// A running moto server; stopped when dropped.
pub struct Moto {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl Moto {
    /// Starts moto_server on a free port of 127.0.0.1 and waits until it answers. Its log goes
    /// to `dir`.
    pub fn start(dir: &Path) -> Moto {
        let program = moto_server();
        let log = dir.join(format!("moto-{}.log", std::process::id()));
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new(&program)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(fs::File::create(&log).unwrap())
                .stderr(fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            let mut moto = Moto {
                child,
                port,
                log: log.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = moto.child.try_wait() {
                    break; // the port was taken meanwhile: try another
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return moto;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            drop(moto);
        }
        panic!(
            "moto_server did not start: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.endpoint(), path.trim_start_matches('/'))
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent()
    }

    pub fn create_bucket(&self, bucket: &str) {
        let response = Self::agent()
            .put(&self.url(bucket))
            .header("authorization", AUTH)
            .send_empty()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "create bucket {bucket}");
    }

    /// The object `key` of `bucket`, if there is one.
    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let response = Self::agent()
            .get(&self.url(&format!("{bucket}/{key}")))
            .header("authorization", AUTH)
            .call()
            .unwrap();
        if response.status().as_u16() == 404 {
            return None;
        }
        assert_eq!(response.status().as_u16(), 200, "GET {bucket}/{key}");
        let mut bytes = Vec::new();
        response
            .into_body()
            .into_reader()
            .read_to_end(&mut bytes)
            .unwrap();
        Some(bytes)
    }

    /// Replaces (or creates) an object, as someone with write access to the bucket could.
    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let response = Self::agent()
            .put(&self.url(&format!("{bucket}/{key}")))
            .header("authorization", AUTH)
            .header("content-type", "application/octet-stream")
            .send(bytes)
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "PUT {bucket}/{key}");
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
