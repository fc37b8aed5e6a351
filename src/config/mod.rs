//! What the node, the project and the push say: the recipe (kiln.yml), node.yml and
//! project.yml, the pillar and the merged settings, the layout of a project on disk, and the
//! strict YAML parser they share.

pub mod buildpack_ref;
pub mod config_error;
pub mod duration;
pub mod layout;
pub mod node_config;
pub mod notify_config;
pub mod pillar;
pub mod processes;
pub mod project;
pub mod project_config;
pub mod proxy_config;
pub mod recipe;
pub mod settings;
pub mod size;
