//! The kiln binary, for kiln processes that start kiln again (the supervisor daemon, a
//! notification's background delivery). Long-lived ones outlive an upgrade of kiln: once the
//! file they run from is replaced, Linux names it `/usr/local/bin/kiln (deleted)`, a path
//! that does not exist, and every later start of kiln from them failed (a crash loop's alert
//! was never delivered). They start the kiln installed at the same path instead, else the
//! binary they still run from (`/proc/self/exe`, which outlives its file).

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// What Linux appends to `/proc/self/exe`'s target once the file is gone.
const DELETED: &[u8] = b" (deleted)";

/// The kiln binary to start: this one, or the one installed where this one was.
pub fn kiln() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(runnable(&exe, Path::exists))
}

/// `exe` when it exists, else the path it had before its file was replaced (`exists` says
/// whether a path exists), else `/proc/self/exe`.
fn runnable(exe: &Path, exists: impl Fn(&Path) -> bool) -> PathBuf {
    if exists(exe) {
        return exe.to_path_buf();
    }
    let bytes = exe.as_os_str().as_bytes();
    if let Some(installed) = bytes.strip_suffix(DELETED) {
        let installed = PathBuf::from(OsString::from_vec(installed.to_vec()));
        if exists(&installed) {
            return installed;
        }
    }
    PathBuf::from("/proc/self/exe")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_binary_starts_the_one_installed_at_its_path() {
        let cases = [
            // (current_exe, paths that exist, what to run)
            ("/usr/bin/kiln", &["/usr/bin/kiln"][..], "/usr/bin/kiln"),
            (
                "/usr/bin/kiln (deleted)",
                &["/usr/bin/kiln"],
                "/usr/bin/kiln",
            ),
            ("/usr/bin/kiln (deleted)", &[], "/proc/self/exe"),
            (
                "/opt/my kiln/kiln (deleted)",
                &["/opt/my kiln/kiln"],
                "/opt/my kiln/kiln",
            ),
            ("/usr/bin/kiln", &[], "/proc/self/exe"),
        ];
        for (exe, existing, expected) in cases {
            let exists = |p: &Path| existing.iter().any(|e| Path::new(e) == p);
            assert_eq!(
                runnable(Path::new(exe), exists),
                PathBuf::from(expected),
                "{exe}"
            );
        }
    }
}
