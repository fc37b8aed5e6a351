//! File trees and repositories on disk: walking and digesting trees, syncing one onto another,
//! durable small writes, and git's bare repos and checkouts.

pub mod durable;
pub mod git;
pub mod sync;
pub mod tree;
