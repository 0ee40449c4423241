//! Process life cycle: `sched_process_exec`, `sched_process_fork`, `sched_process_exit` as raw
//! tracepoints (no tracefs needed; arguments are the TP_PROTO of include/trace/events/sched.h).

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel_str_bytes, generated as gen},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use sensor_common::{
    flags, kind, ExecEvent, ExitEvent, ForkEvent, Hook, ProbeError, ARGS_MAX, FILENAME_MAX,
};

use crate::{
    config,
    emit::{count_error, emit, finish, or_count},
    filter::{current_traced, inherit, tgid_traced},
    gpu::GPU_TGIDS,
    task::{
        current_task_btf, file_of_fd, fill_header, load, put_addr, read, sock_of_file, AF_INET,
        AF_INET6,
    },
};

/// `trace_sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`;
/// runs in the context of the task after the new image is installed, so `current->mm` is the new
/// mm and its argv block (`arg_start..arg_end`) is the new argv, laid out NUL-separated.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    finish(Hook::SchedProcessExec, try_sched_process_exec(&ctx)) as i32
}

#[inline(always)]
fn try_sched_process_exec(ctx: &RawTracePointContext) -> Result<(), ProbeError> {
    const HOOK: Hook = Hook::SchedProcessExec;
    if !current_traced() {
        return Ok(());
    }
    let bprm: u64 = ctx.arg(2);
    let o = &config().offsets;
    emit(kind::EXEC, |ev: *mut ExecEvent| {
        // SAFETY: `ev` points at a ring-buffer reservation of size_of::<ExecEvent>() bytes that
        // this program owns until submit/discard; all accesses below stay inside it.
        unsafe {
            fill_header(&mut (*ev).hdr, kind::EXEC);
            let task = current_task_btf();
            let mut fl = 0u32;

            (*ev).filename[0] = 0;
            match read::<u64>(bprm, o.bprm_filename) {
                Ok(fname) => {
                    match bpf_probe_read_kernel_str_bytes(fname as *const u8, &mut (*ev).filename) {
                        // The helper stops one byte short of the buffer (for the NUL) when it
                        // truncates.
                        Ok(s) if s.len() >= FILENAME_MAX - 1 => fl |= flags::FILENAME_TRUNCATED,
                        Ok(_) => {}
                        Err(_) => count_error(HOOK, ProbeError::KernelRead),
                    }
                }
                Err(e) => count_error(HOOK, e),
            }

            let argv = load::<*const u8>(task, o.task_mm).and_then(|mm| {
                Ok((
                    load::<u64>(mm, o.mm_arg_start)?,
                    load::<u64>(mm, o.mm_arg_end)?,
                ))
            });
            let (start, end) = or_count(HOOK, argv, (0, 0));
            let total = end.saturating_sub(start);
            let mut len = total;
            if len > ARGS_MAX as u64 {
                len = ARGS_MAX as u64;
                fl |= flags::ARGS_TRUNCATED;
            }
            (*ev).args_total = total as u32;
            (*ev).args_len = 0;
            if start != 0 && len > 0 {
                // Raw helper: the size is a bounded run-time value, not a slice length.
                let r = gen::bpf_probe_read_user(
                    (*ev).args.as_mut_ptr().cast(),
                    (len as u32) & (2 * ARGS_MAX as u32 - 1),
                    start as *const _,
                );
                if r == 0 {
                    (*ev).args_len = len as u32;
                } else {
                    fl |= flags::ARGS_UNREADABLE;
                    count_error(HOOK, ProbeError::UserRead);
                }
            }
            // The executable: no link left means a memfd or a deleted file.
            let nlink = read::<u64>(bprm, o.bprm_file)
                .and_then(|f| read::<u64>(f, o.file_inode))
                .and_then(|i| read::<u32>(i, o.inode_nlink));
            if or_count(HOOK, nlink, 1) == 0 {
                fl |= flags::EXE_UNLINKED;
            }
            stdio(ev);
            (*ev).hdr.flags = fl;
        }
        Ok(())
    })
}

/// Which of fds 0-2 the new image starts with are sockets, and the peer of the first IP one.
/// A shell or interpreter whose stdio is a TCP connection is a reverse shell, however it got
/// there (`socat exec:`, `nc -e`, fds inherited from a parent that dup2'd them, SCM_RIGHTS).
///
/// # Safety
/// `ev` points at a writable `ExecEvent`; the fields this writes need not be initialised.
#[inline(always)]
unsafe fn stdio(ev: *mut ExecEvent) {
    let mut bits = 0u32;
    let mut peer = None;
    for fd in 0..3u32 {
        let s = file_of_fd(fd as u64).and_then(sock_of_file);
        let Some(s) = or_count(Hook::SchedProcessExec, s, None) else {
            continue;
        };
        bits |= 1 << fd;
        if (s.family == AF_INET || s.family == AF_INET6) && s.port != 0 {
            bits |= 1 << (4 + fd);
            // SAFETY: LRU lookup; only presence is used.
            if unsafe { crate::net::TRACKED_SOCKS.get(&s.sk) }.is_some() {
                bits |= 1 << (8 + fd); // a connection a traced process opened (outbound)
            }
            if peer.is_none() {
                peer = Some(s);
            }
        }
    }
    // SAFETY: the caller hands a valid record pointer; only plain writes through it.
    unsafe {
        (*ev).stdio = bits;
        (*ev)._pad = [0; 6];
        match peer {
            Some(s) => {
                (*ev).peer_family = s.family;
                (*ev).peer_port = s.port;
                put_addr(&raw mut (*ev).peer_addr, s.addr);
                (*ev).peer_sock_type = s.sock_type;
            }
            None => {
                (*ev).peer_family = 0;
                (*ev).peer_port = 0;
                put_addr(&raw mut (*ev).peer_addr, [0, 0]);
                (*ev).peer_sock_type = 0;
            }
        }
    }
}

/// `trace_sched_process_fork(struct task_struct *parent, struct task_struct *child)`, in the
/// parent's context. Threads (child->tgid == parent's tgid) are not reported.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    finish(Hook::SchedProcessFork, try_sched_process_fork(&ctx)) as i32
}

#[inline(always)]
fn try_sched_process_fork(ctx: &RawTracePointContext) -> Result<(), ProbeError> {
    let child: u64 = ctx.arg(1);
    let o = &config().offsets;
    let child_pid = read::<u32>(child, o.task_pid)?;
    let child_tgid = read::<u32>(child, o.task_tgid)?;
    if child_pid != child_tgid {
        return Ok(()); // a new thread, not a new process
    }
    let parent = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    // Both inserts are attempted before either error is returned (as before: best effort).
    let inherited = inherit(parent, child_tgid);
    // SAFETY: hash lookup with an integer key; only presence is used. The child inherits the
    // GPU fds.
    let gpu = if unsafe { GPU_TGIDS.get(&parent) }.is_some() {
        GPU_TGIDS
            .insert(&child_tgid, &1, 0)
            .map_err(|_| ProbeError::MapUpdate)
    } else {
        Ok(())
    };
    if tgid_traced(parent) {
        emit(kind::FORK, |ev: *mut ForkEvent| {
            // SAFETY: `ev` is a reservation of size_of::<ForkEvent>() bytes owned by this
            // program.
            unsafe {
                fill_header(&mut (*ev).hdr, kind::FORK);
                (*ev).child_pid = child_tgid;
                (*ev)._pad = 0;
            }
            Ok(())
        })?;
    }
    inherited?;
    gpu
}

/// `trace_sched_process_exit(struct task_struct *p[, bool group_dead])`, in the exiting task's
/// context. Reported once per process: when `group_dead` (the last thread), or — on kernels whose
/// tracepoint lacks that argument — when the thread-group leader exits.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    finish(Hook::SchedProcessExit, try_sched_process_exit(&ctx)) as i32
}

#[inline(always)]
fn try_sched_process_exit(ctx: &RawTracePointContext) -> Result<(), ProbeError> {
    let o = &config().offsets;
    if o.exit_has_group_dead != 0 {
        let group_dead: u64 = ctx.arg(1);
        if group_dead & 0xff == 0 {
            return Ok(());
        }
    } else {
        let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
        if pid_tgid >> 32 != pid_tgid & 0xffff_ffff {
            return Ok(());
        }
    }
    let traced = current_traced();
    let tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    // Removals of keys that are not there (most processes) fail: not errors.
    let _ = GPU_TGIDS.remove(&tgid);
    let _ = crate::TRACE_TGIDS.remove(&tgid);
    if !traced {
        return Ok(());
    }
    emit(kind::EXIT, |ev: *mut ExitEvent| {
        // SAFETY: `ev` is a reservation of size_of::<ExitEvent>() bytes owned by this program.
        unsafe {
            fill_header(&mut (*ev).hdr, kind::EXIT);
            // The exiting task is current.
            (*ev).exit_code = or_count(
                Hook::SchedProcessExit,
                load::<i32>(current_task_btf(), o.task_exit_code),
                0,
            );
            (*ev)._pad = 0;
        }
        Ok(())
    })
}
