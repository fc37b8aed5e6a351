//! kiln: a git-push PaaS node. The binary in `main.rs` only calls [`run`]; everything else
//! lives here so that tests reach it.

pub mod bake;
pub mod unpack;

pub fn run() -> i32 {
    0
}
