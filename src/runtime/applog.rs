//! The app logs in logs/app/: one file per process instance (`web.1.log`), written by the
//! instance's supervisor, one timestamped, instance-prefixed line per line the app printed
//! (`2026-11-23T10:15:00.123456Z app[web.1]: listening`) and the supervisor's own notes
//! (`kiln[web.1]: exited with status 1; restarting in 2s`), pillar secrets masked. A file is
//! rotated past a size (node.yml `supervisor.app_log_size`) to `.1` and `.2`.
//! `kiln logs <name> --app` merges the files back into one stream by time.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::exec::redact::Redactor;
use crate::runtime::formation::InstanceName;

/// Rotated files kept besides the current one.
const KEEP: u32 = 2;

/// Who wrote a line: the app, or kiln about the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    App,
    Kiln,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::App => "app",
            Source::Kiln => "kiln",
        }
    }
}

pub fn log_path(dir: &Path, name: &InstanceName) -> PathBuf {
    dir.join(format!("{name}.log"))
}

/// The log of one instance, open for appending.
pub struct AppLog {
    path: PathBuf,
    name: InstanceName,
    file: Option<File>,
    size: u64,
    max: u64,
    redactor: Redactor,
}

impl AppLog {
    pub fn open(dir: &Path, name: &InstanceName, max: u64, redactor: Redactor) -> AppLog {
        let _ = fs::create_dir_all(dir);
        let path = log_path(dir, name);
        let file = open_append(&path).ok();
        let size = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        AppLog {
            path,
            name: name.clone(),
            file,
            size,
            max,
            redactor,
        }
    }

    /// Writes one line (without its `\n`). A log that cannot be written must not stop the
    /// app: the line is dropped, and the file opened again at the next one.
    pub fn line(&mut self, source: Source, text: &[u8]) {
        let text = self.redactor.redact(text);
        let mut line = format!(
            "{} {}[{}]: ",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ"),
            source.as_str(),
            self.name
        )
        .into_bytes();
        line.extend_from_slice(&text);
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.max {
            self.rotate();
        }
        if self.file.is_none() {
            self.file = open_append(&self.path).ok();
            self.size = 0;
        }
        if let Some(file) = &mut self.file {
            if file.write_all(&line).is_ok() {
                self.size += line.len() as u64;
            } else {
                self.file = None;
            }
        }
    }

    /// A note of kiln's about the instance.
    pub fn note(&mut self, text: &str) {
        self.line(Source::Kiln, text.as_bytes());
    }

    fn rotate(&mut self) {
        self.file = None;
        for n in (1..KEEP).rev() {
            let _ = fs::rename(rotated(&self.path, n), rotated(&self.path, n + 1));
        }
        let _ = fs::rename(&self.path, rotated(&self.path, 1));
        self.file = open_append(&self.path).ok();
        self.size = 0;
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Which lines `kiln logs --app` shows.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Only this process type (`web`).
    pub kind: Option<String>,
    /// The last this many lines, over all instances.
    pub lines: usize,
}

/// The process types that have logs in `dir` (also those no longer in the Procfile).
pub fn kinds(dir: &Path) -> BTreeSet<String> {
    instance_files(dir, &LogQuery::default())
        .into_keys()
        .map(|name| name.kind)
        .collect()
}

/// The instance files in `dir` the query selects, current file path by instance.
fn instance_files(dir: &Path, query: &LogQuery) -> BTreeMap<InstanceName, PathBuf> {
    let mut files = BTreeMap::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(name) = file_name.strip_suffix(".log").and_then(InstanceName::parse) else {
            continue;
        };
        if query.kind.as_ref().is_some_and(|kind| *kind != name.kind) {
            continue;
        }
        files.insert(name, entry.path());
    }
    files
}

/// The last `query.lines` lines over all selected instances, oldest first, merged by their
/// timestamps.
pub fn tail(dir: &Path, query: &LogQuery) -> Vec<Vec<u8>> {
    let mut all: Vec<Vec<u8>> = Vec::new();
    for path in instance_files(dir, query).values() {
        // Oldest rotated file first, so the instance's own lines stay in order.
        let mut lines: Vec<Vec<u8>> = Vec::new();
        for n in (1..=KEEP).rev() {
            lines.extend(read_lines(&rotated(path, n)));
        }
        lines.extend(read_lines(path));
        let skip = lines.len().saturating_sub(query.lines);
        all.extend(lines.into_iter().skip(skip));
    }
    // The timestamp leads every line and sorts as text; a stable sort keeps an instance's
    // lines of one microsecond in order.
    all.sort_by(|a, b| timestamp(a).cmp(timestamp(b)));
    let skip = all.len().saturating_sub(query.lines);
    all.into_iter().skip(skip).collect()
}

fn timestamp(line: &[u8]) -> &[u8] {
    let end = line.iter().position(|b| *b == b' ').unwrap_or(line.len());
    &line[..end]
}

fn read_lines(path: &Path) -> Vec<Vec<u8>> {
    let Ok(bytes) = fs::read(path) else {
        return Vec::new();
    };
    bytes
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// `kiln logs --app -f`: prints the tail, then every new line as it is written, until the
/// output is closed. New instances (a scale up) and rotated files are picked up.
pub fn follow(dir: &Path, query: &LogQuery, out: &mut dyn Write) -> io::Result<()> {
    for line in tail(dir, query) {
        out.write_all(&line)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    // Where each file was read up to: (inode, offset).
    let mut read_to: BTreeMap<PathBuf, (u64, u64)> = BTreeMap::new();
    for path in instance_files(dir, query).into_values() {
        if let Ok(meta) = fs::metadata(&path) {
            read_to.insert(path, (meta.ino(), meta.len()));
        }
    }
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let mut batch: Vec<Vec<u8>> = Vec::new();
        for path in instance_files(dir, query).into_values() {
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            let (inode, offset) = read_to.get(&path).copied().unwrap_or((meta.ino(), 0));
            // A rotated file is a new inode: the rest of the old one is in `.1`, read it first.
            let offset = if inode != meta.ino() {
                let mut rest = read_from(&rotated(&path, 1), offset).0;
                batch.append(&mut rest);
                0
            } else if meta.len() < offset {
                0
            } else {
                offset
            };
            let (mut lines, end) = read_from(&path, offset);
            batch.append(&mut lines);
            read_to.insert(path, (meta.ino(), end));
        }
        batch.sort_by(|a, b| timestamp(a).cmp(timestamp(b)));
        for line in batch {
            out.write_all(&line)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }
}

/// The complete lines of `path` from `offset`, and where the last one ended.
fn read_from(path: &Path, offset: u64) -> (Vec<Vec<u8>>, u64) {
    let Ok(mut file) = File::open(path) else {
        return (Vec::new(), offset);
    };
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(offset)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return (Vec::new(), offset);
    }
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let lines = bytes[..complete]
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    (lines, offset + complete as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> InstanceName {
        InstanceName::parse(text).unwrap()
    }

    #[test]
    fn lines_are_timestamped_prefixed_masked_and_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AppLog::open(
            dir.path(),
            &name("web.1"),
            200,
            Redactor::new(&["hunter22".to_string()]),
        );
        log.line(Source::App, b"password is hunter22");
        log.note("started");
        let text = fs::read_to_string(dir.path().join("web.1.log")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].ends_with(" app[web.1]: password is ********"),
            "{text}"
        );
        assert!(lines[1].ends_with(" kiln[web.1]: started"), "{text}");
        assert!(chrono::DateTime::parse_from_rfc3339(timestamp_str(lines[0])).is_ok());
        for i in 0..20 {
            log.line(Source::App, format!("line {i}").as_bytes());
        }
        assert!(dir.path().join("web.1.log.1").is_file());
        assert!(dir.path().join("web.1.log.2").is_file());
        assert!(!dir.path().join("web.1.log.3").exists());
        assert!(fs::metadata(dir.path().join("web.1.log")).unwrap().len() <= 200);
        // The tail reads across the rotation, in order.
        let tail = tail(
            dir.path(),
            &LogQuery {
                kind: None,
                lines: 3,
            },
        );
        let tail: Vec<String> = tail
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        assert!(
            tail[0].ends_with("line 17") && tail[2].ends_with("line 19"),
            "{tail:?}"
        );
    }

    fn timestamp_str(line: &str) -> &str {
        line.split(' ').next().unwrap()
    }

    #[test]
    fn the_tail_merges_instances_by_time_and_filters_by_type() {
        let dir = tempfile::tempdir().unwrap();
        let mut web = AppLog::open(dir.path(), &name("web.1"), 1 << 20, Redactor::default());
        let mut worker = AppLog::open(dir.path(), &name("worker.1"), 1 << 20, Redactor::default());
        web.line(Source::App, b"one");
        std::thread::sleep(Duration::from_millis(2));
        worker.line(Source::App, b"two");
        std::thread::sleep(Duration::from_millis(2));
        web.line(Source::App, b"three");
        let all = tail(
            dir.path(),
            &LogQuery {
                kind: None,
                lines: 10,
            },
        );
        let words: Vec<&[u8]> = all.iter().map(|l| &l[l.len() - 3..]).collect();
        assert_eq!(words, [&b"one"[..], b"two", b"ree"]);
        let webs = tail(
            dir.path(),
            &LogQuery {
                kind: Some("web".into()),
                lines: 10,
            },
        );
        assert_eq!(webs.len(), 2);
    }
}
