//! Event export to a log pipeline: the rotating JSON-lines file (what Fluent Bit / Vector tail)
//! and OTLP logs over HTTP, decoded by the official `opentelemetry-proto` Python package.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use sensor_tests::{free_port, http_get, require_root, wait_port, wait_until, Kill, Sensor};
use serde_json::Value;

const MARKERS: usize = 60;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sensor-export-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every line of the current file and of its backups (gunzipped), oldest first.
fn exported_lines(path: &Path) -> (Vec<String>, Vec<String>) {
    let dir = path.parent().unwrap();
    let base = path.file_name().unwrap().to_str().unwrap();
    let mut backups: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            let i = n.strip_prefix(&format!("{base}."))?.strip_suffix(".gz")?;
            Some((i.parse().ok()?, e.path()))
        })
        .collect();
    backups.sort();
    let names = backups
        .iter()
        .map(|(_, p)| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    // Other tests' sensors keep the machine busy, so the file may rotate while this reads: a
    // backup that moved away between the listing and its read is skipped (the caller polls; a
    // new one of the same name may already be there), and the live file's last line may still
    // be partial (skipped too). Any other gzip failure is a broken backup.
    let mut lines = vec![];
    for (_, p) in backups.iter().rev() {
        let o = Command::new("gzip").arg("-dc").arg(p).output().unwrap();
        if !o.status.success()
            && String::from_utf8_lossy(&o.stderr).contains("No such file or directory")
        {
            continue;
        }
        assert!(
            o.status.success(),
            "{} is not a whole gzip file: {}",
            p.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        lines.extend(
            String::from_utf8(o.stdout)
                .unwrap()
                .lines()
                .map(String::from),
        );
    }
    if let Ok(s) = std::fs::read_to_string(path) {
        let whole = s.rfind('\n').map_or("", |i| &s[..i]);
        lines.extend(whole.lines().map(String::from));
    }
    (names, lines)
}

fn marker_of(argv: &Value, tag: &str) -> Option<usize> {
    argv.as_array()?
        .iter()
        .find_map(|a| a.as_str()?.strip_prefix(tag)?.parse().ok())
}

#[test]
fn events_reach_a_rotating_file_and_an_otlp_receiver() {
    let name = "events_reach_a_rotating_file_and_an_otlp_receiver";
    if !require_root(name) {
        return;
    }
    let dir = tmpdir("live");
    let port = free_port();
    let received = dir.join("otlp.jsonl");
    let _rx = Kill(
        Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/otlp/receiver.py"))
            .arg(port.to_string())
            .arg(&received)
            .spawn()
            .expect("python3 with opentelemetry-proto (scripts/setup.sh installs it)"),
    );
    wait_port(port);
    let file = dir.join("out/events.jsonl");
    let cfg = dir.join("sensor.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[export.file]
path = "{}"
max_bytes = "16KiB"
backups = 1000
compress = true

[export.otlp]
endpoint = "http://127.0.0.1:{port}/v1/logs"
headers = {{ "x-scope-orgid" = "tenant-a" }}
flush_ms = 200
batch = 64
records = ["event", "status"]
"#,
            file.display()
        ),
    )
    .unwrap();
    let s = Sensor::start(&["--config", cfg.to_str().unwrap()]);
    let tag = format!("export-marker-{}-", std::process::id());
    for i in 0..MARKERS {
        Command::new("/bin/echo")
            .arg(format!("{tag}{i}"))
            .output()
            .unwrap();
    }

    // The file: every marker exec, across the live file and its gzipped backups. Other tests
    // keep the file rotating, so one read may fall between a rename and the next: the checks
    // are made on one snapshot, retried until a snapshot passes them all.
    let want: BTreeSet<usize> = (0..MARKERS).collect();
    let check = || -> Result<(), String> {
        let (backups, lines) = exported_lines(&file);
        let got: BTreeSet<usize> = lines
            .iter()
            .filter_map(|l| {
                let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
                (v["kind"] == "exec").then(|| marker_of(&v["argv"], &tag))?
            })
            .collect();
        if got != want {
            return Err(format!("markers in the exported file: {got:?}"));
        }
        if backups.len() < 2 {
            return Err(format!("16KiB files must have rotated: {backups:?}"));
        }
        for (i, n) in backups.iter().enumerate() {
            if n != &format!("events.jsonl.{}.gz", i + 1) {
                return Err(format!("backup names out of order: {backups:?}"));
            }
        }
        if !lines.iter().any(|l| l.contains("\"sensor_start\"")) {
            return Err("status records are exported by default: no sensor_start".into());
        }
        Ok(())
    };
    let mut last = Ok(());
    wait_until(30, || {
        last = check();
        last.is_ok()
    });
    if let Err(e) = last {
        panic!("{e}");
    }

    // OTLP: every marker exec as a LogRecord, after the first POST was refused with 503.
    let otlp = || -> Vec<Value> {
        std::fs::read_to_string(&received)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let markers_otlp = |recs: &[Value]| -> BTreeSet<usize> {
        recs.iter()
            .filter(|r| r["attributes"]["gpu_sensor.name"] == "exec")
            .filter_map(|r| {
                let body: Value = serde_json::from_str(r["body"].as_str()?).ok()?;
                marker_of(&body["argv"], &tag)
            })
            .collect()
    };
    wait_until(30, || markers_otlp(&otlp()) == want);
    let recs = otlp();
    assert!(
        !recs.iter().any(|r| r.get("error").is_some()),
        "a request did not decode: {recs:?}"
    );
    assert_eq!(recs[0]["status"], 503, "the first POST is refused");
    assert_eq!(markers_otlp(&recs), want, "markers received over OTLP");
    // The refused first batch (it held sensor_start) was retried, not lost.
    assert!(recs.iter().any(|r| {
        r["attributes"]["gpu_sensor.record"] == "status"
            && r["attributes"]["gpu_sensor.name"] == "sensor_start"
    }));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    for r in recs
        .iter()
        .filter(|r| r.get("post").is_some() && r.get("status").is_none())
    {
        assert_eq!(r["content_type"], "application/x-protobuf");
        assert_eq!(r["tenant"], "tenant-a");
        assert_eq!(r["resource"]["service.name"], "gpu-sensor");
        assert_eq!(r["scope"], "gpu-sensor");
        let t = r["time_unix_nano"].as_u64().unwrap();
        assert!(t > now - 600_000_000_000 && t <= now, "{r}");
        assert!(r["observed_time_unix_nano"].as_u64().unwrap() >= t);
        let rec = r["attributes"]["gpu_sensor.record"].as_str().unwrap();
        assert!(rec == "event" || rec == "status", "records filter: {r}");
        assert_eq!(
            (r["severity_number"].as_u64(), r["severity_text"].as_str()),
            (Some(9), Some("INFO"))
        );
    }

    // The counters say the same.
    let m = http_get(
        s.sensor_start().metrics_addr.as_deref().unwrap(),
        "/metrics",
    )
    .1;
    for (exp, res) in [("file", "exported"), ("otlp", "exported")] {
        let n: f64 = m
            .lines()
            .find(|l| {
                l.starts_with("gpu_sensor_export_records_total{")
                    && l.contains(&format!("exporter=\"{exp}\""))
                    && l.contains(&format!("result=\"{res}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {exp}/{res} counter: {m}"));
        assert!(n >= MARKERS as f64, "{exp} {res} = {n}");
    }
    assert!(m.contains("gpu_sensor_export_records_total{exporter=\"otlp\",result=\"dropped\"} 0"));
    s.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_export_config_is_refused_with_its_reason() {
    let dir = tmpdir("bad");
    let cfg = dir.join("sensor.toml");
    for (toml, want) in [
        (
            "[export.otlp]\nendpoint = \"collector:4318\"\n",
            "export.otlp.endpoint",
        ),
        (
            "[export.file]\npath = \"/tmp/x.jsonl\"\nmax_bytes = \"1K\"\n",
            "export.file.max_bytes",
        ),
        (
            "[export.file]\npath = \"/tmp/x.jsonl\"\nrecords = [\"events\"]\n",
            "unknown variant",
        ),
        (
            "[export.file]\npath = \"/tmp/x.jsonl\"\nrotate = 1\n",
            "unknown field",
        ),
    ] {
        std::fs::write(&cfg, toml).unwrap();
        let o = Command::new(sensor_tests::sensor_bin())
            .arg("check-config")
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{toml} was accepted");
        assert!(err.contains(want), "{toml}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
