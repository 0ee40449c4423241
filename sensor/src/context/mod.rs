//! Process and (later) pod context attached to events.

pub mod container;
pub mod kube;
pub mod process;
pub mod ssh_config;
pub mod workload;
