//! `sensor run`: hooks → ring → decode → [`Processor`] (process/pod context, GPU sessions,
//! rules) → outputs, until SIGINT/SIGTERM.

use std::{
    os::fd::AsFd,
    sync::{atomic::Ordering, mpsc as smpsc, Arc},
    time::{Duration, Instant},
};

use anyhow::Context;
use aya::maps::{MapData, PerCpuArray};
use bytes::Bytes;
use sensor_common::kind;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};

use crate::{
    config::{Config, StdoutClosed},
    context::{container::Containers, process::ProcTable},
    decode::{decode, Clock},
    gpu::{self, session::UsageSample},
    health::{lock, panic_message, supervise_task, Exit, Failure, Health},
    hook::{self, Hooks},
    metrics::{
        AlertLabels, HookLabel, KindLabel, Metrics, ProbeErrorLabels, ResultLabel, ServeOptions,
    },
    output::{DecodeFailure, JsonLines, Loss, RulesReload, SensorStart, Status},
    pipeline::{Out, Processor},
    ring::{self, Counters},
    rules::{self, Engine, RuleSet},
};

/// Names of the kernel record kinds for the counters in `loss` events and the drop metrics
/// (index = kind id; 0 = unknown).
fn kind_names() -> impl Iterator<Item = &'static str> {
    (0..kind::MAX).map(sensor_common::record_kind_name)
}

fn by_kind(values: &[u64]) -> std::collections::BTreeMap<String, u64> {
    kind_names()
        .zip(values)
        .map(|(k, v)| (k.to_string(), *v))
        .collect()
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Loads the configured rule set: the built-in file (unless disabled) and every configured dir.
pub fn load_rules(cfg: &rules::RulesConfig) -> Result<RuleSet, rules::load::LoadError> {
    let mut sources = vec![];
    if cfg.builtin {
        sources.push(rules::load::builtin());
    }
    for d in &cfg.dirs {
        sources.extend(rules::load::read_dir(d)?);
    }
    rules::load::compile(&sources)
}

/// Newest modification time among the rule files (for hot reload).
fn rules_mtime(cfg: &rules::RulesConfig) -> Option<std::time::SystemTime> {
    cfg.dirs
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .chain(
            cfg.dirs
                .iter()
                .filter_map(|d| std::fs::metadata(d).ok()?.modified().ok()),
        )
        .max()
}

/// Outcome of a reload attempt, for the pipeline to report.
enum Reload {
    Ok(Arc<RuleSet>, &'static str),
    Failed(rules::load::LoadError, &'static str),
}

pub async fn run(cfg: Config, record: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let set = Arc::new(load_rules(&cfg.rules).context("loading rules")?);
    let mut hooks = Hooks::load(&cfg).context("setting up the kernel hooks")?;
    let ring = hooks.take_ring()?;
    let drops = hooks.take_drops()?;
    let probe_errors = hooks.take_probe_errors()?;
    let gpu_devs = Arc::new(std::sync::Mutex::new(hooks.take_gpu_devs()?));
    let extra = cfg.gpu.devices.clone();
    let refresh = Duration::from_secs(cfg.gpu.refresh_secs);
    let metrics = Metrics::new(hook::EBPF_SHA256, &kernel_release());
    let health = metrics.health.clone();
    // The event path: its failure stops the sensor (README "Supervision").
    health.register("ring_reader", true);
    health.register("pipeline", true);
    // Drivers (nvidia-uvm, kfd) may load after the sensor: re-read /proc/devices.
    let refresher = supervise_task(&health, "gpu_refresh", move || {
        let (devs, extra) = (gpu_devs.clone(), extra.clone());
        async move {
            let mut tick = tokio::time::interval(refresh);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = hook::sync_gpu_devs(&mut lock(&devs), &extra) {
                    tracing::warn!("refreshing GPU devices: {e}");
                }
            }
        }
    });
    let (usage_tx, usage_rx) = smpsc::channel();
    if cfg.gpu.nvml {
        gpu::nvml::spawn(
            &health,
            Duration::from_secs(cfg.gpu.nvml_interval_secs),
            usage_tx,
        );
    } else {
        drop(usage_tx);
    }
    let clock = Clock::now();
    let counters = Arc::new(Counters::default());
    let (tx, rx) = mpsc::channel::<Bytes>(cfg.ring.queue);
    let (stop_tx, stop_rx) = watch::channel(false);

    // Our own handle on fd 1: std's Stdout is line-buffered and locked per write; JsonLines
    // buffers and flushes when the queue runs empty.
    let stdout = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    let mut out = JsonLines::new(stdout);
    let record = match record {
        Some(p) => Some(JsonLines::new(
            std::fs::File::create(&p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let mut procs = ProcTable::scan();
    procs.set_episode_env(cfg.context.episode_env.clone());
    let mut start = SensorStart {
        ts: clock.rfc3339(now_boot_ns()),
        version: env!("CARGO_PKG_VERSION").into(),
        ebpf_sha256: hook::EBPF_SHA256.into(),
        kernel: kernel_release(),
        hooks: hooks.attached.clone(),
        tracefs_mounted_by_sensor: hooks.tracefs_mounted,
        ring_size: cfg.ring.size,
        processes_scanned: procs.len(),
        gpu_class_table: gpu::classes::TABLE_VERSION.into(),
        rules: set.len(),
        sensor_pid: std::process::id(),
        metrics_addr: None,
    };
    metrics.rules_loaded.set(set.len() as i64);
    let metrics_task = if cfg.metrics.enabled {
        // Bound here so a port clash is a start-up error, and port 0 can be reported.
        let l = std::net::TcpListener::bind(cfg.metrics.listen)
            .with_context(|| format!("metrics listener on {}", cfg.metrics.listen))?;
        let opts = ServeOptions::from_config(&cfg.metrics).context("metrics endpoint")?;
        let addr = l.local_addr()?;
        start.metrics_addr = Some(addr.to_string());
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        tracing::info!("metrics on {scheme}://{addr}/metrics");
        let m = metrics.clone();
        Some(supervise_task(&health, "metrics", move || {
            let (m, opts) = (m.clone(), opts.clone());
            let l = l.try_clone();
            async move {
                m.serve(l?, opts).await?;
                Ok(Exit::Done("listener closed".into()))
            }
        }))
    } else {
        None
    };
    let alerting = crate::alerting::Alerting::start(&cfg.alerting, metrics.clone())
        .context("starting alert delivery")?;
    // Subscribe to SIGHUP and take the rule files' state now, before `sensor_start` is printed:
    // until a handler is installed SIGHUP's default action ends the process, and a change made
    // right after start must not be missed because the reloader task started late. The
    // reloader's first run takes these; a restarted one subscribes again.
    let reload_start = Arc::new(std::sync::Mutex::new(Some((
        signal(SignalKind::hangup())?,
        rules_mtime(&cfg.rules),
    ))));
    out.write(&Status::SensorStart(start))?;
    out.flush()?;
    metrics.set_ready();
    tracing::info!(
        hooks = hooks.attached.len(),
        rules = set.len(),
        ebpf = hook::EBPF_SHA256,
        "sensor ready"
    );

    let poll = Duration::from_millis(cfg.ring.poll_interval_ms);
    let reader = critical_task(
        &health,
        "ring_reader",
        ring::drain(ring, tx, counters.clone(), poll, stop_rx),
    );

    // Rule hot reload: file changes (polled) and SIGHUP. Loading runs on a blocking thread:
    // a large set never stalls the runtime.
    let (reload_tx, reload_rx) = smpsc::channel::<Reload>();
    let rcfg = cfg.rules.clone();
    let reloader = supervise_task(&health, "rules_reload", move || {
        let (rcfg, reload_tx) = (rcfg.clone(), reload_tx.clone());
        let first = lock(&reload_start).take();
        async move {
            let (mut sighup, mut last) = match first {
                Some(f) => f,
                None => (signal(SignalKind::hangup())?, rules_mtime(&rcfg)),
            };
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                let why = tokio::select! {
                    _ = sighup.recv() => "SIGHUP",
                    _ = tick.tick() => {
                        let now = rules_mtime(&rcfg);
                        if now == last { continue; }
                        last = now;
                        "file change"
                    }
                };
                let c = rcfg.clone();
                let r = match tokio::task::spawn_blocking(move || load_rules(&c)).await? {
                    Ok(s) => Reload::Ok(Arc::new(s), why),
                    Err(e) => Reload::Failed(e, why),
                };
                if reload_tx.send(r).is_err() {
                    return Ok(Exit::Done("the pipeline stopped".into()));
                }
            }
        }
    });

    let pods = match crate::context::kube::Endpoint::discover(
        cfg.context.kube_api.as_deref(),
        cfg.context.node_name.as_deref(),
    ) {
        Some(ep) => Some(crate::context::kube::spawn(&health, ep)),
        None => {
            tracing::info!("no Kubernetes API (not in a cluster, context.kube_api unset): containers carry ids only");
            None
        }
    };
    let containers = Containers::new(pods, cfg.context.episode_annotations.clone());
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let engine = Engine::new(set, cfg.rules.clone());
    let live = LiveLoop {
        sink: Sink {
            alerting,
            out,
            stdout_policy: cfg.output.on_stdout_closed,
            stdout_closed: false,
            record,
            metrics: metrics.clone(),
            by_kind: Default::default(),
        },
        proc: Processor::new(procs, Some(containers), engine),
        usage_rx,
        reload_rx,
        clock,
        counters,
        drops,
        probe_errors,
        last_loss: None,
    };
    let loss_every = Duration::from_secs(cfg.output.loss_interval_secs);
    let h = health.clone();
    let pipe = tokio::task::spawn_blocking(move || {
        h.running("pipeline");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| live.run(rx, loss_every)));
        match r {
            Ok(Ok(())) => h.stopped("pipeline", "input closed"),
            Ok(Err(e)) => h.failed("pipeline", Failure::Error, &format!("{e:#}")),
            Err(p) => h.failed("pipeline", Failure::Panic, &panic_message(&*p)),
        }
    });

    let mut fatal = health.fatal();
    let failure = tokio::select! {
        _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); None }
        _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); None }
        _ = fatal.changed() => fatal.borrow().clone(),
    };
    let _ = stop_tx.send(true);
    let _ = reader.await;
    let _ = pipe.await;
    refresher.abort();
    reloader.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    drop(hooks); // detaches every program
    if let Some(why) = failure {
        anyhow::bail!("stopped after a failure of {why} (detached)");
    }
    tracing::info!("detached; bye");
    Ok(())
}

/// Runs a critical part of the event path as a task: an error or a panic is recorded in
/// `health` (which fires [`Health::fatal`]); a normal end is `stopped`.
fn critical_task<F>(health: &Health, name: &'static str, fut: F) -> tokio::task::JoinHandle<()>
where
    F: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let h = health.clone();
    h.running(name);
    let inner = tokio::spawn(fut);
    tokio::spawn(async move {
        match inner.await {
            Ok(Ok(())) => h.stopped(name, "stopped"),
            Ok(Err(e)) => h.failed(name, Failure::Error, &e.to_string()),
            Err(j) if j.is_panic() => {
                h.failed(name, Failure::Panic, &panic_message(&*j.into_panic()))
            }
            Err(j) => h.failed(name, Failure::Error, &j.to_string()),
        }
    })
}

fn now_boot_ns() -> u64 {
    crate::decode::clock_ns(libc::CLOCK_BOOTTIME)
}

/// The live loop on its own thread: ring records → [`Processor`] → outputs, with the side
/// inputs (NVML samples, rule reloads), the metric sync and the periodic `loss` record.
struct LiveLoop<W: std::io::Write> {
    sink: Sink<W>,
    proc: Processor,
    usage_rx: smpsc::Receiver<UsageSample>,
    reload_rx: smpsc::Receiver<Reload>,
    clock: Clock,
    counters: Arc<Counters>,
    drops: PerCpuArray<MapData, u64>,
    probe_errors: PerCpuArray<MapData, u64>,
    /// The counters of the last `loss` record (ts empty, `last` false, no probe errors), to
    /// print only changes.
    last_loss: Option<Loss>,
}

/// Where pipeline outputs go: stdout, the optional recording, the alert sinks and the metrics.
struct Sink<W: std::io::Write> {
    alerting: crate::alerting::Alerting,
    out: JsonLines<W>,
    /// What a write error on stdout means (config `output.on_stdout_closed`).
    stdout_policy: StdoutClosed,
    /// Stdout failed and the policy is to continue: nothing more is written there.
    stdout_closed: bool,
    record: Option<JsonLines<std::fs::File>>,
    metrics: Metrics,
    /// Per-kind event counters, resolved once (no label lookup per event).
    by_kind: std::collections::HashMap<&'static str, prometheus_client::metrics::counter::Counter>,
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
                self.alerting.submit(a);
                self.print(a)
            }
        }
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
    fn run(mut self, mut rx: mpsc::Receiver<Bytes>, loss_every: Duration) -> anyhow::Result<()> {
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
            let item = match rx.try_recv() {
                Ok(b) => Some(b),
                Err(mpsc::error::TryRecvError::Empty) => {
                    self.flush()?;
                    self.side_inputs()?;
                    // Wait for the next record, but wake up for the periodic loss report, NVML
                    // samples and rule reloads.
                    let wait = next_loss
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_secs(1));
                    match recv_timeout(&mut rx, wait) {
                        Recv::Item(b) => Some(b),
                        Recv::Timeout => None,
                        Recv::Closed => break,
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            };
            if let Some(b) = item {
                self.handle(&b)?;
            }
            if Instant::now() >= next_loss {
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
                self.sink.print(&Status::DecodeError(DecodeFailure {
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
                    self.sink.print(&Status::RulesReload(RulesReload {
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
                    self.sink.print(&Status::RulesReload(RulesReload {
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
            let mut printed = loss.clone();
            printed.ts = self.clock.rfc3339(now_boot_ns());
            printed.probe_errors = self.probe_errors_nonzero();
            self.sink.print(&Status::Loss(printed))?;
            loss.last = false;
            self.last_loss = Some(loss);
        }
        Ok(())
    }
}

enum Recv {
    Item(Bytes),
    Timeout,
    Closed,
}

/// Blocking receive with a timeout, for the pipeline thread.
fn recv_timeout(rx: &mut mpsc::Receiver<Bytes>, wait: Duration) -> Recv {
    let h = tokio::runtime::Handle::current();
    h.block_on(async {
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(b)) => Recv::Item(b),
            Ok(None) => Recv::Closed,
            Err(_) => Recv::Timeout,
        }
    })
}
