//! Harness for the integration tests: starts the real `sensor` binary as root, collects its JSON
//! stream typed as the sensor's own records (`Event`, `Alert`, `Status`), and lets tests wait
//! for events of their own processes.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use sensor::{
    event::{Body, Event, Exec, Exit, Fork, GpuIoctl, GpuOpen, GpuSession, Kind, Net, NetPayload},
    incidents::Incident,
    output::{RulesReload, SensorStart, Status},
    rules::Alert,
};
use serde_json::Value;

/// Path of the sensor binary: `SENSOR_BIN` (set by `cargo xtask test`) or the release build.
pub fn sensor_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SENSOR_BIN") {
        return p.into();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for p in ["target/release/sensor", "target/debug/sensor"] {
        let p = root.join(p);
        if p.exists() {
            return p;
        }
    }
    panic!("sensor binary not found: run `cargo xtask test` (or set SENSOR_BIN)");
}

/// Records a skipped test for the summary of `cargo xtask test` and prints why. The caller
/// returns right after.
pub fn skip(test: &str, reason: &str) {
    println!("skipped: {test}: {reason}");
    if let Some(p) = std::env::var_os("SENSOR_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            let _ = writeln!(f, "{test}: {reason}");
        }
    }
}

/// Whether the test can load eBPF programs; records a skip when not.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip(test, "needs root to load eBPF programs");
        return false;
    }
    true
}

/// One line of the sensor's output, deserialized into the sensor's own types.
#[derive(Debug, Clone)]
pub enum Record {
    Event(Box<Event>),
    /// A rule hit: `kind` is `alert` (a strong rule) or `evidence` (a weighted one).
    Alert(Box<Alert>),
    /// A version of an incident.
    Incident(Box<Incident>),
    /// `sensor_start`, `loss`, `decode_error`, `rules_reload`.
    Status(Box<Status>),
}

impl Record {
    /// Types one JSON line: an event kind must deserialize into `sensor::event::Event`, an
    /// alert into `sensor::rules::Alert`; anything else is an error.
    pub fn from_value(v: &Value) -> Result<Record, String> {
        let kind = v["kind"].as_str().unwrap_or("");
        if kind == "incident" {
            return serde_json::from_value(v.clone())
                .map(|i| Record::Incident(Box::new(i)))
                .map_err(|e| format!("incident does not deserialize ({e}): {v}"));
        }
        if kind == "alert" || kind == "evidence" {
            return serde_json::from_value(v.clone())
                .map(|a| Record::Alert(Box::new(a)))
                .map_err(|e| format!("alert does not deserialize ({e}): {v}"));
        }
        if Status::KINDS.contains(&kind) {
            return serde_json::from_value(v.clone())
                .map(|s| Record::Status(Box::new(s)))
                .map_err(|e| format!("{kind} record does not deserialize ({e}): {v}"));
        }
        if Kind::from_name(kind).is_none() {
            return Err(format!("unknown record kind {kind:?}: {v}"));
        }
        serde_json::from_value(v.clone())
            .map(|e| Record::Event(Box::new(e)))
            .map_err(|e| format!("{kind} event does not deserialize ({e}): {v}"))
    }

    /// The record's top-level `pid`: events and alerts have one, status records do not.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Record::Event(e) => Some(e.pid),
            Record::Alert(a) => Some(a.pid),
            Record::Incident(_) | Record::Status(_) => None,
        }
    }
}

/// The latest version of each incident among `records`, in order of first appearance.
pub fn latest_incidents(records: &[Record]) -> Vec<Incident> {
    let mut out: Vec<Incident> = vec![];
    for r in records {
        if let Record::Incident(i) = r {
            match out.iter_mut().find(|x| x.id == i.id) {
                Some(x) if x.version <= i.version => *x = (**i).clone(),
                Some(_) => {}
                None => out.push((**i).clone()),
            }
        }
    }
    out
}

/// A record known to be an event, as the sensor's own type.
pub fn event(v: &Value) -> Event {
    match Record::from_value(v) {
        Ok(Record::Event(e)) => *e,
        other => panic!("not an event: {other:?}"),
    }
}

/// A record known to be an alert, as the sensor's own type.
pub fn alert(v: &Value) -> Alert {
    match Record::from_value(v) {
        Ok(Record::Alert(a)) => *a,
        other => panic!("not an alert: {other:?}"),
    }
}

/// Typed access to an event's kind and payload; each payload accessor is `None` for events of
/// other kinds.
pub trait EventExt {
    fn kind(&self) -> Kind;
    fn exec(&self) -> Option<&Exec>;
    fn fork(&self) -> Option<&Fork>;
    fn exit(&self) -> Option<&Exit>;
    /// `connect`, `bind`, `listen`, `tcp_close`, `sock_dup`.
    fn net(&self) -> Option<&Net>;
    fn net_payload(&self) -> Option<&NetPayload>;
    fn gpu_ioctl(&self) -> Option<&GpuIoctl>;
    /// `gpu_open`, `tun_open`.
    fn gpu_open(&self) -> Option<&GpuOpen>;
    /// `gpu_session_start`, `gpu_session_end`, `gpu_query`.
    fn gpu_session(&self) -> Option<&GpuSession>;
}

impl EventExt for Event {
    fn kind(&self) -> Kind {
        self.body.kind()
    }
    fn exec(&self) -> Option<&Exec> {
        match &self.body {
            Body::Exec(x) => Some(x),
            _ => None,
        }
    }
    fn fork(&self) -> Option<&Fork> {
        match &self.body {
            Body::Fork(x) => Some(x),
            _ => None,
        }
    }
    fn exit(&self) -> Option<&Exit> {
        match &self.body {
            Body::Exit(x) => Some(x),
            _ => None,
        }
    }
    fn net(&self) -> Option<&Net> {
        match &self.body {
            Body::Connect(x)
            | Body::Bind(x)
            | Body::Listen(x)
            | Body::TcpClose(x)
            | Body::SockDup(x) => Some(x),
            _ => None,
        }
    }
    fn net_payload(&self) -> Option<&NetPayload> {
        match &self.body {
            Body::NetPayload(x) => Some(x),
            _ => None,
        }
    }
    fn gpu_ioctl(&self) -> Option<&GpuIoctl> {
        match &self.body {
            Body::GpuIoctl(x) => Some(x),
            _ => None,
        }
    }
    fn gpu_open(&self) -> Option<&GpuOpen> {
        match &self.body {
            Body::GpuOpen(x) | Body::TunOpen(x) => Some(x),
            _ => None,
        }
    }
    fn gpu_session(&self) -> Option<&GpuSession> {
        match &self.body {
            Body::GpuSessionStart(x) | Body::GpuSessionEnd(x) | Body::GpuQuery(x) => Some(x),
            _ => None,
        }
    }
}

/// An event of `kind` from process `pid`.
pub fn is(e: &Event, kind: Kind, pid: u32) -> bool {
    e.body.kind() == kind && e.pid == pid
}

#[derive(Default)]
struct Shared {
    /// Every line that deserialized into the sensor's types, in order.
    records: Vec<Record>,
    /// Lines that did not deserialize into the sensor's types (checked at `stop`).
    untyped: Vec<String>,
    closed: bool,
}

/// A running sensor.
pub struct Sensor {
    child: Child,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    pub pid: u32,
}

impl Sensor {
    /// Starts `sensor run ARGS…` and waits for its `sensor_start` record.
    pub fn start(args: &[&str]) -> Sensor {
        Sensor::start_env(args, &[])
    }

    /// [`Sensor::start`] with extra environment variables for the sensor.
    pub fn start_env(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Sensor {
        // Parallel tests each run a sensor: let each pick a free metrics port.
        let metrics: &[&str] = if args.contains(&"--metrics-listen") {
            &[]
        } else {
            &["--metrics-listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(sensor_bin())
            .arg("run")
            .args(metrics)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning sensor");
        let pid = child.id();
        let shared = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
        let out = child.stdout.take().unwrap();
        let sh = shared.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("sensor printed a non-JSON line ({e}): {line}"));
                let typed = Record::from_value(&v);
                let (m, cv) = &*sh;
                let mut g = m.lock().unwrap();
                match typed {
                    Ok(r) => g.records.push(r),
                    Err(e) => g.untyped.push(e),
                }
                drop(g);
                cv.notify_all();
            }
            let (m, cv) = &*sh;
            m.lock().unwrap().closed = true;
            cv.notify_all();
        });
        let s = Sensor { child, shared, pid };
        s.wait_for(Duration::from_secs(30), |r| match r {
            Record::Status(st) => matches!(**st, Status::SensorStart(_)).then_some(()),
            _ => None,
        })
        .expect("sensor did not start (see its stderr above)");
        s
    }

    /// Waits until `pick` takes a record (returns `Some`); returns what it took.
    pub fn wait_for<T>(&self, timeout: Duration, pick: impl Fn(&Record) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.shared;
        let mut g = m.lock().unwrap();
        let mut seen = 0;
        loop {
            // Only look at records that arrived since the last pass.
            if let Some(t) = g.records[seen..].iter().find_map(&pick) {
                return Some(t);
            }
            seen = g.records.len();
            let now = Instant::now();
            if now >= deadline || g.closed {
                return None;
            }
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    /// Waits until an event matches `pred`; returns a copy of it.
    pub fn wait_event(&self, timeout: Duration, pred: impl Fn(&Event) -> bool) -> Option<Event> {
        self.wait_for(timeout, |r| match r {
            Record::Event(e) if pred(e) => Some((**e).clone()),
            _ => None,
        })
    }

    /// Waits until an alert matches `pred`; returns a copy of it.
    pub fn wait_alert(&self, timeout: Duration, pred: impl Fn(&Alert) -> bool) -> Option<Alert> {
        self.wait_for(timeout, |r| match r {
            Record::Alert(a) if pred(a) => Some((**a).clone()),
            _ => None,
        })
    }

    /// Waits until a `rules_reload` record matches `pred`; returns a copy of it.
    pub fn wait_reload(
        &self,
        timeout: Duration,
        pred: impl Fn(&RulesReload) -> bool,
    ) -> Option<RulesReload> {
        self.wait_for(timeout, |r| reload(r).filter(|x| pred(x)).cloned())
    }

    /// The `sensor_start` record (`start` waited for it).
    pub fn sensor_start(&self) -> SensorStart {
        let (m, _) = &*self.shared;
        m.lock()
            .unwrap()
            .records
            .iter()
            .find_map(|r| match r {
                Record::Status(st) => match &**st {
                    Status::SensorStart(x) => Some(x.clone()),
                    _ => None,
                },
                _ => None,
            })
            .expect("sensor_start record")
    }

    /// All events so far that match `pred`.
    pub fn events(&self, pred: impl Fn(&Event) -> bool) -> Vec<Event> {
        self.pick(|r| match r {
            Record::Event(e) if pred(e) => Some((**e).clone()),
            _ => None,
        })
    }

    /// All alerts so far that match `pred`.
    pub fn alerts(&self, pred: impl Fn(&Alert) -> bool) -> Vec<Alert> {
        self.pick(|r| match r {
            Record::Alert(a) if pred(a) => Some((**a).clone()),
            _ => None,
        })
    }

    /// Waits until a version of an incident matches `pred`; returns a copy of it.
    pub fn wait_incident(
        &self,
        timeout: Duration,
        pred: impl Fn(&Incident) -> bool,
    ) -> Option<Incident> {
        self.wait_for(timeout, |r| match r {
            Record::Incident(i) if pred(i) => Some((**i).clone()),
            _ => None,
        })
    }

    /// The latest version of every incident so far that matches `pred`.
    pub fn incidents(&self, pred: impl Fn(&Incident) -> bool) -> Vec<Incident> {
        latest_incidents(&self.records())
            .into_iter()
            .filter(|i| pred(i))
            .collect()
    }

    /// All `rules_reload` records so far that match `pred`.
    pub fn reloads(&self, pred: impl Fn(&RulesReload) -> bool) -> Vec<RulesReload> {
        self.pick(|r| reload(r).filter(|x| pred(x)).cloned())
    }

    /// What `pick` takes of every record so far.
    fn pick<T>(&self, pick: impl Fn(&Record) -> Option<T>) -> Vec<T> {
        let (m, _) = &*self.shared;
        m.lock().unwrap().records.iter().filter_map(pick).collect()
    }

    /// Every record so far, typed.
    pub fn records(&self) -> Vec<Record> {
        self.pick(|r| Some(r.clone()))
    }

    /// SIGINT, wait for a clean exit, return every record printed. Every line printed must have
    /// deserialized into the sensor's own types.
    pub fn stop(mut self) -> Vec<Record> {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let st = self.child.wait().expect("waiting for sensor");
        assert!(st.success(), "sensor exited with {st}");
        let (m, cv) = &*self.shared;
        let mut g = m.lock().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !g.closed && Instant::now() < deadline {
            g = cv.wait_timeout(g, Duration::from_millis(100)).unwrap().0;
        }
        assert!(
            g.untyped.is_empty(),
            "{} lines did not deserialize into the sensor's types, e.g. {}",
            g.untyped.len(),
            g.untyped[0]
        );
        std::mem::take(&mut g.records)
    }
}

/// The `rules_reload` record, if `r` is one.
fn reload(r: &Record) -> Option<&RulesReload> {
    match r {
        Record::Status(st) => match &**st {
            Status::RulesReload(x) => Some(x),
            _ => None,
        },
        _ => None,
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a program to completion and returns (pid, stdout). Test files pass helper binaries of
/// this crate as `env!("CARGO_BIN_EXE_<name>")`.
pub fn run_helper(path: &str, args: &[&str]) -> (u32, String) {
    let child = spawn_busy_retry(Command::new(path).args(args).stdout(Stdio::piped()))
        .unwrap_or_else(|e| panic!("spawning {path}: {e}"));
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{path} {args:?} failed: {:?}",
        out.status
    );
    (pid, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Spawns `c`, retrying while its executable is "busy" (ETXTBSY): a binary the test just copied
/// can still be open for writing in a child that another test thread forked in the meantime,
/// until that child execs (its copy of the descriptor is close-on-exec).
pub fn spawn_busy_retry(c: &mut Command) -> std::io::Result<Child> {
    let mut tries = 0;
    loop {
        match c.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// Kills a child and its whole process group (autossh's ssh, ssh -f, sshd's children) when
/// dropped.
pub struct Kill(pub Child);
impl Drop for Kill {
    fn drop(&mut self) {
        // SAFETY: signalling the process group this test created (see `group`).
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGTERM) };
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Puts the command in its own process group, so that `Kill` reaches its descendants.
pub fn group(c: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    c.process_group(0)
}

/// A port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `cmd` with sh and asserts it succeeded.
pub fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "{cmd}");
}

/// Waits (at most 15 s) until something accepts connections on 127.0.0.1:`port`.
pub fn wait_port(port: u16) {
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "port {port} never opened"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a throwaway OpenSSH server on 127.0.0.1:`port` with host and client keys in `dir`
/// (`dir/id`, also as `dir/id.dropbear` for dbclient), forwarding allowed.
pub fn sshd(dir: &std::path::Path, port: u16) -> Kill {
    std::fs::create_dir_all("/run/sshd").unwrap();
    let d = dir.display();
    sh(&format!(
        "ssh-keygen -q -t ed25519 -N '' -f {d}/host && ssh-keygen -q -t ed25519 -N '' -f {d}/id && \
         cp {d}/id.pub {d}/authorized_keys && chmod 600 {d}/authorized_keys && \
         dropbearconvert openssh dropbear {d}/id {d}/id.dropbear >/dev/null 2>&1"
    ));
    std::fs::write(
        dir.join("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host\nAuthorizedKeysFile {d}/authorized_keys\n\
             PidFile {d}/sshd.pid\nUsePAM no\nStrictModes no\nPermitRootLogin yes\nPasswordAuthentication no\n\
             AllowTcpForwarding yes\nGatewayPorts no\nPermitTunnel no\nX11Forwarding no\nPrintMotd no\n"
        ),
    )
    .unwrap();
    let child = group(&mut Command::new("/usr/sbin/sshd"))
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stderr(Stdio::null())
        .spawn()
        .expect("starting sshd");
    wait_port(port);
    Kill(child)
}

/// ssh options for a client of [`sshd`]: its key, its port, no host-key prompts, batch mode.
pub fn ssh_opts(dir: &std::path::Path, port: u16) -> Vec<String> {
    [
        "-i",
        &dir.join("id").display().to_string(),
        "-p",
        &port.to_string(),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A short wait for events of a pid, with the default deadline used by the tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// The cgroup2 mount point (`/sys/fs/cgroup/unified` on v1/v2 hybrid hosts).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    })
}

/// Polls `f` every 100 ms until it holds or `secs` pass; whether it held.
pub fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Compiles the stand-in NVML (tests/fixtures/nvml-stub) into `dir/libnvidia-ml.so.1` and
/// returns its path. Its data come from the file named by `NVML_STUB_CONFIG`.
pub fn nvml_stub(dir: &std::path::Path) -> PathBuf {
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/nvml-stub/nvml_stub.c");
    let out = dir.join("libnvidia-ml.so.1");
    let st = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("cc (build-essential, installed by scripts/setup.sh)");
    assert!(st.success(), "compiling {}", src.display());
    out
}

/// Fetches `path` from a plain HTTP server at `addr`; returns (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::Read;
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(c, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    // HTTP/1.0: the body is never chunked (Prometheus' API chunks larger 1.1 responses).
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    let code = s
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = s
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// Creates a character device node `path` (major, minor) (root; the tests' stand-in devices).
pub fn mknod(path: &std::path::Path, major: u32, minor: u32) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated path; a character device node in the test's own directory.
    let rc = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | 0o600,
            libc::makedev(major, minor),
        )
    };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Stand-ins for the GPU nodes the H100 recordings used: devices no other process here touches
/// (misc autofs 10:235 and btrfs-control 10:234, whose ioctl handlers refuse other ioctl types
/// with ENOTTY; full 1:7) registered as nvidiactl (minor 255), nvidia0 and nvidia-uvm, under
/// names the open hook does not watch. [`standin_gpu_nodes`] makes the nodes.
pub const STANDIN_GPU_DEVICES: &str = r#"
[[gpu.devices]]
major = 10
minor = 235
kind = "nvidia"
gpu_minor = 255
emulated = true
[[gpu.devices]]
major = 10
minor = 234
kind = "nvidia"
gpu_minor = 0
emulated = true
[[gpu.devices]]
major = 1
minor = 7
kind = "nvidia-uvm"
emulated = true
"#;

/// Creates `dir` with the nodes of [`STANDIN_GPU_DEVICES`] as nvidiactl, nvidia0, nvidia-uvm.
pub fn standin_gpu_nodes(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (n, maj, min) in [
        ("nvidiactl", 10, 235),
        ("nvidia0", 10, 234),
        ("nvidia-uvm", 1, 7),
    ] {
        mknod(&dir.join(n), maj, min);
    }
}
