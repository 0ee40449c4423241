//! Alert delivery: a local receiver checks the HMAC signature and the webhook/Slack/PagerDuty
//! payloads, answers 500s and a timeout before accepting (retries), a rate limit summarises; the
//! real Debian Alertmanager receives the alerts through its v2 API; and a kill -9 of the agent
//! while the receiver is down loses nothing once both come back.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use hmac::{Hmac, Mac};
use sensor_tests::{require_root, sensor_bin, skip, wait_until, Sensor, WAIT};
use serde_json::Value;
use sha2::Sha256;

/// A rule matching execs that carry `MARK` (each test uses its own, since every sensor sees
/// every process of the machine and the tests run in parallel).
const RULES: &str = r#"
rules:
  - id: alerting-test-marker
    description: exec with the alerting test marker
    severity: high
    tags: [test]
    condition: kind = "exec" and argv = "MARK"
    examples:
      match:
        - {kind: exec, comm: "true", filename: /bin/true, argv: [/bin/true, MARK], args_truncated: false, args_size: 30}
      no_match:
        - {kind: exec, comm: "true", filename: /bin/true, argv: [/bin/true], args_truncated: false, args_size: 10}
"#;

#[derive(Clone, Debug)]
struct Req {
    path: String,
    headers: String,
    body: Vec<u8>,
}

/// A receiver: records every request; `plan` gives the status for each request in turn
/// (0 = hang past the client's timeout), then 200.
fn receiver(plan: Vec<u16>) -> (u16, Arc<Mutex<Vec<Req>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for (n, c) in l.incoming().enumerate() {
            let Ok(mut c) = c else { break };
            let status = plan.get(n).copied().unwrap_or(200);
            let g = g.clone();
            // One thread per connection, so a hung answer does not hold up the next attempt.
            std::thread::spawn(move || {
                let req = read_request(&mut c);
                g.lock().unwrap().push(req);
                if status == 0 {
                    std::thread::sleep(Duration::from_secs(3));
                    return;
                }
                let _ = write!(
                    c,
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            });
        }
    });
    (port, got)
}

fn read_request(c: &mut TcpStream) -> Req {
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let (head_end, len) = loop {
        let n = c.read(&mut tmp).unwrap_or(0);
        if n == 0 {
            break (buf.len(), 0);
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
            let len = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            break (i + 4, len);
        }
    };
    while buf.len() < head_end + len {
        let n = c.read(&mut tmp).unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let head = String::from_utf8_lossy(&buf[..head_end.min(buf.len())]).to_string();
    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
    Req {
        path,
        headers: head.to_lowercase(),
        body: buf[head_end.min(buf.len())..].to_vec(),
    }
}

fn trigger(mark: &str, tag: &str) -> u32 {
    let c = Command::new("/bin/true").args([mark, tag]).spawn().unwrap();
    let pid = c.id();
    c.wait_with_output().unwrap();
    pid
}

fn setup(tag: &str, sinks: &str) -> (PathBuf, PathBuf) {
    let d = std::env::temp_dir().join(format!("sensor-alerting-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("rules")).unwrap();
    std::fs::write(
        d.join("rules/a.yaml"),
        RULES.replace("MARK", &format!("mark-{tag}")),
    )
    .unwrap();
    let cfg = d.join("sensor.toml");
    std::fs::write(
        &cfg,
        format!(
            "[rules]\nbuiltin = false\ndirs = [\"{}\"]\n[alerting]\nspool_dir = \"{}\"\n{sinks}",
            d.join("rules").display(),
            d.join("spool").display()
        ),
    )
    .unwrap();
    (d, cfg)
}

#[test]
fn webhook_slack_pagerduty_with_hmac_retries_and_rate_limit() {
    if !require_root("webhook_slack_pagerduty_with_hmac_retries_and_rate_limit") {
        return;
    }
    // Webhook receiver: 500, 500, a hang past the 1 s timeout, then 200s. Slack and PagerDuty
    // post to another one that always accepts.
    let (port, got) = receiver(vec![500, 500, 0]);
    let (oport, other) = receiver(vec![]);
    let sinks = format!(
        "[[alerting.sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/hook\"\n\
         secret_env = \"TEST_SENSOR_HMAC\"\ntimeout_secs = 1\nrate_limit = 2\nrate_limit_window_secs = 3\n\
         [[alerting.sinks]]\nname = \"slack\"\nkind = \"slack\"\nurl = \"http://127.0.0.1:{oport}/slack\"\n\
         [[alerting.sinks]]\nname = \"pd\"\nkind = \"pagerduty\"\nurl = \"http://127.0.0.1:{oport}/pd\"\n\
         secret_env = \"TEST_SENSOR_PD\"\nmin_severity = \"critical\"\n"
    );
    let (d, cfg) = setup("hook", &sinks);
    // SAFETY of set_var: single-threaded at this point in this test binary's test; the
    // variables are read by the sensor child, which inherits the environment.
    std::env::set_var("TEST_SENSOR_HMAC", "s3cret");
    std::env::set_var("TEST_SENSOR_PD", "routing-key-1");
    let s = Sensor::start(&["--config", cfg.to_str().unwrap()]);
    let pids: Vec<u32> = (0..4)
        .map(|i| trigger("mark-hook", &format!("n{i}")))
        .collect();
    for p in &pids {
        s.wait_alert(WAIT, |a| a.pid == *p)
            .expect("alert on stdout");
    }
    // Two alerts pass the rate limit (2 per 3 s window), then a summary for the other two.
    let hooks = || {
        got.lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == "/hook")
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(40, || {
            let h = hooks();
            h.iter().any(|r| {
                serde_json::from_slice::<Value>(&r.body).is_ok_and(|v| v["kind"] == "alert_summary")
            }) && h
                .iter()
                .filter(|r| {
                    serde_json::from_slice::<Value>(&r.body).is_ok_and(|v| v["kind"] == "incident")
                })
                .count()
                >= 5
        }),
        "webhook deliveries: {:?}",
        hooks()
            .iter()
            .map(|r| String::from_utf8_lossy(&r.body)
                .chars()
                .take(80)
                .collect::<String>())
            .collect::<Vec<_>>()
    );
    let h = hooks();
    // The first incident was attempted through two 500s and a timeout before it was accepted.
    let first: Value = serde_json::from_slice(&h[0].body).unwrap();
    let retries = h
        .iter()
        .filter(|r| {
            serde_json::from_slice::<Value>(&r.body)
                .is_ok_and(|v| v["id"] == first["id"] && v["version"] == first["version"])
        })
        .count();
    assert!(
        retries >= 4,
        "first alert sent {retries} times (3 failures + success expected)"
    );
    for r in &h {
        let sig = r
            .headers
            .lines()
            .find_map(|l| l.strip_prefix("x-gpu-sensor-signature: sha256="))
            .expect("signature header");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(&r.body);
        // An independent check (the hmac crate), not the sensor's own signing code.
        let want = sensor::hex(&mac.finalize().into_bytes());
        assert_eq!(sig.trim(), want, "HMAC over the exact body");
    }
    let alerts: Vec<Value> = h
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .filter(|v| v["kind"] == "incident")
        .collect();
    // Each trigger is its own process tree: its own incident.
    let distinct: std::collections::HashSet<String> =
        alerts.iter().map(|a| a["id"].to_string()).collect();
    assert_eq!(
        distinct.len(),
        2,
        "rate limit: two distinct alerts in the window"
    );
    let summary: Value = h
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .find(|v| v["kind"] == "alert_summary")
        .unwrap();
    assert_eq!(summary["suppressed"], 2);
    assert_eq!(summary["rule"], "alerting-test-marker");
    assert_eq!(alerts[0]["headline"], "alerting-test-marker");
    assert_eq!(alerts[0]["version"], 1);
    assert_eq!(alerts[0]["alerts"][0]["rule"], "alerting-test-marker");
    assert!(alerts[0]["alerts"][0]["lineage"].is_array());
    assert!(alerts[0]["timeline"]
        .as_array()
        .is_some_and(|t| t.iter().any(|s| s["step"] == "exec")));

    // Slack got all four as text; PagerDuty got none (min_severity critical > high).
    assert!(wait_until(10, || other
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.path == "/slack")
        .count()
        >= 4));
    let slack: Value = serde_json::from_slice(
        &other
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.path == "/slack")
            .unwrap()
            .body,
    )
    .unwrap();
    assert!(
        slack["text"]
            .as_str()
            .unwrap()
            .starts_with("[HIGH] alerting-test-marker"),
        "{slack}"
    );
    assert!(
        other.lock().unwrap().iter().all(|r| r.path != "/pd"),
        "severity filter"
    );
    s.stop();
    let _ = std::fs::remove_dir_all(&d);

    // PagerDuty Events v2 shape (a sink without a severity filter).
    let (port2, got2) = receiver(vec![]);
    let (d2, cfg2) = setup(
        "pd",
        &format!("[[alerting.sinks]]\nname = \"pd\"\nkind = \"pagerduty\"\nurl = \"http://127.0.0.1:{port2}/pd\"\nsecret_env = \"TEST_SENSOR_PD\"\n"),
    );
    let s = Sensor::start(&["--config", cfg2.to_str().unwrap()]);
    trigger("mark-pd", "pd");
    assert!(wait_until(15, || !got2.lock().unwrap().is_empty()));
    let pd: Value = serde_json::from_slice(&got2.lock().unwrap()[0].body).unwrap();
    assert_eq!(pd["routing_key"], "routing-key-1");
    assert_eq!(pd["event_action"], "trigger");
    assert_eq!(pd["payload"]["severity"], "error", "high → error");
    assert!(pd["dedup_key"].is_string());
    s.stop();
    let _ = std::fs::remove_dir_all(&d2);
}

#[test]
fn kill_and_restart_while_the_receiver_is_down_loses_nothing() {
    if !require_root("kill_and_restart_while_the_receiver_is_down_loses_nothing") {
        return;
    }
    // A port with nothing listening yet.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (d, cfg) = setup(
        "restart",
        &format!("[[alerting.sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/hook\"\ntimeout_secs = 1\n"),
    );
    let s = Sensor::start(&["--config", cfg.to_str().unwrap()]);
    let pids: Vec<u32> = (0..3)
        .map(|i| trigger("mark-restart", &format!("r{i}")))
        .collect();
    for p in &pids {
        s.wait_alert(WAIT, |a| a.pid == *p).expect("alert");
    }
    let spool = d.join("spool/hook");
    let count = |p: &Path| {
        std::fs::read_dir(p)
            .map(|r| {
                r.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0)
    };
    assert!(
        wait_until(10, || count(&spool) == 3),
        "three alerts spooled, got {}",
        count(&spool)
    );
    // SAFETY: killing our own child without letting it clean up.
    unsafe { libc::kill(s.pid as i32, libc::SIGKILL) };
    drop(s);

    // Receiver up, agent restarted: everything is delivered, in order.
    let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { break };
            let r = read_request(&mut c);
            g.lock().unwrap().push(r);
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    let s = Sensor::start(&["--config", cfg.to_str().unwrap()]);
    assert!(
        wait_until(30, || got.lock().unwrap().len() >= 3),
        "delivered after restart: {}",
        got.lock().unwrap().len()
    );
    let delivered: Vec<u64> = got
        .lock()
        .unwrap()
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .filter_map(|v| v["alerts"][0]["pid"].as_u64())
        .collect();
    assert_eq!(
        delivered,
        pids.iter().map(|p| *p as u64).collect::<Vec<_>>(),
        "every alert, in order"
    );
    assert!(wait_until(5, || count(&spool) == 0), "spool drained");
    s.stop();
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn real_alertmanager_receives_the_alerts() {
    let name = "real_alertmanager_receives_the_alerts";
    if !require_root(name) {
        return;
    }
    let am_bin = ["/usr/bin/prometheus-alertmanager", "/usr/bin/alertmanager"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(am_bin) = am_bin else {
        skip(
            name,
            "prometheus-alertmanager not installed (scripts/setup.sh installs it)",
        );
        return;
    };
    let d = std::env::temp_dir().join(format!("sensor-am-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("am.yml"),
        "route:\n  receiver: none\nreceivers:\n  - name: none\n",
    )
    .unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut am = Command::new(am_bin)
        .arg(format!("--config.file={}", d.join("am.yml").display()))
        .arg(format!("--storage.path={}", d.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(30, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "alertmanager up"
    );
    let (_, cfg) = setup(
        "am",
        &format!("[[alerting.sinks]]\nname = \"am\"\nkind = \"alertmanager\"\nurl = \"http://127.0.0.1:{port}\"\n"),
    );
    let s = Sensor::start(&["--config", cfg.to_str().unwrap()]);
    let pid = trigger("mark-am", "am");
    s.wait_alert(WAIT, |a| a.pid == pid).expect("alert");
    let fetch = || -> Vec<Value> {
        let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else {
            return vec![];
        };
        let _ = write!(
            c,
            "GET /api/v2/alerts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut s = String::new();
        let _ = c.read_to_string(&mut s);
        let body = s.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("[]");
        // Alertmanager may answer chunked; take the JSON array.
        let start = body.find('[').unwrap_or(0);
        let end = body.rfind(']').map_or(body.len(), |i| i + 1);
        serde_json::from_str(&body[start..end]).unwrap_or_default()
    };
    let ok = wait_until(30, || {
        fetch()
            .iter()
            .any(|a| a["annotations"]["rule"] == "alerting-test-marker")
    });
    let alerts = fetch();
    let _ = am.kill();
    let _ = am.wait();
    assert!(ok, "alert not in Alertmanager: {alerts:?}");
    let a = alerts
        .iter()
        .find(|a| a["annotations"]["rule"] == "alerting-test-marker")
        .unwrap();
    // One Alertmanager alert per incident, named by its id.
    assert_eq!(a["labels"]["alertname"], "GpuSensorIncident");
    assert!(a["labels"]["incident"]
        .as_str()
        .is_some_and(|i| i.len() == 16));
    assert_eq!(a["labels"]["severity"], "high");
    assert_eq!(a["annotations"]["pid"], pid.to_string());
    assert_eq!(a["status"]["state"], "active");
    assert!(a["endsAt"].is_string());
    s.stop();
    let _ = std::fs::remove_dir_all(&d);
    let _ = sensor_bin();
}
