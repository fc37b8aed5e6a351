//! Unpacks a release archive into `deploy/<release>` on a production node.
//!
//! This is production's security boundary: the archive comes from another machine and is
//! treated as hostile even after its checksum and signature were verified. Every entry is
//! validated before anything is written for it, files are written by this module (the tar
//! crate's own unpacking skips `..` entries silently, creates symlinks that point anywhere
//! and turns device nodes into regular files), and everything lands in a private temp dir
//! that becomes `dest` only once the whole archive has passed. A refused archive leaves
//! nothing behind.
//!
//! Where symlinks may point ([`LinkRules`]) is decided here once, and staging applies the
//! same rules to its release tree before baking it ([`crate::release::bake::check_promotable`]): a release
//! that staging publishes is one that production can unpack.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::mpsc::{self, Receiver};
use std::thread;

use nix::sys::stat::{Mode, UtimensatFlags, fchmod, futimens, utimensat};
use nix::sys::time::TimeSpec;
use tar::EntryType;

/// Decompressed bytes handed from the decompressor thread at once.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight between decompression and writing (4 MiB).
const DEPTH: usize = 16;
/// How much the tar crate may read between one entry's data and the next entry's data:
/// the next header plus its PAX and GNU long-name records, which the crate holds in memory.
/// Real ones are a few KiB; this bounds what a hostile archive can make us allocate.
const METADATA_BUDGET: u64 = 1 << 20;
/// Longest path or symlink target accepted, in bytes (Linux's PATH_MAX less the NUL).
pub const MAX_PATH: usize = 4095;
/// Symlinks followed while resolving one path before Linux gives up with ELOOP.
const MAX_HOPS: u32 = 40;
/// Zero padding tolerated after the end-of-archive marker (tar pads to its record size).
const TRAILER_BUDGET: u64 = 1 << 20;

/// Caps on what one archive may hold, checked before any data is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest total of the sizes declared by the archive's entries.
    pub max_bytes: u64,
    /// Largest number of entries.
    pub max_entries: u64,
}

impl Limits {
    /// node.yml's `limits`.
    pub fn for_node(config: &crate::config::node_config::NodeConfig) -> Limits {
        Limits {
            max_bytes: config.limits.archive_bytes,
            max_entries: config.limits.archive_entries,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct UnpackOptions<'a> {
    pub limits: Limits,
    /// Where the archive's symlinks may point.
    pub links: &'a LinkRules,
}

/// Where the symlinks of a release tree may point: the one rule set that staging checks
/// before it bakes and production applies while it unpacks.
///
/// A relative target must stay inside the release, resolved through the tree's own links.
/// An absolute target must be lexically below one of the project roots (the project's run/
/// and data/: links into data/ are how apps keep uploads across releases), or below one of
/// the system roots (node.yml `allowed_link_roots`, e.g. `/usr`, where a venv's
/// `bin/python3` points) but not inside the node root, which holds other projects, pillars
/// and the signing key. An absolute target with a `..` component is refused: the host's own
/// symlinks decide where `..` leads, so no lexical check could vouch for it. None of this
/// lets a release write outside itself: the unpacker never writes through a symlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRules {
    /// Each root as its components (`.` and `..` resolved); project and node roots also
    /// under their real names.
    project_roots: Vec<Vec<Vec<u8>>>,
    system_roots: Vec<Vec<Vec<u8>>>,
    node_roots: Vec<Vec<Vec<u8>>>,
    /// As node.yml lists them, for messages.
    system_shown: Vec<PathBuf>,
}

impl LinkRules {
    pub fn new(project_roots: Vec<PathBuf>, system_roots: Vec<PathBuf>, node_root: &Path) -> Self {
        LinkRules {
            project_roots: with_real_names(&project_roots),
            system_roots: system_roots.iter().map(|root| components(root)).collect(),
            // A node root reached through a symlink (`/srv -> /data/srv`) is off limits under
            // its real name too, and links into a data/ that is a symlink to another disk
            // are links into data/.
            node_roots: with_real_names(&[node_root.to_path_buf()]),
            system_shown: system_roots,
        }
    }

    /// The rules of `paths`' project on `node`: its run/ and data/, and node.yml's
    /// `allowed_link_roots`.
    pub fn for_project(
        node: &crate::config::project::Node,
        paths: &crate::config::layout::ProjectPaths,
    ) -> Self {
        LinkRules::new(
            vec![paths.run.clone(), paths.data.clone()],
            node.config.allowed_link_roots.0.clone(),
            &node.root,
        )
    }

    /// The system roots, for messages.
    pub fn system_roots(&self) -> &[PathBuf] {
        &self.system_shown
    }

    /// Judges the absolute path a link leads to (its target, or what is left of a chain of
    /// links once one of them is absolute).
    fn absolute(&self, abs: &[u8], target: &[u8]) -> Result<(), LinkRefusal> {
        let target = show(target);
        let mut parts: Vec<&[u8]> = Vec::new();
        for part in abs.split(|&b| b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => return Err(LinkRefusal::AbsoluteParent { target }),
                part => parts.push(part),
            }
        }
        let below = |root: &Vec<Vec<u8>>| {
            parts.len() >= root.len() && root.iter().zip(&parts).all(|(a, b)| a == b)
        };
        if self.project_roots.iter().any(below) {
            return Ok(());
        }
        if self.node_roots.iter().any(below) {
            return Err(LinkRefusal::IntoNodeRoot { target });
        }
        if self.system_roots.iter().any(below) {
            return Ok(());
        }
        Err(LinkRefusal::OutsideRoots { target })
    }
}

/// A root's components, with `.` and `..` resolved lexically: these are the node's own
/// paths (`--root ../node`), not an archive's.
fn components(root: &Path) -> Vec<Vec<u8>> {
    let mut parts: Vec<Vec<u8>> = Vec::new();
    for part in root.as_os_str().as_bytes().split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            part => parts.push(part.to_vec()),
        }
    }
    parts
}

/// Each root, and its real name where that differs (a symlink on the way to it).
fn with_real_names(roots: &[PathBuf]) -> Vec<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for root in roots {
        out.push(components(root));
        if let Ok(real) = fs::canonicalize(root) {
            let real = components(&real);
            if !out.contains(&real) {
                out.push(real);
            }
        }
    }
    out
}

/// Why a symlink makes a release tree unacceptable, to staging and production alike.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkRefusal {
    #[error("symlink to `{target}`, which leaves the release")]
    Escapes { target: String },
    #[error(
        "symlink to `{target}`, which leaves the release for a path outside the allowed link roots"
    )]
    OutsideRoots { target: String },
    #[error(
        "symlink to `{target}`, which leaves the release for an absolute path with a `..` component"
    )]
    AbsoluteParent { target: String },
    #[error("symlink to `{target}`, which leads into the node root")]
    IntoNodeRoot { target: String },
    #[error("symlink to `{target}` that does not resolve within {MAX_HOPS} links")]
    Loop { target: String },
}

/// The symlinks of one release tree, judged together: each target on its own as it is
/// added, then every chain through the tree's other links once all of them are known.
pub struct ReleaseLinks<'r> {
    rules: &'r LinkRules,
    /// Normalized relative path (components joined by `/`) -> target.
    links: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl<'r> ReleaseLinks<'r> {
    pub fn new(rules: &'r LinkRules) -> Self {
        ReleaseLinks {
            rules,
            links: BTreeMap::new(),
        }
    }

    /// Adds the link at `path` (relative to the release root, normalized) if its target is
    /// acceptable on its own: a relative one must stay inside the release when resolved
    /// lexically from the link's directory.
    pub fn add(&mut self, path: &[u8], target: &[u8]) -> Result<(), LinkRefusal> {
        if target.starts_with(b"/") {
            self.rules.absolute(target, target)?;
        } else {
            let mut stack: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
            stack.pop(); // the link itself
            for part in target.split(|&b| b == b'/') {
                match part {
                    b"" | b"." => {}
                    b".." => {
                        if stack.pop().is_none() {
                            return Err(LinkRefusal::Escapes {
                                target: show(target),
                            });
                        }
                    }
                    part => stack.push(part),
                }
            }
        }
        self.links.insert(path.to_vec(), target.to_vec());
        Ok(())
    }

    /// Resolves every link through the others; the first refused one (in path order) is
    /// returned with its path.
    pub fn check(&self) -> Result<(), (String, LinkRefusal)> {
        for (path, target) in &self.links {
            self.resolve(path, target).map_err(|r| (show(path), r))?;
        }
        Ok(())
    }

    /// Resolves a link the way the kernel will, following the tree's other links.
    ///
    /// The lexical check of each link is not enough on its own: with `s/up -> ..`, the
    /// target `s/up/../../x` stays inside lexically but leaves the release for real, and
    /// with `l -> /srv/p/data`, `l/../pillar` leaves the link root.
    fn resolve(&self, path: &[u8], target: &[u8]) -> Result<(), LinkRefusal> {
        let escapes = || LinkRefusal::Escapes {
            target: show(target),
        };
        // The directory reached so far, below the release root (components joined by
        // `/`; never through a symlink, as entries below symlinks are refused), and the
        // length of `dir` before each of its components, to step back on `..`.
        let mut dir: Vec<u8> = Vec::new();
        let mut lens: Vec<usize> = Vec::new();
        let step_in = |dir: &mut Vec<u8>, lens: &mut Vec<usize>, name: &[u8]| {
            lens.push(dir.len());
            if !dir.is_empty() {
                dir.push(b'/');
            }
            dir.extend_from_slice(name);
        };
        let parent = match path.iter().rposition(|&b| b == b'/') {
            Some(slash) => &path[..slash],
            None => &b""[..],
        };
        for part in parent.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
            step_in(&mut dir, &mut lens, part);
        }
        let mut todo: VecDeque<&[u8]> = VecDeque::new();
        let mut next: &[u8] = target;
        let mut hops = 0;
        'expand: loop {
            if next.starts_with(b"/") {
                // Outside the release the filesystem is not ours to see: judge the rest of
                // the path lexically, as for any absolute link.
                let mut abs = next.to_vec();
                for part in &todo {
                    abs.push(b'/');
                    abs.extend_from_slice(part);
                }
                return self.rules.absolute(&abs, target);
            }
            for part in next.split(|&b| b == b'/').rev() {
                todo.push_front(part);
            }
            while let Some(part) = todo.pop_front() {
                match part {
                    b"" | b"." => {}
                    b".." => match lens.pop() {
                        Some(len) => dir.truncate(len),
                        None => return Err(escapes()),
                    },
                    name => {
                        step_in(&mut dir, &mut lens, name);
                        if let Some(link) = self.links.get(&dir) {
                            if let Some(len) = lens.pop() {
                                dir.truncate(len);
                            }
                            hops += 1;
                            if hops > MAX_HOPS {
                                return Err(LinkRefusal::Loop {
                                    target: show(target),
                                });
                            }
                            next = link;
                            continue 'expand;
                        }
                    }
                }
            }
            return Ok(());
        }
    }
}

/// What [`unpack`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackInfo {
    /// Entries in the archive (files, directories, symlinks).
    pub entries: u64,
    /// Regular files among them.
    pub files: u64,
    /// Bytes of file data written.
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("cannot unpack into `{}`: it already exists", path.display())]
    DestExists { path: PathBuf },
    #[error("cannot read release archive `{}`: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("release archive `{}` is corrupt{}: {source}", archive.display(), after_entry(after))]
    Corrupt {
        archive: PathBuf,
        /// The last entry read before the damage, if any.
        after: Option<String>,
        source: io::Error,
    },
    #[error("release archive `{}` refused: entry `{entry}` {reason}", archive.display())]
    Refused {
        archive: PathBuf,
        entry: String,
        reason: Refusal,
    },
    #[error("cannot write `{}` while unpacking: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl From<UnpackError> for crate::error::Error {
    fn from(e: UnpackError) -> Self {
        crate::error::Error::Unpack(Box::new(e))
    }
}

fn after_entry(after: &Option<String>) -> String {
    match after {
        Some(name) => format!(" after entry `{name}`"),
        None => String::new(),
    }
}

/// Why an entry made the whole archive unacceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("has an empty path")]
    EmptyPath,
    #[error("has a NUL byte in its path")]
    NulInPath,
    #[error("has a path longer than {max} bytes")]
    PathTooLong { max: usize },
    #[error("has an absolute path")]
    AbsolutePath,
    #[error("has a `..` component")]
    ParentComponent,
    #[error("is a symlink with an empty or invalid target")]
    BadLinkTarget,
    #[error("is a {0}")]
    Link(#[from] LinkRefusal),
    #[error("is a hard link, which kiln never bakes")]
    HardLink,
    #[error("is a {kind}; only files, directories and symlinks are allowed")]
    ForbiddenType { kind: String },
    #[error("would be written through the symlink `{link}`")]
    ThroughSymlink { link: String },
    #[error("would be written below the file `{file}`")]
    BelowFile { file: String },
    #[error("appears twice")]
    Duplicate,
    #[error("would replace a directory that earlier entries were written into")]
    ReplacesDirectory,
    #[error("goes past the limit of {max} entries")]
    TooManyEntries { max: u64 },
    #[error("brings the declared size past the limit of {max} bytes")]
    TooManyBytes { max: u64 },
    #[error("declares {declared} bytes but the archive holds only {actual}")]
    Truncated { declared: u64, actual: u64 },
    #[error("is preceded by more than {max} bytes of headers")]
    MetadataTooLarge { max: u64 },
}

/// Unpacks `archive` (a `.tar.zst`) into `dest`, which must not exist.
///
/// Either the whole archive passes and `dest` appears (renamed from a private temp dir
/// next to it), or nothing is left behind. Modes are applied exactly (without setuid,
/// setgid and sticky bits), mtimes with nanoseconds; owners in the archive are ignored and
/// directories missing from it are created 0755.
pub fn unpack(
    archive: &Path,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackInfo, UnpackError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| UnpackError::Io { path, source }
    };
    match fs::symlink_metadata(dest) {
        Ok(_) => {
            return Err(UnpackError::DestExists {
                path: dest.to_path_buf(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(dest)(e)),
    }
    let Some(name) = dest.file_name() else {
        return Err(io_err(dest)(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the destination has no file name",
        )));
    };
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let file = File::open(archive).map_err(|source| UnpackError::Open {
        path: archive.to_path_buf(),
        source,
    })?;
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(".unpack-");
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir_in(parent)
        .map_err(io_err(parent))?;

    let (rx, decompressor) = spawn_decompressor(file);
    let mut unpacker = Unpacker {
        archive,
        root: tmp.path(),
        opts,
        seen: HashMap::new(),
        links: ReleaseLinks::new(opts.links),
        dirs: Vec::new(),
        root_meta: None,
        declared: 0,
        data_end: 0,
        last: None,
        info: UnpackInfo {
            entries: 0,
            files: 0,
            bytes: 0,
        },
        buf: vec![0; CHUNK],
    };
    let result = unpacker.run(rx);
    // The receiver is gone by now, so a decompressor still sending has stopped too.
    if let Err(panic) = decompressor.join() {
        std::panic::resume_unwind(panic);
    }
    result?;
    let info = unpacker.info;
    let finished = unpacker.finish();
    if let Err(e) = finished {
        make_removable(tmp.path());
        return Err(e);
    }

    if let Err(e) = nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        tmp.path(),
        nix::fcntl::AT_FDCWD,
        dest,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    ) {
        make_removable(tmp.path());
        if e == nix::errno::Errno::EEXIST {
            return Err(UnpackError::DestExists {
                path: dest.to_path_buf(),
            });
        }
        return Err(io_err(dest)(e.into()));
    }
    // Renamed away: nothing left for the guard to clean up.
    let _ = tmp.keep();
    Ok(info)
}

/// What an earlier entry put at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Dir,
    /// Created because an entry below it needed it; the archive may still describe it.
    /// Holds its index in `Unpacker::dirs`.
    ImplicitDir(usize),
    File,
    Symlink,
}

struct DirMeta {
    path: PathBuf,
    depth: usize,
    mode: u32,
    mtime: Option<TimeSpec>,
}

struct Unpacker<'a> {
    archive: &'a Path,
    root: &'a Path,
    opts: &'a UnpackOptions<'a>,
    /// Normalized relative path (components joined by `/`) of every entry so far.
    seen: HashMap<Vec<u8>, Seen>,
    /// Every symlink and its target, for the final check of where chains of links lead.
    links: ReleaseLinks<'a>,
    /// Modes and mtimes are applied to directories only after their content is written.
    dirs: Vec<DirMeta>,
    /// Mode and mtime of a `./` entry, which describes the release root itself.
    root_meta: Option<(u32, TimeSpec)>,
    declared: u64,
    /// Where the data of the last entry ends in the tar stream.
    data_end: u64,
    /// The last entry seen, to locate damage in the stream.
    last: Option<String>,
    info: UnpackInfo,
    buf: Vec<u8>,
}

type Entry<'r> = tar::Entry<'r, StreamReader>;

impl Unpacker<'_> {
    fn run(&mut self, rx: Receiver<io::Result<Vec<u8>>>) -> Result<(), UnpackError> {
        let budget = Rc::new(Budget {
            read: Cell::new(0),
            allowed: Cell::new(METADATA_BUDGET),
            exceeded: Cell::new(false),
        });
        let stream = StreamReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
            budget: Rc::clone(&budget),
        };
        let mut tar = tar::Archive::new(stream);
        let mut entries = tar.entries().map_err(|e| self.corrupt(e))?;
        loop {
            let entry = match entries.next() {
                None => break,
                Some(Ok(entry)) => entry,
                Some(Err(_)) if budget.exceeded.get() => {
                    // The entry the headers describe never arrived: name its predecessor.
                    let entry = match &self.last {
                        Some(last) => format!("after {last}"),
                        None => "at the start of the archive".to_owned(),
                    };
                    return Err(self.refuse(
                        entry,
                        Refusal::MetadataTooLarge {
                            max: METADATA_BUDGET,
                        },
                    ));
                }
                Some(Err(e)) => return Err(self.corrupt(e)),
            };
            self.entry(entry, &budget)?;
        }
        // The crate also stops at a clean end of stream; a complete archive has a zero
        // block there, which tells a truncated stream from a finished one.
        if budget.read.get() < self.data_end + 512 {
            return Err(self.corrupt(io::Error::other(
                "the archive ends without its end-of-archive marker",
            )));
        }
        self.trailer(tar.into_inner(), &budget)?;
        self.links
            .check()
            .map_err(|(path, r)| self.refuse(path, r.into()))
    }

    /// Reads what follows the end-of-archive marker: only zero padding may follow. Reading
    /// to the end also makes zstd verify the frame's checksum.
    fn trailer(&self, mut stream: StreamReader, budget: &Budget) -> Result<(), UnpackError> {
        budget
            .allowed
            .set(budget.read.get().saturating_add(TRAILER_BUDGET));
        let mut buf = [0u8; 8192];
        loop {
            let n = match stream.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(_) if budget.exceeded.get() => {
                    return Err(self.corrupt(io::Error::other(
                        "too much padding after the end of the archive",
                    )));
                }
                Err(e) => return Err(self.corrupt(e)),
            };
            if buf[..n].iter().any(|&b| b != 0) {
                return Err(self.corrupt(io::Error::other("data after the end of the archive")));
            }
        }
    }

    fn corrupt(&self, source: io::Error) -> UnpackError {
        UnpackError::Corrupt {
            archive: self.archive.to_path_buf(),
            after: self.last.clone(),
            source,
        }
    }

    fn refuse(&self, entry: String, reason: Refusal) -> UnpackError {
        UnpackError::Refused {
            archive: self.archive.to_path_buf(),
            entry,
            reason,
        }
    }

    fn io(&self, rel: &[u8]) -> impl FnOnce(io::Error) -> UnpackError + use<> {
        let path = self.root.join(OsStr::from_bytes(rel));
        move |source| UnpackError::Io { path, source }
    }

    fn entry(&mut self, mut entry: Entry, budget: &Budget) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let name = show(&raw);
        self.last = Some(name.clone());
        let limits = self.opts.limits;

        self.info.entries += 1;
        if self.info.entries > limits.max_entries {
            return Err(self.refuse(
                name,
                Refusal::TooManyEntries {
                    max: limits.max_entries,
                },
            ));
        }
        let size = entry.size();
        self.declared = self.declared.saturating_add(size);
        if self.declared > limits.max_bytes {
            return Err(self.refuse(
                name,
                Refusal::TooManyBytes {
                    max: limits.max_bytes,
                },
            ));
        }
        // The entry passed the limits: its data, and the next entry's headers, may be read.
        let data_end = entry
            .raw_file_position()
            .saturating_add(size.div_ceil(512).saturating_mul(512));
        budget.allowed.set(data_end.saturating_add(METADATA_BUDGET));
        self.data_end = data_end;

        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            // Global PAX defaults (e.g. from `git archive`) name no file; the crate skips them.
            return Ok(());
        }
        let path = normalize(&raw).map_err(|r| self.refuse(name.clone(), r))?;
        let kind = match kind {
            EntryType::Regular => Seen::File,
            EntryType::Directory => Seen::Dir,
            EntryType::Symlink => Seen::Symlink,
            EntryType::Link => return Err(self.refuse(name, Refusal::HardLink)),
            other => {
                let kind = match other {
                    EntryType::Char => "character device".to_owned(),
                    EntryType::Block => "block device".to_owned(),
                    EntryType::Fifo => "fifo".to_owned(),
                    other => format!("entry of type `{}`", other.as_byte().escape_ascii()),
                };
                return Err(self.refuse(name, Refusal::ForbiddenType { kind }));
            }
        };
        let mode = entry
            .header()
            .mode()
            .map_err(|e| self.corrupt(e))?
            // No setuid, setgid or sticky bits from an archive.
            & 0o777;
        let mtime = mtime(&mut entry).map_err(|e| self.corrupt(e))?;

        if path.is_empty() {
            // `./`: the release root itself, as `tar -C tree .` writes it.
            if kind != Seen::Dir {
                return Err(self.refuse(name, Refusal::ReplacesDirectory));
            }
            if self.root_meta.is_some() {
                return Err(self.refuse(name, Refusal::Duplicate));
            }
            self.root_meta = Some((mode, mtime));
            return Ok(());
        }
        self.parents(&path, &name)?;
        match self.seen.get(&path) {
            None => {}
            Some(&Seen::ImplicitDir(index)) if kind == Seen::Dir => {
                self.seen.insert(path, Seen::Dir);
                let dir = &mut self.dirs[index];
                dir.mode = mode;
                dir.mtime = Some(mtime);
                return Ok(());
            }
            Some(Seen::ImplicitDir(_)) => {
                return Err(self.refuse(name, Refusal::ReplacesDirectory));
            }
            Some(_) => return Err(self.refuse(name, Refusal::Duplicate)),
        }
        let abs = self.root.join(OsStr::from_bytes(&path));
        match kind {
            Seen::Dir => {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&abs)
                    .map_err(self.io(&path))?;
                self.dirs.push(DirMeta {
                    path: abs,
                    depth: depth(&path),
                    mode,
                    mtime: Some(mtime),
                });
            }
            Seen::Symlink => {
                let target = match entry.link_name_bytes() {
                    Some(t) if !t.is_empty() && t.len() <= MAX_PATH && !t.contains(&0) => {
                        t.into_owned()
                    }
                    _ => return Err(self.refuse(name, Refusal::BadLinkTarget)),
                };
                self.links
                    .add(&path, &target)
                    .map_err(|r| self.refuse(name.clone(), r.into()))?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &abs)
                    .map_err(self.io(&path))?;
                utimensat(
                    nix::fcntl::AT_FDCWD,
                    &abs,
                    &mtime,
                    &mtime,
                    UtimensatFlags::NoFollowSymlink,
                )
                .map_err(|e| self.io(&path)(e.into()))?;
            }
            Seen::File => {
                let written = self.write_file(&mut entry, &abs, &path, mode, mtime)?;
                if written != size {
                    return Err(self.refuse(
                        name,
                        Refusal::Truncated {
                            declared: size,
                            actual: written,
                        },
                    ));
                }
                self.info.files += 1;
                self.info.bytes += written;
            }
            Seen::ImplicitDir(_) => {}
        }
        self.seen.insert(path, kind);
        Ok(())
    }

    /// Checks every parent of `path` against earlier entries, creating missing ones.
    fn parents(&mut self, path: &[u8], name: &str) -> Result<(), UnpackError> {
        let slashes: Vec<usize> = (0..path.len()).filter(|&i| path[i] == b'/').collect();
        // Search from the deepest parent up: once a known directory is found, its own
        // parents were checked when it was made, and a directory is never replaced.
        let mut missing = 0;
        for (k, &i) in slashes.iter().enumerate().rev() {
            let parent = &path[..i];
            match self.seen.get(parent) {
                None => continue,
                Some(Seen::Dir | Seen::ImplicitDir(_)) => {
                    missing = k + 1;
                    break;
                }
                Some(Seen::Symlink) => {
                    return Err(self.refuse(
                        name.to_owned(),
                        Refusal::ThroughSymlink { link: show(parent) },
                    ));
                }
                Some(Seen::File) => {
                    return Err(
                        self.refuse(name.to_owned(), Refusal::BelowFile { file: show(parent) })
                    );
                }
            }
        }
        for &i in &slashes[missing..] {
            let parent = &path[..i];
            let abs = self.root.join(OsStr::from_bytes(parent));
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&abs)
                .map_err(self.io(parent))?;
            self.seen
                .insert(parent.to_vec(), Seen::ImplicitDir(self.dirs.len()));
            self.dirs.push(DirMeta {
                path: abs,
                depth: depth(parent),
                mode: 0o755,
                mtime: None,
            });
        }
        Ok(())
    }

    /// Streams one file's data to disk; returns how many bytes the archive held for it.
    fn write_file(
        &mut self,
        entry: &mut Entry,
        abs: &Path,
        rel: &[u8],
        mode: u32,
        mtime: TimeSpec,
    ) -> Result<u64, UnpackError> {
        // create_new + O_NOFOLLOW: never open something that is already there.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(abs)
            .map_err(self.io(rel))?;
        let mut written = 0u64;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.corrupt(e)),
            };
            file.write_all(&self.buf[..n]).map_err(self.io(rel))?;
            written += n as u64;
        }
        // Explicit, so that the umask plays no part in the result.
        fchmod(&file, Mode::from_bits_truncate(mode)).map_err(|e| self.io(rel)(e.into()))?;
        futimens(&file, &mtime, &mtime).map_err(|e| self.io(rel)(e.into()))?;
        Ok(written)
    }

    /// Applies directory modes and mtimes, deepest first, so that writing into a directory
    /// (or making a parent read-only) cannot disturb what was already set.
    fn finish(mut self) -> Result<(), UnpackError> {
        self.dirs.sort_by_key(|d| std::cmp::Reverse(d.depth));
        for dir in &self.dirs {
            let io_err = |source| UnpackError::Io {
                path: dir.path.clone(),
                source,
            };
            fs::set_permissions(&dir.path, fs::Permissions::from_mode(dir.mode)).map_err(io_err)?;
            if let Some(mtime) = dir.mtime {
                utimensat(
                    nix::fcntl::AT_FDCWD,
                    &dir.path,
                    &mtime,
                    &mtime,
                    UtimensatFlags::NoFollowSymlink,
                )
                .map_err(|e| io_err(e.into()))?;
            }
        }
        let root_err = |source| UnpackError::Io {
            path: self.root.to_path_buf(),
            source,
        };
        let (mode, mtime) = match self.root_meta {
            Some((mode, mtime)) => (mode, Some(mtime)),
            None => (0o755, None),
        };
        fs::set_permissions(self.root, fs::Permissions::from_mode(mode)).map_err(root_err)?;
        if let Some(mtime) = mtime {
            utimensat(
                nix::fcntl::AT_FDCWD,
                self.root,
                &mtime,
                &mtime,
                UtimensatFlags::NoFollowSymlink,
            )
            .map_err(|e| root_err(e.into()))?;
        }
        Ok(())
    }
}

/// Validates an entry's path and returns it normalized: components joined by `/`, without
/// `.` components or empty ones. Empty means the release root (`./`).
fn normalize(raw: &[u8]) -> Result<Vec<u8>, Refusal> {
    if raw.is_empty() {
        return Err(Refusal::EmptyPath);
    }
    if raw.contains(&0) {
        return Err(Refusal::NulInPath);
    }
    if raw.starts_with(b"/") {
        return Err(Refusal::AbsolutePath);
    }
    // Longer paths cannot be opened anyway, and bound the work spent per entry.
    if raw.len() > MAX_PATH {
        return Err(Refusal::PathTooLong { max: MAX_PATH });
    }
    let mut out = Vec::with_capacity(raw.len());
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(Refusal::ParentComponent),
            part => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(part);
            }
        }
    }
    Ok(out)
}

fn depth(path: &[u8]) -> usize {
    path.iter().filter(|&&b| b == b'/').count()
}

/// The entry's mtime: the PAX record has nanoseconds, the header only seconds.
fn mtime(entry: &mut Entry) -> io::Result<TimeSpec> {
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            if ext.key_bytes() == b"mtime"
                && let Some(t) = parse_pax_time(ext.value_bytes())
            {
                return Ok(t);
            }
        }
    }
    let secs = entry.header().mtime()?;
    Ok(TimeSpec::new(i64::try_from(secs).unwrap_or(i64::MAX), 0))
}

/// Parses `[-]sec[.fraction]`; digits past nanoseconds are dropped.
fn parse_pax_time(value: &[u8]) -> Option<TimeSpec> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: i64 = 0;
    for i in 0..9 {
        let digit = frac.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
        nanos = nanos * 10 + digit;
    }
    Some(if !negative {
        TimeSpec::new(secs, nanos)
    } else if nanos == 0 {
        TimeSpec::new(-secs, 0)
    } else {
        TimeSpec::new(-secs - 1, 1_000_000_000 - nanos)
    })
}

/// A path for messages: as is when UTF-8, escaped otherwise.
pub(crate) fn show(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => bytes.escape_ascii().to_string(),
    }
}

/// Best effort before cleanup: directories already set read-only could not be emptied.
fn make_removable(root: &Path) {
    for entry in walkdir::WalkDir::new(root).into_iter().flatten() {
        if entry.file_type().is_dir() {
            let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o700));
        }
    }
}

/// Decompresses on its own thread so that zstd and the file writes overlap.
fn spawn_decompressor(file: File) -> (Receiver<io::Result<Vec<u8>>>, thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::sync_channel(DEPTH);
    let handle = thread::spawn(move || {
        let mut decoder = match zstd::Decoder::new(file) {
            Ok(d) => d,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        loop {
            let mut chunk = vec![0; CHUNK];
            let mut got = 0;
            while got < CHUNK {
                match decoder.read(&mut chunk[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
            if got == 0 {
                return;
            }
            chunk.truncate(got);
            // A send fails only when the unpacker stopped; then the rest is not needed.
            if tx.send(Ok(chunk)).is_err() {
                return;
            }
        }
    });
    (rx, handle)
}

/// How far the tar parser may read; see [`METADATA_BUDGET`].
struct Budget {
    read: Cell<u64>,
    allowed: Cell<u64>,
    exceeded: Cell<bool>,
}

/// The decompressed stream, as received from the decompressor thread.
struct StreamReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
    budget: Rc<Budget>,
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The decompressor finished: end of stream.
                Err(_) => return Ok(0),
            }
        }
        let budget = &self.budget;
        let room = budget.allowed.get().saturating_sub(budget.read.get());
        if room == 0 {
            budget.exceeded.set(true);
            return Err(io::Error::other("headers exceed the metadata budget"));
        }
        let n = buf
            .len()
            .min(self.chunk.len() - self.pos)
            .min(usize::try_from(room).unwrap_or(usize::MAX));
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        budget.read.set(budget.read.get() + n as u64);
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is a test failure
mod tests {
    use super::*;
    use tar::Header;

    /// A tar stream written header by header, so that it can hold what the tar crate's
    /// builder refuses to write (`..`, absolute paths, devices).
    #[derive(Default)]
    struct Raw(Vec<u8>);

    impl Raw {
        /// `declared` may differ from `data.len()`, to forge lying headers.
        fn push(&mut self, name: &[u8], kind: u8, link: &[u8], data: &[u8], declared: u64) {
            let mut header = Header::new_gnu();
            let old = header.as_old_mut();
            old.name[..name.len()].copy_from_slice(name);
            old.linkname[..link.len()].copy_from_slice(link);
            header.set_entry_type(EntryType::new(kind));
            header.set_size(declared);
            header.set_mode(0o644);
            header.set_mtime(1_600_000_000);
            header.set_cksum();
            self.0.extend_from_slice(header.as_bytes());
            self.0.extend_from_slice(data);
            self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        }

        fn file(&mut self, name: &[u8], data: &[u8]) {
            self.push(name, b'0', b"", data, data.len() as u64);
        }

        fn dir(&mut self, name: &[u8]) {
            self.push(name, b'5', b"", b"", 0);
        }

        fn symlink(&mut self, name: &[u8], target: &[u8]) {
            self.push(name, b'2', target, b"", 0);
        }

        /// A GNU long-name record naming the next entry.
        fn long_name(&mut self, name: &[u8]) {
            let mut data = name.to_vec();
            data.push(0);
            self.push(b"././@LongLink", b'L', b"", &data, data.len() as u64);
        }

        fn zst(&self) -> Vec<u8> {
            let mut tar = self.0.clone();
            tar.extend_from_slice(&[0; 1024]);
            zstd::encode_all(&tar[..], 3).unwrap()
        }
    }

    /// A throwaway node: the archive, the dir `dest` goes into, and the places a hostile
    /// archive would like to reach.
    struct Env {
        _tmp: tempfile::TempDir,
        archive: PathBuf,
        deploy: PathBuf,
        dest: PathBuf,
        /// Never a link root: nothing may ever appear here.
        outside: PathBuf,
        /// A link root (like the project's data/).
        data: PathBuf,
    }

    impl Env {
        fn new() -> Env {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path().to_path_buf();
            for dir in ["deploy", "outside", "data"] {
                fs::create_dir(root.join(dir)).unwrap();
            }
            Env {
                archive: root.join("release.tar.zst"),
                deploy: root.join("deploy"),
                dest: root.join("deploy/r1"),
                outside: root.join("outside"),
                data: root.join("data"),
                _tmp: tmp,
            }
        }

        fn unpack(&self, raw: &Raw, limits: Limits) -> Result<UnpackInfo, UnpackError> {
            fs::write(&self.archive, raw.zst()).unwrap();
            let opts = UnpackOptions {
                limits,
                links: &self.rules(),
            };
            unpack(&self.archive, &self.dest, &opts)
        }

        /// data/ is the only link root; the test dir plays the node root.
        fn rules(&self) -> LinkRules {
            LinkRules::new(vec![self.data.clone()], Vec::new(), self._tmp.path())
        }

        fn path_bytes(path: &Path) -> &[u8] {
            path.as_os_str().as_bytes()
        }
    }

    const ROOMY: Limits = Limits {
        max_bytes: 1 << 30,
        max_entries: 1000,
    };

    fn names(dir: &Path) -> Vec<OsString> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    }

    use Expect::{Corrupt, Refused};

    enum Expect {
        /// Refused, naming this entry, for a reason the function accepts.
        Refused(&'static str, fn(&Refusal) -> bool),
        /// Rejected as a damaged stream, after this entry.
        Corrupt(&'static str),
    }

    struct Case {
        name: &'static str,
        build: fn(&Env, &mut Raw),
        limits: Limits,
        expect: Expect,
    }

    /// Unpacks a hostile archive and checks that it was refused whole: the error names the
    /// entry, `dest` does not exist, no temp dir is left, and nothing was written elsewhere.
    fn check(case: Case) {
        let env = Env::new();
        let mut raw = Raw::default();
        (case.build)(&env, &mut raw);
        let env = Env::new();
        let mut raw = Raw::default();
        (case.build)(&env, &mut raw);
        let err = match env.unpack(&raw, case.limits) {
            Ok(info) => panic!("{}: accepted ({info:?})", case.name),
            Err(e) => e,
        };
        match (&case.expect, &err) {
            (Refused(want, reason_ok), UnpackError::Refused { entry, reason, .. }) => {
                assert!(
                    entry.starts_with(want),
                    "{}: names `{entry}`, not `{want}`",
                    case.name
                );
                assert!(reason_ok(reason), "{}: wrong reason: {err}", case.name);
                assert!(
                    err.to_string().contains(&format!("entry `{entry}`")),
                    "{}: message does not name the entry: {err}",
                    case.name
                );
            }
            (Corrupt(want), UnpackError::Corrupt { after, .. }) => {
                assert_eq!(after.as_deref(), Some(*want), "{}: {err}", case.name);
                assert!(err.to_string().contains(want), "{}: {err}", case.name);
            }
            _ => panic!("{}: unexpected error: {err:?}", case.name),
        }
        assert!(!env.dest.exists(), "{}: dest was created", case.name);
        assert!(
            names(&env.deploy).is_empty(),
            "{}: left {:?} next to dest",
            case.name,
            names(&env.deploy)
        );
        assert!(
            names(&env.outside).is_empty(),
            "{}: wrote outside",
            case.name
        );
        assert!(
            names(&env.data).is_empty(),
            "{}: wrote into data",
            case.name
        );
        assert!(!Path::new("/kiln-test-evil").exists(), "{}", case.name);
    }

    #[test]
    fn refuses_absolute_path() {
        check(Case {
            name: "absolute path",
            build: |_, r| r.file(b"/kiln-test-evil/x", b"evil"),
            limits: ROOMY,
            expect: Refused("/kiln-test-evil/x", |r| *r == Refusal::AbsolutePath),
        });
    }

    #[test]
    fn refuses_leading_dotdot() {
        check(Case {
            name: "leading ..",
            build: |_, r| {
                r.file(b"ok", b"fine");
                r.file(b"../x", b"evil");
            },
            limits: ROOMY,
            expect: Refused("../x", |r| *r == Refusal::ParentComponent),
        });
    }

    #[test]
    fn refuses_inner_dotdot_climbing_out() {
        check(Case {
            name: "inner .. climbing out",
            build: |_, r| r.file(b"a/../../x", b"evil"),
            limits: ROOMY,
            expect: Refused("a/../../x", |r| *r == Refusal::ParentComponent),
        });
    }

    #[test]
    fn refuses_dotdot_hidden_in_a_gnu_long_name() {
        check(Case {
            name: ".. hidden in a GNU long name",
            build: |_, r| {
                r.long_name(format!("../{}", "x".repeat(120)).as_bytes());
                r.file(b"harmless", b"evil");
            },
            limits: ROOMY,
            expect: Refused("../xxxx", |r| *r == Refusal::ParentComponent),
        });
    }

    #[test]
    fn refuses_empty_path() {
        check(Case {
            name: "empty path",
            build: |_, r| r.file(b"", b"evil"),
            limits: ROOMY,
            expect: Refused("", |r| *r == Refusal::EmptyPath),
        });
    }

    #[test]
    fn refuses_symlink_to_etc() {
        check(Case {
            name: "symlink to /etc",
            build: |_, r| r.symlink(b"etc", b"/etc"),
            limits: ROOMY,
            expect: Refused(
                "etc",
                |r| matches!(r, Refusal::Link(LinkRefusal::OutsideRoots { target }) if target == "/etc"),
            ),
        });
    }

    #[test]
    fn refuses_absolute_symlink_climbing_out_of_a_link_root() {
        check(Case {
            name: "absolute symlink climbing out of a link root",
            build: |env, r| {
                let mut target = Env::path_bytes(&env.data).to_vec();
                target.extend_from_slice(b"/../outside");
                r.symlink(b"sneaky", &target);
            },
            limits: ROOMY,
            expect: Refused("sneaky", |r| {
                matches!(r, Refusal::Link(LinkRefusal::AbsoluteParent { .. }))
            }),
        });
    }

    #[test]
    fn refuses_relative_symlink_escaping() {
        check(Case {
            name: "relative symlink escaping",
            build: |_, r| {
                r.dir(b"sub");
                r.symlink(b"sub/etc", b"../../etc");
            },
            limits: ROOMY,
            expect: Refused(
                "sub/etc",
                |r| matches!(r, Refusal::Link(LinkRefusal::Escapes { target }) if target == "../../etc"),
            ),
        });
    }

    #[test]
    fn refuses_hard_link() {
        check(Case {
            name: "hard link",
            build: |_, r| {
                r.file(b"a", b"data");
                r.push(b"b", b'1', b"a", b"", 0);
            },
            limits: ROOMY,
            expect: Refused("b", |r| *r == Refusal::HardLink),
        });
    }

    #[test]
    fn refuses_char_device() {
        check(Case {
            name: "char device",
            build: |_, r| r.push(b"null", b'3', b"", b"", 0),
            limits: ROOMY,
            expect: Refused(
                "null",
                |r| matches!(r, Refusal::ForbiddenType { kind } if kind == "character device"),
            ),
        });
    }

    #[test]
    fn refuses_block_device() {
        check(Case {
            name: "block device",
            build: |_, r| r.push(b"sda", b'4', b"", b"", 0),
            limits: ROOMY,
            expect: Refused(
                "sda",
                |r| matches!(r, Refusal::ForbiddenType { kind } if kind == "block device"),
            ),
        });
    }

    #[test]
    fn refuses_fifo() {
        check(Case {
            name: "fifo",
            build: |_, r| r.push(b"pipe", b'6', b"", b"", 0),
            limits: ROOMY,
            expect: Refused(
                "pipe",
                |r| matches!(r, Refusal::ForbiddenType { kind } if kind == "fifo"),
            ),
        });
    }

    #[test]
    fn refuses_unknown_type() {
        check(Case {
            name: "unknown type",
            build: |_, r| r.push(b"contig", b'7', b"", b"", 0),
            limits: ROOMY,
            expect: Refused("contig", |r| matches!(r, Refusal::ForbiddenType { .. })),
        });
    }

    #[test]
    fn refuses_write_through_a_symlink_to_the_release_root() {
        check(Case {
            name: "write through a symlink to the release root",
            build: |_, r| {
                r.symlink(b"a", b".");
                r.file(b"a/evil", b"evil");
            },
            limits: ROOMY,
            expect: Refused(
                "a/evil",
                |r| matches!(r, Refusal::ThroughSymlink { link } if link == "a"),
            ),
        });
    }

    #[test]
    fn refuses_write_through_an_allowed_symlink_into_a_link_root() {
        check(Case {
            name: "write through an allowed symlink into a link root",
            build: |env, r| {
                r.symlink(b"a", Env::path_bytes(&env.data));
                r.file(b"a/evil", b"evil");
            },
            limits: ROOMY,
            expect: Refused(
                "a/evil",
                |r| matches!(r, Refusal::ThroughSymlink { link } if link == "a"),
            ),
        });
    }

    #[test]
    fn refuses_duplicate_entry_spelled_differently() {
        check(Case {
            name: "duplicate entry, spelled differently",
            build: |_, r| {
                r.file(b"x", b"first");
                r.file(b"./x", b"second");
            },
            limits: ROOMY,
            expect: Refused("./x", |r| *r == Refusal::Duplicate),
        });
    }

    #[test]
    fn refuses_file_replacing_a_directory_made_for_earlier_entries() {
        check(Case {
            name: "file replacing a directory made for earlier entries",
            build: |_, r| {
                r.file(b"d/f", b"data");
                r.file(b"d", b"evil");
            },
            limits: ROOMY,
            expect: Refused("d", |r| *r == Refusal::ReplacesDirectory),
        });
    }

    #[test]
    fn refuses_file_under_a_file() {
        check(Case {
            name: "file under a file",
            build: |_, r| {
                r.file(b"f", b"data");
                r.file(b"f/g", b"evil");
            },
            limits: ROOMY,
            expect: Refused(
                "f/g",
                |r| matches!(r, Refusal::BelowFile { file } if file == "f"),
            ),
        });
    }

    #[test]
    fn refuses_too_many_entries() {
        check(Case {
            name: "too many entries",
            build: |_, r| {
                for name in ["a", "b", "c", "d"] {
                    r.file(name.as_bytes(), b"x");
                }
            },
            limits: Limits {
                max_bytes: 1 << 20,
                max_entries: 3,
            },
            expect: Refused("d", |r| *r == Refusal::TooManyEntries { max: 3 }),
        });
    }

    #[test]
    fn refuses_too_many_bytes() {
        check(Case {
            name: "too many bytes",
            build: |_, r| {
                r.file(b"a", &[b'a'; 60]);
                r.file(b"b", &[b'b'; 60]);
            },
            limits: Limits {
                max_bytes: 100,
                max_entries: 1000,
            },
            expect: Refused("b", |r| *r == Refusal::TooManyBytes { max: 100 }),
        });
    }

    #[test]
    fn refuses_declared_size_past_the_limit_data_never_sent() {
        check(Case {
            name: "declared size past the limit, data never sent",
            build: |_, r| r.push(b"huge", b'0', b"", b"", 1 << 40),
            limits: ROOMY,
            expect: Refused("huge", |r| matches!(r, Refusal::TooManyBytes { .. })),
        });
    }

    #[test]
    fn refuses_data_longer_than_declared() {
        check(Case {
            name: "data longer than declared",
            build: |_, r| r.push(b"liar", b'0', b"", &[b'A'; 1000], 10),
            limits: ROOMY,
            expect: Corrupt("liar"),
        });
    }

    #[test]
    fn refuses_data_shorter_than_declared_truncated_archive() {
        check(Case {
            name: "data shorter than declared (truncated archive)",
            build: |_, r| {
                r.push(b"short", b'0', b"", &[b'A'; 100], 5000);
            },
            limits: ROOMY,
            expect: Refused("short", |r| {
                matches!(r, Refusal::Truncated { declared: 5000, .. })
            }),
        });
    }

    #[test]
    fn refuses_oversized_pax_header() {
        check(Case {
            name: "oversized PAX header",
            build: |_, r| {
                let big = vec![b'a'; 2 << 20];
                r.push(b"pax", b'x', b"", &big, big.len() as u64);
                r.file(b"f", b"data");
            },
            limits: ROOMY,
            expect: Refused("at the start of the archive", |r| {
                matches!(r, Refusal::MetadataTooLarge { .. })
            }),
        });
    }

    #[test]
    fn refuses_garbage_after_the_end_of_the_archive() {
        check(Case {
            name: "garbage after the end of the archive",
            build: |_, r| {
                r.file(b"f", b"data");
                r.0.extend_from_slice(&[0; 1024]);
                r.0.extend_from_slice(b"trailing junk");
            },
            limits: ROOMY,
            expect: Corrupt("f"),
        });
    }

    #[test]
    fn refuses_symlink_escaping_through_another_symlink() {
        check(Case {
            name: "symlink escaping through another symlink",
            // Lexically `x` ends at `outside` inside the release; really `s/up` is the
            // root, so `..` twice reaches the test dir, whose `outside` must stay empty.
            build: |_, r| {
                r.symlink(b"s/up", b"..");
                r.symlink(b"x", b"s/up/../../outside");
            },
            limits: ROOMY,
            expect: Refused("x", |r| {
                matches!(r, Refusal::Link(LinkRefusal::Escapes { .. }))
            }),
        });
    }

    #[test]
    fn refuses_symlink_leaving_a_link_root_through_another_symlink() {
        check(Case {
            name: "symlink leaving a link root through another symlink",
            build: |env, r| {
                r.symlink(b"l", Env::path_bytes(&env.data));
                r.symlink(b"m", b"l/../outside");
            },
            limits: ROOMY,
            expect: Refused("m", |r| {
                matches!(r, Refusal::Link(LinkRefusal::AbsoluteParent { .. }))
            }),
        });
    }

    #[test]
    fn refuses_symlink_loop() {
        check(Case {
            name: "symlink loop",
            build: |_, r| {
                r.symlink(b"a", b"b/x");
                r.symlink(b"b", b"a/y");
            },
            limits: ROOMY,
            expect: Refused("a", |r| {
                matches!(r, Refusal::Link(LinkRefusal::Loop { .. }))
            }),
        });
    }

    #[test]
    fn refuses_deep_write_through_a_symlink_higher_up() {
        check(Case {
            name: "deep write through a symlink higher up",
            build: |_, r| {
                r.file(b"a-sibling/ok", b"fine");
                r.symlink(b"a", b".");
                r.file(b"a/b/c/evil", b"evil");
            },
            limits: ROOMY,
            expect: Refused(
                "a/b/c/evil",
                |r| matches!(r, Refusal::ThroughSymlink { link } if link == "a"),
            ),
        });
    }

    #[test]
    fn refuses_path_longer_than_path_max() {
        check(Case {
            name: "path longer than PATH_MAX",
            build: |_, r| {
                r.long_name("d/".repeat(2100).as_bytes());
                r.file(b"harmless", b"evil");
            },
            limits: ROOMY,
            expect: Refused("d/d/", |r| matches!(r, Refusal::PathTooLong { .. })),
        });
    }

    #[test]
    fn refuses_archive_without_end_marker() {
        let env = Env::new();
        let mut raw = Raw::default();
        raw.file(b"f", b"data");
        // A tar stream cut at an entry boundary, in a well-formed zstd frame.
        fs::write(&env.archive, zstd::encode_all(&raw.0[..], 3).unwrap()).unwrap();
        let opts = UnpackOptions {
            limits: ROOMY,
            links: &env.rules(),
        };
        let err = unpack(&env.archive, &env.dest, &opts).unwrap_err();
        assert!(
            matches!(&err, UnpackError::Corrupt { after: Some(f), .. } if f == "f"),
            "{err}"
        );
        assert!(!env.dest.exists());
        assert!(names(&env.deploy).is_empty());
    }

    #[test]
    fn absolute_symlink_into_a_link_root_is_accepted() {
        let env = Env::new();
        let mut raw = Raw::default();
        let mut target = Env::path_bytes(&env.data).to_vec();
        target.extend_from_slice(b"/uploads");
        raw.symlink(b"uploads", &target);
        // The link root itself is inside it too.
        raw.symlink(b"data", Env::path_bytes(&env.data));
        raw.symlink(b"sub/up", b"../uploads");
        let info = env.unpack(&raw, ROOMY).unwrap();
        assert_eq!(info.entries, 3);
        assert_eq!(
            fs::read_link(env.dest.join("uploads")).unwrap(),
            env.data.join("uploads")
        );
        assert_eq!(fs::read_link(env.dest.join("data")).unwrap(), env.data);
        assert_eq!(
            fs::read_link(env.dest.join("sub/up")).unwrap(),
            Path::new("../uploads")
        );
        assert_eq!(names(&env.deploy), vec![OsString::from("r1")]);
    }

    #[test]
    fn dot_prefixes_and_root_entry_are_accepted() {
        let env = Env::new();
        let mut raw = Raw::default();
        raw.push(b"./", b'5', b"", b"", 0);
        raw.dir(b"./a/");
        raw.file(b"./a/./b", b"hello");
        raw.file(b"a//c", b"world");
        let info = env.unpack(&raw, ROOMY).unwrap();
        assert_eq!((info.entries, info.files, info.bytes), (4, 2, 10));
        assert_eq!(fs::read(env.dest.join("a/b")).unwrap(), b"hello");
        assert_eq!(fs::read(env.dest.join("a/c")).unwrap(), b"world");
        // Raw::push writes mode 0644; the root entry's mode and mtime win over defaults.
        let meta = fs::metadata(&env.dest).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
        assert_eq!(std::os::unix::fs::MetadataExt::mtime(&meta), 1_600_000_000);
    }

    #[test]
    fn missing_parents_are_created_0755_and_modes_are_exact() {
        let env = Env::new();
        let mut raw = Raw::default();
        raw.file(b"deep/er/file", b"x");
        let mut header = Header::new_gnu();
        header.set_path("open").unwrap();
        header.set_size(0);
        header.set_mode(0o6777);
        header.set_cksum();
        raw.0.extend_from_slice(header.as_bytes());
        env.unpack(&raw, ROOMY).unwrap();
        let mode = |p: &str| {
            fs::symlink_metadata(env.dest.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("deep"), 0o755);
        assert_eq!(mode("deep/er"), 0o755);
        assert_eq!(mode(""), 0o755);
        // Not left to the umask, and without setuid/setgid.
        assert_eq!(mode("open"), 0o777);
    }

    #[test]
    fn existing_dest_is_refused_untouched() {
        let env = Env::new();
        fs::create_dir(&env.dest).unwrap();
        fs::write(env.dest.join("keep"), b"mine").unwrap();
        let mut raw = Raw::default();
        raw.file(b"keep", b"theirs");
        let err = env.unpack(&raw, ROOMY).unwrap_err();
        assert!(matches!(err, UnpackError::DestExists { .. }), "{err}");
        assert_eq!(fs::read(env.dest.join("keep")).unwrap(), b"mine");
        assert_eq!(names(&env.deploy), vec![OsString::from("r1")]);
    }

    #[test]
    fn corrupt_zstd_is_refused() {
        let env = Env::new();
        let mut raw = Raw::default();
        raw.file(b"f", &[7; 5000]);
        let mut bytes = raw.zst();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff; // the frame checksum
        fs::write(&env.archive, bytes).unwrap();
        let opts = UnpackOptions {
            limits: ROOMY,
            links: &env.rules(),
        };
        let err = unpack(&env.archive, &env.dest, &opts).unwrap_err();
        assert!(matches!(err, UnpackError::Corrupt { .. }), "{err}");
        assert!(!env.dest.exists());
        assert!(names(&env.deploy).is_empty());
    }

    /// What [`ReleaseLinks`] says about a set of links: accepted, or the first refused link
    /// and the kind of refusal.
    #[derive(Debug, PartialEq, Eq)]
    enum Verdict {
        Accepted,
        Escapes(&'static str),
        OutsideRoots(&'static str),
        AbsoluteParent(&'static str),
        IntoNodeRoot(&'static str),
        Loop(&'static str),
    }

    fn verdict(rules: &LinkRules, links: &[(&'static str, &str)]) -> Verdict {
        let mut set = ReleaseLinks::new(rules);
        let refused = links
            .iter()
            .find_map(|(path, target)| {
                set.add(path.as_bytes(), target.as_bytes())
                    .err()
                    .map(|r| (*path, r))
            })
            .or_else(|| {
                set.check().err().map(|(path, r)| {
                    let path = links.iter().find(|(p, _)| *p == path).unwrap().0;
                    (path, r)
                })
            });
        match refused {
            None => Verdict::Accepted,
            Some((path, LinkRefusal::Escapes { .. })) => Verdict::Escapes(path),
            Some((path, LinkRefusal::OutsideRoots { .. })) => Verdict::OutsideRoots(path),
            Some((path, LinkRefusal::AbsoluteParent { .. })) => Verdict::AbsoluteParent(path),
            Some((path, LinkRefusal::IntoNodeRoot { .. })) => Verdict::IntoNodeRoot(path),
            Some((path, LinkRefusal::Loop { .. })) => Verdict::Loop(path),
        }
    }

    /// The one rule set staging's bake check and production's unpack share, on its own: a
    /// node rooted at /opt/kiln (inside an allowed root, to show it stays off limits) with
    /// the default system roots, and a project `shop` on it.
    #[test]
    fn link_rules_accept_what_toolchains_make_and_nothing_that_leaves_the_release_unsafely() {
        let defaults: Vec<PathBuf> = crate::config::node_config::DEFAULT_LINK_ROOTS
            .iter()
            .map(PathBuf::from)
            .collect();
        let project = vec![
            PathBuf::from("/opt/kiln/shop/run"),
            PathBuf::from("/opt/kiln/shop/data"),
        ];
        let node = Path::new("/opt/kiln");
        let standard = LinkRules::new(project.clone(), defaults, node);
        let strict = LinkRules::new(project, Vec::new(), node);
        use Verdict::*;
        let venv = [
            (".venv/bin/python", "python3"),
            (".venv/bin/python3", "/usr/bin/python3"),
            (".venv/bin/python3.11", "python3"),
            (".venv/lib64", "lib"),
        ];
        type Case<'a> = (
            &'a str,
            &'a LinkRules,
            Vec<(&'static str, &'a str)>,
            Verdict,
        );
        let cases: Vec<Case> = vec![
            (
                "a venv of the system python",
                &standard,
                venv.to_vec(),
                Accepted,
            ),
            (
                "a venv of the system python, no system roots",
                &strict,
                venv.to_vec(),
                OutsideRoots(".venv/bin/python3"),
            ),
            (
                "a venv of a pyenv python",
                &standard,
                vec![(
                    ".venv/bin/python3",
                    "/root/.pyenv/versions/3.11.7/bin/python3",
                )],
                OutsideRoots(".venv/bin/python3"),
            ),
            (
                "merged-/usr names and a toolchain in /opt",
                &standard,
                vec![
                    ("sh", "/bin/sh"),
                    ("node", "/opt/node/bin/node"),
                    ("ld", "/lib64/ld.so"),
                ],
                Accepted,
            ),
            (
                "`.` and doubled slashes are harmless",
                &standard,
                vec![("py", "/usr/./bin//python3")],
                Accepted,
            ),
            (
                "a root is a whole component, not a prefix",
                &standard,
                vec![("x", "/usrx/bin/python3")],
                OutsideRoots("x"),
            ),
            (
                "/etc is not a default root",
                &standard,
                vec![("x", "/etc/passwd")],
                OutsideRoots("x"),
            ),
            (
                "`..` in an absolute target",
                &standard,
                vec![("x", "/usr/../etc/shadow")],
                AbsoluteParent("x"),
            ),
            (
                "`..` that stays inside a root lexically is still refused",
                &standard,
                vec![("x", "/usr/lib/../bin/python3")],
                AbsoluteParent("x"),
            ),
            (
                "`..` after a link to a system root",
                &standard,
                vec![("l", "/usr/lib"), ("m", "l/../etc")],
                AbsoluteParent("m"),
            ),
            (
                "a chain through a link to a system root",
                &standard,
                vec![("l", "/usr/lib"), ("m", "l/python3")],
                Accepted,
            ),
            (
                "into the node root, though /opt is allowed",
                &standard,
                vec![("key", "/opt/kiln/.node-key")],
                IntoNodeRoot("key"),
            ),
            (
                "into another project's data",
                &standard,
                vec![("x", "/opt/kiln/blog/data")],
                IntoNodeRoot("x"),
            ),
            (
                "into the node root, also without system roots",
                &strict,
                vec![("x", "/opt/kiln/shop/pillar/pillar.yml")],
                IntoNodeRoot("x"),
            ),
            (
                "into the project's own data/ and run/",
                &strict,
                vec![
                    ("uploads", "/opt/kiln/shop/data/uploads"),
                    ("r", "/opt/kiln/shop/run"),
                ],
                Accepted,
            ),
            (
                "`..` out of the project's data/",
                &strict,
                vec![("x", "/opt/kiln/shop/data/../pillar")],
                AbsoluteParent("x"),
            ),
            (
                "a relative link inside",
                &strict,
                vec![("a/b", "../c")],
                Accepted,
            ),
            (
                "a relative link leaving",
                &strict,
                vec![("a/b", "../../c")],
                Escapes("a/b"),
            ),
            (
                "leaving through another link",
                &strict,
                vec![("s/up", ".."), ("x", "s/up/../../y")],
                Escapes("x"),
            ),
            (
                "a loop",
                &strict,
                vec![("a", "b/x"), ("b", "a/y")],
                Loop("a"),
            ),
        ];
        let mut wrong = Vec::new();
        for (name, rules, links, want) in cases {
            let got = verdict(rules, &links);
            if got != want {
                wrong.push(format!("{name}: got {got:?}, want {want:?}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    /// Roots are the node's own paths: given with `..` (`--root ../node`) or reached through
    /// a symlink, they still mean the directories they name.
    #[test]
    fn link_rules_know_roots_by_their_real_names_too() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        let node = base.join("node");
        let disk = base.join("disk/data");
        fs::create_dir_all(node.join("shop")).unwrap();
        fs::create_dir_all(&disk).unwrap();
        fs::create_dir(base.join("x")).unwrap();
        std::os::unix::fs::symlink(&disk, node.join("shop/data")).unwrap();
        std::os::unix::fs::symlink(&node, base.join("alias")).unwrap();
        let key = node.join(".node-key").display().to_string();
        let uploads = disk.join("uploads").display().to_string();
        for given in [base.join("x/../node"), base.join("alias")] {
            let rules = LinkRules::new(vec![given.join("shop/data")], Vec::new(), &given);
            let what = given.display();
            assert_eq!(
                verdict(&rules, &[("k", &key)]),
                Verdict::IntoNodeRoot("k"),
                "{what}"
            );
            assert_eq!(
                verdict(&rules, &[("u", &uploads)]),
                Verdict::Accepted,
                "{what}"
            );
        }
    }

    #[test]
    fn pax_time_parses_fractions_and_negative_times() {
        type Want = Option<(i64, i64)>;
        let cases: [(&[u8], Want); 7] = [
            (b"1700000000.123456789", Some((1_700_000_000, 123_456_789))),
            (b"1700000000", Some((1_700_000_000, 0))),
            (b"1700000000.5", Some((1_700_000_000, 500_000_000))),
            (b"1.1234567891", Some((1, 123_456_789))),
            (b"-1.25", Some((-2, 750_000_000))),
            (b"abc", None),
            (b"1.2e3", None),
        ];
        for (text, want) in cases {
            let got = parse_pax_time(text).map(|t| (t.tv_sec(), t.tv_nsec()));
            assert_eq!(got, want, "{}", show(text));
        }
    }
}
