//! Detections with real tools on loopback: a throwaway OpenSSH server on 127.0.0.1:2222 and
//! real ssh/autossh/dbclient/socat/ncat clients, a miner-named process speaking Stratum to a
//! local "pool" on 3333, a pod emulated with a kubepods cgroup, and benign traffic that must stay
//! silent. One test function: the scenarios share the sshd port and run in order.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use std::net::IpAddr;

use sensor::{
    event::{Device, Kind},
    rules::{Alert, Severity},
};
use sensor_tests::{
    free_port, group, require_root, sh, skip, EventExt, Kill, Record, Sensor, WAIT,
};

const SSHD_PORT: u16 = 2222;

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sshd(dir: &Path) -> Kill {
    sensor_tests::sshd(dir, SSHD_PORT)
}

/// The hit of `rule` for `pid`; every attack here must also be a raised incident (what pages),
/// not only a rule hit.
fn alert_for(s: &Sensor, rule: &str, pid: u32) -> Alert {
    let a = s
        .wait_alert(WAIT, |a| a.rule == rule && a.pid == pid)
        .unwrap_or_else(|| panic!("no alert {rule} for pid {pid}"));
    let id = a
        .incident
        .clone()
        .unwrap_or_else(|| panic!("{rule}: the hit joined no incident"));
    s.wait_incident(WAIT, |i| i.id == id && i.raised)
        .unwrap_or_else(|| panic!("{rule} for pid {pid}: incident {id} was not raised"));
    a
}

fn rules_of(s: &Sensor, pid: u32) -> Vec<String> {
    s.alerts(|a| a.pid == pid)
        .into_iter()
        .map(|a| a.rule)
        .collect()
}

/// The destination (ip, port) of the alert's triggering event: a network event (connect, …)
/// or a `net_payload`; neither for other kinds.
fn dst(a: &Alert) -> (Option<IpAddr>, Option<u16>) {
    match (a.event.net(), a.event.net_payload()) {
        (Some(n), _) => (n.dst_ip, n.dst_port),
        (_, Some(p)) => (Some(p.dst_ip), Some(p.dst_port)),
        _ => (None, None),
    }
}

/// Serves `GET /api/v1/pods…` with one pod (plain HTTP); watch requests get an empty stream.
fn fake_kube_api(pod_uid: &str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let body = serde_json::json!({
        "kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "100"},
        "items": [{
            "metadata": {"uid": pod_uid, "name": "agent-sandbox-7", "namespace": "rl-rollouts",
                         "resourceVersion": "99", "labels": {"app": "rollout-worker"},
                         "annotations": {"rl.example.com/episode": "ep-annot-42", "other": "x"}},
            "spec": {"nodeName": "gpu-node-1"}
        }]
    })
    .to_string();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { break };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&req);
            let ok =
                head.starts_with("GET /api/v1/pods") && head.contains("spec.nodeName%3Dgpu-node-1");
            let b = if head.contains("watch=1") || !ok {
                ""
            } else {
                body.as_str()
            };
            let status = if ok { "200 OK" } else { "404 Not Found" };
            let _ = write!(c, "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}", b.len());
        }
    });
    port
}

/// A local target that accepts and echoes a line, counting connections.
fn echo_listener() -> (u16, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        for c in l.incoming().take(8) {
            let Ok(mut c) = c else { break };
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                if let Ok(n) = c.read(&mut buf) {
                    let _ = c.write_all(&buf[..n]);
                }
            });
        }
    });
    (port, h)
}

/// Connects through a forward (sshd listens on `port`) until the echo comes back.
fn use_forward(port: u16) {
    let t = Instant::now();
    loop {
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c.write_all(b"ping\n").unwrap();
            let mut buf = [0u8; 5];
            if c.read_exact(&mut buf).is_ok() {
                assert_eq!(&buf, b"ping\n");
                return;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "forward on {port} never worked"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn tunnels_miners_pods_and_benign_traffic() {
    let name = "tunnels_miners_pods_and_benign_traffic";
    if !require_root(name) {
        return;
    }
    for tool in [
        "/usr/sbin/sshd",
        "/usr/bin/autossh",
        "/usr/bin/dbclient",
        "/usr/bin/socat",
        "/usr/bin/ncat",
    ] {
        if !Path::new(tool).exists() {
            skip(
                name,
                &format!("{tool} not installed (scripts/setup.sh installs it)"),
            );
            return;
        }
    }
    if TcpStream::connect(("127.0.0.1", SSHD_PORT)).is_ok()
        || TcpStream::connect(("127.0.0.1", 3333)).is_ok()
    {
        skip(name, "127.0.0.1:2222 or :3333 already in use");
        return;
    }
    let dir = Dir(std::env::temp_dir().join(format!("sensor-rules-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let d = &dir.0;

    // An emulated pod: kubepods slice + containerd scope in the cgroup2 hierarchy.
    let pod_uid = "1b2c3d4e-0000-4000-8000-123456789abc";
    let cid = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let cg_root = sensor_tests::cgroup2_root();
    let scope = cg_root.as_ref().map(|r| {
        r.join("kubepods.slice")
            .join(format!("kubepods-pod{}.slice", pod_uid.replace('-', "_")))
            .join(format!("cri-containerd-{cid}.scope"))
    });
    if let Some(sc) = &scope {
        std::fs::create_dir_all(sc).unwrap();
    }

    let _sshd = sshd(d);
    // A stand-in Kubernetes API (plain HTTP on loopback) that knows the emulated pod.
    let api = fake_kube_api(pod_uid);
    let cfg = d.join("sensor.toml");
    std::fs::write(
        &cfg,
        format!(
            "[context]\nkube_api = \"http://127.0.0.1:{api}\"\nnode_name = \"gpu-node-1\"\n\
             episode_env = [\"ROLLOUT_ID\"]\nepisode_annotations = [\"rl.example.com/episode\"]\n"
        ),
    )
    .unwrap();
    let s = Sensor::start(&["--config", cfg.to_str().unwrap()]);
    let me = std::process::id();
    let opts = sensor_tests::ssh_opts(d, SSHD_PORT);

    // 1. ssh -N -R, then use the remote forward: the client connects to the local target.
    let (target, _t) = echo_listener();
    let fport = free_port();
    let ssh = Kill(
        group(&mut Command::new("ssh"))
            .args(&opts)
            .args([
                "-N",
                "-R",
                &format!("127.0.0.1:{fport}:127.0.0.1:{target}"),
                "root@127.0.0.1",
            ])
            .spawn()
            .unwrap(),
    );
    let pid = ssh.0.id();
    let a = alert_for(&s, "ssh-forwarding-flags", pid);
    assert_eq!(a.severity, Severity::High);
    assert_eq!(
        a.lineage.first().map(|l| l.pid),
        Some(me),
        "lineage starts at the test process: {a:?}"
    );
    assert!(a.argv.iter().any(|x| x == "-R"));
    assert!(a.tags.iter().any(|x| x == "T1572"));
    use_forward(fport);
    let a = alert_for(&s, "ssh-remote-forward-in-use", pid);
    let (ip, port) = dst(&a);
    assert_eq!(port, Some(target));
    assert_eq!(ip, Some(IpAddr::from([127, 0, 0, 1])));
    drop(ssh);

    // 2. -o RemoteForward=… (option form), backgrounded with -f from a python "agent" via
    //    bash: the ROME shape. Lineage is kept through the re-parenting, severity raised.
    let fport2 = free_port();
    let cmd = format!(
        // "; true": bash forks for a list instead of exec'ing ssh, so the shell is in the chain.
        "ssh {} -f -N -o 'RemoteForward=127.0.0.1:{fport2} 127.0.0.1:{target}' root@127.0.0.1; true",
        opts.iter().map(|o| format!("'{o}'")).collect::<Vec<_>>().join(" ")
    );
    let agent = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import subprocess,sys; subprocess.run(['bash','-c',sys.argv[1]], check=True)",
            &cmd,
        ])
        .spawn()
        .unwrap();
    let agent_pid = agent.id();
    let a = s
        .wait_alert(WAIT, |a| {
            a.rule == "ssh-forwarding-options" && a.lineage.get(1).map(|l| l.pid) == Some(agent_pid)
        })
        .expect("ssh -o RemoteForward alert with python → bash lineage");
    let names: Vec<&str> = a
        .lineage
        .iter()
        .map(|x| x.exe.as_deref().unwrap_or(""))
        .collect();
    assert!(names[0].ends_with("bash"), "{names:?}");
    assert!(names[1].contains("python"), "{names:?}");
    assert_eq!(
        a.severity,
        Severity::Critical,
        "raised from high by the python agent in the lineage"
    );
    assert!(a.severity_raised_by.as_deref().unwrap().contains("python"));
    let ssh_f_pid = a.pid;
    agent.wait_with_output().unwrap();
    use_forward(fport2);
    // The forwarding is served by the backgrounded child (a fork of the exec'd ssh).
    let inuse = s
        .wait_alert(WAIT, |a| {
            a.rule == "ssh-remote-forward-in-use" && dst(a).1 == Some(target) && a.pid != pid
        })
        .expect("remote forward in use by the ssh -f child");
    let lin: Vec<u32> = inuse.lineage.iter().map(|x| x.pid).collect();
    assert!(
        lin.contains(&ssh_f_pid) && lin.contains(&agent_pid),
        "exec-time lineage kept after -f: {lin:?}"
    );
    // SAFETY: terminating the backgrounded ssh this test started.
    unsafe { libc::kill(inuse.pid as i32, libc::SIGTERM) };

    // 3. autossh keeping a -R tunnel up.
    let fport3 = free_port();
    let auto = Kill(
        group(&mut Command::new("autossh"))
            .env("AUTOSSH_GATETIME", "0")
            .args(["-M", "0"])
            .args(&opts)
            .args([
                "-N",
                "-R",
                &format!("127.0.0.1:{fport3}:127.0.0.1:{target}"),
                "root@127.0.0.1",
            ])
            .spawn()
            .unwrap(),
    );
    let apid = auto.0.id();
    alert_for(&s, "autossh-started", apid);
    let child = s
        .wait_alert(WAIT, |a| {
            a.rule == "ssh-forwarding-flags" && a.lineage.first().map(|l| l.pid) == Some(apid)
        })
        .expect("ssh started by autossh");
    assert!(child.lineage[0].exe.as_deref().unwrap().contains("autossh"));
    drop(auto);

    // 4. dropbear's client with -R.
    let fport4 = free_port();
    let db = Kill(
        group(&mut Command::new("dbclient"))
            .args([
                "-y",
                "-y",
                "-i",
                &d.join("id.dropbear").display().to_string(),
                "-p",
                &SSHD_PORT.to_string(),
            ])
            .args([
                "-N",
                "-R",
                &format!("127.0.0.1:{fport4}:127.0.0.1:{target}"),
                "root@127.0.0.1",
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let a = alert_for(&s, "ssh-forwarding-flags", db.0.id());
    assert_eq!(a.comm, "dbclient");
    drop(db);

    // 5. socat EXEC and ncat -e (connecting to a local listener), inside the emulated pod.
    let (lport, _l) = echo_listener();
    let pod_prefix = scope
        .as_ref()
        .map(|sc| format!("echo $$ > {}/cgroup.procs; ", sc.display()))
        .unwrap_or_default();
    let socat = Command::new("sh")
        .args([
            "-c",
            &format!("{pod_prefix}exec socat -T1 TCP:127.0.0.1:{lport} EXEC:/bin/cat"),
        ])
        .spawn()
        .unwrap();
    let spid = socat.id();
    let a = alert_for(&s, "socat-exec-or-listen", spid);
    if scope.is_some() {
        // An alert without a container compares as one with no fields.
        let c = a.container.clone().unwrap_or_default();
        assert_eq!(c.id.as_deref(), Some(cid), "pod attribution: {a:?}");
        assert_eq!(c.pod_uid.as_deref(), Some(pod_uid));
        assert_eq!(c.runtime.as_deref(), Some("containerd"));
        // From the Kubernetes API.
        assert_eq!(c.pod.as_deref(), Some("agent-sandbox-7"), "{a:?}");
        assert_eq!(c.namespace.as_deref(), Some("rl-rollouts"));
        assert_eq!(c.node.as_deref(), Some("gpu-node-1"));
        assert_eq!(
            c.labels.get("app").map(String::as_str),
            Some("rollout-worker")
        );
        assert_eq!(
            a.episode.as_deref(),
            Some("ep-annot-42"),
            "episode from the pod annotation"
        );
    }
    let _ = Kill(socat);
    let nc = Command::new("ncat")
        .env("ROLLOUT_ID", "ep-env-7")
        .args(["-e", "/bin/cat", "127.0.0.1", &lport.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let npid = nc.id();
    let a = alert_for(&s, "netcat-exec", npid);
    assert_eq!(
        a.episode.as_deref(),
        Some("ep-env-7"),
        "episode from the environment"
    );
    let _ = Kill(nc);

    // 6. A miner-named process with stratum argv connecting to a local "pool" on 3333 that
    //    speaks Stratum.
    let pool = TcpListener::bind("127.0.0.1:3333").unwrap();
    let pool_t = std::thread::spawn(move || {
        let (c, _) = pool.accept().unwrap();
        let mut r = BufReader::new(c.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let mut c = c;
        c.write_all(
            b"{\"id\":1,\"result\":[[\"mining.notify\",\"ae68\"],\"08000002\",4],\"error\":null}\n",
        )
        .unwrap();
        line
    });
    let xmrig = d.join("xmrig");
    std::fs::write(
        &xmrig,
        "#!/usr/bin/python3\nimport socket\ns=socket.create_connection(('127.0.0.1',3333))\n\
         s.sendall(b'{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"xmrig/6.21\"]}\\n')\ns.recv(512)\n",
    )
    .unwrap();
    sh(&format!("chmod +x {}", xmrig.display()));
    let out = Command::new(&xmrig)
        .args([
            "-o",
            "stratum+tcp://127.0.0.1:3333",
            "-u",
            "wallet",
            "--donate-level=0",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(pool_t.join().unwrap().contains("mining.subscribe"));
    let m = s
        .wait_alert(WAIT, |a| a.rule == "miner-exec" && a.comm == "xmrig")
        .expect("miner exec alert");
    let mpid = m.pid;
    assert_eq!(m.severity, Severity::Critical);
    let seq = alert_for(&s, "miner-exec-then-connect", mpid);
    assert_eq!(
        seq.related.first().map(|e| e.kind()),
        Some(Kind::Exec),
        "the sequence carries its first step"
    );
    assert_eq!(dst(&seq).1, Some(3333));
    alert_for(&s, "miner-pool-port-connect", mpid);
    // The Stratum greeting itself, captured in the kernel from the first sendto().
    let st = alert_for(&s, "stratum-handshake", mpid);
    assert!(
        st.event
            .net_payload()
            .unwrap()
            .text
            .contains("mining.subscribe"),
        "{st:?}"
    );
    assert_eq!(dst(&st).1, Some(3333));

    // 6b. A TUN device open (ssh -w style tunnelling needs one).
    if Path::new("/dev/net/tun").exists() {
        let tun = Command::new("/usr/bin/python3")
            .args([
                "-c",
                "import os; os.close(os.open('/dev/net/tun', os.O_RDWR))",
            ])
            .spawn()
            .unwrap();
        let tpid = tun.id();
        assert!(tun.wait_with_output().unwrap().status.success());
        let a = alert_for(&s, "tun-device-open", tpid);
        let o = a.event.gpu_open().unwrap();
        assert_eq!(o.path, "/dev/net/tun");
        assert_eq!(o.device, Device::Tun);
    }

    // 7. Benign: ssh without forwarding, git over ssh, an HTTPS-style connect.
    let plain = Command::new("ssh")
        .args(&opts)
        .args(["root@127.0.0.1", "true"])
        .status()
        .unwrap();
    assert!(plain.success());
    let repo = d.join("repo.git");
    sh(&format!("git init -q --bare {}", repo.display()));
    let git = Command::new("git")
        .env("GIT_SSH_COMMAND", format!("ssh {}", opts.join(" ")))
        .args([
            "ls-remote",
            &format!("ssh://root@127.0.0.1:{SSHD_PORT}{}", repo.display()),
        ])
        .status()
        .unwrap();
    assert!(git.success());
    let (https, _h) = echo_listener();
    let curlish = Command::new("/usr/bin/python3")
        .args(["-c", &format!("import socket; s=socket.create_connection(('127.0.0.1',{https})); s.sendall(b'GET'); s.recv(3)")])
        .spawn()
        .unwrap();
    let cpid = curlish.id();
    curlish.wait_with_output().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        rules_of(&s, cpid).is_empty(),
        "HTTPS-style connect alerted: {:?}",
        rules_of(&s, cpid)
    );
    let greet = s
        .wait_event(WAIT, |e| e.kind() == Kind::NetPayload && e.pid == cpid)
        .expect("first payload captured");
    assert_eq!(greet.net_payload().unwrap().text, "GET");
    let benign: Vec<Alert> = s.alerts(|a| {
        (a.comm == "ssh" || a.comm == "git")
            && !a.argv.iter().any(|x| x == "-R" || x == "-N" || x == "-f")
    });
    assert!(benign.is_empty(), "benign ssh/git alerted: {benign:?}");

    let all = s.stop();
    if let Some(sc) = &scope {
        let _ = std::fs::remove_dir(sc);
        let _ = std::fs::remove_dir(sc.parent().unwrap());
    }
    let n = all.iter().filter(|r| matches!(r, Record::Alert(_))).count();
    println!("{n} alerts in total");
}
