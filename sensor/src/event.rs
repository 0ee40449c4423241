//! Decoded events: what the pipeline, the rules and the JSON stream work with. The JSON field
//! names are the documented schema (README "Event schema").

use serde::{Deserialize, Serialize};

/// One kernel event after decoding and enrichment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Wall-clock time (RFC 3339, UTC, ns precision).
    pub ts: String,
    /// CLOCK_BOOTTIME nanoseconds from the kernel (monotonic; orders events).
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub mntns: u32,
    /// The process's executable as known to the process table (exec filename or /proc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(flatten)]
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    Exec(Exec),
    Fork(Fork),
    Exit(Exit),
    Connect(Net),
    Bind(Net),
    Listen(Net),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exec {
    /// The path given to execve (`bprm->filename`).
    pub filename: String,
    pub argv: Vec<String>,
    /// The argv block was longer than the kernel-side capture; `argv` holds its first part and
    /// its last element may be cut.
    pub args_truncated: bool,
    /// Size in bytes of the whole argv block of the new image.
    pub args_size: u32,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub filename_truncated: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub args_unreadable: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fork {
    pub child_pid: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exit {
    /// Raw wait(2) status.
    pub exit_code: i32,
    /// Exit status when the process exited normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    /// Terminating signal number when it was killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

/// connect / bind / listen. For connect the address is the destination; for bind and listen it
/// is the local address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Net {
    /// "inet" or "inet6".
    pub family: String,
    /// "stream", "dgram", "raw", … or "unknown".
    pub sock_type: String,
    /// "tcp", "udp", … when the kernel hook knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_port: Option<u16>,
    /// The socket fd; absent when the hook does not know it (io_uring, listen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
    /// "ok", "in_progress" (non-blocking connect, EINPROGRESS), "error", or "unknown" when the
    /// operation did not go through the syscall (io_uring).
    pub result: String,
    /// Negative errno on error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// "syscall" or "sock_state" (seen by `inet_sock_set_state` only).
    pub via: String,
}
