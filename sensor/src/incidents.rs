//! Incidents: every rule hit (a strong alert or weighted evidence) joins the open incident of
//! its *entity* (agent episode, pod, container, or process tree). An incident is *raised* —
//! printed and sent to the sinks — when a strong rule fires or the weights of distinct evidence
//! rules reach `incidents.threshold`; it then grows (new signals, a higher severity) as one
//! incident with one id and a version, and closes after `window_secs` without new signals.
//! Each incident carries a timeline: the entity's execs, connects (5-tuple), listeners,
//! DNS/SNI, GPU sessions and their NVML profile, and the rule hits in order.

use std::collections::VecDeque;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    context::process::ProcTable,
    event::{Body, Event, Outcome, SockType},
    rules::{Alert, Severity},
};

/// Config `[incidents]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IncidentsConfig {
    /// Score at which evidence raises an incident (a strong rule counts as this much).
    pub threshold: u32,
    /// An incident closes after this many seconds without a new signal; later signals open a
    /// new one.
    pub window_secs: u64,
    /// Timeline entries kept per incident (the oldest beyond it are dropped and counted).
    pub max_timeline: usize,
    /// Open incidents (raised or not) kept; beyond it the stalest unraised ones are dropped.
    pub max_open: usize,
}

impl Default for IncidentsConfig {
    fn default() -> Self {
        IncidentsConfig {
            threshold: 100,
            window_secs: 1800,
            max_timeline: 200,
            max_open: 10_000,
        }
    }
}

impl IncidentsConfig {
    pub fn check(&self) -> Result<(), String> {
        use crate::config::{in_range, DAY};
        in_range("incidents.threshold", self.threshold as u64, 1, 1_000_000)?;
        in_range("incidents.window_secs", self.window_secs, 1, 7 * DAY)?;
        in_range(
            "incidents.max_timeline",
            self.max_timeline as u64,
            8,
            100_000,
        )?;
        in_range("incidents.max_open", self.max_open as u64, 16, 1_000_000)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityKind {
    /// An agent episode (environment variable or pod annotation).
    Episode,
    /// A Kubernetes pod (all its containers).
    Pod,
    /// A container outside a known pod.
    Container,
    /// A host process tree (see `ProcTable::tree_root`).
    ProcessTree,
    /// The sensor itself (`sensor-degraded`: events are being lost).
    Sensor,
}

/// What an incident is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    pub kind: EntityKind,
    /// Stable key of the entity (`pod:<uid>`, `tree:<pid>@<start>`, …).
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub episode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The root process of the tree (for a pod or episode: of the first signal's tree).
    pub root_pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_exe: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub root_argv: Vec<String>,
}

/// One rule's part in an incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    pub rule: String,
    /// `alert` (strong) or `evidence`.
    pub kind: String,
    pub severity: Severity,
    /// What it adds to the score (a strong rule: the threshold).
    pub weight: u32,
    pub count: u64,
    pub first_ts: String,
    pub last_ts: String,
    pub description: String,
}

/// One step of the story.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub ts: String,
    pub ts_ns: u64,
    pub pid: u32,
    pub comm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(flatten)]
    pub what: What,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum What {
    Exec {
        ppid: u32,
        argv: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stdio_peer: Option<String>,
    },
    /// A connection with its full 5-tuple (the local side matches a firewall's log line).
    Connect {
        transport: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        local_ip: Option<IpAddr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        local_port: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dst_ip: Option<IpAddr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dst_port: Option<u16>,
        result: Outcome,
    },
    Close {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dst_ip: Option<IpAddr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dst_port: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_s: Option<f64>,
    },
    Listen {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        local_ip: Option<IpAddr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        local_port: Option<u16>,
    },
    Dns {
        qname: String,
        qtype: String,
        server: IpAddr,
    },
    /// What the first bytes of a connection said.
    Payload {
        proto: String,
        transport: String,
        local_port: u16,
        dst_ip: IpAddr,
        dst_port: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    SockDup {
        fd: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dst_ip: Option<IpAddr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dst_port: Option<u16>,
    },
    TunOpen {
        path: String,
    },
    GpuSessionStart {
        gpu_minors: Vec<u32>,
        classes: Vec<String>,
    },
    GpuSessionEnd {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_s: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sm_util_mean: Option<f64>,
    },
    /// A rule hit.
    Signal {
        rule: String,
        kind: String,
        severity: Severity,
    },
}

/// NVML samples of one process on one GPU, summarised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuProfile {
    pub pid: u32,
    pub gpu_index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_bus_id: Option<String>,
    pub samples: u64,
    pub sm_util_mean: f64,
    pub sm_util_max: u32,
    pub pcie_rx_kbps_mean: f64,
    pub pcie_rx_kbps_max: u32,
    pub first_ts: String,
    pub last_ts: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Open,
    Closed,
}

/// An incident, printed as `{"kind": "incident", …}` at each version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub kind: String,
    pub id: String,
    /// Increases with every change sent out (raised, a new signal, a new severity, closed).
    pub version: u64,
    pub state: State,
    /// Whether it reached the threshold (only raised incidents are printed and sent).
    pub raised: bool,
    pub entity: Entity,
    pub first_seen: String,
    pub last_seen: String,
    #[serde(skip)]
    pub last_ns: u64,
    pub score: u32,
    pub threshold: u32,
    pub severity: Severity,
    /// The severity of the previous version when it changed (Alertmanager resolves the alert
    /// with the old severity label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_severity: Option<Severity>,
    /// The rule that best names it: the first strong rule, else the heaviest evidence.
    pub headline: String,
    pub signals: Vec<Signal>,
    pub timeline: Vec<Step>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeline_dropped: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu: Vec<GpuProfile>,
    /// The first hit of each rule, with its event, lineage and container.
    pub alerts: Vec<Alert>,
    /// Events were being lost while this incident was open (or within `window_secs` before it
    /// opened): the verdict was made on partial data. `partial_reason` says what was lost.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_reason: Option<String>,
    /// For `sensor-degraded`: the cumulative counts lost, by kernel record kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<LossCounts>,
}

/// What a degraded sensor lost (cumulative since start).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossCounts {
    pub kernel_dropped: std::collections::BTreeMap<String, u64>,
    pub user_dropped: std::collections::BTreeMap<String, u64>,
    /// Record kinds (hooks) with any loss.
    pub affected: Vec<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Incident {
    /// One line for a chat message or a page.
    pub fn summary(&self) -> String {
        let rules: Vec<&str> = self.signals.iter().map(|s| s.rule.as_str()).collect();
        if self.entity.kind == EntityKind::Sensor {
            return format!(
                "{}: {}",
                self.headline,
                self.partial_reason
                    .as_deref()
                    .unwrap_or("events are being lost")
            );
        }
        let who = match (&self.entity.namespace, &self.entity.pod) {
            (Some(ns), Some(p)) => format!("pod {ns}/{p}"),
            _ => match &self.entity.episode {
                Some(e) => format!("episode {e}"),
                None => format!(
                    "process tree of {} ({})",
                    self.entity
                        .root_exe
                        .as_deref()
                        .unwrap_or("?")
                        .rsplit('/')
                        .next()
                        .unwrap_or("?"),
                    self.entity.root_pid
                ),
            },
        };
        format!(
            "{}: {} [score {}/{}; {}]",
            self.headline,
            who,
            self.score,
            self.threshold,
            rules.join(", ")
        )
    }
}

/// Steps kept per entity before any signal (the story leading up to the first one).
const PRE_STEPS: usize = 32;
/// Entities whose recent steps are kept.
const MAX_ENTITIES: usize = 4096;
/// Alerts kept in full per incident (the first hit of each rule).
const MAX_ALERTS: usize = 16;
/// GPU profiles per incident.
const MAX_PROFILES: usize = 64;

pub struct Incidents {
    cfg: IncidentsConfig,
    /// (foldhash: the maps are looked up for every event.)
    open: foldhash::HashMap<EntityKey, Incident>,
    /// entity key → (last step ns, recent steps) for entities with no open incident.
    recent: foldhash::HashMap<EntityKey, (u64, VecDeque<Step>)>,
    last_expire_ns: u64,
    /// Incidents raised since start (metrics).
    pub raised_total: u64,
    /// The last loss of events: (ts_ns, what was lost).
    last_loss: Option<(u64, String)>,
}

/// The key of an entity's incident and recent steps (typed: the process-tree key of every
/// event outside a pod is made without formatting a string); its text is [`Entity::key`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum EntityKey {
    /// The sensor's own `sensor-degraded` incident.
    Degraded,
    Episode(String),
    Pod(String),
    /// The container id (or its cgroup path when it has none).
    Container(String),
    /// (pid, start ns) of the tree's root.
    Tree(u32, u64),
}

impl EntityKey {
    fn kind(&self) -> EntityKind {
        match self {
            EntityKey::Degraded => EntityKind::Sensor,
            EntityKey::Episode(_) => EntityKind::Episode,
            EntityKey::Pod(_) => EntityKind::Pod,
            EntityKey::Container(_) => EntityKind::Container,
            EntityKey::Tree(..) => EntityKind::ProcessTree,
        }
    }
}

impl std::fmt::Display for EntityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            EntityKey::Degraded => f.write_str("sensor:degraded"),
            EntityKey::Episode(e) => write!(f, "episode:{e}"),
            EntityKey::Pod(u) => write!(f, "pod:{u}"),
            EntityKey::Container(c) => write!(f, "container:{c}"),
            EntityKey::Tree(pid, start) => write!(f, "tree:{pid}@{start}"),
        }
    }
}

/// Who an event belongs to.
/// The kind and key of the entity an event belongs to (cheap: no copies of the root's
/// argv, and the tree is walked only for processes outside a pod or episode).
fn entity_key(ev: &Event, procs: &ProcTable, episode: Option<&str>) -> EntityKey {
    let c = ev.container.as_ref();
    if let Some(e) = episode {
        EntityKey::Episode(e.to_string())
    } else if let Some(uid) = c.and_then(|c| c.pod_uid.as_deref()) {
        EntityKey::Pod(uid.to_string())
    } else if let Some(c) = c {
        EntityKey::Container(c.id.as_deref().unwrap_or(&c.cgroup).to_string())
    } else {
        let root = procs.tree_root(ev.pid);
        EntityKey::Tree(root.0, root.1)
    }
}

/// Who an event belongs to, in full (when an incident opens).
pub fn entity_of(ev: &Event, procs: &ProcTable, episode: Option<&str>) -> Entity {
    let key = entity_key(ev, procs, episode);
    let kind = key.kind();
    let key = key.to_string();
    let root = procs.tree_root(ev.pid);
    let (root_exe, root_argv) = procs.info(root.0);
    let c = ev.container.as_ref();
    Entity {
        kind,
        key,
        episode: episode.map(str::to_string),
        namespace: c.and_then(|c| c.namespace.clone()),
        pod: c.and_then(|c| c.pod.clone()),
        container_id: c.and_then(|c| c.id.clone()),
        cgroup: c.map(|c| c.cgroup.clone()),
        root_pid: root.0,
        root_exe,
        root_argv,
    }
}

/// The timeline step an event makes, if it is part of a story.
fn step_of(ev: &Event) -> Option<What> {
    let ip = |n: &crate::event::Net| (n.dst_ip, n.dst_port);
    Some(match &ev.body {
        Body::Exec(x) => What::Exec {
            ppid: ev.ppid,
            argv: x.argv.clone(),
            stdio_peer: x.stdio.as_ref().and_then(|s| {
                s.peer_ip
                    .map(|ip| format!("{ip}:{}", s.peer_port.unwrap_or(0)))
            }),
        },
        Body::Connect(n) if n.result != Outcome::Error => What::Connect {
            transport: match n.sock_type {
                SockType::Stream => "tcp".into(),
                SockType::Dgram => "udp".into(),
                _ => format!("{:?}", n.sock_type).to_lowercase(),
            },
            local_ip: n.local_ip,
            local_port: n.local_port,
            dst_ip: ip(n).0,
            dst_port: ip(n).1,
            result: n.result,
        },
        Body::TcpClose(n) => What::Close {
            dst_ip: n.dst_ip,
            dst_port: n.dst_port,
            duration_s: n.duration_s,
        },
        Body::Listen(n) => What::Listen {
            local_ip: n.local_ip,
            local_port: n.local_port,
        },
        Body::DnsQuery(q) => What::Dns {
            qname: q.qname.clone(),
            qtype: q.qtype_name.clone(),
            server: q.server,
        },
        Body::NetPayload(p) => What::Payload {
            proto: serde_json::to_value(p.app.proto)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            transport: serde_json::to_value(p.transport)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            local_port: p.local_port,
            dst_ip: p.dst_ip,
            dst_port: p.dst_port,
            name: p.app.sni.clone().or_else(|| p.app.http_host.clone()),
            detail: p
                .app
                .ssh_banner
                .clone()
                .or_else(|| p.app.rpc_method.clone())
                .or_else(|| p.app.http_request.clone()),
        },
        Body::SockDup(n) => What::SockDup {
            fd: n.fd,
            dst_ip: n.dst_ip,
            dst_port: n.dst_port,
        },
        Body::TunOpen(o) => What::TunOpen {
            path: o.path.clone(),
        },
        Body::GpuSessionStart(s) => What::GpuSessionStart {
            gpu_minors: s.gpu_minors.clone(),
            classes: s.classes.clone(),
        },
        Body::GpuSessionEnd(s) => What::GpuSessionEnd {
            duration_s: s.duration_s,
            sm_util_mean: s.sm_util_mean,
        },
        _ => return None,
    })
}

fn step(ev: &Event, what: What) -> Step {
    Step {
        ts: ev.ts.clone(),
        ts_ns: ev.ts_ns,
        pid: ev.pid,
        comm: ev.comm.clone(),
        exe: ev.exe.clone(),
        what,
    }
}

impl Incidents {
    pub fn new(cfg: IncidentsConfig) -> Incidents {
        Incidents {
            cfg,
            open: Default::default(),
            recent: Default::default(),
            last_expire_ns: 0,
            raised_total: 0,
            last_loss: None,
        }
    }

    /// Events were lost (new drops at `ts_ns`): open incidents and those opened within
    /// `window_secs` are marked partial, and the sensor's own `sensor-degraded` incident is
    /// raised or updated; returns its new version for the sinks.
    pub fn loss(&mut self, ts: &str, ts_ns: u64, counts: LossCounts) -> Incident {
        let what = format!(
            "events lost at {ts}: kernel {}, user {} ({})",
            counts.kernel_dropped.values().sum::<u64>(),
            counts.user_dropped.values().sum::<u64>(),
            counts.affected.join(", ")
        );
        for i in self.open.values_mut() {
            if i.entity.kind != EntityKind::Sensor {
                i.partial = true;
                i.partial_reason = Some(what.clone());
            }
        }
        self.last_loss = Some((ts_ns, what.clone()));
        let threshold = self.cfg.threshold;
        let inc = self.open.entry(EntityKey::Degraded).or_insert_with(|| {
            let mut h = Sha256::new();
            h.update(EntityKey::Degraded.to_string().as_bytes());
            h.update(ts_ns.to_le_bytes());
            h.update(std::process::id().to_le_bytes());
            Incident {
                kind: "incident".into(),
                id: crate::hex(&h.finalize()[..8]),
                version: 0,
                state: State::Open,
                raised: true,
                entity: Entity {
                    kind: EntityKind::Sensor,
                    key: "sensor".into(),
                    episode: None,
                    namespace: None,
                    pod: None,
                    container_id: None,
                    cgroup: None,
                    root_pid: std::process::id(),
                    root_exe: std::env::current_exe()
                        .ok()
                        .map(|p| p.display().to_string()),
                    root_argv: vec![],
                },
                first_seen: ts.to_string(),
                last_seen: ts.to_string(),
                last_ns: ts_ns,
                score: threshold,
                threshold,
                severity: Severity::High,
                previous_severity: None,
                headline: "sensor-degraded".into(),
                signals: vec![Signal {
                    rule: "sensor-degraded".into(),
                    kind: "alert".into(),
                    severity: Severity::High,
                    weight: threshold,
                    count: 0,
                    first_ts: ts.to_string(),
                    last_ts: ts.to_string(),
                    description: "the sensor is losing events: verdicts are made on partial data"
                        .into(),
                }],
                timeline: vec![],
                timeline_dropped: 0,
                gpu: vec![],
                alerts: vec![],
                partial: true,
                partial_reason: None,
                loss: None,
            }
        });
        if inc.version == 0 {
            self.raised_total += 1;
        }
        inc.version += 1;
        inc.last_seen = ts.to_string();
        inc.last_ns = ts_ns;
        inc.signals[0].count += 1;
        inc.signals[0].last_ts = ts.to_string();
        inc.partial_reason = Some(what);
        inc.loss = Some(counts);
        inc.clone()
    }

    /// What was lost recently enough to taint a verdict made now.
    fn recent_loss(&self, now_ns: u64) -> Option<&str> {
        self.last_loss
            .as_ref()
            .filter(|(t, _)| now_ns.saturating_sub(*t) <= self.cfg.window_secs * 1_000_000_000)
            .map(|(_, w)| w.as_str())
    }

    /// Open incidents that were raised (the `/incidents` endpoint and `sensor incidents`).
    pub fn raised(&self) -> impl Iterator<Item = &Incident> {
        self.open.values().filter(|i| i.raised)
    }

    /// Open incidents, raised or still gathering evidence.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    fn push_step(&mut self, key: EntityKey, s: Step) {
        if let Some(i) = self.open.get_mut(&key) {
            if i.timeline.len() >= self.cfg.max_timeline {
                i.timeline.remove(0);
                i.timeline_dropped += 1;
            }
            i.timeline.push(s);
            return;
        }
        if self.recent.len() >= MAX_ENTITIES && !self.recent.contains_key(&key) {
            // Forget the entities that were quiet longest (half of them).
            let mut ts: Vec<u64> = self.recent.values().map(|r| r.0).collect();
            ts.sort_unstable();
            let cut = ts[ts.len() / 2];
            self.recent.retain(|_, r| r.0 > cut);
        }
        let r = self
            .recent
            .entry(key)
            .or_insert_with(|| (0, VecDeque::new()));
        r.0 = s.ts_ns;
        if r.1.len() >= PRE_STEPS {
            r.1.pop_front();
        }
        r.1.push_back(s);
    }

    /// Records what `ev` adds to its entity's story (timeline steps, the GPU profile).
    pub fn observe(&mut self, ev: &Event, procs: &ProcTable, episode: Option<&str>) {
        if let Body::GpuUsage(u) = &ev.body {
            // Profiles only for entities with an incident: samples are frequent.
            let key = entity_key(ev, procs, episode);
            if let Some(i) = self.open.get_mut(&key) {
                let p = match i
                    .gpu
                    .iter_mut()
                    .position(|p| p.pid == ev.pid && p.gpu_index == u.gpu_index)
                {
                    Some(k) => &mut i.gpu[k],
                    None if i.gpu.len() < MAX_PROFILES => {
                        i.gpu.push(GpuProfile {
                            pid: ev.pid,
                            gpu_index: u.gpu_index,
                            gpu_uuid: u.gpu_uuid.clone(),
                            pci_bus_id: u.pci_bus_id.clone(),
                            samples: 0,
                            sm_util_mean: 0.0,
                            sm_util_max: 0,
                            pcie_rx_kbps_mean: 0.0,
                            pcie_rx_kbps_max: 0,
                            first_ts: ev.ts.clone(),
                            last_ts: ev.ts.clone(),
                        });
                        i.gpu.last_mut().unwrap()
                    }
                    None => return,
                };
                let n = p.samples as f64;
                p.sm_util_mean = (p.sm_util_mean * n + u.sm_util as f64) / (n + 1.0);
                p.pcie_rx_kbps_mean = (p.pcie_rx_kbps_mean * n + u.pcie_rx_kbps as f64) / (n + 1.0);
                p.sm_util_max = p.sm_util_max.max(u.sm_util);
                p.pcie_rx_kbps_max = p.pcie_rx_kbps_max.max(u.pcie_rx_kbps);
                p.samples += 1;
                p.last_ts = ev.ts.clone();
            }
            return;
        }
        let Some(what) = step_of(ev) else { return };
        let key = entity_key(ev, procs, episode);
        self.push_step(key, step(ev, what));
    }

    /// Adds a rule hit to its entity's incident (opening one if needed), sets `a.incident`,
    /// and returns the incident when it was raised or changed in a way on-call must see.
    pub fn add(
        &mut self,
        a: &mut Alert,
        procs: &ProcTable,
        episode: Option<&str>,
    ) -> Option<Incident> {
        let ev = &a.event;
        let key = entity_key(ev, procs, episode);
        let threshold = self.cfg.threshold;
        if !self.open.contains_key(&key) {
            if self.open.len() >= self.cfg.max_open {
                self.evict();
            }
            let mut h = Sha256::new();
            h.update(key.to_string().as_bytes());
            h.update(ev.ts_ns.to_le_bytes());
            h.update(std::process::id().to_le_bytes());
            let id = crate::hex(&h.finalize()[..8]);
            let pre = self.recent.remove(&key).map(|r| r.1).unwrap_or_default();
            let partial = self.recent_loss(ev.ts_ns).map(str::to_string);
            self.open.insert(
                key.clone(),
                Incident {
                    kind: "incident".into(),
                    id,
                    version: 0,
                    state: State::Open,
                    raised: false,
                    entity: entity_of(ev, procs, episode),
                    first_seen: a.ts.clone(),
                    last_seen: a.ts.clone(),
                    last_ns: ev.ts_ns,
                    score: 0,
                    threshold,
                    severity: Severity::Info,
                    previous_severity: None,
                    headline: a.rule.clone(),
                    signals: vec![],
                    timeline: pre.into_iter().collect(),
                    timeline_dropped: 0,
                    gpu: vec![],
                    alerts: vec![],
                    partial: partial.is_some(),
                    partial_reason: partial,
                    loss: None,
                },
            );
        }
        let inc = self.open.get_mut(&key)?;
        a.incident = Some(inc.id.clone());
        inc.last_seen = a.ts.clone();
        inc.last_ns = inc.last_ns.max(ev.ts_ns);
        let strong = a.weight.is_none();
        let weight = a.weight.unwrap_or(threshold);
        let mut changed = false;
        match inc.signals.iter_mut().find(|s| s.rule == a.rule) {
            Some(s) => {
                s.count += 1;
                s.last_ts = a.ts.clone();
                if a.severity > s.severity {
                    s.severity = a.severity;
                    changed = true;
                }
            }
            None => {
                inc.signals.push(Signal {
                    rule: a.rule.clone(),
                    kind: a.kind.clone(),
                    severity: a.severity,
                    weight,
                    count: 1,
                    first_ts: a.ts.clone(),
                    last_ts: a.ts.clone(),
                    description: a.description.clone(),
                });
                if inc.alerts.len() < MAX_ALERTS {
                    inc.alerts.push(a.clone());
                }
                changed = true;
            }
        }
        let s = step(
            ev,
            What::Signal {
                rule: a.rule.clone(),
                kind: a.kind.clone(),
                severity: a.severity,
            },
        );
        if inc.timeline.len() >= self.cfg.max_timeline {
            inc.timeline.remove(0);
            inc.timeline_dropped += 1;
        }
        inc.timeline.push(s);
        if !changed {
            return None;
        }
        inc.score = inc.signals.iter().map(|s| s.weight).sum();
        let strongest = inc
            .signals
            .iter()
            .filter(|s| s.kind == "alert")
            .map(|s| s.severity)
            .max();
        // Evidence alone that reaches the threshold is a high: several weak signals agreeing.
        let severity = match strongest {
            Some(s) if inc.score < threshold * 2 || s >= Severity::High => s,
            Some(_) => Severity::High,
            None => Severity::High,
        };
        inc.headline = inc
            .signals
            .iter()
            .filter(|s| s.kind == "alert")
            .max_by_key(|s| s.severity)
            .or_else(|| inc.signals.iter().max_by_key(|s| s.weight))
            .map(|s| s.rule.clone())
            .unwrap_or_default();
        let was_raised = inc.raised;
        if strong || inc.score >= threshold {
            inc.raised = true;
        }
        if !inc.raised {
            inc.severity = severity;
            return None;
        }
        if !was_raised {
            self.raised_total += 1;
            inc.previous_severity = None;
        } else {
            inc.previous_severity = (inc.severity != severity).then_some(inc.severity);
        }
        inc.severity = severity;
        inc.version += 1;
        Some(inc.clone())
    }

    /// Drops the stalest unraised incidents (evidence that never added up).
    fn evict(&mut self) {
        let unraised: Vec<u64> = self
            .open
            .values()
            .filter(|i| !i.raised)
            .map(|i| i.last_ns)
            .collect();
        let only_raised = unraised.is_empty();
        let mut ts = if only_raised {
            self.open.values().map(|i| i.last_ns).collect()
        } else {
            unraised
        };
        ts.sort_unstable();
        let cut = ts[ts.len() / 2];
        let dropped = self.open.len();
        self.open
            .retain(|_, i| (i.raised && !only_raised) || i.last_ns > cut);
        tracing::warn!(
            "more than {} open incidents: {} of the stalest dropped",
            self.cfg.max_open,
            dropped - self.open.len()
        );
    }

    /// Closes incidents quiet for `window_secs` (checked at most every 10 s of event time);
    /// returns the raised ones, as their closing version.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Incident> {
        if now_ns.saturating_sub(self.last_expire_ns) < 10_000_000_000 {
            return vec![];
        }
        self.last_expire_ns = now_ns;
        let win = self.cfg.window_secs * 1_000_000_000;
        let stale: Vec<EntityKey> = self
            .open
            .iter()
            .filter(|(_, i)| now_ns.saturating_sub(i.last_ns) > win)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = vec![];
        for k in stale {
            if let Some(mut i) = self.open.remove(&k) {
                if i.raised {
                    i.state = State::Closed;
                    i.version += 1;
                    i.previous_severity = None;
                    out.push(i);
                }
            }
        }
        self.recent.retain(|_, r| now_ns.saturating_sub(r.0) <= win);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Body;

    fn ev(ts: u64, pid: u32, body: serde_json::Value) -> Event {
        let mut v = serde_json::json!({
            "ts": "2026-11-30T00:00:00Z", "ts_ns": ts, "pid": pid, "tid": pid, "ppid": 1,
            "uid": 0, "gid": 0, "comm": "x", "cgroup_id": 1, "mntns": 1,
        });
        v.as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    fn hit(e: &Event, rule: &str, weight: Option<u32>, sev: Severity) -> Alert {
        Alert {
            kind: if weight.is_some() {
                "evidence"
            } else {
                "alert"
            }
            .into(),
            ts: e.ts.clone(),
            rule: rule.into(),
            description: rule.into(),
            severity: sev,
            weight,
            incident: None,
            severity_raised_by: None,
            tags: vec![],
            fingerprint: rule.into(),
            pid: e.pid,
            comm: e.comm.clone(),
            exe: None,
            argv: vec![],
            event: e.clone(),
            related: vec![],
            count: None,
            lineage: vec![],
            container: None,
            episode: None,
            gpu_session: None,
        }
    }

    fn table() -> ProcTable {
        let mut p = ProcTable::default();
        for (pid, child, argv) in [(1, 10, "agent"), (10, 11, "bash"), (1, 20, "other")] {
            let mut f = ev(
                0,
                pid,
                serde_json::json!({"kind": "fork", "child_pid": child}),
            );
            p.apply(&mut f);
            let mut x = ev(
                1,
                child,
                serde_json::json!({"kind": "exec", "filename": format!("/usr/bin/{argv}"), "argv": [argv], "args_truncated": false, "args_size": 4}),
            );
            x.ppid = pid;
            p.apply(&mut x);
        }
        p
    }

    #[test]
    fn evidence_adds_up_to_one_incident_per_tree() {
        let procs = table();
        let mut inc = Incidents::new(IncidentsConfig::default());
        let connect = serde_json::json!({"kind": "connect", "family": "inet", "sock_type": "stream", "dst_ip": "198.51.100.7", "dst_port": 443, "local_ip": "10.0.0.2", "local_port": 40000, "result": "ok", "via": "syscall"});
        let e1 = ev(5, 11, connect.clone());
        inc.observe(&e1, &procs, None);
        let mut a = hit(&e1, "weak-a", Some(40), Severity::Medium);
        assert!(inc.add(&mut a, &procs, None).is_none(), "40 < 100");
        let id = a.incident.clone().unwrap();
        let mut a2 = hit(&e1, "weak-a", Some(40), Severity::Medium);
        assert!(
            inc.add(&mut a2, &procs, None).is_none(),
            "the same rule again adds nothing"
        );
        // Another tree's evidence is another incident.
        let e2 = ev(6, 20, connect);
        let mut b = hit(&e2, "weak-b", Some(70), Severity::Medium);
        assert!(inc.add(&mut b, &procs, None).is_none());
        assert_ne!(b.incident.as_deref(), Some(id.as_str()));
        // A second rule in the first tree (the agent itself) reaches the threshold.
        let e3 = ev(
            7,
            10,
            serde_json::json!({"kind": "listen", "family": "inet", "sock_type": "stream", "local_ip": "0.0.0.0", "local_port": 8000, "result": "ok", "via": "syscall"}),
        );
        let mut c = hit(&e3, "weak-b", Some(70), Severity::Medium);
        let i = inc.add(&mut c, &procs, None).expect("raised");
        assert_eq!(i.id, id);
        assert_eq!((i.score, i.raised, i.version), (110, true, 1));
        assert_eq!(i.severity, Severity::High);
        assert_eq!(i.entity.root_pid, 10);
        // The timeline holds the connect (with its local side) before the signals.
        assert!(matches!(
            i.timeline[0].what,
            What::Connect {
                local_port: Some(40000),
                ..
            }
        ));
        assert!(i
            .timeline
            .iter()
            .any(|s| matches!(&s.what, What::Signal { rule, .. } if rule == "weak-b")));
        // A strong rule raises the severity: a new version, the old severity named.
        let mut d = hit(&e3, "strong", None, Severity::Critical);
        let i = inc.add(&mut d, &procs, None).unwrap();
        assert_eq!(
            (i.version, i.severity, i.previous_severity),
            (2, Severity::Critical, Some(Severity::High))
        );
        assert_eq!(i.headline, "strong");
        assert_eq!(inc.raised().count(), 1);
        // Closed after the window without signals; the unraised one goes silently.
        let later = 10 + 1801 * 1_000_000_000;
        let closed = inc.expire(later);
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].state, closed[0].version), (State::Closed, 3));
        assert_eq!(inc.open_count(), 0);
    }

    #[test]
    fn loss_raises_sensor_degraded_and_marks_verdicts_partial() {
        let procs = table();
        let mut inc = Incidents::new(IncidentsConfig::default());
        let e = ev(5, 20, serde_json::json!({"kind": "fork", "child_pid": 97}));
        let mut a = hit(&e, "x", Some(60), Severity::Low);
        inc.add(&mut a, &procs, None);
        let counts = |n: u64| LossCounts {
            kernel_dropped: [("connect".to_string(), n)].into(),
            user_dropped: Default::default(),
            affected: vec!["connect".into()],
        };
        let d = inc.loss("t1", 10, counts(5));
        assert_eq!(
            (d.headline.as_str(), d.version, d.raised),
            ("sensor-degraded", 1, true)
        );
        assert_eq!(d.entity.kind, EntityKind::Sensor);
        assert!(d.summary().contains("kernel 5"), "{}", d.summary());
        let d2 = inc.loss("t2", 20, counts(9));
        assert_eq!(
            (d2.id.as_str(), d2.version),
            (d.id.as_str(), 2),
            "one incident, updated"
        );
        // The open incident was marked; one opened after the loss is marked too.
        let mut b = hit(&e, "y", Some(60), Severity::Low);
        let i = inc.add(&mut b, &procs, None).unwrap();
        assert!(i.partial && i.partial_reason.as_deref().unwrap().contains("kernel 9"));
        let other = ev(30, 11, serde_json::json!({"kind": "fork", "child_pid": 96}));
        let mut c = hit(&other, "strong", None, Severity::High);
        assert!(inc.add(&mut c, &procs, None).unwrap().partial);
        // Long after the loss, a new incident is not.
        let late = ev(
            40 + 3601 * 1_000_000_000,
            11,
            serde_json::json!({"kind": "fork", "child_pid": 95}),
        );
        inc.expire(late.ts_ns);
        let mut l = hit(&late, "strong", None, Severity::High);
        assert!(!inc.add(&mut l, &procs, None).unwrap().partial);
    }

    #[test]
    fn a_strong_signal_raises_at_once() {
        let procs = table();
        let mut inc = Incidents::new(IncidentsConfig::default());
        let e = ev(
            5,
            20,
            serde_json::json!({"kind": "exec", "filename": "/usr/bin/other", "argv": ["other"], "args_truncated": false, "args_size": 6}),
        );
        let mut a = hit(&e, "reverse-shell", None, Severity::Critical);
        let i = inc.add(&mut a, &procs, None).unwrap();
        assert!(i.raised && i.score >= i.threshold);
        assert_eq!(i.severity, Severity::Critical);
        assert!(matches!(&e.body, Body::Exec(_)));
    }

    #[test]
    fn an_episode_groups_across_trees() {
        let procs = table();
        let mut inc = Incidents::new(IncidentsConfig::default());
        let e1 = ev(5, 11, serde_json::json!({"kind": "fork", "child_pid": 99}));
        let e2 = ev(6, 20, serde_json::json!({"kind": "fork", "child_pid": 98}));
        let mut a = hit(&e1, "x", Some(60), Severity::Low);
        let mut b = hit(&e2, "y", Some(60), Severity::Low);
        inc.add(&mut a, &procs, Some("ep-1"));
        let i = inc.add(&mut b, &procs, Some("ep-1")).unwrap();
        assert_eq!(i.entity.kind, EntityKind::Episode);
        assert_eq!(a.incident, b.incident);
    }
}
