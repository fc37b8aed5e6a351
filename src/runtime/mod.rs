//! What makes a pushed tree an app that runs: buildpacks build it ([`buildpack`], kiln's own
//! shipped inside the binary by [`builtin`]) with a build cache per project ([`cache`]). It
//! sits below `deploy/`, which calls it from the build stage, and above `exec/`, whose
//! command runner and reporter it uses.

pub mod buildpack;
pub mod builtin;
pub mod cache;
