//! The app at run time (README.md, "Running your app"): the process types a release defines
//! (its Procfile over what the buildpacks recorded), the formation of a project's processes,
//! their supervision by kiln's own supervisor or systemd, their logs in logs/app/, the ports of
//! the web instances, and whether a deploy's processes came up.
//!
//! Below `deploy/`, which takes processes down and up around the switch, and above `exec/`,
//! whose redactor masks the pillar's secrets in the app logs.

pub mod applog;
pub mod formation;
pub mod procfile;
pub mod readiness;
pub mod supervisor;
pub mod systemd;
