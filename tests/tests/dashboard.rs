//! The Grafana dashboard (deploy/grafana/gpu-sensor-dashboard.json): every panel's query is run
//! against a real Prometheus scraping a real sensor and must return series. The sensor sees a
//! live GPU compute session (the H100 training recording re-issued on stand-in devices), NVML
//! (the stand-in libnvidia-ml.so.1) names the GPU and samples the process, a rule fires, a sink
//! is down and the file exporter runs — so every panel has something to show.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use sensor::event::Kind;
use sensor_tests::{
    free_port, http_get, is, nvml_stub, require_root, standin_gpu_nodes, wait_port, wait_until,
    EventExt, Kill, Sensor, STANDIN_GPU_DEVICES, WAIT,
};
use serde_json::Value;

const GPUREPLAY: &str = env!("CARGO_BIN_EXE_gpureplay");
const UUID: &str = "GPU-5d3c6a2e-0c1b-4f7e-9a51-2b8e3f0d4c11";

/// Removes these paths when the test ends, passed or not.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Grafana's variables as the dashboard's defaults resolve them here.
fn resolve(expr: &str) -> String {
    expr.replace("$job", "gpu-sensor")
        .replace("$instance", ".+")
        .replace("$__rate_interval", "30s")
}

fn panels() -> Vec<(String, String)> {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/gpu-sensor-dashboard.json");
    let d: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    assert_eq!(d["uid"], "gpu-sensor");
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "job", "instance"]);
    let mut out = vec![];
    for p in d["panels"].as_array().unwrap() {
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap().to_string();
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            let e = t["expr"].as_str().unwrap();
            if e.contains("gpu_sensor_") {
                assert!(
                    e.contains("job=~\"$job\",instance=~\"$instance\""),
                    "{title}: not filtered by the dashboard's variables: {e}"
                );
            }
            out.push((title.clone(), e.to_string()));
        }
    }
    out
}

#[test]
fn every_dashboard_panel_returns_series_from_a_real_prometheus() {
    let name = "every_dashboard_panel_returns_series_from_a_real_prometheus";
    if !require_root(name) {
        return;
    }
    let panels = panels();
    assert!(panels.len() >= 12, "{} panels", panels.len());
    let dir = std::env::temp_dir().join(format!("sensor-dash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    standin_gpu_nodes(&dir.join("dev"));
    let lib = nvml_stub(&dir);
    let nvml_conf = dir.join("nvml.conf");
    let device_line =
        format!("driver 550.54.15\ndevice 0 0 {UUID} 00000000:18:00.0 NVIDIA_H100_80GB_HBM3 97 41 2100 900\n");
    std::fs::write(&nvml_conf, &device_line).unwrap();
    let dead_port = free_port();
    let cfg = dir.join("sensor.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[gpu]
nvml_library = "{lib}"
nvml_interval_secs = 1
{STANDIN_GPU_DEVICES}

[alerting]
spool_dir = "{spool}"
[[alerting.sinks]]
name = "oncall"
kind = "webhook"
url = "http://127.0.0.1:{dead_port}/hook"
timeout_secs = 1

[export.file]
path = "{export}"
"#,
            lib = lib.display(),
            spool = dir.join("spool").display(),
            export = dir.join("export/events.jsonl").display(),
        ),
    )
    .unwrap();
    let s = Sensor::start_env(
        &["--config", cfg.to_str().unwrap()],
        &[("NVML_STUB_CONFIG", nvml_conf.as_os_str())],
    );
    let addr = s.sensor_start().metrics_addr.unwrap();

    // A live compute session: the training recording, held open after it is replayed.
    let bin_dir = PathBuf::from("/usr/local/libexec");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let bin = bin_dir.join(format!("sensor-test-dash-gpureplay-{}", std::process::id()));
    std::fs::copy(GPUREPLAY, &bin).unwrap();
    let _cleanup = Cleanup(vec![bin.clone(), dir.clone()]);
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/nvidia-h100/training.jsonl.gz");
    let mut work = Kill(
        sensor_tests::spawn_busy_retry(
            Command::new(&bin)
                .arg("replay-after-line")
                .arg(&fx)
                .arg(dir.join("dev"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped()),
        )
        .unwrap(),
    );
    let pid = work.0.id();
    let mut out = BufReader::new(work.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    // NVML reports the process on GPU 0 (written aside and renamed: the stub re-reads the file
    // on every call and must never see it half-written).
    let tmp = dir.join("nvml.conf.tmp");
    std::fs::write(&tmp, format!("{device_line}process 0 {pid} 96 40\n")).unwrap();
    std::fs::rename(&tmp, &nvml_conf).unwrap();
    work.0.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("replayed "), "{line}");
    let start = s
        .wait_event(WAIT, |e| is(e, Kind::GpuSessionStart, pid))
        .expect("a compute session");
    let gpus = &start.gpu_session().unwrap().gpus;
    assert_eq!(gpus.len(), 1, "the session names its GPU: {start:?}");
    assert_eq!((gpus[0].index, gpus[0].uuid.as_str()), (0, UUID));
    let usage = s
        .wait_event(WAIT, |e| is(e, Kind::GpuUsage, pid))
        .expect("NVML samples joined to the session");
    match &usage.body {
        sensor::event::Body::GpuUsage(u) => {
            assert_eq!(u.gpu_uuid.as_deref(), Some(UUID));
            assert_eq!(u.pci_bus_id.as_deref(), Some("00000000:18:00.0"));
            assert_eq!(u.sm_util, 96);
        }
        b => panic!("{b:?}"),
    }

    // A rule hit (and its incident) for the alert panels; the sink is down, so the delivery
    // panels and the spool have series.
    let _ = Command::new("ssh")
        .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=1", "-p"])
        .arg(dead_port.to_string())
        .args(["-fNR", "2222:localhost:22", "nobody@127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    s.wait_alert(WAIT, |a| a.rule == "ssh-forwarding-flags")
        .expect("the ssh -R rule");

    // A real Prometheus scraping the sensor every second.
    let pport = free_port();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: gpu-sensor\n    static_configs:\n      - targets: ['{addr}']\n"),
    )
    .unwrap();
    let _prom = Kill(
        Command::new("/usr/bin/prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{pport}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian, installed by scripts/setup.sh)"),
    );
    wait_port(pport);
    let api = format!("127.0.0.1:{pport}");
    let try_query = |e: &str| -> Result<Value, String> {
        let (code, body) = http_get(&api, &format!("/api/v1/query?query={}", urlencode(e)));
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if code == 200 && v["status"] == "success" {
            Ok(v["data"]["result"].clone())
        } else {
            Err(format!("{e}: {code} {body}"))
        }
    };
    let query = |e: &str| -> Value { try_query(e).unwrap_or_else(|err| panic!("{err}")) };
    // Enough scrapes for rate() and increase() over 30 s (Prometheus answers 503 while its
    // storage starts).
    assert!(
        wait_until(60, || try_query(
            "count_over_time(up{job=\"gpu-sensor\"}[1m])"
        )
        .unwrap_or(Value::Null)
        .get(0)
        .and_then(|r| r["value"][1].as_str()?.parse::<f64>().ok())
        .is_some_and(|n| n >= 5.0)),
        "Prometheus never scraped the sensor 5 times"
    );
    let mut empty = vec![];
    for (title, expr) in &panels {
        let r = query(&resolve(expr));
        let n = r.as_array().map_or(0, |a| a.len());
        println!("panel {title:?}: {n} series");
        if n == 0 {
            empty.push(format!("{title}: {}", resolve(expr)));
        }
    }
    assert!(empty.is_empty(), "panels without series: {empty:#?}");

    // The DCGM join works on the labels: the session's GPU has the UUID NVML gave.
    let r = query("gpu_sensor_gpu_compute_sessions{job=\"gpu-sensor\"} * on(UUID) group_left(modelName) gpu_sensor_gpu_info{job=\"gpu-sensor\"}");
    assert!(
        r.as_array()
            .unwrap()
            .iter()
            .any(|s| s["metric"]["UUID"] == UUID
                && s["metric"]["gpu"] == "0"
                && s["metric"]["pci_bus_id"] == "00000000:18:00.0"
                && s["metric"]["modelName"] == "NVIDIA H100 80GB HBM3"),
        "{r}"
    );

    work.0.stdin.as_mut().unwrap().write_all(b"done\n").unwrap();
    let _ = work.0.wait();
    s.stop();
}

#[test]
fn dashboard_queries_parse_in_promtool() {
    // Syntax only, fast: promtool's PromQL parser through a throwaway rule file.
    let dir = std::env::temp_dir().join(format!("sensor-dash-lint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, e)) in panels().iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:panel{i}\n        expr: {}\n",
            serde_json::to_string(&resolve(e)).unwrap()
        ));
    }
    let f = dir.join("rules.yml");
    std::fs::write(&f, rules).unwrap();
    let o = Command::new("/usr/bin/promtool")
        .args(["check", "rules"])
        .arg(&f)
        .output()
        .expect("promtool");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
