//! Supervision of the agent's long-lived parts (ring reader, pipeline, alert sinks, metrics
//! server, pod watch, NVML sampler, rule reloader, GPU device refresher).
//!
//! Every part is registered here and runs under a supervisor: a panic or a returned error is
//! logged, counted (`gpu_sensor_component_failures_total{component,reason}`) and then either
//! - the part is restarted with exponential backoff and jitter (parts whose state survives a
//!   restart: sinks, metrics, pod watch, NVML, reloader, refresher), or
//! - for a *critical* part (ring reader, pipeline: the event path itself), the sensor is marked
//!   unhealthy (`/healthz` 503) and [`Health::fatal`] fires, so `sensor run` shuts down and exits
//!   with status 1 and the DaemonSet (or systemd) restarts it.
//!
//! `/readyz` is 200 only when start-up finished and every part is running; its body lists the
//! state of each part either way.

use std::{
    collections::BTreeMap,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};
use serde::Serialize;
use tokio::sync::watch;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabel {
    pub component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub component: String,
    /// `panic` or `error`.
    pub reason: String,
}

/// How a part ended one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Panic,
    Error,
}

impl Failure {
    fn label(self) -> &'static str {
        match self {
            Failure::Panic => "panic",
            Failure::Error => "error",
        }
    }
}

/// The state of one part, as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum State {
    Starting,
    Running,
    /// Failed and waiting to be restarted.
    Restarting {
        last_error: String,
    },
    /// A critical part failed: the sensor is shutting down.
    Failed {
        error: String,
    },
    /// Ended on purpose (e.g. NVML absent): nothing to supervise any more.
    Stopped {
        reason: String,
    },
}

#[derive(Debug, Clone, Serialize)]
struct Part {
    critical: bool,
    #[serde(flatten)]
    state: State,
    restarts: u64,
}

struct Inner {
    parts: Mutex<BTreeMap<String, Part>>,
    started: std::sync::atomic::AtomicBool,
    fatal: watch::Sender<Option<String>>,
    failures: Family<FailureLabels, Counter>,
    up: Family<ComponentLabel, Gauge>,
    /// Events are being lost: what and since when (cleared when the loss stops).
    degraded: Mutex<Option<String>>,
}

/// Shared supervision state. Cheap to clone.
#[derive(Clone)]
pub struct Health(Arc<Inner>);

/// Locks a mutex whose holder may have panicked: the data of every mutex in the agent stays
/// consistent across a panic (single-field updates), and a poisoned lock must not turn one
/// panic into a cascade.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `/readyz`'s answer.
#[derive(Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub healthy: bool,
    /// Events are being lost (the sensor still runs and stays ready: a NotReady pod would drop
    /// out of the Service and its metrics would no longer be scraped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    pub components: BTreeMap<String, serde_json::Value>,
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    pub fn new() -> Health {
        let (fatal, _) = watch::channel(None);
        Health(Arc::new(Inner {
            parts: Mutex::new(BTreeMap::new()),
            started: false.into(),
            fatal,
            failures: Family::default(),
            up: Family::default(),
            degraded: Mutex::new(None),
        }))
    }

    /// Metric families to register (`component_failures`, `component_up`).
    pub fn metrics(
        &self,
    ) -> (
        Family<FailureLabels, Counter>,
        Family<ComponentLabel, Gauge>,
    ) {
        (self.0.failures.clone(), self.0.up.clone())
    }

    /// Registers a part (state `starting`). Its failure counters start at zero, so that an alert
    /// on `increase()` sees the first failure.
    pub fn register(&self, name: &str, critical: bool) {
        lock(&self.0.parts).insert(
            name.to_string(),
            Part {
                critical,
                state: State::Starting,
                restarts: 0,
            },
        );
        for r in [Failure::Panic, Failure::Error] {
            let _ = self.0.failures.get_or_create(&FailureLabels {
                component: name.to_string(),
                reason: r.label().to_string(),
            });
        }
        self.set_up(name, false);
    }

    fn set_up(&self, name: &str, up: bool) {
        self.0
            .up
            .get_or_create(&ComponentLabel {
                component: name.to_string(),
            })
            .set(up as i64);
    }

    fn set_state(&self, name: &str, state: State) {
        // Ended on purpose (NVML absent) counts as up: nothing is wrong with it.
        let up = matches!(state, State::Running | State::Stopped { .. });
        if let Some(p) = lock(&self.0.parts).get_mut(name) {
            p.state = state;
        }
        self.set_up(name, up);
    }

    pub fn running(&self, name: &str) {
        self.set_state(name, State::Running);
    }

    /// The part ended on purpose (nothing left to do); not a failure.
    pub fn stopped(&self, name: &str, reason: &str) {
        self.set_state(
            name,
            State::Stopped {
                reason: reason.to_string(),
            },
        );
    }

    /// Records a failure. A critical part makes the sensor unhealthy and fires [`Self::fatal`].
    pub fn failed(&self, name: &str, why: Failure, error: &str) {
        self.0
            .failures
            .get_or_create(&FailureLabels {
                component: name.to_string(),
                reason: why.label().to_string(),
            })
            .inc();
        let critical = lock(&self.0.parts).get(name).is_some_and(|p| p.critical);
        if critical {
            tracing::error!(
                component = name,
                "{} in a critical part: {error}; the sensor stops (a supervisor restarts it)",
                why.label()
            );
            self.set_state(
                name,
                State::Failed {
                    error: error.to_string(),
                },
            );
            self.0.fatal.send_replace(Some(format!("{name}: {error}")));
        } else {
            tracing::error!(component = name, "{}: {error}; restarting it", why.label());
            if let Some(p) = lock(&self.0.parts).get_mut(name) {
                p.restarts += 1;
            }
            self.set_state(
                name,
                State::Restarting {
                    last_error: error.to_string(),
                },
            );
        }
    }

    /// Start-up finished.
    pub fn set_started(&self) {
        self.0
            .started
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Fires (with the reason) when a critical part failed.
    pub fn fatal(&self) -> watch::Receiver<Option<String>> {
        self.0.fatal.subscribe()
    }

    /// No critical part has failed.
    pub fn healthy(&self) -> bool {
        self.0.fatal.borrow().is_none()
    }

    /// Marks the sensor degraded (events lost: `Some(what)`) or recovered (`None`).
    pub fn set_degraded(&self, what: Option<String>) {
        *lock(&self.0.degraded) = what;
    }

    pub fn readiness(&self) -> Readiness {
        let parts = lock(&self.0.parts);
        let started = self.0.started.load(std::sync::atomic::Ordering::Relaxed);
        let all_running = parts
            .values()
            .all(|p| matches!(p.state, State::Running | State::Stopped { .. }));
        Readiness {
            ready: started && all_running && self.healthy(),
            healthy: self.healthy(),
            degraded: lock(&self.0.degraded).clone(),
            components: parts
                .iter()
                .map(|(k, p)| (k.clone(), serde_json::to_value(p).unwrap_or_default()))
                .collect(),
        }
    }
}

/// Text of a panic payload.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

/// Backoff between restarts: 1 s doubling to 60 s, with up to 50 % jitter; back to 1 s after a
/// run that lasted a minute.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            next: Duration::from_secs(1),
        }
    }
    fn after(&mut self, ran: Duration) -> Duration {
        if ran >= Duration::from_secs(60) {
            self.next = Duration::from_secs(1);
        }
        let base = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(60));
        base + jitter(base / 2)
    }
}

/// A pseudo-random duration in `0..=max` (no RNG dependency: the clock's nanoseconds).
pub fn jitter(max: Duration) -> Duration {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let m = max.as_millis() as u64;
    Duration::from_millis(if m == 0 { 0 } else { n % (m + 1) })
}

/// What one run of a part returned.
pub enum Exit {
    /// Ended on purpose; not restarted.
    Done(String),
}

/// Runs `f` on a named thread, restarting it after a panic or an error (backoff with jitter).
/// `Ok(Exit::Done)` ends the part.
pub fn supervise_thread<F>(health: &Health, name: &str, f: F)
where
    F: Fn() -> anyhow::Result<Exit> + Send + 'static,
{
    health.register(name, false);
    let h = health.clone();
    let n = name.to_string();
    let spawned = std::thread::Builder::new()
        .name(thread_name(name))
        .spawn(move || {
            let mut backoff = Backoff::new();
            loop {
                h.running(&n);
                let t = Instant::now();
                let r = std::panic::catch_unwind(AssertUnwindSafe(&f));
                let (why, msg) = match r {
                    Ok(Ok(Exit::Done(reason))) => {
                        h.stopped(&n, &reason);
                        return;
                    }
                    Ok(Err(e)) => (Failure::Error, format!("{e:#}")),
                    Err(p) => (Failure::Panic, panic_message(&*p)),
                };
                h.failed(&n, why, &msg);
                std::thread::sleep(backoff.after(t.elapsed()));
            }
        });
    if let Err(e) = spawned {
        health.failed(name, Failure::Error, &format!("spawning its thread: {e}"));
    }
}

/// Runs the future made by `make` on the runtime, restarting it after a panic or an error.
pub fn supervise_task<M, Fut>(health: &Health, name: &str, make: M) -> tokio::task::JoinHandle<()>
where
    M: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Exit>> + Send + 'static,
{
    health.register(name, false);
    let h = health.clone();
    let n = name.to_string();
    tokio::spawn(async move {
        let mut backoff = Backoff::new();
        loop {
            h.running(&n);
            let t = Instant::now();
            let (why, msg) = match tokio::spawn(make()).await {
                Ok(Ok(Exit::Done(reason))) => {
                    h.stopped(&n, &reason);
                    return;
                }
                Ok(Err(e)) => (Failure::Error, format!("{e:#}")),
                Err(j) if j.is_panic() => (Failure::Panic, panic_message(&*j.into_panic())),
                Err(j) => (Failure::Error, j.to_string()),
            };
            h.failed(&n, why, &msg);
            tokio::time::sleep(backoff.after(t.elapsed())).await;
        }
    })
}

/// Thread names are at most 15 bytes on Linux.
fn thread_name(name: &str) -> String {
    name.chars().take(15).collect()
}

/// Work handed to a background part and not yet done (alert versions not yet spooled,
/// exported records not yet written out), so that shutdown can wait for it. Cheap to clone.
#[derive(Clone, Default, Debug)]
pub struct Backlog(Arc<std::sync::atomic::AtomicUsize>);

/// Takes its count off the backlog when dropped: done, or lost to an error or a panic.
pub struct Taken<'a>(&'a Backlog, usize);

impl Taken<'_> {
    /// One more item in this batch.
    pub fn add(&mut self) {
        self.1 += 1;
    }

    pub fn count(&self) -> usize {
        self.1
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.0
             .0
            .fetch_sub(self.1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Backlog {
    /// One item handed over.
    pub fn add(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// A hand-over that did not happen after all.
    pub fn undo(&self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// `n` items taken up by the worker; they leave the backlog when the guard drops.
    pub fn take(&self, n: usize) -> Taken<'_> {
        Taken(self, n)
    }

    pub fn len(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until every backlog is empty or `timeout` passes; returns what is left.
    pub fn wait_all<'a>(
        all: impl Iterator<Item = &'a Backlog> + Clone,
        timeout: Duration,
    ) -> usize {
        let end = Instant::now() + timeout;
        loop {
            let left: usize = all.clone().map(Backlog::len).sum();
            if left == 0 || Instant::now() >= end {
                return left;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn a_panicking_thread_is_counted_and_restarted() {
        let h = Health::new();
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        supervise_thread(&h, "flaky", move || {
            let n = r.fetch_add(1, Ordering::SeqCst);
            if n == 0 {
                panic!("first run fails");
            }
            Ok(Exit::Done("second run ends".into()))
        });
        let t = Instant::now();
        while h.readiness().components["flaky"]["state"] != "stopped"
            && t.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2, "restarted once");
        let (failures, _) = h.metrics();
        let panics = failures
            .get_or_create(&FailureLabels {
                component: "flaky".into(),
                reason: "panic".into(),
            })
            .get();
        assert_eq!(panics, 1);
        assert!(
            h.healthy(),
            "a restartable part never makes the sensor unhealthy"
        );
        let r = h.readiness();
        assert_eq!(r.components["flaky"]["state"], "stopped");
        assert_eq!(r.components["flaky"]["restarts"], 1);
    }

    #[test]
    fn a_failed_critical_part_is_fatal_and_unready() {
        let h = Health::new();
        h.register("pipeline", true);
        h.running("pipeline");
        h.set_started();
        assert!(h.readiness().ready);
        let mut rx = h.fatal();
        h.failed("pipeline", Failure::Panic, "boom");
        assert!(!h.healthy());
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().as_deref(), Some("pipeline: boom"));
        let r = h.readiness();
        assert!(!r.ready && !r.healthy);
        assert_eq!(r.components["pipeline"]["state"], "failed");
    }

    #[test]
    fn a_restarting_part_makes_the_sensor_unready_but_healthy() {
        let h = Health::new();
        h.register("sink/a", false);
        h.running("sink/a");
        h.set_started();
        h.failed("sink/a", Failure::Error, "x");
        let r = h.readiness();
        assert!(!r.ready && r.healthy);
        h.running("sink/a");
        assert!(h.readiness().ready);
    }

    #[tokio::test]
    async fn a_panicking_task_is_restarted() {
        let h = Health::new();
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let j = supervise_task(&h, "task", move || {
            let r = r.clone();
            async move {
                if r.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("boom");
                }
                Ok(Exit::Done("ok".into()))
            }
        });
        tokio::time::timeout(Duration::from_secs(10), j)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }
}
