//! Hostile input never takes the agent down, a dead part never looks healthy, secrets stay
//! secret. Each test drives the real `sensor` binary as an attacker or a careless operator
//! would: rule files through hot reload, configuration values, a closed stdout, the metrics port.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sensor::output::Status;
use sensor_tests::{require_root, sensor_bin, wait_until, Sensor, WAIT};
use serde_json::Value;

fn tmpdir(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("sensor-robust-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// One HTTP/1.1 request; (status, headers+body text).
fn http(addr: &str, path: &str, extra: &str) -> (u16, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A server may close before reading it all (plain HTTP on the TLS port): no status then.
    if write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").is_err() {
        return (0, String::new());
    }
    let mut s = String::new();
    let _ = c.read_to_string(&mut s);
    let code = s
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, s)
}

fn metrics_addr(s: &Sensor) -> String {
    s.sensor_start().metrics_addr.unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

const MARK_RULE: &str = r#"
rules:
  - id: robust-marker
    description: exec with the robustness marker
    severity: low
    condition: kind = "exec" and argv = "MARK"
    examples:
      match:
        - {kind: exec, comm: "true", filename: /bin/true, argv: [/bin/true, MARK], args_truncated: false, args_size: 30}
"#;

fn run_true(arg: &str) -> u32 {
    let c = Command::new("/bin/true").arg(arg).spawn().unwrap();
    let pid = c.id();
    c.wait_with_output().unwrap();
    pid
}

fn nested_rule(depth: usize) -> String {
    format!(
        "rules:\n  - id: deep\n    description: d\n    severity: low\n    condition: '{}kind = \"exec\"{}'\n",
        "(".repeat(depth),
        ")".repeat(depth)
    )
}

fn macro_bomb() -> String {
    let mut t = String::from("macros:\n  - name: m0\n    condition: kind = \"exec\"\n");
    for i in 1..=24 {
        t += &format!("  - name: m{i}\n    condition: m{} or m{}\n", i - 1, i - 1);
    }
    t + "rules:\n  - id: bomb\n    description: d\n    severity: low\n    condition: m24\n"
}

#[test]
fn rules_check_refuses_what_would_crash_or_bloat_the_agent() {
    let d = tmpdir("check");
    for (name, text, needle) in [
        ("deep.yaml", nested_rule(5000), "nested too deeply"),
        ("bomb.yaml", macro_bomb(), "too large"),
        (
            "shadow.yaml",
            "macros:\n  - name: spawned\n    condition: kind = \"connect\"\n".to_string(),
            "already defined",
        ),
    ] {
        let _ = std::fs::remove_dir_all(d.join("r"));
        std::fs::create_dir_all(d.join("r")).unwrap();
        std::fs::write(d.join("r").join(name), &text).unwrap();
        let out = Command::new(sensor_bin())
            .args(["rules", "check"])
            .arg(d.join("r"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} accepted");
        assert!(err.contains(name) && err.contains(needle), "{name}: {err}");
    }
    // A FIFO named like a rule file: an error, not a hang.
    let _ = std::fs::remove_dir_all(d.join("r"));
    std::fs::create_dir_all(d.join("r")).unwrap();
    assert!(Command::new("mkfifo")
        .arg(d.join("r/a.yaml"))
        .status()
        .unwrap()
        .success());
    let mut c = Command::new(sensor_bin())
        .args(["rules", "check"])
        .arg(d.join("r"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    assert!(
        wait_until(10, || {
            status = c.try_wait().unwrap();
            status.is_some()
        }),
        "rules check hangs on a FIFO"
    );
    assert!(!status.unwrap().success());
    let mut err = String::new();
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("FIFO"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn hostile_hot_reloads_keep_the_agent_alive_and_small() {
    if !require_root("hostile_hot_reloads_keep_the_agent_alive_and_small") {
        return;
    }
    let d = tmpdir("reload");
    let rules = d.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("a.yaml"),
        MARK_RULE.replace("MARK", "robust-mark"),
    )
    .unwrap();
    let s = Sensor::start(&["--rules", rules.to_str().unwrap()]);
    let rss0 = rss_kib(s.pid);
    let rules0 = s.sensor_start().rules;
    let failures = |s: &Sensor| s.reloads(|r| !r.ok).len();
    // Each hostile file in turn: the reload fails with its reason, the agent stays up, and the
    // previous rules stay active.
    type Make = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Make, &str)> = vec![
        (
            "deep.yaml",
            Box::new(|p| std::fs::write(p, nested_rule(5000)).unwrap()),
            "nested too deeply",
        ),
        (
            "bomb.yaml",
            Box::new(|p| std::fs::write(p, macro_bomb()).unwrap()),
            "too large",
        ),
        (
            "fifo.yaml",
            Box::new(|p| assert!(Command::new("mkfifo").arg(p).status().unwrap().success())),
            "FIFO",
        ),
        (
            "zero.yaml",
            Box::new(|p| std::os::unix::fs::symlink("/dev/zero", p).unwrap()),
            "device",
        ),
    ];
    let oks = |s: &Sensor| s.reloads(|r| r.ok).len();
    for (name, make, needle) in &cases {
        make(&rules.join(name));
        // Also poke with SIGHUP (the watcher polls every 2 s).
        // SAFETY: signalling the child sensor process.
        unsafe { libc::kill(s.pid as i32, libc::SIGHUP) };
        let refused = s.wait_reload(Duration::from_secs(20), |r| {
            !r.ok && r.file.as_deref().unwrap_or("").ends_with(name)
        });
        let r = refused.unwrap_or_else(|| panic!("no failed reload for {name}"));
        assert!(
            r.error.as_deref().unwrap_or("").contains(needle),
            "{name}: {r:?}"
        );
        assert_eq!(r.rules, rules0, "the previous set stays: {r:?}");
        // Remove it: the next reload succeeds, and the rules still alert.
        let before = oks(&s);
        std::fs::remove_file(rules.join(name)).unwrap();
        // SAFETY: as above.
        unsafe { libc::kill(s.pid as i32, libc::SIGHUP) };
        assert!(
            wait_until(20, || oks(&s) > before),
            "no reload after removing {name}"
        );
        let p = run_true("robust-mark");
        s.wait_alert(WAIT, |a| a.rule == "robust-marker" && a.pid == p)
            .unwrap_or_else(|| panic!("rules no longer active after {name}"));
    }
    assert!(failures(&s) >= cases.len());
    let rss1 = rss_kib(s.pid);
    println!("RSS before {rss0} KiB, after the hostile reloads {rss1} KiB");
    assert!(
        rss1 < rss0 + 100 * 1024,
        "RSS grew from {rss0} to {rss1} KiB"
    );
    s.stop();
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn check_config_bounds_and_cross_checks_every_value() {
    let d = tmpdir("config");
    for (text, needle) in [
        ("[output]\nloss_interval_secs = 18446744073709551615\n", "output.loss_interval_secs"),
        ("[ring]\nqueue = 18446744073709551615\n", "ring.queue"),
        ("[ring]\nsize = \"4KiB\"\n", "largest records"),
        (
            "[[alerting.sinks]]\nname = \"a\"\nkind = \"webhook\"\ntimeout_secs = 18446744073709551615\nurl = \"http://x/\"\n",
            "timeout_secs",
        ),
        ("[[alerting.sinks]]\nname = \"a\"\nkind = \"webhook\"\n", "url"),
        ("[[alerting.sinks]]\nname = \"a\"\nkind = \"pagerduty\"\n", "routing key"),
        (
            "[[alerting.sinks]]\nname = \"../x\"\nkind = \"webhook\"\nurl = \"http://x/\"\n",
            "sink name",
        ),
        ("[metrics]\ntls_cert_file = \"/c.pem\"\n", "go together"),
    ] {
        std::fs::write(d.join("c.toml"), text).unwrap();
        let out = Command::new(sensor_bin())
            .arg("check-config")
            .arg(d.join("c.toml"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted: {text}");
        assert!(err.contains(needle), "{text} -> {err}");
    }
    // The run-time override is checked too.
    let out = Command::new(sensor_bin())
        .args(["run", "--ring-size", "4KiB"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ring.size"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn secrets_never_leak_and_signing_sinks_fail_closed() {
    if !require_root("secrets_never_leak_and_signing_sinks_fail_closed") {
        return;
    }
    let d = tmpdir("secrets");
    // Nothing listens on this port: alerts stay in the spool.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::create_dir_all(d.join("rules")).unwrap();
    std::fs::write(
        d.join("rules/a.yaml"),
        MARK_RULE.replace("MARK", "robust-secret"),
    )
    .unwrap();
    let slack_path = "T0000/B0000/XXXXsecretXXXX";
    let base = format!(
        "[rules]\nbuiltin = false\ndirs = [\"{}\"]\n[alerting]\nspool_dir = \"{}\"\n",
        d.join("rules").display(),
        d.join("spool").display()
    );
    let slack =
        format!("[[alerting.sinks]]\nname = \"slack\"\nkind = \"slack\"\nurl = \"https://hooks.slack.invalid/services/{slack_path}\"\n");
    // check-config prints the configuration without the Slack URL's secret path.
    std::fs::write(d.join("c.toml"), format!("{base}{slack}")).unwrap();
    let out = Command::new(sensor_bin())
        .arg("check-config")
        .arg(d.join("c.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("hooks.slack.invalid/***"), "{text}");
    assert!(!text.contains("XXXXsecretXXXX"), "{text}");

    // A webhook told to sign with a variable that is not set does not start.
    let hook = format!(
        "[[alerting.sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/h\"\nsecret_env = \"ROBUST_UNSET_HMAC_KEY\"\n"
    );
    std::fs::write(d.join("c.toml"), format!("{base}{hook}")).unwrap();
    let out = Command::new(sensor_bin())
        .args(["run", "--metrics-listen", "127.0.0.1:0", "--config"])
        .arg(d.join("c.toml"))
        .env_remove("ROBUST_UNSET_HMAC_KEY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started unsigned: {err}");
    assert!(err.contains("ROBUST_UNSET_HMAC_KEY is not set"), "{err}");

    // PagerDuty: the routing key never reaches the spool; the spool is private. Debug logs
    // carry neither the key nor the Slack URL.
    let pd = format!(
        "[[alerting.sinks]]\nname = \"pd\"\nkind = \"pagerduty\"\nurl = \"http://127.0.0.1:{port}/pd\"\nsecret_env = \"ROBUST_PD_KEY\"\n"
    );
    std::fs::write(d.join("c.toml"), format!("{base}{pd}{slack}")).unwrap();
    let mut child = Reap(
        Command::new(sensor_bin())
            .args(["run", "--metrics-listen", "127.0.0.1:0", "--config"])
            .arg(d.join("c.toml"))
            .env("ROBUST_PD_KEY", "pd-routing-key-0123456789")
            .env("SENSOR_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut s);
        s
    });
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 && !line.contains("sensor_start") {
        line.clear();
    }
    let drain = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    run_true("robust-secret");
    let spool = d.join("spool/pd");
    assert!(
        wait_until(15, || std::fs::read_dir(&spool)
            .map(|r| r
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".json")))
            .unwrap_or(false)),
        "nothing spooled"
    );
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&d.join("spool")), 0o700);
    assert_eq!(mode(&spool), 0o700);
    for e in std::fs::read_dir(&spool).unwrap().flatten() {
        let body = std::fs::read_to_string(e.path()).unwrap();
        assert!(
            !body.contains("pd-routing-key"),
            "routing key in the spool: {body}"
        );
        assert_eq!(mode(&e.path()), 0o600, "{}", e.path().display());
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    child.wait().unwrap();
    let log = log.join().unwrap();
    let _ = drain.join();
    assert!(
        log.contains("DEBUG") || log.contains("debug"),
        "debug logging is on"
    );
    assert!(!log.contains("XXXXsecretXXXX"), "Slack URL in the logs");
    assert!(!log.contains("pd-routing-key"), "routing key in the logs");
    let _ = std::fs::remove_dir_all(&d);
}

/// A child sensor that is killed if the test fails before it stops it.
struct Reap(std::process::Child);

impl std::ops::Deref for Reap {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Reap {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `sensor run` with stdout on a pipe whose read end the test controls.
fn start_raw(args: &[&str]) -> (Reap, BufReader<std::process::ChildStdout>, String) {
    let mut child = Command::new(sensor_bin())
        .args(["run", "--metrics-listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "sensor did not start"
        );
        if line.contains("\"sensor_start\"") {
            break;
        }
    }
    let Status::SensorStart(start) = serde_json::from_str(&line).unwrap() else {
        panic!("not a sensor_start record: {line}")
    };
    let addr = start.metrics_addr.unwrap();
    (Reap(child), out, addr)
}

#[test]
fn a_closed_stdout_stops_the_sensor_loudly_by_default() {
    if !require_root("a_closed_stdout_stops_the_sensor_loudly_by_default") {
        return;
    }
    let (mut child, out, addr) = start_raw(&[]);
    assert_eq!(http(&addr, "/healthz", "").0, 200);
    drop(out); // the reader goes away
               // Events keep coming on a busy machine; make some.
    let mut status = None;
    assert!(
        wait_until(30, || {
            run_true("robust-stdout");
            status = child.try_wait().unwrap();
            status.is_some()
        }),
        "the sensor kept running with nobody reading stdout"
    );
    let status = status.unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("stdout") && err.contains("pipeline"), "{err}");
    assert!(
        err.contains("detached"),
        "programs detached on the way out: {err}"
    );
}

#[test]
fn a_closed_stdout_can_be_survived_with_sinks_and_metrics() {
    if !require_root("a_closed_stdout_can_be_survived_with_sinks_and_metrics") {
        return;
    }
    let d = tmpdir("continue");
    std::fs::write(
        d.join("c.toml"),
        "[output]\non_stdout_closed = \"continue\"\n",
    )
    .unwrap();
    let (mut child, out, addr) = start_raw(&["--config", d.join("c.toml").to_str().unwrap()]);
    drop(out);
    let dropped = || {
        let (_, m) = http(&addr, "/metrics", "");
        m.lines()
            .find_map(|l| l.strip_prefix("gpu_sensor_stdout_dropped_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(
        wait_until(30, || {
            run_true("robust-stdout-continue");
            dropped() > 0.0
        }),
        "no stdout_dropped count"
    );
    assert!(child.try_wait().unwrap().is_none(), "the sensor exited");
    let (h, _) = http(&addr, "/healthz", "");
    let (r, body) = http(&addr, "/readyz", "");
    assert_eq!((h, r), (200, 200), "{body}");
    let json: Value = serde_json::from_str(body.lines().last().unwrap()).unwrap();
    assert_eq!(json["components"]["pipeline"]["state"], "running", "{body}");
    assert_eq!(
        json["components"]["ring_reader"]["state"], "running",
        "{body}"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let st = child.wait().unwrap();
    assert!(st.success(), "{st}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn metrics_port_closes_idle_and_excess_connections() {
    if !require_root("metrics_port_closes_idle_and_excess_connections") {
        return;
    }
    let d = tmpdir("metrics-limits");
    // The header timeout (1 s) is far below the connection timeout (30 s): a connection closed
    // within 3 s was closed by the header timeout.
    std::fs::write(
        d.join("c.toml"),
        "[metrics]\nmax_connections = 16\nheader_timeout_secs = 1\nconnection_timeout_secs = 30\n",
    )
    .unwrap();
    let s = Sensor::start(&["--config", d.join("c.toml").to_str().unwrap()]);
    let addr = metrics_addr(&s);
    let closed_by_server = |c: &mut TcpStream| {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 512];
        loop {
            match c.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(_) => continue, // a 408 response, then EOF
            }
        }
    };
    // Within the limit: a half-sent request and idle connections are closed by the header
    // timeout.
    let t = Instant::now();
    let mut half = TcpStream::connect(&addr).unwrap();
    half.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut idle: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    closed_by_server(&mut half);
    for c in &mut idle {
        closed_by_server(c);
    }
    let took = t.elapsed();
    println!("a half-sent request and 10 idle connections closed in {took:?}");
    assert!(took < Duration::from_secs(3), "held for {took:?}");
    assert_eq!(http(&addr, "/metrics", "").0, 200);
    // Past the limit: 200 connections at once, the excess closed at once and counted.
    let mut many: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let t = Instant::now();
    for c in &mut many {
        closed_by_server(c);
    }
    let took = t.elapsed();
    println!("200 connections closed by the server in {took:?}");
    assert!(
        took < Duration::from_secs(3),
        "connections held for {took:?}"
    );
    let (code, m) = http(&addr, "/metrics", "");
    assert_eq!(code, 200);
    let limit: f64 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix("gpu_sensor_metrics_connections_rejected_total{reason=\"limit\"} ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(limit >= 150.0, "excess connections counted: {limit}");
    s.stop();
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn metrics_over_tls_with_a_bearer_token() {
    if !require_root("metrics_over_tls_with_a_bearer_token") {
        return;
    }
    let d = tmpdir("tls");
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
        ])
        .arg(d.join("key.pem"))
        .arg("-out")
        .arg(d.join("cert.pem"))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success(), "openssl req");
    let token = "robust-test-token-0123456789abcdef";
    std::fs::write(d.join("token"), format!("{token}\n")).unwrap();
    std::fs::write(
        d.join("c.toml"),
        format!(
            "[metrics]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\nbearer_token_file = \"{}\"\n",
            d.join("cert.pem").display(),
            d.join("key.pem").display(),
            d.join("token").display()
        ),
    )
    .unwrap();
    let s = Sensor::start(&["--config", d.join("c.toml").to_str().unwrap()]);
    let addr = metrics_addr(&s);
    let curl = |path: &str, auth: Option<&str>| -> (String, String) {
        let mut c = Command::new("curl");
        c.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
            .arg(d.join("cert.pem"))
            .arg(format!("https://{addr}{path}"));
        if let Some(a) = auth {
            c.args(["-H", &format!("Authorization: Bearer {a}")]);
        }
        let out = c.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        (code.to_string(), body.to_string())
    };
    assert_eq!(curl("/metrics", None).0, "401");
    assert_eq!(curl("/metrics", Some("wrong-token-wrong-token")).0, "401");
    let (code, body) = curl("/metrics", Some(token));
    assert_eq!(code, "200");
    assert!(
        body.contains("gpu_sensor_metrics_unauthorized_total 2"),
        "{body}"
    );
    // Probes need no token.
    assert_eq!(curl("/healthz", None).0, "200");
    assert_eq!(curl("/readyz", None).0, "200");
    // Plain HTTP on the TLS port is refused.
    let (code, _) = http(&addr, "/metrics", "");
    assert_ne!(code, 200);
    s.stop();
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn replay_reports_bad_bytes_by_line_and_goes_on() {
    let d = tmpdir("replay");
    let good = r#"{"ts":"2026-11-27T00:00:00Z","ts_ns":1,"pid":7,"tid":7,"ppid":1,"uid":0,"gid":0,"comm":"x","cgroup_id":1,"mntns":1,"kind":"fork","child_pid":8}"#;
    let mut input = Vec::new();
    input.extend_from_slice(good.as_bytes());
    input.extend_from_slice(b"\n{\"kind\": \"fork\", \"comm\": \"\xff\xfe\"}\n");
    input.extend_from_slice(good.as_bytes());
    input.push(b'\n');
    std::fs::write(d.join("in.jsonl"), &input).unwrap();
    let out = Command::new(sensor_bin())
        .arg("replay")
        .arg(d.join("in.jsonl"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("line 2: not UTF-8"), "{err}");
    assert!(
        err.contains("replayed 2 events (3 lines, 0 skipped, 1 errors)"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&d);
}
