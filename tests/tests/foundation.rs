//! Foundation: exec/fork/exit, connect/bind/listen (syscall and io_uring), loss accounting.
//! Each test starts the real sensor as root and filters on the pids of its own helpers.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    process::{Command, Stdio},
    time::Duration,
};

use std::net::IpAddr;

use sensor::{
    event::{Event, Family, Kind, Outcome, SockType, Via},
    output::Status,
};
use sensor_tests::{is, require_root, run_helper, EventExt, Record, Sensor, WAIT};

const NETPROBE: &str = env!("CARGO_BIN_EXE_netprobe");

/// A port on 127.0.0.1 and ::1 with nothing listening (bound then closed).
fn closed_port() -> u16 {
    let l = TcpListener::bind("[::]:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn exec_argv_40_args_and_truncation() {
    if !require_root("exec_argv_40_args_and_truncation") {
        return;
    }
    let s = Sensor::start(&[]);
    // 40 arguments: empty ones and three of 1 KiB; the block (~3.3 KiB) fits the 4 KiB capture.
    let kib = "k".repeat(1024);
    let mut args: Vec<String> = (0..40).map(|i| format!("a{i}")).collect();
    args[3] = String::new();
    args[17] = String::new();
    args[39] = String::new();
    args[5] = kib.clone();
    args[20] = kib.clone();
    args[30] = kib.clone();
    let child = Command::new("/bin/true").args(&args).spawn().unwrap();
    let pid = child.id();
    child.wait_with_output().unwrap();
    let ev = s
        .wait_event(WAIT, |e| is(e, Kind::Exec, pid))
        .expect("exec event");
    let x = ev.exec().unwrap();
    let mut want = vec!["/bin/true".to_string()];
    want.extend(args.iter().cloned());
    assert_eq!(x.argv.len(), 41);
    assert_eq!(x.argv, want);
    assert!(!x.args_truncated);
    assert_eq!(x.filename, "/bin/true");
    assert_eq!(ev.exe.as_deref(), Some("/bin/true"));
    let size: usize = want.iter().map(|a| a.len() + 1).sum();
    assert_eq!(x.args_size as usize, size);
    assert_eq!(ev.comm, "true");
    assert_eq!(ev.ppid, std::process::id());

    // Five 1 KiB arguments: longer than the capture → flag set, prefix intact, size exact.
    let big: Vec<String> = (0..5).map(|i| format!("{i}{}", &kib[1..])).collect();
    let child = Command::new("/bin/true").args(&big).spawn().unwrap();
    let pid = child.id();
    child.wait_with_output().unwrap();
    let ev = s
        .wait_event(WAIT, |e| is(e, Kind::Exec, pid))
        .expect("exec event (truncated)");
    let x = ev.exec().unwrap();
    assert!(x.args_truncated);
    let got = &x.argv;
    assert_eq!(
        got[..4],
        [
            "/bin/true".to_string(),
            big[0].clone(),
            big[1].clone(),
            big[2].clone()
        ]
    );
    assert!(big[3].starts_with(&got[4]) && got[4].len() < big[3].len());
    let size: usize = 10 + big.iter().map(|a| a.len() + 1).sum::<usize>();
    assert_eq!(x.args_size as usize, size);
    // The sensor never reports itself (no event or alert carries its pid).
    assert!(s.records().iter().all(|r| r.pid() != Some(s.pid)));
    s.stop();
}

fn connect_case(s: &Sensor, mode: &str, ip: &str, port: u16) -> Event {
    let (pid, out) = run_helper(NETPROBE, &[mode, ip, &port.to_string()]);
    let ev = s
        .wait_event(WAIT, |e| is(e, Kind::Connect, pid))
        .unwrap_or_else(|| panic!("no connect event for {mode} {ip}:{port} (helper said {out:?})"));
    let n = ev.net().unwrap();
    assert_eq!(n.dst_ip, Some(ip.parse::<IpAddr>().unwrap()));
    assert_eq!(n.dst_port, Some(port));
    assert_eq!(ev.comm, "netprobe");
    assert_eq!(ev.exe.as_deref(), Some(NETPROBE));
    ev
}

#[test]
fn connect_results_v4_v6() {
    if !require_root("connect_results_v4_v6") {
        return;
    }
    let s = Sensor::start(&[]);
    let l4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let l6 = TcpListener::bind("[::1]:0").unwrap();
    let closed = closed_port();
    for (ip, open) in [
        ("127.0.0.1", l4.local_addr().unwrap().port()),
        ("::1", l6.local_addr().unwrap().port()),
    ] {
        let fam = if ip.contains(':') {
            Family::Inet6
        } else {
            Family::Inet
        };
        let ev = connect_case(&s, "connect", ip, open);
        let n = ev.net().unwrap();
        assert_eq!((n.result, n.family), (Outcome::Ok, fam), "{ev:?}");
        assert_eq!(n.sock_type, SockType::Stream);
        assert_eq!(n.via, Via::Syscall);
        assert!(n.fd.unwrap() >= 3);

        let ev = connect_case(&s, "connect", ip, closed);
        let n = ev.net().unwrap();
        assert_eq!(n.result, Outcome::Error, "{ev:?}");
        assert_eq!(n.errno, Some(-libc::ECONNREFUSED));

        let ev = connect_case(&s, "connect-nb", ip, open);
        let n = ev.net().unwrap();
        assert_eq!(n.result, Outcome::InProgress, "{ev:?}");
        assert_eq!(n.errno, Some(-libc::EINPROGRESS));
    }
    s.stop();
}

/// A successful connect(2) is described from the socket (no user read): a UDP association is
/// reported with its peer; connect(AF_UNSPEC), which dissolves it (the socket then has no
/// peer port; IPv6 keeps the old address), and a connect(2) of an AF_UNIX socket are not
/// connects to report. Both were filtered by the caller's sockaddr before the socket was
/// read first; now the first by the port-0 check and the second by the socket's family.
#[test]
fn udp_connect_reported_unspec_and_unix_connects_not() {
    if !require_root("udp_connect_reported_unspec_and_unix_connects_not") {
        return;
    }
    let s = Sensor::start(&[]);
    for ip in ["127.0.0.1", "::1"] {
        let port = closed_port();
        let (pid, out) = run_helper(NETPROBE, &["udp-then-unspec", ip, &port.to_string()]);
        assert_eq!(out.trim(), "done");
        s.wait_event(WAIT, |e| is(e, Kind::Exit, pid))
            .expect("helper exit event");
        let connects = s.events(|e| is(e, Kind::Connect, pid));
        assert_eq!(connects.len(), 1, "{connects:#?}");
        let n = connects[0].net().unwrap();
        assert_eq!(n.dst_ip, Some(ip.parse::<IpAddr>().unwrap()));
        assert_eq!(n.dst_port, Some(port));
        assert_eq!((n.result, n.sock_type), (Outcome::Ok, SockType::Dgram));
        assert!(n.local_port.is_some_and(|p| p != 0), "{n:?}");
    }
    s.stop();
}

/// A listener whose accept queue is full (backlog 0, one connection never accepted): the
/// kernel drops further SYNs, so a blocking connect(2) to it waits.
fn full_listener() -> (i32, u16, std::net::TcpStream) {
    // SAFETY: plain socket syscalls on our own fd with a valid sockaddr_in.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::AF_INET as u16;
        sin.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        assert_eq!(
            libc::bind(fd, &sin as *const _ as *const libc::sockaddr, len),
            0
        );
        assert_eq!(libc::listen(fd, 0), 0);
        let mut got = len;
        libc::getsockname(fd, &mut sin as *mut _ as *mut libc::sockaddr, &mut got);
        let port = u16::from_be(sin.sin_port);
        let filler = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        (fd, port, filler)
    }
}

/// The connect event names the peer the kernel connected to, read from the socket at the
/// exit of connect(2), not what the caller's sockaddr buffer says by then: here another thread
/// rewrites the buffer to a decoy while the call waits on a full accept queue.
#[test]
fn connect_peer_comes_from_the_socket_not_a_rewritten_buffer() {
    if !require_root("connect_peer_comes_from_the_socket_not_a_rewritten_buffer") {
        return;
    }
    let s = Sensor::start(&[]);
    let (lfd, port, _filler) = full_listener();
    let (pid, out) = run_helper(
        NETPROBE,
        &[
            "connect-rewrite",
            "127.0.0.1",
            &port.to_string(),
            "127.0.0.9",
            "7",
        ],
    );
    // The send timeout ended the wait with the handshake still in progress.
    assert_eq!(out.trim(), format!("errno {}", libc::EINPROGRESS));
    let ev = s
        .wait_event(WAIT, |e| is(e, Kind::Connect, pid))
        .expect("connect event");
    let n = ev.net().unwrap();
    assert_eq!(n.result, Outcome::InProgress, "{ev:?}");
    assert_eq!(
        (n.dst_ip, n.dst_port),
        (Some(IpAddr::from([127, 0, 0, 1])), Some(port)),
        "the event must name the real peer, not the decoy 127.0.0.9:7: {ev:?}"
    );
    // SAFETY: closing our own listener.
    unsafe { libc::close(lfd) };
    s.stop();
}

#[test]
fn tcp_close_pairs_with_its_connect_and_has_a_duration() {
    if !require_root("tcp_close_pairs_with_its_connect_and_has_a_duration") {
        return;
    }
    let s = Sensor::start(&[]);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let acc = std::thread::spawn(move || l.accept().map(|(c, _)| c));
    let (pid, _) = run_helper(
        NETPROBE,
        &["connect-hold", "127.0.0.1", &port.to_string(), "700"],
    );
    let _server_side = acc.join().unwrap();
    let c = s
        .wait_event(WAIT, |e| is(e, Kind::Connect, pid))
        .expect("connect");
    let id = c
        .net()
        .unwrap()
        .conn_id
        .clone()
        .expect("conn_id on the connect");
    let x = s
        .wait_event(WAIT, |e| is(e, Kind::TcpClose, pid))
        .expect("tcp_close attributed to the connecting process");
    let xn = x.net().unwrap();
    assert_eq!(xn.conn_id.as_deref(), Some(id.as_str()));
    assert_eq!(xn.dst_port, Some(port));
    assert_eq!(x.exe.as_deref(), Some(NETPROBE));
    let d = xn.duration_s.expect("duration");
    assert!((0.6..5.0).contains(&d), "duration {d}");
    s.stop();
}

#[test]
fn io_uring_connect_is_seen_without_connect_syscall() {
    if !require_root("io_uring_connect_is_seen_without_connect_syscall") {
        return;
    }
    let s = Sensor::start(&[]);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (pid, out) = run_helper(NETPROBE, &["uring-connect", "127.0.0.1", &port.to_string()]);
    assert_eq!(out.trim(), "res 0", "io_uring connect failed");
    let ev = s
        .wait_event(WAIT, |e| is(e, Kind::Connect, pid))
        .expect("io_uring connect event");
    let n = ev.net().unwrap();
    assert_eq!(n.via, Via::SockState);
    assert_eq!(n.dst_ip, Some(IpAddr::from([127, 0, 0, 1])));
    assert_eq!(n.dst_port, Some(port));
    assert_eq!(n.protocol.as_deref(), Some("tcp"));
    // Its close pairs with it too (the connection id comes from the kernel socket).
    let id = n.conn_id.clone().expect("conn_id on an io_uring connect");
    let x = s
        .wait_event(WAIT, |e| is(e, Kind::TcpClose, pid))
        .expect("tcp_close of the io_uring socket");
    assert_eq!(x.net().unwrap().conn_id.as_deref(), Some(id.as_str()));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        s.events(|e| is(e, Kind::Connect, pid)).len(),
        1,
        "exactly one connect event"
    );
    s.stop();
}

#[test]
fn bind_and_listen() {
    if !require_root("bind_and_listen") {
        return;
    }
    let s = Sensor::start(&[]);
    for ip in ["127.0.0.1", "::1"] {
        let (pid, out) = run_helper(NETPROBE, &["bind-listen", ip, "0"]);
        let port: u16 = out.trim().strip_prefix("port ").unwrap().parse().unwrap();
        let ip_addr: IpAddr = ip.parse().unwrap();
        let b = s
            .wait_event(WAIT, |e| is(e, Kind::Bind, pid))
            .expect("bind event");
        let bn = b.net().unwrap();
        // Port 0 asks for a port: the event carries the one the kernel gave (read from the
        // socket at the exit of bind(2)), the one the listener then uses.
        assert_eq!((bn.local_ip, bn.local_port), (Some(ip_addr), Some(port)));
        assert_eq!(bn.result, Outcome::Ok);
        let l = s
            .wait_event(WAIT, |e| is(e, Kind::Listen, pid))
            .expect("listen event");
        let ln = l.net().unwrap();
        assert_eq!(ln.local_ip, Some(ip_addr));
        assert_eq!(ln.local_port, Some(port));
        assert_eq!(ln.protocol.as_deref(), Some("tcp"));
    }
    s.stop();
}

#[test]
fn fork_and_exit() {
    if !require_root("fork_and_exit") {
        return;
    }
    let s = Sensor::start(&[]);
    let (pid, out) = run_helper(NETPROBE, &["fork-exit", "3"]);
    let child: u32 = out.trim().strip_prefix("child ").unwrap().parse().unwrap();
    let f = s
        .wait_event(WAIT, |e| is(e, Kind::Fork, pid))
        .expect("fork event");
    assert_eq!(f.fork().unwrap().child_pid, child);
    let x = s
        .wait_event(WAIT, |e| is(e, Kind::Exit, child))
        .expect("child exit event");
    assert_eq!(x.exit().unwrap().exit_status, Some(3));
    assert_eq!(x.ppid, pid);
    assert_eq!(
        x.exe.as_deref(),
        Some(NETPROBE),
        "a forked child inherits the parent's exe"
    );
    let x = s
        .wait_event(WAIT, |e| is(e, Kind::Exit, pid))
        .expect("parent exit event");
    assert_eq!(x.exit().unwrap().exit_status, Some(0));
    // One exit per process, not per thread.
    assert_eq!(s.events(|e| is(e, Kind::Exit, child)).len(), 1);
    s.stop();
}

/// A netprobe `burst`: `n` connects to a closed port on 127.0.0.1, started by [`Burst::run`]
/// (so the sensor can be started on its pid first).
struct Burst {
    child: std::process::Child,
    n: u64,
}

impl Burst {
    fn spawn(n: u64) -> Burst {
        let child = Command::new(NETPROBE)
            .args(["burst", &n.to_string(), &closed_port().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Burst { child, n }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Makes the connects; returns once the helper has exited, every one refused.
    fn run(&mut self) {
        self.child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let mut line = String::new();
        BufReader::new(self.child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(self.child.wait().unwrap().success());
        let n = self.n;
        assert_eq!(line.trim(), format!("done {n} refused {n}"));
    }
}

/// Connect events of `pid` in `records`.
fn connects_of(records: &[Record], pid: u32) -> u64 {
    records
        .iter()
        .filter(|r| matches!(r, Record::Event(e) if is(e, Kind::Connect, pid)))
        .count() as u64
}

/// The two burst tests must not overlap when tests run in parallel (`cargo xtask test` runs
/// them one at a time): the tiny ring's reader is woken every 4 KiB, and `/proc/interrupts`
/// counts the whole machine.
static BURSTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn loss_accounting_is_exact_with_a_tiny_ring() {
    if !require_root("loss_accounting_is_exact_with_a_tiny_ring") {
        return;
    }
    let _one = BURSTS.lock().unwrap_or_else(|e| e.into_inner());
    const N: u64 = 20_000;
    let mut burst = Burst::spawn(N);
    let pid = burst.pid();
    // The smallest ring accepted (16 KiB, two exec records) holds ~150 connect records: the
    // burst must overflow it.
    let s = Sensor::start(&["--only-pid", &pid.to_string(), "--ring-size", "16KiB"]);
    burst.run();
    s.wait_event(WAIT, |e| is(e, Kind::Exit, pid))
        .expect("burst exit event");
    let records = s.stop();
    let seen = connects_of(&records, pid);
    let loss = records
        .iter()
        .rev()
        .find_map(|r| match r {
            Record::Status(st) => match &**st {
                Status::Loss(l) => Some(l),
                _ => None,
            },
            _ => None,
        })
        .expect("final loss event");
    assert!(loss.last);
    let kernel = loss.kernel_dropped["connect"];
    let user = loss.user_dropped_by_kind["connect"];
    let received = loss.received["connect"];
    println!("generated {N}: received {received} (in stream {seen}), kernel dropped {kernel}, user dropped {user}");
    assert!(kernel > 0, "the tiny ring should have overflowed: {loss:?}");
    assert_eq!(received, seen + user, "{loss:?}");
    assert_eq!(N, seen + kernel + user, "{loss:?}");
    // Nothing but the listed process was reported.
    assert!(records.iter().all(|r| r.pid().is_none()
        || r.pid() == Some(pid)
        || matches!(r, Record::Status(st) if matches!(**st, Status::SensorStart(_)))));
}

/// IRQ work interrupts taken so far, all CPUs (x86 `/proc/interrupts`, line `IWI`): a ring
/// buffer wakeup of the reader is an irq_work, raised with a self-IPI.
fn irq_work_interrupts() -> u64 {
    let text = std::fs::read_to_string("/proc/interrupts").unwrap();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("IWI:"))
        .expect("/proc/interrupts has no IWI line (x86-64 only)");
    line.trim_start()["IWI:".len()..]
        .split_whitespace()
        .map_while(|w| w.parse::<u64>().ok())
        .sum()
}

/// While the reader is stopped (or busy) the backlog grows past the wakeup mark: the producers
/// must wake it once per `wakeup_bytes` of records, not on every record (each wakeup is an
/// irq_work and a self-IPI that the syscall which produced the record pays for). The records
/// are all delivered once the reader runs again.
#[test]
fn a_backlog_wakes_the_reader_once_per_batch_not_per_record() {
    if !require_root("a_backlog_wakes_the_reader_once_per_batch_not_per_record") {
        return;
    }
    let _one = BURSTS.lock().unwrap_or_else(|e| e.into_inner());
    irq_work_interrupts(); // before the sensor is stopped: fails here on a kernel without IWI
    const N: u64 = 20_000;
    let mut burst = Burst::spawn(N);
    let pid = burst.pid();
    // Default ring (8 MiB: the burst's records, ~2.7 MB, fit) and wakeup mark (128 KiB).
    let s = Sensor::start(&["--only-pid", &pid.to_string()]);
    // SAFETY: signalling the sensor this test started.
    assert_eq!(unsafe { libc::kill(s.pid as i32, libc::SIGSTOP) }, 0);
    let before = irq_work_interrupts();
    burst.run();
    let wakeups = irq_work_interrupts() - before;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(s.pid as i32, libc::SIGCONT) }, 0);
    s.wait_event(WAIT, |e| is(e, Kind::Exit, pid))
        .expect("burst exit event");
    let records = s.stop();
    let seen = connects_of(&records, pid);
    // A connect record takes 136 bytes of ring (128 + the 8-byte record header): ~20 marks
    // of 128 KiB are crossed. Other irq_work on the node (rare) adds a few.
    let marks = N * 136 / (128 << 10);
    println!("{N} records while the reader was stopped: {wakeups} irq_work interrupts ({marks} marks crossed)");
    assert!(wakeups >= 1, "the backlog never woke the reader");
    assert!(
        wakeups <= marks + 60,
        "{wakeups} wakeups for {N} records: one per record, not one per batch"
    );
    assert_eq!(seen, N, "records lost");
}
