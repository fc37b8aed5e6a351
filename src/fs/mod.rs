//! File trees and repositories on disk: walking and digesting trees, syncing one onto another,
//! durable small writes, git's bare repos and checkouts, and the kiln binary to start again.

pub mod durable;
pub mod exe;
pub mod git;
pub mod sync;
pub mod tree;
