//! The deployment in deploy/kubernetes: a kustomize base and overlays. Every overlay is rendered
//! with `kubectl kustomize` and validated against the Kubernetes schemas of every minor version
//! from 1.27 to the newest one kubernetes-validate ships (`--strict`); the PrometheusRule groups
//! are checked with `promtool`, the ConfigMap's sensor.toml with `sensor check-config`; the
//! wiring between objects and what each overlay changes are asserted. kubectl (Debian's
//! kubernetes-client), kubernetes-validate (PyPI) and promtool (Debian's prometheus) are
//! installed by scripts/setup.sh: a missing one fails these tests.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use sensor_tests::sensor_bin;
use serde::Deserialize;
use serde_yaml_ng::Value;

/// Every directory under deploy/kubernetes/overlays.
const OVERLAYS: [&str; 4] = [
    "apparmor-field",
    "default",
    "gpu-nodes-only",
    "kube-prometheus-stack",
];
/// The oldest Kubernetes minor version the manifests support.
const OLDEST_MINOR: u32 = 27;
const NAMESPACE: &str = "gpu-sensor";
const APPARMOR_ANNOTATION: &str = "container.apparmor.security.beta.kubernetes.io/sensor";

fn kube_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// The oldest minor version an overlay supports (the appArmorProfile field is 1.30's).
fn oldest_minor(overlay: &str) -> u32 {
    if overlay == "apparmor-field" {
        30
    } else {
        OLDEST_MINOR
    }
}

/// `kubectl kustomize deploy/kubernetes/<dir>`: the rendered YAML stream.
fn render_text(dir: &str) -> String {
    let path = kube_dir().join(dir);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&path)
        .output()
        .expect("kubectl (Debian kubernetes-client, installed by scripts/setup.sh)");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn parse(what: &str, text: &str) -> Vec<Value> {
    let mut out = vec![];
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{what}: {e}"));
        if !v.is_null() {
            out.push(v);
        }
    }
    out
}

fn render(dir: &str) -> Vec<Value> {
    parse(dir, &render_text(dir))
}

fn overlay(name: &str) -> Vec<Value> {
    render(&format!("overlays/{name}"))
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn find_mut<'a>(docs: &'a mut [Value], kind: &str) -> &'a mut Value {
    docs.iter_mut()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// `kind/name` of an object.
fn id(d: &Value) -> String {
    format!(
        "{}/{}",
        d["kind"].as_str().unwrap(),
        d["metadata"]["name"].as_str().unwrap()
    )
}

/// Whether `key` is a mapping key anywhere in `v`.
fn has_key(v: &Value, key: &str) -> bool {
    match v {
        Value::Mapping(m) => m.iter().any(|(k, x)| k == key || has_key(x, key)),
        Value::Sequence(s) => s.iter().any(|x| has_key(x, key)),
        Value::Tagged(t) => has_key(&t.value, key),
        _ => false,
    }
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect()
}

/// The objects of `docs` whose `kind/name` differ from those in `base` (both must hold the same
/// objects).
fn changed(base: &[Value], docs: &[Value]) -> Vec<String> {
    let ids = |d: &[Value]| d.iter().map(id).collect::<BTreeSet<_>>();
    assert_eq!(ids(base), ids(docs), "the same objects");
    docs.iter()
        .filter(|d| !base.iter().any(|b| b == *d))
        .map(id)
        .collect()
}

/// The minor versions of Kubernetes whose strict schemas kubernetes-validate ships.
fn bundled_minors() -> BTreeSet<u32> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, kubernetes_validate as k; \
             print('\\n'.join(os.listdir(os.path.join(os.path.dirname(k.__file__), 'kubernetes-json-schema'))))",
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "kubernetes-validate (PyPI, installed by scripts/setup.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let minors = text
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("v1.")?
                .strip_suffix(".0-local-strict")
        })
        .filter_map(|m| m.parse().ok())
        .collect();
    minors
}

/// `kubernetes-validate --strict` for Kubernetes 1.`minor` on `paths`: success, and its output.
fn validate(minor: u32, paths: &[&PathBuf]) -> (bool, String) {
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-k"])
        .arg(format!("1.{minor}"))
        .args(paths)
        .output()
        .expect("python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Every built-in object of `docs` (validated from `path`) passed for 1.`minor`, and only the
/// two prometheus-operator CRDs (no bundled schema; checked with promtool and structurally
/// below) were not checked.
fn all_checked(text: &str, path: &Path, docs: &[Value], minor: u32) {
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap();
        if doc["apiVersion"] == "monitoring.coreos.com/v1" {
            assert!(
                ["ServiceMonitor", "PrometheusRule"].contains(&kind),
                "{kind}"
            );
            continue;
        }
        let line = format!(
            "{} passed for resource {}/{} against version 1.{minor}",
            path.display(),
            kind.to_lowercase(),
            doc["metadata"]["name"].as_str().unwrap()
        );
        assert!(text.contains(&line), "{line}: {text}");
    }
    for l in text.lines().filter(|l| l.contains("Couldn't find schema")) {
        assert!(
            l.contains("kind ServiceMonitor with api version monitoring.coreos.com/v1")
                || l.contains("kind PrometheusRule with api version monitoring.coreos.com/v1"),
            "{l}"
        );
    }
}

#[test]
fn every_overlay_renders_and_changes_only_what_it_is_for() {
    let mut dirs: Vec<String> = std::fs::read_dir(kube_dir().join("overlays"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(dirs, OVERLAYS, "every overlay is tested");

    // The default overlay is the base as it is.
    let base = render("base");
    let default = overlay("default");
    assert_eq!(default, base);
    let mut kinds: Vec<&str> = base.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "ConfigMap",
            "DaemonSet",
            "Namespace",
            "PriorityClass",
            "PrometheusRule",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    );
    for (name, only) in [
        ("gpu-nodes-only", vec!["DaemonSet/gpu-sensor"]),
        ("apparmor-field", vec!["DaemonSet/gpu-sensor"]),
        (
            "kube-prometheus-stack",
            vec!["ServiceMonitor/gpu-sensor", "PrometheusRule/gpu-sensor"],
        ),
    ] {
        let mut got = changed(&default, &overlay(name));
        got.sort();
        let mut only: Vec<String> = only.into_iter().map(String::from).collect();
        only.sort();
        assert_eq!(got, only, "{name} changes only these");
    }

    // Namespaced objects are all in the sensor's namespace.
    for d in &default {
        let cluster_scoped = [
            "Namespace",
            "ClusterRole",
            "ClusterRoleBinding",
            "PriorityClass",
        ];
        if cluster_scoped.iter().any(|k| d["kind"] == *k) {
            assert!(d["metadata"]["namespace"].is_null(), "{}", id(d));
        } else {
            assert_eq!(d["metadata"]["namespace"], NAMESPACE, "{}", id(d));
        }
    }
}

#[test]
fn every_overlay_validates_for_every_supported_kubernetes_version() {
    let minors = bundled_minors();
    let newest = *minors.iter().max().expect("bundled schemas");
    assert!(
        newest >= 30,
        "kubernetes-validate ships up to 1.{newest} only"
    );
    for m in OLDEST_MINOR..=newest {
        // Else kubernetes-validate silently falls back to the previous version's schemas.
        assert!(minors.contains(&m), "no strict schemas for 1.{m}");
    }
    println!("validating for Kubernetes 1.{OLDEST_MINOR} … 1.{newest}");

    let d = std::env::temp_dir().join(format!("sensor-deploy-validate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let mut files = vec![];
    for name in OVERLAYS {
        let text = render_text(&format!("overlays/{name}"));
        let f = d.join(format!("{name}.yaml"));
        std::fs::write(&f, &text).unwrap();
        files.push((name, f, parse(name, &text)));
    }
    // Outside every kustomization, but it must be a valid object too.
    let example = kube_dir().join("secret.example.yaml");
    let example_docs = parse(
        "secret.example.yaml",
        &std::fs::read_to_string(&example).unwrap(),
    );

    for minor in OLDEST_MINOR..=newest {
        let mut paths: Vec<&PathBuf> = files
            .iter()
            .filter(|(name, _, _)| minor >= oldest_minor(name))
            .map(|(_, f, _)| f)
            .collect();
        paths.push(&example);
        let (ok, text) = validate(minor, &paths);
        assert!(ok, "1.{minor}: {text}");
        for (name, f, docs) in &files {
            if minor >= oldest_minor(name) {
                all_checked(&text, f.as_path(), docs.as_slice(), minor);
            }
        }
        all_checked(&text, example.as_path(), example_docs.as_slice(), minor);
    }
    // The apparmor-field overlay is what clusters before 1.30 reject.
    let (_, f, _) = files
        .iter()
        .find(|(n, _, _)| *n == "apparmor-field")
        .unwrap();
    let (ok, text) = validate(29, &[f]);
    assert!(!ok && text.contains("appArmorProfile"), "{text}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn secret_is_not_managed_and_config_is_not_mounted_with_subpath() {
    // Re-applying an overlay must not reset the webhook Secret: none renders it.
    for name in OVERLAYS {
        let docs = overlay(name);
        assert!(
            docs.iter().all(|d| d["kind"] != "Secret"),
            "{name} renders a Secret"
        );
        // A subPath mount never sees ConfigMap or Secret edits.
        for d in &docs {
            assert!(!has_key(d, "subPath"), "{name}: {} uses subPath", id(d));
            assert!(
                !has_key(d, "subPathExpr"),
                "{name}: {} uses subPathExpr",
                id(d)
            );
        }
        let pod = &find(&docs, "DaemonSet")["spec"]["template"]["spec"];
        let secrets: Vec<&Value> = pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter(|v| !v["secret"].is_null())
            .collect();
        assert_eq!(secrets.len(), 1, "{name}");
        assert_eq!(secrets[0]["secret"]["optional"], true, "{name}");
        assert_eq!(
            secrets[0]["secret"]["secretName"], "gpu-sensor-webhooks",
            "{name}"
        );
    }
    // The example is the Secret the volume names, and no kustomization lists it.
    let text = std::fs::read_to_string(kube_dir().join("secret.example.yaml")).unwrap();
    let example = parse("secret.example.yaml", &text);
    assert_eq!(example.len(), 1);
    assert_eq!(example[0]["kind"], "Secret");
    assert_eq!(example[0]["metadata"]["name"], "gpu-sensor-webhooks");
    assert_eq!(example[0]["metadata"]["namespace"], NAMESPACE);
    let mut kustomizations = vec![kube_dir().join("base/kustomization.yaml")];
    for name in OVERLAYS {
        kustomizations.push(kube_dir().join(format!("overlays/{name}/kustomization.yaml")));
    }
    for k in kustomizations {
        let text = std::fs::read_to_string(&k).unwrap();
        assert!(!text.contains("secret.example"), "{}", k.display());
    }
}

#[test]
fn sensor_runs_on_every_node_and_the_gpu_overlay_narrows_it() {
    for name in OVERLAYS {
        let docs = overlay(name);
        let pod = &find(&docs, "DaemonSet")["spec"]["template"]["spec"];
        // One toleration without key or effect: every taint of every node.
        let tolerations = pod["tolerations"].as_sequence().unwrap();
        assert_eq!(tolerations.len(), 1, "{name}");
        let t = tolerations[0].as_mapping().unwrap();
        assert_eq!(t.len(), 1, "{name}: {t:?}");
        assert_eq!(tolerations[0]["operator"], "Exists", "{name}");
        assert!(pod["nodeSelector"].is_null(), "{name}: nodeSelector");
        if name != "gpu-nodes-only" {
            assert!(pod["affinity"].is_null(), "{name}: affinity");
        }
    }

    let docs = overlay("gpu-nodes-only");
    let pod = &find(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"]
        .as_sequence()
        .expect("nodeSelectorTerms");
    // Terms are OR'ed: each label on its own term (expressions within a term are AND'ed).
    let mut got = vec![];
    for t in terms {
        let exprs = t["matchExpressions"].as_sequence().unwrap();
        assert_eq!(exprs.len(), 1, "{t:?}");
        let e = &exprs[0];
        let values = if e["values"].is_null() {
            vec![]
        } else {
            strs(&e["values"])
        };
        got.push((
            e["key"].as_str().unwrap(),
            e["operator"].as_str().unwrap(),
            values,
        ));
    }
    assert_eq!(
        got,
        [
            ("nvidia.com/gpu.present", "In", vec!["true"]),
            (
                "feature.node.kubernetes.io/pci-10de.present",
                "In",
                vec!["true"]
            ),
            ("cloud.google.com/gke-accelerator", "Exists", vec![]),
            ("k8s.amazonaws.com/accelerator", "Exists", vec![]),
        ]
    );
    // Nothing else of the DaemonSet changed.
    let mut ds = find(&docs, "DaemonSet").clone();
    let removed = ds["spec"]["template"]["spec"]
        .as_mapping_mut()
        .unwrap()
        .remove("affinity");
    assert!(removed.is_some());
    assert_eq!(&ds, find(&overlay("default"), "DaemonSet"));
}

#[test]
fn priority_class_is_our_own_and_the_namespace_allows_privileged_pods() {
    for name in OVERLAYS {
        let docs = overlay(name);
        let pc = find(&docs, "PriorityClass");
        let pc_name = pc["metadata"]["name"].as_str().unwrap();
        assert_eq!(pc_name, "gpu-sensor-node-critical", "{name}");
        // The highest value a user-defined class may have; never the cluster default.
        assert_eq!(pc["value"], 1_000_000_000, "{name}");
        assert_eq!(pc["globalDefault"], false, "{name}");
        assert_eq!(pc["preemptionPolicy"], "PreemptLowerPriority", "{name}");
        let pod = &find(&docs, "DaemonSet")["spec"]["template"]["spec"];
        assert_eq!(pod["priorityClassName"], pc_name, "{name}");

        // Pod Security Admission: hostPID, hostPath and added capabilities need `privileged`.
        let ns = find(&docs, "Namespace");
        assert_eq!(ns["metadata"]["name"], NAMESPACE);
        let labels = &ns["metadata"]["labels"];
        for mode in ["enforce", "audit", "warn"] {
            assert_eq!(
                labels[format!("pod-security.kubernetes.io/{mode}").as_str()],
                "privileged",
                "{name}: {mode}"
            );
            assert_eq!(
                labels[format!("pod-security.kubernetes.io/{mode}-version").as_str()],
                "latest",
                "{name}: {mode}-version"
            );
        }
    }
}

#[test]
fn apparmor_by_annotation_by_default_and_by_field_in_its_overlay() {
    for name in ["default", "gpu-nodes-only", "kube-prometheus-stack"] {
        let docs = overlay(name);
        let tmpl = &find(&docs, "DaemonSet")["spec"]["template"];
        // The annotation names the container.
        let container = tmpl["spec"]["containers"][0]["name"].as_str().unwrap();
        assert!(APPARMOR_ANNOTATION.ends_with(&format!("/{container}")));
        assert_eq!(
            tmpl["metadata"]["annotations"][APPARMOR_ANNOTATION], "unconfined",
            "{name}"
        );
        // The field is refused before 1.30.
        for d in &docs {
            assert!(!has_key(d, "appArmorProfile"), "{name}: {}", id(d));
        }
    }

    let docs = overlay("apparmor-field");
    let mut ds = find(&docs, "DaemonSet").clone();
    let tmpl = &ds["spec"]["template"];
    assert!(
        tmpl["metadata"]["annotations"][APPARMOR_ANNOTATION].is_null(),
        "the field replaces the annotation"
    );
    let sc = &tmpl["spec"]["containers"][0]["securityContext"];
    assert_eq!(sc["appArmorProfile"]["type"], "Unconfined");
    assert_eq!(sc["seccompProfile"]["type"], "Unconfined");
    // Nothing else of the DaemonSet changed.
    let removed = ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]
        .as_mapping_mut()
        .unwrap()
        .remove("appArmorProfile");
    assert!(removed.is_some());
    let default = overlay("default");
    let want = find(&default, "DaemonSet");
    ds["spec"]["template"]["metadata"]["annotations"] =
        want["spec"]["template"]["metadata"]["annotations"].clone();
    assert_eq!(&ds, want);
}

#[test]
fn kube_prometheus_stack_overlay_labels_the_servicemonitor_and_rule_only() {
    let default = overlay("default");
    let mut docs = overlay("kube-prometheus-stack");
    for kind in ["ServiceMonitor", "PrometheusRule"] {
        assert_eq!(
            find(&docs, kind)["metadata"]["labels"]["release"],
            "kube-prometheus-stack",
            "{kind}"
        );
        // The label is the only change.
        let removed = find_mut(&mut docs, kind)["metadata"]["labels"]
            .as_mapping_mut()
            .unwrap()
            .remove("release");
        assert!(removed.is_some());
        assert_eq!(find(&docs, kind), find(&default, kind), "{kind}");
    }
    // On nothing else, anywhere (pod template, selectors).
    for d in &overlay("kube-prometheus-stack") {
        if d["kind"] != "ServiceMonitor" && d["kind"] != "PrometheusRule" {
            assert!(!has_key(d, "release"), "{}", id(d));
        }
    }
    for d in &default {
        assert!(!has_key(d, "release"), "{}", id(d));
    }
}

/// The `[[alerting.sinks]]` tables of a sensor.toml, each as its uncommented, trimmed lines.
fn sink_tables(toml: &str) -> Vec<Vec<&str>> {
    let mut out = vec![];
    let mut cur: Option<Vec<&str>> = None;
    for l in toml.lines() {
        let t = l.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if t.starts_with('[') && t.ends_with(']') && !t.contains('=') {
            out.extend(cur.take());
            if t == "[[alerting.sinks]]" {
                cur = Some(vec![]);
            }
            continue;
        }
        if let Some(c) = cur.as_mut() {
            c.push(t);
        }
    }
    out.extend(cur);
    out
}

/// The key of a `key = value` line.
fn toml_key(l: &str) -> &str {
    l.split('=').next().unwrap().trim()
}

#[test]
fn alertmanager_sink_posts_to_every_replica() {
    let docs = overlay("default");
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "gpu-sensor-config")
        .expect("config map");
    let toml = cm["data"]["sensor.toml"].as_str().unwrap();
    let tables = sink_tables(toml);
    let am = tables
        .iter()
        .find(|t| {
            t.iter()
                .any(|l| l.contains('=') && toml_key(l) == "kind" && l.contains("\"alertmanager\""))
        })
        .expect("an alertmanager sink");
    // Not one `url`: a Service in front of an HA set reaches one replica per request, and the
    // replicas do not forward alerts to each other.
    assert!(
        !am.iter().any(|l| l.contains('=') && toml_key(l) == "url"),
        "{am:?}"
    );
    let i = am
        .iter()
        .position(|l| l.contains('=') && toml_key(l) == "urls")
        .unwrap_or_else(|| panic!("urls: {am:?}"));
    let mut list = String::new();
    for l in &am[i..] {
        list.push_str(l);
        if l.contains(']') {
            break;
        }
    }
    let urls: Vec<&str> = list.split('"').skip(1).step_by(2).collect();
    assert!(urls.len() >= 2, "{list}");
    assert!(
        urls.iter()
            .all(|u| u.starts_with("http://") || u.starts_with("https://")),
        "{urls:?}"
    );
    assert_eq!(
        urls.iter().collect::<BTreeSet<_>>().len(),
        urls.len(),
        "distinct replicas: {urls:?}"
    );
}

#[test]
fn prometheus_rules_pass_promtool() {
    let docs = overlay("default");
    let spec = &find(&docs, "PrometheusRule")["spec"];
    let f = std::env::temp_dir().join(format!("sensor-prom-rules-{}.yaml", std::process::id()));
    std::fs::write(&f, serde_yaml_ng::to_string(spec).unwrap()).unwrap();
    let out = Command::new("/usr/bin/promtool")
        .args(["check", "rules"])
        .arg(&f)
        .output()
        .expect("promtool (Debian prometheus, installed by scripts/setup.sh)");
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
/// silent on a good one (deploy/prometheus/rules.test.yaml, which reads the groups from
/// rules.yaml beside it: they are written there from the rendered default overlay).
#[test]
fn prometheus_alerts_fire_on_bad_series_and_not_on_good() {
    let docs = overlay("default");
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

/// Where `container` mounts the volume `name`.
fn mount_path<'a>(container: &'a Value, name: &str) -> &'a str {
    container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no mount of {name}"))["mountPath"]
        .as_str()
        .unwrap()
}

/// The volume `name` of a pod spec.
fn volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

#[test]
fn configmap_config_is_valid_and_objects_are_wired() {
    let docs = overlay("default");
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "gpu-sensor-config")
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
    let caps = strs(&c["securityContext"]["capabilities"]["add"]);
    assert_eq!(
        caps,
        ["BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE", "SYS_RESOURCE"]
    );
    assert_eq!(strs(&c["securityContext"]["capabilities"]["drop"]), ["ALL"]);
    assert!(
        c["securityContext"]["privileged"].is_null(),
        "privileged is only the documented fallback"
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");

    // --config names sensor.toml inside the directory the config ConfigMap is mounted on.
    let args = strs(&c["args"]);
    let at = args
        .iter()
        .position(|a| *a == "--config")
        .expect("--config");
    let config = Path::new(args[at + 1]);
    assert_eq!(config.parent().unwrap(), Path::new(mount_path(c, "config")));
    assert_eq!(
        volume(pod, "config")["configMap"]["name"],
        cm["metadata"]["name"]
    );
    let file = config.file_name().unwrap().to_str().unwrap();
    assert!(!cm["data"][file].is_null(), "{file} in the ConfigMap");
    assert_eq!(
        volume(pod, "rules")["configMap"]["name"],
        "gpu-sensor-rules"
    );
    assert_eq!(mount_path(c, "rules"), "/etc/gpu-sensor/rules");
    assert!(toml.contains("dirs = [\"/etc/gpu-sensor/rules\"]"));
    assert_eq!(mount_path(c, "webhooks"), "/etc/gpu-sensor/secrets");
    assert!(toml.contains("spool_dir = \"/var/lib/gpu-sensor/spool\""));
    assert_eq!(mount_path(c, "spool"), "/var/lib/gpu-sensor");
    for (name, path) in [
        ("btf", "/sys/kernel/btf"),
        ("tracefs", "/sys/kernel/tracing"),
        ("cgroup", "/sys/fs/cgroup"),
        ("spool", "/var/lib/gpu-sensor"),
    ] {
        assert_eq!(volume(pod, name)["hostPath"]["path"], path, "{name}");
    }

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
    assert_eq!(
        svc["spec"]["selector"],
        ds["spec"]["template"]["metadata"]["labels"]
    );
    let role = find(&docs, "ClusterRole");
    let verbs = strs(&role["rules"][0]["verbs"]);
    assert_eq!(verbs, ["get", "list", "watch"], "pods get/list/watch only");
    assert_eq!(strs(&role["rules"][0]["resources"]), ["pods"]);
}
