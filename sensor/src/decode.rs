//! Ring-buffer records → [`Event`]s. Every decoder checks lengths first: a short or unknown
//! record is a [`DecodeError`], never a panic or an out-of-bounds read.

use std::{
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use sensor_common::{
    flags, gpu, kind, EventHeader, ExecEvent, ExitEvent, ForkEvent, GpuIoctlEvent, GpuOpenEvent,
    NetEvent, NetPayloadEvent,
};
use thiserror::Error;

use crate::{
    event::{
        Body, Device, DnsQuery, Event, Exec, Exit, Family, Fork, GpuIoctl, GpuOpen, Net,
        NetPayload, Outcome, SockType, Stdio, Transport, Via,
    },
    gpu::classes,
};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {got} bytes is shorter than {need} bytes for kind {kind}")]
    TooShort { kind: u32, need: usize, got: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
}

/// `clock_gettime(id)` in nanoseconds.
pub fn clock_ns(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Converts kernel CLOCK_BOOTTIME stamps to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// realtime - boottime, in ns, sampled at start.
    offset_ns: i128,
}

impl Clock {
    pub fn now() -> Clock {
        let boot = clock_ns(libc::CLOCK_BOOTTIME) as i128;
        let real = clock_ns(libc::CLOCK_REALTIME) as i128;
        Clock {
            offset_ns: real - boot,
        }
    }

    #[cfg(test)]
    pub fn fixed(offset_ns: i128) -> Clock {
        Clock { offset_ns }
    }

    pub fn wall(&self, boot_ns: u64) -> SystemTime {
        let ns = (boot_ns as i128 + self.offset_ns).max(0) as u128;
        SystemTime::UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }

    /// Wall-clock seconds since the epoch.
    pub fn wall_secs(&self, boot_ns: u64) -> f64 {
        (boot_ns as i128 + self.offset_ns) as f64 / 1e9
    }

    /// RFC 3339 UTC with nanoseconds (`2026-11-30T17:43:48.042638302Z`), as
    /// `humantime::format_rfc3339_nanos` writes it (a test compares them), without the
    /// formatting machinery: every event gets one.
    pub fn rfc3339(&self, boot_ns: u64) -> String {
        let ns = (boot_ns as i128 + self.offset_ns).max(0) as u64;
        rfc3339_nanos(ns)
    }
}

/// `ns` since the Unix epoch as RFC 3339 UTC with nine fraction digits. The date is Howard
/// Hinnant's `civil_from_days` (proleptic Gregorian).
fn rfc3339_nanos(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let frac = (ns % 1_000_000_000) as u32;
    let days = (secs / 86_400) as i64;
    let sod = (secs % 86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
    let mut b = [0u8; 30];
    let mut put = |at: usize, v: u32, width: usize| {
        let mut v = v;
        for i in (0..width).rev() {
            b[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, sod / 3600, 2);
    put(14, sod / 60 % 60, 2);
    put(17, sod % 60, 2);
    put(20, frac, 9);
    b[4] = b'-';
    b[7] = b'-';
    b[10] = b'T';
    b[13] = b':';
    b[16] = b':';
    b[19] = b'.';
    b[29] = b'Z';
    // Only ASCII digits and separators were written.
    String::from_utf8(b.to_vec()).expect("ASCII")
}

/// Reads a `T` from the start of `buf` after checking its length.
fn read<T: Copy>(buf: &[u8], k: u32) -> Result<T, DecodeError> {
    if buf.len() < size_of::<T>() {
        return Err(DecodeError::TooShort {
            kind: k,
            need: size_of::<T>(),
            got: buf.len(),
        });
    }
    // SAFETY: the length is checked above; read_unaligned has no alignment requirement, and T is
    // one of the sensor-common #[repr(C)] integer-only types, valid for any bit pattern.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

/// NUL-terminated bytes → String (lossy), stopping at the first NUL or the end.
pub fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Splits a kernel argv block (NUL-separated strings, the last one NUL-terminated unless the
/// block was cut) into arguments. Empty arguments are kept.
pub fn split_argv(block: &[u8]) -> Vec<String> {
    if block.is_empty() {
        return vec![];
    }
    let body = block.strip_suffix(&[0]).unwrap_or(block);
    body.split(|&c| c == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// A `NetEvent` address: IPv4 in the first 4 bytes for AF_INET, else IPv6.
pub fn ip_addr(family: u16, addr: &[u8; 16]) -> IpAddr {
    match family {
        2 => IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
        _ => IpAddr::V6(Ipv6Addr::from(*addr)),
    }
}

fn family(f: u16) -> Family {
    // include/linux/socket.h (v6.18): AF_INET 2, AF_INET6 10.
    match f {
        2 => Family::Inet,
        10 => Family::Inet6,
        _ => Family::Other,
    }
}

fn sock_type(t: u16) -> SockType {
    // include/linux/net.h (v6.18), enum sock_type.
    match t {
        1 => SockType::Stream,
        2 => SockType::Dgram,
        3 => SockType::Raw,
        4 => SockType::Rdm,
        5 => SockType::Seqpacket,
        6 => SockType::Dccp,
        10 => SockType::Packet,
        _ => SockType::Unknown,
    }
}

fn protocol_name(p: u16) -> Option<String> {
    // include/uapi/linux/in.h
    match p {
        0 => None,
        6 => Some("tcp".into()),
        17 => Some("udp".into()),
        132 => Some("sctp".into()),
        262 => Some("mptcp".into()),
        n => Some(n.to_string()),
    }
}

/// EINPROGRESS (include/uapi/asm-generic/errno.h).
const EINPROGRESS: i32 = 115;

fn decode_net(n: &NetEvent, k: u32) -> Net {
    let ip = ip_addr(n.family, &n.addr);
    let via_sock_state = n.hdr.flags & flags::NET_NO_SYSCALL != 0;
    let (result, errno, error) = if via_sock_state {
        (Outcome::Unknown, None, None)
    } else if n.ret == 0 {
        (Outcome::Ok, None, None)
    } else if n.ret == -EINPROGRESS {
        (Outcome::InProgress, Some(n.ret), None)
    } else {
        let e = std::io::Error::from_raw_os_error(-n.ret).to_string();
        (Outcome::Error, Some(n.ret), Some(e))
    };
    let connect = k == kind::CONNECT || k == kind::TCP_CLOSE || k == kind::SOCK_DUP;
    Net {
        family: family(n.family),
        sock_type: sock_type(n.sock_type),
        protocol: protocol_name(n.protocol),
        dst_ip: connect.then_some(ip),
        dst_port: connect.then_some(n.port),
        local_ip: if connect {
            (n.local_port != 0).then(|| ip_addr(n.family, &n.local_addr))
        } else {
            Some(ip)
        },
        local_port: if connect {
            (n.local_port != 0).then_some(n.local_port)
        } else {
            Some(n.port)
        },
        fd: (n.fd >= 0).then_some(n.fd),
        result,
        errno,
        error,
        via: if via_sock_state || k == kind::TCP_CLOSE {
            Via::SockState
        } else {
            Via::Syscall
        },
        conn_id: (n.cookie != 0).then(|| format!("{:016x}", n.cookie)),
        duration_s: None,
    }
}

fn outcome(ret: i32) -> Outcome {
    if ret >= 0 {
        Outcome::Ok
    } else {
        Outcome::Error
    }
}

use crate::hex;

/// Name of a decoded GPU operation (`GpuIoctlEvent::op`).
pub fn gpu_op_name(op: u32, cmd: u32) -> String {
    let code = op & 0xff_ffff;
    let name = match op & 0xff00_0000 {
        gpu::OP_NV => classes::nv_escape_name(code),
        // UVM dispatches on the whole raw request (0x30000001 is not command 1).
        gpu::OP_UVM => classes::uvm_name(cmd),
        gpu::OP_KFD => classes::kfd_name(code),
        gpu::OP_DRM => classes::drm_name(code),
        _ => None,
    };
    name.map(str::to_string)
        .unwrap_or_else(|| format!("{cmd:#010x}"))
}

fn decode_gpu_ioctl(e: &GpuIoctlEvent) -> GpuIoctl {
    let fam = e.op & 0xff00_0000;
    let code = e.op & 0xff_ffff;
    let rm_alloc = fam == gpu::OP_NV && code == gpu::NV_ESC_RM_ALLOC;
    let rm_control = fam == gpu::OP_NV && code == gpu::NV_ESC_RM_CONTROL;
    let other = (!rm_alloc && !rm_control && e.object != 0).then_some(e.object);
    GpuIoctl {
        fd: e.fd,
        device: Device::from_id(e.dev_kind),
        major: e.major,
        minor: e.minor,
        gpu_minor: e.gpu_minor,
        cmd: format!("{:#010x}", e.cmd),
        op: gpu_op_name(e.op, e.cmd),
        op_code: e.op,
        class: rm_alloc.then(|| classes::class_name(e.object)),
        class_id: rm_alloc.then_some(e.object),
        control: rm_control.then(|| format!("{:#010x}", e.object)),
        object: other,
        ret: e.ret,
        result: outcome(e.ret),
        xfer: e.hdr.flags & flags::GPU_XFER != 0,
        emulated: e.hdr.flags & flags::GPU_EMULATED != 0,
        arg: hex(&e.arg[..(e.arg_len as usize).min(e.arg.len())]),
    }
}

fn decode_gpu_open(e: &GpuOpenEvent) -> GpuOpen {
    let name = cstr(&e.name);
    let parent = cstr(&e.parent);
    let path = if e.ret < 0 || name.starts_with('/') {
        name
    } else if parent.is_empty() || parent == "dev" || parent == "/" {
        format!("/dev/{name}")
    } else if parent == "dri" || parent == "nvidia-caps" || parent == "net" {
        format!("/dev/{parent}/{name}")
    } else {
        // Only the last two components are captured in the kernel.
        format!(".../{parent}/{name}")
    };
    GpuOpen {
        path,
        device: Device::from_id(e.dev_kind),
        major: e.major,
        minor: e.minor,
        gpu_minor: e.gpu_minor,
        flags: e.flags,
        ret: e.ret,
        result: outcome(e.ret),
        emulated: e.hdr.flags & flags::GPU_EMULATED != 0,
    }
}

/// Port of DNS (RFC 1035 §4.2).
const DNS_PORT: u16 = 53;

fn decode_stdio(e: &ExecEvent) -> Option<Stdio> {
    if e.stdio & 0x7 == 0 {
        return None;
    }
    let fds = |shift: u32| {
        (0..3u8)
            .filter(|&fd| e.stdio & (1 << (shift + fd as u32)) != 0)
            .collect()
    };
    let peer = e.peer_family != 0;
    Some(Stdio {
        sockets: fds(0),
        net: fds(4),
        outbound: fds(8),
        peer_ip: peer.then(|| ip_addr(e.peer_family, &e.peer_addr)),
        peer_port: peer.then_some(e.peer_port),
        sock_type: peer.then(|| sock_type(e.peer_sock_type)),
    })
}

/// A captured first segment or datagram: a DNS query when it is one (to port 53), else a
/// `net_payload` with what its bytes say.
fn decode_payload(e: &NetPayloadEvent) -> Body {
    let d = &e.data[..(e.data_len as usize).min(e.data.len())];
    let udp = e.hdr.flags & flags::PAYLOAD_UDP != 0;
    let transport = if udp { Transport::Udp } else { Transport::Tcp };
    if e.port == DNS_PORT {
        // DNS over TCP prefixes each message with its 2-byte length (RFC 1035 §4.2.2).
        let msg = if udp { d } else { d.get(2..).unwrap_or(&[]) };
        if let Some(q) = crate::proto::parse_dns_query(msg) {
            return Body::DnsQuery(DnsQuery {
                family: family(e.family),
                server: ip_addr(e.family, &e.addr),
                server_port: e.port,
                local_port: e.local_port,
                transport,
                id: q.id,
                qtype_name: crate::proto::qtype_name(q.qtype),
                qname: q.qname,
                qtype: q.qtype,
            });
        }
    }
    Body::NetPayload(NetPayload {
        fd: e.fd,
        family: family(e.family),
        dst_ip: ip_addr(e.family, &e.addr),
        dst_port: e.port,
        local_port: e.local_port,
        transport,
        len: e.len,
        data: hex(d),
        text: String::from_utf8_lossy(d).into_owned(),
        owner_only: e.hdr.flags & flags::PAYLOAD_OWNER != 0,
        app: if udp {
            crate::proto::AppInfo::default()
        } else {
            crate::proto::parse_stream(d)
        },
    })
}

/// Decodes one ring-buffer record. `exe` is filled later by the process context.
pub fn decode(buf: &[u8], clock: &Clock) -> Result<Event, DecodeError> {
    let hdr: EventHeader = read(buf, 0)?;
    let body = match hdr.kind {
        kind::EXEC => {
            let e: ExecEvent = read(buf, hdr.kind)?;
            let len = (e.args_len as usize).min(e.args.len());
            Body::Exec(Exec {
                filename: cstr(&e.filename),
                argv: split_argv(&e.args[..len]),
                args_truncated: hdr.flags & flags::ARGS_TRUNCATED != 0,
                args_size: e.args_total,
                filename_truncated: hdr.flags & flags::FILENAME_TRUNCATED != 0,
                args_unreadable: hdr.flags & flags::ARGS_UNREADABLE != 0,
                exe_unlinked: hdr.flags & flags::EXE_UNLINKED != 0,
                stdio: decode_stdio(&e),
                ssh_config: None,
                launcher: None,
            })
        }
        kind::FORK => {
            let e: ForkEvent = read(buf, hdr.kind)?;
            Body::Fork(Fork {
                child_pid: e.child_pid,
            })
        }
        kind::EXIT => {
            let e: ExitEvent = read(buf, hdr.kind)?;
            let c = e.exit_code;
            // wait(2) status: low 7 bits = signal, bits 8..16 = exit status.
            let sig = c & 0x7f;
            Body::Exit(Exit {
                exit_code: c,
                exit_status: (sig == 0).then_some((c >> 8) & 0xff),
                signal: (sig != 0).then_some(sig),
            })
        }
        kind::CONNECT | kind::BIND | kind::LISTEN | kind::TCP_CLOSE | kind::SOCK_DUP => {
            let e: NetEvent = read(buf, hdr.kind)?;
            let mut n = decode_net(&e, hdr.kind);
            match hdr.kind {
                kind::CONNECT => Body::Connect(n),
                kind::SOCK_DUP => Body::SockDup(n),
                kind::BIND => Body::Bind(n),
                kind::TCP_CLOSE => {
                    n.result = Outcome::Closed;
                    Body::TcpClose(n)
                }
                _ => Body::Listen(n),
            }
        }
        kind::NET_PAYLOAD => decode_payload(&read::<NetPayloadEvent>(buf, hdr.kind)?),
        kind::GPU_IOCTL => Body::GpuIoctl(decode_gpu_ioctl(&read::<GpuIoctlEvent>(buf, hdr.kind)?)),
        kind::GPU_OPEN => {
            let o = decode_gpu_open(&read::<GpuOpenEvent>(buf, hdr.kind)?);
            if o.device == Device::Tun || o.path.starts_with("/dev/net/tun") {
                Body::TunOpen(GpuOpen {
                    device: Device::Tun,
                    ..o
                })
            } else {
                Body::GpuOpen(o)
            }
        }
        k => return Err(DecodeError::UnknownKind(k)),
    };
    Ok(Event {
        ts: clock.rfc3339(hdr.ts_ns),
        ts_ns: hdr.ts_ns,
        pid: hdr.pid,
        tid: hdr.tid,
        ppid: hdr.ppid,
        uid: hdr.uid,
        gid: hdr.gid,
        comm: cstr(&hdr.comm),
        cgroup_id: hdr.cgroup_id,
        mntns: hdr.mntns,
        exe: None,
        container: None,
        body,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_matches_humantime() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut samples = vec![
            0,
            1,
            999_999_999,
            951_782_400_000_000_000,
            4_102_444_799_999_999_999,
        ];
        for _ in 0..20_000 {
            // xorshift: times from 1970 to 2106, leap days and year ends included.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            samples.push(x % 4_294_967_296_000_000_000);
        }
        for ns in samples {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns);
            assert_eq!(
                rfc3339_nanos(ns),
                humantime::format_rfc3339_nanos(t).to_string(),
                "{ns}"
            );
        }
    }

    use super::*;
    use sensor_common::{ARGS_MAX, COMM_LEN, FILENAME_MAX};

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: T is a #[repr(C)] plain-data test value; reading its bytes is sound.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn hdr(k: u32) -> EventHeader {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        EventHeader {
            kind: k,
            flags: 0,
            ts_ns: 5_000_000_000,
            pid: 10,
            tid: 11,
            ppid: 1,
            uid: 1000,
            gid: 1000,
            mntns: 4026531841,
            cgroup_id: 1,
            comm,
        }
    }

    #[test]
    fn argv_block_keeps_empty_args_and_cut_tail() {
        assert_eq!(split_argv(b"ls\0-l\0\0x\0"), vec!["ls", "-l", "", "x"]);
        assert_eq!(split_argv(b"a\0\0"), vec!["a", ""]);
        assert_eq!(split_argv(b"cut-sho"), vec!["cut-sho"]);
        assert_eq!(split_argv(b""), Vec::<String>::new());
        assert_eq!(split_argv(b"\xff\0"), vec!["\u{fffd}"]);
    }

    #[test]
    fn exec_record() {
        let mut e = ExecEvent {
            hdr: hdr(kind::EXEC),
            args_len: 0,
            args_total: 0,
            stdio: 0,
            peer_family: 0,
            peer_port: 0,
            peer_addr: [0; 16],
            peer_sock_type: 0,
            _pad: [0; 6],
            filename: [0; FILENAME_MAX],
            args: [0; ARGS_MAX],
        };
        e.filename[..8].copy_from_slice(b"/bin/ls\0");
        let a = b"ls\0-la\0\0";
        e.args[..a.len()].copy_from_slice(a);
        e.args_len = a.len() as u32;
        e.args_total = a.len() as u32;
        let ev = decode(&bytes_of(&e), &Clock::fixed(0)).unwrap();
        assert_eq!(ev.pid, 10);
        assert_eq!(ev.comm, "curl");
        assert_eq!(ev.ts, "1970-01-01T00:00:05.000000000Z");
        let Body::Exec(x) = ev.body else { panic!() };
        assert_eq!(x.filename, "/bin/ls");
        assert_eq!(x.argv, vec!["ls", "-la", ""]);
        assert!(!x.args_truncated);

        // A lying args_len larger than the buffer is clamped, not an overflow.
        e.args_len = u32::MAX;
        e.hdr.flags = flags::ARGS_TRUNCATED;
        let ev = decode(&bytes_of(&e), &Clock::fixed(0)).unwrap();
        let Body::Exec(x) = ev.body else { panic!() };
        assert!(x.args_truncated);
        // The whole 4 KiB buffer is used: "ls\0-la\0" then 4089 zero bytes, i.e. 4091 pieces.
        assert_eq!(x.argv[..3], ["ls", "-la", ""]);
        assert_eq!(x.argv.len(), ARGS_MAX - 5);
        assert!(x.stdio.is_none() && !x.exe_unlinked);

        // A shell whose stdin/stdout are a TCP connection, run from a memfd.
        e.stdio = 0b011_0111;
        e.peer_family = 2;
        e.peer_port = 4444;
        e.peer_addr[..4].copy_from_slice(&[198, 51, 100, 7]);
        e.peer_sock_type = 1;
        e.hdr.flags = flags::EXE_UNLINKED;
        let ev = decode(&bytes_of(&e), &Clock::fixed(0)).unwrap();
        let Body::Exec(x) = ev.body else { panic!() };
        assert!(x.exe_unlinked);
        let st = x.stdio.unwrap();
        assert_eq!((st.sockets, st.net), (vec![0, 1, 2], vec![0, 1]));
        assert!(st.outbound.is_empty());
        assert_eq!(st.peer_ip, Some("198.51.100.7".parse().unwrap()));
        assert_eq!(
            (st.peer_port, st.sock_type),
            (Some(4444), Some(SockType::Stream))
        );
    }

    fn payload(port: u16, fl: u32, data: &[u8]) -> NetPayloadEvent {
        let mut p = NetPayloadEvent {
            hdr: hdr(kind::NET_PAYLOAD),
            fd: -1,
            len: data.len() as u32,
            family: 2,
            port,
            data_len: data.len() as u32,
            addr: [0; 16],
            local_port: 40000,
            protocol: if fl & flags::PAYLOAD_UDP != 0 { 17 } else { 6 },
            _pad: 0,
            data: [0; sensor_common::PAYLOAD_LEN],
        };
        p.hdr.flags = fl;
        p.addr[..4].copy_from_slice(&[10, 96, 0, 10]);
        p.data[..data.len()].copy_from_slice(data);
        p
    }

    #[test]
    fn payloads_become_protocols_and_dns_queries() {
        let clock = Clock::fixed(0);
        let ev = decode(&bytes_of(&payload(2222, 0, b"SSH-2.0-Go\r\n")), &clock).unwrap();
        let Body::NetPayload(p) = ev.body else {
            panic!()
        };
        assert_eq!(
            (p.app.proto, p.local_port, p.transport),
            (crate::event::AppProto::Ssh, 40000, Transport::Tcp)
        );

        let q = b"\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04pool\x0asupportxmr\x03com\x00\x00\x10\x00\x01";
        let ev = decode(&bytes_of(&payload(53, flags::PAYLOAD_UDP, q)), &clock).unwrap();
        let Body::DnsQuery(d) = ev.body else {
            panic!("{ev:?}")
        };
        assert_eq!(
            (d.qname.as_str(), d.qtype_name.as_str(), d.transport),
            ("pool.supportxmr.com", "TXT", Transport::Udp)
        );
        assert_eq!(d.server, "10.96.0.10".parse::<std::net::IpAddr>().unwrap());
        // Over TCP the message follows a 2-byte length.
        let mut t = vec![0, q.len() as u8];
        t.extend_from_slice(q);
        let ev = decode(&bytes_of(&payload(53, 0, &t)), &clock).unwrap();
        assert!(matches!(
            ev.body,
            Body::DnsQuery(DnsQuery {
                transport: Transport::Tcp,
                ..
            })
        ));
        // Not a query: stays a payload.
        let ev = decode(&bytes_of(&payload(53, flags::PAYLOAD_UDP, b"junk")), &clock).unwrap();
        assert!(matches!(ev.body, Body::NetPayload(_)));
    }

    #[test]
    fn net_records_v4_v6_and_results() {
        let mut n = NetEvent {
            hdr: hdr(kind::CONNECT),
            ret: -111,
            fd: 3,
            family: 2,
            port: 22,
            sock_type: 1,
            ..Default::default()
        };
        n.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let ev = decode(&bytes_of(&n), &Clock::fixed(0)).unwrap();
        let Body::Connect(c) = ev.body else { panic!() };
        assert_eq!(c.dst_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(c.dst_port, Some(22));
        assert_eq!(c.result, Outcome::Error);
        assert_eq!(c.errno, Some(-111));
        assert!(c.error.unwrap().contains("refused"));
        assert_eq!(c.sock_type, SockType::Stream);

        n.family = 10;
        n.addr = Ipv6Addr::LOCALHOST.octets();
        n.ret = -115;
        let ev = decode(&bytes_of(&n), &Clock::fixed(0)).unwrap();
        let Body::Connect(c) = ev.body else { panic!() };
        assert_eq!(c.dst_ip, Some("::1".parse().unwrap()));
        assert_eq!(c.result, Outcome::InProgress);

        n.hdr.kind = kind::LISTEN;
        n.hdr.flags = 0;
        n.ret = 0;
        n.fd = -1;
        n.protocol = 6;
        let ev = decode(&bytes_of(&n), &Clock::fixed(0)).unwrap();
        let Body::Listen(l) = ev.body else { panic!() };
        assert_eq!(l.local_port, Some(22));
        assert_eq!(l.fd, None);
        assert_eq!(l.protocol.as_deref(), Some("tcp"));

        n.hdr.kind = kind::CONNECT;
        n.hdr.flags = flags::NET_NO_SYSCALL;
        let ev = decode(&bytes_of(&n), &Clock::fixed(0)).unwrap();
        let Body::Connect(c) = ev.body else { panic!() };
        assert_eq!(
            (c.result.as_str(), c.via.as_str()),
            ("unknown", "sock_state")
        );
    }

    #[test]
    fn exit_status_and_signal() {
        let e = ExitEvent {
            hdr: hdr(kind::EXIT),
            exit_code: 3 << 8,
            _pad: 0,
        };
        let Body::Exit(x) = decode(&bytes_of(&e), &Clock::fixed(0)).unwrap().body else {
            panic!()
        };
        assert_eq!((x.exit_status, x.signal), (Some(3), None));
        let e = ExitEvent {
            hdr: hdr(kind::EXIT),
            exit_code: 9,
            _pad: 0,
        };
        let Body::Exit(x) = decode(&bytes_of(&e), &Clock::fixed(0)).unwrap().body else {
            panic!()
        };
        assert_eq!((x.exit_status, x.signal), (None, Some(9)));
    }

    #[test]
    fn gpu_ioctl_record() {
        let mut arg = [0u8; sensor_common::GPU_ARG_LEN];
        arg[12..16].copy_from_slice(&0xcbc0u32.to_le_bytes());
        let e = GpuIoctlEvent {
            hdr: hdr(kind::GPU_IOCTL),
            ret: -25,
            fd: 4,
            cmd: 0xc030462b,
            inner_cmd: 0,
            major: 1,
            minor: 3,
            dev_kind: gpu::dev::NVIDIA,
            gpu_minor: 255,
            op: gpu::OP_NV | 0x2b,
            object: 0xcbc0,
            arg_len: 64,
            _pad: 0,
            arg,
        };
        let Body::GpuIoctl(g) = decode(&bytes_of(&e), &Clock::fixed(0)).unwrap().body else {
            panic!()
        };
        assert_eq!(g.op, "NV_ESC_RM_ALLOC");
        assert_eq!(g.class.as_deref(), Some("HOPPER_COMPUTE_A"));
        assert_eq!(g.cmd, "0xc030462b");
        assert_eq!(g.result, Outcome::Error);
        assert_eq!(g.arg.len(), 128);
        let mut u = e;
        u.dev_kind = gpu::dev::NVIDIA_UVM;
        u.cmd = 0x30000001;
        u.op = gpu::OP_UVM | 1;
        u.arg_len = 9999; // lying length is clamped
        let Body::GpuIoctl(g) = decode(&bytes_of(&u), &Clock::fixed(0)).unwrap().body else {
            panic!()
        };
        assert_eq!(g.op, "UVM_INITIALIZE");
        assert_eq!(g.class, None);
        assert_eq!(g.device, Device::NvidiaUvm);
    }

    #[test]
    fn gpu_open_paths() {
        let mut e = GpuOpenEvent {
            hdr: hdr(kind::GPU_OPEN),
            ret: 5,
            flags: 2,
            major: 226,
            minor: 128,
            dev_kind: gpu::dev::DRM,
            gpu_minor: 128,
            name: [0; sensor_common::GPU_NAME_LEN],
            parent: [0; sensor_common::GPU_NAME_LEN],
        };
        e.name[..10].copy_from_slice(b"renderD128");
        e.parent[..3].copy_from_slice(b"dri");
        let Body::GpuOpen(o) = decode(&bytes_of(&e), &Clock::fixed(0)).unwrap().body else {
            panic!()
        };
        assert_eq!(o.path, "/dev/dri/renderD128");
        e.parent = [0; sensor_common::GPU_NAME_LEN];
        e.parent[..3].copy_from_slice(b"dev");
        let Body::GpuOpen(o) = decode(&bytes_of(&e), &Clock::fixed(0)).unwrap().body else {
            panic!()
        };
        assert_eq!(o.path, "/dev/renderD128");
    }

    #[test]
    fn malformed_records_are_errors() {
        assert_eq!(
            decode(&[1, 2, 3], &Clock::fixed(0)),
            Err(DecodeError::TooShort {
                kind: 0,
                need: 64,
                got: 3
            })
        );
        let h = bytes_of(&hdr(kind::EXEC));
        assert!(matches!(
            decode(&h, &Clock::fixed(0)),
            Err(DecodeError::TooShort { kind: 1, .. })
        ));
        let h = bytes_of(&hdr(999));
        assert_eq!(
            decode(&h, &Clock::fixed(0)),
            Err(DecodeError::UnknownKind(999))
        );
        // Every prefix of a valid record is rejected cleanly.
        let n = NetEvent {
            hdr: hdr(kind::BIND),
            ..Default::default()
        };
        let b = bytes_of(&n);
        for cut in 0..b.len() {
            assert!(decode(&b[..cut], &Clock::fixed(0)).is_err());
        }
        assert!(decode(&b, &Clock::fixed(0)).is_ok());
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            /// Any bytes: an error or an event, never a panic.
            #[test]
            fn any_bytes_decode_without_panic(b in proptest::collection::vec(any::<u8>(), 0..6000)) {
                let _ = decode(&b, &Clock::now());
            }

            /// A valid kind with random bytes after it (sizes around each record's size).
            #[test]
            fn every_kind_with_random_payload(k in 0u32..(kind::MAX + 2), extra in 0usize..5000, fill in any::<u8>(), seed in any::<u64>()) {
                let mut b = vec![fill; extra];
                let mut x = seed;
                for v in b.iter_mut() {
                    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                    *v ^= x as u8;
                }
                if b.len() >= 4 {
                    b[..4].copy_from_slice(&k.to_le_bytes());
                }
                let _ = decode(&b, &Clock::now());
            }
        }
    }
}
