//! The sensor as a library: the binary (`src/main.rs`) is its command line, and the
//! integration tests deserialize the sensor's output into these types.
//!
//! Data path, one module per step: [`hook`] (load + attach the eBPF programs) → [`ring`] (BPF
//! ring buffer → bounded queue) → [`decode`] (records → typed [`event`]s; [`proto`] reads captured first bytes) → [`context`]
//! (process table, containers, pods, workload) → [`pipeline`] (GPU sessions, [`rules`], [`incidents`]) → [`alerting`]
//! (sinks), [`output`] (JSON lines), [`export`] (rotating file, OTLP), [`metrics`]. [`run`] starts them ([`live`] is the live loop) under [`health`]'s
//! supervision; [`config`] is the TOML configuration; [`replay`] runs recordings offline.

pub mod alerting;
pub mod config;
pub mod context;
pub mod decode;
pub mod event;
pub mod export;
pub mod gpu;
pub mod health;
pub mod hook;
pub mod incidents;
pub mod live;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod proto;
pub mod replay;
pub mod ring;
pub mod rules;
pub mod run;

/// Lower-case hex of `b` (payloads, GPU ioctl arguments, fingerprints, signatures).
pub fn hex(b: &[u8]) -> String {
    hex::encode(b)
}
