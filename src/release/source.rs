//! Where a final-mode project pulls its releases from (project.yml `source`), and how: a
//! directory (another node's `<root>/<name>/releases/`, or its project dir `<root>/<name>`),
//! `ssh://[user@]host[:port]/<root>/<name>` (running `kiln release list|export` on the staging
//! node), an `http(s)://` base URL of a plain static server publishing staging's
//! releases/ dir (listing comes from the `index.json` staging writes there, since a static
//! server need not list directories), or `s3://<bucket>/<prefix>` of an S3-compatible store
//! that staging publishes to (`kiln release publish`, [`crate::release::s3`]), which holds the
//! same files.
//!
//! This module only moves bytes. Nothing it returns is trusted: [`crate::release::fetch`] verifies the
//! manifest's signature, the tarball's checksum and the unpacked tree before anything is used.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::config::layout;
use crate::config::node_config::S3Config;
use crate::release::manifest as release;
use crate::release::s3::{self, S3Error, Store};

/// The listing staging keeps in its releases/ dir: a JSON array of the manifests of its good
/// releases.
pub const INDEX_FILE: &str = "index.json";
/// Largest listing, manifest or signature accepted from a source.
const SMALL_LIMIT: u64 = 64 << 20;
/// The program used for `ssh://` sources; tests and unusual setups can point it at a wrapper,
/// as `GIT_SSH` does for git.
pub const SSH_PROGRAM_VAR: &str = "KILN_SSH";

#[derive(Debug)]
pub enum Source {
    /// The releases/ dir itself (a project dir given in project.yml is resolved to its
    /// releases/ when used, so a source configured before the staging node exists still works).
    Dir(PathBuf),
    /// Base URL without a trailing slash.
    Http(String),
    Ssh(SshTarget),
    S3(Store),
}

impl PartialEq for Source {
    fn eq(&self, other: &Source) -> bool {
        match (self, other) {
            (Source::Dir(a), Source::Dir(b)) => a == b,
            (Source::Http(a), Source::Http(b)) => a == b,
            (Source::Ssh(a), Source::Ssh(b)) => a == b,
            (Source::S3(a), Source::S3(b)) => a.location == b.location,
            _ => false,
        }
    }
}

/// `ssh://[user@]host[:port]/<root>/<name>`. Every part is checked against a narrow set of
/// characters because ssh joins the remote command into one string for the remote shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub root: String,
    pub name: String,
}

/// The files of one release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Tarball,
    Manifest,
    Signature,
}

impl Part {
    pub fn file_name(self, release: &str) -> String {
        match self {
            Part::Tarball => format!("{release}.tar.zst"),
            Part::Manifest => format!("{release}.json"),
            Part::Signature => format!("{release}.json.sig"),
        }
    }
}

/// A release a source offers: enough to pick one. The manifest itself is fetched byte for
/// byte, since the signature covers its exact bytes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Listed {
    pub release: String,
    pub commit: String,
    pub created: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("release source `{url}` is not usable: {reason}")]
    BadSource { url: String, reason: String },
    #[error("could not {action} `{}`: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("could not fetch `{url}`: {reason}")]
    Http { url: String, reason: String },
    #[error("could not run `{program}` for `{url}`: {source}")]
    SshSpawn {
        program: String,
        url: String,
        source: io::Error,
    },
    #[error("`{command}` failed ({status}){}", last_line(stderr))]
    Ssh {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("the release list from `{from}` is not a JSON array of manifests: {reason}")]
    BadListing { from: String, reason: String },
    #[error("`{from}` is larger than the limit of {limit} bytes")]
    TooLarge { from: String, limit: u64 },
    #[error("{0}")]
    S3(#[from] S3Error),
}

fn last_line(stderr: &str) -> String {
    match stderr.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(line) => format!(": {}", line.trim()),
        None => String::new(),
    }
}

impl Source {
    /// Parses project.yml's `source`; an `s3://` store is reached with node.yml's `s3:`
    /// settings (or the environment's).
    pub fn parse(text: &str, s3: &S3Config) -> Result<Source, SourceError> {
        let bad = |reason: &str| SourceError::BadSource {
            url: text.to_string(),
            reason: reason.to_string(),
        };
        if text.starts_with(s3::SCHEME) {
            let location = s3::Location::parse(text).map_err(|r| bad(&r))?;
            return Ok(Source::S3(Store::open(location, s3)?));
        }
        if let Some(rest) = text.strip_prefix("ssh://") {
            return parse_ssh(rest).map(Source::Ssh).map_err(|r| bad(&r));
        }
        if text.starts_with("http://") || text.starts_with("https://") {
            if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(bad("a URL cannot contain spaces"));
            }
            return Ok(Source::Http(text.trim_end_matches('/').to_string()));
        }
        let path = Path::new(text.strip_prefix("file://").unwrap_or(text));
        if text.contains("://") && !text.starts_with("file://") {
            return Err(bad(
                "use a directory, `ssh://[user@]host[:port]/<root>/<name>`, an `http(s)://` URL or `s3://<bucket>/<prefix>`",
            ));
        }
        if !path.is_absolute() {
            return Err(bad("a directory source must be an absolute path"));
        }
        Ok(Source::Dir(path.to_path_buf()))
    }

    /// The releases the source offers, in its own order.
    pub fn list(&self) -> Result<Vec<Listed>, SourceError> {
        match self {
            Source::Dir(base) => {
                let dir = releases_dir(base);
                let index = dir.join(INDEX_FILE);
                match read_limited(File::open(&index), &index)? {
                    Some(bytes) => parse_listing(&bytes, &index.display().to_string()),
                    None => scan_dir(&dir),
                }
            }
            Source::Http(base) => {
                let url = format!("{base}/{INDEX_FILE}");
                let mut bytes = Vec::new();
                // No index yet: staging has no good release yet.
                if !http_copy(&url, &mut bytes, SMALL_LIMIT)? {
                    return Ok(Vec::new());
                }
                parse_listing(&bytes, &url)
            }
            Source::Ssh(target) => {
                let mut bytes = Vec::new();
                ssh_copy(
                    target,
                    &["release", "list", &target.name, "--json"],
                    &mut bytes,
                    SMALL_LIMIT,
                )?;
                parse_listing(&bytes, &target.url())
            }
            Source::S3(store) => {
                let mut bytes = Vec::new();
                // No index yet: nothing was published there yet.
                if store.get(INDEX_FILE, &mut bytes, SMALL_LIMIT)?.is_none() {
                    return Ok(Vec::new());
                }
                parse_listing(&bytes, &format!("{}/{INDEX_FILE}", store.location))
            }
        }
    }

    /// Copies `part` of `release` into `out`, at most `limit` bytes. Ok(false): the source
    /// does not have it (a release without signature).
    pub fn copy(
        &self,
        release: &str,
        part: Part,
        out: &mut dyn Write,
        limit: u64,
    ) -> Result<bool, SourceError> {
        // Release ids go into paths, URLs and remote command lines.
        if !release::valid_id(release) {
            return Err(SourceError::BadListing {
                from: self.to_string(),
                reason: format!("`{release}` is not a release id"),
            });
        }
        let name = part.file_name(release);
        match self {
            Source::Dir(base) => {
                let path = releases_dir(base).join(&name);
                let file = match File::open(&path) {
                    Ok(file) => file,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                    Err(source) => {
                        return Err(SourceError::Io {
                            action: "open",
                            path,
                            source,
                        });
                    }
                };
                let from = path.display().to_string();
                copy_limited(file, out, limit).map_err(|e| match e {
                    CopyError::TooLarge => SourceError::TooLarge { from, limit },
                    CopyError::Io(source) => SourceError::Io {
                        action: "copy",
                        path: path.clone(),
                        source,
                    },
                })?;
                Ok(true)
            }
            Source::Http(base) => http_copy(&format!("{base}/{name}"), out, limit),
            Source::Ssh(target) => {
                let mut args = vec!["release", "export", &target.name, release];
                match part {
                    Part::Tarball => {}
                    Part::Manifest => args.push("--manifest"),
                    Part::Signature => args.push("--signature"),
                }
                let copied = ssh_copy(target, &args, out, limit)?;
                // `release export --signature` prints nothing for an unsigned release.
                Ok(part != Part::Signature || copied > 0)
            }
            Source::S3(store) => Ok(store.get(&name, out, limit)?.is_some()),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Dir(path) => write!(f, "{}", path.display()),
            Source::Http(url) => write!(f, "{url}"),
            Source::Ssh(target) => write!(f, "{}", target.url()),
            Source::S3(store) => write!(f, "{}", store.location),
        }
    }
}

impl SshTarget {
    pub fn url(&self) -> String {
        let user = self
            .user
            .as_deref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        let root = self.root.trim_end_matches('/');
        format!("ssh://{user}{host}{port}{root}/{}", self.name)
    }

    /// The ssh invocation running `kiln --root <root> <args>` on the staging node. Arguments
    /// are passed one by one; the remote side sees them joined by spaces, which is safe
    /// because every part was restricted to characters no shell treats specially.
    fn command(&self, args: &[&str]) -> Command {
        let program = std::env::var_os(SSH_PROGRAM_VAR).unwrap_or_else(|| OsString::from("ssh"));
        let mut command = Command::new(program);
        command.arg("-o").arg("BatchMode=yes");
        if let Some(port) = self.port {
            command.arg("-p").arg(port.to_string());
        }
        if let Some(user) = &self.user {
            command.arg("-l").arg(user);
        }
        command
            .arg("--")
            .arg(&self.host)
            .arg("kiln")
            .arg("--root")
            .arg(&self.root)
            .args(args);
        command
    }
}

/// A project dir holds releases/; a releases/ dir is used as it is.
fn releases_dir(base: &Path) -> PathBuf {
    let nested = base.join("releases");
    if nested.is_dir() {
        nested
    } else {
        base.to_path_buf()
    }
}

fn parse_ssh(rest: &str) -> Result<SshTarget, String> {
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => return Err("no path: use `ssh://[user@]host[:port]/<root>/<name>`".into()),
    };
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((user, hostport)) => (Some(user), hostport),
        None => (None, authority),
    };
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| "unclosed `[` in the host".to_string())?;
        (host, after.strip_prefix(':'))
    } else {
        match hostport.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("`{p}` is not a port number"))
        })
        .transpose()?;
    if host.is_empty()
        || host.starts_with('-')
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c))
    {
        return Err(format!("`{host}` is not a host name or address"));
    }
    if let Some(user) = user
        && (user.is_empty()
            || user.starts_with('-')
            || !user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)))
    {
        return Err(format!("`{user}` is not a user name"));
    }
    let path = path.trim_end_matches('/');
    let (root, name) = path
        .rsplit_once('/')
        .ok_or_else(|| "no project name at the end of the path".to_string())?;
    if !layout::valid_name(name) {
        return Err(format!(
            "the path must end with the project's name, and `{name}` is not a project name"
        ));
    }
    let root = if root.is_empty() { "/" } else { root };
    if !root
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._/-+".contains(c))
    {
        return Err(format!(
            "the node root `{root}` may only hold letters, digits and `._/-+` over ssh"
        ));
    }
    Ok(SshTarget {
        user: user.map(str::to_string),
        host: host.to_string(),
        port,
        root: root.to_string(),
        name: name.to_string(),
    })
}

/// Entries that are not manifests of this format are skipped: a newer staging may list
/// more than this kiln understands, and it only needs the ones it can pick.
fn parse_listing(bytes: &[u8], from: &str) -> Result<Vec<Listed>, SourceError> {
    let values: Vec<serde_json::Value> =
        serde_json::from_slice(bytes).map_err(|e| SourceError::BadListing {
            from: from.to_string(),
            reason: e.to_string(),
        })?;
    Ok(values
        .into_iter()
        .filter_map(|v| serde_json::from_value::<Listed>(v).ok())
        .filter(|l| release::valid_id(&l.release))
        .collect())
}

/// A releases/ dir without index.json (copied by hand, or from an older node): every
/// manifest that has its tarball next to it.
pub(crate) fn scan_dir(dir: &Path) -> Result<Vec<Listed>, SourceError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(source) => {
            return Err(SourceError::Io {
                action: "list",
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut listed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        if !release::valid_id(id) || !dir.join(Part::Tarball.file_name(id)).is_file() {
            continue;
        }
        let path = entry.path();
        if let Some(bytes) = read_limited(File::open(&path), &path)?
            && let Ok(item) = serde_json::from_slice::<Listed>(&bytes)
            && item.release == id
        {
            listed.push(item);
        }
    }
    Ok(listed)
}

fn read_limited(file: io::Result<File>, path: &Path) -> Result<Option<Vec<u8>>, SourceError> {
    let file = match file {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SourceError::Io {
                action: "open",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut bytes = Vec::new();
    let from = path.display().to_string();
    copy_limited(file, &mut bytes, SMALL_LIMIT).map_err(|e| match e {
        CopyError::TooLarge => SourceError::TooLarge {
            from,
            limit: SMALL_LIMIT,
        },
        CopyError::Io(source) => SourceError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        },
    })?;
    Ok(Some(bytes))
}

enum CopyError {
    TooLarge,
    Io(io::Error),
}

/// Copies at most `limit` bytes; more is an error, so a hostile source cannot fill the disk.
fn copy_limited(reader: impl Read, out: &mut dyn Write, limit: u64) -> Result<u64, CopyError> {
    let mut reader = reader.take(limit.saturating_add(1));
    let copied = io::copy(&mut reader, out).map_err(CopyError::Io)?;
    if copied > limit {
        return Err(CopyError::TooLarge);
    }
    Ok(copied)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        .timeout_per_read(Some(Duration::from_secs(120)))
        .build()
        .new_agent()
}

/// GETs `url` into `out`. Ok(false): 404.
fn http_copy(url: &str, out: &mut dyn Write, limit: u64) -> Result<bool, SourceError> {
    let http_err = |reason: String| SourceError::Http {
        url: url.to_string(),
        reason,
    };
    let response = match agent().get(url).call() {
        Ok(response) => response,
        Err(ureq::Error::StatusCode(404)) => return Ok(false),
        Err(e) => return Err(http_err(e.to_string())),
    };
    let reader = response.into_body().into_reader();
    copy_limited(reader, out, limit).map_err(|e| match e {
        CopyError::TooLarge => SourceError::TooLarge {
            from: url.to_string(),
            limit,
        },
        CopyError::Io(e) => http_err(e.to_string()),
    })?;
    Ok(true)
}

/// Runs `kiln <args>` on the staging node, copying its stdout into `out`; returns the bytes
/// copied.
fn ssh_copy(
    target: &SshTarget,
    args: &[&str],
    out: &mut dyn Write,
    limit: u64,
) -> Result<u64, SourceError> {
    let mut command = target.command(args);
    let shown = format!(
        "ssh {} kiln --root {} {}",
        target.host,
        target.root,
        args.join(" ")
    );
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| SourceError::SshSpawn {
        program: command.get_program().to_string_lossy().into_owned(),
        url: target.url(),
        source,
    })?;
    // Read stderr on its own thread: a chatty remote must not block on a full pipe while we
    // read stdout.
    let stderr = child.stderr.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = (&mut pipe).take(64 << 10).read_to_end(&mut text);
            let _ = io::copy(&mut pipe, &mut io::sink());
            String::from_utf8_lossy(&text).into_owned()
        })
    });
    let copied = match child.stdout.take() {
        Some(stdout) => copy_limited(stdout, out, limit),
        None => Ok(0),
    };
    if copied.is_err() {
        let _ = child.kill();
    }
    let status = child.wait();
    let stderr = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
    let copied = copied.map_err(|e| match e {
        CopyError::TooLarge => SourceError::TooLarge {
            from: shown.clone(),
            limit,
        },
        CopyError::Io(e) => SourceError::Ssh {
            command: shown.clone(),
            status: format!("reading its output failed: {e}"),
            stderr: stderr.clone(),
        },
    })?;
    match status {
        Ok(status) if status.success() => Ok(copied),
        Ok(status) => Err(SourceError::Ssh {
            command: shown,
            status: describe_status(status),
            stderr,
        }),
        Err(e) => Err(SourceError::Ssh {
            command: shown,
            status: format!("could not wait for it: {e}"),
            stderr,
        }),
    }
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => "unknown status".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        let ssh = |user: Option<&str>, host: &str, port: Option<u16>, root: &str| {
            Source::Ssh(SshTarget {
                user: user.map(str::to_string),
                host: host.into(),
                port,
                root: root.into(),
                name: "shop".into(),
            })
        };
        let cases = [
            (
                "/srv/projects/shop",
                Source::Dir("/srv/projects/shop".into()),
            ),
            (
                "file:///srv/x/releases",
                Source::Dir("/srv/x/releases".into()),
            ),
            (
                "https://releases.example.com/shop/",
                Source::Http("https://releases.example.com/shop".into()),
            ),
            (
                "http://127.0.0.1:8080",
                Source::Http("http://127.0.0.1:8080".into()),
            ),
            (
                "ssh://kiln@staging.example.com/srv/projects/shop",
                ssh(Some("kiln"), "staging.example.com", None, "/srv/projects"),
            ),
            (
                "ssh://staging:2222/srv/projects/shop/",
                ssh(None, "staging", Some(2222), "/srv/projects"),
            ),
            ("ssh://[::1]:22/shop", ssh(None, "::1", Some(22), "/")),
        ];
        for (text, expected) in cases {
            let parsed =
                Source::parse(text, &S3Config::default()).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(parsed, expected, "{text}");
        }
    }

    #[test]
    fn refuses_sources_that_could_inject_options_or_shell_words() {
        let cases = [
            ("relative/dir", "must be an absolute path"),
            ("ftp://x/y", "use a directory"),
            ("ssh://host", "no path"),
            ("ssh://-oProxyCommand=x/srv/shop", "not a host name"),
            ("ssh://-l@host/srv/shop", "not a user name"),
            ("ssh://host:99999/srv/shop", "not a port number"),
            ("ssh://host/srv/a;rm -rf/shop", "may only hold"),
            ("ssh://host/srv/$(x)/shop", "may only hold"),
            ("ssh://host/srv/Shop", "not a project name"),
            ("http://host/a b", "cannot contain spaces"),
            ("s3://Bucket/x", "not an S3 bucket name"),
        ];
        for (text, expected) in cases {
            let error = Source::parse(text, &S3Config::default())
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(error.contains(&format!("`{text}`")), "{error}");
        }
    }

    #[test]
    fn ssh_urls_round_trip() {
        for text in [
            "ssh://kiln@staging.example.com/srv/projects/shop",
            "ssh://staging:2222/srv/projects/shop",
            "ssh://[::1]:2222/srv/shop",
        ] {
            let Source::Ssh(target) = Source::parse(text, &S3Config::default()).unwrap() else {
                panic!("{text} is not ssh");
            };
            assert_eq!(target.url(), text);
        }
    }

    #[test]
    fn ssh_command_passes_every_value_as_its_own_argument() {
        let Source::Ssh(target) = Source::parse(
            "ssh://kiln@staging:2222/srv/projects/shop",
            &S3Config::default(),
        )
        .unwrap() else {
            panic!("not ssh");
        };
        let command = target.command(&["release", "list", "shop", "--json"]);
        let args: Vec<String> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "-o",
                "BatchMode=yes",
                "-p",
                "2222",
                "-l",
                "kiln",
                "--",
                "staging",
                "kiln",
                "--root",
                "/srv/projects",
                "release",
                "list",
                "shop",
                "--json"
            ]
        );
    }

    const ID: &str = "20260101T000000Z-0123abcd";

    #[test]
    fn directory_sources_list_from_the_index_or_the_manifests() {
        let base = tempfile::tempdir().unwrap();
        let releases = base.path().join("releases");
        std::fs::create_dir(&releases).unwrap();
        let manifest = format!(
            r#"{{"release":"{ID}","commit":"abc","created":"2026-01-01T00:00:00Z","extra":1}}"#
        );
        std::fs::write(releases.join(format!("{ID}.json")), &manifest).unwrap();
        std::fs::write(releases.join(format!("{ID}.tar.zst")), b"tar").unwrap();
        // A manifest without its tarball is not offered.
        std::fs::write(
            releases.join("20260101T000000Z-ffffffff.json"),
            manifest.replace("0123abcd", "ffffffff"),
        )
        .unwrap();
        let expected = vec![Listed {
            release: ID.into(),
            commit: "abc".into(),
            created: "2026-01-01T00:00:00Z".parse().unwrap(),
        }];
        for base in [base.path(), releases.as_path()] {
            let source = Source::Dir(base.to_path_buf());
            assert_eq!(source.list().unwrap(), expected, "{}", base.display());
        }
        // With an index, only what it lists (staging's good releases) is offered.
        std::fs::write(releases.join(INDEX_FILE), "[]").unwrap();
        assert_eq!(Source::Dir(releases.clone()).list().unwrap(), vec![]);

        let source = Source::Dir(base.path().to_path_buf());
        let mut bytes = Vec::new();
        assert!(source.copy(ID, Part::Tarball, &mut bytes, 100).unwrap());
        assert_eq!(bytes, b"tar");
        assert!(!source.copy(ID, Part::Signature, &mut bytes, 100).unwrap());
        let error = source
            .copy(ID, Part::Tarball, &mut Vec::new(), 2)
            .unwrap_err();
        assert!(
            matches!(error, SourceError::TooLarge { limit: 2, .. }),
            "{error}"
        );
        let error = source
            .copy("../x", Part::Tarball, &mut Vec::new(), 2)
            .unwrap_err();
        assert!(error.to_string().contains("not a release id"), "{error}");
    }

    #[test]
    fn listings_must_be_json_arrays() {
        let error = parse_listing(b"<html>", "http://x/index.json").unwrap_err();
        assert!(error.to_string().contains("http://x/index.json"), "{error}");
        let listed = parse_listing(
            br#"[{"release":"bad","commit":"a","created":"2026-01-01T00:00:00Z"},{"x":1}]"#,
            "x",
        )
        .unwrap();
        assert!(listed.is_empty());
    }
}
