//! kiln embeds its own buildpacks (`buildpacks/`, see src/runtime/builtin.rs); `include_dir!`
//! does not see a file added there, so any change in the folder rebuilds the crate.

fn main() {
    println!("cargo:rerun-if-changed=buildpacks");
}
