//! `sensor run`: start-up (rules, hooks, metrics, sinks, supervised parts), the [`LiveLoop`] on
//! its own thread, and shutdown on SIGINT/SIGTERM or when a critical part fails.

use std::{
    os::fd::AsFd,
    sync::{mpsc as smpsc, Arc},
    time::Duration,
};

use anyhow::Context;
use bytes::Bytes;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::watch,
};

use crate::{
    config::Config,
    context::{container::Containers, process::ProcTable},
    decode::Clock,
    gpu,
    health::{lock, panic_message, supervise_task, Exit, Failure, Health},
    hook::{self, Hooks},
    live::{now_boot_ns, LiveLoop, Reload, Sink},
    metrics::{Metrics, ServeOptions},
    output::{JsonLines, SensorStart, Status},
    pipeline::Processor,
    ring::{self, Counters},
    rules::{self, Engine, RuleSet},
};

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

pub async fn run(cfg: Config, record: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    // The rule files' state before they are read: a change made while the sensor starts is
    // then seen by the reloader.
    let rules_state = rules_mtime(&cfg.rules);
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
    // Subscribed before any part runs, so a failure during start-up is not missed.
    let mut fatal = health.fatal();
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
            cfg.gpu.nvml_library.clone(),
            Duration::from_secs(cfg.gpu.nvml_interval_secs),
            usage_tx,
            metrics.inventory.clone(),
        );
    } else {
        drop(usage_tx);
    }
    let clock = Clock::now();
    let counters = Arc::new(Counters::default());
    let (tx, rx) = smpsc::sync_channel::<Bytes>(cfg.ring.queue);
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
    procs.set_workload(cfg.workload.clone());
    let map_bytes = hook::map_memory();
    for (name, b) in &map_bytes {
        metrics
            .bpf_map_bytes
            .get_or_create(&crate::metrics::MapLabel { map: name.clone() })
            .set(*b as i64);
    }
    tracing::info!(
        total_mib = format!(
            "{:.1}",
            map_bytes.values().sum::<u64>() as f64 / (1 << 20) as f64
        ),
        "BPF map memory: {}",
        map_bytes
            .iter()
            .map(|(k, v)| format!("{k} {:.1} MiB", *v as f64 / (1 << 20) as f64))
            .collect::<Vec<_>>()
            .join(", ")
    );
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
        map_bytes_total: map_bytes.values().sum(),
        map_bytes: map_bytes.clone(),
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
    let export =
        crate::export::Exporters::start(&cfg.export, cfg.context.node_name.clone(), &metrics);
    // Subscribe to SIGHUP and take the rule files' state now, before `sensor_start` is printed:
    // until a handler is installed SIGHUP's default action ends the process, and a change made
    // right after start must not be missed because the reloader task started late. The
    // reloader's first run takes these; a restarted one subscribes again.
    let reload_start = Arc::new(std::sync::Mutex::new(Some((
        signal(SignalKind::hangup())?,
        rules_state,
    ))));
    // SIGINT/SIGTERM handlers before `sensor_start` is printed: a stop sent right after it
    // must detach cleanly, not end the process by the default action.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let start = Status::SensorStart(start);
    export.offer(
        crate::export::RecordKind::Status,
        start.name(),
        start.ts(),
        None,
        None,
        &start,
    );
    out.write(&start)?;
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
    let engine = Engine::new(set, cfg.rules.clone());
    let live = LiveLoop {
        sink: Sink {
            alerting: alerting.clone(),
            out,
            stdout_policy: cfg.output.on_stdout_closed,
            stdout_closed: false,
            record,
            export: export.clone(),
            metrics: metrics.clone(),
            by_kind: Default::default(),
        },
        proc: {
            let mut p = Processor::new(procs, Some(containers), engine)
                .with_incidents(cfg.incidents.clone());
            p.sessions.set_inventory(metrics.inventory.clone());
            p
        },
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

    let failure = tokio::select! {
        _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); None }
        _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); None }
        r = fatal.wait_for(|v| v.is_some()) => r.ok().and_then(|v| v.clone()),
    };
    let _ = stop_tx.send(true);
    let _ = reader.await;
    let _ = pipe.await;
    // Incident versions the pipeline queued reach the spool before the exit (delivery
    // resumes from there on the next start).
    let a = alerting.clone();
    let _ = tokio::task::spawn_blocking(move || {
        a.wait_spooled(Duration::from_secs(10));
        // The exporters' last records (the final `loss` among them).
        export.wait_idle(Duration::from_secs(5));
    })
    .await;
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
