//! Process and (later) pod context attached to events.

pub mod process;
