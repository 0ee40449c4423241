//! Export to the log pipeline a cluster already runs (config `[export]`), off the event path:
//! - [`file`]: a rotating JSON-lines file (size limit, numbered backups, gzip of rotated files)
//!   on a host path that Fluent Bit / Vector / Promtail tail;
//! - [`otlp`]: OTLP logs over HTTP (protobuf), batched, retried on 429/5xx as the OTLP spec
//!   says.
//!
//! The pipeline builds one [`Record`] per exported record (its JSON and the few typed fields a
//! log pipeline indexes) and hands it to each exporter's bounded queue without blocking. A full
//! queue drops the record and counts it (`gpu_sensor_export_records_total{result="dropped"}`):
//! a slow disk or a collector that is down never slows the event path.

pub mod file;
pub mod otlp;

use std::{
    sync::{
        mpsc::{self, SyncSender, TrySendError},
        Arc, Mutex,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};

use crate::{event::Container, health::Backlog, metrics::Metrics, rules::Severity};

/// What an exporter takes (config `records`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    /// Every decoded event (exec, connect, GPU session, …).
    Event,
    /// Rule hits: strong alerts and evidence.
    Alert,
    /// Incidents, every version.
    Incident,
    /// The sensor's own records (start, loss, rules reload, decode errors).
    Status,
}

impl RecordKind {
    pub const ALL: [RecordKind; 4] = [
        RecordKind::Event,
        RecordKind::Alert,
        RecordKind::Incident,
        RecordKind::Status,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Event => "event",
            RecordKind::Alert => "alert",
            RecordKind::Incident => "incident",
            RecordKind::Status => "status",
        }
    }
}

/// One exported record: its JSON line and what a log pipeline indexes.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub kind: RecordKind,
    /// The event kind (`exec`), the rule, the incident's headline or the status kind.
    pub name: String,
    /// When it happened (UNIX ns; the record's own timestamp).
    pub ts_unix_nanos: u64,
    pub severity: Option<Severity>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    /// The record as the sensor prints it on stdout (one JSON object, no newline).
    pub json: String,
}

impl Record {
    /// Builds a record; `ts` is the record's RFC 3339 timestamp (now when it does not parse).
    pub fn new<T: Serialize + ?Sized>(
        kind: RecordKind,
        name: &str,
        ts: &str,
        severity: Option<Severity>,
        container: Option<&Container>,
        v: &T,
    ) -> Result<Record, serde_json::Error> {
        let t = humantime::parse_rfc3339(ts).unwrap_or_else(|_| SystemTime::now());
        Ok(Record {
            kind,
            name: name.to_string(),
            ts_unix_nanos: unix_nanos(t),
            severity,
            namespace: container.and_then(|c| c.namespace.clone()),
            pod: container.and_then(|c| c.pod.clone()),
            container: container.and_then(|c| c.name.clone()),
            json: serde_json::to_string(v)?,
        })
    }
}

pub(crate) fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `[export]`: both exporters are off unless configured.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    pub file: Option<file::FileConfig>,
    pub otlp: Option<otlp::OtlpConfig>,
}

impl ExportConfig {
    /// Bounds and cross-checks (called by `Config::check`).
    pub fn check(&self) -> Result<(), String> {
        if let Some(f) = &self.file {
            f.check()?;
        }
        if let Some(o) = &self.otlp {
            o.check()?;
        }
        Ok(())
    }
}

/// Largest queue an exporter may be given (records).
pub const MAX_QUEUE: usize = 1 << 20;

/// Outcome labels of `gpu_sensor_export_records_total`.
pub const RESULTS: [&str; 3] = ["exported", "dropped", "failed"];

/// The pipeline's handle on the exporters.
#[derive(Default, Clone)]
pub struct Exporters {
    queues: Vec<Queue>,
}

#[derive(Clone)]
struct Queue {
    kinds: Vec<RecordKind>,
    tx: SyncSender<Arc<Record>>,
    dropped: Counter,
    /// Records queued and not yet written out (flushed, or sent or given up).
    pending: Backlog,
}

impl Exporters {
    /// Starts the configured exporters, each on its own supervised thread.
    pub fn start(cfg: &ExportConfig, node: Option<String>, metrics: &Metrics) -> Exporters {
        let mut queues = vec![];
        for (name, on) in [("file", cfg.file.is_some()), ("otlp", cfg.otlp.is_some())] {
            for r in RESULTS.iter().filter(|_| on) {
                let _ = metrics.export_counter(name, r);
            }
        }
        // One bounded queue per exporter; the receiver goes to its thread.
        let mut queue = |name: &str, kinds: &[RecordKind], cap: usize| {
            let (tx, rx) = mpsc::sync_channel(cap);
            let pending = Backlog::default();
            queues.push(Queue {
                kinds: kinds.to_vec(),
                tx,
                dropped: metrics.export_counter(name, "dropped"),
                pending: pending.clone(),
            });
            (Arc::new(Mutex::new(rx)), pending)
        };
        if let Some(f) = &cfg.file {
            let (rx, pending) = queue("file", &f.records, f.queue);
            file::spawn(f.clone(), rx, pending, metrics);
        }
        if let Some(o) = &cfg.otlp {
            let (rx, pending) = queue("otlp", &o.records, o.queue);
            otlp::spawn(o.clone(), node, rx, pending, metrics);
        }
        Exporters { queues }
    }

    /// Whether any exporter takes records of this kind (so the caller builds none otherwise).
    pub fn wants(&self, kind: RecordKind) -> bool {
        self.queues.iter().any(|q| q.kinds.contains(&kind))
    }

    /// Builds the record only when an exporter takes its kind, then submits it.
    pub fn offer<T: Serialize + ?Sized>(
        &self,
        kind: RecordKind,
        name: &str,
        ts: &str,
        severity: Option<Severity>,
        container: Option<&Container>,
        v: &T,
    ) {
        if !self.wants(kind) {
            return;
        }
        match Record::new(kind, name, ts, severity, container, v) {
            Ok(r) => self.submit(r),
            Err(e) => tracing::warn!("export: serializing a {} record: {e}", kind.name()),
        }
    }

    /// Hands a record to every exporter that takes its kind; never blocks.
    pub fn submit(&self, r: Record) {
        let r = Arc::new(r);
        for q in &self.queues {
            if !q.kinds.contains(&r.kind) {
                continue;
            }
            q.pending.add();
            match q.tx.try_send(r.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    q.pending.undo();
                    q.dropped.inc();
                }
            }
        }
    }

    /// Waits until every queued record is written out (or `timeout` passes): called at
    /// shutdown, so the last records (the final `loss` among them) reach the file and the
    /// collector. Returns whether nothing is left.
    pub fn wait_idle(&self, timeout: std::time::Duration) -> bool {
        let left = Backlog::wait_all(self.queues.iter().map(|q| &q.pending), timeout);
        if left > 0 {
            tracing::warn!("export: {left} records not written out at exit");
        }
        left == 0
    }
}

fn all_kinds() -> Vec<RecordKind> {
    RecordKind::ALL.to_vec()
}

fn check_kinds(what: &str, kinds: &[RecordKind]) -> Result<(), String> {
    if kinds.is_empty() {
        return Err(format!(
            "{what}.records is empty: name at least one of event, alert, incident, status"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_takes_its_timestamp_and_container() {
        let c = Container {
            cgroup: "/kubepods".into(),
            namespace: Some("ml".into()),
            pod: Some("train-0".into()),
            name: Some("trainer".into()),
            ..Default::default()
        };
        let r = Record::new(
            RecordKind::Event,
            "exec",
            "2026-11-30T10:00:00.000000001Z",
            None,
            Some(&c),
            &serde_json::json!({"kind": "exec"}),
        )
        .unwrap();
        assert_eq!(r.ts_unix_nanos, 1_796_032_800_000_000_001);
        assert_eq!(r.pod.as_deref(), Some("train-0"));
        assert_eq!(r.container.as_deref(), Some("trainer"));
        assert_eq!(r.json, r#"{"kind":"exec"}"#);
    }

    #[test]
    fn full_queue_drops_and_counts_without_blocking() {
        let (tx, rx) = mpsc::sync_channel(1);
        let dropped = Counter::default();
        let ex = Exporters {
            queues: vec![Queue {
                kinds: vec![RecordKind::Alert],
                tx,
                dropped: dropped.clone(),
                pending: Default::default(),
            }],
        };
        let rec = |kind| Record {
            kind,
            name: "x".into(),
            ts_unix_nanos: 1,
            severity: None,
            namespace: None,
            pod: None,
            container: None,
            json: "{}".into(),
        };
        assert!(ex.wants(RecordKind::Alert) && !ex.wants(RecordKind::Event));
        ex.submit(rec(RecordKind::Event)); // not taken: not queued, not dropped
        ex.submit(rec(RecordKind::Alert));
        ex.submit(rec(RecordKind::Alert)); // queue of 1 is full
        assert_eq!(dropped.get(), 1);
        assert_eq!(rx.try_iter().count(), 1);
    }
}
