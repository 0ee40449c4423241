//! Per-process GPU sessions. A process becomes a **compute session** when it allocates its first
//! compute-engine or GPFIFO channel object (NVIDIA), creates a compute queue (AMD KFD) or submits
//! a command stream (amdgpu DRM). A process that touches GPU devices without that (nvidia-smi:
//! root/device/subdevice classes only; it even initialises UVM) is reported as a `gpu_query` when
//! it exits. NVML samples are joined to sessions by pid.

use std::collections::{BTreeSet, HashMap};

use sensor_common::gpu;

use crate::{
    context::process::ProcTable,
    event::{Body, Device, Event, GpuIoctl, GpuSession, GpuUsage},
    gpu::{classes, inventory::Inventory},
};

/// `NV_MINOR_DEVICE_NUMBER_REGULAR_MAX` (nv-chardev-numbers.h): minors above are ctl/modeset.
const NV_MINOR_REGULAR_MAX: u32 = 247;

#[derive(Debug, Default)]
struct ProcGpu {
    gpu_minors: BTreeSet<u32>,
    classes: Vec<u32>,
    trigger: Option<String>,
    uvm: bool,
    ioctls: u64,
    failed: u64,
    started_ns: Option<u64>,
    sm_max: u32,
    sm_sum: u64,
    sm_n: u64,
    /// The session-start event: identity for derived `gpu_usage` events.
    start: Option<Event>,
}

/// One NVML per-process sample (already joined to a device).
#[derive(Debug, Clone, PartialEq)]
pub struct UsageSample {
    pub pid: u32,
    pub usage: GpuUsage,
}

#[derive(Debug, Default)]
pub struct Sessions {
    procs: HashMap<u32, ProcGpu>,
    /// GPU identities (NVML) to name the minors of a session.
    inventory: Inventory,
}

impl Sessions {
    /// Names sessions' GPUs from this inventory (the NVML sampler fills it).
    pub fn set_inventory(&mut self, inv: Inventory) {
        self.inventory = inv;
    }

    /// Processes with a compute session now.
    pub fn active(&self) -> usize {
        self.procs
            .values()
            .filter(|p| p.started_ns.is_some())
            .count()
    }

    /// Session-start events of the live compute sessions.
    pub fn starts(&self) -> impl Iterator<Item = &Event> {
        self.procs.values().filter_map(|p| p.start.as_ref())
    }

    /// The session-start event of `pid`'s compute session.
    pub fn session_of(&self, pid: u32) -> Option<&Event> {
        self.procs.get(&pid).and_then(|p| p.start.as_ref())
    }

    /// Feeds one event; returns a derived session event when one starts or ends.
    pub fn on_event(&mut self, ev: &Event, procs: &ProcTable) -> Option<Event> {
        match &ev.body {
            Body::GpuOpen(o) if o.ret >= 0 => {
                let p = self.procs.entry(ev.pid).or_default();
                note_minor(p, o.device, o.gpu_minor);
                None
            }
            Body::GpuIoctl(g) => {
                let p = self.procs.entry(ev.pid).or_default();
                p.ioctls += 1;
                // A stand-in device answers every GPU command with an error; only a real
                // driver's verdict counts.
                if g.ret < 0 && !g.emulated {
                    p.failed += 1;
                    return None;
                }
                note_minor(p, g.device, g.gpu_minor);
                let trigger = compute_trigger(g, p);
                if p.started_ns.is_none() {
                    if let Some(t) = trigger {
                        p.started_ns = Some(ev.ts_ns);
                        p.trigger = Some(t);
                        let body =
                            Body::GpuSessionStart(session(p, ev.pid, procs, None, &self.inventory));
                        let start = Event { body, ..ev.clone() };
                        p.start = Some(start.clone());
                        return Some(start);
                    }
                }
                None
            }
            Body::Exit(_) => {
                let p = self.procs.remove(&ev.pid)?;
                if p.ioctls == 0 {
                    return None;
                }
                let started = p.started_ns;
                let dur = started.map(|s| ev.ts_ns.saturating_sub(s) as f64 / 1e9);
                let s = session(&p, ev.pid, procs, dur, &self.inventory);
                let body = if started.is_some() {
                    Body::GpuSessionEnd(s)
                } else {
                    Body::GpuQuery(s)
                };
                Some(Event { body, ..ev.clone() })
            }
            _ => None,
        }
    }

    /// Joins an NVML sample to the compute session of its pid; returns a `gpu_usage` event
    /// carrying the session's identity (pid, exe, cgroup…) at time `ts`/`ts_ns`.
    pub fn on_usage(&mut self, s: &UsageSample, ts: String, ts_ns: u64) -> Option<Event> {
        let p = self.procs.get_mut(&s.pid)?;
        let start = p.start.as_ref()?;
        p.sm_max = p.sm_max.max(s.usage.sm_util);
        p.sm_sum += s.usage.sm_util as u64;
        p.sm_n += 1;
        Some(Event {
            ts,
            ts_ns,
            body: Body::GpuUsage(s.usage.clone()),
            ..start.clone()
        })
    }
}

/// Decoded operations that matter for sessions (`GpuIoctl::op_code`; sensor_common::gpu).
/// UVM_INITIALIZE is the raw request 0x30000001 (uvm_linux_ioctl.h, 550.x).
const OP_UVM_INITIALIZE: u32 = gpu::OP_UVM | (0x3000_0001 & 0xff_ffff);
const OP_KFD_CREATE_QUEUE: u32 = gpu::OP_KFD | gpu::KFD_CREATE_QUEUE;
const OP_DRM_AMDGPU_CS: u32 = gpu::OP_DRM | gpu::DRM_AMDGPU_CS;

/// `g` is operation `code`; a recording made before `op_code` existed carries only the name.
fn op_is(g: &GpuIoctl, code: u32, name: &str) -> bool {
    g.op_code == code || (g.op_code == 0 && g.op == name)
}

fn note_minor(p: &mut ProcGpu, device: Device, minor: u32) {
    if (device == Device::Nvidia && minor <= NV_MINOR_REGULAR_MAX) || device == Device::Drm {
        p.gpu_minors.insert(minor);
    }
}

/// Records the object the ioctl creates and says whether it makes the process a compute client.
fn compute_trigger(g: &GpuIoctl, p: &mut ProcGpu) -> Option<String> {
    if op_is(g, OP_UVM_INITIALIZE, "UVM_INITIALIZE") {
        p.uvm = true;
    }
    if let Some(c) = g.class_id {
        if !p.classes.contains(&c) {
            p.classes.push(c);
        }
        if classes::starts_compute(c) {
            return Some(classes::class_name(c));
        }
    }
    if op_is(g, OP_KFD_CREATE_QUEUE, "AMDKFD_IOC_CREATE_QUEUE")
        && classes::kfd_queue_is_compute(g.object.unwrap_or(0))
        || op_is(g, OP_DRM_AMDGPU_CS, "DRM_AMDGPU_CS")
    {
        return Some(g.op.clone());
    }
    None
}

fn session(
    p: &ProcGpu,
    pid: u32,
    procs: &ProcTable,
    duration_s: Option<f64>,
    inv: &Inventory,
) -> GpuSession {
    GpuSession {
        gpu_minors: p.gpu_minors.iter().copied().collect(),
        gpus: p
            .gpu_minors
            .iter()
            .filter_map(|&m| inv.by_minor(m))
            .collect(),
        classes: p.classes.iter().map(|&c| classes::class_name(c)).collect(),
        trigger: p.trigger.clone(),
        uvm_initialized: p.uvm,
        ioctls: p.ioctls,
        failed_ioctls: p.failed,
        argv: procs.argv(pid),
        lineage: procs.lineage(pid),
        duration_s,
        sm_util_max: (p.sm_n > 0).then_some(p.sm_max),
        sm_util_mean: (p.sm_n > 0).then(|| p.sm_sum as f64 / p.sm_n as f64),
    }
}
