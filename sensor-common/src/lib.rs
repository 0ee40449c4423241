//! Kernel ↔ user types shared by the eBPF programs (`sensor-ebpf`) and the agent (`sensor`).
//!
//! Every record written to the ring buffer starts with [`EventHeader`]; its `kind` field holds one
//! of the fixed ids in [`kind`] and selects the payload struct that follows. All structs are
//! `#[repr(C)]`, 8-byte aligned (the BPF ring buffer reserves on 8-byte boundaries) and their sizes
//! and field offsets are asserted at compile time so that a change on one side that the other side
//! does not see is a build failure, not a silent mis-decode.
#![no_std]

use core::mem::{offset_of, size_of};

/// `TASK_COMM_LEN` (include/linux/sched.h).
pub const COMM_LEN: usize = 16;
/// Bytes of the argv block (`mm->arg_start..arg_end`) copied at exec time.
pub const ARGS_MAX: usize = 4096;
/// Bytes of `bprm->filename` copied at exec time.
pub const FILENAME_MAX: usize = 256;

/// Fixed numeric event kind ids. Never renumber: recorded streams and the agent depend on them.
pub mod kind {
    pub const EXEC: u32 = 1;
    pub const FORK: u32 = 2;
    pub const EXIT: u32 = 3;
    pub const CONNECT: u32 = 4;
    pub const BIND: u32 = 5;
    pub const LISTEN: u32 = 6;
    /// One past the highest kind id: size of per-kind counter arrays.
    pub const MAX: u32 = 7;
}

/// Bits of [`EventHeader::flags`].
pub mod flags {
    /// Exec: the argv block was longer than [`crate::ARGS_MAX`]; `args` holds its first part.
    pub const ARGS_TRUNCATED: u32 = 1 << 0;
    /// Exec: `bprm->filename` was longer than [`crate::FILENAME_MAX`].
    pub const FILENAME_TRUNCATED: u32 = 1 << 1;
    /// Exec: reading the argv block from user memory failed; `args` is empty.
    pub const ARGS_UNREADABLE: u32 = 1 << 2;
    /// Network: seen by `sock/inet_sock_set_state` outside a connect(2)/listen(2) syscall (for
    /// example a connect submitted through io_uring); `ret` and `fd` are not known.
    pub const NET_NO_SYSCALL: u32 = 1 << 8;
}

/// Common header of every ring-buffer record. 64 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u32,
    pub flags: u32,
    /// `bpf_ktime_get_boot_ns()` (CLOCK_BOOTTIME) when the event was produced.
    pub ts_ns: u64,
    /// Thread-group id (the user-visible pid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Thread-group id of `real_parent`.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Inode number of the mount namespace (`nsproxy->mnt_ns->ns.inum`).
    pub mntns: u32,
    /// `bpf_get_current_cgroup_id()` (cgroup v2 id; 1 where v2 is only the hybrid root).
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

/// `sched_process_exec`: a successful execve/execveat.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    pub hdr: EventHeader,
    /// Bytes of `args` that are valid.
    pub args_len: u32,
    /// Full size of the argv block in the new image (`arg_end - arg_start`).
    pub args_total: u32,
    /// `bprm->filename`, NUL-terminated.
    pub filename: [u8; FILENAME_MAX],
    /// NUL-separated argv strings as laid out on the new stack.
    pub args: [u8; ARGS_MAX],
}

/// `sched_process_fork` for a new process (threads are not reported). The header describes the
/// parent (the current task).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ForkEvent {
    pub hdr: EventHeader,
    pub child_pid: u32,
    pub _pad: u32,
}

/// `sched_process_exit` of the last thread of a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExitEvent {
    pub hdr: EventHeader,
    /// `task->exit_code` (wait(2) status encoding).
    pub exit_code: i32,
    pub _pad: u32,
}

/// connect / bind / listen on an AF_INET or AF_INET6 socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NetEvent {
    pub hdr: EventHeader,
    /// Syscall return value (0, -errno); 0 with `NET_NO_SYSCALL`.
    pub ret: i32,
    /// The socket fd, -1 when not known.
    pub fd: i32,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    /// Port in host byte order (destination for connect, local for bind/listen).
    pub port: u16,
    /// `struct socket::type` (SOCK_STREAM 1, SOCK_DGRAM 2, …), 0 when unknown.
    pub sock_type: u16,
    /// IPPROTO_* when known (from `inet_sock_set_state`), else 0.
    pub protocol: u16,
    /// IPv4 address in the first 4 bytes, or the IPv6 address; network byte order.
    pub addr: [u8; 16],
}

/// Kernel struct offsets and tracepoint field offsets, resolved by the agent at start-up from
/// `/sys/kernel/btf/vmlinux` and tracefs `format` files, and handed to the programs as a global.
/// Nothing here is compiled in. An offset of `u32::MAX` is "unavailable".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    // struct task_struct
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_real_parent: u32,
    pub task_mm: u32,
    pub task_nsproxy: u32,
    pub task_files: u32,
    pub task_exit_code: u32,
    // struct mm_struct
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    // struct nsproxy / mnt_namespace / ns_common
    pub nsproxy_mnt_ns: u32,
    pub mnt_ns_inum: u32,
    // struct linux_binprm
    pub bprm_filename: u32,
    // struct files_struct / fdtable
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    // struct file / inode / socket
    pub file_private_data: u32,
    pub file_inode: u32,
    pub inode_rdev: u32,
    pub socket_type: u32,
    /// 1 when `sched_process_exit` passes `bool group_dead` as its second argument.
    pub exit_has_group_dead: u32,
    // sys_enter_connect / sys_enter_bind: fd, sockaddr pointer, addrlen
    pub tp_sockaddr_fd: u32,
    pub tp_sockaddr_ptr: u32,
    pub tp_sockaddr_len: u32,
    /// sys_exit_*: `long ret`
    pub tp_exit_ret: u32,
    // sock/inet_sock_set_state
    pub tp_iss_newstate: u32,
    pub tp_iss_sport: u32,
    pub tp_iss_dport: u32,
    pub tp_iss_family: u32,
    pub tp_iss_protocol: u32,
    pub tp_iss_saddr: u32,
    pub tp_iss_daddr: u32,
    pub tp_iss_saddr_v6: u32,
    pub tp_iss_daddr_v6: u32,
    pub _pad: u32,
}

impl Offsets {
    pub const UNSET: Offsets = Offsets {
        task_pid: u32::MAX,
        task_tgid: u32::MAX,
        task_real_parent: u32::MAX,
        task_mm: u32::MAX,
        task_nsproxy: u32::MAX,
        task_files: u32::MAX,
        task_exit_code: u32::MAX,
        mm_arg_start: u32::MAX,
        mm_arg_end: u32::MAX,
        nsproxy_mnt_ns: u32::MAX,
        mnt_ns_inum: u32::MAX,
        bprm_filename: u32::MAX,
        files_fdt: u32::MAX,
        fdt_max_fds: u32::MAX,
        fdt_fd: u32::MAX,
        file_private_data: u32::MAX,
        file_inode: u32::MAX,
        inode_rdev: u32::MAX,
        socket_type: u32::MAX,
        exit_has_group_dead: 0,
        tp_sockaddr_fd: u32::MAX,
        tp_sockaddr_ptr: u32::MAX,
        tp_sockaddr_len: u32::MAX,
        tp_exit_ret: u32::MAX,
        tp_iss_newstate: u32::MAX,
        tp_iss_sport: u32::MAX,
        tp_iss_dport: u32::MAX,
        tp_iss_family: u32::MAX,
        tp_iss_protocol: u32::MAX,
        tp_iss_saddr: u32::MAX,
        tp_iss_daddr: u32::MAX,
        tp_iss_saddr_v6: u32::MAX,
        tp_iss_daddr_v6: u32::MAX,
        _pad: 0,
    };
}

/// Run-time settings of the programs (a read-only global set at load time).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgConfig {
    pub offsets: Offsets,
    /// 1: report only thread groups in `TRACE_TGIDS` (and processes they fork); 0: everything
    /// not ignored.
    pub only_listed: u32,
    pub _pad: u32,
}

impl ProgConfig {
    pub const DEFAULT: ProgConfig = ProgConfig {
        offsets: Offsets::UNSET,
        only_listed: 0,
        _pad: 0,
    };
}

/// Names of maps and programs, shared so neither side can drift.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const DROPS: &str = "DROPS";
    pub const IGNORE_TGIDS: &str = "IGNORE_TGIDS";
    pub const IGNORE_CGROUPS: &str = "IGNORE_CGROUPS";
    pub const TRACE_TGIDS: &str = "TRACE_TGIDS";
    pub const CONFIG: &str = "CONFIG";
}

/// Capacity of the filter hash maps.
pub const FILTER_MAP_ENTRIES: u32 = 4096;

// --- compile-time layout checks -------------------------------------------------------------
const _: () = assert!(size_of::<EventHeader>() == 64);
const _: () = assert!(offset_of!(EventHeader, kind) == 0);
const _: () = assert!(offset_of!(EventHeader, ts_ns) == 8);
const _: () = assert!(offset_of!(EventHeader, pid) == 16);
const _: () = assert!(offset_of!(EventHeader, cgroup_id) == 40);
const _: () = assert!(offset_of!(EventHeader, comm) == 48);
const _: () = assert!(size_of::<ExecEvent>() == 64 + 8 + FILENAME_MAX + ARGS_MAX);
const _: () = assert!(offset_of!(ExecEvent, filename) == 72);
const _: () = assert!(offset_of!(ExecEvent, args) == 72 + FILENAME_MAX);
const _: () = assert!(size_of::<ForkEvent>() == 72);
const _: () = assert!(size_of::<ExitEvent>() == 72);
const _: () = assert!(size_of::<NetEvent>() == 96);
const _: () = assert!(offset_of!(NetEvent, ret) == 64);
const _: () = assert!(offset_of!(NetEvent, family) == 72);
const _: () = assert!(offset_of!(NetEvent, addr) == 80);
const _: () = assert!(size_of::<Offsets>() == 34 * 4);
const _: () = assert!(size_of::<ProgConfig>() == 34 * 4 + 8);
const _: () = assert!(size_of::<ExecEvent>().is_multiple_of(8));
const _: () = assert!(size_of::<NetEvent>().is_multiple_of(8));

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data: #[repr(C)], only integer fields and arrays, explicit padding
    // fields, no invalid bit patterns.
    unsafe impl aya::Pod for super::ProgConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Offsets {}
}
