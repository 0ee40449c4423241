//! The Prometheus endpoint: `/metrics` passes `promtool check metrics`, `/healthz` and `/readyz`
//! answer, and a real Prometheus server scrapes the sensor and sees its series.

use std::{
    io::Write,
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sensor_tests::{http_get, require_root, skip, Sensor};

#[test]
fn metrics_endpoint_is_scraped_by_a_real_prometheus() {
    let name = "metrics_endpoint_is_scraped_by_a_real_prometheus";
    if !require_root(name) {
        return;
    }
    for tool in ["/usr/bin/prometheus", "/usr/bin/promtool"] {
        if !Path::new(tool).exists() {
            skip(
                name,
                &format!("{tool} not installed (scripts/setup.sh installs Debian's prometheus)"),
            );
            return;
        }
    }
    let s = Sensor::start(&[]);
    let addr = s
        .sensor_start()
        .metrics_addr
        .expect("metrics_addr in sensor_start");
    // Make some events of a known kind.
    for _ in 0..3 {
        Command::new("/bin/true").status().unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));

    assert_eq!(http_get(&addr, "/healthz").0, 200);
    assert_eq!(http_get(&addr, "/readyz").0, 200);
    let (code, text) = http_get(&addr, "/metrics");
    assert_eq!(code, 200);
    for needle in [
        "gpu_sensor_build_info{",
        "gpu_sensor_events_total{kind=\"exec\"}",
        "gpu_sensor_rules_loaded ",
        "gpu_sensor_last_event_timestamp_seconds ",
        "gpu_sensor_gpu_compute_sessions_active ",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    let mut pt = Command::new("/usr/bin/promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Without an OpenMetrics Accept header the endpoint serves the Prometheus text format,
    // which is what promtool lints.
    pt.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = pt.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus on loopback scraping every second.
    let dir = std::env::temp_dir().join(format!("sensor-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sensor\n    static_configs:\n      - targets: ['{addr}']\n"),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut prom = Command::new("/usr/bin/prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting prometheus");
    let api = format!("127.0.0.1:{port}");
    let t = Instant::now();
    let mut seen = String::new();
    while t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(500));
        if TcpStream::connect(&api).is_err() {
            continue;
        }
        let (_, body) = http_get(
            &api,
            "/api/v1/query?query=gpu_sensor_events_total%7Bkind%3D%22exec%22%7D",
        );
        seen = body.clone();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let n = v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|x| x.parse::<f64>().ok())
            .unwrap_or(0.0);
        if n >= 3.0 {
            let (_, up) = http_get(&api, "/api/v1/query?query=up%7Bjob%3D%22sensor%22%7D");
            assert!(up.contains("\"1\""), "up: {up}");
            let _ = prom.kill();
            let _ = prom.wait();
            let _ = std::fs::remove_dir_all(&dir);
            s.stop();
            return;
        }
    }
    let _ = prom.kill();
    let _ = prom.wait();
    let _ = std::fs::remove_dir_all(&dir);
    panic!("Prometheus never saw gpu_sensor_events_total{{kind=\"exec\"}} >= 3: {seen}");
}

/// BPF map memory at defaults stays within 16 MiB (measured by the kernel: `memlock` of each
/// map fd), is reported at start-up and as a metric, and follows `[maps]`.
#[test]
fn bpf_map_memory_is_bounded_reported_and_configurable() {
    if !require_root("bpf_map_memory_is_bounded_reported_and_configurable") {
        return;
    }
    let s = Sensor::start(&[]);
    let st = s.sensor_start();
    let addr = st.metrics_addr.clone().unwrap();
    let (_, body) = http_get(&addr, "/metrics");
    drop(s.stop());
    println!(
        "BPF map memory at defaults: {:.1} MiB {:?}",
        st.map_bytes_total as f64 / 1048576.0,
        st.map_bytes
    );
    assert!(
        st.map_bytes_total <= 16 << 20,
        "{} bytes: {:?}",
        st.map_bytes_total,
        st.map_bytes
    );
    for m in ["EVENTS", "TRACKED_SOCKS", "GPU_TGIDS", "FRESH_CONNS"] {
        let b = st.map_bytes.get(m).copied().unwrap_or(0);
        assert!(b > 0, "{m} not reported: {:?}", st.map_bytes);
        assert!(
            body.contains(&format!("gpu_sensor_bpf_map_bytes{{map=\"{m}\"}} {b}")),
            "{m} metric"
        );
    }
    // Four times the tracked connections: that map grows about four times, nothing else.
    let d = std::env::temp_dir().join(format!("sensor-maps-{}.toml", std::process::id()));
    std::fs::write(&d, "[maps]\ntracked_connections = 65536\n").unwrap();
    let s = Sensor::start(&["--config", d.to_str().unwrap()]);
    let big = s.sensor_start();
    drop(s.stop());
    let _ = std::fs::remove_file(&d);
    let (a, b) = (
        st.map_bytes["TRACKED_SOCKS"],
        big.map_bytes["TRACKED_SOCKS"],
    );
    assert!(b > 3 * a && b < 5 * a, "TRACKED_SOCKS {a} → {b}");
    assert_eq!(st.map_bytes["EVENTS"], big.map_bytes["EVENTS"]);
}
