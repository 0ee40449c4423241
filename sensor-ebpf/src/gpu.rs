//! GPU driver ioctls and device opens. The device test happens here, in the kernel:
//! fd → `struct file` → `f_inode->i_rdev` → (major, minor) looked up in `GPU_DEVS`, which the
//! agent fills from /proc/devices (and configuration). Non-GPU ioctls cost one fd-table walk and
//! two hash lookups and produce nothing.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user,
        bpf_probe_read_user_str_bytes, generated as gen,
    },
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::TracePointContext,
};
use sensor_common::{
    flags, gpu, gpu_dev_key, kind, GpuDev, GpuIoctlEvent, GpuOpenEvent, FILTER_MAP_ENTRIES,
    GPU_ARG_LEN, GPU_NAME_LEN,
};

use crate::{
    config, count_drop,
    filter::current_traced,
    task::{field, file_of_fd, fill_header, read, record},
    EVENTS,
};

/// `MINORBITS` (include/linux/kdev_t.h): the kernel-internal dev_t is major << 20 | minor.
const MINORBITS: u32 = 20;

/// GPU device numbers → what they are. Key: `gpu_dev_key(major, minor)`; minor `u32::MAX` is a
/// wildcard for the whole major.
#[map(name = "GPU_DEVS")]
static GPU_DEVS: HashMap<u64, GpuDev> = HashMap::with_max_entries(FILTER_MAP_ENTRIES, 0);

/// Processes that hold (or held) a GPU device fd: set when a GPU device file is opened,
/// inherited by fork, seeded by the agent from /proc/*/fd at start-up. `sys_enter_ioctl` looks
/// here first, so ioctls of every other process cost one lookup. An fd received over a unix
/// socket (SCM_RIGHTS) or pidfd_getfd() is not seen until that process opens a GPU file itself.
#[map(name = "GPU_TGIDS")]
pub static GPU_TGIDS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(65536, 0);

/// GPU ioctls between syscall entry and exit, by pid_tgid.
#[map(name = "PENDING_IOCTL")]
static PENDING_IOCTL: HashMap<u64, GpuIoctlEvent> = HashMap::with_max_entries(16384, 0);

/// Opens of `/dev/nvidia*`, `/dev/kfd`, `/dev/dri/*` paths between entry and exit (so that a
/// failed open is still reported).
#[map(name = "PENDING_OPEN")]
static PENDING_OPEN: HashMap<u64, GpuOpenEvent> = HashMap::with_max_entries(16384, 0);

/// Per-CPU scratch space for building a record too large for the 512-byte BPF stack.
#[map(name = "SCRATCH_IOCTL")]
static SCRATCH_IOCTL: PerCpuArray<GpuIoctlEvent> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "SCRATCH_OPEN")]
static SCRATCH_OPEN: PerCpuArray<GpuOpenEvent> = PerCpuArray::with_max_entries(1, 0);

/// The GPU device behind a `struct file *`, with its (major, minor).
#[inline(always)]
fn gpu_dev_of_file(file: u64) -> Option<(GpuDev, u32, u32)> {
    let o = &config().offsets;
    let inode = read::<u64>(file, o.file_inode)?;
    let rdev = read::<u32>(inode, o.inode_rdev)?;
    let (major, minor) = (rdev >> MINORBITS, rdev & ((1 << MINORBITS) - 1));
    // SAFETY: hash lookups with integer keys; the value is copied out.
    let dev = unsafe {
        GPU_DEVS
            .get(&gpu_dev_key(major, minor))
            .or_else(|| GPU_DEVS.get(&gpu_dev_key(major, u32::MAX)))
            .copied()
    }?;
    Some((dev, major, minor))
}

#[tracepoint(category = "syscalls", name = "sys_enter_ioctl")]
pub fn sys_enter_ioctl(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: hash lookup with an integer key; only presence is used.
    if unsafe { GPU_TGIDS.get(&tgid) }.is_none() || !current_traced() {
        return 0;
    }
    let o = &config().offsets;
    let r = record::<48>(&ctx);
    let (fd, cmd, arg) = (
        field(&r, o.tp_ioctl_fd, 8),
        field(&r, o.tp_ioctl_cmd, 8) as u32,
        field(&r, o.tp_ioctl_arg, 8),
    );
    let Some((dev, major, minor)) = gpu_dev_of_file(file_of_fd(fd & 0xffff_ffff)) else {
        return 0;
    };
    if dev.kind == gpu::dev::TUN {
        return 0; // watched for opens only
    }
    let Some(ev) = SCRATCH_IOCTL.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: `ev` is this CPU's scratch slot (a map value of size_of::<GpuIoctlEvent>());
    // a tracing program is not re-entered on the same CPU while it runs.
    unsafe {
        fill_header(&mut (*ev).hdr, kind::GPU_IOCTL);
        let mut fl = dev.flags & flags::GPU_EMULATED;
        (*ev).ret = 0;
        (*ev).fd = fd as i32;
        (*ev).cmd = cmd;
        (*ev).inner_cmd = 0;
        (*ev).major = major;
        (*ev).minor = minor;
        (*ev).dev_kind = dev.kind;
        (*ev).gpu_minor = dev.reported_minor(minor);
        (*ev)._pad = 0;
        let mut src = arg;
        let mut nv_nr = gpu::ioc_nr(cmd);
        if gpu::is_nv_xfer(dev.kind, cmd) {
            // nv_ioctl_xfer_t { NvU32 cmd; NvU32 size; NvP64 ptr; } (nv-ioctl.h): the real
            // parameters live at `ptr`.
            if let Ok(x) = bpf_probe_read_user(arg as *const [u32; 4]) {
                nv_nr = x[0];
                src = (x[2] as u64) | ((x[3] as u64) << 32);
                (*ev).inner_cmd = x[0];
                fl |= flags::GPU_XFER;
            }
        }
        (*ev).arg = [0; GPU_ARG_LEN];
        (*ev).arg_len = 0;
        if src != 0
            && gen::bpf_probe_read_user(
                (*ev).arg.as_mut_ptr().cast(),
                GPU_ARG_LEN as u32,
                src as *const _,
            ) == 0
        {
            (*ev).arg_len = GPU_ARG_LEN as u32;
        } else {
            fl |= flags::GPU_ARG_UNREADABLE;
        }
        let (op, object) = gpu::decode(dev.kind, cmd, nv_nr, &(*ev).arg);
        (*ev).op = op;
        (*ev).object = object;
        (*ev).hdr.flags = fl;
        let _ = PENDING_IOCTL.insert(&bpf_get_current_pid_tgid(), &*ev, 0);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_ioctl")]
pub fn sys_exit_ioctl(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: map value pointer used only before the entry is removed below.
    let Some(p) = PENDING_IOCTL.get_ptr(&id) else {
        return 0;
    };
    let o = &config().offsets;
    // SAFETY: record read at the format-file offset of `ret`.
    let ret = unsafe { ctx.read_at::<i64>(o.tp_exit_ret as usize) }.unwrap_or(0);
    match EVENTS.reserve::<GpuIoctlEvent>(0) {
        Some(mut entry) => {
            // SAFETY: `p` points at a live map value of the right type; `entry` is a
            // reservation of the same size owned by this program.
            unsafe {
                entry.as_mut_ptr().write(*p);
                (*entry.as_mut_ptr()).ret = ret as i32;
            }
            entry.submit(crate::submit_flags());
        }
        None => count_drop(kind::GPU_IOCTL),
    }
    let _ = PENDING_IOCTL.remove(&id);
    0
}

/// Whether a user path names a GPU device node by its standard location.
#[inline(always)]
fn gpu_path(p: &[u8]) -> bool {
    p.starts_with(b"/dev/nvidia")
        || p.starts_with(b"/dev/kfd")
        || p.starts_with(b"/dev/dri/")
        || p.starts_with(b"/dev/net/tun")
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat")]
pub fn sys_enter_openat(ctx: TracePointContext) -> u32 {
    let o = &config().offsets;
    // SAFETY: record read at the format-file offset of `filename`.
    let fname = unsafe { ctx.read_at::<u64>(o.tp_openat_filename as usize) }.unwrap_or(0);
    let mut head = [0u8; 16];
    // SAFETY: fault-tolerant read of a user string into a stack buffer.
    let Ok(h) = (unsafe { bpf_probe_read_user_str_bytes(fname as *const u8, &mut head) }) else {
        return 0;
    };
    if !gpu_path(h) || !current_traced() {
        return 0;
    }
    let Some(ev) = SCRATCH_OPEN.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: `ev` is this CPU's scratch slot; see sys_enter_ioctl.
    unsafe {
        fill_header(&mut (*ev).hdr, kind::GPU_OPEN);
        (*ev).ret = 0;
        (*ev).flags = ctx.read_at::<u64>(o.tp_openat_flags as usize).unwrap_or(0) as u32;
        (*ev).major = 0;
        (*ev).minor = 0;
        (*ev).dev_kind = 0;
        (*ev).gpu_minor = 0;
        (*ev).name = [0; GPU_NAME_LEN];
        (*ev).parent = [0; GPU_NAME_LEN];
        let _ = bpf_probe_read_user_str_bytes(fname as *const u8, &mut (*ev).name);
        let _ = PENDING_OPEN.insert(&bpf_get_current_pid_tgid(), &*ev, 0);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn sys_exit_openat(ctx: TracePointContext) -> u32 {
    let o = &config().offsets;
    // SAFETY: record read at the format-file offset of `ret`.
    let ret = unsafe { ctx.read_at::<i64>(o.tp_exit_ret as usize) }.unwrap_or(-1);
    let id = bpf_get_current_pid_tgid();
    // SAFETY: map value pointer used only before the entry is removed below.
    let pending = PENDING_OPEN.get_ptr(&id);
    if ret < 0 {
        if let Some(p) = pending {
            emit_open(|ev| {
                // SAFETY: p is a live map value; ev a reservation of the same type.
                unsafe {
                    ev.write(*p);
                    (*ev).ret = ret as i32;
                }
            });
            let _ = PENDING_OPEN.remove(&id);
        }
        return 0;
    }
    if pending.is_some() {
        let _ = PENDING_OPEN.remove(&id);
    }
    let file = file_of_fd(ret as u64);
    let Some((dev, major, minor)) = gpu_dev_of_file(file) else {
        return 0;
    };
    if dev.kind != gpu::dev::TUN {
        let _ = GPU_TGIDS.insert(&((id >> 32) as u32), &1, 0);
    }
    if !current_traced() {
        return 0;
    }
    emit_open(|ev| {
        // SAFETY: `ev` is a reservation of size_of::<GpuOpenEvent>() owned by this program.
        unsafe {
            fill_header(&mut (*ev).hdr, kind::GPU_OPEN);
            (*ev).hdr.flags = dev.flags & flags::GPU_EMULATED;
            (*ev).ret = ret as i32;
            (*ev).flags = read::<u32>(file, o.file_f_flags).unwrap_or(0);
            (*ev).major = major;
            (*ev).minor = minor;
            (*ev).dev_kind = dev.kind;
            (*ev).gpu_minor = dev.reported_minor(minor);
            (*ev).name = [0; GPU_NAME_LEN];
            (*ev).parent = [0; GPU_NAME_LEN];
            let dentry = read::<u64>(file, o.file_dentry).unwrap_or(0);
            if let Some(n) = read::<u64>(dentry, o.dentry_name) {
                let _ = bpf_probe_read_kernel_str_bytes(n as *const u8, &mut (*ev).name);
            }
            let parent = read::<u64>(dentry, o.dentry_parent).unwrap_or(0);
            if let Some(n) = read::<u64>(parent, o.dentry_name) {
                let _ = bpf_probe_read_kernel_str_bytes(n as *const u8, &mut (*ev).parent);
            }
        }
    });
    0
}

#[inline(always)]
fn emit_open(fill: impl FnOnce(*mut GpuOpenEvent)) {
    match EVENTS.reserve::<GpuOpenEvent>(0) {
        Some(mut entry) => {
            fill(entry.as_mut_ptr());
            entry.submit(crate::submit_flags());
        }
        None => count_drop(kind::GPU_OPEN),
    }
}
