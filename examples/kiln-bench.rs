//! The benchmark driver's view of kiln's hot paths: each subcommand runs one library call in
//! its own process, so hyperfine can time kiln and its peers (rsync, tar, zstd) the same way.
//! It also generates the deterministic test trees and their 1% changes, so the trees do not
//! depend on a Python or shell generator being fast or available.
//!
//! ```text
//! kiln-bench gen DIR --files N [--seed S] [--min-total-mb M]
//! kiln-bench mutate DIR [--fraction F] [--seed S]
//! kiln-bench sync SRC DST
//! kiln-bench snapshot DATA DEST BASE [TAKEN_AT_UNIX_SECONDS]
//! kiln-bench snapshot-nosync DATA DEST BASE [TAKEN_AT_UNIX_SECONDS]
//! kiln-bench bake TREE OUT [LEVEL]
//! kiln-bench unpack ARCHIVE DEST
//! ```

use std::fs::{self, File, FileTimes};
use std::io::{self, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use kiln::fs::sync::{LinkBase, SyncOptions};
use kiln::release::unpack::{Limits, UnpackOptions};

const USAGE: &str = "usage:
  kiln-bench gen DIR --files N [--seed S] [--min-total-mb M]
  kiln-bench mutate DIR [--fraction F] [--seed S]
  kiln-bench sync SRC DST
  kiln-bench snapshot DATA DEST BASE [TAKEN_AT_UNIX_SECONDS]
  kiln-bench snapshot-nosync DATA DEST BASE [TAKEN_AT_UNIX_SECONDS]
  kiln-bench bake TREE OUT [LEVEL]
  kiln-bench unpack ARCHIVE DEST";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let Some((cmd, rest)) = args.split_first() else {
        bail!("{USAGE}");
    };
    let (pos, flags) = split_flags(rest)?;
    let p = |i: usize| -> Result<PathBuf> {
        pos.get(i)
            .map(PathBuf::from)
            .with_context(|| format!("missing argument\n{USAGE}"))
    };
    match cmd.as_str() {
        "gen" => {
            let files: u64 = flag(&flags, "files")?.context("`gen` needs --files N")?;
            let seed = flag(&flags, "seed")?.unwrap_or(1);
            let min_total_mb = flag(&flags, "min-total-mb")?.unwrap_or(0);
            let total = generate(&p(0)?, files, seed, min_total_mb << 20)?;
            println!("{files} files, {total} bytes");
        }
        "mutate" => {
            let fraction: f64 = flag(&flags, "fraction")?.unwrap_or(0.01);
            let seed = match flag(&flags, "seed")? {
                Some(s) => s,
                None => SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64,
            };
            let (m, a, d) = mutate(&p(0)?, fraction, seed)?;
            println!("modified {m}, added {a}, deleted {d}");
        }
        "sync" => {
            kiln::fs::sync::sync_tree(&p(0)?, &p(1)?, &SyncOptions::default())?;
        }
        "snapshot" | "snapshot-nosync" => {
            let (data, dest, base) = (p(0)?, p(1)?, p(2)?);
            let taken_at = match pos.get(3) {
                Some(s) => UNIX_EPOCH + Duration::from_secs(s.parse().context("TAKEN_AT")?),
                None => fs::metadata(&base)?.modified()?,
            };
            if cmd == "snapshot" {
                kiln::transaction::backup::snapshot(&data, &dest, Some((&base, taken_at)))?;
            } else {
                // The same link-dest copy without the final syncfs, to show what durability costs.
                let opts = SyncOptions {
                    link_base: Some(LinkBase {
                        path: &base,
                        taken_at,
                    }),
                    durable: false,
                };
                kiln::fs::sync::sync_tree(&data, &dest, &opts)?;
            }
        }
        "bake" => {
            let level = match pos.get(2) {
                Some(l) => l.parse().context("LEVEL")?,
                None => 3,
            };
            kiln::release::bake::bake(&p(0)?, &p(1)?, level)?;
        }
        "unpack" => {
            // Relative links only, as before: the rules' cost is the same either way.
            let links = kiln::release::unpack::LinkRules::new(Vec::new(), Vec::new(), &p(1)?);
            let opts = UnpackOptions {
                limits: Limits {
                    max_bytes: u64::MAX,
                    max_entries: u64::MAX,
                },
                links: &links,
            };
            kiln::release::unpack::unpack(&p(0)?, &p(1)?, &opts)?;
        }
        _ => bail!("unknown subcommand `{cmd}`\n{USAGE}"),
    }
    Ok(())
}

type Flags = Vec<(String, String)>;

fn split_flags(args: &[String]) -> Result<(Vec<String>, Flags)> {
    let mut pos = Vec::new();
    let mut flags = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(name) = a.strip_prefix("--") {
            let value = it
                .next()
                .with_context(|| format!("--{name} needs a value"))?;
            flags.push((name.to_string(), value.clone()));
        } else {
            pos.push(a.clone());
        }
    }
    Ok((pos, flags))
}

fn flag<T: std::str::FromStr>(flags: &Flags, name: &str) -> Result<Option<T>> {
    match flags.iter().find(|(n, _)| n == name) {
        None => Ok(None),
        Some((_, v)) => match v.parse() {
            Ok(v) => Ok(Some(v)),
            Err(_) => bail!("--{name}: `{v}` is not a valid value"),
        },
    }
}

/// splitmix64: tiny, fast and good enough to make trees reproducible from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal, Box-Muller.
    fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(1e-12);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Median 10 KB, log-normal, capped at 1 MiB: source files, templates, small assets.
fn small_size(rng: &mut Rng) -> u64 {
    ((10_000f64.ln() + 0.7 * rng.normal()).exp() as u64).min(1 << 20)
}

/// 1 to 8 MiB: images, bundles, fonts.
fn large_size(rng: &mut Rng) -> u64 {
    (1 << 20) + rng.below(7 << 20)
}

/// Text for small files (compresses about as well as source code) and random bytes for large
/// ones (already-compressed assets).
fn write_content(
    path: &Path,
    size: u64,
    text: bool,
    rng: &mut Rng,
    words: &[Vec<u8>],
) -> Result<()> {
    let mut buf = Vec::with_capacity(size.min(1 << 20) as usize);
    let mut file = io::BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut left = size;
    while left > 0 {
        buf.clear();
        let want = left.min(1 << 20) as usize;
        if text {
            while buf.len() < want {
                let r = rng.next();
                buf.extend_from_slice(&words[(r & 511) as usize]);
                buf.push(if r >> 60 == 0 { b'\n' } else { b' ' });
            }
            buf.truncate(want);
        } else {
            while buf.len() < want {
                buf.extend_from_slice(&rng.next().to_le_bytes());
            }
            buf.truncate(want);
        }
        file.write_all(&buf)?;
        left -= want as u64;
    }
    file.flush()?;
    Ok(())
}

fn vocabulary(rng: &mut Rng) -> Vec<Vec<u8>> {
    (0..512)
        .map(|_| {
            let len = 2 + rng.below(9) as usize;
            (0..len).map(|_| b'a' + rng.below(26) as u8).collect()
        })
        .collect()
}

/// A fixed, nanosecond-precise mtime in the past, so that trees are reproducible and every
/// later change (made "now") is newer.
fn past_mtime(rng: &mut Rng) -> SystemTime {
    UNIX_EPOCH
        + Duration::new(
            1_700_000_000 + rng.below(10_000_000),
            rng.below(1_000_000_000) as u32,
        )
}

fn set_mtime(path: &Path, t: SystemTime) -> Result<()> {
    let f = File::options().write(true).open(path)?;
    f.set_times(FileTimes::new().set_modified(t).set_accessed(t))?;
    Ok(())
}

/// Generates `files` regular files (plus about 2% symlinks) in nested directories under `dir`;
/// then, if the tree is smaller than `min_total`, adds large files until it is not.
fn generate(dir: &Path, files: u64, seed: u64, min_total: u64) -> Result<u64> {
    if dir.exists() {
        bail!("`{}` already exists", dir.display());
    }
    let mut rng = Rng(seed);
    let words = vocabulary(&mut rng);
    // About 25 files per directory, each directory below a random earlier one, at most 6 deep.
    let ndirs = (files / 25).max(1);
    let mut dirs: Vec<(PathBuf, usize)> = vec![(PathBuf::new(), 0)];
    for i in 1..ndirs {
        let (parent, depth) = loop {
            let c = &dirs[rng.below(dirs.len() as u64) as usize];
            if c.1 < 6 {
                break c.clone();
            }
        };
        dirs.push((parent.join(format!("d{i:05}")), depth + 1));
    }
    for (d, _) in &dirs {
        fs::create_dir_all(dir.join(d))?;
    }
    // One empty directory per hundred, which releases do have (cache/, logs/).
    for (i, (d, _)) in dirs.iter().enumerate().step_by(100) {
        fs::create_dir_all(dir.join(d).join(format!("empty{i}")))?;
    }
    let mut total = 0u64;
    let mut made: Vec<PathBuf> = Vec::with_capacity(files as usize);
    let large_every = 2000; // 0.05% large files, at least one
    for i in 0..files {
        let d = &dirs[rng.below(ndirs) as usize].0;
        let large = i % large_every == large_every / 2 || (files < large_every && i == files / 2);
        let (rel, size) = if large {
            (d.join(format!("asset{i:06}.bin")), large_size(&mut rng))
        } else {
            (d.join(format!("f{i:06}.txt")), small_size(&mut rng))
        };
        let path = dir.join(&rel);
        write_content(&path, size, !large, &mut rng, &words)?;
        set_mtime(&path, past_mtime(&mut rng))?;
        total += size;
        made.push(rel);
    }
    let mut extra = 0;
    while total < min_total {
        let d = &dirs[rng.below(ndirs) as usize].0;
        let rel = d.join(format!("big{extra:05}.bin"));
        let size = (1 << 20) + rng.below(31 << 20);
        let path = dir.join(&rel);
        write_content(&path, size, false, &mut rng, &words)?;
        set_mtime(&path, past_mtime(&mut rng))?;
        total += size;
        extra += 1;
    }
    // Relative symlinks to files elsewhere in the tree (2%), and one dangling link per thousand.
    for i in 0..(files / 50).max(1) {
        let (d, depth) = &dirs[rng.below(ndirs) as usize];
        let target_rel = &made[rng.below(made.len() as u64) as usize];
        let mut target = PathBuf::new();
        for _ in 0..*depth {
            target.push("..");
        }
        target.push(target_rel);
        let link = dir.join(d).join(format!("link{i:05}"));
        if i % 50 == 49 {
            symlink("missing-target", &link)?;
        } else {
            symlink(&target, &link)?;
        }
        let t = past_mtime(&mut rng);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &link,
            &t.into_timespec(),
            &t.into_timespec(),
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )?;
    }
    // Directory mtimes last, deepest first, since creating entries touched them.
    let mut all_dirs: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_dir())
        .map(|e| e.into_path())
        .collect();
    all_dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for d in all_dirs {
        let t = past_mtime(&mut rng);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &d,
            &t.into_timespec(),
            &t.into_timespec(),
            nix::sys::stat::UtimensatFlags::FollowSymlink,
        )?;
    }
    Ok(total)
}

trait IntoTimeSpec {
    fn into_timespec(self) -> nix::sys::time::TimeSpec;
}

impl IntoTimeSpec for SystemTime {
    fn into_timespec(self) -> nix::sys::time::TimeSpec {
        let d = self.duration_since(UNIX_EPOCH).unwrap_or_default();
        nix::sys::time::TimeSpec::new(d.as_secs() as i64, d.subsec_nanos() as i64)
    }
}

/// Changes about `fraction` of the regular files of `dir`: 60% rewritten, 20% deleted, and as
/// many new files as 20% of that count. A rewrite goes to a new inode (temp file + rename), so
/// a tree made with `cp -al` can be mutated without touching the tree it was linked from.
fn mutate(dir: &Path, fraction: f64, seed: u64) -> Result<(u64, u64, u64)> {
    let mut rng = Rng(seed);
    let words = vocabulary(&mut Rng(1));
    let mut files: Vec<PathBuf> = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e?;
        if e.path().components().any(|c| c.as_os_str() == ".git") {
            continue;
        }
        if e.file_type().is_file() {
            files.push(e.into_path());
        } else if e.file_type().is_dir() {
            dirs.push(e.into_path());
        }
    }
    let n = ((files.len() as f64 * fraction).round() as u64).max(1);
    let (n_mod, n_del) = ((n * 6).div_ceil(10), n / 5);
    let n_add = n - n_mod - n_del;
    let mut picked = std::collections::HashSet::new();
    let mut pick = |rng: &mut Rng| loop {
        let i = rng.below(files.len() as u64) as usize;
        if picked.insert(i) || picked.len() >= files.len() {
            return i;
        }
    };
    for _ in 0..n_mod {
        let path = &files[pick(&mut rng)];
        let size = fs::metadata(path).map(|m| m.len()).unwrap_or(10_000);
        let tmp = path.with_extension("bench-tmp");
        let text = path.extension().is_some_and(|e| e == "txt");
        write_content(&tmp, size, text, &mut rng, &words)?;
        fs::rename(&tmp, path)?;
    }
    for _ in 0..n_del {
        fs::remove_file(&files[pick(&mut rng)])?;
    }
    let tag = rng.next() & 0xffff_ffff;
    for i in 0..n_add {
        let d = &dirs[rng.below(dirs.len() as u64) as usize];
        let size = small_size(&mut rng);
        write_content(
            &d.join(format!("new{tag:08x}-{i}.txt")),
            size,
            true,
            &mut rng,
            &words,
        )?;
    }
    Ok((n_mod, n_add, n_del))
}
