//! GPU driver ioctls and device opens, each seen at its syscall exit only: the call's arguments
//! come from the registers the task saved at syscall entry (`task::syscall_regs`), so no entry
//! program runs and nothing is kept between entry and exit. The device test happens here, in
//! the kernel: fd → `struct file` → `f_inode->i_rdev` → (major, minor) looked up in
//! `GPU_DEVS`, which the agent fills from /proc/devices (and configuration). A non-GPU ioctl
//! costs two helper calls, a register load and a compare and produces nothing.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user,
        bpf_probe_read_user_str_bytes, generated as gen,
    },
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap},
    programs::TracePointContext,
};
use sensor_common::{
    flags, gpu, gpu_dev_key, kind, GpuDev, GpuIoctlEvent, GpuOpenEvent, Hook, ProbeError,
    FILTER_MAP_ENTRIES, GPU_ARG_LEN, GPU_NAME_LEN, TP_SYSCALL_EXIT_RET,
};

use crate::{
    config,
    emit::{count_error, emit, finish, or_count},
    filter::current_traced,
    task::{ctx_at, file_of_fd, fill_header, read, syscall_arg, syscall_regs},
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
/// SCM_RIGHTS or pidfd_getfd(2)).
#[map(name = "GPU_TGIDS")]
pub static GPU_TGIDS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(65536, 0);

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


#[tracepoint(category = "syscalls", name = "sys_exit_ioctl")]
pub fn sys_exit_ioctl(ctx: TracePointContext) -> u32 {
    finish(Hook::SysExitIoctl, try_sys_exit_ioctl(&ctx))
}

#[inline(always)]
fn try_sys_exit_ioctl(ctx: &TracePointContext) -> Result<(), ProbeError> {
    const HOOK: Hook = Hook::SysExitIoctl;
    // Only a GPU-shaped request earns the device test: every other ioctl on the node costs
    // the two helper calls that find the saved registers, one load and a compare, with no map
    // lookup.
    let regs = syscall_regs();
    let cmd = syscall_arg::<1>(regs) as u32;
    if !gpu::gpu_ioctl_shape(cmd) {
        return Ok(());
    }
    let fd = syscall_arg::<0>(regs);
    let arg = syscall_arg::<2>(regs);
    let ret = ctx_at::<i64, TP_SYSCALL_EXIT_RET>(ctx);
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
    emit(kind::GPU_IOCTL, |ev: *mut GpuIoctlEvent| {
        // SAFETY: `ev` is a reservation of size_of::<GpuIoctlEvent>() owned by this program;
        // every field is written through the pointer.
        unsafe {
            fill_header(&mut (*ev).hdr, kind::GPU_IOCTL);
            let mut fl = dev.flags & flags::GPU_EMULATED;
            (*ev).ret = ret as i32;
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
            // The parameters as the call left them: the request's inputs (class, object,
            // handles) and what the driver wrote back.
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
        }
        Ok(())
    })
}

/// Whether a user path names a GPU device node by its standard location.
#[inline(always)]
fn gpu_path(p: &[u8]) -> bool {
    p.starts_with(b"/dev/nvidia")
        || p.starts_with(b"/dev/kfd")
        || p.starts_with(b"/dev/dri/")
        || p.starts_with(b"/dev/net/tun")
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn sys_exit_openat(ctx: TracePointContext) -> u32 {
    finish(Hook::SysExitOpenat, try_sys_exit_openat(&ctx))
}

/// A failed openat(2) of a watched path, reported with its errno (path and flags from the
/// saved registers: openat(dirfd, path, flags)).
#[inline(always)]
fn failed_openat(ret: i64) -> Result<(), ProbeError> {
    const HOOK: Hook = Hook::SysExitOpenat;
    let regs = syscall_regs();
    let fname = syscall_arg::<1>(regs);
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
    let open_flags = syscall_arg::<2>(regs) as u32;
    emit(kind::GPU_OPEN, |ev: *mut GpuOpenEvent| {
        // SAFETY: `ev` is a reservation of size_of::<GpuOpenEvent>() owned by this program.
        unsafe {
            fill_header(&mut (*ev).hdr, kind::GPU_OPEN);
            (*ev).ret = ret as i32;
            (*ev).flags = open_flags;
            (*ev).major = 0;
            (*ev).minor = 0;
            (*ev).dev_kind = 0;
            (*ev).gpu_minor = 0;
            (*ev).name = [0; GPU_NAME_LEN];
            (*ev).parent = [0; GPU_NAME_LEN];
            if bpf_probe_read_user_str_bytes(fname as *const u8, &mut (*ev).name).is_err() {
                count_error(HOOK, ProbeError::UserRead);
            }
        }
        Ok(())
    })
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
/// exits get the device test of `sys_exit_openat` (a failed open through them is not
/// reported; a successful one is, and marks the process).
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
    let ret = ctx_at::<i64, TP_SYSCALL_EXIT_RET>(ctx);
    if ret < 0 {
        return failed_openat(ret);
    }
    open_exit(ctx, Hook::SysExitOpenat)
}

/// The exit of an open: a successful one gets the device test on the new fd.
#[inline(always)]
fn open_exit(ctx: &TracePointContext, hook: Hook) -> Result<(), ProbeError> {
    let o = &config().offsets;
    let ret = ctx_at::<i64, TP_SYSCALL_EXIT_RET>(ctx);
    if ret < 0 {
        return Ok(());
    }
    let id = bpf_get_current_pid_tgid();
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
