//! `cargo xtask bench`: overhead and throughput of the sensor on this machine, printed as a
//! table of ratios against the targets (README "Performance"). Needs root. Not a test: numbers
//! vary with the machine; the targets are what we hold ourselves to.
//!
//!   bench [SECS]   SECS: duration of the sustained-rate runs (default 30)
use std::{
    io::Read,
    net::UdpSocket,
    os::fd::AsRawFd,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

fn sensor_bin() -> String {
    std::env::var("SENSOR_BIN").unwrap_or_else(|_| "target/release/sensor".into())
}

/// A running sensor whose stdout is consumed by a thread that keeps the stream's last `loss`
/// line and counts lines.
struct Sensor {
    child: Child,
    reader: Option<std::thread::JoinHandle<(u64, String)>>,
}

impl Sensor {
    fn start(args: &[&str]) -> Sensor {
        let mut child = Command::new(sensor_bin())
            .arg("run")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sensor");
        let mut out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            let mut lines = 0u64;
            let mut tail: Vec<u8> = vec![];
            let mut started = false;
            loop {
                let n = match out.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
                tail.extend_from_slice(&buf[..n]);
                if !started && tail.windows(12).any(|w| w == b"sensor_start") {
                    started = true;
                    let _ = tx.send(());
                }
                if tail.len() > 1 << 16 {
                    tail.drain(..tail.len() - (1 << 15));
                }
            }
            let text = String::from_utf8_lossy(&tail).into_owned();
            let loss = text
                .lines()
                .rev()
                .find(|l| l.contains("\"kind\":\"loss\""))
                .unwrap_or("")
                .to_string();
            (lines, loss)
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("sensor did not start");
        Sensor {
            child,
            reader: Some(reader),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the sensor; returns (lines printed, final loss record).
    fn stop(mut self) -> (u64, serde_json::Value) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let (n, loss) = self.reader.take().unwrap().join().unwrap();
        (
            n,
            serde_json::from_str(&loss).unwrap_or(serde_json::Value::Null),
        )
    }
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = &s[s.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // fields 14 and 15 (utime, stime) are at 11 and 12 after the comm
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// ns per non-GPU ioctl (TCGETS on /dev/urandom: ENOTTY/EINVAL, the kernel filter's worst case:
/// fd-table walk + device lookup, no event).
fn ioctl_ns(n: u64) -> f64 {
    let f = std::fs::File::open("/dev/urandom").unwrap();
    let mut buf = [0u8; 64];
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: valid fd and buffer.
        unsafe { libc::ioctl(f.as_raw_fd(), 0x5401, buf.as_mut_ptr()) };
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

/// ns per UDP connect(2) to 127.0.0.1 (one connect event each with the sensor).
fn connect_ns(n: u64) -> f64 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let t = Instant::now();
    for i in 0..n {
        s.connect(("127.0.0.1", 9 + (i % 100) as u16)).unwrap();
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

/// Generates `rate` connect events per second for `secs`; returns events generated.
fn generate(rate: u64, secs: f64) -> u64 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let start = Instant::now();
    let mut sent = 0u64;
    loop {
        let el = start.elapsed().as_secs_f64();
        if el >= secs {
            break;
        }
        let due = (el * rate as f64) as u64;
        while sent < due {
            s.connect(("127.0.0.1", 9)).unwrap();
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    sent
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn row(name: &str, value: String, target: &str, ok: bool) {
    println!(
        "| {name:<44} | {value:>22} | {target:>12} | {:>4} |",
        if ok { "met" } else { "MISS" }
    );
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(30.0);
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("bench: needs root (loads eBPF programs)");
        std::process::exit(1);
    }
    let n_ioctl = 1_000_000;
    let n_conn = 200_000;
    let base_ioctl = median((0..5).map(|_| ioctl_ns(n_ioctl)).collect());
    let base_conn = median((0..5).map(|_| connect_ns(n_conn)).collect());

    let s = Sensor::start(&["--ring-size", "64MiB"]);
    let with_ioctl = median((0..5).map(|_| ioctl_ns(n_ioctl)).collect());
    let with_conn = median((0..5).map(|_| connect_ns(n_conn)).collect());
    s.stop();

    // Agent CPU at 10k events/s for 10 s.
    let s = Sensor::start(&["--ring-size", "64MiB"]);
    let t0 = cpu_ticks(s.pid());
    let w = Instant::now();
    let sent_10k = generate(10_000, 10.0);
    let cpu_secs = (cpu_ticks(s.pid()) - t0) as f64 / 100.0; // USER_HZ = 100
    let agent_pct = 100.0 * cpu_secs / w.elapsed().as_secs_f64();
    let (_, loss10k) = s.stop();

    // Highest sustained rate with zero loss, stepping up.
    let mut best = 0u64;
    let mut best_detail = String::new();
    for rate in [50_000u64, 100_000, 150_000, 200_000, 250_000, 300_000] {
        let s = Sensor::start(&["--ring-size", "64MiB"]);
        let sent = generate(rate, secs);
        let achieved = sent as f64 / secs;
        let (_, loss) = s.stop();
        let dropped = loss["kernel_dropped_total"].as_u64().unwrap_or(u64::MAX)
            + loss["user_dropped"].as_u64().unwrap_or(u64::MAX);
        println!(
            "  rate {rate:>7}/s: generated {sent} ({achieved:.0}/s), dropped {dropped}, received {}",
            loss["received_total"]
        );
        if dropped != 0 || achieved < 0.95 * rate as f64 {
            break;
        }
        best = rate;
        best_detail = format!("{achieved:.0}/s for {secs:.0} s");
    }

    println!();
    println!("| measurement                                  |                  value |       target |      |");
    println!("|----------------------------------------------|------------------------|--------------|------|");
    let r = with_ioctl / base_ioctl;
    row(
        "non-GPU ioctl, with/without sensor",
        format!("{r:.2}x ({base_ioctl:.0}→{with_ioctl:.0} ns)"),
        "≤ 1.3x",
        r <= 1.3,
    );
    let r = with_conn / base_conn;
    row(
        "connect() with event, with/without sensor",
        format!("{r:.2}x ({base_conn:.0}→{with_conn:.0} ns)"),
        "≤ 2x",
        r <= 2.0,
    );
    row(
        "sustained events/s with zero loss",
        if best > 0 {
            best_detail
        } else {
            "< 50000/s".into()
        },
        "≥ 200000/s",
        best >= 200_000,
    );
    let lost = loss10k["kernel_dropped_total"].as_u64().unwrap_or(0)
        + loss10k["user_dropped"].as_u64().unwrap_or(0);
    row(
        "agent CPU at 10k events/s (% of one core)",
        format!("{agent_pct:.1}% ({sent_10k} ev, lost {lost})"),
        "≤ 5%",
        agent_pct <= 5.0,
    );
}
