//! Switching run/ between releases. The new release is prepared in a shadow tree next to run/
//! while the app still serves; the switch itself is one `renameat2(RENAME_EXCHANGE)`, atomic
//! (no reader sees a mix of two releases) and free whatever the tree's size. Undoing it is the
//! same exchange. Where the filesystem cannot exchange, run/ is synced in place instead, while
//! services are stopped.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};

use crate::error::{Error, io_error};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Exchange,
    InPlace,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Exchange => "exchange",
            Method::InPlace => "in-place",
        }
    }

    pub fn parse(s: &str) -> Method {
        if s == "in-place" {
            Method::InPlace
        } else {
            Method::Exchange
        }
    }
}

/// How run/ will be switched on this filesystem. `KILN_SWITCH=in-place` forces the fallback
/// (for filesystems that misreport support, and to test the fallback).
pub fn method(run: &Path, shadow: &Path) -> Method {
    if std::env::var("KILN_SWITCH").as_deref() == Ok("in-place") {
        return Method::InPlace;
    }
    // Probe with a pair of scratch dirs next to run/: exchanging them has no effect on the app.
    let Some(parent) = run.parent() else {
        return Method::InPlace;
    };
    let a = parent.join(".kiln-probe-a");
    let b = parent.join(".kiln-probe-b");
    let _ = std::fs::create_dir(&a);
    let _ = std::fs::create_dir(&b);
    let ok = renameat2(AT_FDCWD, &a, AT_FDCWD, &b, RenameFlags::RENAME_EXCHANGE).is_ok();
    let _ = std::fs::remove_dir(&a);
    let _ = std::fs::remove_dir(&b);
    let _ = shadow;
    if ok {
        Method::Exchange
    } else {
        Method::InPlace
    }
}

/// Swaps two directories atomically.
pub fn exchange(a: &Path, b: &Path) -> Result<(), Error> {
    renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE)
        .map_err(|e| io_error("switch", a, std::io::Error::from(e)))?;
    let dir = a.parent().unwrap_or(Path::new("."));
    crate::fs::durable::fsync_dir(dir).map_err(|e| io_error("sync", dir, e))
}

pub fn inode(path: &Path) -> Option<u64> {
    std::fs::symlink_metadata(path).ok().map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_swaps_and_swaps_back() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(a.join("old"), "1").unwrap();
        std::fs::write(b.join("new"), "2").unwrap();
        let before = inode(&a);
        exchange(&a, &b).unwrap();
        assert!(a.join("new").exists() && b.join("old").exists());
        assert_ne!(inode(&a), before);
        exchange(&a, &b).unwrap();
        assert!(a.join("old").exists());
        assert_eq!(inode(&a), before);
    }
}
