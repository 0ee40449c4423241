//! Prometheus endpoint: `/metrics` (OpenMetrics text from prometheus-client), `/healthz`,
//! `/readyz`. Metric names are documented in the README ("Metrics"); all carry the
//! `gpu_sensor_` prefix and bounded label sets.

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc,
};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

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
pub struct SessionLabels {
    pub gpu: String,
    pub namespace: String,
    pub pod: String,
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
    pub user_drops: Family<KindLabel, Counter>,
    pub rule_reloads: Family<ResultLabel, Counter>,
    pub rules_loaded: Gauge,
    pub gpu_sessions_active: Gauge,
    pub gpu_sessions_by: Family<SessionLabels, Gauge>,
    pub last_event_ts: Gauge<f64, AtomicU64>,
    pub deliveries: Family<SinkResult, Counter>,
    pub spool_depth: Family<SinkLabel, Gauge>,
    pub spool_oldest: Family<SinkLabel, Gauge<f64, AtomicU64>>,
    pub spool_evicted: Family<SinkLabel, Counter>,
    pub sink_suppressed: Family<SinkReason, Counter>,
    ready: Arc<AtomicBool>,
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
            user_drops: Family::default(),
            rule_reloads: Family::default(),
            rules_loaded: Gauge::default(),
            gpu_sessions_active: Gauge::default(),
            gpu_sessions_by: Family::default(),
            last_event_ts: Gauge::default(),
            deliveries: Family::default(),
            spool_depth: Family::default(),
            spool_oldest: Family::default(),
            spool_evicted: Family::default(),
            sink_suppressed: Family::default(),
            ready: Arc::new(AtomicBool::new(false)),
        };
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
            "Live GPU compute sessions by GPU minor, namespace and pod (bounded: excess series are summed under \"other\")",
            m.gpu_sessions_by.clone(),
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

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
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

    pub fn sync_spool(&self, sink: &str, depth: usize, oldest_secs: f64, evicted: u64) {
        let l = SinkLabel { sink: sink.into() };
        self.spool_depth.get_or_create(&l).set(depth as i64);
        self.spool_oldest.get_or_create(&l).set(oldest_secs);
        Metrics::sync_counter(&self.spool_evicted.get_or_create(&l), evicted);
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

    /// Serves the endpoints on `listener` (bound by the caller, so that a port clash is a
    /// start-up error and port 0 can be reported) until the task is aborted.
    pub async fn serve(self, listener: std::net::TcpListener) -> std::io::Result<()> {
        use axum::{http::StatusCode, routing::get, Router};
        let m = self.clone();
        let ready = self.ready.clone();
        let app = Router::new()
            .route(
                "/metrics",
                get(move |headers: axum::http::HeaderMap| {
                    let m = m.clone();
                    async move {
                        // Content negotiation: OpenMetrics when the scraper asks for it
                        // (Prometheus does), the classic text format otherwise.
                        let om = headers
                            .get(axum::http::header::ACCEPT)
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
                        ([(axum::http::header::CONTENT_TYPE, ct)], body)
                    }
                }),
            )
            .route("/healthz", get(|| async { "ok\n" }))
            .route(
                "/readyz",
                get(move || {
                    let r = ready.load(Ordering::Relaxed);
                    async move {
                        if r {
                            (StatusCode::OK, "ready\n")
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                        }
                    }
                }),
            );
        listener.set_nonblocking(true)?;
        let l = tokio::net::TcpListener::from_std(listener)?;
        axum::serve(l, app).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
