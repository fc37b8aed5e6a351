//! Running the project's commands and telling the pusher: the stage command runner
//! ([`stage`]), secret masking ([`redact`]) and the output to the pusher and the logs
//! ([`report`]).

pub mod redact;
pub mod report;
pub mod stage;
