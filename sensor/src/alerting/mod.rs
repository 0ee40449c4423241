//! Incident delivery to on-call (each raised incident and its updates; see `crate::incidents`):
//! any number of sinks (generic JSON webhook with an HMAC-SHA256
//! signature, Prometheus Alertmanager v2, Slack-style incoming webhook, PagerDuty Events v2),
//! each with its own severity filter, fingerprint dedup window and per-rule rate limit (a
//! summary is sent for what was suppressed). Every accepted alert is first written to the
//! sink's durable [`spool`]; a thread per sink delivers in order with exponential backoff and
//! jitter, so alerts survive receiver outages and agent restarts.

pub mod spool;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{mpsc, Arc, Condvar, Mutex},
    time::{Duration, Instant, SystemTime},
};

use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;
use thiserror::Error;

use crate::{
    health::lock,
    incidents::Incident,
    metrics::Metrics,
    rules::{Alert, Severity},
};
use spool::Spool;

#[derive(Debug, Error)]
pub enum AlertingError {
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    #[error("sink `{sink}`: {message}")]
    Config { sink: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Webhook,
    Alertmanager,
    Slack,
    Pagerduty,
}

/// One sink (config `[[alerting.sinks]]`). `Debug` redacts the URL (a Slack webhook URL is a
/// secret; any URL may carry credentials).
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    pub name: String,
    pub kind: SinkKind,
    /// Webhook/Slack: the URL; Alertmanager: its base URL (`/api/v2/alerts` is appended);
    /// PagerDuty: default `https://events.pagerduty.com/v2/enqueue`.
    #[serde(default)]
    pub url: Option<String>,
    /// Alertmanager only, instead of `url`: every replica of an HA set. Alertmanager replicas
    /// deduplicate among themselves, so clients must send to all of them (as Prometheus does);
    /// each replica becomes its own sink `NAME-0`, `NAME-1`, … with its own durable spool, so a
    /// replica that is down gets its alerts when it is back.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Alerts below this severity are not sent to this sink.
    #[serde(default = "default_min_severity")]
    pub min_severity: Severity,
    /// HMAC key (webhook) or routing key (PagerDuty): from an environment variable or a file,
    /// never from the command line.
    #[serde(default)]
    pub secret_env: Option<String>,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Alertmanager: `endsAt` = start + this; the alert resolves unless it fires again.
    #[serde(default = "default_resolve")]
    pub resolve_after_secs: u64,
    /// The same fingerprint is sent at most once per window.
    #[serde(default = "default_dedup")]
    pub dedup_secs: u64,
    /// At most this many alerts per rule per window; the rest are summarised at its end.
    #[serde(default = "default_rate")]
    pub rate_limit: u32,
    #[serde(default = "default_window")]
    pub rate_limit_window_secs: u64,
    #[serde(default = "default_spool")]
    pub max_spool: usize,
}

impl std::fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field(
                "url",
                &self.url.as_deref().map(|u| redact_url(self.kind, u)),
            )
            .field(
                "urls",
                &self
                    .urls
                    .iter()
                    .map(|u| redact_url(self.kind, u))
                    .collect::<Vec<_>>(),
            )
            .field("min_severity", &self.min_severity)
            .field("secret_env", &self.secret_env)
            .field("secret_file", &self.secret_file)
            .field("timeout_secs", &self.timeout_secs)
            .field("resolve_after_secs", &self.resolve_after_secs)
            .field("dedup_secs", &self.dedup_secs)
            .field("rate_limit", &self.rate_limit)
            .field("rate_limit_window_secs", &self.rate_limit_window_secs)
            .field("max_spool", &self.max_spool)
            .finish()
    }
}

/// A URL fit for logs: credentials (`user:pass@`) and the query are replaced by `***`; for Slack,
/// whose incoming-webhook URL is itself the secret, the whole path too.
pub fn redact_url(kind: SinkKind, url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = match authority.rsplit_once('@') {
        Some((_, h)) => format!("***@{h}"),
        None => authority.to_string(),
    };
    let path = if kind == SinkKind::Slack && !path.is_empty() {
        "/***".to_string()
    } else {
        match path.split_once('?') {
            Some((p, _)) => format!("{p}?***"),
            None => path.to_string(),
        }
    };
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

/// A secret value (HMAC key, routing key): never printed, not even by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Longest allowed values (README "Alert delivery": limits).
const MAX_TIMEOUT_SECS: u64 = 300;
const MAX_SPOOL_ITEMS: usize = 1_000_000;

impl SinkConfig {
    /// Whether this sink needs a secret to work at all (PagerDuty: the routing key) or was told
    /// to sign (a webhook with `secret_env`/`secret_file`).
    fn wants_secret(&self) -> bool {
        self.kind == SinkKind::Pagerduty || self.secret_env.is_some() || self.secret_file.is_some()
    }

    /// Resolves the secret now: the environment variable, else the file. A sink that wants one
    /// and cannot get it does not start (fail closed: never an unsigned webhook, never an empty
    /// routing key).
    fn resolve_secret(&self) -> Result<Option<Secret>, String> {
        if !self.wants_secret() {
            return Ok(None);
        }
        let mut tried = vec![];
        if let Some(v) = &self.secret_env {
            match std::env::var(v) {
                Ok(s) if !s.trim().is_empty() => return Ok(Some(Secret(s.trim().to_string()))),
                Ok(_) => tried.push(format!("environment variable {v} is empty")),
                Err(_) => tried.push(format!("environment variable {v} is not set")),
            }
        }
        if let Some(f) = &self.secret_file {
            match std::fs::read_to_string(f) {
                Ok(s) if !s.trim().is_empty() => return Ok(Some(Secret(s.trim().to_string()))),
                Ok(_) => tried.push(format!("{} is empty", f.display())),
                Err(e) => tried.push(format!("{}: {e}", f.display())),
            }
        }
        if tried.is_empty() {
            tried.push("set secret_env or secret_file (the routing key)".into());
        }
        Err(format!("no secret: {}", tried.join("; ")))
    }

    fn check(&self) -> Result<(), String> {
        use crate::config::{in_range, DAY};
        let n = &self.name;
        if n.is_empty()
            || n.len() > 64
            || n.starts_with('.')
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "sink name {n:?}: 1-64 characters of A-Z a-z 0-9 - _ . (it names the spool directory), not starting with '.'"
            ));
        }
        let at = |field: &str| format!("alerting.sinks[{n}].{field}");
        match (&self.url, self.kind) {
            (None, SinkKind::Pagerduty) => {}
            (None, _) => {
                return Err(format!(
                    "{}: required for a {:?} sink",
                    at("url"),
                    self.kind
                ))
            }
            (Some(u), _) => {
                if !(u.starts_with("http://") || u.starts_with("https://"))
                    || u.split_once("://").is_some_and(|(_, r)| r.is_empty())
                {
                    return Err(format!(
                        "{} = {:?}: must be an http(s) URL",
                        at("url"),
                        redact_url(self.kind, u)
                    ));
                }
            }
        }
        in_range(&at("timeout_secs"), self.timeout_secs, 1, MAX_TIMEOUT_SECS)?;
        in_range(
            &at("resolve_after_secs"),
            self.resolve_after_secs,
            1,
            30 * DAY,
        )?;
        in_range(&at("dedup_secs"), self.dedup_secs, 0, 7 * DAY)?;
        in_range(&at("rate_limit"), self.rate_limit as u64, 1, 1_000_000)?;
        in_range(
            &at("rate_limit_window_secs"),
            self.rate_limit_window_secs,
            1,
            DAY,
        )?;
        in_range(
            &at("max_spool"),
            self.max_spool as u64,
            1,
            MAX_SPOOL_ITEMS as u64,
        )?;
        if self.kind == SinkKind::Pagerduty
            && self.secret_env.is_none()
            && self.secret_file.is_none()
        {
            return Err(format!(
                "alerting.sinks[{n}]: a PagerDuty sink needs its routing key (secret_env or secret_file)"
            ));
        }
        Ok(())
    }
}

impl AlertingConfig {
    /// Every sink complete and bounded, names unique (`check-config` runs this).
    pub fn check(&self) -> Result<(), String> {
        let mut names = std::collections::HashSet::new();
        for c in self.expanded()? {
            c.check()?;
            if !names.insert(c.name.clone()) {
                return Err(format!("alerting.sinks: two sinks are named {:?}", c.name));
            }
        }
        Ok(())
    }

    /// The sinks with every `urls` list turned into one sink per URL (`NAME-0`, `NAME-1`, …).
    pub fn expanded(&self) -> Result<Vec<SinkConfig>, String> {
        let mut out = vec![];
        for c in &self.sinks {
            if c.urls.is_empty() {
                out.push(c.clone());
                continue;
            }
            let at = format!("alerting.sinks[{}].urls", c.name);
            if c.kind != SinkKind::Alertmanager {
                return Err(format!("{at}: only for an alertmanager sink (use url)"));
            }
            if c.url.is_some() {
                return Err(format!("{at}: give url or urls, not both"));
            }
            if c.urls.len() > 16 {
                return Err(format!("{at}: at most 16 replicas"));
            }
            for (i, u) in c.urls.iter().enumerate() {
                out.push(SinkConfig {
                    name: format!("{}-{i}", c.name),
                    url: Some(u.clone()),
                    urls: vec![],
                    ..c.clone()
                });
            }
        }
        Ok(out)
    }
}

fn default_min_severity() -> Severity {
    Severity::Info
}
fn default_timeout() -> u64 {
    5
}
fn default_resolve() -> u64 {
    3600
}
fn default_dedup() -> u64 {
    300
}
fn default_rate() -> u32 {
    30
}
fn default_window() -> u64 {
    60
}
fn default_spool() -> usize {
    10_000
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertingConfig {
    /// One subdirectory per sink.
    pub spool_dir: PathBuf,
    pub sinks: Vec<SinkConfig>,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        AlertingConfig {
            spool_dir: PathBuf::from("/var/lib/gpu-sensor/spool"),
            sinks: vec![],
        }
    }
}

fn rank(s: Severity) -> u8 {
    s as u8
}

fn severity_str(s: Severity) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn hostname() -> String {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim()
                .to_string()
        })
}

/// What is sent: an incident (a version of it), or the summary of what a rate limit held back.
enum Payload<'a> {
    Incident(&'a Incident),
    Summary {
        rule: &'a str,
        suppressed: u64,
        severity: Severity,
    },
}

fn lineage_text(a: &Alert) -> String {
    a.lineage
        .iter()
        .map(|x| format!("{}({})", x.exe.as_deref().unwrap_or("?"), x.pid))
        .collect::<Vec<_>>()
        .join(" < ")
}

/// The incident's timeline as text lines (the latest `n` steps).
fn timeline_text(i: &Incident, n: usize) -> String {
    use crate::incidents::What;
    let skip = i.timeline.len().saturating_sub(n);
    i.timeline[skip..]
        .iter()
        .map(|s| {
            let who = format!(
                "{} {}({})",
                s.ts,
                s.exe
                    .as_deref()
                    .map_or(s.comm.as_str(), |e| e.rsplit('/').next().unwrap_or(e)),
                s.pid
            );
            let what = match &s.what {
                What::Exec { argv, .. } => format!("exec {}", argv.join(" ")),
                What::Connect {
                    transport,
                    local_ip,
                    local_port,
                    dst_ip,
                    dst_port,
                    ..
                } => format!(
                    "connect {transport} {}:{} -> {}:{}",
                    local_ip
                        .map(|i| i.to_string())
                        .unwrap_or_else(|| "?".into()),
                    local_port.unwrap_or(0),
                    dst_ip.map(|i| i.to_string()).unwrap_or_else(|| "?".into()),
                    dst_port.unwrap_or(0)
                ),
                What::Signal { rule, severity, .. } => {
                    format!("RULE {rule} ({})", severity_str(*severity))
                }
                other => serde_json::to_string(other).unwrap_or_default(),
            };
            format!("{who} {what}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Formats the request body for a sink.
fn format(kind: SinkKind, cfg: &SinkConfig, p: &Payload<'_>) -> serde_json::Value {
    let node = hostname();
    match (kind, p) {
        (SinkKind::Webhook, Payload::Incident(i)) => {
            let mut v = serde_json::to_value(i).unwrap_or_default();
            v["node"] = json!(node);
            v
        }
        (
            SinkKind::Webhook,
            Payload::Summary {
                rule,
                suppressed,
                severity,
            },
        ) => json!({
            "kind": "alert_summary", "rule": rule, "suppressed": suppressed,
            "window_secs": cfg.rate_limit_window_secs, "severity": severity, "node": node,
        }),
        (SinkKind::Alertmanager, _) => {
            let now = SystemTime::now();
            let now_s = humantime::format_rfc3339_seconds(now).to_string();
            let ends = humantime::format_rfc3339_seconds(
                now + Duration::from_secs(cfg.resolve_after_secs),
            )
            .to_string();
            match p {
                Payload::Incident(i) => {
                    // One alert per incident id: labels that never change but the severity;
                    // when it changes, the alert with the old severity is resolved now.
                    let e = &i.entity;
                    let labels = |sev: Severity| {
                        json!({
                            "alertname": "GpuSensorIncident", "incident": i.id,
                            "severity": severity_str(sev), "node": node,
                            "namespace": e.namespace.clone().unwrap_or_default(),
                            "pod": e.pod.clone().unwrap_or_default(),
                        })
                    };
                    let first = i.alerts.first();
                    let annotations = json!({
                        "summary": i.summary(), "rule": i.headline,
                        "rules": i.signals.iter().map(|s| s.rule.as_str()).collect::<Vec<_>>().join(","),
                        "score": i.score.to_string(), "version": i.version.to_string(),
                        "pid": first.map(|a| a.pid.to_string()).unwrap_or_default(),
                        "episode": e.episode.clone().unwrap_or_default(),
                        "root": format!("{} ({})", e.root_exe.as_deref().unwrap_or("?"), e.root_pid),
                        "lineage": first.map(lineage_text).unwrap_or_default(),
                        "container": first.and_then(|a| a.container.as_ref()).and_then(|c| c.name.clone()).unwrap_or_default(),
                        "image": first.and_then(|a| a.container.as_ref()).and_then(|c| c.image.clone()).unwrap_or_default(),
                        "workload": first.and_then(|a| a.container.as_ref()).and_then(|c| c.workload.as_ref()).map(|w| format!("{}/{}", w.kind, w.name)).unwrap_or_default(),
                        "timeline": timeline_text(i, 20),
                    });
                    let closed = i.state == crate::incidents::State::Closed;
                    let mut out = vec![json!({
                        "labels": labels(i.severity), "annotations": annotations,
                        "startsAt": i.first_seen, "endsAt": if closed { &now_s } else { &ends },
                    })];
                    if let Some(old) = i.previous_severity {
                        out.push(json!({
                            "labels": labels(old), "annotations": annotations,
                            "startsAt": i.first_seen, "endsAt": now_s,
                        }));
                    }
                    serde_json::Value::Array(out)
                }
                Payload::Summary {
                    rule,
                    suppressed,
                    severity,
                } => json!([{
                    "labels": {"alertname": "GpuSensorAlertsSuppressed", "rule": rule,
                               "severity": severity_str(*severity), "node": node},
                    "annotations": {"summary": format!("{suppressed} {rule} incident updates suppressed by the rate limit")},
                    "startsAt": now_s, "endsAt": ends,
                }]),
            }
        }
        (SinkKind::Slack, Payload::Incident(i)) => json!({
            "text": format!(
                "[{}] {}{} — incident {} v{} on {node}\n{}",
                severity_str(i.severity).to_uppercase(),
                if i.state == crate::incidents::State::Closed { "CLOSED " } else { "" },
                i.summary(), i.id, i.version,
                timeline_text(i, 12),
            )
        }),
        (
            SinkKind::Slack,
            Payload::Summary {
                rule, suppressed, ..
            },
        ) => json!({
            "text": format!("{suppressed} `{rule}` incident updates suppressed by the rate limit on {node}")
        }),
        (SinkKind::Pagerduty, _) => {
            let (summary, sev, dedup, details, class, action) = match p {
                Payload::Incident(i) => (
                    i.summary(),
                    i.severity,
                    i.id.clone(),
                    serde_json::to_value(i).unwrap_or_default(),
                    i.headline.clone(),
                    if i.state == crate::incidents::State::Closed {
                        "resolve"
                    } else {
                        "trigger"
                    },
                ),
                Payload::Summary {
                    rule,
                    suppressed,
                    severity,
                } => (
                    format!("{suppressed} {rule} incident updates suppressed by the rate limit"),
                    *severity,
                    format!("summary-{rule}"),
                    json!({"suppressed": suppressed}),
                    rule.to_string(),
                    "trigger",
                ),
            };
            // PagerDuty severities: critical, error, warning, info.
            let pd = match sev {
                Severity::Critical => "critical",
                Severity::High => "error",
                Severity::Medium => "warning",
                _ => "info",
            };
            // The routing key is added when the request is sent (`Sink::request_body`): it is a
            // secret and never reaches the spool.
            json!({
                "event_action": action, "dedup_key": dedup,
                "payload": {"summary": summary, "source": node, "severity": pd, "class": class,
                            "component": "gpu-sensor", "custom_details": details},
            })
        }
    }
}

struct SinkState {
    spool: Spool,
    /// fingerprint → last enqueue time.
    recent: HashMap<String, Instant>,
    /// rule → (window start, sent in window, suppressed in window, highest severity)
    windows: HashMap<String, (Instant, u32, u64, Severity)>,
}

struct Sink {
    cfg: SinkConfig,
    /// Resolved once at start (fail closed); see [`SinkConfig::resolve_secret`].
    secret: Option<Secret>,
    state: Mutex<SinkState>,
    wake: Condvar,
}

/// Incident versions waiting for a sink's spooler thread, at most (also at most the sink's
/// `max_spool`): an incident is a few to tens of KiB, so this bounds the memory a storm can take
/// while the disk is slow. Past it a version is counted
/// (`gpu_sensor_alerts_suppressed_total{reason="queue_full"}`) and not sent, except a closing
/// version, which waits for room (it resolves what was paged).
pub const SUBMIT_QUEUE: usize = 4096;

/// The pipeline's side of one sink: a bounded queue to its spooler thread.
#[derive(Clone)]
struct SinkHandle {
    sink: Arc<Sink>,
    tx: mpsc::SyncSender<Arc<Incident>>,
    /// Versions handed over and not yet spooled (or dropped by the sink's policy).
    pending: crate::health::Backlog,
}

/// The running sinks. [`Alerting::submit`] only queues: the severity filter, dedup, rate
/// limit and the durable spool (fsync) run on one spooler thread per sink, delivery on another,
/// so an alert storm or a slow disk never stalls the event path.
#[derive(Clone)]
pub struct Alerting {
    sinks: Vec<SinkHandle>,
    metrics: Metrics,
}

impl Sink {
    /// The body as sent: the spooled body, plus the PagerDuty routing key.
    fn request_body(&self, spooled: Vec<u8>) -> Vec<u8> {
        match (self.cfg.kind, &self.secret) {
            (SinkKind::Pagerduty, Some(k)) => {
                match serde_json::from_slice::<serde_json::Value>(&spooled) {
                    Ok(mut v) => {
                        v["routing_key"] = json!(k.expose());
                        v.to_string().into_bytes()
                    }
                    Err(_) => spooled,
                }
            }
            _ => spooled,
        }
    }

    fn url(&self) -> String {
        match (self.cfg.kind, &self.cfg.url) {
            (SinkKind::Alertmanager, Some(u)) => {
                format!("{}/api/v2/alerts", u.trim_end_matches('/'))
            }
            (SinkKind::Pagerduty, None) => "https://events.pagerduty.com/v2/enqueue".into(),
            (_, Some(u)) => u.clone(),
            (_, None) => String::new(),
        }
    }

    fn enqueue(&self, st: &mut SinkState, p: &Payload<'_>, sev: Severity, m: &Metrics) {
        let body = format(self.cfg.kind, &self.cfg, p);
        match st.spool.push(rank(sev), body.to_string().as_bytes()) {
            Ok(()) => self.wake.notify_one(),
            Err(e) => tracing::error!(sink = %self.cfg.name, "spooling an alert: {e}"),
        }
        m.sync_spool(
            &self.cfg.name,
            st.spool.len(),
            st.spool.oldest_age_secs(),
            st.spool.evicted,
        );
    }

    /// Emits summaries for rate-limit windows that ended with suppressed alerts.
    fn roll_windows(&self, st: &mut SinkState, m: &Metrics) {
        let window = Duration::from_secs(self.cfg.rate_limit_window_secs);
        let ended: Vec<(String, u64, Severity)> = st
            .windows
            .iter()
            .filter(|(_, w)| w.0.elapsed() >= window && w.2 > 0)
            .map(|(r, w)| (r.clone(), w.2, w.3))
            .collect();
        for (rule, n, sev) in ended {
            st.windows.remove(&rule);
            self.enqueue(
                st,
                &Payload::Summary {
                    rule: &rule,
                    suppressed: n,
                    severity: sev,
                },
                sev,
                m,
            );
        }
        st.windows.retain(|_, w| w.0.elapsed() < window || w.2 > 0);
    }

    /// Delivery loop: oldest item first, retried with exponential backoff and jitter.
    fn run(&self, m: &Metrics) -> anyhow::Result<crate::health::Exit> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(self.cfg.timeout_secs)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut backoff = Duration::from_millis(500);
        loop {
            let item = {
                let mut st = lock(&self.state);
                self.roll_windows(&mut st, m);
                match st.spool.peek() {
                    Some(x) => x,
                    None => {
                        let _ = self.wake.wait_timeout(st, Duration::from_secs(1));
                        continue;
                    }
                }
            };
            let (it, body) = item;
            let body = self.request_body(body);
            let mut req = agent
                .post(self.url())
                .header("Content-Type", "application/json");
            if self.cfg.kind == SinkKind::Webhook {
                if let Some(secret) = &self.secret {
                    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
                        .expect("HMAC takes any key");
                    mac.update(&body);
                    let sig = crate::hex(&mac.finalize().into_bytes());
                    req = req.header("X-Gpu-Sensor-Signature", format!("sha256={sig}"));
                }
            }
            let result = match req.send(&body[..]) {
                Ok(r) if r.status().is_success() => "ok",
                // 4xx other than 408/429: the receiver rejects this payload; retrying cannot help.
                Ok(r)
                    if r.status().is_client_error()
                        && ![408, 429].contains(&r.status().as_u16()) =>
                {
                    "rejected"
                }
                Ok(_) | Err(_) => "retry",
            };
            m.delivery(&self.cfg.name, result);
            let mut st = lock(&self.state);
            if result == "retry" {
                drop(st);
                let jitter = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos()) as u64
                    % (backoff.as_millis() as u64 / 2 + 1);
                std::thread::sleep(backoff + Duration::from_millis(jitter));
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
            if result == "rejected" {
                tracing::error!(sink = %self.cfg.name, "receiver rejected alert {}; dropped", it.seq);
            }
            st.spool.remove(it.seq);
            m.sync_spool(
                &self.cfg.name,
                st.spool.len(),
                st.spool.oldest_age_secs(),
                st.spool.evicted,
            );
            backoff = Duration::from_millis(500);
        }
    }
}

impl Alerting {
    /// Opens every sink's spool (resuming what a previous run left) and starts delivery.
    pub fn start(cfg: &AlertingConfig, metrics: Metrics) -> Result<Alerting, AlertingError> {
        let mut sinks = vec![];
        cfg.check().map_err(|message| AlertingError::Config {
            sink: "*".into(),
            message,
        })?;
        let configured = cfg.expanded().map_err(|message| AlertingError::Config {
            sink: "*".into(),
            message,
        })?;
        for c in &configured {
            let secret = c
                .resolve_secret()
                .map_err(|message| AlertingError::Config {
                    sink: c.name.clone(),
                    message,
                })?;
            let spool = Spool::open(&cfg.spool_dir, &c.name, c.max_spool)?;
            if !spool.is_empty() {
                tracing::info!(sink = %c.name, pending = spool.len(), "resuming alert delivery from the spool");
            }
            metrics.sync_spool(&c.name, spool.len(), spool.oldest_age_secs(), 0);
            metrics.init_sink(&c.name);
            let s = Arc::new(Sink {
                cfg: c.clone(),
                secret,
                state: Mutex::new(SinkState {
                    spool,
                    recent: HashMap::new(),
                    windows: HashMap::new(),
                }),
                wake: Condvar::new(),
            });
            let (s2, m2) = (s.clone(), metrics.clone());
            crate::health::supervise_thread(
                &metrics.health,
                &format!("sink/{}", c.name),
                move || s2.run(&m2),
            );
            let (tx, rx) =
                mpsc::sync_channel::<Arc<Incident>>(SUBMIT_QUEUE.min(c.max_spool.max(1)));
            let rx = Arc::new(Mutex::new(rx));
            let pending = crate::health::Backlog::default();
            let (s3, m3, p3) = (s.clone(), metrics.clone(), pending.clone());
            crate::health::supervise_thread(
                &metrics.health,
                &format!("spool/{}", c.name),
                move || {
                    let rx = lock(&rx);
                    while let Ok(i) = rx.recv() {
                        // Leaves the backlog however `accept` ends (a panic included).
                        let _taken = p3.take(1);
                        s3.accept(&i, &m3);
                    }
                    Ok(crate::health::Exit::Done("the pipeline stopped".into()))
                },
            );
            sinks.push(SinkHandle {
                sink: s,
                tx,
                pending,
            });
        }
        Ok(Alerting { sinks, metrics })
    }

    /// Waits until every queued version is spooled (or `timeout` passes); returns whether
    /// nothing is left. Called at shutdown, so what was accepted survives the exit.
    pub fn wait_spooled(&self, timeout: Duration) -> bool {
        let left = crate::health::Backlog::wait_all(self.sinks.iter().map(|h| &h.pending), timeout);
        if left > 0 {
            tracing::warn!("{left} alert versions not spooled at exit");
        }
        left == 0
    }

    /// Offers a version of an incident to every sink whose severity filter takes it; never
    /// blocks (a full queue counts the version as `queue_full`).
    pub fn submit(&self, i: &Incident) {
        let mut shared: Option<Arc<Incident>> = None;
        for h in &self.sinks {
            if i.severity < h.sink.cfg.min_severity {
                continue;
            }
            let a = shared.get_or_insert_with(|| Arc::new(i.clone())).clone();
            h.pending.add();
            let sent = match h.tx.try_send(a) {
                Ok(()) => true,
                // A closing version resolves a page: it waits for room (closings are rare).
                Err(mpsc::TrySendError::Full(a)) if i.state == crate::incidents::State::Closed => {
                    h.tx.send(a).is_ok()
                }
                Err(_) => false,
            };
            if !sent {
                h.pending.undo();
                self.metrics.suppressed(&h.sink.cfg.name, "queue_full");
                tracing::warn!(sink = %h.sink.cfg.name, incident = %i.id, "alert queue full (or its spooler stopped): version {} not sent", i.version);
            }
        }
    }
}

impl Sink {
    /// The sink's policy for one incident version (dedup of the same version, rate limit per
    /// headline rule), then the spool. Runs on the sink's spooler thread.
    fn accept(&self, i: &Incident, m: &Metrics) {
        let version_key = format!("{}:{}", i.id, i.version);
        let closing = i.state == crate::incidents::State::Closed;
        let mut st = lock(&self.state);
        let now = Instant::now();
        if st.recent.contains_key(&version_key) {
            m.suppressed(&self.cfg.name, "dedup");
            return;
        }
        if st.recent.len() > 50_000 {
            let win = Duration::from_secs(self.cfg.dedup_secs.max(1));
            st.recent.retain(|_, t| now.duration_since(*t) < win);
        }
        st.recent.insert(version_key, now);
        self.roll_windows(&mut st, m);
        let w = st
            .windows
            .entry(i.headline.clone())
            .or_insert((now, 0, 0, i.severity));
        w.3 = w.3.max(i.severity);
        // A closing version always goes out: it ends what was paged.
        if w.1 >= self.cfg.rate_limit && !closing {
            w.2 += 1;
            m.suppressed(&self.cfg.name, "rate_limit");
            return;
        }
        w.1 += 1;
        self.enqueue(&mut st, &Payload::Incident(i), i.severity, m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Alert {
        let ev: crate::event::Event = serde_json::from_value(json!({
            "ts": "2026-11-27T00:00:00Z", "ts_ns": 1, "pid": 7, "tid": 7, "ppid": 1, "uid": 0, "gid": 0,
            "comm": "ssh", "cgroup_id": 1, "mntns": 1, "kind": "fork", "child_pid": 8
        }))
        .unwrap();
        Alert {
            kind: "alert".into(),
            ts: "2026-11-27T00:00:00Z".into(),
            rule: "ssh-forwarding-flags".into(),
            description: "d".into(),
            severity: Severity::High,
            weight: None,
            incident: None,
            severity_raised_by: None,
            tags: vec![],
            fingerprint: "abc".into(),
            pid: 7,
            comm: "ssh".into(),
            exe: Some("/usr/bin/ssh".into()),
            argv: vec!["ssh".into(), "-R".into()],
            event: ev,
            related: vec![],
            count: None,
            lineage: vec![],
            container: None,
            episode: None,
            gpu_session: None,
        }
    }

    fn cfg(kind: SinkKind) -> SinkConfig {
        SinkConfig {
            name: "t".into(),
            kind,
            url: Some("http://x".into()),
            urls: vec![],
            min_severity: Severity::Info,
            secret_env: None,
            secret_file: None,
            timeout_secs: 1,
            resolve_after_secs: 60,
            dedup_secs: 1,
            rate_limit: 1,
            rate_limit_window_secs: 60,
            max_spool: 10,
        }
    }

    fn incident() -> Incident {
        let mut inc = crate::incidents::Incidents::new(Default::default());
        let mut a = alert();
        inc.add(&mut a, &crate::context::process::ProcTable::default(), None)
            .expect("a strong alert raises an incident")
    }

    #[test]
    fn alertmanager_replicas_become_one_sink_each() {
        let mut c = cfg(SinkKind::Alertmanager);
        c.name = "am".into();
        c.url = None;
        c.urls = vec!["http://am-0:9093".into(), "http://am-1:9093".into()];
        let mut a = AlertingConfig {
            sinks: vec![c.clone()],
            ..Default::default()
        };
        a.check().unwrap();
        let e = a.expanded().unwrap();
        let got: Vec<(&str, Option<&str>)> = e
            .iter()
            .map(|s| (s.name.as_str(), s.url.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("am-0", Some("http://am-0:9093")),
                ("am-1", Some("http://am-1:9093"))
            ]
        );
        a.sinks[0].url = Some("http://am:9093".into());
        assert!(a.check().unwrap_err().contains("not both"));
        a.sinks[0].url = None;
        a.sinks[0].kind = SinkKind::Webhook;
        assert!(a.check().unwrap_err().contains("only for an alertmanager"));
        a.sinks[0].kind = SinkKind::Alertmanager;
        a.sinks[0].urls[1] = "am-1:9093".into();
        assert!(a.check().unwrap_err().contains("http(s) URL"));
        // An expanded name may not collide with another sink.
        a.sinks[0].urls[1] = "http://am-1:9093".into();
        let mut other = cfg(SinkKind::Webhook);
        other.name = "am-1".into();
        a.sinks.push(other);
        assert!(a.check().unwrap_err().contains("two sinks"));
    }

    #[test]
    fn payload_shapes() {
        let i = incident();
        let am = format(
            SinkKind::Alertmanager,
            &cfg(SinkKind::Alertmanager),
            &Payload::Incident(&i),
        );
        assert_eq!(am[0]["labels"]["alertname"], "GpuSensorIncident");
        assert_eq!(am[0]["labels"]["incident"], i.id.as_str());
        assert_eq!(am[0]["annotations"]["rule"], "ssh-forwarding-flags");
        assert_eq!(am[0]["labels"]["severity"], "high");
        assert_eq!(am.as_array().unwrap().len(), 1);
        assert!(am[0]["endsAt"].is_string() && am[0]["startsAt"] == "2026-11-27T00:00:00Z");
        // A severity change resolves the alert with the old label.
        let mut up = i.clone();
        up.previous_severity = Some(Severity::Medium);
        let am = format(
            SinkKind::Alertmanager,
            &cfg(SinkKind::Alertmanager),
            &Payload::Incident(&up),
        );
        assert_eq!(am[1]["labels"]["severity"], "medium");
        let pd = format(
            SinkKind::Pagerduty,
            &cfg(SinkKind::Pagerduty),
            &Payload::Incident(&i),
        );
        assert_eq!(pd["event_action"].as_str(), Some("trigger"));
        assert!(
            pd.get("routing_key").is_none(),
            "the routing key is a secret: never in the spooled body"
        );
        assert_eq!(pd["payload"]["severity"], "error");
        assert_eq!(pd["dedup_key"], i.id.as_str());
        let mut closed = i.clone();
        closed.state = crate::incidents::State::Closed;
        let pd = format(
            SinkKind::Pagerduty,
            &cfg(SinkKind::Pagerduty),
            &Payload::Incident(&closed),
        );
        assert_eq!(pd["event_action"].as_str(), Some("resolve"));
        let sl = format(
            SinkKind::Slack,
            &cfg(SinkKind::Slack),
            &Payload::Incident(&i),
        );
        assert!(
            sl["text"]
                .as_str()
                .unwrap()
                .starts_with("[HIGH] ssh-forwarding-flags"),
            "{sl}"
        );
        let wh = format(
            SinkKind::Webhook,
            &cfg(SinkKind::Webhook),
            &Payload::Incident(&i),
        );
        assert_eq!(wh["kind"], "incident");
        assert_eq!(wh["version"], 1);
        assert_eq!(wh["alerts"][0]["rule"], "ssh-forwarding-flags");
        let sum = format(
            SinkKind::Webhook,
            &cfg(SinkKind::Webhook),
            &Payload::Summary {
                rule: "r",
                suppressed: 5,
                severity: Severity::Low,
            },
        );
        assert_eq!(
            (sum["kind"].as_str(), sum["suppressed"].as_u64()),
            (Some("alert_summary"), Some(5))
        );
    }
}
