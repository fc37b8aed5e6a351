//! The `PORT` of each web instance: given from node.yml's `supervisor.ports` range, node-wide
//! under one lock so that two projects never get the same port, and kept: a web instance keeps
//! its port across restarts, scales and deploys (the front proxy's upstreams stay put).

use std::collections::BTreeSet;
use std::fs::File;
use std::net::TcpListener;

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
    paths.ensure()?;
    let lock_path = paths.ports_lock();
    let file = open_lock(&lock_path)?;
    file.lock()
        .map_err(|e| SupervisorError::io("lock", &lock_path, e))?;
    let project = formation.project.clone();
    let mut taken: BTreeSet<u16> = BTreeSet::new();
    for other in paths.projects().into_iter().filter(|p| *p != project) {
        if let Ok(Some(state)) = ProjectState::load(paths, &other) {
            taken.extend(state.ports());
        }
    }
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
