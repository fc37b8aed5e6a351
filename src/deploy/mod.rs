//! Taking a pushed commit live: the stage pipeline and its commit point ([`pipeline`]), and
//! putting run/ and data/ back when it fails or crashes ([`rollback`]).

pub mod outcome;
pub mod pipeline;
pub mod rollback;
