//! Incidents and the benign corpus: real GPU-cluster work (PyTorch `torchrun` with 2 gloo ranks,
//! Jupyter Lab with a kernel, TensorBoard, `python3 -m http.server`, pip and git over HTTPS) run
//! live, and replayed streams built from the H100 recordings plus NVML-shaped samples (an LLM
//! fine-tune of hours with a tracker connection, a multi-node NCCL worker) must raise nothing;
//! an attack of several steps (agent python3 → bash → ssh -fNR, then a miner's Stratum login)
//! must be one incident whose timeline holds all of it.
//!
//! Every scenario prints a `CONFUSION|…` row; `cargo xtask confusion` gathers them into the
//! README's confusion table.

use std::{
    io::Write,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sensor::{incidents::Incident, rules::Severity};
use sensor_tests::{
    free_port, group, latest_incidents, require_root, sh, ssh_opts, sshd, wait_port, Kill, Record,
    Sensor, WAIT,
};

const GPUREPLAY: &str = env!("CARGO_BIN_EXE_gpureplay");
/// Jupyter Lab and TensorBoard (a venv made by scripts/setup.sh; PyTorch is Debian's).
const CORPUS_VENV: &str = "/opt/gpu-sensor-corpus";

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("sensor-inc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One row of the confusion table: what a scenario should raise and what it raised.
fn confusion(scenario: &str, expected: &str, got: Option<&Incident>, evidence: &[String]) {
    let (g, score, sev) = match got {
        Some(i) => (
            "incident",
            i.score.to_string(),
            format!("{:?}", i.severity).to_lowercase(),
        ),
        None => ("none", "-".into(), "-".into()),
    };
    println!(
        "CONFUSION|{scenario}|{expected}|{g}|{score}|{sev}|{}",
        if evidence.is_empty() {
            "-".to_string()
        } else {
            evidence.join(", ")
        }
    );
}

/// Alerts and evidence of the process tree rooted at `root` (the root itself or a process with
/// it in its lineage).
fn hits_of(records: &[Record], root: u32) -> Vec<sensor::rules::Alert> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Alert(a) if a.pid == root || a.lineage.iter().any(|x| x.pid == root) => {
                Some((**a).clone())
            }
            _ => None,
        })
        .collect()
}

fn evidence_names(hits: &[sensor::rules::Alert]) -> Vec<String> {
    let mut v: Vec<String> = hits
        .iter()
        .map(|a| {
            format!(
                "{} ({}{})",
                a.rule,
                a.kind,
                a.weight.map(|w| format!(" {w}")).unwrap_or_default()
            )
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

fn wait_exit(c: &mut std::process::Child, secs: u64) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            return st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "did not finish in {secs} s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn http_ok(url: &str) -> bool {
    Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "--max-time", "2", url])
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    false
}

#[test]
fn benign_gpu_cluster_work_raises_nothing() {
    if !require_root("benign_gpu_cluster_work_raises_nothing") {
        return;
    }
    for p in [
        "/usr/bin/torchrun",
        &format!("{CORPUS_VENV}/bin/jupyter-lab"),
    ] {
        assert!(Path::new(p).exists(), "{p} missing: run scripts/setup.sh");
    }
    let dir = TempDir::new("benign");
    let d = &dir.0;
    let s = Sensor::start(&[]);
    let mut roots: Vec<(&str, u32)> = vec![];

    // 1. PyTorch DDP on CPU: torchrun, 2 ranks, gloo (rendezvous store, rank listeners,
    //    all-reduce between the ranks).
    std::fs::write(
        d.join("ddp.py"),
        "import torch, torch.distributed as dist\n\
         dist.init_process_group('gloo')\n\
         t = torch.ones(1 << 16)\n\
         for _ in range(20):\n    dist.all_reduce(t)\n\
         assert int(t[0]) == 2 ** 20\n\
         dist.barrier()\n\
         dist.destroy_process_group()\n",
    )
    .unwrap();
    // Debian's torch 1.13 under Python 3.11 cannot parse the default `--redirects 0` (IntFlag
    // iteration changed in 3.11): stderr is redirected to per-rank logs and teed instead.
    let mut tr = group(Command::new("/usr/bin/torchrun").args([
        "--nproc_per_node=2",
        "--redirects=2",
        "--tee=2",
        &format!("--log_dir={}", d.join("torchrun-logs").display()),
        "--master_addr=127.0.0.1",
        &format!("--master_port={}", free_port()),
        d.join("ddp.py").to_str().unwrap(),
    ]))
    .env("OMP_NUM_THREADS", "1")
    .stdout(Stdio::null())
    .spawn()
    .unwrap();
    let tr_pid = tr.id();
    roots.push(("torchrun --nproc_per_node=2 (gloo DDP)", tr_pid));
    assert!(wait_exit(&mut tr, 240).success(), "torchrun job failed");
    // The rendezvous store listens on every address: the listener rule saw it, and the
    // trusted launcher (by path and ownership) is what keeps it quiet.
    assert!(
        s.wait_event(WAIT, |e| {
            e.pid == tr_pid
                && e.body.kind() == sensor::event::Kind::Listen
                && sensor_tests::EventExt::net(e)
                    .and_then(|n| n.local_ip)
                    .is_some_and(|ip| !ip.is_loopback())
        })
        .is_some(),
        "torchrun's store listened on a non-loopback address"
    );
    assert!(
        s.wait_event(WAIT, |e| e.pid == tr_pid
            && sensor_tests::EventExt::exec(e)
                .is_some_and(|x| x.launcher.as_deref() == Some("torchrun")))
            .is_some(),
        "torchrun is a trusted launcher"
    );

    // 2. Jupyter Lab with a kernel started through its REST API.
    let jp = free_port();
    let lab = Kill(
        group(
            Command::new(format!("{CORPUS_VENV}/bin/jupyter-lab")).args([
                "--no-browser",
                "--allow-root",
                "--ip=127.0.0.1",
                &format!("--port={jp}"),
                "--ServerApp.token=t0k",
                &format!("--notebook-dir={}", d.display()),
            ]),
        )
        .env("HOME", d)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    roots.push(("jupyter-lab with a kernel", lab.0.id()));
    assert!(
        wait_until(90, || http_ok(&format!(
            "http://127.0.0.1:{jp}/api/status?token=t0k"
        ))),
        "jupyter lab did not come up"
    );
    let k = Command::new("curl")
        .args([
            "-sf",
            "-X",
            "POST",
            &format!("http://127.0.0.1:{jp}/api/kernels?token=t0k"),
            "-d",
            "{}",
        ])
        .output()
        .unwrap();
    assert!(k.status.success(), "kernel start");
    // The kernel's five ZMQ listeners show up as listen events of ipykernel_launcher.
    assert!(
        s.wait_event(Duration::from_secs(60), |e| {
            e.body.kind() == sensor::event::Kind::Listen
                && e.exe.is_some()
                && sensor_tests::EventExt::net(e).is_some()
                && e.comm.starts_with("python")
        })
        .is_some(),
        "the kernel listened"
    );

    // 3. TensorBoard on its default (local) address.
    let tb_port = free_port();
    std::fs::create_dir_all(d.join("runs")).unwrap();
    let tb = Kill(
        group(
            Command::new(format!("{CORPUS_VENV}/bin/tensorboard")).args([
                "--logdir",
                d.join("runs").to_str().unwrap(),
                "--port",
                &tb_port.to_string(),
            ]),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    roots.push(("tensorboard", tb.0.id()));
    assert!(
        wait_until(90, || http_ok(&format!("http://localhost:{tb_port}/"))),
        "tensorboard did not come up"
    );

    // 4. A file server on loopback.
    let hp = free_port();
    let hs = Kill(
        group(Command::new("/usr/bin/python3").args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &hp.to_string(),
        ]))
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    roots.push(("python3 -m http.server (loopback)", hs.0.id()));
    wait_port(hp);

    // 5. pip and git over HTTPS to a local server (a package index and a git remote).
    sh(&format!(
        "openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost -days 1 \
         -keyout {d}/key.pem -out {d}/cert.pem >/dev/null 2>&1",
        d = d.display()
    ));
    std::fs::create_dir_all(d.join("www/simple/nothing")).unwrap();
    std::fs::write(d.join("www/simple/nothing/index.html"), "<html></html>").unwrap();
    let sp = free_port();
    let tls = Kill(
        group(Command::new("/usr/bin/python3").args([
            "-c",
            &format!(
                "import http.server, ssl, functools\n\
                 h = functools.partial(http.server.SimpleHTTPRequestHandler, directory='{w}')\n\
                 s = http.server.ThreadingHTTPServer(('127.0.0.1', {sp}), h)\n\
                 c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); c.load_cert_chain('{d}/cert.pem', '{d}/key.pem')\n\
                 s.socket = c.wrap_socket(s.socket, server_side=True)\n\
                 s.serve_forever()\n",
                w = d.join("www").display(),
                d = d.display()
            ),
        ]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    wait_port(sp);
    let mut pip = Command::new(format!("{CORPUS_VENV}/bin/pip"))
        .args([
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "-d",
            d.join("dl").to_str().unwrap(),
            "--index-url",
            &format!("https://localhost:{sp}/simple/"),
            "--trusted-host",
            &format!("localhost:{sp}"),
            "nothing",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    roots.push(("pip download over HTTPS", pip.id()));
    wait_exit(&mut pip, 60);
    let mut git = Command::new("git")
        .args([
            "-c",
            "http.sslVerify=false",
            "ls-remote",
            &format!("https://localhost:{sp}/repo.git"),
        ])
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    roots.push(("git ls-remote over HTTPS", git.id()));
    wait_exit(&mut git, 60);
    // Let the last events through the pipeline.
    std::thread::sleep(Duration::from_secs(2));
    drop((lab, tb, hs, tls));
    std::thread::sleep(Duration::from_secs(1));

    let records = s.stop();
    let incidents = latest_incidents(&records);
    let mut bad = vec![];
    for (name, root) in &roots {
        let hits = hits_of(&records, *root);
        let inc = incidents.iter().find(|i| i.entity.root_pid == *root);
        confusion(name, "none", inc, &evidence_names(&hits));
        if let Some(i) = inc {
            bad.push(format!("{name}: incident {}", i.summary()));
        }
        for a in hits
            .iter()
            .filter(|a| a.kind == "alert" && a.severity >= Severity::Medium)
        {
            bad.push(format!("{name}: alert {} ({:?})", a.rule, a.severity));
        }
    }
    assert!(bad.is_empty(), "benign work paged: {bad:#?}");
}

/// Records, through a live sensor, the events of one H100 recording re-issued on the stand-ins
/// (exec, opens, decoded ioctls); returns them as JSON objects with the replayer's pid.
fn record_gpu_work(dir: &Path, name: &str) -> (u32, Vec<serde_json::Value>) {
    let nodes = dir.join(format!("dev-{name}"));
    sensor_tests::standin_gpu_nodes(&nodes);
    let cfg = dir.join(format!("standin-{name}.toml"));
    std::fs::write(
        &cfg,
        format!("[gpu]\nnvml = false\n{}", sensor_tests::STANDIN_GPU_DEVICES),
    )
    .unwrap();
    let rec = dir.join(format!("{name}.rec.jsonl"));
    let s = Sensor::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--record",
        rec.to_str().unwrap(),
    ]);
    let fx =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/nvidia-h100/{name}.jsonl.gz"));
    let (pid, _) = sensor_tests::run_helper(
        GPUREPLAY,
        &["replay", fx.to_str().unwrap(), nodes.to_str().unwrap()],
    );
    s.wait_event(WAIT, |e| {
        e.pid == pid && e.body.kind() == sensor::event::Kind::GpuSessionEnd
    })
    .expect("the recording made a GPU session");
    drop(s.stop());
    let evs: Vec<serde_json::Value> = std::fs::read_to_string(&rec)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["pid"] == pid && ["gpu_open", "gpu_ioctl"].contains(&v["kind"].as_str().unwrap_or(""))
        })
        .collect();
    assert!(evs.len() > 50, "{name}: {} GPU events recorded", evs.len());
    (pid, evs)
}

/// Builds replayable streams: processes, connections and NVML samples around recorded GPU work.
struct Stream {
    lines: Vec<String>,
    t0: u64,
}

impl Stream {
    fn new() -> Stream {
        Stream {
            lines: vec![],
            t0: 1_000_000_000_000,
        }
    }
    fn push(&mut self, at_s: f64, pid: u32, ppid: u32, comm: &str, body: serde_json::Value) {
        let ts_ns = self.t0 + (at_s * 1e9) as u64;
        let mut v = serde_json::json!({
            "ts": format!("2026-11-30T{:02}:{:02}:{:02}Z", (at_s as u64 / 3600) % 24, (at_s as u64 / 60) % 60, at_s as u64 % 60),
            "ts_ns": ts_ns, "pid": pid, "tid": pid, "ppid": ppid, "uid": 1000, "gid": 1000,
            "comm": comm, "cgroup_id": 1, "mntns": 4026531840u64,
        });
        v.as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        self.lines.push(v.to_string());
    }
    fn exec(
        &mut self,
        at: f64,
        pid: u32,
        ppid: u32,
        file: &str,
        argv: &[&str],
        launcher: Option<&str>,
    ) {
        let comm = file.rsplit('/').next().unwrap();
        let mut b = serde_json::json!({"kind": "exec", "filename": file, "argv": argv, "args_truncated": false, "args_size": 64});
        if let Some(l) = launcher {
            b["launcher"] = l.into();
        }
        self.push(at, pid, ppid, comm, b);
    }
    fn fork(&mut self, at: f64, pid: u32, ppid: u32, comm: &str, child: u32) {
        self.push(
            at,
            pid,
            ppid,
            comm,
            serde_json::json!({"kind": "fork", "child_pid": child}),
        );
    }
    #[allow(clippy::too_many_arguments)]
    fn connect(
        &mut self,
        at: f64,
        pid: u32,
        ppid: u32,
        comm: &str,
        local: (&str, u16),
        dst: (&str, u16),
        id: &str,
    ) {
        self.push(at, pid, ppid, comm, serde_json::json!({"kind": "connect", "family": "inet", "sock_type": "stream", "local_ip": local.0, "local_port": local.1, "dst_ip": dst.0, "dst_port": dst.1, "result": "ok", "via": "syscall", "conn_id": id}));
    }
    fn close(&mut self, at: f64, pid: u32, ppid: u32, comm: &str, dst: (&str, u16), id: &str) {
        self.push(at, pid, ppid, comm, serde_json::json!({"kind": "tcp_close", "family": "inet", "sock_type": "stream", "dst_ip": dst.0, "dst_port": dst.1, "result": "closed", "via": "sock_state", "conn_id": id}));
    }
    #[allow(clippy::too_many_arguments)]
    fn tls(
        &mut self,
        at: f64,
        pid: u32,
        ppid: u32,
        comm: &str,
        local_port: u16,
        dst: (&str, u16),
        sni: Option<&str>,
    ) {
        let mut b = serde_json::json!({"kind": "net_payload", "fd": -1, "family": "inet", "dst_ip": dst.0, "dst_port": dst.1, "local_port": local_port, "transport": "tcp", "len": 517, "data": "1603010200010001fc0303", "text": "", "proto": "tls"});
        if let Some(n) = sni {
            b["sni"] = n.into();
        }
        self.push(at, pid, ppid, comm, b);
    }
    fn listen(&mut self, at: f64, pid: u32, ppid: u32, comm: &str, local: (&str, u16)) {
        self.push(at, pid, ppid, comm, serde_json::json!({"kind": "listen", "family": "inet", "sock_type": "stream", "local_ip": local.0, "local_port": local.1, "result": "ok", "via": "syscall"}));
    }
    /// The recorded GPU work, moved onto `pid` at `at` seconds.
    fn gpu(&mut self, at: f64, pid: u32, ppid: u32, comm: &str, recorded: &[serde_json::Value]) {
        let base = recorded[0]["ts_ns"].as_u64().unwrap();
        for v in recorded {
            let mut v = v.clone();
            let dt = (v["ts_ns"].as_u64().unwrap() - base) as f64 / 1e9;
            let o = v.as_object_mut().unwrap();
            for k in [
                "ts",
                "ts_ns",
                "pid",
                "tid",
                "ppid",
                "uid",
                "gid",
                "comm",
                "cgroup_id",
                "mntns",
                "exe",
                "container",
            ] {
                o.remove(k);
            }
            self.push(at + dt, pid, ppid, comm, v);
        }
    }
    /// NVML samples every 5 s from `from` to `to` seconds; `f(i)` gives (SM %, PCIe RX KB/s).
    fn usage(
        &mut self,
        from: f64,
        to: f64,
        pid: u32,
        ppid: u32,
        comm: &str,
        f: impl Fn(u64) -> (u32, u32),
    ) {
        let mut t = from;
        let mut i = 0;
        while t < to {
            let (sm, rx) = f(i);
            self.push(t, pid, ppid, comm, serde_json::json!({"kind": "gpu_usage", "gpu_index": 0, "gpu_minor": 0, "sm_util": sm, "mem_util": sm / 3, "device_gpu_util": sm.max(90), "device_mem_util": sm / 3, "pcie_rx_kbps": rx, "pcie_tx_kbps": rx / 4}));
            t += 5.0;
            i += 1;
        }
    }
    fn exit(&mut self, at: f64, pid: u32, ppid: u32, comm: &str) {
        self.push(
            at,
            pid,
            ppid,
            comm,
            serde_json::json!({"kind": "exit", "exit_code": 0}),
        );
    }
}

/// Runs `sensor replay --alerts-only` on `lines`; returns the typed records it printed.
fn replay(dir: &Path, name: &str, lines: &[String]) -> Vec<Record> {
    let f = dir.join(format!("{name}.jsonl"));
    let mut w = std::fs::File::create(&f).unwrap();
    for l in lines {
        writeln!(w, "{l}").unwrap();
    }
    drop(w);
    let out = Command::new(sensor_tests::sensor_bin())
        .args(["replay", "--alerts-only", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "replay of {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| Record::from_value(&serde_json::from_str(l).unwrap()).unwrap())
        .collect()
}

#[test]
fn replayed_training_streams_raise_nothing_and_a_hash_loop_does() {
    if !require_root("replayed_training_streams_raise_nothing_and_a_hash_loop_does") {
        return;
    }
    let dir = TempDir::new("replay");
    let (_, training) = record_gpu_work(&dir.0, "training");
    let (_, mining) = record_gpu_work(&dir.0, "mining-like");
    let hours = 2.0 * 3600.0;

    // An LLM fine-tune: torchrun (trusted: it recorded `launcher`), one rank; a model download
    // that closes before the GPU work; an experiment tracker connection open throughout; SM
    // 96-100 %, PCIe RX 0.5-3 MB/s for two hours.
    let mut ft = Stream::new();
    ft.exec(
        0.0,
        5000,
        1,
        "/usr/bin/torchrun",
        &[
            "/usr/bin/python3",
            "/usr/bin/torchrun",
            "--nproc_per_node=1",
            "finetune.py",
        ],
        Some("torchrun"),
    );
    ft.listen(1.0, 5000, 1, "torchrun", ("0.0.0.0", 29500));
    ft.fork(1.5, 5000, 1, "torchrun", 5001);
    ft.exec(
        1.6,
        5001,
        5000,
        "/usr/bin/python3.11",
        &[
            "/usr/bin/python3",
            "-u",
            "finetune.py",
            "--model",
            "llama-3-8b",
        ],
        None,
    );
    ft.connect(
        2.0,
        5001,
        5000,
        "python3",
        ("10.0.3.7", 41000),
        ("198.51.100.21", 443),
        "00000000000f0001",
    );
    ft.tls(
        2.1,
        5001,
        5000,
        "python3",
        41000,
        ("198.51.100.21", 443),
        Some("cdn-lfs.huggingface.co"),
    );
    ft.close(
        40.0,
        5001,
        5000,
        "python3",
        ("198.51.100.21", 443),
        "00000000000f0001",
    );
    ft.connect(
        41.0,
        5001,
        5000,
        "python3",
        ("10.0.3.7", 41002),
        ("198.51.100.22", 443),
        "00000000000f0002",
    );
    ft.tls(
        41.1,
        5001,
        5000,
        "python3",
        41002,
        ("198.51.100.22", 443),
        Some("api.wandb.ai"),
    );
    ft.gpu(45.0, 5001, 5000, "python3", &training);
    ft.usage(60.0, hours, 5001, 5000, "python3", |i| {
        (96 + (i % 5) as u32, 512 + (i * 337 % 2560) as u32)
    });
    ft.exit(hours + 1.0, 5001, 5000, "python3");
    let rec = replay(&dir.0, "finetune", &ft.lines);
    let inc = latest_incidents(&rec);
    let hits: Vec<_> = rec
        .iter()
        .filter_map(|r| match r {
            Record::Alert(a) => Some((**a).clone()),
            _ => None,
        })
        .collect();
    confusion(
        "LLM fine-tune, 2 h (replayed: torchrun, tracker, SM ≥ 96 %)",
        "none",
        inc.first(),
        &evidence_names(&hits),
    );
    assert!(
        hits.iter().any(|a| a.rule == "gpu-mining-like-profile"),
        "the profile is seen (as evidence): {hits:?}"
    );
    assert!(
        inc.is_empty(),
        "fine-tune raised: {:#?}",
        inc.iter().map(|i| i.summary()).collect::<Vec<_>>()
    );
    assert!(
        !hits
            .iter()
            .any(|a| a.kind == "alert" && a.severity >= Severity::Medium),
        "{hits:?}"
    );

    // A multi-node NCCL worker: rendezvous and peers in the private range, ephemeral
    // listeners, heavy PCIe traffic.
    let mut nc = Stream::new();
    nc.exec(
        0.0,
        6000,
        1,
        "/usr/local/bin/torchrun",
        &[
            "/usr/bin/python3",
            "/usr/local/bin/torchrun",
            "--nnodes=4",
            "--node_rank=2",
            "--rdzv_endpoint=10.0.3.2:29400",
            "train.py",
        ],
        Some("torchrun"),
    );
    nc.connect(
        0.5,
        6000,
        1,
        "torchrun",
        ("10.0.3.9", 50100),
        ("10.0.3.2", 29400),
        "00000000000e0001",
    );
    nc.fork(1.0, 6000, 1, "torchrun", 6001);
    nc.exec(
        1.1,
        6001,
        6000,
        "/usr/bin/python3.11",
        &["/usr/bin/python3", "-u", "train.py"],
        None,
    );
    nc.listen(2.0, 6001, 6000, "python3", ("0.0.0.0", 43817));
    nc.listen(2.1, 6001, 6000, "python3", ("10.0.3.9", 47551));
    for (k, peer) in ["10.0.3.2", "10.0.3.5", "10.0.3.11"].iter().enumerate() {
        nc.connect(
            3.0 + k as f64,
            6001,
            6000,
            "python3",
            ("10.0.3.9", 51000 + k as u16),
            (peer, 47551),
            &format!("00000000000e01{k:02}"),
        );
    }
    nc.gpu(10.0, 6001, 6000, "python3", &training);
    nc.usage(20.0, 3600.0, 6001, 6000, "python3", |i| {
        (
            70 + (i % 20) as u32,
            8_000_000 + (i * 7919 % 4_000_000) as u32,
        )
    });
    nc.exit(3601.0, 6001, 6000, "python3");
    let rec = replay(&dir.0, "nccl", &nc.lines);
    let inc = latest_incidents(&rec);
    let hits: Vec<_> = rec
        .iter()
        .filter_map(|r| match r {
            Record::Alert(a) => Some((**a).clone()),
            _ => None,
        })
        .collect();
    confusion(
        "multi-node NCCL worker (replayed: private peers, ephemeral listeners)",
        "none",
        inc.first(),
        &evidence_names(&hits),
    );
    assert!(
        inc.is_empty(),
        "NCCL worker raised: {:#?}",
        inc.iter().map(|i| i.summary()).collect::<Vec<_>>()
    );
    assert!(hits.iter().all(|a| a.kind != "alert"), "{hits:?}");

    // The control: the same shape of GPU use by a hash loop from /tmp that holds a TLS
    // connection (no name) to an external host is an incident.
    let mut mn = Stream::new();
    mn.exec(
        0.0,
        7000,
        1,
        "/bin/bash",
        &["bash", "-c", "/tmp/.cache/hashd -o 198.51.100.30:443"],
        None,
    );
    mn.fork(0.5, 7000, 1, "bash", 7001);
    mn.exec(
        0.6,
        7001,
        7000,
        "/tmp/.cache/hashd",
        &["/tmp/.cache/hashd", "-o", "198.51.100.30:443"],
        None,
    );
    mn.connect(
        1.0,
        7001,
        7000,
        "hashd",
        ("10.0.3.7", 42000),
        ("198.51.100.30", 443),
        "00000000000d0001",
    );
    mn.tls(
        1.1,
        7001,
        7000,
        "hashd",
        42000,
        ("198.51.100.30", 443),
        None,
    );
    mn.gpu(5.0, 7001, 7000, "hashd", &mining);
    mn.usage(10.0, 1800.0, 7001, 7000, "hashd", |i| {
        (98 + (i % 2) as u32, 40 + (i % 7) as u32)
    });
    let rec = replay(&dir.0, "hashloop", &mn.lines);
    let inc = latest_incidents(&rec);
    let hits: Vec<_> = rec
        .iter()
        .filter_map(|r| match r {
            Record::Alert(a) => Some((**a).clone()),
            _ => None,
        })
        .collect();
    confusion(
        "hash loop from /tmp with TLS to a bare IP (replayed)",
        "incident",
        inc.first(),
        &evidence_names(&hits),
    );
    assert_eq!(inc.len(), 1, "one incident: {hits:?}");
    let i = &inc[0];
    assert!(i.severity >= Severity::High && i.score >= i.threshold);
    for r in ["gpu-compute-from-writable-dir", "gpu-mining-like-profile"] {
        assert!(
            i.signals.iter().any(|s| s.rule == r),
            "{r} in {:?}",
            i.signals
        );
    }
    assert!(!i.gpu.is_empty(), "the incident carries the NVML profile");
    assert!(i.gpu[0].sm_util_mean >= 95.0 && i.gpu[0].pcie_rx_kbps_max < 100);
}

/// A listener for the miner's Stratum login (the bytes are what matter, not the pool).
fn pool() -> (u16, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        if let Ok((mut c, _)) = l.accept() {
            let mut b = [0u8; 512];
            let _ = std::io::Read::read(&mut c, &mut b);
        }
    });
    (port, h)
}

#[test]
fn an_attack_of_several_steps_is_one_incident() {
    if !require_root("an_attack_of_several_steps_is_one_incident") {
        return;
    }
    let dir = TempDir::new("attack");
    let d = &dir.0;
    let port = free_port();
    let sshd = sshd(d, port);
    let s = Sensor::start(&[]);
    let (pool_port, pool_h) = pool();
    let (other_port, other_h) = pool();
    let fwd = free_port();
    let opts = ssh_opts(d, port).join(" ");
    // The agent: python3 runs a tool call (bash) that opens a reverse tunnel with ssh -fNR,
    // then starts a miner that logs in to a pool with Stratum.
    let miner = format!(
        "import socket; s = socket.create_connection(('127.0.0.1', {pool_port})); \
         s.sendall(b'{{\"id\": 1, \"method\": \"mining.subscribe\", \"params\": [\"cpuminer/2.5\"]}}\\n'); s.close()"
    );
    let tool = format!(
        "ssh {opts} -fNR {fwd}:127.0.0.1:{port} root@127.0.0.1 && sleep 1 && /usr/bin/python3 -c \"{}\"",
        miner.replace('"', "\\\"")
    );
    let mut agent = group(Command::new("/usr/bin/python3").args([
        "-c",
        &format!(
            "import subprocess, sys; sys.exit(subprocess.run(['bash', '-c', {tool:?}]).returncode)"
        ),
    ]))
    .spawn()
    .unwrap();
    let agent_pid = agent.id();
    assert!(wait_exit(&mut agent, 60).success(), "the agent's tool call");
    pool_h.join().unwrap();
    // An unrelated process tree doing the same Stratum login: an incident of its own.
    let other = Command::new("/usr/bin/python3")
        .args([
            "-c",
            &format!(
                "import socket; s = socket.create_connection(('127.0.0.1', {other_port})); \
                 s.sendall(b'{{\"id\": 1, \"method\": \"mining.subscribe\", \"params\": []}}\\n'); s.close()"
            ),
        ])
        .spawn()
        .unwrap();
    let other_pid = other.id();
    other.wait_with_output().unwrap();
    other_h.join().unwrap();

    let both = s
        .wait_incident(Duration::from_secs(15), |i| {
            i.entity.root_pid == agent_pid
                && i.signals.iter().any(|x| x.rule == "ssh-forwarding-flags")
                && i.signals.iter().any(|x| x.rule == "stratum-handshake")
        })
        .expect("one incident with the tunnel and the miner");
    assert!(
        both.version >= 2,
        "raised by the tunnel, updated by the miner"
    );
    assert_eq!(both.severity, Severity::Critical);
    let o = s
        .wait_incident(WAIT, |i| i.entity.root_pid == other_pid)
        .expect("the unrelated tree's own incident");
    assert_ne!(o.id, both.id);
    // The /incidents endpoint of the running sensor lists it.
    let addr = s.sensor_start().metrics_addr.unwrap();
    let body = Command::new("curl")
        .args(["-sf", &format!("http://{addr}/incidents")])
        .output()
        .unwrap();
    let open: Vec<Incident> = serde_json::from_slice(&body.stdout).expect("/incidents is JSON");
    assert!(open.iter().any(|i| i.id == both.id), "/incidents lists it");
    drop(sshd);
    let records = s.stop();
    let all = latest_incidents(&records);
    let mine: Vec<&Incident> = all
        .iter()
        .filter(|i| i.entity.root_pid == agent_pid)
        .collect();
    assert_eq!(
        mine.len(),
        1,
        "one incident for the whole attack: {mine:#?}"
    );
    let i = mine[0];
    // The timeline: the tool shell, the ssh exec with its flags, the tunnel's connect with both
    // ends, the miner's exec and its Stratum bytes, and the rule hits in order.
    use sensor::incidents::What;
    let has = |f: &dyn Fn(&What) -> bool| i.timeline.iter().any(|s| f(&s.what));
    assert!(has(
        &|w| matches!(w, What::Exec { argv, .. } if argv.first().is_some_and(|a| a == "bash"))
    ));
    assert!(has(
        &|w| matches!(w, What::Exec { argv, .. } if argv.iter().any(|a| a == "-fNR"))
    ));
    assert!(has(
        &|w| matches!(w, What::Connect { dst_port: Some(p), local_port: Some(lp), .. } if *p == port && *lp > 0)
    ));
    assert!(has(
        &|w| matches!(w, What::Payload { detail: Some(m), .. } if m == "mining.subscribe")
    ));
    let rules: Vec<&str> = i
        .timeline
        .iter()
        .filter_map(|s| match &s.what {
            What::Signal { rule, .. } => Some(rule.as_str()),
            _ => None,
        })
        .collect();
    let f = rules
        .iter()
        .position(|r| *r == "ssh-forwarding-flags")
        .unwrap();
    let m = rules
        .iter()
        .position(|r| *r == "stratum-handshake")
        .unwrap();
    assert!(f < m, "in order: {rules:?}");
    let hits = hits_of(&records, agent_pid);
    confusion(
        "agent python3 → bash → ssh -fNR, then a Stratum miner (live)",
        "incident",
        Some(i),
        &evidence_names(&hits),
    );
    let ohits = hits_of(&records, other_pid);
    confusion(
        "Stratum login from an unrelated process (live)",
        "incident",
        Some(&o),
        &evidence_names(&ohits),
    );
}

/// A webhook receiver on loopback: accepts every POST (200) and keeps the bodies.
fn receiver() -> (
    u16,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    use std::io::{BufRead, BufReader, Read};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
    let g = got.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_ok() {
                if let Ok(v) = serde_json::from_slice(&body) {
                    g.lock().unwrap().push(v);
                }
            }
            let mut c = c;
            let _ =
                c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (port, got)
}

#[test]
fn lost_events_page_as_sensor_degraded_and_mark_verdicts_partial() {
    if !require_root("lost_events_page_as_sensor_degraded_and_mark_verdicts_partial") {
        return;
    }
    let dir = TempDir::new("loss");
    let (port, got) = receiver();
    let cfg = dir.0.join("sensor.toml");
    std::fs::write(
        &cfg,
        format!(
            "[output]\nloss_interval_secs = 1\n[alerting]\nspool_dir = \"{}\"\n\
             [[alerting.sinks]]\nname = \"oncall\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/\"\n",
            dir.0.join("spool").display()
        ),
    )
    .unwrap();
    // The smallest ring (16 KiB) and a burst of 20k refused connects: the kernel drops.
    let s = Sensor::start(&["--config", cfg.to_str().unwrap(), "--ring-size", "16KiB"]);
    let mut burst = Command::new(env!("CARGO_BIN_EXE_netprobe"))
        .args(["burst", "20000", &free_port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    burst.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(burst.wait().unwrap().success());
    let degraded = s
        .wait_incident(Duration::from_secs(15), |i| i.headline == "sensor-degraded")
        .expect("a sensor-degraded incident");
    let loss = degraded.loss.as_ref().unwrap();
    assert!(
        loss.kernel_dropped.get("connect").is_some_and(|n| *n > 0),
        "{loss:?}"
    );
    assert!(loss.affected.iter().any(|k| k == "connect"));
    // It reached the sink, with the counts.
    assert!(
        wait_until(15, || got.lock().unwrap().iter().any(|v| v["headline"]
            == "sensor-degraded"
            && v["loss"]["kernel_dropped"]["connect"]
                .as_u64()
                .is_some_and(|n| n > 0))),
        "webhook got: {:?}",
        got.lock()
            .unwrap()
            .iter()
            .map(|v| v["headline"].clone())
            .collect::<Vec<_>>()
    );
    // /readyz says so, and stays 200 (a NotReady pod would stop being scraped).
    let addr = s.sensor_start().metrics_addr.unwrap();
    let r = Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            &format!("http://{addr}/readyz"),
        ])
        .output()
        .unwrap();
    let r = String::from_utf8_lossy(&r.stdout).to_string();
    assert!(
        r.starts_with("ready (degraded") && r.contains("events lost") && r.ends_with("200"),
        "{r}"
    );
    // A verdict made now is marked as made on partial data.
    let m = Command::new("bash")
        .args(["-c", "exec -a '[kworker/7:7]' /bin/true"])
        .status()
        .unwrap();
    assert!(m.success());
    let i = s
        .wait_incident(WAIT, |i| i.headline == "masquerading-process-name")
        .expect("the masquerade's incident");
    assert!(i.partial, "{i:?}");
    assert!(i
        .partial_reason
        .as_deref()
        .is_some_and(|r| r.contains("events lost")));
    drop(s.stop());
}
