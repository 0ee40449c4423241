//! The deployment in deploy/: every manifest against the Kubernetes schemas
//! (`kubernetes-validate --strict`), the PrometheusRule groups with `promtool check rules`, the
//! ConfigMap's sensor.toml with `sensor check-config`, and the wiring between objects.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use sensor_tests::{sensor_bin, skip};
use serde_yaml_ng::Value;

fn manifests() -> Vec<(PathBuf, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let mut out = vec![];
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            out.push((f.clone(), v));
        }
    }
    out
}

use serde::Deserialize;

fn find<'a>(docs: &'a [(PathBuf, Value)], kind: &str) -> &'a Value {
    &docs
        .iter()
        .find(|(_, d)| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
        .1
}

#[test]
fn manifests_validate_against_kubernetes_schemas() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let probe = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--version"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        skip(
            "manifests_validate_against_kubernetes_schemas",
            "kubernetes-validate (PyPI) not installed; scripts/setup.sh installs it",
        );
        return;
    }
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict"])
        .args(&files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    // Built-in objects are all checked; the two prometheus-operator CRDs have no bundled schema
    // and are checked structurally below.
    for k in [
        "daemonset",
        "clusterrole",
        "serviceaccount",
        "configmap",
        "secret",
        "service/",
    ] {
        assert!(
            text.contains(&format!("passed for resource {k}")),
            "{k}: {text}"
        );
    }
}

#[test]
fn prometheus_rules_pass_promtool() {
    if !Path::new("/usr/bin/promtool").exists() {
        skip(
            "prometheus_rules_pass_promtool",
            "promtool not installed (Debian prometheus)",
        );
        return;
    }
    let docs = manifests();
    let spec = &find(&docs, "PrometheusRule")["spec"];
    let f = std::env::temp_dir().join(format!("sensor-prom-rules-{}.yaml", std::process::id()));
    std::fs::write(&f, serde_yaml_ng::to_string(spec).unwrap()).unwrap();
    let out = Command::new("/usr/bin/promtool")
        .args(["check", "rules"])
        .arg(&f)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&f);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("11 rules found"), "{text}");
    // Every metric the alerts use is one the sensor exports.
    let rules = serde_yaml_ng::to_string(spec).unwrap();
    for m in [
        "gpu_sensor_last_event_timestamp_seconds",
        "gpu_sensor_kernel_ring_drops_total",
        "gpu_sensor_user_queue_drops_total",
        "gpu_sensor_rule_reloads_total",
        "gpu_sensor_component_failures_total",
        "gpu_sensor_component_up",
        "gpu_sensor_spool_oldest_age_seconds",
        "gpu_sensor_spool_depth",
        "gpu_sensor_webhook_deliveries_total",
        "gpu_sensor_spool_evicted_total",
    ] {
        assert!(rules.contains(m), "{m}");
    }
}

/// `promtool test rules`: every alert of the PrometheusRule fires on a bad series and stays
/// silent on a good one (deploy/prometheus/rules.test.yaml).
#[test]
fn prometheus_alerts_fire_on_bad_series_and_not_on_good() {
    let docs = manifests();
    let spec = &find(&docs, "PrometheusRule")["spec"];
    let d = std::env::temp_dir().join(format!("sensor-promtest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("rules.yaml"),
        serde_yaml_ng::to_string(spec).unwrap(),
    )
    .unwrap();
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/rules.test.yaml");
    std::fs::copy(&tests, d.join("rules.test.yaml")).unwrap();
    let out = Command::new("/usr/bin/promtool")
        .args(["test", "rules", "rules.test.yaml"])
        .current_dir(&d)
        .output()
        .expect("promtool (Debian prometheus, installed by scripts/setup.sh)");
    let _ = std::fs::remove_dir_all(&d);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every alert in the rule file has a test.
    let tested = std::fs::read_to_string(&tests).unwrap();
    let rules = serde_yaml_ng::to_string(spec).unwrap();
    for l in rules.lines() {
        if let Some(name) = l
            .trim()
            .strip_prefix("- alert: ")
            .or(l.trim().strip_prefix("alert: "))
        {
            assert!(
                tested.contains(&format!("alertname: {name},")),
                "{name} has no promtool test"
            );
        }
    }
}

#[test]
fn configmap_config_is_valid_and_objects_are_wired() {
    let docs = manifests();
    let cm = docs
        .iter()
        .find(|(_, d)| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "gpu-sensor-config")
        .map(|(_, d)| d)
        .expect("config map");
    let toml = cm["data"]["sensor.toml"].as_str().unwrap();
    let f = std::env::temp_dir().join(format!("sensor-deploy-{}.toml", std::process::id()));
    std::fs::write(&f, toml).unwrap();
    let out = Command::new(sensor_bin())
        .arg("check-config")
        .arg(&f)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&f);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ds = find(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], Value::Bool(true));
    assert_eq!(
        pod["serviceAccountName"],
        find(&docs, "ServiceAccount")["metadata"]["name"]
    );
    let c = &pod["containers"][0];
    let caps: Vec<&str> = c["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        caps,
        ["BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE", "SYS_RESOURCE"]
    );
    assert!(
        c["securityContext"]["privileged"].is_null(),
        "privileged is only the documented fallback"
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let svc = find(&docs, "Service");
    let sm = find(&docs, "ServiceMonitor");
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"],
        svc["metadata"]["labels"]
    );
    assert_eq!(
        sm["spec"]["endpoints"][0]["port"],
        svc["spec"]["ports"][0]["name"]
    );
    assert_eq!(
        svc["spec"]["ports"][0]["port"],
        c["ports"][0]["containerPort"]
    );
    let role = find(&docs, "ClusterRole");
    let verbs: Vec<&str> = role["rules"][0]["verbs"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(verbs, ["get", "list", "watch"], "pods get/list/watch only");
}
