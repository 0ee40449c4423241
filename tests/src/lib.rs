//! Harness for the integration tests: starts the real `sensor` binary as root, collects its JSON
//! stream, and lets tests wait for events of their own processes.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
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

#[derive(Default)]
struct Shared {
    events: Vec<Value>,
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
                let (m, cv) = &*sh;
                m.lock().unwrap().events.push(v);
                cv.notify_all();
            }
            let (m, cv) = &*sh;
            m.lock().unwrap().closed = true;
            cv.notify_all();
        });
        let s = Sensor { child, shared, pid };
        s.wait_for(Duration::from_secs(30), |e| e["kind"] == "sensor_start")
            .expect("sensor did not start (see its stderr above)");
        s
    }

    /// Waits until an event matches `pred`; returns a copy of it.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.shared;
        let mut g = m.lock().unwrap();
        let mut seen = 0;
        loop {
            // Only look at events that arrived since the last pass.
            if let Some(e) = g.events[seen..].iter().find(|e| pred(e)) {
                return Some(e.clone());
            }
            seen = g.events.len();
            let now = Instant::now();
            if now >= deadline || g.closed {
                return None;
            }
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    /// All events so far that match `pred`.
    pub fn events(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let (m, _) = &*self.shared;
        m.lock()
            .unwrap()
            .events
            .iter()
            .filter(|e| pred(e))
            .cloned()
            .collect()
    }

    /// SIGINT, wait for a clean exit, return every event printed.
    pub fn stop(mut self) -> Vec<Value> {
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
        std::mem::take(&mut g.events)
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
    let child = Command::new(path)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
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

/// A short wait for events of a pid, with the default deadline used by the tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// `e["pid"] == pid && e["kind"] == kind`.
pub fn is(e: &Value, kind: &str, pid: u32) -> bool {
    e["kind"] == kind && e["pid"] == pid
}

/// The cgroup2 mount point (`/sys/fs/cgroup/unified` on v1/v2 hybrid hosts).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    })
}
