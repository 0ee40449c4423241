//! connect(2) and bind(2) (syscall exit tracepoints; the arguments come from the registers the
//! task saved at syscall entry, the peer of a connected socket from the socket), TCP state changes
//! (`sock/inet_sock_set_state`) for connects that bypass connect(2) (io_uring) and for listeners,
//! and dup2/dup3 of an IP socket onto stdio (syscall exit tracepoints). First bytes of new
//! connections are taken at the socket level (`sock.rs`), not here.
//!
//! Tracepoint record layouts are not assumed: the field offsets come from the tracefs `format`
//! files via [`crate::config`].

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use sensor_common::{flags, kind, record_size, Hook, NetEvent, ProbeError, NR_CONNECT, TP_SYSCALL_EXIT_RET};

use crate::{
    config,
    emit::{count_error, emit, finish, or_count},
    filter::{current_traced, tgid_traced},
    task::{
        ctx_at, ctx_field, field, file_of_fd, fill_header, load, read, record, sk_ends,
        put_addr, sock_of_file, socket_type_sk, syscall_arg, syscall_regs, Addr, AF_INET,
        AF_INET6,
    },
};
/// TCP states (include/net/tcp_states.h).
const TCP_SYN_SENT: i32 = 2;
const TCP_LISTEN: i32 = 10;
/// SOCK_STREAM (include/linux/net.h, enum sock_type).
const SOCK_STREAM: u16 = 1;

/// A connect/bind, or a followed TCP connection.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    kind: u32,
    fd: i32,
    family: u16,
    port: u16,
    sock_type: u16,
    protocol: u16,
    addr: Addr,
    /// `struct sock *` of the socket (0 when unknown).
    sk: u64,
    /// Thread group that made the connection (a close may run in any context).
    owner: u32,
    /// Local port and address of a TCP connect, once SYN_SENT bound them (0 before).
    local_port: u16,
    _pad: u16,
    local_addr: Addr,
}

impl Pending {
    /// All fields zero; callers set what they know.
    #[inline(always)]
    fn zeroed() -> Pending {
        Pending {
            kind: 0,
            fd: 0,
            family: 0,
            port: 0,
            sock_type: 0,
            protocol: 0,
            addr: [0, 0],
            sk: 0,
            owner: 0,
            local_port: 0,
            _pad: 0,
            local_addr: [0, 0],
        }
    }
}
const _: () = assert!(core::mem::size_of::<Pending>() == 64);

/// Outbound TCP connections being followed until TCP_CLOSE, by `struct sock *`.
#[map(name = "TRACKED_SOCKS")]
pub(crate) static TRACKED_SOCKS: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(65536, 0);

/// TCP_CLOSE (include/net/tcp_states.h).
const TCP_CLOSE: i32 = 7;

/// EINPROGRESS (include/uapi/asm-generic/errno.h).
const EINPROGRESS: i64 = 115;

/// Reads a user `struct sockaddr` (include/uapi/linux/in.h `sockaddr_in`: family@0, port@2 (be),
/// addr@4; include/uapi/linux/in6.h `sockaddr_in6`: family@0, port@2, flowinfo@4, addr@8).
/// Only AF_INET/AF_INET6 are kept (`Ok(true)`): AF_UNIX and others are filtered here, in the
/// kernel, as are NULL pointers and lengths the kernel rejects itself.
#[inline(always)]
fn read_sockaddr(ptr: u64, len: u64, p: &mut Pending) -> Result<bool, ProbeError> {
    if ptr == 0 || len < 2 {
        return Ok(false);
    }
    // One read covers family, port and an IPv4 address; a shorter sockaddr (AF_UNIX with a
    // short path) gets a 2-byte read.
    let head = if len >= 8 {
        // SAFETY: bpf_probe_read_user handles faults and returns an error for bad user pointers.
        unsafe { bpf_probe_read_user(ptr as *const [u8; 8]) }.map_err(|_| ProbeError::UserRead)?
    } else {
        // SAFETY: as above.
        let f = unsafe { bpf_probe_read_user(ptr as *const [u8; 2]) }
            .map_err(|_| ProbeError::UserRead)?;
        [f[0], f[1], 0, 0, 0, 0, 0, 0]
    };
    let family = u16::from_ne_bytes([head[0], head[1]]);
    p.family = family;
    match family {
        AF_INET if len >= 8 => {
            p.port = u16::from_be_bytes([head[2], head[3]]);
            p.addr = [u32::from_ne_bytes([head[4], head[5], head[6], head[7]]) as u64, 0];
            Ok(true)
        }
        AF_INET6 if len >= 24 => {
            // sockaddr_in6: family@0, port@2, flowinfo@4, addr@8 (two words).
            // SAFETY: as above.
            let raw = unsafe { bpf_probe_read_user(ptr as *const [u64; 3]) }
                .map_err(|_| ProbeError::UserRead)?;
            p.port = ((raw[0] >> 16) as u16).swap_bytes();
            p.addr = [raw[1], raw[2]];
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// AF_UNSPEC (include/linux/socket.h).
const AF_UNSPEC: u16 = 0;

/// The family of a user `struct sockaddr` (`None` when there is none or it is unreadable).
#[inline(always)]
fn user_family(ptr: u64, len: u64) -> Option<u16> {
    if ptr == 0 || len < 2 {
        return None;
    }
    // SAFETY: bpf_probe_read_user handles faults and returns an error for bad user pointers.
    unsafe { bpf_probe_read_user(ptr as *const u16) }.ok()
}

/// sys_exit_connect / sys_exit_bind: report with the result; follow TCP connects. The fd and
/// the caller's sockaddr are read from the saved registers. A successful call is described
/// from the socket itself (family, and the peer for connect or the address bound for bind):
/// the kernel's view, not the caller's buffer, which another thread may have rewritten while
/// the call ran, and no user read. A failed call is described from the caller's sockaddr.
#[inline(always)]
fn exit(ctx: &TracePointContext, hook: Hook, k: u32) -> Result<(), ProbeError> {
    let id = bpf_get_current_pid_tgid();
    if !tgid_traced((id >> 32) as u32) {
        return Ok(());
    }
    let o = &config().offsets;
    let regs = syscall_regs();
    let fd = syscall_arg::<0>(regs);
    let ret = ctx_at::<i64, TP_SYSCALL_EXIT_RET>(ctx);
    let ok = ret == 0 || (k == kind::CONNECT && ret == -EINPROGRESS);
    let mut p = Pending::zeroed();
    p.kind = k;
    p.fd = fd as i32;
    p.owner = (id >> 32) as u32;
    // A bad fd has no file (0): the syscall failed with EBADF and the event says so.
    let file = or_count(hook, file_of_fd(fd & 0xffff_ffff), 0);
    if file != 0 {
        // A file that is not a socket may have no private data (ENOTSOCK): not an error.
        let sock = or_count(hook, read::<u64>(file, o.file_private_data), 0);
        if sock != 0 {
            (p.sock_type, p.sk) = or_count(hook, socket_type_sk(sock), (0, 0));
        }
    }
    let from_sock = ok
        && p.sk != 0
        && match or_count(hook, read::<u16>(p.sk, o.skc_family), 0) {
            0 => false, // unreadable: the caller's sockaddr below
            f @ (AF_INET | AF_INET6) => match or_count(hook, sk_ends(p.sk, f).map(Some), None) {
                // A successful connect that left no peer port may be connect(AF_UNSPEC)
                // dissolving a UDP association (IPv6 keeps the old peer address): not a
                // connect to report. Raw and ping sockets, and connects to port 0, also
                // leave port 0; the caller's family tells them apart (one 2-byte read).
                Some(e)
                    if k == kind::CONNECT
                        && e.peer_port == 0
                        && user_family(syscall_arg::<1>(regs), syscall_arg::<2>(regs))
                            == Some(AF_UNSPEC) =>
                {
                    return Ok(());
                }
                Some(e) => {
                    p.family = f;
                    if k == kind::CONNECT {
                        // The peer the kernel connected to, and the local side it bound:
                        // what a firewall's log line shows for this connection.
                        (p.addr, p.port) = (e.peer, e.peer_port);
                        (p.local_addr, p.local_port) = (e.local, e.local_port);
                    } else {
                        // The address bound (port 0 asks for a port: this is the one given).
                        (p.addr, p.port) = (e.local, e.local_port);
                    }
                    true
                }
                None => false,
            },
            _ => return Ok(()), // AF_UNIX, netlink, …: filtered here, in the kernel
        };
    if !from_sock && !read_sockaddr(syscall_arg::<1>(regs), syscall_arg::<2>(regs), &mut p)? {
        return Ok(());
    }
    let emitted = emit_net(k, 0, ret as i32, p.fd, &p);
    // Followed even when the record was lost, as before.
    if k == kind::CONNECT && p.sock_type == SOCK_STREAM && ok && p.sk != 0 {
        if TRACKED_SOCKS.insert(&p.sk, &p, 0).is_err() {
            count_error(hook, ProbeError::MapUpdate);
        }
    }
    emitted
}

/// sys_exit_dup2 / sys_exit_dup3: an outbound IPv4/IPv6 TCP connection now sits on fd 0, 1 or
/// 2 (the reverse-shell move of a program that may never exec afterwards).
#[inline(always)]
fn dup_exit(ctx: &TracePointContext) -> Result<(), ProbeError> {
    let ret = ctx_at::<i64, TP_SYSCALL_EXIT_RET>(ctx);
    if !(0..=2).contains(&ret) || !current_traced() {
        return Ok(());
    }
    let Some(s) = sock_of_file(file_of_fd(ret as u64)?)? else {
        return Ok(());
    };
    if s.family != AF_INET && s.family != AF_INET6 {
        return Ok(()); // a unix socket on stdio is ordinary (systemd, container runtimes)
    }
    // Only connections a traced process opened itself (followed since its connect): an
    // accepted socket put on stdio is what sshd, inetd and systemd socket activation do.
    // SAFETY: LRU lookup; only presence is used.
    if unsafe { TRACKED_SOCKS.get(&s.sk) }.is_none() {
        return Ok(());
    }
    let mut p = Pending::zeroed();
    p.kind = kind::SOCK_DUP;
    p.fd = ret as i32;
    p.family = s.family;
    p.port = s.port;
    p.sock_type = s.sock_type;
    p.addr = s.addr;
    p.sk = s.sk;
    p.owner = (bpf_get_current_pid_tgid() >> 32) as u32;
    emit_net(kind::SOCK_DUP, 0, 0, ret as i32, &p)
}

#[tracepoint(category = "syscalls", name = "sys_exit_dup2")]
pub fn sys_exit_dup2(ctx: TracePointContext) -> u32 {
    finish(Hook::SysExitDup2, dup_exit(&ctx))
}

#[tracepoint(category = "syscalls", name = "sys_exit_dup3")]
pub fn sys_exit_dup3(ctx: TracePointContext) -> u32 {
    finish(Hook::SysExitDup3, dup_exit(&ctx))
}

/// A connect/bind/listen record from `p`.
#[inline(always)]
fn emit_net(k: u32, fl: u32, ret: i32, fd: i32, p: &Pending) -> Result<(), ProbeError> {
    emit(k, |ev: *mut NetEvent| {
        // SAFETY: `ev` is a reservation of size_of::<NetEvent>() bytes owned by this program.
        unsafe {
            fill_header(&mut (*ev).hdr, k);
            (*ev).hdr.flags = fl;
            (*ev).ret = ret;
            (*ev).fd = fd;
            (*ev).family = p.family;
            (*ev).port = p.port;
            (*ev).sock_type = p.sock_type;
            (*ev).protocol = p.protocol;
            put_addr(&raw mut (*ev).addr, p.addr);
            (*ev).cookie = if p.sk == 0 {
                0
            } else {
                p.sk ^ config().cookie_key
            };
            put_addr(&raw mut (*ev).local_addr, p.local_addr);
            (*ev).local_port = p.local_port;
            (*ev)._pad[0] = 0;
            (*ev)._pad[1] = 0;
            (*ev)._pad[2] = 0;
        }
        Ok(())
    })
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let h = Hook::SysExitConnect;
    finish(h, exit(&ctx, h, kind::CONNECT))
}

#[tracepoint(category = "syscalls", name = "sys_exit_bind")]
pub fn sys_exit_bind(ctx: TracePointContext) -> u32 {
    let h = Hook::SysExitBind;
    finish(h, exit(&ctx, h, kind::BIND))
}

/// `sock/inet_sock_set_state`: SYN_SENT outside connect(2) → a connect event marked
/// `NET_NO_SYSCALL` (io_uring and other in-kernel callers); LISTEN → a listen event with the
/// local address. Runs in the context of the task that changed the state for both transitions.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    finish(Hook::InetSockSetState, try_inet_sock_set_state(&ctx))
}

#[inline(always)]
fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<(), ProbeError> {
    let o = &config().offsets;
    let newstate = ctx_field::<i32>(ctx, o.tp_iss_newstate)?;
    if newstate == TCP_CLOSE {
        return tcp_close(ctx);
    }
    if newstate != TCP_SYN_SENT && newstate != TCP_LISTEN {
        return Ok(());
    }
    if !current_traced() {
        return Ok(());
    }
    let id = bpf_get_current_pid_tgid();
    // Inside connect(2) (the current task's saved syscall number): sys_exit_connect reports
    // it with the result. A connect submitted through io_uring runs in io_uring_enter(2) or a
    // kernel worker, and is reported here.
    if newstate == TCP_SYN_SENT
        && load::<u64>(syscall_regs(), config().offsets.regs_nr).is_ok_and(|nr| nr == NR_CONNECT)
    {
        return Ok(());
    }
    // One copy of the record; fields at their format-file offsets.
    let r = record::<{ record_size::INET_SOCK_SET_STATE }>(ctx)?;
    let family = field(&r, o.tp_iss_family, 2)? as u16;
    let sport = field(&r, o.tp_iss_sport, 2)? as u16;
    let dport = field(&r, o.tp_iss_dport, 2)? as u16;
    let protocol = field(&r, o.tp_iss_protocol, 2)? as u16;
    let listen = newstate == TCP_LISTEN;
    let sk = field(&r, o.tp_iss_skaddr, 8)?;
    let mut p = Pending::zeroed();
    p.fd = -1;
    p.family = family;
    p.port = if listen { sport } else { dport };
    p.sock_type = SOCK_STREAM;
    p.protocol = protocol;
    p.sk = sk;
    p.owner = (id >> 32) as u32;
    if !listen {
        p.local_port = sport;
    }
    // Record fields are read little-endian: an address's first byte is its word's low byte.
    if family == AF_INET {
        let off = if listen {
            o.tp_iss_saddr
        } else {
            o.tp_iss_daddr
        };
        p.addr = [field(&r, off, 4)?, 0];
        if !listen {
            p.local_addr = [field(&r, o.tp_iss_saddr, 4)?, 0];
        }
    } else {
        let off = if listen {
            o.tp_iss_saddr_v6
        } else {
            o.tp_iss_daddr_v6
        };
        p.addr = [field(&r, off, 8)?, field(&r, off.wrapping_add(8), 8)?];
        if !listen {
            let l = o.tp_iss_saddr_v6;
            p.local_addr = [field(&r, l, 8)?, field(&r, l.wrapping_add(8), 8)?];
        }
    }
    if listen {
        emit_net(kind::LISTEN, 0, 0, -1, &p)
    } else {
        let emitted = emit_net(kind::CONNECT, flags::NET_NO_SYSCALL, 0, -1, &p);
        // Followed even when the record was lost, as before.
        if TRACKED_SOCKS.insert(&sk, &p, 0).is_err() {
            count_error(Hook::InetSockSetState, ProbeError::MapUpdate);
        }
        emitted
    }
}

/// A followed connection reached TCP_CLOSE: report it for its owner (recorded at connect).
#[inline(always)]
fn tcp_close(ctx: &TracePointContext) -> Result<(), ProbeError> {
    let o = &config().offsets;
    let r = record::<{ record_size::INET_SOCK_SET_STATE_CLOSE }>(ctx)?;
    let sk = field(&r, o.tp_iss_skaddr, 8)?;
    // SAFETY: LRU lookup; the value is copied out before removal.
    let Some(p) = (unsafe { TRACKED_SOCKS.get(&sk) }).copied() else {
        return Ok(());
    };
    let _ = TRACKED_SOCKS.remove(&sk);
    emit(kind::TCP_CLOSE, |ev: *mut NetEvent| {
        // SAFETY: `ev` is a reservation of size_of::<NetEvent>() owned by this program.
        unsafe {
            fill_header(&mut (*ev).hdr, kind::TCP_CLOSE);
            // The owner recorded at connect; the current task may be anyone (softirq).
            (*ev).hdr.pid = p.owner;
            (*ev).hdr.tid = p.owner;
            (*ev).hdr.ppid = 0;
            (*ev).hdr.comm = [0; 16];
            (*ev).ret = 0;
            (*ev).fd = -1;
            (*ev).family = p.family;
            (*ev).port = p.port;
            (*ev).sock_type = SOCK_STREAM;
            (*ev).protocol = p.protocol;
            put_addr(&raw mut (*ev).addr, p.addr);
            (*ev).cookie = sk ^ config().cookie_key;
            put_addr(&raw mut (*ev).local_addr, p.local_addr);
            (*ev).local_port = p.local_port;
            (*ev)._pad = [0; 3];
        }
        Ok(())
    })
}
