//! A push arrives: `kiln init` makes the bare repos and installs the hooks, the hooks call
//! `kiln hook`, which checks a push before the branch moves and deploys it after.

pub mod hook;
pub mod init;
