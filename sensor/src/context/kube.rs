//! Pod metadata from the Kubernetes API: the pods of this node (list, then watch), so alerts
//! carry pod name, namespace, labels, node and configured annotations next to the pod UID taken
//! from the cgroup path. In a cluster the API address, service-account token and CA come from
//! the standard in-cluster locations; `context.kube_api` overrides the address (tests point it
//! at a local fake over plain HTTP). Without an API the sensor says so once and keeps ids only.

use std::{
    collections::{BTreeMap, HashMap},
    io::BufRead,
    sync::{Arc, RwLock},
    time::Duration,
};

use serde::Deserialize;
use thiserror::Error;

/// In-cluster service-account files (Kubernetes "Accessing the API from a Pod").
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[derive(Debug, Error)]
pub enum KubeError {
    #[error("HTTP: {0}")]
    Http(#[from] ureq::Error),
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The watch's resourceVersion is too old (HTTP 410, or an `ERROR` event with code 410
    /// inside the stream): list again.
    #[error("watch expired (410 Gone): re-listing")]
    Expired,
    #[error("watch error event: {0}")]
    WatchError(String),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodMeta {
    pub name: String,
    pub namespace: String,
    pub node: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Container runtime id (without the `containerd://` scheme) → (name, image).
    pub containers: HashMap<String, (String, String)>,
    /// The owning workload: the controller owner, a ReplicaSet resolved to its Deployment.
    pub workload: Option<crate::event::Workload>,
}

#[derive(Debug, Deserialize)]
struct ObjectMeta {
    uid: String,
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default, rename = "ownerReferences")]
    owner_references: Vec<OwnerRef>,
}

#[derive(Debug, Deserialize)]
struct OwnerRef {
    kind: String,
    name: String,
    #[serde(default)]
    controller: bool,
}

#[derive(Debug, Deserialize, Default)]
struct ContainerSpec {
    name: String,
    #[serde(default)]
    image: String,
}

#[derive(Debug, Deserialize, Default)]
struct PodSpec {
    #[serde(default, rename = "nodeName")]
    node_name: Option<String>,
    #[serde(default)]
    containers: Vec<ContainerSpec>,
    #[serde(default, rename = "initContainers")]
    init_containers: Vec<ContainerSpec>,
}

#[derive(Debug, Deserialize, Default)]
struct ContainerStatus {
    name: String,
    #[serde(default)]
    image: String,
    #[serde(default, rename = "containerID")]
    container_id: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct PodStatus {
    #[serde(default, rename = "containerStatuses")]
    container_statuses: Vec<ContainerStatus>,
    #[serde(default, rename = "initContainerStatuses")]
    init_container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Deserialize)]
struct Pod {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: PodSpec,
    #[serde(default)]
    status: PodStatus,
}

/// The owning workload of a pod: its controller owner reference, with a ReplicaSet that a
/// Deployment made (its name is `<deployment>-<pod-template-hash>`) resolved to the Deployment.
fn workload_of(m: &ObjectMeta) -> Option<crate::event::Workload> {
    let o = m
        .owner_references
        .iter()
        .find(|o| o.controller)
        .or(m.owner_references.first())?;
    if o.kind == "ReplicaSet" {
        if let Some(h) = m.labels.get("pod-template-hash") {
            if let Some(d) = o.name.strip_suffix(&format!("-{h}")) {
                return Some(crate::event::Workload {
                    kind: "Deployment".into(),
                    name: d.to_string(),
                });
            }
        }
    }
    Some(crate::event::Workload {
        kind: o.kind.clone(),
        name: o.name.clone(),
    })
}

#[derive(Debug, Deserialize)]
struct ListMeta {
    #[serde(default, rename = "resourceVersion")]
    resource_version: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PodList {
    metadata: ListMeta,
    items: Vec<Pod>,
}

#[derive(Debug, Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

/// Pod UID → metadata, shared with the pipeline.
#[derive(Debug, Clone, Default)]
pub struct Pods(Arc<RwLock<HashMap<String, PodMeta>>>);

impl Pods {
    pub fn get(&self, uid: &str) -> Option<PodMeta> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .cloned()
    }

    /// Name and image of the container with runtime id `id` in pod `uid`.
    pub fn container(&self, uid: &str, id: &str) -> Option<(String, String)> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)?
            .containers
            .get(id)
            .cloned()
    }

    fn apply(&self, p: Pod, delete: bool) {
        // A panic elsewhere while writing leaves a consistent map (single inserts/removes).
        let mut m = self.0.write().unwrap_or_else(|p| p.into_inner());
        if delete {
            m.remove(&p.metadata.uid);
            return;
        }
        let images: HashMap<&str, &str> = p
            .spec
            .containers
            .iter()
            .chain(&p.spec.init_containers)
            .map(|c| (c.name.as_str(), c.image.as_str()))
            .collect();
        let containers = p
            .status
            .container_statuses
            .iter()
            .chain(&p.status.init_container_statuses)
            .filter_map(|c| {
                let id = c.container_id.as_deref()?;
                let id = id.split_once("://").map_or(id, |(_, i)| i);
                let image = if c.image.is_empty() {
                    images.get(c.name.as_str()).copied().unwrap_or("")
                } else {
                    c.image.as_str()
                };
                Some((id.to_string(), (c.name.clone(), image.to_string())))
            })
            .collect();
        let workload = workload_of(&p.metadata);
        m.insert(
            p.metadata.uid,
            PodMeta {
                name: p.metadata.name,
                namespace: p.metadata.namespace,
                node: p.spec.node_name,
                labels: p.metadata.labels,
                annotations: p.metadata.annotations,
                containers,
                workload,
            },
        );
    }
}

/// Where and how to reach the API.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub base: String,
    pub token: Option<String>,
    pub ca_pem: Option<Vec<u8>>,
    pub node: Option<String>,
}

impl Endpoint {
    /// `kube_api` from the config, else the in-cluster environment; `None` outside a cluster.
    pub fn discover(kube_api: Option<&str>, node: Option<&str>) -> Option<Endpoint> {
        let read = |f: &str| std::fs::read(format!("{SA_DIR}/{f}")).ok();
        let base = match kube_api {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => {
                let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
                let port =
                    std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host
                };
                format!("https://{host}:{port}")
            }
        };
        let node = node
            .map(str::to_string)
            .or_else(|| std::env::var("NODE_NAME").ok())
            .filter(|n| !n.is_empty());
        Some(Endpoint {
            base,
            token: read("token").map(|t| String::from_utf8_lossy(&t).trim().to_string()),
            ca_pem: read("ca.crt"),
            node,
        })
    }

    fn agent(&self, timeout: Option<Duration>) -> Result<ureq::Agent, KubeError> {
        let mut b = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(timeout);
        if let Some(pem) = &self.ca_pem {
            let cert = ureq::tls::Certificate::from_pem(pem)?.to_owned();
            b = b.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&[cert]))
                    .build(),
            );
        }
        Ok(b.build().into())
    }

    fn url(&self, watch_from: Option<&str>) -> String {
        let mut u = format!("{}/api/v1/pods", self.base);
        let mut q = vec![];
        if let Some(n) = &self.node {
            q.push(format!("fieldSelector=spec.nodeName%3D{n}"));
        }
        match watch_from {
            // Bookmarks keep the resourceVersion fresh on a quiet node, so a re-watch after
            // the 5-minute timeout does not start from an expired version.
            Some(rv) => q.push(format!(
                "watch=1&allowWatchBookmarks=true&resourceVersion={rv}&timeoutSeconds=300"
            )),
            // resourceVersion=0: served from the API server's watch cache, not from etcd (every
            // node re-lists at once after an API outage).
            None => q.push("resourceVersion=0".into()),
        }
        if !q.is_empty() {
            u.push('?');
            u.push_str(&q.join("&"));
        }
        u
    }

    fn get(
        &self,
        agent: &ureq::Agent,
        url: &str,
    ) -> Result<ureq::http::Response<ureq::Body>, KubeError> {
        let mut r = agent.get(url);
        if let Some(t) = &self.token {
            r = r.header("Authorization", format!("Bearer {t}"));
        }
        Ok(r.call()?)
    }

    /// Lists the pods; returns the list's resourceVersion.
    fn list(&self, pods: &Pods) -> Result<Option<String>, KubeError> {
        let agent = self.agent(Some(Duration::from_secs(30)))?;
        let list: PodList = self.get(&agent, &self.url(None))?.into_body().read_json()?;
        let n = list.items.len();
        if let Ok(mut m) = pods.0.write() {
            m.clear();
        }
        for p in list.items {
            pods.apply(p, false);
        }
        tracing::debug!(pods = n, "Kubernetes pods listed");
        Ok(list.metadata.resource_version)
    }

    /// Follows a watch until the server ends it; returns the last resourceVersion seen.
    /// A 410 (as the response, or as an `ERROR` event in the stream) is [`KubeError::Expired`].
    fn watch(&self, pods: &Pods, rv: &str) -> Result<String, KubeError> {
        let agent = self.agent(None)?;
        let resp = match self.get(&agent, &self.url(Some(rv))) {
            Err(KubeError::Http(ureq::Error::StatusCode(410))) => return Err(KubeError::Expired),
            r => r?,
        };
        let mut last = rv.to_string();
        for line in std::io::BufReader::new(resp.into_body().into_reader()).lines() {
            let line = line.map_err(|source| KubeError::Io {
                path: "watch stream".into(),
                source,
            })?;
            let Ok(ev) = serde_json::from_str::<WatchEvent>(&line) else {
                tracing::debug!("Kubernetes watch: unparsable line skipped");
                continue;
            };
            if ev.kind == "ERROR" {
                // A metav1.Status: 410 Gone (Expired) means list again.
                let code = ev.object.get("code").and_then(|c| c.as_u64());
                if code == Some(410) {
                    return Err(KubeError::Expired);
                }
                let msg = ev
                    .object
                    .get("message")
                    .and_then(|m| m.as_str())
                    .unwrap_or("")
                    .to_string();
                return Err(KubeError::WatchError(format!("code {code:?}: {msg}")));
            }
            if let Some(v) = ev
                .object
                .pointer("/metadata/resourceVersion")
                .and_then(|v| v.as_str())
            {
                last = v.to_string();
            }
            match ev.kind.as_str() {
                "ADDED" | "MODIFIED" | "DELETED" => {
                    match serde_json::from_value::<Pod>(ev.object) {
                        Ok(p) => pods.apply(p, ev.kind == "DELETED"),
                        Err(e) => tracing::debug!("Kubernetes watch: pod not understood: {e}"),
                    }
                }
                // BOOKMARK: only the resourceVersion.
                _ => {}
            }
        }
        Ok(last)
    }
}

/// Waits before the next try: exponential from 1 s to 60 s, with up to 50 % jitter.
fn backoff(failures: u32) -> Duration {
    let base = Duration::from_secs(1u64 << failures.min(6)).min(Duration::from_secs(60));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos()) as u64;
    base + Duration::from_millis(nanos % (base.as_millis() as u64 / 2 + 1))
}

/// Starts the list/watch thread. The first list is done before returning (so pods known at
/// start-up are there for the first events), bounded by its timeout.
pub fn spawn(health: &crate::health::Health, ep: Endpoint) -> Pods {
    let pods = Pods::default();
    let first = ep.list(&pods);
    match &first {
        Ok(_) => tracing::info!(api = %ep.base, node = ?ep.node, "Kubernetes pod metadata enabled"),
        Err(e) => tracing::warn!(api = %ep.base, "Kubernetes API: {e}; retrying in the background"),
    }
    let p = pods.clone();
    let first = std::sync::Mutex::new(first.ok().flatten());
    crate::health::supervise_thread(health, "pod_watch", move || {
        // After a restart: list again.
        let mut rv = crate::health::lock(&first).take();
        let mut failures = 0u32;
        loop {
            let watching = rv.is_some();
            let t0 = std::time::Instant::now();
            let r = match &rv {
                Some(v) => ep.watch(&p, v).map(Some),
                None => ep.list(&p),
            };
            match r {
                // A watch that ended normally (its timeout) goes on from where it was at once;
                // one the server ends at once is retried with backoff (no busy loop).
                Ok(v) => {
                    rv = v;
                    if watching && t0.elapsed() < Duration::from_secs(1) {
                        std::thread::sleep(backoff(failures));
                        failures = failures.saturating_add(1);
                    } else {
                        failures = 0;
                    }
                }
                Err(KubeError::Expired) => {
                    tracing::info!("Kubernetes watch expired (410): re-listing");
                    rv = None;
                    failures = 0;
                    // A short jitter: every node's sensor gets the same 410 at once.
                    std::thread::sleep(backoff(0) / 4);
                }
                Err(e) => {
                    tracing::warn!("Kubernetes API: {e}");
                    rv = None; // re-list after an error
                    std::thread::sleep(backoff(failures));
                    failures = failures.saturating_add(1);
                }
            }
        }
    });
    pods
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(owner: Option<(&str, &str)>, hash: Option<&str>) -> ObjectMeta {
        let mut v = serde_json::json!({"uid": "u", "name": "p", "labels": {}});
        if let Some(h) = hash {
            v["labels"]["pod-template-hash"] = h.into();
        }
        if let Some((k, n)) = owner {
            v["ownerReferences"] = serde_json::json!([{"kind": k, "name": n, "controller": true}]);
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn owning_workloads() {
        let w = |m: ObjectMeta| workload_of(&m).map(|w| (w.kind, w.name));
        assert_eq!(
            w(meta(Some(("ReplicaSet", "web-5d8f7")), Some("5d8f7"))),
            Some(("Deployment".into(), "web".into()))
        );
        // A bare ReplicaSet (no template hash) stays one.
        assert_eq!(
            w(meta(Some(("ReplicaSet", "rs-1")), None)),
            Some(("ReplicaSet".into(), "rs-1".into()))
        );
        for k in [
            "Job",
            "StatefulSet",
            "PyTorchJob",
            "RayCluster",
            "DaemonSet",
        ] {
            assert_eq!(w(meta(Some((k, "x")), None)), Some((k.into(), "x".into())));
        }
        assert_eq!(w(meta(None, None)), None);
    }

    #[test]
    fn urls_list_from_the_cache_and_watch_with_bookmarks() {
        let ep = Endpoint {
            base: "http://a".into(),
            token: None,
            ca_pem: None,
            node: Some("n1".into()),
        };
        assert_eq!(
            ep.url(None),
            "http://a/api/v1/pods?fieldSelector=spec.nodeName%3Dn1&resourceVersion=0"
        );
        assert!(ep
            .url(Some("7"))
            .ends_with("watch=1&allowWatchBookmarks=true&resourceVersion=7&timeoutSeconds=300"));
    }

    #[test]
    fn backoff_grows_to_a_minute_with_jitter() {
        assert!(backoff(0) >= Duration::from_secs(1) && backoff(0) <= Duration::from_millis(1500));
        assert!(backoff(10) >= Duration::from_secs(60) && backoff(10) <= Duration::from_secs(90));
    }
}
