//! Reading the current task and kernel objects through BTF-resolved offsets.

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
    bpf_get_current_task, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
};
use sensor_common::EventHeader;

use crate::config;

/// Reads a `T` at `base + off` from kernel memory. `off == u32::MAX` means the agent could not
/// resolve the field on this kernel.
#[inline(always)]
pub(crate) fn read<T>(base: u64, off: u32) -> Option<T> {
    if base == 0 || off == u32::MAX {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel copies through the fault-handling helper; an invalid address
    // yields an error, never a fault.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

/// `current->real_parent->tgid`.
#[inline(always)]
pub(crate) fn parent_tgid(task: u64) -> u32 {
    let o = &config().offsets;
    read::<u64>(task, o.task_real_parent)
        .and_then(|p| read::<u32>(p, o.task_tgid))
        .unwrap_or(0)
}

/// `task->nsproxy->mnt_ns->ns.inum`.
#[inline(always)]
fn mnt_ns_inum(task: u64) -> u32 {
    let o = &config().offsets;
    read::<u64>(task, o.task_nsproxy)
        .and_then(|ns| read::<u64>(ns, o.nsproxy_mnt_ns))
        .and_then(|m| read::<u32>(m, o.mnt_ns_inum))
        .unwrap_or(0)
}

/// `task->files->fdt->fd[fd]`, the `struct file *` behind a descriptor, or 0.
#[inline(always)]
pub(crate) fn file_of_fd(task: u64, fd: u64) -> u64 {
    let o = &config().offsets;
    let Some(fdt) = read::<u64>(task, o.task_files).and_then(|f| read::<u64>(f, o.files_fdt))
    else {
        return 0;
    };
    let max = read::<u32>(fdt, o.fdt_max_fds).unwrap_or(0) as u64;
    if fd >= max {
        return 0;
    }
    read::<u64>(fdt, o.fdt_fd)
        .and_then(|arr| read::<u64>(arr + fd * 8, 0))
        .unwrap_or(0)
}

/// Fills `hdr` for the current task. Returns the current `task_struct` pointer.
#[inline(always)]
pub(crate) fn fill_header(hdr: &mut EventHeader, kind: u32) -> u64 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: helper without memory arguments.
    let task = unsafe { bpf_get_current_task() };
    hdr.kind = kind;
    hdr.flags = 0;
    // SAFETY: helper without arguments.
    hdr.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    hdr.pid = (pid_tgid >> 32) as u32;
    hdr.tid = pid_tgid as u32;
    hdr.uid = uid_gid as u32;
    hdr.gid = (uid_gid >> 32) as u32;
    // SAFETY: helper without arguments.
    hdr.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    hdr.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    hdr.ppid = parent_tgid(task);
    hdr.mntns = mnt_ns_inum(task);
    task
}
