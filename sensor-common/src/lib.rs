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

/// Declares [`Kind`]: the one definition of every event kind (id, name, description).
macro_rules! kinds {
    ($($(#[$m:meta])* $v:ident = $id:literal, $name:literal, $desc:literal;)*) => {
        /// Every kind of event the sensor reports. The id is the ring record's `kind` for the
        /// kernel records (ids below [`kind::MAX`]; never renumber: recordings depend on them)
        /// and an agent-side id for the kinds the agent makes; the name is the JSON `kind`, the
        /// rules' `kind`, and the `kind`/`hook` metric label.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind {
            $($(#[$m])* $v = $id,)*
        }

        impl Kind {
            /// Every kind, in id order.
            pub const ALL: &'static [Kind] = &[$(Kind::$v,)*];

            pub const fn id(self) -> u32 {
                self as u32
            }

            pub const fn name(self) -> &'static str {
                match self {
                    $(Kind::$v => $name,)*
                }
            }

            pub const fn description(self) -> &'static str {
                match self {
                    $(Kind::$v => $desc,)*
                }
            }

            pub const fn from_id(id: u32) -> Option<Kind> {
                match id {
                    $($id => Some(Kind::$v),)*
                    _ => None,
                }
            }

            pub fn from_name(name: &str) -> Option<Kind> {
                match name {
                    $($name => Some(Kind::$v),)*
                    _ => None,
                }
            }

            /// Written by a kernel probe into the ring buffer (else made by the agent).
            pub const fn is_kernel_record(self) -> bool {
                (self as u32) < kind::MAX
            }
        }
    };
}

kinds! {
    Exec = 1, "exec", "a successful execve/execveat (sched_process_exec)";
    Fork = 2, "fork", "a new process (not a thread) was forked";
    Exit = 3, "exit", "the last thread of a process exited";
    Connect = 4, "connect", "an IPv4/IPv6 connect, by connect(2) or seen at SYN_SENT (io_uring)";
    Bind = 5, "bind", "an IPv4/IPv6 bind(2)";
    Listen = 6, "listen", "a TCP socket entered LISTEN";
    GpuIoctl = 7, "gpu_ioctl", "an ioctl on a GPU device file";
    GpuOpen = 8, "gpu_open", "an open of a GPU device file";
    NetPayload = 9, "net_payload", "the first data bytes sent on a new outbound TCP connection (any send path; seen at the socket)";
    /// A tracked TCP connection reached TCP_CLOSE (`NetEvent`; only `hdr.pid`, the owner
    /// recorded at connect, is meaningful in the header: closes may run in softirq context).
    TcpClose = 10, "tcp_close", "a TCP connection the sensor saw opening reached TCP_CLOSE";
    /// An IPv4/IPv6 socket was duplicated onto fd 0, 1 or 2 (`NetEvent`: `fd` is the target,
    /// the address is the socket's peer).
    SockDup = 11, "sock_dup", "a network socket was dup'd onto stdin/stdout/stderr (dup2/dup3)";
    /// Decoded from a `gpu_open` record of /dev/net/tun.
    TunOpen = 32, "tun_open", "an open of /dev/net/tun";
    GpuSessionStart = 33, "gpu_session_start", "derived: a process created its first GPU compute object";
    GpuSessionEnd = 34, "gpu_session_end", "derived: a process with a GPU compute session exited";
    GpuQuery = 35, "gpu_query", "derived: a process used GPU devices without computing (nvidia-smi) and exited";
    GpuUsage = 36, "gpu_usage", "derived: NVML utilisation joined to a running compute session";
    /// Decoded from a `net_payload` record sent to port 53.
    DnsQuery = 37, "dns_query", "a DNS query sent by a process (UDP or TCP port 53)";
}

/// Numeric ids of the kernel ring records (the eBPF side writes these).
pub mod kind {
    use super::Kind;
    pub const EXEC: u32 = Kind::Exec.id();
    pub const FORK: u32 = Kind::Fork.id();
    pub const EXIT: u32 = Kind::Exit.id();
    pub const CONNECT: u32 = Kind::Connect.id();
    pub const BIND: u32 = Kind::Bind.id();
    pub const LISTEN: u32 = Kind::Listen.id();
    pub const GPU_IOCTL: u32 = Kind::GpuIoctl.id();
    pub const GPU_OPEN: u32 = Kind::GpuOpen.id();
    pub const NET_PAYLOAD: u32 = Kind::NetPayload.id();
    pub const TCP_CLOSE: u32 = Kind::TcpClose.id();
    pub const SOCK_DUP: u32 = Kind::SockDup.id();
    /// One past the highest kernel record id: size of per-kind counter arrays.
    pub const MAX: u32 = 12;
}

/// Name of a kernel record kind id for counters (index 0 and unknown ids: "unknown").
pub const fn record_kind_name(id: u32) -> &'static str {
    match Kind::from_id(id) {
        Some(k) if k.is_kernel_record() => k.name(),
        _ => "unknown",
    }
}

const _: () = {
    // Kernel record ids are 1..MAX-1, contiguous; agent kinds are above.
    let mut i = 0;
    while i < Kind::ALL.len() {
        let k = Kind::ALL[i];
        assert!(k.is_kernel_record() == (i < (kind::MAX as usize - 1)));
        if k.is_kernel_record() {
            assert!(k.id() == i as u32 + 1);
        }
        i += 1;
    }
};

/// Declares a `#[repr(u32)]` enum with contiguous ids from 0, `ALL`, `COUNT`, `name()` and
/// `from_id()`; the ids are checked at compile time.
macro_rules! numbered {
    (
        $(#[$em:meta])* $enum:ident;
        $($(#[$m:meta])* $v:ident = $id:literal, $name:literal;)*
    ) => {
        $(#[$em])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $enum {
            $($(#[$m])* $v = $id,)*
        }

        impl $enum {
            /// Every value, in id order.
            pub const ALL: &'static [$enum] = &[$($enum::$v,)*];
            /// Number of values (ids are `0..COUNT`).
            pub const COUNT: usize = Self::ALL.len();

            pub const fn id(self) -> u32 {
                self as u32
            }

            /// The metric label / `loss` record key.
            pub const fn name(self) -> &'static str {
                match self {
                    $($enum::$v => $name,)*
                }
            }

            pub const fn from_id(id: u32) -> Option<$enum> {
                match id {
                    $($id => Some($enum::$v),)*
                    _ => None,
                }
            }
        }

        const _: () = {
            let mut i = 0;
            while i < $enum::ALL.len() {
                assert!($enum::ALL[i] as u32 == i as u32, "ids must be 0, 1, 2, …");
                i += 1;
            }
            // Fits in a register, so `Result<(), _>` is returned in one.
            assert!(size_of::<$enum>() == 4);
        };
    };
}

numbered! {
    /// Why a probe failed, or failed in part. Every failure is counted in the per-CPU
    /// `PROBE_ERRORS` map at [`probe_error_index`] (by [`Hook`]) and exported by the agent as
    /// `gpu_sensor_probe_errors_total{hook,error}`. A probe stops where it used to stop (no
    /// record) and otherwise still writes its record with the fallback value it always used
    /// (empty filename, zero flags, …): the count is what is new. One exception: a failed copy
    /// of the tracepoint record (or a field outside it) stops the probe, where it used to go on
    /// with zeros.
    ProbeError;
    /// The ring buffer had no room: the record was lost (also counted in `DROPS`, by kind, as
    /// `kernel_dropped` of the `loss` record).
    RingFull = 0, "ring_full";
    /// Reading kernel memory failed: the tracepoint record, a struct member or a kernel string
    /// (`bpf_probe_read_kernel*`), or a kernel pointer on the way was NULL.
    KernelRead = 1, "kernel_read";
    /// Reading user memory failed (a sockaddr, the argv block, an ioctl argument, an open path,
    /// a payload): a bad pointer of the traced program (the syscall fails with EFAULT too) or
    /// a page not yet faulted in.
    UserRead = 2, "user_read";
    /// An offset the agent left unresolved (`u32::MAX`), or a field outside the record copy
    /// (the agent checks this at load time, so it means a build mismatch).
    BadOffset = 3, "bad_offset";
    /// A map insert failed (hash map full): an in-flight syscall, a followed connection, a GPU
    /// process mark or an allow-list inheritance was lost.
    MapUpdate = 4, "map_update";
    /// A lookup that cannot miss did (a per-CPU scratch slot).
    MapLookup = 5, "map_lookup";
}

numbered! {
    /// Every attached program (one id each), for [`ProbeError`] counts. The name is the
    /// program's name in the object and the `hook` metric label.
    Hook;
    SchedProcessExec = 0, "sched_process_exec";
    SchedProcessFork = 1, "sched_process_fork";
    SchedProcessExit = 2, "sched_process_exit";
    SysExitConnect = 3, "sys_exit_connect";
    SysExitBind = 4, "sys_exit_bind";
    InetSockSetState = 5, "inet_sock_set_state";
    SysExitIoctl = 6, "sys_exit_ioctl";
    SysExitOpenat = 7, "sys_exit_openat";
    /// `cgroup_skb/egress` on the cgroup v2 root: first data of new TCP connections, DNS.
    SockEgress = 8, "sock_egress";
    SysExitDup2 = 9, "sys_exit_dup2";
    SysExitDup3 = 10, "sys_exit_dup3";
    /// open(2) and openat2(2) exits: the same device test as `sys_exit_openat`.
    SysExitOpen = 11, "sys_exit_open";
    SysExitOpenat2 = 12, "sys_exit_openat2";
}

impl Hook {
    /// What the program attaches to.
    pub const fn attach(self) -> Attach {
        match self {
            Hook::SchedProcessExec | Hook::SchedProcessFork | Hook::SchedProcessExit => {
                Attach::RawTracepoint(self.name())
            }
            Hook::InetSockSetState => Attach::Tracepoint("sock", self.name()),
            Hook::SockEgress => Attach::CgroupSkbEgress,
            _ => Attach::Tracepoint("syscalls", self.name()),
        }
    }
}

/// Where a [`Hook`]'s program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    RawTracepoint(&'static str),
    /// `(category, name)` under tracefs `events/`.
    Tracepoint(&'static str, &'static str),
    /// `cgroup_skb` egress on the cgroup v2 root (config `net.cgroup_path`).
    CgroupSkbEgress,
}

const _: () = assert!(ProbeError::COUNT == 6);
const _: () = assert!(Hook::COUNT == 13);

/// Entries of the `PROBE_ERRORS` map: one counter per (hook, error).
pub const PROBE_ERROR_ENTRIES: u32 = (Hook::COUNT * ProbeError::COUNT) as u32;

/// Index of the (hook, error) counter in the `PROBE_ERRORS` map.
#[inline(always)]
pub const fn probe_error_index(hook: Hook, error: ProbeError) -> u32 {
    hook as u32 * ProbeError::COUNT as u32 + error as u32
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
    /// Payload: sent by another task than the connection's owner, or outside process context
    /// (softirq); the header names the owner (recorded at the SYN) and its comm is empty.
    pub const PAYLOAD_OWNER: u32 = 1 << 9;
    /// Payload: a UDP datagram (DNS), not the first TCP segment.
    pub const PAYLOAD_UDP: u32 = 1 << 10;
    /// Exec: the executable has no link left (a memfd, or a deleted file): `i_nlink == 0`.
    pub const EXE_UNLINKED: u32 = 1 << 3;
    /// GPU ioctl: `NV_ESC_IOCTL_XFER_CMD` was unwrapped; `arg` holds the inner parameters.
    pub const GPU_XFER: u32 = 1 << 12;
    /// GPU ioctl/open: the device is a configured stand-in (tests), not a real GPU driver.
    pub const GPU_EMULATED: u32 = 1 << 13;
    /// GPU ioctl: the argument could not be read from user memory.
    pub const GPU_ARG_UNREADABLE: u32 = 1 << 14;
}

/// Bytes captured of the first data segment of a new outbound TCP connection (or of a DNS
/// datagram): a whole XMRig login with its `agent`, a TLS ClientHello's SNI, an HTTP request
/// line and Host, a DNS question with a 253-byte name.
pub const PAYLOAD_LEN: usize = 512;

/// Bytes of an ioctl argument captured for GPU ioctls.
pub const GPU_ARG_LEN: usize = 64;
/// Bytes of a device-file name captured for GPU opens (last two path components).
pub const GPU_NAME_LEN: usize = 32;

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
    /// Descriptors 0, 1, 2 at exec: bit `fd` set when it is a socket, bit `4 + fd` when it is
    /// an IPv4/IPv6 socket with a peer (connected TCP, or connected UDP), bit `8 + fd` when that
    /// is an outbound TCP connection the sensor followed from its connect (not an accepted one).
    pub stdio: u32,
    /// The peer of the lowest such inet descriptor (`family` 0 when none): AF_INET/AF_INET6,
    /// port in host order, address in network byte order (IPv4 in the first 4 bytes).
    pub peer_family: u16,
    pub peer_port: u16,
    pub peer_addr: [u8; 16],
    /// `socket->type` of that descriptor (SOCK_STREAM 1, SOCK_DGRAM 2).
    pub peer_sock_type: u16,
    pub _pad: [u8; 6],
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
    /// Connection id: the kernel `struct sock *` XOR a per-run random key (`ProgConfig::
    /// cookie_key`), so connect and close can be paired without exposing kernel addresses.
    /// 0 when unknown.
    pub cookie: u64,
    /// Local side of a TCP connect (as `addr`), read from the socket when connect(2) returns
    /// (the port is bound by then); zero when unknown (a failed connect, bind/listen).
    pub local_addr: [u8; 16],
    pub local_port: u16,
    pub _pad: [u16; 3],
}

/// The first data segment of a new outbound TCP connection, or a DNS datagram, as it leaves the
/// host (`cgroup_skb/egress`): whatever syscall sent it (write, writev, send*, sendmmsg,
/// io_uring, sendfile).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetPayloadEvent {
    pub hdr: EventHeader,
    /// Always -1: the packet carries no descriptor.
    pub fd: i32,
    /// Payload bytes in the segment/datagram.
    pub len: u32,
    pub family: u16,
    /// Destination port.
    pub port: u16,
    pub data_len: u32,
    /// Destination (as for `NetEvent::addr`).
    pub addr: [u8; 16],
    /// Source port and IP protocol (6 TCP, 17 UDP).
    pub local_port: u16,
    pub protocol: u16,
    pub _pad: u32,
    pub data: [u8; PAYLOAD_LEN],
}

/// An ioctl on a GPU device file (device test done in the kernel), with its result.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GpuIoctlEvent {
    pub hdr: EventHeader,
    /// Syscall return value.
    pub ret: i32,
    pub fd: i32,
    /// The ioctl request as passed to ioctl(2).
    pub cmd: u32,
    /// With `GPU_XFER`: the inner escape number of `NV_ESC_IOCTL_XFER_CMD`.
    pub inner_cmd: u32,
    /// The device file's real major/minor.
    pub major: u32,
    pub minor: u32,
    /// One of [`gpu::dev`].
    pub dev_kind: u32,
    /// Device minor as reported (differs from `minor` only for configured stand-ins).
    pub gpu_minor: u32,
    /// Decoded operation, see [`gpu::decode`].
    pub op: u32,
    /// hClass (RM_ALLOC), control command (RM_CONTROL), queue type, memory flags… or 0.
    pub object: u32,
    pub arg_len: u32,
    pub _pad: u32,
    pub arg: [u8; GPU_ARG_LEN],
}

/// A successful open of a GPU device file (or a failed open of a `/dev/nvidia*`, `/dev/kfd`,
/// `/dev/dri/*` path).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GpuOpenEvent {
    pub hdr: EventHeader,
    /// The new fd, or -errno.
    pub ret: i32,
    /// `file->f_flags` on success, the open flags on failure.
    pub flags: u32,
    pub major: u32,
    pub minor: u32,
    pub dev_kind: u32,
    pub gpu_minor: u32,
    /// Name of the opened dentry on success, the path given on failure; NUL-terminated.
    pub name: [u8; GPU_NAME_LEN],
    /// Name of the parent dentry on success (e.g. "dri", "nvidia-caps", "dev").
    pub parent: [u8; GPU_NAME_LEN],
}

/// Value of the GPU device map: what a (major, minor) is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuDev {
    /// One of [`gpu::dev`].
    pub kind: u32,
    /// `flags::GPU_EMULATED` for stand-ins.
    pub flags: u32,
    /// Minor number to report; `u32::MAX` = the real one.
    pub gpu_minor: u32,
    pub _pad: u32,
}

impl GpuDev {
    /// The minor to report for a device with real minor `minor`.
    #[inline(always)]
    pub fn reported_minor(&self, minor: u32) -> u32 {
        if self.gpu_minor == u32::MAX {
            minor
        } else {
            self.gpu_minor
        }
    }
}

/// GPU ioctl decoding shared by the eBPF program (which runs it on the captured argument) and
/// the agent's tests. Numbers and layouts: NVIDIA open-gpu-kernel-modules
/// `kernel-open/common/inc/nv-ioctl-numbers.h`, `src/common/sdk/nvidia/inc/nvos.h`,
/// `kernel-open/nvidia-uvm/uvm_ioctl.h`; Linux `include/uapi/linux/kfd_ioctl.h`,
/// `include/uapi/drm/amdgpu_drm.h` (see shared/reference/detection-signals.md §4).
pub mod gpu {
    /// Device kinds (values of [`super::GpuDev::kind`]).
    pub mod dev {
        /// `/dev/nvidiaN`, `/dev/nvidiactl` (minor 255), `/dev/nvidia-modeset` (254); major 195.
        pub const NVIDIA: u32 = 1;
        /// `/dev/nvidia-uvm` (minor 0), `/dev/nvidia-uvm-tools` (minor 1); dynamic major.
        pub const NVIDIA_UVM: u32 = 2;
        /// `/dev/nvidia-caps/nvidia-capN`; dynamic major.
        pub const NVIDIA_CAPS: u32 = 3;
        /// `/dev/nvidia-nvswitchN`, `/dev/nvidia-nvlink`; dynamic majors.
        pub const NVIDIA_FABRIC: u32 = 4;
        /// `/dev/kfd` (AMD ROCm compute); dynamic major.
        pub const KFD: u32 = 5;
        /// `/dev/dri/card*`, `/dev/dri/renderD*`; major 226.
        pub const DRM: u32 = 6;
        /// Not a GPU: `/dev/net/tun` (misc 10:200), watched for opens only (tunnels).
        pub const TUN: u32 = 7;
    }

    /// `_IOC` field extraction (include/uapi/asm-generic/ioctl.h: nr 8 bits, type 8, size 14,
    /// dir 2).
    pub const fn ioc_nr(cmd: u32) -> u32 {
        cmd & 0xff
    }
    pub const fn ioc_type(cmd: u32) -> u32 {
        (cmd >> 8) & 0xff
    }
    pub const fn ioc_size(cmd: u32) -> u32 {
        (cmd >> 16) & 0x3fff
    }
    pub const fn ioc_dir(cmd: u32) -> u32 {
        cmd >> 30
    }

    /// `NV_IOCTL_MAGIC` 'F'.
    pub const NV_IOCTL_MAGIC: u32 = 0x46;
    /// `NV_ESC_RM_FREE`, `NV_ESC_RM_CONTROL`, `NV_ESC_RM_ALLOC`, `NV_ESC_IOCTL_XFER_CMD`.
    pub const NV_ESC_RM_FREE: u32 = 0x29;
    pub const NV_ESC_RM_CONTROL: u32 = 0x2a;
    pub const NV_ESC_RM_ALLOC: u32 = 0x2b;
    pub const NV_ESC_IOCTL_XFER_CMD: u32 = 0xd3;
    /// `AMDKFD_IOCTL_BASE` 'K' and commands.
    pub const KFD_MAGIC: u32 = 0x4b;
    pub const KFD_CREATE_QUEUE: u32 = 0x02;
    pub const KFD_ACQUIRE_VM: u32 = 0x15;
    pub const KFD_ALLOC_MEMORY_OF_GPU: u32 = 0x16;
    /// `DRM_IOCTL_BASE` 'd', `DRM_COMMAND_BASE` 0x40, `DRM_AMDGPU_CS` 0x04.
    pub const DRM_MAGIC: u32 = 0x64;
    /// `NVKMS_IOCTL_MAGIC` 'm' (src/nvidia-modeset/interface/nvkms-ioctl.h, 550.x): requests on
    /// /dev/nvidia-modeset.
    pub const NVKMS_MAGIC: u32 = 0x6d;
    pub const DRM_AMDGPU_CS: u32 = 0x44;
    /// `UVM_INITIALIZE` (kernel-open/nvidia-uvm/uvm_linux_ioctl.h, 550.x): a raw request number,
    /// the first call of every UVM user.
    pub const UVM_INITIALIZE: u32 = 0x3000_0001;

    /// UVM's raw request numbers (uvm_ioctl.h, 550.x: `UVM_IOCTL_BASE(i)` is `i`, all below
    /// 2048) and `UVM_INITIALIZE`/`UVM_DEINITIALIZE` (0x3000_0001/2, uvm_linux_ioctl.h): no
    /// `_IOC` encoding, so type 0.
    pub const fn uvm_shape(cmd: u32) -> bool {
        cmd < 0x1000 || cmd & !0xf == 0x3000_0000
    }

    /// Whether an ioctl request has the shape of a GPU driver's: NVIDIA's `'F'` type, NVKMS's
    /// `'m'`, KFD's `'K'`, DRM's `'d'`, or UVM's raw numbers. Only such requests get the fd →
    /// device test, for any process: every other ioctl on the node costs one context load and
    /// a compare (so a request of another shape on a GPU fd, e.g. TCGETS from an isatty(3)
    /// check, is not reported).
    /// This also covers GPU fds obtained without an `openat(2)` the sensor saw (open(2),
    /// openat2(2), SCM_RIGHTS, pidfd_getfd(2), fds inherited from before the sensor started).
    /// Other drivers share these shapes (fbdev uses `'F'`, FIBMAP is 1): the device test decides.
    pub const fn gpu_ioctl_shape(cmd: u32) -> bool {
        let t = ioc_type(cmd);
        t == NV_IOCTL_MAGIC
            || t == NVKMS_MAGIC
            || t == KFD_MAGIC
            || t == DRM_MAGIC
            || uvm_shape(cmd)
    }

    /// Operation codes carried in `GpuIoctlEvent::op`: the family in the high byte, the
    /// family's own command number below.
    pub const OP_NV: u32 = 1 << 24;
    pub const OP_UVM: u32 = 2 << 24;
    pub const OP_KFD: u32 = 3 << 24;
    pub const OP_DRM: u32 = 4 << 24;
    pub const OP_OTHER: u32 = 0xff << 24;

    #[inline(always)]
    fn u32_at(a: &[u8; super::GPU_ARG_LEN], o: usize) -> u32 {
        u32::from_le_bytes([a[o], a[o + 1], a[o + 2], a[o + 3]])
    }

    /// Whether `cmd` on a `dev_kind` device is `NV_ESC_IOCTL_XFER_CMD` (whose argument is
    /// `nv_ioctl_xfer_t { u32 cmd; u32 size; u64 ptr; }`, nv-ioctl.h).
    #[inline(always)]
    pub fn is_nv_xfer(dev_kind: u32, cmd: u32) -> bool {
        dev_kind == dev::NVIDIA
            && ioc_type(cmd) == NV_IOCTL_MAGIC
            && ioc_nr(cmd) == NV_ESC_IOCTL_XFER_CMD
    }

    /// Decodes (op, object) from the request and the first bytes of the argument. `nv_nr` is
    /// the NVIDIA escape number to use (the inner one after an XFER unwrap).
    #[inline(always)]
    pub fn decode(
        dev_kind: u32,
        cmd: u32,
        nv_nr: u32,
        arg: &[u8; super::GPU_ARG_LEN],
    ) -> (u32, u32) {
        match dev_kind {
            dev::NVIDIA | dev::NVIDIA_CAPS | dev::NVIDIA_FABRIC => {
                if ioc_type(cmd) != NV_IOCTL_MAGIC {
                    return (OP_OTHER | (cmd & 0xffff), 0);
                }
                let object = match nv_nr {
                    // NVOS21/NVOS64: hClass at +12 (escape.c ct_asserts both layouts).
                    NV_ESC_RM_ALLOC => u32_at(arg, 12),
                    // NVOS54: cmd at +8.
                    NV_ESC_RM_CONTROL => u32_at(arg, 8),
                    // NVOS00: hObjectOld at +8.
                    NV_ESC_RM_FREE => u32_at(arg, 8),
                    _ => 0,
                };
                (OP_NV | (nv_nr & 0xff), object)
            }
            // UVM switches on the raw request value (uvm_ioctl.h: UVM_IOCTL_BASE(i) i).
            dev::NVIDIA_UVM => (OP_UVM | (cmd & 0xff_ffff), 0),
            dev::KFD => {
                if ioc_type(cmd) != KFD_MAGIC {
                    return (OP_OTHER | (cmd & 0xffff), 0);
                }
                let nr = ioc_nr(cmd);
                let object = match nr {
                    // kfd_ioctl_create_queue_args.queue_type at +40.
                    KFD_CREATE_QUEUE => u32_at(arg, 40),
                    // kfd_ioctl_acquire_vm_args.gpu_id at +4.
                    KFD_ACQUIRE_VM => u32_at(arg, 4),
                    // kfd_ioctl_alloc_memory_of_gpu_args.flags at +36.
                    KFD_ALLOC_MEMORY_OF_GPU => u32_at(arg, 36),
                    _ => 0,
                };
                (OP_KFD | nr, object)
            }
            dev::DRM => {
                if ioc_type(cmd) != DRM_MAGIC {
                    return (OP_OTHER | (cmd & 0xffff), 0);
                }
                let nr = ioc_nr(cmd);
                // drm_amdgpu_cs_in.ctx_id at +0.
                let object = if nr == DRM_AMDGPU_CS {
                    u32_at(arg, 0)
                } else {
                    0
                };
                (OP_DRM | nr, object)
            }
            _ => (OP_OTHER | (cmd & 0xffff), 0),
        }
    }
}

/// Bytes of a tracepoint record that a program copies with one helper call
/// (`task::record::<N>` in the eBPF crate) before picking fields out of the copy at their
/// tracefs offsets. The agent checks at load time that every field a program reads from a copy
/// lies inside it (and inside the record described by the tracefs format), see
/// [`OffsetSource`].
pub mod record_size {
    /// `sock/inet_sock_set_state` for SYN_SENT and LISTEN: up to `daddr_v6`.
    pub const INET_SOCK_SET_STATE: usize = 72;
    /// `sock/inet_sock_set_state` at TCP_CLOSE: `skaddr` only.
    pub const INET_SOCK_SET_STATE_CLOSE: usize = 16;
}

/// A tracepoint field: `(category, event, field)` of `events/<category>/<event>/format`.
pub type TpField = (&'static str, &'static str, &'static str);

/// How the programs read a tracepoint field: `size` bytes at the field's offset, out of each of
/// the record copies whose sizes are listed in `copies` (values of [`record_size`]), or straight
/// from the tracepoint context when `copies` is empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpRead {
    pub size: u32,
    pub copies: &'static [usize],
}

/// Where the agent takes one [`Offsets`] field from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetSource {
    /// Byte offset of member `.1` (a dotted path through named sub-structs; anonymous
    /// structs/unions are searched) in `struct .0`, from the kernel's BTF.
    Btf(&'static str, &'static str),
    /// Offset of one tracepoint field, from its tracefs format file.
    Tracefs(TpField, TpRead),
    /// One offset for a field that a program reads from several tracepoints (the fd of connect
    /// and bind, …): the programs hold a single offset, so every listed field must be at the same
    /// offset, or start-up fails.
    Shared(&'static [TpField], TpRead),
    /// 1 when raw tracepoint `.0` passes `.1` arguments (its BTF prototype), else 0.
    RawTpArgs(&'static str, usize),
}

impl OffsetSource {
    /// The value before resolution: `u32::MAX` ("unavailable") for offsets, 0 for flags.
    pub const fn unset(self) -> u32 {
        match self {
            OffsetSource::Btf(..) | OffsetSource::Tracefs(..) | OffsetSource::Shared(..) => {
                u32::MAX
            }
            OffsetSource::RawTpArgs(..) => 0,
        }
    }
}

/// One field of [`Offsets`]: its name, where it comes from, and its slot in the struct.
#[derive(Clone, Copy, Debug)]
pub struct OffsetField {
    pub name: &'static str,
    pub source: OffsetSource,
    pub slot: fn(&mut Offsets) -> &mut u32,
}

/// Declares [`Offsets`] (the struct, [`Offsets::UNSET`] and [`Offsets::FIELDS`]) from one list
/// of `name = source;`.
macro_rules! offsets {
    ($($(#[$m:meta])* $name:ident = $src:expr;)*) => {
        /// Kernel struct offsets and tracepoint field offsets, resolved by the agent at start-up
        /// from `/sys/kernel/btf/vmlinux` and tracefs `format` files (each field's source is in
        /// [`Offsets::FIELDS`]), and handed to the programs as a global. Nothing here is compiled
        /// in. An offset of `u32::MAX` is "unavailable".
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct Offsets {
            $($(#[$m])* pub $name: u32,)*
        }

        impl Offsets {
            pub const UNSET: Offsets = Offsets {
                $($name: OffsetSource::unset($src),)*
            };

            /// Every field, in declaration order, with its source.
            pub const FIELDS: &'static [OffsetField] = &[$(OffsetField {
                name: stringify!($name),
                source: $src,
                slot: {
                    fn slot(o: &mut Offsets) -> &mut u32 {
                        &mut o.$name
                    }
                    slot
                },
            },)*];
        }
    };
}

/// A field of `inet_sock_set_state` read out of the SYN_SENT/LISTEN copy.
const ISS_READ2: TpRead = TpRead {
    size: 2,
    copies: &[record_size::INET_SOCK_SET_STATE],
};
const ISS_READ4: TpRead = TpRead {
    size: 4,
    copies: &[record_size::INET_SOCK_SET_STATE],
};
const ISS_READ16: TpRead = TpRead {
    size: 16,
    copies: &[record_size::INET_SOCK_SET_STATE],
};
/// Fields read straight from the tracepoint context.
const CTX_READ4: TpRead = TpRead {
    size: 4,
    copies: &[],
};
const CTX_READ8: TpRead = TpRead {
    size: 8,
    copies: &[],
};
const ISS: &str = "inet_sock_set_state";

offsets! {
    // struct task_struct
    task_pid = OffsetSource::Btf("task_struct", "pid");
    task_tgid = OffsetSource::Btf("task_struct", "tgid");
    task_real_parent = OffsetSource::Btf("task_struct", "real_parent");
    task_mm = OffsetSource::Btf("task_struct", "mm");
    task_nsproxy = OffsetSource::Btf("task_struct", "nsproxy");
    task_files = OffsetSource::Btf("task_struct", "files");
    task_exit_code = OffsetSource::Btf("task_struct", "exit_code");
    /// `task->comm` (char[16]), `task->cred` (its `uid`, `gid`) and `task->cgroups->dfl_cgrp
    /// ->kn->id` (the cgroup v2 id): the event header is read with plain loads, where the
    /// helpers (`bpf_get_current_comm`, `_uid_gid`, `_cgroup_id`) cost a call each.
    task_comm = OffsetSource::Btf("task_struct", "comm");
    task_cred = OffsetSource::Btf("task_struct", "cred");
    cred_uid = OffsetSource::Btf("cred", "uid");
    cred_gid = OffsetSource::Btf("cred", "gid");
    task_cgroups = OffsetSource::Btf("task_struct", "cgroups");
    css_set_dfl_cgrp = OffsetSource::Btf("css_set", "dfl_cgrp");
    cgroup_kn = OffsetSource::Btf("cgroup", "kn");
    kernfs_node_id = OffsetSource::Btf("kernfs_node", "id");
    // struct mm_struct
    mm_arg_start = OffsetSource::Btf("mm_struct", "arg_start");
    mm_arg_end = OffsetSource::Btf("mm_struct", "arg_end");
    // struct nsproxy / mnt_namespace / ns_common
    nsproxy_mnt_ns = OffsetSource::Btf("nsproxy", "mnt_ns");
    mnt_ns_inum = OffsetSource::Btf("mnt_namespace", "ns.inum");
    // struct linux_binprm
    bprm_filename = OffsetSource::Btf("linux_binprm", "filename");
    /// `bprm->file`, the executable being run.
    bprm_file = OffsetSource::Btf("linux_binprm", "file");
    /// `inode->i_mode` (S_IFMT bits tell a socket), `inode->__i_nlink` (0: memfd or deleted).
    inode_mode = OffsetSource::Btf("inode", "i_mode");
    inode_nlink = OffsetSource::Btf("inode", "__i_nlink");
    // struct sock_common (the first member of struct sock): the peer of a socket
    skc_family = OffsetSource::Btf("sock_common", "skc_family");
    skc_daddr = OffsetSource::Btf("sock_common", "skc_daddr");
    skc_dport = OffsetSource::Btf("sock_common", "skc_dport");
    skc_v6_daddr = OffsetSource::Btf("sock_common", "skc_v6_daddr");
    /// The local side: port (host order, bound by connect(2) once it returns) and address.
    skc_num = OffsetSource::Btf("sock_common", "skc_num");
    skc_rcv_saddr = OffsetSource::Btf("sock_common", "skc_rcv_saddr");
    skc_v6_rcv_saddr = OffsetSource::Btf("sock_common", "skc_v6_rcv_saddr");
    // struct files_struct / fdtable
    files_fdt = OffsetSource::Btf("files_struct", "fdt");
    fdt_max_fds = OffsetSource::Btf("fdtable", "max_fds");
    fdt_fd = OffsetSource::Btf("fdtable", "fd");
    // struct file / inode / socket
    file_private_data = OffsetSource::Btf("file", "private_data");
    file_inode = OffsetSource::Btf("file", "f_inode");
    inode_rdev = OffsetSource::Btf("inode", "i_rdev");
    socket_type = OffsetSource::Btf("socket", "type");
    /// `socket->sk`
    socket_sk = OffsetSource::Btf("socket", "sk");
    file_f_flags = OffsetSource::Btf("file", "f_flags");
    /// `file->f_path.dentry`
    file_dentry = OffsetSource::Btf("file", "f_path.dentry");
    /// `dentry->d_name.name`
    dentry_name = OffsetSource::Btf("dentry", "d_name.name");
    dentry_parent = OffsetSource::Btf("dentry", "d_parent");
    /// 1 when `sched_process_exit` passes `bool group_dead` as its second argument.
    exit_has_group_dead = OffsetSource::RawTpArgs("sched_process_exit", 2);
    /// The registers a task saved at syscall entry (`struct pt_regs`, x86-64 names;
    /// arch/x86/include/asm/ptrace.h): arguments 0, 1, 2 and the syscall number. The syscall
    /// exit programs read a call's arguments there (`bpf_task_pt_regs`) instead of keeping them
    /// from an entry program. Another architecture has other member names: the sensor then
    /// refuses to load, naming the member.
    regs_arg0 = OffsetSource::Btf("pt_regs", "di");
    regs_arg1 = OffsetSource::Btf("pt_regs", "si");
    regs_arg2 = OffsetSource::Btf("pt_regs", "dx");
    regs_nr = OffsetSource::Btf("pt_regs", "orig_ax");
    /// sys_exit_*: `long ret` (one offset serves every sys_exit_* program; read from the context)
    tp_exit_ret = OffsetSource::Shared(
        &[
            ("syscalls", "sys_exit_connect", "ret"),
            ("syscalls", "sys_exit_bind", "ret"),
            ("syscalls", "sys_exit_ioctl", "ret"),
            ("syscalls", "sys_exit_openat", "ret"),
            ("syscalls", "sys_exit_dup2", "ret"),
            ("syscalls", "sys_exit_dup3", "ret"),
            ("syscalls", "sys_exit_open", "ret"),
            ("syscalls", "sys_exit_openat2", "ret"),
        ],
        CTX_READ8,
    );
    // sock/inet_sock_set_state
    /// Read from both copies (SYN_SENT/LISTEN and TCP_CLOSE).
    tp_iss_skaddr = OffsetSource::Tracefs(
        ("sock", ISS, "skaddr"),
        TpRead {
            size: 8,
            copies: &[
                record_size::INET_SOCK_SET_STATE,
                record_size::INET_SOCK_SET_STATE_CLOSE,
            ],
        },
    );
    /// Read from the context (it selects which copy is made).
    tp_iss_newstate = OffsetSource::Tracefs(("sock", ISS, "newstate"), CTX_READ4);
    tp_iss_sport = OffsetSource::Tracefs(("sock", ISS, "sport"), ISS_READ2);
    tp_iss_dport = OffsetSource::Tracefs(("sock", ISS, "dport"), ISS_READ2);
    tp_iss_family = OffsetSource::Tracefs(("sock", ISS, "family"), ISS_READ2);
    tp_iss_protocol = OffsetSource::Tracefs(("sock", ISS, "protocol"), ISS_READ2);
    tp_iss_saddr = OffsetSource::Tracefs(("sock", ISS, "saddr"), ISS_READ4);
    tp_iss_daddr = OffsetSource::Tracefs(("sock", ISS, "daddr"), ISS_READ4);
    tp_iss_saddr_v6 = OffsetSource::Tracefs(("sock", ISS, "saddr_v6"), ISS_READ16);
    tp_iss_daddr_v6 = OffsetSource::Tracefs(("sock", ISS, "daddr_v6"), ISS_READ16);
}

/// Run-time settings of the programs (a read-only global set at load time).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgConfig {
    pub offsets: Offsets,
    /// 1: report only thread groups in `TRACE_TGIDS` (and processes they fork); 0: everything
    /// not ignored.
    pub only_listed: u32,
    /// Submit with a consumer wakeup only when a record takes the bytes waiting in the ring
    /// past a multiple of this; other records are submitted with BPF_RB_NO_WAKEUP and the
    /// agent picks them up on its poll timer. One irq_work + epoll wakeup per this many bytes
    /// of backlog instead of one per event. 0: a wakeup per record.
    pub wakeup_bytes: u32,
    /// 1 when `IGNORE_CGROUPS` has entries: with it 0 the programs skip the cgroup-id helper
    /// and the lookup.
    pub ignore_cgroups: u32,
    pub _pad: u32,
    /// Random per run; see `NetEvent::cookie`.
    pub cookie_key: u64,
}

impl ProgConfig {
    pub const DEFAULT: ProgConfig = ProgConfig {
        offsets: Offsets::UNSET,
        only_listed: 0,
        wakeup_bytes: 0,
        ignore_cgroups: 0,
        _pad: 0,
        cookie_key: 0,
    };
}

/// Names of maps and programs, shared so neither side can drift.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const DROPS: &str = "DROPS";
    pub const PROBE_ERRORS: &str = "PROBE_ERRORS";
    pub const IGNORE_TGIDS: &str = "IGNORE_TGIDS";
    pub const IGNORE_CGROUPS: &str = "IGNORE_CGROUPS";
    pub const TRACE_TGIDS: &str = "TRACE_TGIDS";
    pub const CONFIG: &str = "CONFIG";
    pub const GPU_DEVS: &str = "GPU_DEVS";
    pub const GPU_TGIDS: &str = "GPU_TGIDS";
    pub const TRACKED_SOCKS: &str = "TRACKED_SOCKS";
    pub const FRESH_CONNS: &str = "FRESH_CONNS";
}

/// Key of the GPU device map: `major << 32 | minor`; minor `u32::MAX` matches every minor.
pub const fn gpu_dev_key(major: u32, minor: u32) -> u64 {
    ((major as u64) << 32) | minor as u64
}

/// `ret` of a syscall-exit record: `struct syscall_trace_exit { struct trace_entry ent; int nr;
/// long ret; }` (include/trace/syscall.h). Read with a direct context load; checked at start-up
/// (`tp_exit_ret`).
pub const TP_SYSCALL_EXIT_RET: u32 = 16;

/// connect(2)'s syscall number on x86-64 (arch/x86/entry/syscalls/syscall_64.tbl:
/// `42 common connect`): `inet_sock_set_state` compares it with the current task's
/// `regs_nr` to tell a SYN_SENT inside connect(2) (reported by `sys_exit_connect` with its
/// result) from one outside it (io_uring).
pub const NR_CONNECT: u64 = 42;

/// Largest capacity of the filter hash maps (the agent sizes them to what it puts in them, or
/// to this for TRACE_TGIDS, which the kernel grows with forks).
pub const FILTER_MAP_ENTRIES: u32 = 4096;

// --- compile-time layout checks -------------------------------------------------------------
/// Size of the header the kernel puts before each ring-buffer record (`BPF_RINGBUF_HDR_SZ`,
/// include/uapi/linux/bpf.h, checked against v6.18).
pub const RINGBUF_HDR_SIZE: usize = 8;

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// The largest record any probe writes to the ring buffer (an exec event).
pub const MAX_RECORD_SIZE: usize = max(
    max(
        max(size_of::<ExecEvent>(), size_of::<ForkEvent>()),
        max(size_of::<ExitEvent>(), size_of::<NetEvent>()),
    ),
    max(
        max(size_of::<NetPayloadEvent>(), size_of::<GpuIoctlEvent>()),
        size_of::<GpuOpenEvent>(),
    ),
);

/// Smallest ring buffer the agent accepts: a power of two that holds at least two of the
/// largest records with their headers (a smaller ring drops every exec while one is pending).
pub const MIN_RING_SIZE: usize = (2 * (MAX_RECORD_SIZE + RINGBUF_HDR_SIZE)).next_power_of_two();

const _: () = assert!(MAX_RECORD_SIZE == size_of::<ExecEvent>());
const _: () = assert!(MIN_RING_SIZE == 16384);
const _: () = assert!(size_of::<EventHeader>() == 64);
const _: () = assert!(offset_of!(EventHeader, kind) == 0);
const _: () = assert!(offset_of!(EventHeader, ts_ns) == 8);
const _: () = assert!(offset_of!(EventHeader, pid) == 16);
const _: () = assert!(offset_of!(EventHeader, cgroup_id) == 40);
const _: () = assert!(offset_of!(EventHeader, comm) == 48);
const _: () = assert!(size_of::<ExecEvent>() == 64 + 8 + 32 + FILENAME_MAX + ARGS_MAX);
const _: () = assert!(offset_of!(ExecEvent, peer_addr) == 80);
const _: () = assert!(offset_of!(ExecEvent, filename) == 104);
const _: () = assert!(offset_of!(ExecEvent, args) == 104 + FILENAME_MAX);
const _: () = assert!(size_of::<ForkEvent>() == 72);
const _: () = assert!(size_of::<ExitEvent>() == 72);
const _: () = assert!(size_of::<NetEvent>() == 128);
const _: () = assert!(offset_of!(NetEvent, local_addr) == 104);
const _: () = assert!(offset_of!(NetEvent, local_port) == 120);
const _: () = assert!(offset_of!(NetEvent, cookie) == 96);
const _: () = assert!(offset_of!(NetEvent, ret) == 64);
const _: () = assert!(offset_of!(NetEvent, family) == 72);
const _: () = assert!(offset_of!(NetEvent, addr) == 80);
const _: () = assert!(size_of::<Offsets>() == 58 * 4);
const _: () = assert!(Offsets::FIELDS.len() * 4 == size_of::<Offsets>());
const _: () = assert!(size_of::<ProgConfig>() == 58 * 4 + 24);
const _: () = assert!(offset_of!(ProgConfig, cookie_key) == 58 * 4 + 16);
const _: () = assert!(size_of::<NetPayloadEvent>() == 64 + 16 + 16 + 8 + PAYLOAD_LEN);
const _: () = assert!(offset_of!(NetPayloadEvent, data) == 104);
const _: () = assert!(size_of::<GpuIoctlEvent>() == 64 + 48 + GPU_ARG_LEN);
const _: () = assert!(offset_of!(GpuIoctlEvent, arg) == 112);
const _: () = assert!(size_of::<GpuOpenEvent>() == 64 + 24 + 2 * GPU_NAME_LEN);
const _: () = assert!(size_of::<GpuDev>() == 16);
const _: () = assert!(size_of::<GpuIoctlEvent>().is_multiple_of(8));
const _: () = assert!(size_of::<GpuOpenEvent>().is_multiple_of(8));
const _: () = assert!(size_of::<ExecEvent>().is_multiple_of(8));
const _: () = assert!(size_of::<NetEvent>().is_multiple_of(8));

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data: #[repr(C)], only integer fields and arrays, explicit padding
    // fields, no invalid bit patterns.
    unsafe impl aya::Pod for super::ProgConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Offsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GpuDev {}
}

#[cfg(test)]
mod tests {
    use super::gpu::*;
    use super::GPU_ARG_LEN;

    fn arg(words: &[(usize, u32)]) -> [u8; GPU_ARG_LEN] {
        let mut a = [0u8; GPU_ARG_LEN];
        for &(o, v) in words {
            a[o..o + 4].copy_from_slice(&v.to_le_bytes());
        }
        a
    }

    #[test]
    fn nvidia_alloc_control_and_others() {
        // RM_ALLOC NVOS64 (0xc030462b) of HOPPER_COMPUTE_A.
        let a = arg(&[(12, 0xcbc0)]);
        assert_eq!(
            decode(dev::NVIDIA, 0xc030462b, 0x2b, &a),
            (OP_NV | 0x2b, 0xcbc0)
        );
        // RM_CONTROL (0xc020462a) with cmd 0x2080014a at +8.
        let a = arg(&[(8, 0x2080014a)]);
        assert_eq!(
            decode(dev::NVIDIA, 0xc020462a, 0x2a, &a),
            (OP_NV | 0x2a, 0x2080014a)
        );
        // CHECK_VERSION_STR: no object.
        assert_eq!(decode(dev::NVIDIA, 0xc04846d2, 0xd2, &a), (OP_NV | 0xd2, 0));
        // A non-'F' request on an NVIDIA node is "other".
        assert_eq!(
            decode(dev::NVIDIA, 0x5401, 0x01, &a).0 >> 24,
            OP_OTHER >> 24
        );
        assert!(is_nv_xfer(dev::NVIDIA, 0xc01046d3));
        assert!(!is_nv_xfer(dev::NVIDIA_UVM, 0xc01046d3));
        assert!(!is_nv_xfer(dev::NVIDIA, 0xc01046d2));
        assert_eq!((ioc_dir(0xc030462b), ioc_size(0xc030462b)), (3, 0x30));
    }

    #[test]
    fn gpu_ioctl_shapes() {
        // RM_ALLOC, KFD CREATE_QUEUE, amdgpu CS, UVM_INITIALIZE: GPU-shaped.
        for cmd in [0xc030462b, 0xc0584b02, 0xc0186444, 0x30000001] {
            assert!(gpu_ioctl_shape(cmd), "{cmd:#x}");
        }
        // Every UVM request of the H100 recordings.
        for cmd in [
            0x17, 0x19, 0x1b, 0x21, 0x22, 0x25, 0x27, 0x41, 0x44, 0x48, 0x49, 0x4b, 0x30000002,
        ] {
            assert!(gpu_ioctl_shape(cmd), "{cmd:#x}");
        }
        // TCGETS, FIONREAD, TIOCGWINSZ, SIOCGIFINDEX, FS_IOC_GETFLAGS, FICLONE.
        for cmd in [0x5401, 0x541b, 0x5413, 0x8933, 0x80086601, 0x40049409] {
            assert!(!gpu_ioctl_shape(cmd), "{cmd:#x}");
        }
    }

    #[test]
    fn uvm_kfd_drm() {
        let z = [0u8; GPU_ARG_LEN];
        assert_eq!(
            decode(dev::NVIDIA_UVM, 0x30000001, 0, &z),
            (OP_UVM | 0x000001, 0)
        );
        assert_eq!(decode(dev::NVIDIA_UVM, 37, 0, &z), (OP_UVM | 37, 0));
        let a = arg(&[(40, 2)]);
        assert_eq!(decode(dev::KFD, 0xc0584b02, 0, &a), (OP_KFD | 2, 2));
        let a = arg(&[(4, 0x1234)]);
        assert_eq!(decode(dev::KFD, 0x40084b15, 0, &a), (OP_KFD | 0x15, 0x1234));
        let a = arg(&[(0, 7)]);
        assert_eq!(decode(dev::DRM, 0xc0186444, 0, &a), (OP_DRM | 0x44, 7));
        assert_eq!(decode(99, 0xc0186444, 0, &a).0 >> 24, OP_OTHER >> 24);
    }

    #[test]
    fn garbage_arguments_decode_without_panicking() {
        let mut a = [0u8; GPU_ARG_LEN];
        for (i, b) in a.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(151).wrapping_add(7);
        }
        for k in 0..8 {
            for cmd in [
                0u32,
                u32::MAX,
                0xc030462b,
                0x30000001,
                0xc0584b02,
                0xc0186444,
            ] {
                let _ = decode(k, cmd, cmd & 0xff, &a);
            }
        }
    }
}
