//! Hooks: resolve offsets for the running kernel, load the embedded eBPF object, fill the filter
//! maps and attach every program. Dropping [`Hooks`] detaches everything.

pub mod btf;
pub mod offsets;
pub mod tracefs;

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        cgroup_skb::CgroupSkbAttachType, links::CgroupAttachMode, CgroupSkb, RawTracePoint,
        TracePoint,
    },
    Ebpf, EbpfLoader,
};
use sensor_common::{
    kind, names, probe_error_index, GpuDev, Hook, Offsets, ProbeError, ProgConfig,
};
use thiserror::Error;

use crate::config::Config;
use btf::{Btf, BtfError};
use tracefs::TracefsError;

/// The eBPF object built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor-ebpf.o"));
/// SHA-256 of [`EBPF_OBJECT`].
pub const EBPF_SHA256: &str = env!("SENSOR_EBPF_SHA256");

#[derive(Debug, Error)]
pub enum HookError {
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error("kernel BTF {0} not found: the sensor resolves kernel struct offsets from it; it needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")]
    NoBtf(String),
    #[error("tracepoint layouts differ where the programs assume one shape: {0}")]
    Layout(String),
    #[error("a tracepoint field the programs read does not fit the record: {0}")]
    RecordFit(String),
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program `{name}`: {source}")]
    Program {
        name: String,
        source: aya::programs::ProgramError,
    },
    #[error("map `{name}`: {source}")]
    Map {
        name: String,
        source: aya::maps::MapError,
    },
    #[error("GPU device set: {0}")]
    GpuDevice(String),
    #[error("map `{0}` missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("cgroup v2 root for the socket-level capture: {0}")]
    Cgroup(String),
}

/// Loads `sock_egress` and attaches it to the cgroup v2 root; returns its description.
fn attach_egress(
    ebpf: &mut Ebpf,
    configured: Option<&std::path::Path>,
) -> Result<String, HookError> {
    let path = cgroup2_root(configured)?;
    let dir = std::fs::File::open(&path)
        .map_err(|e| HookError::Cgroup(format!("{}: {e}", path.display())))?;
    let prog: &mut CgroupSkb = program(ebpf, EGRESS_PROG)?;
    prog.load()
        .map_err(|source| prog_err(EGRESS_PROG, source))?;
    // A bpf_link (kernel ≥ 5.7): detached when the sensor exits, however it exits, and always
    // run alongside other programs on the cgroup (the kernel refuses link flags:
    // BPF_F_ALLOW_MULTI is implied, kernel/bpf/cgroup.c cgroup_bpf_link_attach).
    prog.attach(&dir, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)
        .map_err(|source| prog_err(EGRESS_PROG, source))?;
    Ok(format!("cgroup_skb/egress:{}", path.display()))
}

/// `CGROUP2_SUPER_MAGIC` (include/uapi/linux/magic.h).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Whether `path` is a mounted cgroup v2 file system.
fn is_cgroup2(path: &std::path::Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct we own; `c` is a valid NUL-terminated path.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC
    }
}

/// The cgroup v2 root the egress program is attached to: the configured path, else
/// `/sys/fs/cgroup` (unified hierarchy) or `/sys/fs/cgroup/unified` (hybrid v1/v2). Attached
/// at the root, the program runs for every process on the host (descendant cgroups inherit it).
pub fn cgroup2_root(configured: Option<&std::path::Path>) -> Result<std::path::PathBuf, HookError> {
    if let Some(p) = configured {
        return if is_cgroup2(p) {
            Ok(p.to_path_buf())
        } else {
            Err(HookError::Cgroup(format!(
                "{} (net.cgroup_path) is not a cgroup v2 mount",
                p.display()
            )))
        };
    }
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| is_cgroup2(p))
        .ok_or_else(|| {
            HookError::Cgroup(
                "no cgroup v2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified: set net.cgroup_path, or net.first_payload = false".into(),
            )
        })
}

/// Raw tracepoints (no tracefs needed): program name = tracepoint name.
const RAW_TPS: &[&str] = &[
    "sched_process_exec",
    "sched_process_fork",
    "sched_process_exit",
];
/// Classic tracepoints: (program, category, name). Syscalls are watched at their exits only:
/// the programs read a call's arguments from the registers the task saved at syscall entry.
const TPS: &[(&str, &str, &str)] = &[
    ("sys_exit_connect", "syscalls", "sys_exit_connect"),
    ("sys_exit_bind", "syscalls", "sys_exit_bind"),
    ("inet_sock_set_state", "sock", "inet_sock_set_state"),
    ("sys_exit_ioctl", "syscalls", "sys_exit_ioctl"),
    ("sys_exit_openat", "syscalls", "sys_exit_openat"),
    ("sys_exit_dup2", "syscalls", "sys_exit_dup2"),
    ("sys_exit_dup3", "syscalls", "sys_exit_dup3"),
    ("sys_exit_open", "syscalls", "sys_exit_open"),
    ("sys_exit_openat2", "syscalls", "sys_exit_openat2"),
];
/// Socket-level capture (config `net.first_payload`): `cgroup_skb/egress` on the cgroup v2
/// root (first data segment of new outbound TCP connections, DNS datagrams).
const EGRESS_PROG: &str = "sock_egress";

/// Every program name, as `hooks.disable` takes them.
pub const PROGRAMS: &[&str] = &[
    "sched_process_exec",
    "sched_process_fork",
    "sched_process_exit",
    "sys_exit_connect",
    "sys_exit_bind",
    "inet_sock_set_state",
    "sys_exit_ioctl",
    "sys_exit_openat",
    "sys_exit_dup2",
    "sys_exit_dup3",
    "sys_exit_open",
    "sys_exit_openat2",
    EGRESS_PROG,
];

/// Resolves every offset the programs use from BTF and tracefs formats (the table of
/// [`Offsets::FIELDS`]), checking that every tracepoint field read fits its record.
pub fn resolve_offsets(btf: &Btf) -> Result<Offsets, HookError> {
    offsets::resolve(btf, &mut offsets::tracefs_formats())
}

/// Loaded and attached programs. Dropping it detaches all of them.
pub struct Hooks {
    ebpf: Ebpf,
    pub tracefs_mounted: bool,
    pub attached: Vec<String>,
}

impl Hooks {
    pub fn load(cfg: &Config) -> Result<Hooks, HookError> {
        if !cfg.btf_path.exists() {
            return Err(HookError::NoBtf(cfg.btf_path.display().to_string()));
        }
        let tracefs_mounted = tracefs::ensure_mounted()?;
        let btf = Btf::from_file(&cfg.btf_path)?;
        let offsets = resolve_offsets(&btf)?;
        let prog_cfg = ProgConfig {
            offsets,
            only_listed: u32::from(!cfg.filter.only_pids.is_empty()),
            ignore_cgroups: u32::from(!cfg.filter.ignore_cgroup_ids.is_empty()),
            _pad: 0,
            // Wake the reader early each time another quarter of the ring (at most 128 KiB)
            // has filled; otherwise its poll timer (ring.poll_interval_ms) collects the records.
            wakeup_bytes: (cfg.ring.size / 4).min(128 << 10) as u32,
            cookie_key: random_u64(),
        };
        let m = &cfg.maps;
        // Filter maps hold what the agent puts in them (TRACE_TGIDS also the processes the
        // listed ones fork, so it keeps its full size when used).
        let small = |n: usize| (n.max(16) as u32).min(sensor_common::FILTER_MAP_ENTRIES);
        let trace = if cfg.filter.only_pids.is_empty() {
            16
        } else {
            sensor_common::FILTER_MAP_ENTRIES
        };
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::EVENTS, cfg.ring.size as u32)
            .map_max_entries(names::TRACKED_SOCKS, m.tracked_connections)
            .map_max_entries(names::FRESH_CONNS, m.fresh_connections)
            .map_max_entries(names::GPU_TGIDS, m.gpu_processes)
            .map_max_entries(names::IGNORE_TGIDS, small(cfg.filter.ignore_pids.len() + 1))
            .map_max_entries(
                names::IGNORE_CGROUPS,
                small(cfg.filter.ignore_cgroup_ids.len()),
            )
            .map_max_entries(names::TRACE_TGIDS, trace)
            .map_max_entries(names::GPU_DEVS, small(cfg.gpu.devices.len() + 64))
            .override_global(names::CONFIG, &prog_cfg, true)
            .load(EBPF_OBJECT)?;

        let own = std::process::id();
        let mut ignore: BpfHashMap<_, u32, u8> = map_mut(&mut ebpf, names::IGNORE_TGIDS)?;
        for pid in std::iter::once(own).chain(cfg.filter.ignore_pids.iter().copied()) {
            ignore
                .insert(pid, 1, 0)
                .map_err(|source| map_err(names::IGNORE_TGIDS, source))?;
        }
        let mut cg: BpfHashMap<_, u64, u8> = map_mut(&mut ebpf, names::IGNORE_CGROUPS)?;
        for id in &cfg.filter.ignore_cgroup_ids {
            cg.insert(id, 1, 0)
                .map_err(|source| map_err(names::IGNORE_CGROUPS, source))?;
        }
        let mut only: BpfHashMap<_, u32, u8> = map_mut(&mut ebpf, names::TRACE_TGIDS)?;
        for pid in &cfg.filter.only_pids {
            only.insert(pid, 1, 0)
                .map_err(|source| map_err(names::TRACE_TGIDS, source))?;
        }

        let mut gpu: BpfHashMap<_, u64, GpuDev> = map_mut(&mut ebpf, names::GPU_DEVS)?;
        let entries = sync_gpu_devs(&mut gpu, &cfg.gpu.devices)?;
        // Processes that opened GPU devices before we started: known as GPU users (inherited
        // by their children).
        let mut gpu_tgids: BpfHashMap<_, u32, u8> = map_mut(&mut ebpf, names::GPU_TGIDS)?;
        for pid in crate::gpu::devices::processes_with_gpu_fds(&entries) {
            let _ = gpu_tgids.insert(pid, 1, 0);
        }

        let mut attached = vec![];
        let off = |n: &str| cfg.hooks.disable.iter().any(|d| d == n);
        for &name in RAW_TPS {
            if off(name) {
                continue;
            }
            let prog: &mut RawTracePoint = program(&mut ebpf, name)?;
            prog.load().map_err(|source| prog_err(name, source))?;
            prog.attach(name).map_err(|source| prog_err(name, source))?;
            attached.push(format!("raw_tp/{name}"));
        }
        for &(name, cat, tp) in TPS {
            if off(name) {
                continue;
            }
            let prog: &mut TracePoint = program(&mut ebpf, name)?;
            prog.load().map_err(|source| prog_err(name, source))?;
            prog.attach(cat, tp)
                .map_err(|source| prog_err(name, source))?;
            attached.push(format!("tracepoint/{cat}/{tp}"));
        }
        if cfg.net.first_payload && !off(EGRESS_PROG) {
            // Not fatal: kernels before 6.10 refuse the current-task helpers in cgroup_skb
            // programs, and a node may lack a cgroup v2 mount. The sensor then runs without
            // first bytes and DNS (and says so), rather than not at all.
            match attach_egress(&mut ebpf, cfg.net.cgroup_path.as_deref()) {
                Ok(at) => attached.push(at),
                Err(e) => tracing::warn!(
                    "socket-level capture unavailable ({e}): no first bytes (SSH banners, Stratum, TLS SNI) and no DNS queries; everything else runs"
                ),
            }
        }
        let ids = PROGRAMS
            .iter()
            .filter_map(|&n| Some((ebpf.program(n)?.info().ok()?.id(), n)))
            .collect();
        let _ = PROGRAM_IDS.set(ids);
        Ok(Hooks {
            ebpf,
            tracefs_mounted,
            attached,
        })
    }

    /// Takes the event ring buffer (once).
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, HookError> {
        let map = self
            .ebpf
            .take_map(names::EVENTS)
            .ok_or(HookError::MissingMap(names::EVENTS))?;
        RingBuf::try_from(map).map_err(|source| map_err(names::EVENTS, source))
    }

    /// Takes the GPU device map (once).
    pub fn take_gpu_devs(&mut self) -> Result<BpfHashMap<MapData, u64, GpuDev>, HookError> {
        let map = self
            .ebpf
            .take_map(names::GPU_DEVS)
            .ok_or(HookError::MissingMap(names::GPU_DEVS))?;
        BpfHashMap::try_from(map).map_err(|source| map_err(names::GPU_DEVS, source))
    }

    /// Takes the per-CPU kernel drop counters (once).
    pub fn take_drops(&mut self) -> Result<PerCpuArray<MapData, u64>, HookError> {
        let map = self
            .ebpf
            .take_map(names::DROPS)
            .ok_or(HookError::MissingMap(names::DROPS))?;
        PerCpuArray::try_from(map).map_err(|source| map_err(names::DROPS, source))
    }

    /// Takes the per-CPU probe error counters (once).
    pub fn take_probe_errors(&mut self) -> Result<PerCpuArray<MapData, u64>, HookError> {
        let map = self
            .ebpf
            .take_map(names::PROBE_ERRORS)
            .ok_or(HookError::MissingMap(names::PROBE_ERRORS))?;
        PerCpuArray::try_from(map).map_err(|source| map_err(names::PROBE_ERRORS, source))
    }
}

/// Sums the per-CPU drop counters: index = event kind.
pub fn read_drops(drops: &PerCpuArray<MapData, u64>) -> [u64; kind::MAX as usize] {
    let mut out = [0u64; kind::MAX as usize];
    for (k, slot) in out.iter_mut().enumerate() {
        if let Ok(v) = drops.get(&(k as u32), 0) {
            *slot = v.iter().sum();
        }
    }
    out
}

/// Sums the per-CPU probe error counters: `[hook][error]` (ids of [`Hook`], [`ProbeError`]).
pub fn read_probe_errors(
    map: &PerCpuArray<MapData, u64>,
) -> [[u64; ProbeError::COUNT]; Hook::COUNT] {
    let mut out = [[0u64; ProbeError::COUNT]; Hook::COUNT];
    for &h in Hook::ALL {
        for &e in ProbeError::ALL {
            if let Ok(v) = map.get(&probe_error_index(h, e), 0) {
                out[h as usize][e as usize] = v.iter().sum();
            }
        }
    }
    out
}

fn map_err(name: &str, source: aya::maps::MapError) -> HookError {
    HookError::Map {
        name: name.to_string(),
        source,
    }
}

fn prog_err(name: &str, source: aya::programs::ProgramError) -> HookError {
    HookError::Program {
        name: name.to_string(),
        source,
    }
}

fn map_mut<'a, K: aya::Pod, V: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<BpfHashMap<&'a mut MapData, K, V>, HookError> {
    let map = ebpf.map_mut(name).ok_or(HookError::MissingMap(name))?;
    BpfHashMap::try_from(map).map_err(|source| map_err(name, source))
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, HookError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or_else(|| HookError::Program {
        name: name.to_string(),
        source: aya::programs::ProgramError::UnexpectedProgramType,
    })?;
    p.try_into().map_err(|source| prog_err(name, source))
}

/// Writes the GPU device set (fixed majors, /proc/devices, configured extras) into the kernel
/// map. Returns how many entries it holds.
pub fn sync_gpu_devs<T: std::borrow::BorrowMut<MapData>>(
    map: &mut BpfHashMap<T, u64, GpuDev>,
    extra: &[crate::gpu::devices::DeviceSpec],
) -> Result<Vec<(u64, GpuDev)>, HookError> {
    let text = std::fs::read_to_string("/proc/devices").unwrap_or_default();
    let entries = crate::gpu::devices::entries(&text, extra).map_err(HookError::GpuDevice)?;
    for (k, v) in &entries {
        map.insert(k, v, 0)
            .map_err(|source| map_err(names::GPU_DEVS, source))?;
    }
    Ok(entries)
}

/// Memory the kernel charges for each BPF map this process holds (`memlock` in
/// /proc/self/fdinfo; names from the map info), by map name.
pub fn map_memory() -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(rd) = std::fs::read_dir("/proc/self/fdinfo") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let (Some(id), Some(bytes)) = (field("map_id:"), field("memlock:")) else {
            continue;
        };
        let name = aya::maps::MapInfo::from_id(id as u32)
            .ok()
            .and_then(|i| i.name_as_str().map(str::to_string))
            .unwrap_or_else(|| format!("map-{id}"));
        // The same map may be open on several fds: count it once.
        out.insert(name, bytes);
    }
    out
}

/// The attached programs' kernel ids → names (the kernel keeps only 15 characters of a name, so
/// `sys_exit_openat` and `sys_exit_openat2` look alike there).
static PROGRAM_IDS: std::sync::OnceLock<std::collections::HashMap<u32, &'static str>> =
    std::sync::OnceLock::new();

/// Run time (ns) and run count of each attached program, from `/proc/self/fdinfo` (the kernel
/// counts them while `kernel.bpf_stats_enabled` is 1; both stay 0 otherwise).
pub fn program_stats() -> std::collections::BTreeMap<String, (u64, u64)> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(rd) = std::fs::read_dir("/proc/self/fdinfo") else {
        return out;
    };
    let Some(names) = PROGRAM_IDS.get() else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let (Some(id), Some(ns), Some(cnt)) =
            (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
        else {
            continue;
        };
        if let Some(name) = names.get(&(id as u32)) {
            out.insert(name.to_string(), (ns, cnt));
        }
    }
    out
}

/// A random per-run key (getrandom(2)) for connection ids.
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: b is a valid, writable 8-byte buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 8 {
        // Not secret, only opaque: fall back to the clock.
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
    }
    u64::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One `Hook` per attached program, with the place it attaches to.
    #[test]
    fn hooks_are_the_attached_programs() {
        use sensor_common::Attach;
        let mut attached: Vec<(Attach, &str)> = RAW_TPS
            .iter()
            .map(|&n| (Attach::RawTracepoint(n), n))
            .collect();
        attached.extend(
            TPS.iter()
                .map(|&(prog, cat, tp)| (Attach::Tracepoint(cat, tp), prog)),
        );
        attached.push((Attach::CgroupSkbEgress, EGRESS_PROG));
        assert_eq!(attached.len(), Hook::COUNT);
        for &h in Hook::ALL {
            assert!(
                attached.contains(&(h.attach(), h.name())),
                "{h:?} is not attached as {:?}",
                h.attach()
            );
            assert_eq!(Hook::from_id(h.id()), Some(h));
        }
        assert_eq!(
            probe_error_index(
                Hook::ALL[Hook::COUNT - 1],
                ProbeError::ALL[ProbeError::COUNT - 1]
            ) + 1,
            sensor_common::PROBE_ERROR_ENTRIES
        );
    }
}

#[cfg(test)]
mod program_list_tests {
    use super::*;

    #[test]
    fn every_program_is_listed_once() {
        let mut all: Vec<&str> = RAW_TPS
            .iter()
            .copied()
            .chain(TPS.iter().map(|t| t.0))
            .chain([EGRESS_PROG])
            .collect();
        all.sort();
        let mut listed = PROGRAMS.to_vec();
        listed.sort();
        assert_eq!(all, listed);
    }
}
