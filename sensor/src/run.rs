//! `sensor run`: hooks → ring → decode → process context → outputs, until SIGINT/SIGTERM.

use std::{
    os::fd::AsFd,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use anyhow::Context;
use aya::maps::{MapData, PerCpuArray};
use bytes::Bytes;
use sensor_common::kind;
use serde_json::json;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};

use crate::{
    config::Config,
    context::process::ProcTable,
    decode::{decode, Clock},
    gpu::{
        self,
        session::{Sessions, UsageSample},
    },
    hook::{self, Hooks},
    output::JsonLines,
    ring::{self, Counters},
};

/// Names of kinds for the counters in `loss` events (index = kind id; 0 = unknown).
const KIND_NAMES: [&str; kind::MAX as usize] = [
    "unknown",
    "exec",
    "fork",
    "exit",
    "connect",
    "bind",
    "listen",
    "gpu_ioctl",
    "gpu_open",
];

fn by_kind(values: &[u64]) -> serde_json::Map<String, serde_json::Value> {
    KIND_NAMES
        .iter()
        .zip(values)
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect()
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let mut hooks = Hooks::load(&cfg).context("setting up the kernel hooks")?;
    let ring = hooks.take_ring()?;
    let drops = hooks.take_drops()?;
    let mut gpu_devs = hooks.take_gpu_devs()?;
    let extra = cfg.gpu.devices.clone();
    let refresh = Duration::from_secs(cfg.gpu.refresh_secs);
    // Drivers (nvidia-uvm, kfd) may load after the sensor: re-read /proc/devices.
    let refresher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(refresh);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = hook::sync_gpu_devs(&mut gpu_devs, &extra) {
                tracing::warn!("refreshing GPU devices: {e}");
            }
        }
    });
    let (usage_tx, usage_rx) = std::sync::mpsc::channel();
    if cfg.gpu.nvml {
        gpu::nvml::spawn(Duration::from_secs(cfg.gpu.nvml_interval_secs), usage_tx);
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
    let procs = ProcTable::scan();
    out.write(&json!({
        "kind": "sensor_start",
        "ts": clock.rfc3339(now_boot_ns()),
        "version": env!("CARGO_PKG_VERSION"),
        "ebpf_sha256": hook::EBPF_SHA256,
        "kernel": kernel_release(),
        "hooks": hooks.attached,
        "tracefs_mounted_by_sensor": hooks.tracefs_mounted,
        "ring_size": cfg.ring.size,
        "processes_scanned": procs.len(),
        "gpu_class_table": gpu::classes::TABLE_VERSION,
        "sensor_pid": std::process::id(),
    }))?;
    out.flush()?;
    tracing::info!(
        hooks = hooks.attached.len(),
        ebpf = hook::EBPF_SHA256,
        "sensor ready"
    );

    let poll = Duration::from_millis(cfg.ring.poll_interval_ms);
    let reader = tokio::spawn(ring::drain(ring, tx, counters.clone(), poll, stop_rx));

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let pipeline = Pipeline {
        out,
        procs,
        sessions: Sessions::default(),
        usage_rx,
        clock,
        counters,
        drops,
        last_loss: None,
    };
    let loss_every = Duration::from_secs(cfg.output.loss_interval_secs);
    let pipe = tokio::task::spawn_blocking(move || pipeline.run(rx, loss_every));

    tokio::select! {
        _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
    }
    let _ = stop_tx.send(true);
    reader.await?.context("ring reader")?;
    pipe.await?.context("pipeline")?;
    refresher.abort();
    drop(hooks); // detaches every program
    tracing::info!("detached; bye");
    Ok(())
}

fn now_boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct Pipeline<W: std::io::Write> {
    out: JsonLines<W>,
    procs: ProcTable,
    sessions: Sessions,
    usage_rx: std::sync::mpsc::Receiver<UsageSample>,
    clock: Clock,
    counters: Arc<Counters>,
    drops: PerCpuArray<MapData, u64>,
    last_loss: Option<serde_json::Value>,
}

impl<W: std::io::Write> Pipeline<W> {
    /// Runs on a blocking thread: decode, enrich and write until the reader closes the queue.
    fn run(mut self, mut rx: mpsc::Receiver<Bytes>, loss_every: Duration) -> anyhow::Result<()> {
        let mut next_loss = std::time::Instant::now() + loss_every;
        loop {
            let item = match rx.try_recv() {
                Ok(b) => Some(b),
                Err(mpsc::error::TryRecvError::Empty) => {
                    self.out.flush()?;
                    self.drain_usage()?;
                    // Wait for the next record, but wake up for the periodic loss report and
                    // NVML samples.
                    let wait = next_loss
                        .saturating_duration_since(std::time::Instant::now())
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
            if std::time::Instant::now() >= next_loss {
                self.report_loss(false)?;
                next_loss = std::time::Instant::now() + loss_every;
            }
        }
        self.report_loss(true)?;
        self.out.flush()?;
        Ok(())
    }

    fn handle(&mut self, b: &[u8]) -> anyhow::Result<()> {
        match decode(b, &self.clock) {
            Ok(mut ev) => {
                self.procs.apply(&mut ev);
                self.out.write(&ev)?;
                if let Some(derived) = self.sessions.on_event(&ev, &self.procs) {
                    self.out.write(&derived)?;
                }
            }
            Err(e) => {
                self.counters.decode_errors.fetch_add(1, Ordering::Relaxed);
                self.out.write(&json!({
                    "kind": "decode_error",
                    "ts": self.clock.rfc3339(now_boot_ns()),
                    "error": e.to_string(),
                    "len": b.len(),
                }))?;
            }
        }
        Ok(())
    }

    /// Joins pending NVML samples to sessions.
    fn drain_usage(&mut self) -> anyhow::Result<()> {
        while let Ok(s) = self.usage_rx.try_recv() {
            let now = now_boot_ns();
            if let Some(ev) = self.sessions.on_usage(&s, self.clock.rfc3339(now), now) {
                self.out.write(&ev)?;
            }
        }
        Ok(())
    }

    /// Emits a `loss` event with cumulative counters when they changed (always when `last`).
    fn report_loss(&mut self, last: bool) -> anyhow::Result<()> {
        let kernel = hook::read_drops(&self.drops);
        let received = self.counters.received();
        let user = self.counters.user_dropped();
        let body = json!({
            "received": by_kind(&received),
            "received_total": received.iter().sum::<u64>(),
            "kernel_dropped": by_kind(&kernel),
            "kernel_dropped_total": kernel.iter().sum::<u64>(),
            "user_dropped": user.iter().sum::<u64>(),
            "user_dropped_by_kind": by_kind(&user),
            "decode_errors": self.counters.decode_errors.load(Ordering::Relaxed),
        });
        let dropped = body["kernel_dropped_total"] != 0 || body["user_dropped"] != 0;
        if last || (dropped && self.last_loss.as_ref() != Some(&body)) {
            let mut ev = body.clone();
            ev["kind"] = json!("loss");
            ev["ts"] = json!(self.clock.rfc3339(now_boot_ns()));
            ev["final"] = json!(last);
            self.out.write(&ev)?;
            self.last_loss = Some(body);
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
