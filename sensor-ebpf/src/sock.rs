//! Socket-level capture: one `cgroup_skb/egress` program on the cgroup v2 root sees every packet
//! the host's processes send, whatever syscall sent it (write, writev, send, sendto, sendmsg,
//! sendmmsg, io_uring, sendfile, splice). It keeps:
//! - the first data segment of each new outbound TCP connection (the SYN names the connection
//!   and its owner; the first segment with payload is captured and the connection forgotten);
//! - every datagram to UDP port 53 (DNS queries; TCP port 53 arrives as a first segment).
//!
//! Nothing else is copied: a data packet of a connection not being followed costs one socket
//! cookie and one LRU lookup, a pure ACK or a non-TCP/UDP packet less. The program never drops a
//! packet (it always returns 1, "allow").
//!
//! Packet layout (the program's data starts at the network header): IPv4 (RFC 791) version/IHL
//! @0, protocol @9, destination @16; IPv6 (RFC 8200) next header @6, destination @24, header 40
//! bytes (extension headers are not followed: such packets are not captured); TCP (RFC 9293)
//! ports @0/@2, data offset @12 (high nibble, 32-bit words), flags @13; UDP (RFC 768) ports
//! @0/@2, header 8 bytes.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated as gen,
    },
    macros::{cgroup_skb, map},
    maps::LruHashMap,
    programs::SkBuffContext,
};
use sensor_common::{flags, kind, Hook, NetPayloadEvent, ProbeError, PAYLOAD_LEN};

use crate::{
    emit::{emit, finish},
    filter::current_traced,
    task::fill_header,
};

/// Who opened a followed connection (the task that sent the SYN).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Owner {
    tgid: u32,
    uid: u32,
    gid: u32,
    _pad: u32,
    cgroup_id: u64,
}

/// New outbound TCP connections whose first data segment has not left yet: socket cookie →
/// owner. Removed at the first data segment, or at our FIN/RST for a connection that closes
/// without sending; LRU for the rest.
#[map(name = "FRESH_CONNS")]
static FRESH_CONNS: LruHashMap<u64, Owner> = LruHashMap::with_max_entries(8192, 0);

/// IP protocol numbers (include/uapi/linux/in.h).
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// Address families (include/linux/socket.h).
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// TCP flag bits of byte 13 (RFC 9293 §3.1).
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// `BPF_NOEXIST` (include/uapi/linux/bpf.h): insert only when the key is new.
const BPF_NOEXIST: u64 = 1;
/// DNS (RFC 1035 §4.2).
const DNS_PORT: u16 = 53;

#[cgroup_skb(egress)]
pub fn sock_egress(ctx: SkBuffContext) -> i32 {
    finish(Hook::SockEgress, try_egress(&ctx));
    1 // always let the packet through
}

/// `N` bytes at `off` of the packet: a direct read when they lie in the linear part (headers of
/// locally generated packets always do; no helper call), else `bpf_skb_load_bytes`.
#[inline(always)]
fn bytes<const N: usize>(ctx: &SkBuffContext, off: u32) -> Result<[u8; N], ProbeError> {
    // SAFETY: plain reads of the context's `data`/`data_end` (rewritten by the verifier into
    // the skb's packet pointers).
    let (start, end) = unsafe { ((*ctx.skb.skb).data as usize, (*ctx.skb.skb).data_end as usize) };
    let p = start + (off & 0xffff) as usize;
    if p + N <= end {
        // SAFETY: [p, p + N) lies inside the packet's linear data (checked just above; the
        // verifier checks the same bound).
        return Ok(unsafe { core::ptr::read_unaligned(p as *const [u8; N]) });
    }
    let mut b = [0u8; N];
    // SAFETY: the helper copies at most N bytes into `b` (N bytes of stack) and fails cleanly
    // when the packet is shorter.
    let r = unsafe {
        gen::bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            off,
            b.as_mut_ptr().cast(),
            N as u32,
        )
    };
    if r == 0 {
        Ok(b)
    } else {
        Err(ProbeError::KernelRead)
    }
}

/// What a captured record says about the packet.
struct Packet {
    family: u16,
    protocol: u16,
    addr: [u8; 16],
    dport: u16,
    sport: u16,
    /// Offset and length of the payload.
    off: u32,
    len: u32,
}

#[inline(always)]
fn try_egress(ctx: &SkBuffContext) -> Result<(), ProbeError> {
    let skb_len = ctx.len();
    // IPv4 headers are at least 20 bytes; a shorter packet is not IP.
    let Ok(h) = bytes::<20>(ctx, 0) else {
        return Ok(());
    };
    let mut addr = [0u8; 16];
    let (family, proto, l4) = match h[0] >> 4 {
        4 => {
            addr[..4].copy_from_slice(&h[16..20]);
            (AF_INET, h[9], ((h[0] & 0x0f) as u32) * 4)
        }
        6 => {
            let h6 = bytes::<40>(ctx, 0)?;
            addr.copy_from_slice(&h6[24..40]);
            (AF_INET6, h6[6], 40)
        }
        _ => return Ok(()),
    };
    match proto {
        IPPROTO_TCP => {
            let t = bytes::<20>(ctx, l4)?;
            let fl = t[13];
            let off = l4 + ((t[12] >> 4) as u32) * 4;
            let len = skb_len.saturating_sub(off);
            let syn = fl & TCP_SYN != 0 && fl & TCP_ACK == 0;
            let closing = fl & (TCP_FIN | TCP_RST) != 0;
            if !syn && len == 0 && !closing {
                return Ok(()); // a pure ACK
            }
            // SAFETY: helper on the program's own context.
            let cookie = unsafe { gen::bpf_get_socket_cookie(ctx.skb.skb as *mut _) };
            if !syn && len == 0 {
                // Our FIN/RST before any data (a probe, a refused or abandoned connect).
                let _ = FRESH_CONNS.remove(&cookie);
                return Ok(());
            }
            let p = Packet {
                family,
                protocol: IPPROTO_TCP as u16,
                addr,
                dport: u16::from_be_bytes([t[2], t[3]]),
                sport: u16::from_be_bytes([t[0], t[1]]),
                off,
                len,
            };
            if syn {
                // A SYN leaves inside connect(2) (or io_uring's connect), in the task that
                // connects: it names the owner. A retransmitted SYN leaves from a timer, in
                // whatever task was interrupted: BPF_NOEXIST keeps the first SYN's owner; a
                // connection whose first SYN was not recorded (an ignored task) may be
                // attributed to the interrupted task (a known limit).
                if !current_traced() {
                    return Ok(());
                }
                let owner = current_owner();
                if len > 0 {
                    return capture(ctx, &p, &owner, 0); // TCP Fast Open: data in the SYN
                }
                let _ = FRESH_CONNS.insert(&cookie, &owner, BPF_NOEXIST);
                return Ok(());
            }
            // SAFETY: LRU lookup with an integer key; the value is copied out before removal.
            let Some(owner) = (unsafe { FRESH_CONNS.get(&cookie) }).copied() else {
                return Ok(());
            };
            let _ = FRESH_CONNS.remove(&cookie);
            capture(ctx, &p, &owner, 0)
        }
        IPPROTO_UDP => {
            let u = bytes::<8>(ctx, l4)?;
            let dport = u16::from_be_bytes([u[2], u[3]]);
            if dport != DNS_PORT || !current_traced() {
                return Ok(());
            }
            let off = l4 + 8;
            let p = Packet {
                family,
                protocol: IPPROTO_UDP as u16,
                addr,
                dport,
                sport: u16::from_be_bytes([u[0], u[1]]),
                off,
                len: skb_len.saturating_sub(off),
            };
            // udp_sendmsg runs the egress hook in the sending task: it is the owner.
            capture(ctx, &p, &current_owner(), flags::PAYLOAD_UDP)
        }
        _ => Ok(()),
    }
}

/// The current task as an owner.
#[inline(always)]
fn current_owner() -> Owner {
    let uid_gid = bpf_get_current_uid_gid();
    Owner {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        _pad: 0,
        // SAFETY: helper without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
    }
}

/// Writes a `net_payload` record of `p` for `owner`.
#[inline(always)]
fn capture(ctx: &SkBuffContext, p: &Packet, owner: &Owner, fl: u32) -> Result<(), ProbeError> {
    emit(kind::NET_PAYLOAD, |ev: *mut NetPayloadEvent| {
        // SAFETY: `ev` is a reservation of size_of::<NetPayloadEvent>() bytes owned by this
        // program; the packet bytes are copied with the bounds-checked skb helper into `data`
        // (PAYLOAD_LEN bytes) with a length in 1..=PAYLOAD_LEN.
        unsafe {
            fill_header(&mut (*ev).hdr, kind::NET_PAYLOAD);
            let mut f = fl;
            if (*ev).hdr.pid != owner.tgid {
                // Sent by another task or from softirq: the header names the owner, with the
                // uid/gid and cgroup recorded at its SYN (the pod is the owner's).
                (*ev).hdr.pid = owner.tgid;
                (*ev).hdr.tid = owner.tgid;
                (*ev).hdr.ppid = 0;
                (*ev).hdr.uid = owner.uid;
                (*ev).hdr.gid = owner.gid;
                (*ev).hdr.cgroup_id = owner.cgroup_id;
                (*ev).hdr.mntns = 0;
                (*ev).hdr.comm = [0; 16];
                f |= flags::PAYLOAD_OWNER;
            }
            (*ev).hdr.flags = f;
            (*ev).fd = -1;
            (*ev).len = p.len;
            (*ev).family = p.family;
            (*ev).port = p.dport;
            (*ev).addr = p.addr;
            (*ev).local_port = p.sport;
            (*ev).protocol = p.protocol;
            (*ev)._pad = 0;
            (*ev).data_len = 0;
            let n = if p.len > PAYLOAD_LEN as u32 {
                PAYLOAD_LEN as u32
            } else {
                p.len
            };
            if n >= 1 && n <= PAYLOAD_LEN as u32 {
                let r = gen::bpf_skb_load_bytes(
                    ctx.skb.skb as *const _,
                    p.off,
                    (*ev).data.as_mut_ptr().cast(),
                    n,
                );
                if r == 0 {
                    (*ev).data_len = n;
                } else {
                    crate::emit::count_error(Hook::SockEgress, ProbeError::KernelRead);
                }
            }
        }
        Ok(())
    })
}
