//! kiln: a git-push PaaS node. The binary in `main.rs` only calls [`run`]; everything else
//! lives here so that tests reach it.

pub fn run() -> i32 {
    0
}

pub mod redact;
pub mod stage;
