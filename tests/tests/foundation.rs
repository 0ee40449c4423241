//! Foundation: exec/fork/exit, connect/bind/listen (syscall and io_uring), loss accounting.
//! Each test starts the real sensor as root and filters on the pids of its own helpers.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    process::{Command, Stdio},
    time::Duration,
};

use sensor::event::Body;
use sensor_tests::{event, is, require_root, run_helper, Sensor, WAIT};
use serde_json::Value;

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
    // Typed: the sensor's own `Event`.
    let ev = event(
        &s.wait_for(WAIT, |e| is(e, "exec", pid))
            .expect("exec event"),
    );
    let Body::Exec(x) = &ev.body else {
        panic!("{ev:?}")
    };
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
        .wait_for(WAIT, |e| is(e, "exec", pid))
        .expect("exec event (truncated)");
    assert_eq!(ev["args_truncated"], true);
    let got: Vec<String> = serde_json::from_value(ev["argv"].clone()).unwrap();
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
    assert_eq!(ev["args_size"], size);
    // The sensor never reports itself.
    assert!(s.events(|e| e["pid"] == s.pid).is_empty());
    s.stop();
}

fn connect_case(s: &Sensor, mode: &str, ip: &str, port: u16) -> Value {
    let (pid, out) = run_helper(NETPROBE, &[mode, ip, &port.to_string()]);
    let ev = s
        .wait_for(WAIT, |e| is(e, "connect", pid))
        .unwrap_or_else(|| panic!("no connect event for {mode} {ip}:{port} (helper said {out:?})"));
    assert_eq!(ev["dst_ip"], ip);
    assert_eq!(ev["dst_port"], port);
    assert_eq!(ev["comm"], "netprobe");
    assert_eq!(ev["exe"], NETPROBE);
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
        let fam = if ip.contains(':') { "inet6" } else { "inet" };
        let ev = connect_case(&s, "connect", ip, open);
        assert_eq!(
            (ev["result"].as_str(), ev["family"].as_str()),
            (Some("ok"), Some(fam)),
            "{ev}"
        );
        assert_eq!(ev["sock_type"], "stream");
        assert_eq!(ev["via"], "syscall");
        assert!(ev["fd"].as_i64().unwrap() >= 3);

        let ev = connect_case(&s, "connect", ip, closed);
        assert_eq!(ev["result"], "error", "{ev}");
        assert_eq!(ev["errno"], -libc::ECONNREFUSED);

        let ev = connect_case(&s, "connect-nb", ip, open);
        assert_eq!(ev["result"], "in_progress", "{ev}");
        assert_eq!(ev["errno"], -libc::EINPROGRESS);
    }
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
        .wait_for(WAIT, |e| is(e, "connect", pid))
        .expect("connect");
    let id = c["conn_id"]
        .as_str()
        .expect("conn_id on the connect")
        .to_string();
    let x = s
        .wait_for(WAIT, |e| is(e, "tcp_close", pid))
        .expect("tcp_close attributed to the connecting process");
    assert_eq!(x["conn_id"], id.as_str());
    assert_eq!(x["dst_port"], port);
    assert_eq!(x["exe"], NETPROBE);
    let d = x["duration_s"].as_f64().expect("duration");
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
        .wait_for(WAIT, |e| is(e, "connect", pid))
        .expect("io_uring connect event");
    assert_eq!(ev["via"], "sock_state");
    assert_eq!(ev["dst_ip"], "127.0.0.1");
    assert_eq!(ev["dst_port"], port);
    assert_eq!(ev["protocol"], "tcp");
    // Its close pairs with it too (the connection id comes from the kernel socket).
    let id = ev["conn_id"]
        .as_str()
        .expect("conn_id on an io_uring connect")
        .to_string();
    let x = s
        .wait_for(WAIT, |e| is(e, "tcp_close", pid))
        .expect("tcp_close of the io_uring socket");
    assert_eq!(x["conn_id"], id.as_str());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        s.events(|e| is(e, "connect", pid)).len(),
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
        let b = s
            .wait_for(WAIT, |e| is(e, "bind", pid))
            .expect("bind event");
        assert_eq!(
            (b["local_ip"].as_str(), b["local_port"].as_u64()),
            (Some(ip), Some(0))
        );
        assert_eq!(b["result"], "ok");
        let l = s
            .wait_for(WAIT, |e| is(e, "listen", pid))
            .expect("listen event");
        assert_eq!(l["local_ip"], ip);
        assert_eq!(l["local_port"], port);
        assert_eq!(l["protocol"], "tcp");
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
        .wait_for(WAIT, |e| is(e, "fork", pid))
        .expect("fork event");
    assert_eq!(f["child_pid"], child);
    let x = s
        .wait_for(WAIT, |e| is(e, "exit", child))
        .expect("child exit event");
    assert_eq!(x["exit_status"], 3);
    assert_eq!(x["ppid"], pid);
    assert_eq!(
        x["exe"], NETPROBE,
        "a forked child inherits the parent's exe"
    );
    let x = s
        .wait_for(WAIT, |e| is(e, "exit", pid))
        .expect("parent exit event");
    assert_eq!(x["exit_status"], 0);
    // One exit per process, not per thread.
    assert_eq!(s.events(|e| is(e, "exit", child)).len(), 1);
    s.stop();
}

#[test]
fn loss_accounting_is_exact_with_a_tiny_ring() {
    if !require_root("loss_accounting_is_exact_with_a_tiny_ring") {
        return;
    }
    const N: u64 = 20_000;
    let port = closed_port();
    let mut burst = Command::new(NETPROBE)
        .args(["burst", &N.to_string(), &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = burst.id();
    // The smallest ring accepted (16 KiB, two exec records) holds ~150 connect records: the
    // burst must overflow it.
    let s = Sensor::start(&["--only-pid", &pid.to_string(), "--ring-size", "16KiB"]);
    burst.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut line = String::new();
    BufReader::new(burst.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(burst.wait().unwrap().success());
    assert_eq!(line.trim(), format!("done {N} refused {N}"));
    s.wait_for(WAIT, |e| is(e, "exit", pid))
        .expect("burst exit event");
    let events = s.stop();
    let seen = events.iter().filter(|e| is(e, "connect", pid)).count() as u64;
    let loss = events
        .iter()
        .rev()
        .find(|e| e["kind"] == "loss")
        .expect("final loss event");
    assert_eq!(loss["final"], true);
    let kernel = loss["kernel_dropped"]["connect"].as_u64().unwrap();
    let user = loss["user_dropped_by_kind"]["connect"].as_u64().unwrap();
    let received = loss["received"]["connect"].as_u64().unwrap();
    println!("generated {N}: received {received} (in stream {seen}), kernel dropped {kernel}, user dropped {user}");
    assert!(kernel > 0, "the tiny ring should have overflowed: {loss}");
    assert_eq!(received, seen + user, "{loss}");
    assert_eq!(N, seen + kernel + user, "{loss}");
    // Nothing but the listed process was reported.
    assert!(events
        .iter()
        .all(|e| e.get("pid").is_none() || e["pid"] == pid || e["kind"] == "sensor_start"));
}
