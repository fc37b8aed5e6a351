//! What kiln.yml and node.yml say about the app's supervised processes (README.md, "Running
//! your app"): how many of each process type run, the resource limits the systemd backend
//! applies, and node-wide: which supervisor backend runs them, the port range web instances
//! get their `PORT` from, and how large an app log grows before it is rotated.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// The Procfile entry that is not a process type but the release-phase command, run in the
/// deploy stage (Heroku's name).
pub const RELEASE_ENTRY: &str = "release";

/// The process type that gets a `PORT` and the default HTTP check.
pub const WEB: &str = "web";

/// Heroku's rule for process type names: `[A-Za-z0-9_-]+`. They become file names, unit names
/// and `DYNO` values, so nothing else is allowed.
pub fn valid_type_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Why a process type name is refused, or None.
pub fn check_type_name(name: &str) -> Option<String> {
    if name == RELEASE_ENTRY {
        return Some(format!(
            "`{RELEASE_ENTRY}` is the release-phase command, not a process type: it runs once per deploy"
        ));
    }
    (!valid_type_name(name)).then(|| {
        format!(
            "invalid process type `{name}`: use 1 to 63 letters, digits, `_` or `-` (as in a Procfile)"
        )
    })
}

/// kiln.yml `processes:`: instances per process type, `{web: 2, worker: 1}`.
pub fn counts<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, u32>, D::Error> {
    let counts = BTreeMap::<String, u32>::deserialize(deserializer)?;
    for (name, count) in &counts {
        if let Some(reason) = check_type_name(name) {
            return Err(serde::de::Error::custom(reason));
        }
        if *count > MAX_INSTANCES {
            return Err(serde::de::Error::custom(format!(
                "`{name}: {count}` is more than {MAX_INSTANCES} instances of one process type"
            )));
        }
    }
    Ok(counts)
}

/// Most instances of one process type (a typo like `web: 1000` must not fork-bomb the node).
pub const MAX_INSTANCES: u32 = 100;

/// kiln.yml `limits:`, per process instance. The systemd backend sets them as `MemoryMax` and
/// `CPUQuota`; kiln's own supervisor does not enforce them (it says so at the deploy).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessLimits {
    /// Bytes (`512M`).
    #[serde(deserialize_with = "crate::config::size::deserialize_option")]
    pub memory: Option<u64>,
    /// Percent of one CPU (`50%`; `200%` is two CPUs).
    #[serde(deserialize_with = "cpu_percent")]
    pub cpu: Option<u32>,
}

impl ProcessLimits {
    pub fn is_empty(&self) -> bool {
        self.memory.is_none() && self.cpu.is_none()
    }
}

fn cpu_percent<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    let Some(text) = Option::<String>::deserialize(deserializer)? else {
        return Ok(None);
    };
    text.trim()
        .strip_suffix('%')
        .and_then(|n| n.trim().parse::<u32>().ok())
        .filter(|n| (1..=100_000).contains(n))
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid cpu limit `{text}`: expected a percentage of one CPU such as `50%` or `200%`"
            ))
        })
}

/// Which supervisor runs the processes (node.yml `supervisor.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// systemd when it runs as PID 1, else kiln's own.
    #[default]
    Auto,
    Kiln,
    Systemd,
}

impl BackendChoice {
    pub const ALL: [BackendChoice; 3] = [
        BackendChoice::Auto,
        BackendChoice::Kiln,
        BackendChoice::Systemd,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Kiln => "kiln",
            BackendChoice::Systemd => "systemd",
        }
    }
}

/// node.yml `supervisor:`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisorConfig {
    pub backend: BackendChoice,
    /// Where web instances' `PORT` comes from, node-wide. Default `20000-20999`.
    pub ports: PortRange,
    /// An app log file (one per instance, logs/app/) is rotated past this size; two rotated
    /// files are kept. Default 10M.
    #[serde(deserialize_with = "crate::config::size::deserialize")]
    pub app_log_size: u64,
    /// Where the systemd backend writes its units. Default `/etc/systemd/system`.
    pub unit_dir: PathBuf,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            backend: BackendChoice::Auto,
            ports: PortRange {
                first: 20000,
                last: 20999,
            },
            app_log_size: 10 << 20,
            unit_dir: PathBuf::from("/etc/systemd/system"),
        }
    }
}

/// `20000-20999`: both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn len(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl Default for PortRange {
    fn default() -> Self {
        SupervisorConfig::default().ports
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                "invalid port range `{text}`: expected `FIRST-LAST` between 1024 and 65535, e.g. `20000-20999`"
            )
        };
        let (first, last) = text.trim().split_once('-').ok_or_else(invalid)?;
        let first: u16 = first.trim().parse().map_err(|_| invalid())?;
        let last: u16 = last.trim().parse().map_err(|_| invalid())?;
        if first < 1024 || last < first {
            return Err(invalid());
        }
        Ok(PortRange { first, last })
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names() {
        for good in ["web", "worker", "clock_2", "a-b", "W"] {
            assert!(check_type_name(good).is_none(), "{good}");
        }
        for bad in ["", "web.1", "a b", "é", "release", "a/b"] {
            assert!(check_type_name(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn port_ranges() {
        assert_eq!(
            "20000-20999".parse::<PortRange>(),
            Ok(PortRange {
                first: 20000,
                last: 20999
            })
        );
        assert_eq!("3000-3000".parse::<PortRange>().map(|r| r.len()), Ok(1));
        for bad in ["80-90", "3000", "3001-3000", "a-b", "3000-70000"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }
}
