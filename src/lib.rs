//! kiln: a git-push PaaS node. The binary in `main.rs` only calls [`run`]; everything else
//! lives here so that tests reach it.

pub fn run() -> i32 {
    0
}

pub mod config_error;
pub mod duration;
pub mod node_config;
pub mod project_config;
pub mod recipe;
pub mod settings;
