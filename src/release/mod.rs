//! The release tree as an artifact: baked into a tarball with a manifest on staging, signed,
//! offered to production, pulled, verified and safely unpacked there.

pub mod bake;
pub mod fetch;
pub mod manifest;
pub mod publish;
pub mod s3;
pub mod signing;
pub mod source;
pub mod unpack;
