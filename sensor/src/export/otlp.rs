//! `[export.otlp]`: OTLP logs over HTTP (`POST …/v1/logs`, `application/x-protobuf`), to an
//! OpenTelemetry Collector or any OTLP receiver (Loki, Elastic, Datadog, …).
//!
//! Records are batched (`batch` records or `flush_ms`, whichever comes first) into one
//! `ExportLogsServiceRequest`. Per the OTLP/HTTP spec, 429, 502, 503 and 504 and transport
//! errors are retried with exponential backoff (honouring `Retry-After`) for up to
//! `retry_secs`; any other refusal is final. Records that are given up are counted
//! (`result="failed"`), records that did not fit the queue too (`result="dropped"`).
//!
//! Each record is one `LogRecord`: the record's JSON as the string body, its time, a severity
//! (info for events and status records; alerts and incidents by their severity), and
//! attributes `gpu_sensor.record`, `gpu_sensor.name`, `k8s.namespace.name`, `k8s.pod.name`,
//! `k8s.container.name`. The resource carries `service.name`, `service.version`, `host.name`
//! and `k8s.node.name`.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{mpsc::Receiver, Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use prost::Message;
use serde::Deserialize;

use super::{all_kinds, check_kinds, unix_nanos, Record, RecordKind, MAX_QUEUE};
use crate::{metrics::Metrics, rules::Severity};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The logs endpoint, e.g. `http://otel-collector.observability:4318/v1/logs`.
    pub endpoint: String,
    /// Extra request headers (tenant ids and the like; not secrets).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A file holding a bearer token (`Authorization: Bearer …`), read at each start.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    #[serde(default = "default_batch")]
    pub batch: usize,
    #[serde(default = "default_flush_ms")]
    pub flush_ms: u64,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// How long a batch is retried before it is given up.
    #[serde(default = "default_retry")]
    pub retry_secs: u64,
    #[serde(default = "default_queue")]
    pub queue: usize,
    #[serde(default = "all_kinds")]
    pub records: Vec<RecordKind>,
}

fn default_batch() -> usize {
    512
}
fn default_flush_ms() -> u64 {
    1000
}
fn default_timeout() -> u64 {
    10
}
fn default_retry() -> u64 {
    300
}
fn default_queue() -> usize {
    65536
}

impl OtlpConfig {
    pub fn check(&self) -> Result<(), String> {
        if !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")) {
            return Err(format!(
                "export.otlp.endpoint = {:?}: an http:// or https:// URL (e.g. http://collector:4318/v1/logs)",
                self.endpoint
            ));
        }
        let range = |what: &str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                Err(format!("export.otlp.{what} = {v}: between {lo} and {hi}"))
            } else {
                Ok(())
            }
        };
        range("batch", self.batch as u64, 1, 65536)?;
        range("flush_ms", self.flush_ms, 10, 60_000)?;
        range("timeout_secs", self.timeout_secs, 1, 300)?;
        range("retry_secs", self.retry_secs, 0, 86_400)?;
        range("queue", self.queue as u64, 1, MAX_QUEUE as u64)?;
        for (k, v) in &self.headers {
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(format!("export.otlp.headers: bad header name {k:?}"));
            }
            if v.bytes().any(|b| b.is_ascii_control()) {
                return Err(format!(
                    "export.otlp.headers.{k}: control characters are not allowed in a header value"
                ));
            }
        }
        check_kinds("export.otlp", &self.records)
    }
}

/// The subset of the OTLP protobuf messages the sensor sends, field numbers from
/// opentelemetry-proto v1.5 (`opentelemetry/proto/collector/logs/v1/logs_service.proto`,
/// `logs/v1/logs.proto`, `common/v1/common.proto`, `resource/v1/resource.proto`); the test
/// decodes what is sent with the official Python package.
pub mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportLogsServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_logs: Vec<ResourceLogs>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceLogs {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_logs: Vec<ScopeLogs>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeLogs {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub log_records: Vec<LogRecord>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LogRecord {
        #[prost(fixed64, tag = "1")]
        pub time_unix_nano: u64,
        #[prost(fixed64, tag = "11")]
        pub observed_time_unix_nano: u64,
        /// `SeverityNumber` (an enum in the proto; the wire form is the same varint).
        #[prost(int32, tag = "2")]
        pub severity_number: i32,
        #[prost(string, tag = "3")]
        pub severity_text: String,
        #[prost(message, optional, tag = "5")]
        pub body: Option<AnyValue>,
        #[prost(message, repeated, tag = "6")]
        pub attributes: Vec<KeyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(string, tag = "1")]
        pub string_value: String,
    }
}

fn kv(key: &str, v: &str) -> pb::KeyValue {
    pb::KeyValue {
        key: key.into(),
        value: Some(pb::AnyValue {
            string_value: v.into(),
        }),
    }
}

/// OTLP `SeverityNumber` and text for a record (logs data model: INFO 9, WARN 13, WARN2 14,
/// ERROR 17, FATAL 21).
fn severity(s: Option<Severity>) -> (i32, &'static str) {
    match s {
        None | Some(Severity::Info) => (9, "INFO"),
        Some(Severity::Low) => (13, "WARN"),
        Some(Severity::Medium) => (14, "WARN2"),
        Some(Severity::High) => (17, "ERROR"),
        Some(Severity::Critical) => (21, "FATAL"),
    }
}

/// One request for a batch.
pub fn encode(batch: &[Arc<Record>], node: Option<&str>, observed: SystemTime) -> Vec<u8> {
    let observed = unix_nanos(observed);
    let mut res = vec![
        kv("service.name", "gpu-sensor"),
        kv("service.version", env!("CARGO_PKG_VERSION")),
    ];
    let host = hostname();
    if !host.is_empty() {
        res.push(kv("host.name", &host));
    }
    if let Some(n) = node {
        res.push(kv("k8s.node.name", n));
    }
    let log_records = batch
        .iter()
        .map(|r| {
            let (num, text) = severity(r.severity);
            let mut attributes = vec![
                kv("gpu_sensor.record", r.kind.name()),
                kv("gpu_sensor.name", &r.name),
            ];
            for (k, v) in [
                ("k8s.namespace.name", &r.namespace),
                ("k8s.pod.name", &r.pod),
                ("k8s.container.name", &r.container),
            ] {
                if let Some(v) = v {
                    attributes.push(kv(k, v));
                }
            }
            pb::LogRecord {
                time_unix_nano: r.ts_unix_nanos,
                observed_time_unix_nano: observed,
                severity_number: num,
                severity_text: text.into(),
                body: Some(pb::AnyValue {
                    string_value: r.json.clone(),
                }),
                attributes,
            }
        })
        .collect();
    pb::ExportLogsServiceRequest {
        resource_logs: vec![pb::ResourceLogs {
            resource: Some(pb::Resource { attributes: res }),
            scope_logs: vec![pb::ScopeLogs {
                scope: Some(pb::InstrumentationScope {
                    name: "gpu-sensor".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
                log_records,
            }],
        }],
    }
    .encode_to_vec()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// What a response means for the batch (OTLP/HTTP "Failures").
#[derive(Debug, PartialEq)]
enum Outcome {
    Sent,
    Retry(Option<Duration>),
    Refused(String),
}

fn classify(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Outcome {
    match r {
        Ok(resp) => {
            let st = resp.status().as_u16();
            let after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(300)));
            match st {
                200..=299 => Outcome::Sent,
                429 | 502 | 503 | 504 => Outcome::Retry(after),
                _ => Outcome::Refused(format!("HTTP {st}")),
            }
        }
        Err(e) => {
            tracing::debug!("OTLP export: {e}");
            Outcome::Retry(None)
        }
    }
}

/// The bearer token, read from its file for each batch (projected tokens rotate).
fn token(cfg: &OtlpConfig) -> anyhow::Result<Option<String>> {
    match &cfg.bearer_token_file {
        Some(p) => Ok(Some(
            std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("export.otlp.bearer_token_file {}: {e}", p.display()))?
                .trim()
                .to_string(),
        )),
        None => Ok(None),
    }
}

/// The sender thread (supervised). `pending` counts records queued and not yet sent or given
/// up (see [`super::Exporters::wait_idle`]).
pub fn spawn(
    cfg: OtlpConfig,
    node: Option<String>,
    rx: Arc<Mutex<Receiver<Arc<Record>>>>,
    pending: crate::health::Backlog,
    metrics: &Metrics,
) {
    use crate::health::Exit;
    let sent = metrics.export_counter("otlp", "exported");
    let failed = metrics.export_counter("otlp", "failed");
    crate::health::supervise_thread(&metrics.health, "export-otlp", move || {
        let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
        token(&cfg)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(cfg.timeout_secs)))
            .http_status_as_error(false)
            .build()
            .into();
        tracing::info!(endpoint = %cfg.endpoint, "exporting OTLP logs");
        let flush_every = Duration::from_millis(cfg.flush_ms);
        let mut batch: Vec<Arc<Record>> = Vec::with_capacity(cfg.batch);
        let mut deadline = Instant::now() + flush_every;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let mut closed = false;
            match rx.recv_timeout(wait) {
                Ok(r) => batch.push(r),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => closed = true,
            }
            if batch.len() < cfg.batch && Instant::now() < deadline && !closed {
                continue;
            }
            if !batch.is_empty() {
                // However the batch ends (sent, refused, given up, a panic), it leaves `pending`.
                let _done = pending.take(batch.len());
                let token = token(&cfg).unwrap_or_else(|e| {
                    tracing::warn!("{e}: sending without a token");
                    None
                });
                let body = encode(&batch, node.as_deref(), SystemTime::now());
                let give_up = Instant::now() + Duration::from_secs(cfg.retry_secs);
                let mut backoff = Duration::from_millis(500);
                loop {
                    let mut req = agent
                        .post(&cfg.endpoint)
                        .header("content-type", "application/x-protobuf");
                    for (k, v) in &cfg.headers {
                        req = req.header(k.as_str(), v.as_str());
                    }
                    if let Some(t) = &token {
                        req = req.header("authorization", format!("Bearer {t}"));
                    }
                    match classify(req.send(&body[..])) {
                        Outcome::Sent => {
                            sent.inc_by(batch.len() as u64);
                            break;
                        }
                        Outcome::Refused(why) => {
                            tracing::warn!(
                                "OTLP export refused ({why}): {} records given up",
                                batch.len()
                            );
                            failed.inc_by(batch.len() as u64);
                            break;
                        }
                        Outcome::Retry(after) => {
                            // Retry-After is honoured, never below the backoff (a 0 would spin).
                            let pause = after.map_or(backoff, |a| a.max(backoff));
                            if Instant::now() + pause > give_up {
                                tracing::warn!(
                                    "OTLP export: no success within {} s: {} records given up",
                                    cfg.retry_secs,
                                    batch.len()
                                );
                                failed.inc_by(batch.len() as u64);
                                break;
                            }
                            std::thread::sleep(pause);
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                        }
                    }
                }
                batch.clear();
            }
            if closed {
                return Ok(Exit::Done("the pipeline stopped".into()));
            }
            deadline = Instant::now() + flush_every;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_a_request_that_decodes_back() {
        let r = Arc::new(Record {
            kind: RecordKind::Alert,
            name: "reverse-shell".into(),
            ts_unix_nanos: 1_796_032_800_000_000_001,
            severity: Some(Severity::Critical),
            namespace: Some("ml".into()),
            pod: Some("train-0".into()),
            container: None,
            json: r#"{"kind":"alert"}"#.into(),
        });
        let bytes = encode(&[r], Some("node-1"), SystemTime::UNIX_EPOCH);
        let req = pb::ExportLogsServiceRequest::decode(&bytes[..]).unwrap();
        let rl = &req.resource_logs[0];
        let lr = &rl.scope_logs[0].log_records[0];
        assert_eq!(lr.time_unix_nano, 1_796_032_800_000_000_001);
        assert_eq!(
            (lr.severity_number, lr.severity_text.as_str()),
            (21, "FATAL")
        );
        assert_eq!(
            lr.body.as_ref().unwrap().string_value,
            r#"{"kind":"alert"}"#
        );
        let attrs: Vec<(&str, &str)> = lr
            .attributes
            .iter()
            .map(|k| {
                (
                    k.key.as_str(),
                    k.value.as_ref().unwrap().string_value.as_str(),
                )
            })
            .collect();
        assert!(attrs.contains(&("k8s.pod.name", "train-0")));
        assert!(!attrs.iter().any(|(k, _)| *k == "k8s.container.name"));
        assert!(rl
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .any(|k| k.key == "k8s.node.name"));
    }

    #[test]
    fn config_is_checked() {
        let mut c: OtlpConfig = toml::from_str("endpoint = \"collector:4318\"").unwrap();
        assert!(c.check().unwrap_err().contains("http://"));
        c.endpoint = "http://c:4318/v1/logs".into();
        c.check().unwrap();
        c.headers.insert("bad header".into(), "x".into());
        assert!(c.check().unwrap_err().contains("header"));
    }
}
