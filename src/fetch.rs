//! Final mode: production pulls the release tarball staging baked for a commit, verifies it
//! and unpacks it into deploy/<release>. Never builds.

use git2::Oid;

use crate::error::Error;
use crate::project::{Node, Project};
use crate::report::Reporter;

pub fn fetch_release(
    _node: &Node,
    project: &Project,
    commit: Oid,
    _release: &str,
    _out: &mut Reporter,
) -> Result<(), Error> {
    Err(Error::Refused {
        message: format!(
            "no release of {commit} at {}: final mode cannot pull releases in this version",
            project.config.source.as_deref().unwrap_or("(no source)")
        ),
    })
}
