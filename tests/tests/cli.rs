//! `sensor rules check|test`, `sensor replay` (same alerts offline as live, from a recording
//! made with `sensor run --record`), rule hot reload (a broken file keeps the previous set), and
//! configuration errors.

use std::{path::PathBuf, process::Command, time::Duration};

use sensor::rules::Alert;
use sensor_tests::{alert, require_root, sensor_bin, Record, Sensor, WAIT};

fn tmpdir(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("sensor-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

const GOOD: &str = r#"
rules:
  - id: test-touch-marker
    description: exec of a binary named in the test
    severity: low
    tags: [test]
    condition: kind = "exec" and argv contains "sensor-cli-marker"
    examples:
      match:
        - {kind: exec, comm: "true", filename: /bin/true, argv: [/bin/true, sensor-cli-marker-1], args_truncated: false, args_size: 30}
      no_match:
        - {kind: exec, comm: "true", filename: /bin/true, argv: [/bin/true], args_truncated: false, args_size: 10}
"#;

#[test]
fn rules_check_and_test_commands() {
    let d = tmpdir("check");
    std::fs::write(d.join("a.yaml"), GOOD).unwrap();
    let out = Command::new(sensor_bin())
        .args(["rules", "test"])
        .arg(&d)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("0 failed"), "{text}");

    // A rule whose example is wrong fails `rules test` but passes `rules check`.
    std::fs::write(
        d.join("a.yaml"),
        GOOD.replace("sensor-cli-marker-1", "nothing"),
    )
    .unwrap();
    let out = Command::new(sensor_bin())
        .args(["rules", "test"])
        .arg(&d)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL test-touch-marker"));
    assert!(Command::new(sensor_bin())
        .args(["rules", "check"])
        .arg(&d)
        .status()
        .unwrap()
        .success());

    // A broken file: error with file and line, non-zero exit.
    std::fs::write(
        d.join("b.yaml"),
        "rules:\n  - id: x\n    description: d\n    severity: low\n    condition: kind = = 3\n",
    )
    .unwrap();
    let out = Command::new(sensor_bin())
        .args(["rules", "check"])
        .arg(&d)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("b.yaml:2") && err.contains("rule `x` condition"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_config_is_a_clear_error() {
    let d = tmpdir("cfg");
    let f = d.join("s.toml");
    std::fs::write(&f, "[ring]\nsize = \"8MiB\"\nqueue = \"lots\"\n").unwrap();
    let out = Command::new(sensor_bin())
        .args(["check-config"])
        .arg(&f)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("s.toml") && err.contains("line 3"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn replay_of_a_recording_gives_the_live_alerts_and_hot_reload_keeps_old_rules_on_error() {
    if !require_root(
        "replay_of_a_recording_gives_the_live_alerts_and_hot_reload_keeps_old_rules_on_error",
    ) {
        return;
    }
    let d = tmpdir("replay");
    let rules = d.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("a.yaml"), GOOD).unwrap();
    let rec = d.join("rec.jsonl");
    let s = Sensor::start(&[
        "--rules",
        rules.to_str().unwrap(),
        "--record",
        rec.to_str().unwrap(),
    ]);

    let run = |arg: &str| {
        let c = Command::new("/bin/true").arg(arg).spawn().unwrap();
        let pid = c.id();
        c.wait_with_output().unwrap();
        pid
    };
    let p1 = run("sensor-cli-marker-1");
    let live = s
        .wait_alert(WAIT, |a| a.rule == "test-touch-marker" && a.pid == p1)
        .expect("live alert");

    // Break the file: the reload fails with file and line, the previous rules stay active.
    std::fs::write(rules.join("a.yaml"), "rules:\n  - id: x\n    severity: [\n").unwrap();
    let r = s
        .wait_reload(Duration::from_secs(15), |r| !r.ok)
        .expect("rules_reload failure event");
    assert!(r.file.as_deref().unwrap().ends_with("a.yaml"), "{r:?}");
    assert!(r.line.unwrap() >= 2, "{r:?}");
    let p2 = run("sensor-cli-marker-2");
    s.wait_alert(WAIT, |a| a.rule == "test-touch-marker" && a.pid == p2)
        .expect("old rule still active after a failed reload");

    // Fix it with a different marker: the new rule set is live.
    std::fs::write(
        rules.join("a.yaml"),
        GOOD.replace("sensor-cli-marker", "sensor-cli-other"),
    )
    .unwrap();
    s.wait_reload(Duration::from_secs(15), |r| r.ok)
        .expect("successful reload");
    let p3 = run("sensor-cli-other-3");
    s.wait_alert(WAIT, |a| a.rule == "test-touch-marker" && a.pid == p3)
        .expect("new rule active");
    let records = s.stop();

    // Offline: the recording through `sensor replay` with the original rules reproduces the
    // first live alert exactly (same rule, pid, fingerprint, triggering event).
    std::fs::write(rules.join("a.yaml"), GOOD).unwrap();
    let out = Command::new(sensor_bin())
        .args(["replay", "--alerts-only", "--rules"])
        .arg(&rules)
        .arg(&rec)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `--alerts-only`: every line is a rule hit or the incident it raised.
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines
        .iter()
        .all(|v| v["kind"] == "alert" || v["kind"] == "evidence" || v["kind"] == "incident"));
    let alerts: Vec<Alert> = lines
        .iter()
        .filter(|v| v["kind"] != "incident")
        .map(alert)
        .collect();
    // The live run's incidents are raised offline too (one per process tree here).
    let incidents = lines.iter().filter(|v| v["kind"] == "incident").count();
    assert!(incidents >= 2, "{incidents} incidents replayed");
    let offline = alerts
        .iter()
        .find(|a| a.rule == "test-touch-marker" && a.pid == p1)
        .expect("replayed alert");
    assert_eq!(offline.fingerprint, live.fingerprint);
    assert_eq!(offline.event, live.event);
    assert!(
        alerts.iter().any(|a| a.pid == p2),
        "p2 matched the original rules too"
    );
    let recorded = std::fs::read_to_string(&rec).unwrap().lines().count();
    let live_events = records
        .iter()
        .filter(|r| matches!(r, Record::Event(_)))
        .count();
    assert_eq!(
        recorded, live_events,
        "the recording holds every event printed live"
    );

    // Garbage in a recording: a clear error per line, the rest still processed.
    let bad = d.join("bad.jsonl");
    std::fs::write(
        &bad,
        format!(
            "not json\n{{\"kind\":\"exec\"}}\n{}\n",
            std::fs::read_to_string(&rec)
                .unwrap()
                .lines()
                .next()
                .unwrap()
        ),
    )
    .unwrap();
    let out = Command::new(sensor_bin())
        .args(["replay"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("line 1: not JSON") && err.contains("line 2: not a sensor event"),
        "{err}"
    );
    assert!(err.contains("replayed 1 events"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}
