//! Decoded events: what the pipeline, the rules and the JSON stream work with. The JSON field
//! names are the documented schema (README "Event schema").

use std::net::IpAddr;

pub use sensor_common::Kind;
use serde::{Deserialize, Serialize};

mod parse;

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
    /// Container/pod identity of the cgroup, when the process runs in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
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
    /// A TCP connection the sensor saw being opened reached TCP_CLOSE.
    TcpClose(Net),
    /// First data segment of a new outbound TCP connection, with what it says.
    NetPayload(NetPayload),
    /// An IP socket was dup'd onto fd 0, 1 or 2 (`fd` is the target, `dst_*` the peer).
    SockDup(Net),
    GpuIoctl(GpuIoctl),
    GpuOpen(GpuOpen),
    /// An open of /dev/net/tun (same fields as `gpu_open`, `device` = "tun").
    TunOpen(GpuOpen),
    /// Derived: the process created its first compute channel/engine object.
    GpuSessionStart(GpuSession),
    /// Derived: a process with a compute session exited.
    GpuSessionEnd(GpuSession),
    /// Derived: a process that used GPU devices without ever computing (nvidia-smi) exited.
    GpuQuery(GpuSession),
    /// Derived: NVML utilisation joined to a running compute session.
    GpuUsage(GpuUsage),
    /// A DNS query (decoded from a payload sent to port 53).
    DnsQuery(DnsQuery),
}

impl Body {
    /// The event's kind (its name is the JSON `kind` tag; a test checks they agree).
    pub fn kind(&self) -> Kind {
        match self {
            Body::Exec(_) => Kind::Exec,
            Body::Fork(_) => Kind::Fork,
            Body::Exit(_) => Kind::Exit,
            Body::Connect(_) => Kind::Connect,
            Body::Bind(_) => Kind::Bind,
            Body::Listen(_) => Kind::Listen,
            Body::TcpClose(_) => Kind::TcpClose,
            Body::NetPayload(_) => Kind::NetPayload,
            Body::GpuIoctl(_) => Kind::GpuIoctl,
            Body::GpuOpen(_) => Kind::GpuOpen,
            Body::TunOpen(_) => Kind::TunOpen,
            Body::GpuSessionStart(_) => Kind::GpuSessionStart,
            Body::GpuSessionEnd(_) => Kind::GpuSessionEnd,
            Body::GpuQuery(_) => Kind::GpuQuery,
            Body::GpuUsage(_) => Kind::GpuUsage,
            Body::SockDup(_) => Kind::SockDup,
            Body::DnsQuery(_) => Kind::DnsQuery,
        }
    }
}

impl Event {
    /// Parses one JSON event (a line of the sensor's output) in one pass ([`parse`]); a line
    /// in another field order, or one that does not parse, goes to the derived deserializer,
    /// which accepts any order and words the errors. Both accept the same events (a test
    /// checks).
    pub fn from_json(line: &str) -> Result<Event, serde_json::Error> {
        Self::from_json_fast(line).or_else(|_| serde_json::from_str(line))
    }

    fn from_json_fast(line: &str) -> Result<Event, serde_json::Error> {
        parse::event(line)
    }
}

/// Container/pod identity of a cgroup (parsed from its path by `context::container`, pod
/// metadata from the Kubernetes API).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Container {
    /// cgroup path below the cgroup2 root.
    pub cgroup: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// From the Kubernetes API (when available).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Configured annotations (`context.episode_annotations`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
    /// The container's name and image in the pod (matched by runtime id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The pod's owning workload (Deployment, Job, StatefulSet, PyTorchJob, RayCluster, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
}

/// A pod's owner: `kind` and `name` of its controller (a ReplicaSet made by a Deployment is
/// reported as the Deployment).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    pub kind: String,
    pub name: String,
}

/// Declares a closed set of values that serialise as fixed strings.
macro_rules! names {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $v,)*
        }

        impl $name {
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $s,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names! {
    /// Address family (include/linux/socket.h: AF_INET 2, AF_INET6 10).
    Family { Inet = "inet", Inet6 = "inet6", Other = "other", }
}

names! {
    /// Socket type (include/linux/net.h, enum sock_type).
    SockType {
        Stream = "stream",
        Dgram = "dgram",
        Raw = "raw",
        Rdm = "rdm",
        Seqpacket = "seqpacket",
        Dccp = "dccp",
        Packet = "packet",
        Unknown = "unknown",
    }
}

names! {
    /// How an operation ended.
    Outcome {
        Ok = "ok",
        /// A non-blocking connect that returned EINPROGRESS.
        InProgress = "in_progress",
        Error = "error",
        /// The operation did not go through the syscall (io_uring): no return value.
        Unknown = "unknown",
        /// `tcp_close`: the connection reached TCP_CLOSE.
        Closed = "closed",
    }
}

names! {
    /// Transport protocol of a captured payload.
    Transport { Tcp = "tcp", Udp = "udp", }
}

names! {
    /// The application protocol a first segment speaks (`proto.rs`).
    AppProto {
        Ssh = "ssh",
        Tls = "tls",
        Http = "http",
        /// Stratum or another mining JSON-RPC (XMRig `login` with an agent, getwork proxies).
        Stratum = "stratum",
        /// JSON-RPC that is not a mining protocol.
        JsonRpc = "json_rpc",
        Unknown = "unknown",
    }
}

// `names!` fixes the derive list, so the default is written out.
#[allow(clippy::derivable_impls)]
impl Default for AppProto {
    fn default() -> Self {
        AppProto::Unknown
    }
}

names! {
    /// Where a network event was seen.
    Via {
        Syscall = "syscall",
        /// `sock/inet_sock_set_state` (a TCP connect outside connect(2), or a close).
        SockState = "sock_state",
    }
}

names! {
    /// The kind of device file a GPU/TUN event is about (`sensor_common::gpu::dev`).
    Device {
        Nvidia = "nvidia",
        NvidiaUvm = "nvidia-uvm",
        NvidiaCaps = "nvidia-caps",
        NvidiaFabric = "nvidia-fabric",
        Kfd = "kfd",
        Drm = "drm",
        Tun = "tun",
        Unknown = "unknown",
    }
}

impl Device {
    /// The GPU kinds a configured stand-in device may take (not `tun`, not `unknown`).
    pub const GPU: [Device; 6] = [
        Device::Nvidia,
        Device::NvidiaUvm,
        Device::NvidiaCaps,
        Device::NvidiaFabric,
        Device::Kfd,
        Device::Drm,
    ];

    /// The kernel's device-kind id (`sensor_common::gpu::dev`); 0 for `unknown`.
    pub fn id(self) -> u32 {
        use sensor_common::gpu::dev;
        match self {
            Device::Nvidia => dev::NVIDIA,
            Device::NvidiaUvm => dev::NVIDIA_UVM,
            Device::NvidiaCaps => dev::NVIDIA_CAPS,
            Device::NvidiaFabric => dev::NVIDIA_FABRIC,
            Device::Kfd => dev::KFD,
            Device::Drm => dev::DRM,
            Device::Tun => dev::TUN,
            Device::Unknown => 0,
        }
    }

    /// From the kernel's device-kind id.
    pub fn from_id(kind: u32) -> Device {
        use sensor_common::gpu::dev;
        match kind {
            dev::NVIDIA => Device::Nvidia,
            dev::NVIDIA_UVM => Device::NvidiaUvm,
            dev::NVIDIA_CAPS => Device::NvidiaCaps,
            dev::NVIDIA_FABRIC => Device::NvidiaFabric,
            dev::KFD => Device::Kfd,
            dev::DRM => Device::Drm,
            dev::TUN => Device::Tun,
            _ => Device::Unknown,
        }
    }
}

/// Where an address points: loopback, private (RFC 1918, link-local, fc00::/7, fe80::/10;
/// IPv4-mapped addresses as their IPv4 address), or else external.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpClass {
    pub loopback: bool,
    pub private: bool,
}

impl IpClass {
    pub fn of(ip: IpAddr) -> IpClass {
        match ip {
            IpAddr::V4(a) => IpClass {
                loopback: a.is_loopback(),
                private: a.is_private() || a.is_link_local(),
            },
            IpAddr::V6(a) => {
                if let Some(v4) = a.to_ipv4_mapped() {
                    return IpClass::of(IpAddr::V4(v4));
                }
                let seg = a.segments()[0];
                IpClass {
                    loopback: a.is_loopback(),
                    private: (seg & 0xfe00) == 0xfc00 || (seg & 0xffc0) == 0xfe80,
                }
            }
        }
    }

    pub fn external(self) -> bool {
        !self.loopback && !self.private
    }
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
    /// The executable has no link left (`i_nlink == 0`): a memfd or a deleted file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exe_unlinked: bool,
    /// Sockets among fds 0-2 at exec (absent when none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdio: Option<Stdio>,
    /// For OpenSSH `ssh`: the configuration files it will read and the forwarding/proxy
    /// directives in them that apply to its destination (read from the host at exec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_config: Option<SshConfig>,
    /// The program is a workload launcher (`workload.launchers`/`launcher_modules`) whose file
    /// passed the path and ownership check: its descendants' ordinary work is expected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launcher: Option<String>,
}

/// The OpenSSH client configuration an `ssh` exec will read (`context/ssh_config.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SshConfig {
    /// Every file ssh would read, in order, with what happened.
    pub files: Vec<ConfigFile>,
    /// Watched directives that apply to this destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directives: Vec<Directive>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigFile {
    /// Path as the process sees it.
    pub path: String,
    /// `read`, `absent`, `too_large`, or `unreadable: <error>`.
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Directive {
    /// Lower-cased keyword (`remoteforward`).
    pub key: String,
    pub value: String,
    /// `path:line` where it is written.
    pub source: String,
    /// The `Host …`/`Match …` line of its block; empty outside any block.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub block: String,
    /// False under `Match` (criteria not evaluated).
    pub certain: bool,
}

impl SshConfig {
    /// Lower-cased keys of the directives (rule field `ssh.config_options`).
    pub fn keys(&self) -> Vec<String> {
        self.directives.iter().map(|d| d.key.clone()).collect()
    }
}

/// Sockets the new program starts with on stdin/stdout/stderr.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stdio {
    /// Which of 0, 1, 2 are sockets.
    pub sockets: Vec<u8>,
    /// Which of those are IPv4/IPv6 sockets with a peer.
    pub net: Vec<u8>,
    /// Which of those are outbound TCP connections (opened by a connect the sensor saw), as
    /// opposed to accepted ones (sshd, inetd, socket activation).
    #[serde(default)]
    pub outbound: Vec<u8>,
    /// The peer of the first such descriptor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sock_type: Option<SockType>,
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
    pub family: Family,
    pub sock_type: SockType,
    /// "tcp", "udp", … when the kernel hook knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_port: Option<u16>,
    /// The socket fd; absent when the hook does not know it (io_uring, listen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
    /// `unknown` when the operation did not go through the syscall (io_uring).
    pub result: Outcome,
    /// Negative errno on error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub via: Via,
    /// Connection id pairing a TCP connect with its `tcp_close`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn_id: Option<String>,
    /// `tcp_close`: seconds since the connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuIoctl {
    pub fd: i32,
    pub device: Device,
    pub major: u32,
    pub minor: u32,
    pub gpu_minor: u32,
    /// The request as passed to ioctl(2), hex.
    pub cmd: String,
    /// Name of the operation (NV_ESC_RM_ALLOC, UVM_INITIALIZE, AMDKFD_IOC_CREATE_QUEUE, …)
    /// or the hex request when unknown.
    pub op: String,
    /// The operation as the kernel side decoded it: family in the high byte
    /// (`sensor_common::gpu::OP_*`), the family's command below.
    #[serde(default)]
    pub op_code: u32,
    /// RM_ALLOC: the class allocated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_id: Option<u32>,
    /// RM_CONTROL: the control command, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<String>,
    /// Other decoded argument field (KFD queue type, memory flags, GPU id; DRM context id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<u32>,
    pub ret: i32,
    /// `ok` or `error`.
    pub result: Outcome,
    /// NV_ESC_IOCTL_XFER_CMD was unwrapped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub xfer: bool,
    /// The device is a configured stand-in (tests).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub emulated: bool,
    /// First bytes of the argument (at syscall entry), hex; empty when unreadable.
    pub arg: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuOpen {
    /// Device path, rebuilt from the dentry names ("/dev/nvidia0", "/dev/dri/renderD128"),
    /// or the path given when the open failed.
    pub path: String,
    pub device: Device,
    pub major: u32,
    pub minor: u32,
    pub gpu_minor: u32,
    pub flags: u32,
    /// The fd, or -errno.
    pub ret: i32,
    pub result: Outcome,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub emulated: bool,
}

/// One ancestor in a lineage chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ancestor {
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    pub argv: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuSession {
    /// NVIDIA GPU minors (`/dev/nvidiaN`) the process used.
    pub gpu_minors: Vec<u32>,
    /// Those GPUs' index, UUID, PCI bus id and model (from NVML; empty without it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<crate::gpu::inventory::GpuIdentity>,
    /// RM classes allocated, by name, in first-seen order.
    pub classes: Vec<String>,
    /// Which allocation started the session (absent for gpu_query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    pub uvm_initialized: bool,
    pub ioctls: u64,
    pub failed_ioctls: u64,
    pub argv: Vec<String>,
    /// Ancestors from the parent up.
    pub lineage: Vec<Ancestor>,
    /// Session/usage duration so far, seconds (end events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    /// NVML per-process SM utilisation: max and mean over the samples seen (end events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sm_util_max: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sm_util_mean: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuUsage {
    pub gpu_index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_minor: Option<u32>,
    /// The GPU's UUID and PCI bus id (NVML), as DCGM exporter labels them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_bus_id: Option<String>,
    /// Per-process SM and memory utilisation, % (nvmlDeviceGetProcessUtilization).
    pub sm_util: u32,
    pub mem_util: u32,
    /// Device-wide utilisation, % (nvmlDeviceGetUtilizationRates).
    pub device_gpu_util: u32,
    pub device_mem_util: u32,
    /// PCIe throughput, KB/s (nvmlDeviceGetPcieThroughput).
    pub pcie_rx_kbps: u32,
    pub pcie_tx_kbps: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetPayload {
    /// -1: captured at the socket, where no descriptor is known.
    pub fd: i32,
    pub family: Family,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    #[serde(default)]
    pub local_port: u16,
    #[serde(default = "tcp")]
    pub transport: Transport,
    /// Payload bytes in the segment.
    pub len: u32,
    /// The captured bytes (at most 512), hex.
    pub data: String,
    /// The captured bytes as text (invalid UTF-8 replaced), for rules.
    pub text: String,
    /// The header names the connection's owner, not the task that sent the segment.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub owner_only: bool,
    /// What the bytes say.
    #[serde(flatten)]
    pub app: crate::proto::AppInfo,
}

fn tcp() -> Transport {
    Transport::Tcp
}

/// A DNS query as it left the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DnsQuery {
    pub family: Family,
    /// The resolver it was sent to.
    pub server: IpAddr,
    pub server_port: u16,
    pub local_port: u16,
    pub transport: Transport,
    pub id: u16,
    pub qname: String,
    pub qtype: u16,
    /// `A`, `AAAA`, `TXT`, … (`TYPEn` when unnamed).
    pub qtype_name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_round_trip() {
        for d in Device::GPU.into_iter().chain([Device::Tun]) {
            assert_eq!(Device::from_id(d.id()), d);
        }
        assert_eq!(Device::from_id(0), Device::Unknown);
    }

    /// The JSON `kind` tag of every body is its [`Kind`]'s name (serde names the variants, the
    /// table in sensor-common names the kinds: they must agree).
    #[test]
    fn serde_tags_are_the_kind_names() {
        let net = Net {
            family: Family::Inet,
            sock_type: SockType::Stream,
            protocol: None,
            dst_ip: None,
            dst_port: None,
            local_ip: None,
            local_port: None,
            fd: None,
            result: Outcome::Ok,
            errno: None,
            error: None,
            via: Via::Syscall,
            conn_id: None,
            duration_s: None,
        };
        let bodies = vec![
            Body::Exec(Exec {
                filename: "/bin/true".into(),
                argv: vec![],
                args_truncated: false,
                args_size: 0,
                filename_truncated: false,
                args_unreadable: false,
                exe_unlinked: false,
                stdio: None,
                ssh_config: None,
                launcher: None,
            }),
            Body::Fork(Fork { child_pid: 2 }),
            Body::Exit(Exit {
                exit_code: 0,
                exit_status: Some(0),
                signal: None,
            }),
            Body::Connect(net.clone()),
            Body::Bind(net.clone()),
            Body::Listen(net.clone()),
            Body::TcpClose(net),
        ];
        let mut seen = std::collections::HashSet::new();
        for b in &bodies {
            let v = serde_json::to_value(b).unwrap();
            assert_eq!(v["kind"], b.kind().name());
            seen.insert(b.kind());
        }
        // Every kind name is a body's tag: deserialising just the tag fails for missing
        // fields, never for an unknown variant.
        for k in Kind::ALL {
            let e = serde_json::from_value::<Body>(serde_json::json!({"kind": k.name()}))
                .unwrap_err()
                .to_string();
            assert!(e.contains("missing field"), "{}: {e}", k.name());
        }
        assert_eq!(seen.len(), bodies.len());
    }

    /// The one-pass parser and the derived deserializer agree on every event of the bench's
    /// replay mix, in the sensor's field order (and as the sensor writes them back), a header
    /// field after the body included; a body before `kind` is left to the derived one; both
    /// refuse the same lines.
    #[test]
    fn fast_parse_agrees_with_the_derived_one() {
        let head = r#""ts":"2026-11-27T00:00:00.000000000Z","ts_ns":5,"pid":7,"tid":7,"ppid":1,"uid":0,"gid":0,"cgroup_id":1,"mntns":4026531832,"comm":"python3""#;
        let bodies = [
            r#""kind":"fork","child_pid":8"#,
            r#""kind":"exec","filename":"/usr/bin/python3","argv":["python3","t.py"],"args_truncated":false,"args_size":12"#,
            r#""kind":"exit","exit_code":0,"exit_status":0"#,
            r#""kind":"connect","family":"inet","sock_type":"stream","dst_ip":"10.0.0.1","dst_port":443,"fd":5,"result":"ok","via":"syscall""#,
            r#""kind":"bind","family":"inet","sock_type":"dgram","local_ip":"0.0.0.0","local_port":0,"fd":6,"result":"ok","via":"syscall""#,
            r#""kind":"gpu_ioctl","fd":4,"device":"nvidia","major":195,"minor":255,"gpu_minor":255,"cmd":"0xc020462a","op":"NV_ESC_RM_CONTROL","control":"0x20800110","ret":0,"result":"ok","arg":"""#,
            r#""kind":"net_payload","fd":3,"family":"inet","dst_ip":"1.2.3.4","dst_port":22,"len":21,"data":"","text":"SSH-2.0-OpenSSH_9.2","proto":"ssh","ssh_banner":"SSH-2.0-OpenSSH_9.2""#,
        ];
        let container = r#""exe":"/bin/x","container":{"cgroup":"/kubepods/x","id":"abc","runtime":"containerd"}"#;
        let mut lines: Vec<String> = bodies.iter().map(|b| format!("{{{head},{b}}}")).collect();
        // Header fields after the body (escaped key and value included).
        lines.push(format!("{{{head},{},{container}}}", bodies[1]));
        lines.push(
            r#"{"ts_ns":5,"ts":"2026-11-27T00:00:00Z","pid":7,"tid":7,"ppid":1,"uid":0,"gid":0,"cgroup_id":1,"mntns":1,"kind":"fork","child_pid":8,"c\u006fmm":"a\"b"}"#
                .to_string(),
        );
        for l in &lines {
            let slow: Event = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            let fast = Event::from_json_fast(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            assert_eq!(slow, fast, "{l}");
            // As the sensor writes it (its own order), it parses back in one pass.
            let again = serde_json::to_string(&slow).unwrap();
            assert_eq!(Event::from_json_fast(&again).unwrap(), slow, "{again}");
        }
        // The body before `kind` and the header: the one-pass reader declines, the fallback
        // reads it.
        let late = format!("{{\"child_pid\":8,{head},\"kind\":\"fork\",{container}}}");
        assert!(Event::from_json_fast(&late).is_err());
        assert_eq!(
            Event::from_json(&late).unwrap(),
            serde_json::from_str::<Event>(&late).unwrap()
        );
        for bad in [
            format!("{{{head}}}"),
            format!("{{{head},\"kind\":\"nope\"}}"),
            format!("{{{head},\"kind\":\"fork\"}}"),
            r#"{"kind":"fork","child_pid":8}"#.to_string(),
            format!("{{{head},\"kind\":\"fork\",\"child_pid\":8,\"pid\":9}}"),
            format!("{{{head},\"kind\":\"fork\",\"child_pid\":\"8\"}}"),
            format!("{{{head},\"kind\":\"fork\",\"child_pid\":8}} x"),
            "[1]".to_string(),
        ] {
            assert!(serde_json::from_str::<Event>(&bad).is_err(), "{bad}");
            assert!(Event::from_json_fast(&bad).is_err(), "{bad}");
            assert!(Event::from_json(&bad).is_err(), "{bad}");
        }
    }
}
