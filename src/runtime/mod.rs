//! What makes a pushed tree an app that runs, and runs it (README.md, "Buildpacks" and
//! "Running your app"): buildpacks build it ([`buildpack`], kiln's own shipped inside the binary
//! by [`builtin`]) with a build cache per project ([`cache`]); the process types a release
//! defines (its Procfile over what the buildpacks recorded), the formation of a project's
//! processes, their supervision by kiln's own supervisor or systemd, their logs in logs/app/,
//! whether a deploy's processes came up and where they listen ([`listeners`]), and `kiln stop`'s mark on a project ([`stopped`]).
//!
//! Below `deploy/`, which calls it from the build and deploy stages, and below `transaction/`,
//! whose journal keeps the formation an undo starts again; above `exec/`, whose command runner,
//! reporter and redactor it uses.

pub mod applog;
pub mod buildpack;
pub mod builtin;
pub mod cache;
pub mod formation;
pub mod listeners;
pub mod procfile;
pub mod readiness;
pub mod stopped;
pub mod supervisor;
pub mod systemd;
