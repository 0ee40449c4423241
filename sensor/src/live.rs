//! The live loop of `sensor run`, on its own thread: ring records → decode →
//! [`Processor`] (process/pod context, GPU sessions, rules) → outputs (stdout, recording, alert
//! sinks, metrics), with the side inputs (NVML samples, rule reloads), the metric sync and the
//! periodic `loss` record. [`crate::run`] starts it.

use std::{
    sync::{atomic::Ordering, mpsc as smpsc, Arc},
    time::{Duration, Instant},
};

use aya::maps::{MapData, PerCpuArray};
use bytes::Bytes;
use sensor_common::kind;

use crate::{
    config::StdoutClosed,
    decode::{decode, Clock},
    export::RecordKind,
    gpu::session::UsageSample,
    hook,
    metrics::{AlertLabels, HookLabel, KindLabel, Metrics, ProbeErrorLabels, ResultLabel},
    output::{DecodeFailure, JsonLines, Loss, RulesReload, Status},
    pipeline::{Out, Processor},
    ring::Counters,
    rules::{self, RuleSet},
};

/// Names of the kernel record kinds for the counters in `loss` events and the drop metrics
/// (index = kind id; 0 = unknown).
pub(crate) fn kind_names() -> impl Iterator<Item = &'static str> {
    (0..kind::MAX).map(sensor_common::record_kind_name)
}

fn by_kind(values: &[u64]) -> std::collections::BTreeMap<String, u64> {
    kind_names()
        .zip(values)
        .map(|(k, v)| (k.to_string(), *v))
        .collect()
}

/// Outcome of a reload attempt, for the pipeline to report.
pub(crate) enum Reload {
    Ok(Arc<RuleSet>, &'static str),
    Failed(rules::load::LoadError, &'static str),
}

pub(crate) fn now_boot_ns() -> u64 {
    crate::decode::clock_ns(libc::CLOCK_BOOTTIME)
}

/// The live loop on its own thread: ring records → [`Processor`] → outputs, with the side
/// inputs (NVML samples, rule reloads), the metric sync and the periodic `loss` record.
pub(crate) struct LiveLoop<W: std::io::Write> {
    pub(crate) sink: Sink<W>,
    pub(crate) proc: Processor,
    pub(crate) usage_rx: smpsc::Receiver<UsageSample>,
    pub(crate) reload_rx: smpsc::Receiver<Reload>,
    pub(crate) clock: Clock,
    pub(crate) counters: Arc<Counters>,
    pub(crate) drops: PerCpuArray<MapData, u64>,
    pub(crate) probe_errors: PerCpuArray<MapData, u64>,
    /// The counters of the last `loss` record (ts empty, `last` false, no probe errors), to
    /// print only changes.
    pub(crate) last_loss: Option<Loss>,
}

/// Where pipeline outputs go: stdout, the optional recording, the alert sinks and the metrics.
pub(crate) struct Sink<W: std::io::Write> {
    pub(crate) alerting: crate::alerting::Alerting,
    pub(crate) out: JsonLines<W>,
    /// What a write error on stdout means (config `output.on_stdout_closed`).
    pub(crate) stdout_policy: StdoutClosed,
    /// Stdout failed and the policy is to continue: nothing more is written there.
    pub(crate) stdout_closed: bool,
    pub(crate) record: Option<JsonLines<std::fs::File>>,
    /// The log-pipeline exporters (`[export]`), fed without blocking.
    pub(crate) export: crate::export::Exporters,
    pub(crate) metrics: Metrics,
    /// Per-kind event counters, resolved once (no label lookup per event).
    pub(crate) by_kind:
        std::collections::HashMap<&'static str, prometheus_client::metrics::counter::Counter>,
}

impl<W: std::io::Write> Sink<W> {
    fn emit(&mut self, o: Out<'_>) -> std::io::Result<()> {
        match o {
            Out::Event(e) => {
                let k = e.body.kind().name();
                let metrics = &self.metrics;
                self.by_kind
                    .entry(k)
                    .or_insert_with(|| {
                        metrics
                            .events
                            .get_or_create(&KindLabel { kind: k.into() })
                            .clone()
                    })
                    .inc();
                self.print(e)?;
                self.export
                    .offer(RecordKind::Event, k, &e.ts, None, e.container.as_ref(), e);
                if let Some(r) = &mut self.record {
                    r.write(e)?;
                }
                Ok(())
            }
            Out::Alert(a) => {
                let sev = serde_json::to_value(a.severity).ok();
                let severity = sev
                    .as_ref()
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string();
                self.metrics
                    .alerts
                    .get_or_create(&AlertLabels {
                        rule: a.rule.clone(),
                        severity,
                    })
                    .inc();
                self.export.offer(
                    RecordKind::Alert,
                    &a.rule,
                    &a.ts,
                    Some(a.severity),
                    a.container.as_ref(),
                    a,
                );
                self.print(a)
            }
            Out::Incident(i) => {
                if i.entity.kind == crate::incidents::EntityKind::Sensor {
                    self.metrics.health.set_degraded(match i.state {
                        crate::incidents::State::Open => i.partial_reason.clone(),
                        crate::incidents::State::Closed => None,
                    });
                }
                self.metrics.incident(i);
                self.alerting.submit(i);
                if self.export.wants(RecordKind::Incident) {
                    let c = crate::event::Container {
                        namespace: i.entity.namespace.clone(),
                        pod: i.entity.pod.clone(),
                        ..Default::default()
                    };
                    self.export.offer(
                        RecordKind::Incident,
                        &i.headline,
                        &i.last_seen,
                        Some(i.severity),
                        Some(&c),
                        i,
                    );
                }
                self.print(i)
            }
        }
    }

    /// Prints a status record and exports it.
    pub(crate) fn status(&mut self, s: &Status) -> std::io::Result<()> {
        self.export
            .offer(RecordKind::Status, s.name(), s.ts(), None, None, s);
        self.print(s)
    }

    /// Writes one record to stdout, applying the stdout policy to a failure.
    fn print<T: serde::Serialize + ?Sized>(&mut self, v: &T) -> std::io::Result<()> {
        if self.stdout_closed {
            self.metrics.stdout_dropped.inc();
            return Ok(());
        }
        let r = self.out.write(v);
        self.stdout_failed(r)
    }

    fn stdout_failed(&mut self, r: std::io::Result<()>) -> std::io::Result<()> {
        let Err(e) = r else { return Ok(()) };
        match self.stdout_policy {
            StdoutClosed::Exit => Err(std::io::Error::new(
                e.kind(),
                format!("writing to stdout: {e} (output.on_stdout_closed = \"exit\")"),
            )),
            StdoutClosed::Continue => {
                tracing::warn!("writing to stdout: {e}; continuing without stdout (alert sinks, metrics and the recording go on)");
                self.stdout_closed = true;
                self.metrics.stdout_dropped.inc();
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.stdout_closed {
            let r = self.out.flush();
            self.stdout_failed(r)?;
        }
        if let Some(r) = &mut self.record {
            r.flush()?;
        }
        Ok(())
    }
}

impl<W: std::io::Write> LiveLoop<W> {
    /// Runs on a blocking thread: decode, enrich and write until the reader closes the queue.
    pub(crate) fn run(
        mut self,
        rx: smpsc::Receiver<Bytes>,
        loss_every: Duration,
    ) -> anyhow::Result<()> {
        let mut next_loss = Instant::now() + loss_every;
        // Side inputs (rule reloads, NVML samples, metric sync) are also taken while the queue
        // never runs empty, so a busy node still gets its reloads.
        const SIDE_EVERY: Duration = Duration::from_millis(200);
        let mut next_side = Instant::now() + SIDE_EVERY;
        let mut n: u32 = 0;
        loop {
            n = n.wrapping_add(1);
            if n.is_multiple_of(256) && Instant::now() >= next_side {
                self.flush()?;
                self.side_inputs()?;
                next_side = Instant::now() + SIDE_EVERY;
            }
            // The loss report's clock is read after a wait and every 64th record, not per
            // record.
            let mut waited = n.is_multiple_of(64);
            let item = match rx.try_recv() {
                Ok(b) => Some(b),
                Err(smpsc::TryRecvError::Empty) => {
                    waited = true;
                    self.flush()?;
                    // At most every SIDE_EVERY: the metric sync reads the per-CPU counter
                    // maps with one bpf(2) call per entry (~90), and at 10k events/s the queue
                    // runs empty after every batch (hundreds of times a second); doing it each
                    // time was most of the agent's CPU.
                    if Instant::now() >= next_side {
                        self.side_inputs()?;
                        next_side = Instant::now() + SIDE_EVERY;
                    }
                    // Wait for the next record, but wake up for the periodic loss report, NVML
                    // samples and rule reloads.
                    let wait = next_loss
                        .min(next_side)
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_secs(1));
                    match rx.recv_timeout(wait) {
                        Ok(b) => Some(b),
                        Err(smpsc::RecvTimeoutError::Timeout) => None,
                        Err(smpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                Err(smpsc::TryRecvError::Disconnected) => break,
            };
            if let Some(b) = item {
                self.handle(&b)?;
            }
            if waited && Instant::now() >= next_loss {
                self.report_loss(false)?;
                next_loss = Instant::now() + loss_every;
            }
        }
        self.report_loss(true)?;
        self.flush()?;
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.sink.flush()
    }

    fn handle(&mut self, b: &[u8]) -> anyhow::Result<()> {
        match decode(b, &self.clock) {
            Ok(ev) => {
                self.sink
                    .metrics
                    .last_event_ts
                    .set(self.clock.wall_secs(ev.ts_ns));
                let sink = &mut self.sink;
                self.proc.process(ev, &mut |o| sink.emit(o))?;
            }
            Err(e) => {
                self.counters.decode_errors.fetch_add(1, Ordering::Relaxed);
                self.sink.status(&Status::DecodeError(DecodeFailure {
                    ts: self.clock.rfc3339(now_boot_ns()),
                    error: e.to_string(),
                    len: b.len(),
                }))?;
            }
        }
        Ok(())
    }

    /// NVML samples joined to sessions, and rule reloads.
    fn side_inputs(&mut self) -> anyhow::Result<()> {
        while let Ok(s) = self.usage_rx.try_recv() {
            let now = now_boot_ns();
            let sink = &mut self.sink;
            self.proc
                .usage(&s, self.clock.rfc3339(now), now, &mut |o| sink.emit(o))?;
        }
        self.sync_metrics();
        while let Ok(r) = self.reload_rx.try_recv() {
            let ts = self.clock.rfc3339(now_boot_ns());
            match r {
                Reload::Ok(set, why) => {
                    tracing::info!(rules = set.len(), "rules reloaded ({why})");
                    self.sink
                        .metrics
                        .rule_reloads
                        .get_or_create(&ResultLabel {
                            result: "ok".into(),
                        })
                        .inc();
                    self.sink.metrics.rules_loaded.set(set.len() as i64);
                    self.sink.status(&Status::RulesReload(RulesReload {
                        ts,
                        ok: true,
                        trigger: why.into(),
                        rules: set.len(),
                        file: None,
                        line: None,
                        error: None,
                    }))?;
                    self.proc.replace_rules(set);
                }
                Reload::Failed(e, why) => {
                    tracing::error!("rules reload failed ({why}), keeping the previous set: {e}");
                    self.sink
                        .metrics
                        .rule_reloads
                        .get_or_create(&ResultLabel {
                            result: "error".into(),
                        })
                        .inc();
                    self.sink.status(&Status::RulesReload(RulesReload {
                        ts,
                        ok: false,
                        trigger: why.into(),
                        rules: self.proc.engine.set().len(),
                        file: Some(e.file),
                        line: Some(e.line),
                        error: Some(e.reason),
                    }))?;
                }
            }
        }
        Ok(())
    }

    /// Copies the drop counters and session count into the metrics.
    fn sync_metrics(&mut self) {
        let m = &self.sink.metrics;
        for (k, v) in kind_names().zip(hook::read_drops(&self.drops)) {
            if v > 0 {
                Metrics::sync_counter(
                    &m.kernel_drops.get_or_create(&HookLabel {
                        hook: k.to_string(),
                    }),
                    v,
                );
            }
        }
        let errors = hook::read_probe_errors(&self.probe_errors);
        for &h in sensor_common::Hook::ALL {
            for &e in sensor_common::ProbeError::ALL {
                let v = errors[h as usize][e as usize];
                if v > 0 {
                    let c = m.probe_errors.get_or_create(&ProbeErrorLabels::new(h, e));
                    Metrics::sync_counter(&c, v);
                }
            }
        }
        for (k, v) in kind_names().zip(self.counters.user_dropped()) {
            if v > 0 {
                Metrics::sync_counter(
                    &m.user_drops.get_or_create(&KindLabel {
                        kind: k.to_string(),
                    }),
                    v,
                );
            }
        }
        m.gpu_sessions_active
            .set(self.proc.sessions.active() as i64);
        m.set_sessions(self.proc.sessions.starts());
    }

    /// The non-zero probe error counters, as `"hook/error": n`.
    fn probe_errors_nonzero(&self) -> std::collections::BTreeMap<String, u64> {
        let errors = hook::read_probe_errors(&self.probe_errors);
        let mut out = std::collections::BTreeMap::new();
        for &h in sensor_common::Hook::ALL {
            for &e in sensor_common::ProbeError::ALL {
                let v = errors[h as usize][e as usize];
                if v > 0 {
                    out.insert(format!("{}/{}", h.name(), e.name()), v);
                }
            }
        }
        out
    }

    /// Emits a `loss` event with cumulative counters when they changed (always when `last`).
    fn report_loss(&mut self, last: bool) -> anyhow::Result<()> {
        let kernel = hook::read_drops(&self.drops);
        let received = self.counters.received();
        let user = self.counters.user_dropped();
        let mut loss = Loss {
            ts: String::new(),
            received: by_kind(&received),
            received_total: received.iter().sum(),
            kernel_dropped: by_kind(&kernel),
            kernel_dropped_total: kernel.iter().sum(),
            user_dropped: user.iter().sum(),
            user_dropped_by_kind: by_kind(&user),
            decode_errors: self.counters.decode_errors.load(Ordering::Relaxed),
            alerts: self.proc.alerts,
            alerts_deduplicated: self.proc.engine.suppressed,
            probe_errors: Default::default(),
            last,
        };
        let dropped = loss.kernel_dropped_total != 0 || loss.user_dropped != 0;
        // Counters compared without the time stamp, the `final` flag and the probe errors
        // (probe errors alone do not make a record).
        let changed = self.last_loss.as_ref() != Some(&loss);
        if last || (dropped && changed) {
            let now = now_boot_ns();
            let mut printed = loss.clone();
            printed.ts = self.clock.rfc3339(now);
            printed.probe_errors = self.probe_errors_nonzero();
            self.sink.status(&Status::Loss(printed.clone()))?;
            let newly_lost = self.last_loss.as_ref().is_none_or(|l| {
                l.kernel_dropped_total != loss.kernel_dropped_total
                    || l.user_dropped != loss.user_dropped
            });
            if dropped && newly_lost {
                // Loss reaches on-call as the sensor's own incident, and taints verdicts.
                let nonzero = |m: &std::collections::BTreeMap<String, u64>| {
                    m.iter()
                        .filter(|(_, v)| **v > 0)
                        .map(|(k, v)| (k.clone(), *v))
                        .collect::<std::collections::BTreeMap<_, _>>()
                };
                let kernel_dropped = nonzero(&printed.kernel_dropped);
                let user_dropped = nonzero(&printed.user_dropped_by_kind);
                let mut affected: Vec<String> = kernel_dropped
                    .keys()
                    .chain(user_dropped.keys())
                    .cloned()
                    .collect();
                affected.sort();
                affected.dedup();
                let inc = self.proc.incidents.loss(
                    &printed.ts,
                    now,
                    crate::incidents::LossCounts {
                        kernel_dropped,
                        user_dropped,
                        affected,
                    },
                );
                self.sink.emit(Out::Incident(&inc))?;
            }
            loss.last = false;
            self.last_loss = Some(loss);
        }
        Ok(())
    }
}
