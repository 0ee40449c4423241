//! Test helper that makes real socket and process syscalls on command, so each integration test
//! gets its own pid to filter on. Prints one result line per operation on stdout.
//!
//!   netprobe connect IP PORT          blocking connect(2)
//!   netprobe connect-hold IP PORT MS  TCP connect, keep it open MS milliseconds, close
//!   netprobe connect-nb IP PORT       non-blocking connect(2) (EINPROGRESS)
//!   netprobe connect-rewrite IP PORT DECOY_IP DECOY_PORT
//!                                     blocking TCP connect(2) with a 600 ms send timeout,
//!                                     during which another thread rewrites the sockaddr
//!                                     buffer to the decoy (the call's own copy is unchanged)
//!   netprobe uring-connect IP PORT    IORING_OP_CONNECT, no connect(2) syscall
//!   netprobe bind-listen IP PORT      bind(2) + listen(2), prints the bound port
//!   netprobe fork-exit CODE           fork(2); the child exits with CODE; prints the child pid
//!   netprobe burst N PORT             waits for a line on stdin, then N connects to 127.0.0.1:PORT
//!   netprobe udp-then-unspec IP PORT  UDP connect(2) to IP:PORT, then connect(2) with AF_UNSPEC
//!                                     (dissolves the association), then a successful connect(2)
//!                                     of an AF_UNIX socket to its own listener
use std::{
    io::BufRead,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
};

fn sockaddr(ip: IpAddr, port: u16) -> (libc::sockaddr_storage, libc::socklen_t, i32) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match ip {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_port = port.to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            (
                ss,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
                libc::AF_INET,
            )
        }
        IpAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_port = port.to_be();
            sin6.sin6_addr.s6_addr = a.octets();
            (
                ss,
                std::mem::size_of::<libc::sockaddr_in6>() as u32,
                libc::AF_INET6,
            )
        }
    }
}

fn socket(family: i32, flags: i32) -> i32 {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | flags, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    fd
}

fn connect(ip: IpAddr, port: u16, flags: i32) -> i32 {
    let (ss, len, fam) = sockaddr(ip, port);
    let fd = socket(fam, flags);
    // SAFETY: ss is a valid sockaddr of length len.
    let rc = unsafe { libc::connect(fd, &ss as *const _ as *const libc::sockaddr, len) };
    let err = if rc == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap()
    };
    // SAFETY: closing our own fd.
    unsafe { libc::close(fd) };
    err
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let ip = || a[2].parse::<IpAddr>().expect("IP");
    let port = || a[3].parse::<u16>().expect("PORT");
    match a.get(1).map(String::as_str) {
        Some("connect") => println!("errno {}", connect(ip(), port(), 0)),
        Some("connect-hold") => {
            let ms: u64 = a[4].parse().unwrap();
            let s = std::net::TcpStream::connect((ip(), port())).expect("connect");
            std::thread::sleep(std::time::Duration::from_millis(ms));
            drop(s);
            println!("held {ms}");
        }
        Some("connect-nb") => println!("errno {}", connect(ip(), port(), libc::SOCK_NONBLOCK)),
        Some("connect-rewrite") => {
            let decoy_ip = a[4].parse::<IpAddr>().expect("DECOY_IP");
            let decoy_port = a[5].parse::<u16>().expect("DECOY_PORT");
            let (ss, len, fam) = sockaddr(ip(), port());
            let (decoy, _, _) = sockaddr(decoy_ip, decoy_port);
            let buf = Box::into_raw(Box::new(ss));
            let fd = socket(fam, 0);
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 600_000,
            };
            // SAFETY: valid fd, option value of its declared size.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_SNDTIMEO,
                    &tv as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as u32,
                )
            };
            let addr = buf as usize;
            let writer = std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(200));
                // SAFETY: `buf` stays allocated until this thread is joined; a volatile write
                // of plain data, racing the blocked connect(2) on purpose (the kernel copied
                // the address before it blocked).
                unsafe { std::ptr::write_volatile(addr as *mut libc::sockaddr_storage, decoy) };
            });
            // SAFETY: `buf` points at a sockaddr of length `len`.
            let rc = unsafe { libc::connect(fd, buf as *const libc::sockaddr, len) };
            let err = if rc == 0 {
                0
            } else {
                std::io::Error::last_os_error().raw_os_error().unwrap()
            };
            writer.join().unwrap();
            // SAFETY: our own fd; `buf` came from Box::into_raw and is freed once.
            unsafe {
                libc::close(fd);
                drop(Box::from_raw(buf));
            }
            println!("errno {err}");
        }
        Some("uring-connect") => {
            let addr = SocketAddr::new(ip(), port());
            let (ss, len, fam) = sockaddr(addr.ip(), addr.port());
            let fd = socket(fam, 0);
            let mut ring = io_uring::IoUring::new(4).expect("io_uring_setup");
            let op = io_uring::opcode::Connect::new(
                io_uring::types::Fd(fd),
                &ss as *const _ as *const libc::sockaddr,
                len,
            )
            .build();
            // SAFETY: `ss` outlives the submission: we wait for its completion below.
            unsafe { ring.submission().push(&op).expect("sq full") };
            ring.submit_and_wait(1).expect("io_uring_enter");
            let res = ring.completion().next().expect("cqe").result();
            println!("res {res}");
        }
        Some("bind-listen") => {
            let (ss, len, fam) = sockaddr(ip(), port());
            let fd = socket(fam, 0);
            // SAFETY: valid sockaddr/len; fd is ours.
            let rc = unsafe { libc::bind(fd, &ss as *const _ as *const libc::sockaddr, len) };
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            // SAFETY: plain syscall.
            assert_eq!(unsafe { libc::listen(fd, 8) }, 0);
            let l = std::mem::ManuallyDrop::new(
                // SAFETY: fd is an open, listening TCP socket that we own.
                unsafe { <std::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) },
            );
            println!("port {}", l.local_addr().unwrap().port());
            let _ = l.as_raw_fd();
        }
        Some("fork-exit") => {
            let code: i32 = a[2].parse().unwrap();
            // SAFETY: the child only calls async-signal-safe _exit.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: terminating the child.
                unsafe { libc::_exit(code) };
            }
            let mut st = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut st, 0) };
            println!("child {pid}");
        }
        Some("burst") => {
            let n: u64 = a[2].parse().unwrap();
            let port: u16 = a[3].parse().unwrap();
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).unwrap();
            let mut refused = 0;
            for _ in 0..n {
                if connect("127.0.0.1".parse().unwrap(), port, 0) == libc::ECONNREFUSED {
                    refused += 1;
                }
            }
            println!("done {n} refused {refused}");
        }
        Some("udp-then-unspec") => {
            let u = std::net::UdpSocket::bind(if ip().is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            })
            .expect("udp bind");
            u.connect((ip(), port())).expect("udp connect");
            // SAFETY: sockaddr_storage is plain data; all-zero is AF_UNSPEC.
            let unspec: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            // SAFETY: valid fd; the address buffer is as long as the length passed.
            let r = unsafe {
                libc::connect(
                    u.as_raw_fd(),
                    (&unspec as *const libc::sockaddr_storage).cast(),
                    std::mem::size_of::<libc::sa_family_t>() as libc::socklen_t,
                )
            };
            assert_eq!(
                r,
                0,
                "connect(AF_UNSPEC): {}",
                std::io::Error::last_os_error()
            );
            let path = std::env::temp_dir().join(format!("netprobe-{}.sock", std::process::id()));
            let l = std::os::unix::net::UnixListener::bind(&path).expect("unix bind");
            let c = std::os::unix::net::UnixStream::connect(&path).expect("unix connect");
            drop((c, l));
            let _ = std::fs::remove_file(&path);
            println!("done");
        }
        _ => {
            eprintln!("usage: see the doc comment of tests/src/bin/netprobe.rs");
            std::process::exit(2);
        }
    }
}
