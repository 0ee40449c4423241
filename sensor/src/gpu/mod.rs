//! GPU telemetry: device identification, the class/command table, per-process compute sessions
//! and the NVML join.

pub mod classes;
pub mod devices;
pub mod inventory;
pub mod nvml;
pub mod session;
