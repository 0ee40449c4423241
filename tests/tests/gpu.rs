//! GPU telemetry: the three real H100 recordings replayed through real ioctl(2) calls on stand-in
//! device nodes registered as GPU devices; O_PATH fds; non-GPU ioctl storms.

use std::path::{Path, PathBuf};

use sensor::event::{Device, Event, Kind, Outcome};
use sensor_tests::{is, mknod, require_root, run_helper, EventExt, Sensor, WAIT};

const GPUREPLAY: &str = env!("CARGO_BIN_EXE_gpureplay");

/// The H100 recordings, kept in the repository (`tests/fixtures/nvidia-h100`, copied from the
/// shared fixtures with their README); `SENSOR_FIXTURES` points elsewhere.
fn fixtures() -> PathBuf {
    let p = std::env::var_os("SENSOR_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/nvidia-h100"));
    assert!(
        p.join("training.jsonl.gz").exists(),
        "H100 recordings missing at {}",
        p.display()
    );
    p
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("sensor-{tag}-{}", std::process::id()));
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

/// Stand-ins ([`sensor_tests::STANDIN_GPU_DEVICES`]: device numbers no other process
/// touches) registered as nvidiactl (reported as minor 255), nvidia0 and nvidia-uvm.
fn standin_config() -> String {
    format!("[gpu]\nnvml = false\n{}", sensor_tests::STANDIN_GPU_DEVICES)
}

fn replay(s: &Sensor, fixtures: &Path, dir: &Path, name: &str, bin: &str) -> (u32, Vec<Event>) {
    let fx = fixtures.join(format!("{name}.jsonl.gz"));
    let (pid, out) = run_helper(
        bin,
        &["replay", fx.to_str().unwrap(), dir.to_str().unwrap()],
    );
    let n: usize = out
        .trim()
        .strip_prefix("replayed ")
        .unwrap()
        .parse()
        .unwrap();
    // The derived event at exit comes last for the pid.
    s.wait_event(WAIT, |e| {
        e.pid == pid && (e.kind() == Kind::GpuSessionEnd || e.kind() == Kind::GpuQuery)
    })
    .unwrap_or_else(|| panic!("{name}: no gpu_session_end/gpu_query"));
    let evs = s.events(|e| e.pid == pid);
    let ioctls = evs.iter().filter(|e| e.kind() == Kind::GpuIoctl).count();
    assert_eq!(
        ioctls, n,
        "{name}: every replayed ioctl is one gpu_ioctl event"
    );
    (pid, evs)
}

fn kinds(evs: &[Event], kind: Kind) -> Vec<Event> {
    evs.iter().filter(|e| e.kind() == kind).cloned().collect()
}

#[test]
fn h100_recordings_replayed_give_sessions_and_queries() {
    if !require_root("h100_recordings_replayed_give_sessions_and_queries") {
        return;
    }
    let fx = fixtures();
    let dir = TempDir::new("gpu");
    sensor_tests::standin_gpu_nodes(&dir.0);
    let cfg = dir.0.join("sensor.toml");
    std::fs::write(&cfg, standin_config()).unwrap();
    // The replayer runs from a system directory, as an installed workload would: a binary in
    // the build tree (maybe under /tmp or /root) would rightly match the writable-dir rule.
    let bin_dir = PathBuf::from("/usr/local/libexec");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let bin = bin_dir.join(format!("sensor-test-gpureplay-{}", std::process::id()));
    std::fs::copy(GPUREPLAY, &bin).unwrap();
    let bin_s = bin.to_str().unwrap().to_string();
    // A process that opened the GPU devices before the sensor started.
    let mut early = sensor_tests::spawn_busy_retry(
        std::process::Command::new(&bin)
            .args([
                "replay-after-line",
                fx.join("training.jsonl.gz").to_str().unwrap(),
                dir.0.to_str().unwrap(),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped()),
    )
    .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(early.stdout.as_mut().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "ready");
    let s = Sensor::start(&["--config", cfg.to_str().unwrap()]);
    std::io::Write::write_all(early.stdin.as_mut().unwrap(), b"go\n").unwrap();
    let early_pid = early.id();
    let mut line = String::new();
    let mut rd = std::io::BufReader::new(early.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut rd, &mut line).unwrap();
    assert_eq!(line.trim(), "replayed 565");
    // While the session is live, the metrics count it by GPU minor.
    s.wait_event(WAIT, |e| is(e, Kind::GpuSessionStart, early_pid))
        .expect("session start");
    let addr = s.sensor_start().metrics_addr.unwrap();
    let mut seen = String::new();
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_secs(10) {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        std::io::Write::write_all(
            &mut c,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        seen.clear();
        std::io::Read::read_to_string(&mut c, &mut seen).unwrap();
        if seen.contains("gpu_sensor_gpu_compute_sessions{gpu=\"\",minor=\"0\",UUID=\"\",pci_bus_id=\"\",device=\"nvidia0\",namespace=\"\",pod=\"\"} 1") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert!(
        seen.contains("gpu_sensor_gpu_compute_sessions{gpu=\"\",minor=\"0\",UUID=\"\",pci_bus_id=\"\",device=\"nvidia0\",namespace=\"\",pod=\"\"} 1"),
        "{seen}"
    );
    assert!(
        seen.contains("gpu_sensor_gpu_compute_sessions_active 1"),
        "{seen}"
    );
    std::io::Write::write_all(early.stdin.as_mut().unwrap(), b"done\n").unwrap();
    assert!(early.wait().unwrap().success());
    let e = s
        .wait_event(WAIT, |e| is(e, Kind::GpuSessionEnd, early_pid))
        .expect("session of a process older than the sensor");
    let n = s.events(|e| is(e, Kind::GpuIoctl, early_pid)).len();
    assert_eq!(n, 565, "every ioctl of the pre-existing process is seen");
    assert!(e
        .gpu_session()
        .unwrap()
        .classes
        .iter()
        .any(|c| c == "HOPPER_COMPUTE_A"));

    // nvidia-smi: queries only (it even initialises UVM) → no compute session.
    let (_, evs) = replay(&s, &fx, &dir.0, "nvidia-smi", &bin_s);
    assert!(
        kinds(&evs, Kind::GpuSessionStart).is_empty(),
        "nvidia-smi must not be a compute session"
    );
    let q = kinds(&evs, Kind::GpuQuery);
    assert_eq!(q.len(), 1);
    let classes = &q[0].gpu_session().unwrap().classes;
    assert!(
        classes.contains(&"NV20_SUBDEVICE_0".to_string()),
        "{classes:?}"
    );
    assert!(!classes
        .iter()
        .any(|c| c.contains("COMPUTE") || c.contains("GPFIFO")));
    let opens = kinds(&evs, Kind::GpuOpen);
    assert_eq!(
        opens.len(),
        3,
        "nvidiactl, nvidia0, nvidia-uvm opened once each"
    );
    assert!(opens.iter().all(|o| o
        .gpu_open()
        .is_some_and(|o| o.result == Outcome::Ok && o.emulated)));

    for name in ["mining-like", "training"] {
        let (pid, evs) = replay(&s, &fx, &dir.0, name, &bin_s);
        let starts = kinds(&evs, Kind::GpuSessionStart);
        assert_eq!(starts.len(), 1, "{name}: exactly one compute session");
        let ends = kinds(&evs, Kind::GpuSessionEnd);
        assert_eq!(ends.len(), 1);
        let end = &ends[0];
        let sess = end.gpu_session().unwrap();
        let classes = &sess.classes;
        assert!(
            classes.contains(&"HOPPER_COMPUTE_A".to_string()),
            "{name}: {classes:?}"
        );
        assert!(classes.contains(&"HOPPER_CHANNEL_GPFIFO_A".to_string()));
        assert_eq!(sess.gpu_minors, [0], "{name}");
        assert!(sess.uvm_initialized);
        assert_eq!(end.exe.as_deref(), Some(bin_s.as_str()));
        assert_eq!(sess.argv.get(1).map(String::as_str), Some("replay"));
        assert_eq!(
            sess.lineage.first().map(|a| a.pid),
            Some(std::process::id()),
            "parent is this test"
        );
        let t = starts[0].gpu_session().unwrap().trigger.as_deref().unwrap();
        assert!(t.contains("GPFIFO") || t.contains("COMPUTE"), "{t}");
        // The decoded stream names things.
        let alloc = evs
            .iter()
            .filter_map(|e| e.gpu_ioctl())
            .find(|g| g.class_id == Some(0xcbc0))
            .expect("an RM_ALLOC of HOPPER_COMPUTE_A");
        assert_eq!(alloc.op, "NV_ESC_RM_ALLOC");
        assert_eq!(alloc.class.as_deref(), Some("HOPPER_COMPUTE_A"));
        assert_eq!(alloc.gpu_minor, 255, "RM_ALLOC goes to nvidiactl");
        assert!(evs
            .iter()
            .filter_map(|e| e.gpu_ioctl())
            .any(|g| g.op == "UVM_INITIALIZE" && g.device == Device::NvidiaUvm));
        assert!(evs
            .iter()
            .filter_map(|e| e.gpu_ioctl())
            .any(|g| g.op == "NV_ESC_RM_CONTROL" && g.control.is_some()));
        if name == "training" {
            std::thread::sleep(std::time::Duration::from_millis(300));
            let alerts = s.alerts(|a| a.pid == pid);
            assert!(
                alerts.is_empty(),
                "the training recording must stay silent: {alerts:?}"
            );
        }
    }
    s.stop();
    let _ = std::fs::remove_file(&bin);
}

#[test]
fn o_path_fd_is_a_failed_call_not_a_session_and_non_gpu_storm_is_silent() {
    if !require_root("o_path_fd_is_a_failed_call_not_a_session_and_non_gpu_storm_is_silent") {
        return;
    }
    let dir = TempDir::new("opath");
    // A real NVIDIA major (195) node; without the driver it cannot be opened for I/O, but an
    // O_PATH open succeeds and the ioctl fails with EBADF.
    let node = dir.0.join("nvidia9");
    mknod(&node, 195, 9);
    let s = Sensor::start(&[]);
    let (pid, out) = run_helper(GPUREPLAY, &["opath", node.to_str().unwrap()]);
    assert_eq!(out.trim(), format!("rc {}", -libc::EBADF));
    let g = s
        .wait_event(WAIT, |e| is(e, Kind::GpuIoctl, pid))
        .expect("gpu_ioctl on the O_PATH fd");
    let g = g.gpu_ioctl().unwrap();
    assert_eq!(g.result, Outcome::Error);
    assert_eq!(g.ret, -libc::EBADF);
    assert_eq!((g.major, g.minor), (195, 9));
    assert_eq!(
        g.class.as_deref(),
        Some("HOPPER_COMPUTE_A"),
        "decoded even though it failed"
    );
    let q = s
        .wait_event(WAIT, |e| is(e, Kind::GpuQuery, pid))
        .expect("gpu_query at exit");
    assert_eq!(q.gpu_session().unwrap().failed_ioctls, 1);
    assert!(s.events(|e| is(e, Kind::GpuSessionStart, pid)).is_empty());
    let o = s
        .wait_event(WAIT, |e| is(e, Kind::GpuOpen, pid))
        .expect("gpu_open of the node");
    assert_eq!(
        o.gpu_open().unwrap().flags & libc::O_PATH as u32,
        libc::O_PATH as u32
    );

    // 20k ioctls (half with NVIDIA request numbers) on /dev/urandom, not a GPU: nothing.
    let (pid, _) = run_helper(GPUREPLAY, &["storm", "20000", "/dev/urandom"]);
    s.wait_event(WAIT, |e| is(e, Kind::Exit, pid))
        .expect("storm exit");
    let gpu: Vec<Event> = s.events(|e| e.pid == pid && e.kind().name().starts_with("gpu"));
    assert!(
        gpu.is_empty(),
        "non-GPU ioctls produced GPU events: {gpu:?}"
    );
    s.stop();
}
