//! Going live safely: one command at a time per project ([`lock`]), the journal written
//! before each change ([`journal`]), the data/ snapshot ([`backup`]), the run/ exchange
//! ([`switch`]) and the release log whose record is the commit point ([`release_log`]).

pub mod backup;
pub mod journal;
pub mod lock;
pub mod release_log;
pub mod switch;
