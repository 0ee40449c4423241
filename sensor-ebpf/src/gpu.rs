//! GPU driver ioctls and device opens. The device test happens here, in the kernel:
//! fd → `struct file` → `f_inode->i_rdev` → (major, minor) looked up in `GPU_DEVS`, which the
//! agent fills from /proc/devices (and configuration). Non-GPU ioctls cost one fd-table walk and
//! two hash lookups and produce nothing.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
        bpf_probe_read_user,
        bpf_probe_read_user_str_bytes, generated as gen,
    },
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use sensor_common::{
    flags, gpu, gpu_dev_key, kind, record_size, GpuDev, GpuIoctlEvent, GpuOpenEvent, Hook,
    ProbeError, FILTER_MAP_ENTRIES, GPU_ARG_LEN, GPU_NAME_LEN, NR_IOCTL, PT_REGS_DI, PT_REGS_DX,
    PT_REGS_ORIG_AX, PT_REGS_SI, TP_SYSCALL_ENTER_ARG0, TP_SYSCALL_ENTER_ARG1,
    TP_SYSCALL_ENTER_ARG2, TP_SYSCALL_EXIT_RET,
};

use crate::{
    config,
    emit::{count_error, emit, finish, or_count},
    filter::current_traced,
    task::{ctx_at, field, file_of_fd, fill_header, read, record},
};

/// `MINORBITS` (include/linux/kdev_t.h): the kernel-internal dev_t is major << 20 | minor.
const MINORBITS: u32 = 20;

/// GPU device numbers → what they are. Key: `gpu_dev_key(major, minor)`; minor `u32::MAX` is a
/// wildcard for the whole major.
#[map(name = "GPU_DEVS")]
static GPU_DEVS: HashMap<u64, GpuDev> = HashMap::with_max_entries(FILTER_MAP_ENTRIES, 0);

/// Processes that hold (or held) a GPU device fd: set when a GPU device file is opened,
/// inherited by fork, seeded by the agent from /proc/*/fd at start-up, and set by the first
/// GPU-shaped ioctl on a GPU device (`gpu_ioctl_shape`: an fd from open(2), openat2(2),
/// SCM_RIGHTS or pidfd_getfd(2)). `sys_enter_ioctl` looks here first, so ioctls of every other
/// process cost one lookup and one field read.
#[map(name = "GPU_TGIDS")]
pub static GPU_TGIDS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(65536, 0);

/// GPU ioctls between syscall entry and exit, by pid_tgid.
#[map(name = "PENDING_IOCTL")]
static PENDING_IOCTL: HashMap<u64, GpuIoctlEvent> = HashMap::with_max_entries(16384, 0);

/// Entries in `PENDING_IOCTL` (added after an insert, taken away after the exit removes one):
/// while it is zero, `sys_exit_ioctl` returns after one inlined array load, without a helper
/// call or a hash lookup, which is the case for nearly every ioctl on the node.
#[map(name = "IOCTL_IN_FLIGHT")]
static IOCTL_IN_FLIGHT: Array<u64> = Array::with_max_entries(1, 0);

/// Map update flags (include/uapi/linux/bpf.h).
const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;

/// Adds `d` to the in-flight count with an atomic add (`BPF_ATOMIC | BPF_ADD`, the
/// instruction `__sync_fetch_and_add` compiles to): the entry and the exit of one ioctl may run
/// on different CPUs. The BPF target offers no `AtomicU64::fetch_add`, so it is written out.
#[inline(always)]
fn in_flight_add(d: i64) {
    if let Some(p) = IOCTL_IN_FLIGHT.get_ptr_mut(0) {
        // SAFETY: `p` is the map's only value (8 bytes, aligned), alive as long as the map;
        // the instruction is a locked add to it and touches nothing else.
        unsafe {
            core::arch::asm!(
                "lock *(u64 *)({p} + 0) += {d}",
                p = in(reg) p,
                d = in(reg) d,
                options(nostack),
            );
        }
    }
}

/// Opens of `/dev/nvidia*`, `/dev/kfd`, `/dev/dri/*` paths between entry and exit (so that a
/// failed open is still reported).
#[map(name = "PENDING_OPEN")]
static PENDING_OPEN: HashMap<u64, GpuOpenEvent> = HashMap::with_max_entries(16384, 0);

/// Per-CPU scratch space for building a record too large for the 512-byte BPF stack.
#[map(name = "SCRATCH_IOCTL")]
static SCRATCH_IOCTL: PerCpuArray<GpuIoctlEvent> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "SCRATCH_OPEN")]
static SCRATCH_OPEN: PerCpuArray<GpuOpenEvent> = PerCpuArray::with_max_entries(1, 0);

/// The GPU device behind a `struct file *` (0: no file), with its (major, minor); `None` for
/// a file that is not a GPU device.
#[inline(always)]
fn gpu_dev_of_file(file: u64) -> Result<Option<(GpuDev, u32, u32)>, ProbeError> {
    if file == 0 {
        return Ok(None);
    }
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
    };
    Ok(dev.map(|d| (d, major, minor)))
}

#[tracepoint(category = "syscalls", name = "sys_enter_ioctl")]
pub fn sys_enter_ioctl(ctx: TracePointContext) -> u32 {
    finish(Hook::SysEnterIoctl, try_sys_enter_ioctl(&ctx))
}

#[inline(always)]
fn try_sys_enter_ioctl(ctx: &TracePointContext) -> Result<(), ProbeError> {
    // Only a GPU-shaped request earns the device test: every other ioctl on the node costs one
    // direct context load at a constant offset (checked against tracefs at start-up) and a
    // compare, no helper call and no map lookup.
    let cmd = ctx_at::<u64, TP_SYSCALL_ENTER_ARG1>(ctx) as u32;
    if !gpu::gpu_ioctl_shape(cmd) {
        return Ok(());
    }
    ioctl_enter(
        ctx_at::<u64, TP_SYSCALL_ENTER_ARG0>(ctx),
        cmd,
        ctx_at::<u64, TP_SYSCALL_ENTER_ARG2>(ctx),
    )
}

/// The entry of a GPU-shaped ioctl, whichever program saw it: the device test, then the
/// record kept until the exit.
#[inline(always)]
fn ioctl_enter(fd: u64, cmd: u32, arg: u64) -> Result<(), ProbeError> {
    const HOOK: Hook = Hook::SysEnterIoctl;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: hash lookup with an integer key; only presence is used.
    let known = unsafe { GPU_TGIDS.get(&tgid) }.is_some();
    if !current_traced() {
        return Ok(());
    }
    let Some((dev, major, minor)) = gpu_dev_of_file(file_of_fd(fd & 0xffff_ffff)?)? else {
        return Ok(());
    };
    if dev.kind == gpu::dev::TUN {
        return Ok(()); // watched for opens only
    }
    if !known {
        // A GPU fd this process got without an open the sensor saw: mark it from now on.
        GPU_TGIDS
            .insert(&tgid, &1, 0)
            .map_err(|_| ProbeError::MapUpdate)?;
    }
    let ev = SCRATCH_IOCTL.get_ptr_mut(0).ok_or(ProbeError::MapLookup)?;
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
            match bpf_probe_read_user(arg as *const [u32; 4]) {
                Ok(x) => {
                    nv_nr = x[0];
                    src = (x[2] as u64) | ((x[3] as u64) << 32);
                    (*ev).inner_cmd = x[0];
                    fl |= flags::GPU_XFER;
                }
                Err(_) => count_error(HOOK, ProbeError::UserRead),
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
            if src != 0 {
                count_error(HOOK, ProbeError::UserRead);
            }
            fl |= flags::GPU_ARG_UNREADABLE;
        }
        let (op, object) = gpu::decode(dev.kind, cmd, nv_nr, &(*ev).arg);
        (*ev).op = op;
        (*ev).object = object;
        (*ev).hdr.flags = fl;
        // A new entry counts as in flight; an entry left by an ioctl whose exit was not seen
        // (one that entered before the exit program was attached) is overwritten, not counted
        // twice. BPF_NOEXIST / BPF_EXIST: include/uapi/linux/bpf.h.
        let id = bpf_get_current_pid_tgid();
        if PENDING_IOCTL.insert(&id, &*ev, BPF_NOEXIST).is_ok() {
            in_flight_add(1);
        } else {
            PENDING_IOCTL
                .insert(&id, &*ev, BPF_EXIST)
                .map_err(|_| ProbeError::MapUpdate)?;
        }
    }
    Ok(())
}

#[tracepoint(category = "syscalls", name = "sys_exit_ioctl")]
pub fn sys_exit_ioctl(ctx: TracePointContext) -> u32 {
    finish(Hook::SysExitIoctl, try_sys_exit_ioctl(&ctx))
}

#[inline(always)]
fn try_sys_exit_ioctl(ctx: &TracePointContext) -> Result<(), ProbeError> {
    // Nothing in flight anywhere: not a GPU ioctl (the common case), no helper call.
    if !ioctl_in_flight() {
        return Ok(());
    }
    ioctl_exit(ctx_at::<i64, TP_SYSCALL_EXIT_RET>(ctx))
}

/// Whether any GPU ioctl is between its entry and its exit (one inlined array load).
#[inline(always)]
fn ioctl_in_flight() -> bool {
    IOCTL_IN_FLIGHT.get(0).is_some_and(|n| *n != 0)
}

/// The exit of an ioctl whose entry may have been kept: report it with its result.
#[inline(always)]
fn ioctl_exit(ret: i64) -> Result<(), ProbeError> {
    let id = bpf_get_current_pid_tgid();
    // The map value pointer is used only before the entry is removed below.
    let Some(p) = PENDING_IOCTL.get_ptr(&id) else {
        return Ok(());
    };
    let emitted = emit(kind::GPU_IOCTL, |ev: *mut GpuIoctlEvent| {
        // SAFETY: `p` points at a live map value of the right type; `ev` is a reservation of
        // the same size owned by this program.
        unsafe {
            ev.write(*p);
            (*ev).ret = ret as i32;
        }
        Ok(())
    });
    if PENDING_IOCTL.remove(&id).is_ok() {
        in_flight_add(-1);
    }
    emitted
}

/// The ioctl pair on the raw syscall tracepoints (`[hooks] ioctl_attach`): `sys_enter(regs,
/// id)` and `sys_exit(regs, ret)` run for every syscall of every task, without the perf-trace
/// record that a `syscalls/sys_*_ioctl` tracepoint builds before its program runs. `tp_btf`
/// reads the registers with direct loads from the typed `struct pt_regs *`; `raw_tp` with
/// kernel reads. The register offsets and syscall number are x86-64's, checked against BTF at
/// start-up (see sensor-common [`PT_REGS_DI`]).
#[btf_tracepoint(function = "sys_enter")]
pub fn ioctl_enter_btf(ctx: BtfTracePointContext) -> i32 {
    if ctx.arg::<i64>(1) != NR_IOCTL {
        return 0;
    }
    let regs: *const u8 = ctx.arg(0);
    // SAFETY: `regs` is the tracepoint's typed `struct pt_regs *`; the verifier checks each
    // constant-offset load against its BTF members (si, di, dx) and guards it against faults.
    let reg = |off: usize| unsafe { core::ptr::read_volatile(regs.add(off) as *const u64) };
    let cmd = reg(PT_REGS_SI) as u32;
    if !gpu::gpu_ioctl_shape(cmd) {
        return 0;
    }
    finish(
        Hook::SysEnterIoctl,
        ioctl_enter(reg(PT_REGS_DI), cmd, reg(PT_REGS_DX)),
    ) as i32
}

#[btf_tracepoint(function = "sys_exit")]
pub fn ioctl_exit_btf(ctx: BtfTracePointContext) -> i32 {
    if !ioctl_in_flight() {
        return 0;
    }
    let regs: *const u8 = ctx.arg(0);
    // SAFETY: as in ioctl_enter_btf (member orig_ax).
    let nr = unsafe { core::ptr::read_volatile(regs.add(PT_REGS_ORIG_AX) as *const i64) };
    if nr != NR_IOCTL {
        return 0;
    }
    finish(Hook::SysExitIoctl, ioctl_exit(ctx.arg::<i64>(1))) as i32
}

/// A register of the raw tracepoint's `struct pt_regs *` (kernel read; 0 when it faults).
#[inline(always)]
fn raw_reg(regs: u64, off: usize) -> u64 {
    // SAFETY: fault-tolerant kernel read.
    unsafe { bpf_probe_read_kernel((regs as usize + off) as *const u64) }.unwrap_or(0)
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn ioctl_enter_raw(ctx: RawTracePointContext) -> i32 {
    if ctx.arg::<i64>(1) != NR_IOCTL {
        return 0;
    }
    let regs: u64 = ctx.arg(0);
    let cmd = raw_reg(regs, PT_REGS_SI) as u32;
    if !gpu::gpu_ioctl_shape(cmd) {
        return 0;
    }
    finish(
        Hook::SysEnterIoctl,
        ioctl_enter(raw_reg(regs, PT_REGS_DI), cmd, raw_reg(regs, PT_REGS_DX)),
    ) as i32
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn ioctl_exit_raw(ctx: RawTracePointContext) -> i32 {
    if !ioctl_in_flight() {
        return 0;
    }
    if raw_reg(ctx.arg(0), PT_REGS_ORIG_AX) as i64 != NR_IOCTL {
        return 0;
    }
    finish(Hook::SysExitIoctl, ioctl_exit(ctx.arg::<i64>(1))) as i32
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
    finish(Hook::SysEnterOpenat, try_sys_enter_openat(&ctx))
}

#[inline(always)]
fn try_sys_enter_openat(ctx: &TracePointContext) -> Result<(), ProbeError> {
    const HOOK: Hook = Hook::SysEnterOpenat;
    let fname = ctx_at::<u64, TP_SYSCALL_ENTER_ARG1>(ctx);
    if fname == 0 {
        return Ok(()); // openat(NULL): EFAULT, nothing to read
    }
    let mut head = [0u8; 16];
    // SAFETY: fault-tolerant read of a user string into a stack buffer.
    let h = unsafe { bpf_probe_read_user_str_bytes(fname as *const u8, &mut head) }
        .map_err(|_| ProbeError::UserRead)?;
    if !gpu_path(h) || !current_traced() {
        return Ok(());
    }
    let ev = SCRATCH_OPEN.get_ptr_mut(0).ok_or(ProbeError::MapLookup)?;
    // SAFETY: `ev` is this CPU's scratch slot; see sys_enter_ioctl.
    unsafe {
        fill_header(&mut (*ev).hdr, kind::GPU_OPEN);
        (*ev).ret = 0;
        (*ev).flags = ctx_at::<u64, TP_SYSCALL_ENTER_ARG2>(ctx) as u32;
        (*ev).major = 0;
        (*ev).minor = 0;
        (*ev).dev_kind = 0;
        (*ev).gpu_minor = 0;
        (*ev).name = [0; GPU_NAME_LEN];
        (*ev).parent = [0; GPU_NAME_LEN];
        if bpf_probe_read_user_str_bytes(fname as *const u8, &mut (*ev).name).is_err() {
            count_error(HOOK, ProbeError::UserRead);
        }
        PENDING_OPEN
            .insert(&bpf_get_current_pid_tgid(), &*ev, 0)
            .map_err(|_| ProbeError::MapUpdate)
    }
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn sys_exit_openat(ctx: TracePointContext) -> u32 {
    finish(Hook::SysExitOpenat, try_sys_exit_openat(&ctx))
}

/// `dentry->d_name.name` into `buf`.
#[inline(always)]
fn dentry_name(dentry: u64, buf: &mut [u8; GPU_NAME_LEN]) -> Result<(), ProbeError> {
    let n = read::<u64>(dentry, config().offsets.dentry_name)?;
    // SAFETY: fault-tolerant read of a kernel string into `buf`.
    unsafe { bpf_probe_read_kernel_str_bytes(n as *const u8, buf) }
        .map(|_| ())
        .map_err(|_| ProbeError::KernelRead)
}

/// open(2) (legacy, still used by static binaries and some runtimes) and openat2(2): their
/// exits get the device test of `sys_exit_openat` (no entry hook: a failed open through them is
/// not reported; a successful one is, and marks the process).
#[tracepoint(category = "syscalls", name = "sys_exit_open")]
pub fn sys_exit_open(ctx: TracePointContext) -> u32 {
    finish(Hook::SysExitOpen, open_exit(&ctx, Hook::SysExitOpen))
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat2")]
pub fn sys_exit_openat2(ctx: TracePointContext) -> u32 {
    finish(Hook::SysExitOpenat2, open_exit(&ctx, Hook::SysExitOpenat2))
}

#[inline(always)]
fn try_sys_exit_openat(ctx: &TracePointContext) -> Result<(), ProbeError> {
    open_exit(ctx, Hook::SysExitOpenat)
}

/// The exit of an open: a failed open of a watched path (entry seen) is reported with its
/// errno; a successful one gets the device test on the new fd.
#[inline(always)]
fn open_exit(ctx: &TracePointContext, hook: Hook) -> Result<(), ProbeError> {
    let o = &config().offsets;
    let ret = ctx_at::<i64, TP_SYSCALL_EXIT_RET>(ctx);
    let id = bpf_get_current_pid_tgid();
    // The map value pointer is used only before the entry is removed below.
    let pending = PENDING_OPEN.get_ptr(&id);
    if ret < 0 {
        if let Some(p) = pending {
            let emitted = emit(kind::GPU_OPEN, |ev: *mut GpuOpenEvent| {
                // SAFETY: p is a live map value; ev a reservation of the same type.
                unsafe {
                    ev.write(*p);
                    (*ev).ret = ret as i32;
                }
                Ok(())
            });
            let _ = PENDING_OPEN.remove(&id);
            return emitted;
        }
        return Ok(());
    }
    if pending.is_some() {
        let _ = PENDING_OPEN.remove(&id);
    }
    let file = file_of_fd(ret as u64)?;
    let Some((dev, major, minor)) = gpu_dev_of_file(file)? else {
        return Ok(());
    };
    if dev.kind != gpu::dev::TUN && GPU_TGIDS.insert(&((id >> 32) as u32), &1, 0).is_err() {
        count_error(hook, ProbeError::MapUpdate);
    }
    if !current_traced() {
        return Ok(());
    }
    emit(kind::GPU_OPEN, |ev: *mut GpuOpenEvent| {
        // SAFETY: `ev` is a reservation of size_of::<GpuOpenEvent>() owned by this program.
        unsafe {
            fill_header(&mut (*ev).hdr, kind::GPU_OPEN);
            (*ev).hdr.flags = dev.flags & flags::GPU_EMULATED;
            (*ev).ret = ret as i32;
            (*ev).flags = or_count(hook, read::<u32>(file, o.file_f_flags), 0);
            (*ev).major = major;
            (*ev).minor = minor;
            (*ev).dev_kind = dev.kind;
            (*ev).gpu_minor = dev.reported_minor(minor);
            (*ev).name = [0; GPU_NAME_LEN];
            (*ev).parent = [0; GPU_NAME_LEN];
            match read::<u64>(file, o.file_dentry) {
                Ok(dentry) => {
                    if let Err(e) = dentry_name(dentry, &mut (*ev).name) {
                        count_error(hook, e);
                    }
                    let parent = read::<u64>(dentry, o.dentry_parent)
                        .and_then(|parent| dentry_name(parent, &mut (*ev).parent));
                    if let Err(e) = parent {
                        count_error(hook, e);
                    }
                }
                Err(e) => count_error(hook, e),
            }
        }
        Ok(())
    })
}
