//! What the supervisor asks Linux about processes: whether a pid is still the process it
//! recorded (pid plus start time, so that a reused pid is never signalled), and signalling a
//! whole process group.

use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// A process as recorded: its pid and its start time (clock ticks after boot, field 22 of
/// `/proc/<pid>/stat`), which together name it even after the pid is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessId {
    pub pid: i32,
    pub start: u64,
}

impl ProcessId {
    /// The process `pid` as it is now (None: gone, or a zombie).
    pub fn of(pid: i32) -> Option<ProcessId> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
        let (_, fields) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = fields.split_whitespace().collect();
        if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
            return None;
        }
        // After the comm, field 3 (state) is index 0, so field 22 (starttime) is index 19.
        let start = fields.get(19)?.parse().ok()?;
        Some(ProcessId { pid, start })
    }

    /// Still running, and still the same process.
    pub fn alive(&self) -> bool {
        ProcessId::of(self.pid) == Some(*self)
    }

    /// Sends `signal` to the process, if it is still the one recorded.
    pub fn signal(&self, signal: Signal) -> bool {
        self.alive() && kill(Pid::from_raw(self.pid), signal).is_ok()
    }

    /// Sends `signal` to the process group this process leads, if the leader is still the one
    /// recorded or the group still has members (a leader that died leaves its group id in use
    /// while any member lives, so it cannot name another group).
    pub fn signal_group(&self, signal: Signal) {
        if self.alive() || group_alive(self.pid) {
            let _ = killpg(Pid::from_raw(self.pid), signal);
        }
    }
}

/// Whether any live (non-zombie) process is in group `pgid` (the stage runner asks the same
/// of a command it timed out).
pub fn group_alive(pgid: i32) -> bool {
    crate::exec::stage::group_alive(Pid::from_raw(pgid))
}

/// SIGTERM to the group, then SIGKILL once `grace` has passed (or at once when it is zero),
/// waiting at most that long. Returns when no member is left or after the SIGKILL.
pub fn terminate_group(leader: ProcessId, grace: Duration) {
    leader.signal_group(Signal::SIGTERM);
    let until = std::time::Instant::now() + grace;
    while std::time::Instant::now() < until {
        if !group_alive(leader.pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    leader.signal_group(Signal::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_named_by_pid_and_start_time() {
        let me = ProcessId::of(std::process::id() as i32).expect("this process");
        assert!(me.alive());
        let other = ProcessId {
            pid: me.pid,
            start: me.start + 1,
        };
        assert!(!other.alive(), "a reused pid is another process");
        assert_eq!(ProcessId::of(i32::MAX), None);
    }
}
