//! The `PORT` of each web instance: given from node.yml's `supervisor.ports` range, node-wide
//! under one lock so that two projects never get the same port, and kept: a web instance keeps
//! its port across restarts, scales and deploys (the front proxy's upstreams stay put). Each
//! project's waiting room ([`crate::runtime::supervisor::waiting_room`]) gets its port from the
//! same range, under the same lock, and keeps it.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::net::TcpListener;

use serde::{Deserialize, Serialize};
use socket2::{Domain, Socket, Type};

use crate::config::processes::PortRange;
use crate::error::Error;
use crate::runtime::formation::Formation;
use crate::runtime::supervisor::state::{
    ProjectState, SupervisorError, SupervisorPaths, open_lock,
};

/// Holds the node's port lock; the caller writes the formation file before dropping it.
pub struct PortLock {
    _file: File,
}

/// Which ports a formation may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assign {
    /// Each web instance keeps the port it had (a restart, a scale, a stop-and-start deploy).
    Keep,
    /// Ports the project does not hold now: an overlap cutover starts the new instances beside
    /// the running ones.
    Fresh,
}

/// Gives every web instance of `formation` a port: with [`Assign::Keep`] the one it had (in
/// the project's formation file) if still in the range, else the lowest port of the range that
/// no project's formation holds and that nothing on 127.0.0.1 listens on. Ports of instances
/// that are gone (a scale down) are given up.
pub fn assign(
    paths: &SupervisorPaths,
    range: &PortRange,
    formation: &mut Formation,
    how: Assign,
) -> Result<PortLock, Error> {
    let file = lock(paths)?;
    let project = formation.project.clone();
    let mut taken = formation_ports(paths, Some(&project));
    // Every project's waiting room, this one's too: nginx sends requests there.
    taken.extend(waiting_rooms(paths).into_iter().map(|(_, port)| port));
    let own = ProjectState::load(paths, &project)?;
    let previous = match (&own, how) {
        (Some(state), Assign::Keep) => state.formation.ports.clone(),
        (Some(state), Assign::Fresh) => {
            taken.extend(state.ports());
            std::collections::BTreeMap::new()
        }
        (None, _) => std::collections::BTreeMap::new(),
    };
    let mut ports = std::collections::BTreeMap::new();
    for name in formation.web_instances() {
        let key = name.to_string();
        let kept = previous
            .get(&key)
            .copied()
            .filter(|p| range.contains(*p) && !taken.contains(p));
        let port = match kept {
            Some(port) => port,
            None => (range.first..=range.last)
                .filter(|p| !taken.contains(p) && !previous.values().any(|q| q == p))
                .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
                .ok_or_else(|| SupervisorError::NoPort {
                    range: range.to_string(),
                    instance: key.clone(),
                    project: project.clone(),
                })?,
        };
        taken.insert(port);
        ports.insert(key, port);
    }
    formation.ports = ports;
    Ok(PortLock { _file: file })
}

/// The port of `project`'s waiting room: the one it has if still in the range, else the
/// lowest port of the range that no formation and no other waiting room has and that nothing
/// on 127.0.0.1 listens on, written to its file before the lock is given up.
pub fn assign_waiting_room(
    paths: &SupervisorPaths,
    range: &PortRange,
    project: &str,
) -> Result<u16, Error> {
    let _lock = lock(paths)?;
    let mut taken = formation_ports(paths, None);
    let mut own = None;
    for (name, port) in waiting_rooms(paths) {
        if name == project {
            own = Some(port);
        } else {
            taken.insert(port);
        }
    }
    if let Some(port) = own.filter(|p| range.contains(*p) && !taken.contains(p)) {
        return Ok(port);
    }
    let port = (range.first..=range.last)
        .filter(|p| !taken.contains(p))
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .ok_or_else(|| SupervisorError::NoPort {
            range: range.to_string(),
            instance: "the waiting room".into(),
            project: project.to_string(),
        })?;
    save_waiting_room(paths, project, port)?;
    Ok(port)
}

/// `waiting-rooms/<project>.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct WaitingRoomFile {
    port: u16,
}

/// The port of `project`'s waiting room, if it has one.
pub fn waiting_room(paths: &SupervisorPaths, project: &str) -> Option<u16> {
    let bytes = fs::read(paths.waiting_room_file(project)).ok()?;
    serde_json::from_slice::<WaitingRoomFile>(&bytes)
        .ok()
        .map(|file| file.port)
}

/// Every project's waiting room port.
pub fn waiting_rooms(paths: &SupervisorPaths) -> Vec<(String, u16)> {
    let mut rooms: Vec<(String, u16)> = fs::read_dir(paths.waiting_rooms_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let project = name.strip_suffix(".json")?.to_string();
            let port = waiting_room(paths, &project)?;
            Some((project, port))
        })
        .collect();
    rooms.sort();
    rooms
}

/// Records `port` as `project`'s waiting room (under the port lock: [`assign_waiting_room`]).
fn save_waiting_room(paths: &SupervisorPaths, project: &str, port: u16) -> Result<(), Error> {
    let dir = paths.waiting_rooms_dir();
    fs::create_dir_all(&dir).map_err(|e| SupervisorError::io("create", &dir, e))?;
    let bytes = serde_json::to_vec(&WaitingRoomFile { port }).unwrap_or_default();
    crate::fs::durable::write_atomic(&paths.waiting_room_file(project), &bytes, 0o600)
}

/// The queue of a listening socket the supervisor holds: connections that wait while the app
/// restarts (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// A listening socket on 127.0.0.1:`port` (close-on-exec, like every socket2 socket): a
/// socket-activated instance's, or a waiting room's.
pub fn listen(port: u16) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    // A port whose previous socket left connections in TIME_WAIT can be bound again.
    socket.set_reuse_address(true)?;
    socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())?;
    socket.listen(BACKLOG)?;
    Ok(socket)
}

/// The node's port lock, held until the returned file is dropped.
fn lock(paths: &SupervisorPaths) -> Result<File, Error> {
    paths.ensure()?;
    let lock_path = paths.ports_lock();
    let file = open_lock(&lock_path)?;
    file.lock()
        .map_err(|e| SupervisorError::io("lock", &lock_path, e))?;
    Ok(file)
}

/// The ports the formations of every project but `except` hold.
fn formation_ports(paths: &SupervisorPaths, except: Option<&str>) -> BTreeSet<u16> {
    let mut taken = BTreeSet::new();
    for other in paths
        .projects()
        .into_iter()
        .filter(|p| Some(p.as_str()) != except)
    {
        if let Ok(Some(state)) = ProjectState::load(paths, &other) {
            taken.extend(state.ports());
        }
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::formation::ProcessType;
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::Duration;

    fn formation(project: &str, webs: u32) -> Formation {
        Formation {
            project: project.into(),
            release: "r".into(),
            cwd: PathBuf::from("/x"),
            env: BTreeMap::new(),
            secrets: Vec::new(),
            types: BTreeMap::from([
                (
                    "web".to_string(),
                    ProcessType {
                        command: "serve".into(),
                        count: webs,
                    },
                ),
                (
                    "worker".to_string(),
                    ProcessType {
                        command: "work".into(),
                        count: 1,
                    },
                ),
            ]),
            grace: Duration::from_secs(1),
            limits: Default::default(),
            log_dir: PathBuf::from("/x"),
            ports: BTreeMap::new(),
            check_command: None,
            socket_activation: false,
            slot: Default::default(),
        }
    }

    fn save(paths: &SupervisorPaths, formation: &Formation) {
        ProjectState {
            running: true,
            formation: formation.clone(),
            draining: None,
            hold_sockets: false,
        }
        .save(paths)
        .unwrap();
    }

    #[test]
    fn ports_are_unique_node_wide_and_kept_per_instance() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SupervisorPaths::new(dir.path());
        // A range of free ports: one this test just saw free, and a few after it.
        let first = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .min(65000);
        let range = PortRange {
            first,
            last: first + 20,
        };
        let mut a = formation("a", 2);
        drop(assign(&paths, &range, &mut a, Assign::Keep).unwrap());
        save(&paths, &a);
        assert_eq!(a.ports.len(), 2, "only web instances get a port");
        let mut b = formation("b", 1);
        drop(assign(&paths, &range, &mut b, Assign::Keep).unwrap());
        save(&paths, &b);
        let all: BTreeSet<u16> = a.ports.values().chain(b.ports.values()).copied().collect();
        assert_eq!(all.len(), 3, "{a:?} {b:?}");
        // Scaled to 3 and back: web.1 and web.2 keep theirs.
        let mut a3 = formation("a", 3);
        drop(assign(&paths, &range, &mut a3, Assign::Keep).unwrap());
        assert_eq!(a3.ports["web.1"], a.ports["web.1"]);
        assert_eq!(a3.ports["web.2"], a.ports["web.2"]);
        assert!(!b.ports.values().any(|p| *p == a3.ports["web.3"]));
        // A full range is an error naming it.
        let tiny = PortRange {
            first: b.ports["web.1"],
            last: b.ports["web.1"],
        };
        let mut c = formation("c", 1);
        let error = assign(&paths, &tiny, &mut c, Assign::Keep)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("widen the range"), "{error}");
        // Fresh ports for an overlap: none that `a` holds, nor `b`'s.
        let mut fresh = formation("a", 2);
        drop(assign(&paths, &range, &mut fresh, Assign::Fresh).unwrap());
        for port in fresh.ports.values() {
            assert!(!a.ports.values().any(|p| p == port), "{fresh:?} {a:?}");
            assert!(!b.ports.values().any(|p| p == port), "{fresh:?} {b:?}");
        }
    }
}
