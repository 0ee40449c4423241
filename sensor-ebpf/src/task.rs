//! Reading the current task and kernel objects through BTF-resolved offsets.

use aya_ebpf::helpers::{bpf_ktime_get_boot_ns, bpf_probe_read_kernel};
use sensor_common::{EventHeader, ProbeError};

use crate::config;

/// Reads a `T` at `base + off` from kernel memory. `off == u32::MAX` means the agent could not
/// resolve the field on this kernel.
#[inline(always)]
pub(crate) fn read<T>(base: u64, off: u32) -> Result<T, ProbeError> {
    if off == u32::MAX {
        return Err(ProbeError::BadOffset);
    }
    if base == 0 {
        return Err(ProbeError::KernelRead);
    }
    // SAFETY: bpf_probe_read_kernel copies through the fault-handling helper; an invalid address
    // yields an error, never a fault.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }
        .map_err(|_| ProbeError::KernelRead)
}

/// A plain load at `base + off` through a BTF-typed kernel pointer: `base` must come from
/// `bpf_get_current_task_btf()` or from a pointer member loaded this way. The verifier checks
/// the access against the kernel's BTF (the offset is a load-time constant from the read-only
/// CONFIG) and turns it into an exception-handled load, far cheaper than a
/// `bpf_probe_read_kernel` helper call.
#[inline(always)]
pub(crate) fn load<T: Copy>(base: *const u8, off: u32) -> Result<T, ProbeError> {
    if off == u32::MAX {
        return Err(ProbeError::BadOffset);
    }
    if base.is_null() {
        return Err(ProbeError::KernelRead);
    }
    // SAFETY: see above; the JIT emits a faulting-safe load (BPF_PROBE_MEM) for BTF pointers,
    // and `base` is non-null.
    Ok(unsafe { core::ptr::read_volatile(base.add(off as usize).cast::<T>()) })
}

/// 16 address bytes (network byte order; IPv4 in the first 4) held as two little-endian
/// words: copied and zeroed with two 8-byte loads and stores, where a `[u8; 16]` (alignment
/// 1) takes sixteen of each.
pub(crate) type Addr = [u64; 2];

/// Writes `a` into a record's 16-byte address field, which must be 8-aligned (sensor-common
/// asserts the offsets of every such field; ring reservations are 8-aligned).
#[inline(always)]
pub(crate) fn put_addr(dst: *mut [u8; 16], a: Addr) {
    // SAFETY: the caller passes a pointer to 16 writable, 8-aligned bytes.
    unsafe {
        let d = dst.cast::<u64>();
        d.write(a[0]);
        d.add(1).write(a[1]);
    }
}

/// The current task as a BTF-typed pointer.
#[inline(always)]
pub(crate) fn current_task_btf() -> *const u8 {
    // SAFETY: helper without arguments; returns the current task_struct.
    unsafe { aya_ebpf::helpers::generated::bpf_get_current_task_btf() as *const u8 }
}

/// The registers the current task saved when it entered its syscall (`bpf_task_pt_regs`), as a
/// BTF-typed pointer for [`load`]: a syscall exit program reads the call's arguments there
/// ([`syscall_arg`]) instead of keeping them from an entry program.
#[inline(always)]
pub(crate) fn syscall_regs() -> *const u8 {
    // SAFETY: the helper takes the BTF task pointer of the current task and returns its
    // `struct pt_regs *` (never NULL for a task in a syscall).
    unsafe { aya_ebpf::helpers::generated::bpf_task_pt_regs(current_task_btf() as *mut _) as *const u8 }
}

/// Argument `N` (0, 1 or 2) of the current syscall, from [`syscall_regs`]; 0 when unreadable.
#[inline(always)]
pub(crate) fn syscall_arg<const N: usize>(regs: *const u8) -> u64 {
    let o = &config().offsets;
    let off = match N {
        0 => o.regs_arg0,
        1 => o.regs_arg1,
        _ => o.regs_arg2,
    };
    load::<u64>(regs, off).unwrap_or(0)
}

/// `current->real_parent->tgid`.
#[inline(always)]
pub(crate) fn parent_tgid(task: *const u8) -> u32 {
    let o = &config().offsets;
    load::<*const u8>(task, o.task_real_parent)
        .and_then(|p| load::<u32>(p, o.task_tgid))
        .unwrap_or(0)
}

/// `task->nsproxy->mnt_ns->ns.inum`.
#[inline(always)]
fn mnt_ns_inum(task: *const u8) -> u32 {
    let o = &config().offsets;
    load::<*const u8>(task, o.task_nsproxy)
        .and_then(|ns| load::<*const u8>(ns, o.nsproxy_mnt_ns))
        .and_then(|m| load::<u32>(m, o.mnt_ns_inum))
        .unwrap_or(0)
}

/// `task->files->fdt->fd[fd]`, the `struct file *` behind a descriptor; 0 when `fd` is not
/// open (not an error: the caller's fd may be bad). An error when the fd table cannot be read.
#[inline(always)]
pub(crate) fn file_of_fd(fd: u64) -> Result<u64, ProbeError> {
    let o = &config().offsets;
    let task = current_task_btf();
    let fdt =
        load::<*const u8>(task, o.task_files).and_then(|f| load::<*const u8>(f, o.files_fdt))?;
    let max = load::<u32>(fdt, o.fdt_max_fds)? as u64;
    if fd >= max {
        return Ok(0);
    }
    // `fd` is `struct file **`: the verifier types the loaded array as a plain scalar, so the
    // element itself needs the helper.
    let arr = load::<u64>(fdt, o.fdt_fd)?;
    read::<u64>(arr + fd * 8, 0)
}

/// Address families (include/linux/socket.h).
pub(crate) const AF_INET: u16 = 2;
pub(crate) const AF_INET6: u16 = 10;
/// File type bits of `i_mode` (include/uapi/linux/stat.h): S_IFMT, S_IFSOCK.
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

/// A socket behind a file: its family, type and peer (port 0 and a zero address when it has
/// none, or for families other than AF_INET/AF_INET6).
pub(crate) struct SockInfo {
    pub family: u16,
    pub sock_type: u16,
    pub port: u16,
    pub addr: Addr,
    pub sk: u64,
}

/// Both ends of a socket (`struct sock_common`): the peer address and port, the local address
/// and port (host order). IPv4 in one read: `skc_addrpair` (daddr, rcv_saddr), `skc_hash`,
/// `skc_portpair` (dport, num) are 16 consecutive bytes; IPv6 in two: the port pair, and
/// `skc_v6_daddr` with `skc_v6_rcv_saddr` after it. The agent checks these adjacencies
/// against BTF at start-up. Words are little-endian (bpfel): the first byte in memory is the
/// low byte.
pub(crate) struct SkEnds {
    pub peer: Addr,
    pub peer_port: u16,
    pub local: Addr,
    pub local_port: u16,
}

#[inline(always)]
pub(crate) fn sk_ends(sk: u64, family: u16) -> Result<SkEnds, ProbeError> {
    let o = &config().offsets;
    if family == AF_INET {
        // word 0: daddr (bytes 0-3), rcv_saddr (4-7); word 1: hash (8-11), dport (12-13,
        // network order), num (14-15, host order).
        let w = read::<[u64; 2]>(sk, o.skc_daddr)?;
        Ok(SkEnds {
            peer: [w[0] & 0xffff_ffff, 0],
            peer_port: ((w[1] >> 32) as u16).swap_bytes(),
            local: [w[0] >> 32, 0],
            local_port: (w[1] >> 48) as u16,
        })
    } else {
        let ports = read::<u32>(sk, o.skc_dport)?;
        let w = read::<[u64; 4]>(sk, o.skc_v6_daddr)?;
        Ok(SkEnds {
            peer: [w[0], w[1]],
            peer_port: (ports as u16).swap_bytes(),
            local: [w[2], w[3]],
            local_port: (ports >> 16) as u16,
        })
    }
}

/// `socket->type` and `socket->sk` of a `struct socket *`, in one read of the struct's first
/// 32 bytes (`type` and `sk` lie inside them; checked against BTF at start-up).
#[inline(always)]
pub(crate) fn socket_type_sk(sock: u64) -> Result<(u16, u64), ProbeError> {
    let o = &config().offsets;
    let b = read::<[u8; 32]>(sock, 0)?;
    let (t, k) = (o.socket_type as usize, o.socket_sk as usize);
    if t + 2 > 32 || k + 8 > 32 {
        return Err(ProbeError::BadOffset);
    }
    let ty = u16::from_ne_bytes([b[t], b[t + 1]]);
    let mut sk = [0u8; 8];
    sk.copy_from_slice(&b[k..k + 8]);
    Ok((ty, u64::from_ne_bytes(sk)))
}

/// `Ok(None)` when `file` (a `struct file *`, 0 for none) is not a socket.
#[inline(always)]
pub(crate) fn sock_of_file(file: u64) -> Result<Option<SockInfo>, ProbeError> {
    if file == 0 {
        return Ok(None);
    }
    let o = &config().offsets;
    let inode = read::<u64>(file, o.file_inode)?;
    if read::<u16>(inode, o.inode_mode)? & S_IFMT != S_IFSOCK {
        return Ok(None);
    }
    let sock = read::<u64>(file, o.file_private_data)?;
    let (sock_type, sk) = socket_type_sk(sock)?;
    let family = read::<u16>(sk, o.skc_family)?;
    let (addr, port) = if family == AF_INET || family == AF_INET6 {
        let e = sk_ends(sk, family)?;
        (e.peer, e.peer_port)
    } else {
        ([0, 0], 0)
    };
    Ok(Some(SockInfo {
        family,
        sock_type,
        port,
        addr,
        sk,
    }))
}

/// Fills `hdr` for the current task. Everything but the clock is read with plain loads
/// through the BTF task pointer (one load each, where the equivalent helpers cost a call
/// each: pid/tgid, uid/gid, cgroup id, comm).
#[inline(always)]
pub(crate) fn fill_header(hdr: &mut EventHeader, kind: u32) {
    let o = &config().offsets;
    let t = current_task_btf();
    hdr.kind = kind;
    hdr.flags = 0;
    // SAFETY: helper without arguments.
    hdr.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    hdr.pid = load::<u32>(t, o.task_tgid).unwrap_or(0);
    hdr.tid = load::<u32>(t, o.task_pid).unwrap_or(0);
    // `current_cred()`: the ids bpf_get_current_uid_gid() reports (the real uid and gid).
    let cred = load::<*const u8>(t, o.task_cred).unwrap_or(core::ptr::null());
    hdr.uid = load::<u32>(cred, o.cred_uid).unwrap_or(0);
    hdr.gid = load::<u32>(cred, o.cred_gid).unwrap_or(0);
    // The cgroup v2 id, as bpf_get_current_cgroup_id() computes it.
    hdr.cgroup_id = load::<*const u8>(t, o.task_cgroups)
        .and_then(|cs| load::<*const u8>(cs, o.css_set_dfl_cgrp))
        .and_then(|cg| load::<*const u8>(cg, o.cgroup_kn))
        .and_then(|kn| load::<u64>(kn, o.kernfs_node_id))
        .unwrap_or(0);
    let lo = load::<u64>(t, o.task_comm).unwrap_or(0);
    let hi = load::<u64>(t, o.task_comm.wrapping_add(8)).unwrap_or(0);
    hdr.comm[..8].copy_from_slice(&lo.to_ne_bytes());
    hdr.comm[8..].copy_from_slice(&hi.to_ne_bytes());
    hdr.ppid = parent_tgid(t);
    hdr.mntns = mnt_ns_inum(t);
}

/// The first `N` bytes of a tracepoint record (`N` one of sensor-common's `record_size`), read
/// with one helper call; fields are then picked out at their format-file offsets (load-time
/// constants) without further calls.
#[inline(always)]
pub(crate) fn record<const N: usize>(
    ctx: &aya_ebpf::programs::TracePointContext,
) -> Result<[u8; N], ProbeError> {
    use aya_ebpf::EbpfContext;
    // SAFETY: the context points at the tracepoint record in a per-CPU trace buffer; the helper
    // copies with fault handling.
    unsafe { bpf_probe_read_kernel(ctx.as_ptr() as *const [u8; N]) }
        .map_err(|_| ProbeError::KernelRead)
}

/// A little-endian field of `size` bytes (1..=8) at `off` in a record copy. A field outside
/// the copy is [`ProbeError::BadOffset`] (the agent rejects such offsets at load time).
#[inline(always)]
pub(crate) fn field<const N: usize>(r: &[u8; N], off: u32, size: usize) -> Result<u64, ProbeError> {
    let off = off as usize;
    if off + size > N {
        return Err(ProbeError::BadOffset);
    }
    let mut v = 0u64;
    let mut i = 0;
    while i < size {
        v |= (r[off + i] as u64) << (8 * i);
        i += 1;
    }
    Ok(v)
}

/// A field of a syscall tracepoint record at a compile-time offset (`sensor_common::TP_SYSCALL_*`,
/// which the agent checks against tracefs before loading): a direct context load, no helper.
#[inline(always)]
pub(crate) fn ctx_at<T: Copy, const OFF: u32>(ctx: &aya_ebpf::programs::TracePointContext) -> T {
    use aya_ebpf::EbpfContext;
    // SAFETY: a load inside the tracepoint record at a constant offset, which the verifier
    // checks as a context access.
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(OFF as usize) as *const T) }
}

/// A field of the tracepoint record read straight from the context at its format-file offset.
#[inline(always)]
pub(crate) fn ctx_field<T>(
    ctx: &aya_ebpf::programs::TracePointContext,
    off: u32,
) -> Result<T, ProbeError> {
    if off == u32::MAX {
        return Err(ProbeError::BadOffset);
    }
    // SAFETY: read_at copies from the record with bpf_probe_read_kernel (fault-handling).
    unsafe { ctx.read_at::<T>(off as usize) }.map_err(|_| ProbeError::KernelRead)
}
