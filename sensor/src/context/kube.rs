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
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodMeta {
    pub name: String,
    pub namespace: String,
    pub node: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
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
    #[serde(default, rename = "resourceVersion")]
    resource_version: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct PodSpec {
    #[serde(default, rename = "nodeName")]
    node_name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Pod {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: PodSpec,
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
    object: Pod,
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

    fn apply(&self, p: Pod, delete: bool) {
        // A panic elsewhere while writing leaves a consistent map (single inserts/removes).
        let mut m = self.0.write().unwrap_or_else(|p| p.into_inner());
        if delete {
            m.remove(&p.metadata.uid);
            return;
        }
        m.insert(
            p.metadata.uid,
            PodMeta {
                name: p.metadata.name,
                namespace: p.metadata.namespace,
                node: p.spec.node_name,
                labels: p.metadata.labels,
                annotations: p.metadata.annotations,
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
        if let Some(rv) = watch_from {
            q.push(format!("watch=1&resourceVersion={rv}&timeoutSeconds=300"));
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
    fn watch(&self, pods: &Pods, rv: &str) -> Result<String, KubeError> {
        let agent = self.agent(None)?;
        let resp = self.get(&agent, &self.url(Some(rv)))?;
        let mut last = rv.to_string();
        for line in std::io::BufReader::new(resp.into_body().into_reader()).lines() {
            let line = line.map_err(|source| KubeError::Io {
                path: "watch stream".into(),
                source,
            })?;
            let Ok(ev) = serde_json::from_str::<WatchEvent>(&line) else {
                continue;
            };
            if let Some(v) = &ev.object.metadata.resource_version {
                last = v.clone();
            }
            match ev.kind.as_str() {
                "ADDED" | "MODIFIED" => pods.apply(ev.object, false),
                "DELETED" => pods.apply(ev.object, true),
                _ => {}
            }
        }
        Ok(last)
    }
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
        loop {
            let r = match &rv {
                Some(v) => ep.watch(&p, v).map(Some),
                None => ep.list(&p),
            };
            match r {
                Ok(v) => rv = v,
                Err(e) => {
                    tracing::warn!("Kubernetes API: {e}");
                    rv = None; // re-list after an error
                }
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    });
    pods
}
