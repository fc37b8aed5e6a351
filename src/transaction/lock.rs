//! One deploy, rollback or recovery at a time per project. An flock on state/lock: the kernel
//! drops it when the holder dies, so a crashed deploy never blocks the next one.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::project::Project;
use crate::error::{Error, io_error};
use crate::exec::report::Reporter;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub action: String,
    pub release: Option<String>,
    pub since: chrono::DateTime<chrono::Utc>,
}

pub struct ProjectLock {
    file: File,
    holder_path: PathBuf,
}

impl ProjectLock {
    /// Takes the lock, waiting for the current holder if there is one; `on_wait` is told who
    /// holds it before the wait starts.
    pub fn acquire(
        state: &Path,
        action: &str,
        on_wait: &mut dyn FnMut(Option<Holder>),
    ) -> Result<ProjectLock, Error> {
        let path = state.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_error("open", &path, e))?;
        let holder_path = state.join("lock.holder");
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                on_wait(read_holder(&holder_path));
                file.lock().map_err(|e| io_error("lock", &path, e))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_error("lock", &path, e)),
        }
        let lock = ProjectLock { file, holder_path };
        lock.set_holder(action, None)?;
        Ok(lock)
    }

    /// Says which release the holder is working on, for `kiln status` and waiting pushes.
    pub fn set_holder(&self, action: &str, release: Option<&str>) -> Result<(), Error> {
        let holder = Holder {
            pid: std::process::id(),
            action: action.to_string(),
            release: release.map(str::to_string),
            since: chrono::Utc::now(),
        };
        let bytes = serde_json::to_vec(&holder).unwrap_or_default();
        // Readers (`kiln status`, a waiting push) must never see half a file, but nothing needs
        // it after a crash (the lock itself goes with the process): rename, no fsync.
        let tmp = self.holder_path.with_extension("tmp");
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes))
            .and_then(|()| fs::rename(&tmp, &self.holder_path))
            .map_err(|e| io_error("write", &self.holder_path, e))
    }
}

impl Drop for ProjectLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.holder_path);
        // The lock file's mtime says when a kiln command last let go of the project: the
        // supervisor's web check starts counting failures over after it (see [`released`]).
        let _ = self.file.set_modified(std::time::SystemTime::now());
    }
}

/// Whether a kiln command works on the project now (its lock's holder file names a live
/// process), found without taking the lock: a probe that took it, even for an instant,
/// could make a command starting then say it waits for another. A holder file left by a
/// command killed with SIGKILL names a dead process, and is not busy.
pub fn busy(state: &Path) -> bool {
    read_holder(&state.join("lock.holder")).is_some_and(|holder| {
        let pid = i32::try_from(holder.pid).unwrap_or(0);
        pid > 0
            && !matches!(
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
                Err(nix::errno::Errno::ESRCH)
            )
    })
}

/// When a kiln command last released the project's lock (None: never, or unreadable).
pub fn released(state: &Path) -> Option<std::time::SystemTime> {
    fs::metadata(state.join("lock")).ok()?.modified().ok()
}

/// Takes the project lock, telling the user whom it waits for.
pub fn lock(project: &Project, action: &str, out: &mut Reporter) -> Result<ProjectLock, Error> {
    ProjectLock::acquire(&project.paths.state, action, &mut |holder| match holder {
        Some(h) => out.headline(&format!(
            "waiting for the {} of {} (pid {}) to finish",
            h.action,
            h.release.as_deref().unwrap_or("this project"),
            h.pid
        )),
        None => out.headline("waiting for another kiln command on this project to finish"),
    })
}

fn read_holder(path: &Path) -> Option<Holder> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Who holds the lock right now, if anyone (for `kiln status`).
pub fn current_holder(state: &Path) -> Option<Holder> {
    let path = state.join("lock");
    let file = OpenOptions::new().write(true).open(&path).ok()?;
    match file.try_lock() {
        Ok(()) => None,
        Err(_) => read_holder(&state.join("lock.holder")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_waits_and_learns_who_holds() {
        let dir = tempfile::tempdir().unwrap();
        let first = ProjectLock::acquire(dir.path(), "deploy", &mut |_| {}).unwrap();
        first.set_holder("deploy", Some("r1")).unwrap();
        let seen = current_holder(dir.path()).unwrap();
        assert_eq!(seen.release.as_deref(), Some("r1"));
        let state = dir.path().to_path_buf();
        let waiter = std::thread::spawn(move || {
            let mut told = None;
            let _second = ProjectLock::acquire(&state, "deploy", &mut |h| told = h).unwrap();
            told
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!waiter.is_finished(), "the second taker must wait");
        drop(first);
        let told = waiter.join().unwrap().unwrap();
        assert_eq!(told.release.as_deref(), Some("r1"));
    }

    #[test]
    fn busy_while_held_and_released_marks_the_time_it_was_let_go() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!busy(dir.path()));
        let lock = ProjectLock::acquire(dir.path(), "restart", &mut |_| {}).unwrap();
        let before = released(dir.path()).unwrap();
        assert!(busy(dir.path()));
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(lock);
        assert!(!busy(dir.path()));
        assert!(released(dir.path()).unwrap() > before);
        // A holder killed with SIGKILL leaves its file behind, naming a dead process.
        let dead = Holder {
            pid: u32::try_from(i32::MAX).unwrap(),
            action: "deploy".into(),
            release: None,
            since: chrono::Utc::now(),
        };
        fs::write(
            dir.path().join("lock.holder"),
            serde_json::to_vec(&dead).unwrap(),
        )
        .unwrap();
        assert!(!busy(dir.path()));
    }
}
