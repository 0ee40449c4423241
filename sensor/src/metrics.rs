//! Prometheus endpoint: `/metrics` (OpenMetrics text from prometheus-client), `/healthz`,
//! `/readyz`. Metric names are documented in the README ("Metrics"); all carry the
//! `gpu_sensor_` prefix and bounded label sets.

use std::{
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::health::Health;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    pub rule: String,
    pub severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub ebpf_sha256: String,
    pub kernel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabel {
    pub hook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeErrorLabels {
    pub hook: String,
    pub error: String,
}

impl ProbeErrorLabels {
    pub fn new(hook: sensor_common::Hook, error: sensor_common::ProbeError) -> Self {
        ProbeErrorLabels {
            hook: hook.name().into(),
            error: error.name().into(),
        }
    }
}

/// GPU labels as DCGM exporter names them, so the two join (`on(UUID)`, `on(gpu, Hostname)`…):
/// `gpu` = NVML index, `UUID`, `pci_bus_id`, `device` = `nvidia<minor>`, and the `minor`. Without
/// NVML only `minor` and `device` are known (the others are empty).
#[allow(non_snake_case)]
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GpuLabels {
    pub gpu: String,
    pub minor: String,
    pub UUID: String,
    pub pci_bus_id: String,
    pub device: String,
}

impl GpuLabels {
    pub fn of_minor(minor: u32, inv: &crate::gpu::inventory::Inventory) -> GpuLabels {
        match inv.by_minor(minor) {
            Some(g) => GpuLabels::of(&g),
            None => GpuLabels {
                minor: minor.to_string(),
                device: format!("nvidia{minor}"),
                ..Default::default()
            },
        }
    }

    pub fn of(g: &crate::gpu::inventory::GpuIdentity) -> GpuLabels {
        GpuLabels {
            gpu: g.index.to_string(),
            minor: g.minor.to_string(),
            UUID: g.uuid.clone(),
            pci_bus_id: g.pci_bus_id.clone(),
            device: format!("nvidia{}", g.minor),
        }
    }

    fn other() -> GpuLabels {
        GpuLabels {
            gpu: "other".into(),
            minor: "other".into(),
            UUID: "other".into(),
            pci_bus_id: "other".into(),
            device: "other".into(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    #[prometheus(flatten)]
    pub gpu: GpuLabels,
    pub namespace: String,
    pub pod: String,
}

/// `gpu_sensor_gpu_info`: one series per GPU NVML knows, value 1.
#[allow(non_snake_case)]
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GpuInfoLabels {
    #[prometheus(flatten)]
    pub gpu: GpuLabels,
    pub modelName: String,
}

/// Distinct (gpu, namespace, pod) series kept at most; the rest are summed under "other".
pub const MAX_SESSION_SERIES: usize = 500;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkResult {
    pub sink: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkReason {
    pub sink: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

/// Every metric the sensor exports. Cheap to clone (all handles are shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub events: Family<KindLabel, Counter>,
    pub alerts: Family<AlertLabels, Counter>,
    pub kernel_drops: Family<HookLabel, Counter>,
    /// Failures in the kernel programs (`PROBE_ERRORS`), by hook and error.
    pub probe_errors: Family<ProbeErrorLabels, Counter>,
    pub user_drops: Family<KindLabel, Counter>,
    pub rule_reloads: Family<ResultLabel, Counter>,
    pub rules_loaded: Gauge,
    pub gpu_sessions_active: Gauge,
    pub gpu_sessions_by: Family<SessionLabels, Gauge>,
    /// The GPUs NVML names (index, UUID, PCI bus id, model), value 1.
    pub gpu_info: Family<GpuInfoLabels, Gauge>,
    /// GPU identities from NVML, shared with the sampler and the sessions.
    pub inventory: crate::gpu::inventory::Inventory,
    /// The label sets last published in `gpu_sessions_by` and `gpu_info`: a refresh removes
    /// only the ones that went away (a clear-then-fill would let a scrape see no series).
    published: Arc<std::sync::Mutex<(Vec<SessionLabels>, Vec<GpuInfoLabels>)>>,
    pub last_event_ts: Gauge<f64, AtomicU64>,
    pub deliveries: Family<SinkResult, Counter>,
    pub spool_depth: Family<SinkLabel, Gauge>,
    pub spool_oldest: Family<SinkLabel, Gauge<f64, AtomicU64>>,
    pub spool_evicted: Family<SinkLabel, Counter>,
    pub sink_suppressed: Family<SinkReason, Counter>,
    /// Connections to the metrics port closed unserved, by reason (limit, timeout, tls).
    pub http_rejected: Family<ReasonLabel, Counter>,
    /// Requests to /metrics refused for a missing or wrong bearer token.
    pub http_unauthorized: Counter,
    /// Events not printed because stdout was closed (`output.on_stdout_closed = "continue"`).
    pub stdout_dropped: Counter,
    /// Incidents raised (first version), by severity.
    pub incidents_raised: Family<SeverityLabel, Counter>,
    /// Raised incidents open now.
    pub incidents_open: Gauge,
    /// Memory the kernel locked for each BPF map (bytes, at start-up).
    pub bpf_map_bytes: Family<MapLabel, Gauge>,
    /// Records handed to the exporters, by exporter and result (exported, dropped, failed).
    pub exports: Family<ExportLabels, Counter>,
    /// Time spent in each BPF program and its runs (kernel.bpf_stats_enabled=1; else 0).
    pub prog_run_seconds: Family<ProgramLabel, Counter<f64, AtomicU64>>,
    pub prog_runs: Family<ProgramLabel, Counter>,
    /// The open raised incidents, latest version of each (`/incidents`).
    pub open_incidents:
        Arc<std::sync::Mutex<std::collections::BTreeMap<String, crate::incidents::Incident>>>,
    pub health: Health,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramLabel {
    pub program: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExportLabels {
    pub exporter: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabel {
    pub map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SeverityLabel {
    pub severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

impl Metrics {
    pub fn new(ebpf_sha256: &str, kernel: &str) -> Metrics {
        let mut r = Registry::with_prefix("gpu_sensor");
        // The classic `*_build_info` gauge (value 1) rather than an OpenMetrics info metric, so
        // that Prometheus text-format tooling (promtool) accepts the output too.
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
                ebpf_sha256: ebpf_sha256.to_string(),
                kernel: kernel.to_string(),
            })
            .set(1);
        r.register(
            "build_info",
            "Sensor version, eBPF object hash and kernel release",
            build,
        );
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            events: Family::default(),
            alerts: Family::default(),
            kernel_drops: Family::default(),
            probe_errors: Family::default(),
            user_drops: Family::default(),
            rule_reloads: Family::default(),
            rules_loaded: Gauge::default(),
            gpu_sessions_active: Gauge::default(),
            gpu_sessions_by: Family::default(),
            gpu_info: Family::default(),
            inventory: Default::default(),
            published: Default::default(),
            last_event_ts: Gauge::default(),
            deliveries: Family::default(),
            spool_depth: Family::default(),
            spool_oldest: Family::default(),
            spool_evicted: Family::default(),
            sink_suppressed: Family::default(),
            http_rejected: Family::default(),
            http_unauthorized: Counter::default(),
            stdout_dropped: Counter::default(),
            incidents_raised: Family::default(),
            incidents_open: Gauge::default(),
            bpf_map_bytes: Family::default(),
            exports: Family::default(),
            prog_run_seconds: Family::default(),
            prog_runs: Family::default(),
            open_incidents: Default::default(),
            health: Health::new(),
        };
        // Counters exist at zero from start-up, so that `increase()` alerts see the first one.
        for result in ["ok", "error"] {
            let _ = m.rule_reloads.get_or_create(&ResultLabel {
                result: result.into(),
            });
        }
        for k in crate::live::kind_names() {
            let _ = m.kernel_drops.get_or_create(&HookLabel { hook: k.into() });
            let _ = m.user_drops.get_or_create(&KindLabel { kind: k.into() });
        }
        for sev in ["info", "low", "medium", "high", "critical"] {
            let _ = m.incidents_raised.get_or_create(&SeverityLabel {
                severity: sev.into(),
            });
        }
        for reason in ["limit", "timeout", "tls"] {
            let _ = m.http_rejected.get_or_create(&ReasonLabel {
                reason: reason.into(),
            });
        }
        // Every (hook, error) series exists from the start, so that increase() alerts work.
        for &h in sensor_common::Hook::ALL {
            for &e in sensor_common::ProbeError::ALL {
                let _ = m.probe_errors.get_or_create(&ProbeErrorLabels::new(h, e));
            }
        }
        let (failures, up) = m.health.metrics();
        r.register(
            "component_failures",
            "Failures of the agent's long-lived parts, by component and reason (panic, error)",
            failures,
        );
        r.register(
            "component_up",
            "1 while the component runs, 0 while it is starting, restarting or failed",
            up,
        );
        r.register(
            "metrics_connections_rejected",
            "Connections to the metrics port closed unserved, by reason (limit, timeout, tls)",
            m.http_rejected.clone(),
        );
        r.register(
            "metrics_unauthorized",
            "Requests to /metrics refused for a missing or wrong bearer token",
            m.http_unauthorized.clone(),
        );
        r.register(
            "incidents_raised",
            "Incidents raised (strong signal, or evidence reaching the threshold), by severity",
            m.incidents_raised.clone(),
        );
        r.register(
            "bpf_map_bytes",
            "Memory the kernel locked for each BPF map, bytes (config [maps], ring.size)",
            m.bpf_map_bytes.clone(),
        );
        r.register(
            "incidents_open",
            "Raised incidents open now",
            m.incidents_open.clone(),
        );
        r.register(
            "stdout_dropped",
            "Records not printed because stdout was closed",
            m.stdout_dropped.clone(),
        );
        r.register(
            "webhook_deliveries",
            "Alert deliveries by sink and result (ok, retry, rejected)",
            m.deliveries.clone(),
        );
        r.register(
            "spool_depth",
            "Alerts waiting in the sink's spool",
            m.spool_depth.clone(),
        );
        r.register(
            "spool_oldest_age_seconds",
            "Age of the oldest alert waiting in the sink's spool",
            m.spool_oldest.clone(),
        );
        r.register(
            "spool_evicted",
            "Alerts evicted from a full spool (oldest, lowest severity first)",
            m.spool_evicted.clone(),
        );
        r.register(
            "alerts_suppressed",
            "Alerts not sent to a sink, by reason (dedup, rate_limit)",
            m.sink_suppressed.clone(),
        );
        r.register("events", "Events emitted, by kind", m.events.clone());
        r.register(
            "alerts",
            "Alerts emitted, by rule and severity",
            m.alerts.clone(),
        );
        r.register(
            "kernel_ring_drops",
            "Records lost in the kernel because the ring buffer was full, by hook",
            m.kernel_drops.clone(),
        );
        r.register(
            "probe_errors",
            "Failures in the kernel programs, by hook (program) and error (ring_full, kernel_read, user_read, bad_offset, map_update, map_lookup); every series starts at 0",
            m.probe_errors.clone(),
        );
        r.register(
            "user_queue_drops",
            "Records lost because the agent's queue was full, by kind",
            m.user_drops.clone(),
        );
        r.register(
            "rule_reloads",
            "Rule reloads, by result (ok, error)",
            m.rule_reloads.clone(),
        );
        r.register(
            "rules_loaded",
            "Rules in the active set",
            m.rules_loaded.clone(),
        );
        r.register(
            "gpu_compute_sessions_active",
            "Processes with a live GPU compute session",
            m.gpu_sessions_active.clone(),
        );
        r.register(
            "gpu_compute_sessions",
            "Live GPU compute sessions by GPU (DCGM labels: gpu index, UUID, pci_bus_id, device; and minor), namespace and pod (bounded: excess series are summed under \"other\")",
            m.gpu_sessions_by.clone(),
        );
        r.register(
            "gpu_info",
            "The node's GPUs as NVML names them (labels as DCGM exporter's: gpu index, UUID, pci_bus_id, device, modelName; and minor); value 1",
            m.gpu_info.clone(),
        );
        r.register(
            "bpf_program_run_time_seconds",
            "Time the kernel spent running each BPF program (counted only while the sysctl kernel.bpf_stats_enabled is 1)",
            m.prog_run_seconds.clone(),
        );
        r.register(
            "bpf_program_runs",
            "Runs of each BPF program (counted only while kernel.bpf_stats_enabled is 1)",
            m.prog_runs.clone(),
        );
        r.register(
            "export_records",
            "Records handed to the exporters (file, otlp), by result: exported, dropped (queue full), failed (write error or given up)",
            m.exports.clone(),
        );
        r.register(
            "last_event_timestamp_seconds",
            "Wall-clock time of the last kernel event (node blind when it stops moving)",
            m.last_event_ts.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    /// Copies the kernel's per-program run time and count ([`crate::hook::program_stats`]).
    pub fn sync_programs(&self) {
        for (name, (ns, cnt)) in crate::hook::program_stats() {
            let l = ProgramLabel { program: name };
            let c = self.prog_run_seconds.get_or_create(&l);
            let total = ns as f64 / 1e9;
            if total > c.get() {
                c.inc_by(total - c.get());
            }
            Metrics::sync_counter(&self.prog_runs.get_or_create(&l), cnt);
        }
    }

    /// The counter of one exporter's outcome (created at zero).
    pub fn export_counter(&self, exporter: &str, result: &str) -> Counter {
        self.exports
            .get_or_create(&ExportLabels {
                exporter: exporter.into(),
                result: result.into(),
            })
            .clone()
    }

    pub fn set_ready(&self) {
        self.health.set_started();
    }

    pub fn delivery(&self, sink: &str, result: &str) {
        self.deliveries
            .get_or_create(&SinkResult {
                sink: sink.into(),
                result: result.into(),
            })
            .inc();
    }

    pub fn suppressed(&self, sink: &str, reason: &str) {
        self.sink_suppressed
            .get_or_create(&SinkReason {
                sink: sink.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// Creates a sink's delivery and suppression series at zero (alerts on rejected deliveries
    /// see the first one).
    pub fn init_sink(&self, sink: &str) {
        for result in ["ok", "retry", "rejected"] {
            let _ = self.deliveries.get_or_create(&SinkResult {
                sink: sink.into(),
                result: result.into(),
            });
        }
        for reason in ["dedup", "rate_limit", "queue_full"] {
            let _ = self.sink_suppressed.get_or_create(&SinkReason {
                sink: sink.into(),
                reason: reason.into(),
            });
        }
    }

    pub fn sync_spool(&self, sink: &str, depth: usize, oldest_secs: f64, evicted: u64) {
        let l = SinkLabel { sink: sink.into() };
        self.spool_depth.get_or_create(&l).set(depth as i64);
        self.spool_oldest.get_or_create(&l).set(oldest_secs);
        Metrics::sync_counter(&self.spool_evicted.get_or_create(&l), evicted);
    }

    /// Live compute sessions by (GPU minor, namespace, pod), from the sessions' start events.
    /// At most [`MAX_SESSION_SERIES`] series: the rest are summed under "other".
    pub fn set_sessions<'a>(&self, starts: impl Iterator<Item = &'a crate::event::Event>) {
        let mut by: std::collections::HashMap<SessionLabels, i64> = Default::default();
        for ev in starts {
            let (ns, pod) = ev
                .container
                .as_ref()
                .map_or((String::new(), String::new()), |c| {
                    (
                        c.namespace.clone().unwrap_or_default(),
                        c.pod.clone().unwrap_or_default(),
                    )
                });
            let gpus = match &ev.body {
                crate::event::Body::GpuSessionStart(s) => s.gpu_minors.clone(),
                _ => vec![],
            };
            // A session on no known minor is counted with empty GPU labels.
            let gpus: Vec<GpuLabels> = if gpus.is_empty() {
                vec![GpuLabels::default()]
            } else {
                gpus.iter()
                    .map(|&m| GpuLabels::of_minor(m, &self.inventory))
                    .collect()
            };
            for gpu in gpus {
                let mut l = SessionLabels {
                    gpu,
                    namespace: ns.clone(),
                    pod: pod.clone(),
                };
                if by.len() >= MAX_SESSION_SERIES && !by.contains_key(&l) {
                    l = SessionLabels {
                        gpu: GpuLabels::other(),
                        namespace: "other".into(),
                        pod: "other".into(),
                    };
                }
                *by.entry(l).or_default() += 1;
            }
        }
        let info: Vec<GpuInfoLabels> = self
            .inventory
            .all()
            .into_iter()
            .map(|g| GpuInfoLabels {
                gpu: GpuLabels::of(&g),
                modelName: g.name.clone(),
            })
            .collect();
        let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        for (l, n) in &by {
            self.gpu_sessions_by.get_or_create(l).set(*n);
        }
        for l in published.0.iter().filter(|l| !by.contains_key(l)) {
            self.gpu_sessions_by.remove(l);
        }
        for l in &info {
            self.gpu_info.get_or_create(l).set(1);
        }
        for l in published.1.iter().filter(|l| !info.contains(l)) {
            self.gpu_info.remove(l);
        }
        *published = (by.into_keys().collect(), info);
    }

    /// Sets a counter to a cumulative value read elsewhere (kernel map, atomics).
    pub fn sync_counter(c: &Counter, total: u64) {
        let now = c.get();
        if total > now {
            c.inc_by(total - now);
        }
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut s, &self.registry);
        s
    }

    /// The Prometheus text format (0.0.4) for scrapers that do not ask for OpenMetrics: counter
    /// families are named with their `_total` suffix in HELP/TYPE, and there is no `# EOF`.
    pub fn render_text(&self) -> String {
        let om = self.render();
        let counters: std::collections::HashSet<&str> = om
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.strip_suffix(" counter"))
            .collect();
        let mut out = String::with_capacity(om.len() + 256);
        for line in om.lines() {
            if line == "# EOF" || line.starts_with("# UNIT ") {
                continue;
            }
            let meta = line.strip_prefix("# HELP ").map(|r| ("# HELP ", r));
            let meta = meta.or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
            if let Some((tag, rest)) = meta {
                let name = rest.split(' ').next().unwrap_or("");
                if counters.contains(name) {
                    out.push_str(&format!("{tag}{name}_total{}\n", &rest[name.len()..]));
                    continue;
                }
            }
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// Records a version of an incident: counters, and the open set `/incidents` serves.
    pub fn incident(&self, i: &crate::incidents::Incident) {
        if i.version == 1 {
            let sev = serde_json::to_value(i.severity)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            self.incidents_raised
                .get_or_create(&SeverityLabel { severity: sev })
                .inc();
        }
        let mut open = crate::health::lock(&self.open_incidents);
        match i.state {
            crate::incidents::State::Open => {
                open.insert(i.id.clone(), i.clone());
            }
            crate::incidents::State::Closed => {
                open.remove(&i.id);
            }
        }
        self.incidents_open.set(open.len() as i64);
    }

    /// The routes: `/metrics` and `/incidents` (bearer token checked when configured),
    /// `/healthz`, `/readyz`.
    fn router(&self, token: Option<Arc<Vec<u8>>>) -> axum::Router {
        use axum::{
            http::{header, HeaderMap, StatusCode},
            response::IntoResponse,
            routing::get,
            Router,
        };
        let m = self.clone();
        let m2 = self.clone();
        let token2 = token.clone();
        let h1 = self.health.clone();
        let h2 = self.health.clone();
        Router::new()
            .route(
                "/metrics",
                get(move |headers: HeaderMap| {
                    let m = m.clone();
                    let token = token.clone();
                    async move {
                        if let Some(r) = refuse(&m, token.as_deref(), &headers) {
                            return r;
                        }
                        // Per-program BPF run time, read from fdinfo at scrape time.
                        let m2 = m.clone();
                        let _ = tokio::task::spawn_blocking(move || m2.sync_programs()).await;
                        // Content negotiation: OpenMetrics when the scraper asks for it
                        // (Prometheus does), the classic text format otherwise.
                        let om = headers
                            .get(header::ACCEPT)
                            .and_then(|v| v.to_str().ok())
                            .is_some_and(|v| v.contains("application/openmetrics-text"));
                        let (ct, body) = if om {
                            (
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                m.render(),
                            )
                        } else {
                            ("text/plain; version=0.0.4; charset=utf-8", m.render_text())
                        };
                        ([(header::CONTENT_TYPE, ct)], body).into_response()
                    }
                }),
            )
            .route(
                "/incidents",
                get(move |headers: HeaderMap| {
                    let m = m2.clone();
                    let token = token2.clone();
                    async move {
                        if let Some(r) = refuse(&m, token.as_deref(), &headers) {
                            return r;
                        }
                        // Incidents name processes and pods: the same token as /metrics.
                        let body = {
                            let open = crate::health::lock(&m.open_incidents);
                            serde_json::to_string(&open.values().collect::<Vec<_>>())
                                .unwrap_or_else(|_| "[]".into())
                        };
                        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
                    }
                }),
            )
            .route(
                "/healthz",
                get(move || {
                    let r = h1.readiness();
                    async move {
                        let code = if r.healthy {
                            StatusCode::OK
                        } else {
                            StatusCode::SERVICE_UNAVAILABLE
                        };
                        let body = if r.healthy {
                            "ok\n".to_string()
                        } else {
                            format!(
                                "unhealthy\n{}\n",
                                serde_json::to_string(&r).unwrap_or_default()
                            )
                        };
                        (code, body)
                    }
                }),
            )
            .route(
                "/readyz",
                get(move || {
                    let r = h2.readiness();
                    async move {
                        let code = if r.ready {
                            StatusCode::OK
                        } else {
                            StatusCode::SERVICE_UNAVAILABLE
                        };
                        let head = if r.ready && r.degraded.is_some() {
                            "ready (degraded: events are being lost)"
                        } else if r.ready {
                            "ready"
                        } else if r.healthy {
                            "not ready"
                        } else {
                            "unhealthy"
                        };
                        (
                            code,
                            format!(
                                "{head}\n{}\n",
                                serde_json::to_string(&r).unwrap_or_default()
                            ),
                        )
                    }
                }),
            )
    }

    /// Serves the endpoints on `listener` (bound by the caller, so that a port clash is a
    /// start-up error and port 0 can be reported) until the task is aborted. One request per
    /// connection, with a header timeout, a whole-connection timeout and a connection limit
    /// (README "Metrics": hardening).
    pub async fn serve(
        self,
        listener: std::net::TcpListener,
        opts: ServeOptions,
    ) -> std::io::Result<()> {
        use hyper_util::rt::{TokioIo, TokioTimer};
        let app = self.router(opts.token.clone());
        listener.set_nonblocking(true)?;
        let l = tokio::net::TcpListener::from_std(listener)?;
        let slots = Arc::new(tokio::sync::Semaphore::new(opts.max_connections));
        loop {
            let sock = match l.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE/ENFILE and the like: back off instead of spinning.
                    tracing::warn!("metrics endpoint: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                self.rejected("limit");
                drop(sock);
                continue;
            };
            let app = app.clone();
            let tls = opts.tls.clone();
            let m = self.clone();
            let (header_timeout, conn_timeout) = (opts.header_timeout, opts.connection_timeout);
            tokio::spawn(async move {
                let _permit = permit;
                let conn = async {
                    let svc = hyper_util::service::TowerToHyperService::new(app);
                    let mut b = hyper::server::conn::http1::Builder::new();
                    b.timer(TokioTimer::new())
                        .header_read_timeout(header_timeout)
                        .keep_alive(false);
                    match tls {
                        Some(acc) => {
                            let s = match tokio::time::timeout(header_timeout, acc.accept(sock))
                                .await
                            {
                                Ok(Ok(s)) => s,
                                Ok(Err(_)) => return m.rejected("tls"),
                                Err(_) => return m.rejected("timeout"),
                            };
                            let _ = b.serve_connection(TokioIo::new(s), svc).await;
                        }
                        None => {
                            let _ = b.serve_connection(TokioIo::new(sock), svc).await;
                        }
                    }
                };
                if tokio::time::timeout(conn_timeout, conn).await.is_err() {
                    m.rejected("timeout");
                }
            });
        }
    }

    fn rejected(&self, reason: &str) {
        self.http_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }
}

/// How the metrics endpoint serves (from [`crate::config::MetricsConfig`]).
#[derive(Clone)]
pub struct ServeOptions {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub connection_timeout: Duration,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub token: Option<Arc<Vec<u8>>>,
}

/// Errors preparing the metrics endpoint (TLS material, token).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Bad { path: String, message: String },
}

impl ServeOptions {
    pub fn from_config(c: &crate::config::MetricsConfig) -> Result<ServeOptions, ServeError> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|source| ServeError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        let tls = match (&c.tls_cert_file, &c.tls_key_file) {
            (Some(cert), Some(key)) => Some(tls_acceptor(&read(cert)?, cert, &read(key)?, key)?),
            _ => None,
        };
        let token = match &c.bearer_token_file {
            Some(p) => {
                let t = read(p)?;
                let t = t.trim_ascii().to_vec();
                if t.len() < 16 {
                    return Err(ServeError::Bad {
                        path: p.display().to_string(),
                        message: "the bearer token must be at least 16 bytes".into(),
                    });
                }
                Some(Arc::new(t))
            }
            None => None,
        };
        Ok(ServeOptions {
            max_connections: c.max_connections,
            header_timeout: Duration::from_secs(c.header_timeout_secs),
            connection_timeout: Duration::from_secs(c.connection_timeout_secs),
            tls,
            token,
        })
    }
}

fn tls_acceptor(
    cert: &[u8],
    cert_path: &std::path::Path,
    key: &[u8],
    key_path: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, ServeError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let bad = |p: &std::path::Path, message: String| ServeError::Bad {
        path: p.display().to_string(),
        message,
    };
    let certs = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(cert_path, format!("bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(bad(cert_path, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| bad(key_path, format!("bad PEM private key: {e}")))?;
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(cert_path, e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| bad(cert_path, format!("certificate and key do not fit: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// `Authorization: Bearer <token>`, compared in constant time.
/// The 401 answer when a bearer token is configured and the request lacks it (counted).
fn refuse(
    m: &Metrics,
    token: Option<&Vec<u8>>,
    headers: &axum::http::HeaderMap,
) -> Option<axum::response::Response> {
    use axum::{
        http::{header, StatusCode},
        response::IntoResponse,
    };
    let t = token?;
    if bearer_ok(headers, t) {
        return None;
    }
    m.http_unauthorized.inc();
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "unauthorized\n",
        )
            .into_response(),
    )
}

fn bearer_ok(headers: &axum::http::HeaderMap, token: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|got| got.ct_eq(token).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Series that `increase()` alerts watch exist at zero before their first increment
    /// (deploy/prometheus/rules.test.yaml relies on it).
    #[test]
    fn alerted_counters_start_at_zero() {
        let m = Metrics::new("abc", "6.18");
        m.init_sink("oncall");
        let t = m.render_text();
        for want in [
            "gpu_sensor_rule_reloads_total{result=\"error\"} 0",
            "gpu_sensor_kernel_ring_drops_total{hook=\"exec\"} 0",
            "gpu_sensor_user_queue_drops_total{kind=\"connect\"} 0",
            "gpu_sensor_webhook_deliveries_total{sink=\"oncall\",result=\"rejected\"} 0",
            "gpu_sensor_incidents_raised_total{severity=\"critical\"} 0",
        ] {
            assert!(t.contains(want), "{want} missing:\n{t}");
        }
    }

    #[test]
    fn renders_openmetrics_with_prefix_and_labels() {
        let m = Metrics::new("abc", "6.18");
        m.events
            .get_or_create(&KindLabel {
                kind: "exec".into(),
            })
            .inc_by(3);
        m.alerts
            .get_or_create(&AlertLabels {
                rule: "miner-exec".into(),
                severity: "critical".into(),
            })
            .inc();
        Metrics::sync_counter(
            &m.kernel_drops.get_or_create(&HookLabel {
                hook: "connect".into(),
            }),
            7,
        );
        Metrics::sync_counter(
            &m.kernel_drops.get_or_create(&HookLabel {
                hook: "connect".into(),
            }),
            9,
        );
        let t = m.render();
        assert!(
            t.contains("gpu_sensor_events_total{kind=\"exec\"} 3"),
            "{t}"
        );
        assert!(
            t.contains("gpu_sensor_alerts_total{rule=\"miner-exec\",severity=\"critical\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("gpu_sensor_kernel_ring_drops_total{hook=\"connect\"} 9"),
            "{t}"
        );
        assert!(t.contains("gpu_sensor_build_info{version="), "{t}");
        assert!(
            t.contains(
                "gpu_sensor_probe_errors_total{hook=\"sock_egress\",error=\"map_lookup\"} 0"
            ),
            "{t}"
        );
        let n = t
            .lines()
            .filter(|l| l.starts_with("gpu_sensor_probe_errors_total{"))
            .count();
        assert_eq!(
            n,
            sensor_common::Hook::COUNT * sensor_common::ProbeError::COUNT
        );
        assert!(t.trim_end().ends_with("# EOF"));
        let p = m.render_text();
        assert!(p.contains("# TYPE gpu_sensor_events_total counter"), "{p}");
        assert!(
            p.contains("# HELP gpu_sensor_events_total Events emitted"),
            "{p}"
        );
        assert!(p.contains("# TYPE gpu_sensor_rules_loaded gauge"), "{p}");
        assert!(!p.contains("# EOF"));
    }
}
