//! The per-event path shared by `sensor run` and `sensor replay`: process context → container →
//! GPU sessions → rules → outputs. Live and offline runs go through exactly this code.

use std::sync::Arc;

use crate::{
    context::{container::Containers, process::ProcTable},
    event::{Ancestor, Event},
    gpu::session::{Sessions, UsageSample},
    incidents::{Incident, Incidents, IncidentsConfig},
    rules::{Alert, Engine, Input, RuleSet, RulesConfig},
};

/// Something the pipeline emits.
pub enum Out<'a> {
    Event(&'a Event),
    /// A rule hit: `kind` `alert` (strong) or `evidence` (weighted).
    Alert(&'a Alert),
    /// An incident raised, grown or closed (the sinks' unit).
    Incident(&'a Incident),
}

pub struct Processor {
    pub procs: ProcTable,
    pub sessions: Sessions,
    /// cgroup id → container; `None` when replaying (recorded events carry `container`).
    pub containers: Option<Containers>,
    pub engine: Engine,
    pub incidents: Incidents,
    pub alerts: u64,
}

impl Processor {
    pub fn new(procs: ProcTable, containers: Option<Containers>, engine: Engine) -> Processor {
        Processor {
            procs,
            sessions: Sessions::default(),
            containers,
            engine,
            incidents: Incidents::new(IncidentsConfig::default()),
            alerts: 0,
        }
    }

    pub fn with_incidents(mut self, cfg: IncidentsConfig) -> Processor {
        self.incidents = Incidents::new(cfg);
        self
    }

    /// The episode tag of the event's process: its environment, else a pod annotation.
    fn episode(&self, ev: &Event) -> Option<String> {
        self.procs.episode(ev.pid).map(str::to_string).or_else(|| {
            ev.container
                .as_ref()
                .and_then(|c| c.annotations.values().next().cloned())
        })
    }

    pub fn replace_rules(&mut self, set: Arc<RuleSet>) {
        self.engine.replace(set);
    }

    /// Enriches `ev`, emits it, derives GPU session events, and runs the rules on both.
    pub fn process<E>(
        &mut self,
        mut ev: Event,
        emit: &mut dyn FnMut(Out<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.procs.apply(&mut ev);
        if ev.container.is_none() {
            if let Some(c) = self.containers.as_mut().and_then(|c| c.get(ev.cgroup_id)) {
                ev.container = Some(c.clone());
            }
        }
        emit(Out::Event(&ev))?;
        let derived = self.sessions.on_event(&ev, &self.procs);
        let episode = self.episode(&ev);
        self.incidents.observe(&ev, &self.procs, episode.as_deref());
        self.rules(&ev, emit)?;
        if let Some(d) = derived {
            emit(Out::Event(&d))?;
            self.incidents.observe(&d, &self.procs, episode.as_deref());
            self.rules(&d, emit)?;
        }
        for i in self.incidents.expire(ev.ts_ns) {
            emit(Out::Incident(&i))?;
        }
        Ok(())
    }

    /// Joins an NVML sample to its session; emits and evaluates the resulting `gpu_usage`.
    pub fn usage<E>(
        &mut self,
        s: &UsageSample,
        ts: String,
        ts_ns: u64,
        emit: &mut dyn FnMut(Out<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if let Some(ev) = self.sessions.on_usage(s, ts, ts_ns) {
            emit(Out::Event(&ev))?;
            let episode = self.episode(&ev);
            self.incidents.observe(&ev, &self.procs, episode.as_deref());
            self.rules(&ev, emit)?;
        }
        Ok(())
    }

    fn rules<E>(
        &mut self,
        ev: &Event,
        emit: &mut dyn FnMut(Out<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut facts = self.procs.facts(ev.pid);
        if facts.episode.is_none() {
            // A pod annotation tags the episode when no environment variable did.
            facts.episode = ev
                .container
                .as_ref()
                .and_then(|c| c.annotations.values().next().cloned());
        }
        let session = self.sessions.session_of(ev.pid);
        facts.gpu_session = session.is_some();
        let mut alerts = self.engine.process(&Input {
            ev,
            procs: &self.procs,
            container: ev.container.as_ref(),
            facts: &facts,
            gpu_session: session,
        });
        for a in &mut alerts {
            self.alerts += 1;
            let inc = self.incidents.add(a, &self.procs, facts.episode.as_deref());
            emit(Out::Alert(a))?;
            if let Some(i) = inc {
                emit(Out::Incident(&i))?;
            }
        }
        Ok(())
    }
}

/// Result of running a rule's shipped examples.
#[derive(Debug)]
pub struct ExampleFailure {
    pub rule: String,
    pub source: String,
    pub message: String,
}

/// Runs every rule's `examples` through the same per-event path as `sensor run`
/// ([`Processor`]) with an engine holding only that rule (so other rules cannot
/// interfere): `match` items must alert on their last event, `no_match` items never.
pub fn test_examples(set: &RuleSet) -> (usize, Vec<ExampleFailure>) {
    let mut checked = 0;
    let mut failures = vec![];
    for r in &set.rules {
        let mut rule = r.clone();
        rule.enabled = true;
        let one = Arc::new(RuleSet::new(vec![rule]));
        let cases = r.def.examples.matching.iter().map(|e| (true, e));
        let cases = cases.chain(r.def.examples.no_match.iter().map(|e| (false, e)));
        let mut any = false;
        for (want, ex) in cases {
            any = true;
            checked += 1;
            if let Err(m) = run_example(&one, want, ex) {
                failures.push(ExampleFailure {
                    rule: r.id.clone(),
                    source: r.source.clone(),
                    message: m,
                });
            }
        }
        if !any {
            failures.push(ExampleFailure {
                rule: r.id.clone(),
                source: r.source.clone(),
                message: "rule ships no examples".into(),
            });
        }
    }
    (checked, failures)
}

fn run_example(set: &Arc<RuleSet>, want: bool, ex: &serde_json::Value) -> Result<(), String> {
    let events = match ex.get("events") {
        Some(serde_json::Value::Array(a)) => a.clone(),
        _ => vec![ex.clone()],
    };
    let cfg = RulesConfig {
        agent_runtimes: vec![],
        ..Default::default()
    };
    let mut p = Processor::new(ProcTable::default(), None, Engine::new(set.clone(), cfg));
    let n = events.len();
    for (k, raw) in events.into_iter().enumerate() {
        let (ev, lineage) =
            example_event(raw).map_err(|e| format!("example event does not parse: {e}"))?;
        p.procs.add_lineage(ev.pid, ev.exe.as_deref(), &lineage);
        let mut alerts = 0;
        p.process(ev, &mut |o| {
            if let Out::Alert(_) = o {
                alerts += 1;
            }
            Ok::<(), ()>(())
        })
        .ok();
        if alerts > 0 && (!want || k + 1 < n) {
            return Err(format!(
                "alerted on event {} of {n} ({})",
                k + 1,
                if want {
                    "too early"
                } else {
                    "no_match example"
                }
            ));
        }
        if want && k + 1 == n && alerts == 0 {
            return Err(format!("match example did not alert: {ex}"));
        }
    }
    Ok(())
}

/// An example event (JSON as the sensor prints it; short forms get defaults) and its `lineage`.
fn example_event(mut raw: serde_json::Value) -> Result<(Event, Vec<Ancestor>), serde_json::Error> {
    // `lineage` is context for the example (the ancestors); GPU session events also carry it
    // in their body, so it stays in the object.
    let lineage: Vec<Ancestor> = match raw.get("lineage") {
        Some(v) if !v.is_null() => serde_json::from_value(v.clone())?,
        _ => vec![],
    };
    if let Some(o) = raw.as_object_mut() {
        for (k, v) in [
            ("ts", serde_json::json!("1970-01-01T00:00:00Z")),
            ("ts_ns", 0.into()),
            ("pid", 1000.into()),
            ("ppid", 0.into()),
            ("uid", 0.into()),
            ("gid", 0.into()),
            ("comm", "".into()),
            ("cgroup_id", 1.into()),
            ("mntns", 0.into()),
        ] {
            o.entry(k).or_insert(v);
        }
        let pid = o["pid"].clone();
        o.entry("tid").or_insert(pid);
        let session = o
            .get("kind")
            .and_then(|k| k.as_str())
            .is_some_and(|k| k.starts_with("gpu_session") || k == "gpu_query");
        if session {
            o.entry("lineage").or_insert(serde_json::json!([]));
        } else {
            o.remove("lineage");
        }
    }
    Ok((serde_json::from_value(raw)?, lineage))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::load;

    #[test]
    fn builtin_rules_compile_and_their_examples_pass() {
        let set = load::compile(&[load::builtin()]).unwrap();
        assert!(set.len() >= 15, "{} rules", set.len());
        let (checked, failures) = test_examples(&set);
        for f in &failures {
            eprintln!("{} ({}): {}", f.rule, f.source, f.message);
        }
        assert!(
            failures.is_empty(),
            "{} of {checked} examples failed",
            failures.len()
        );
        assert!(checked >= 2 * set.len());
    }

    /// A reused pid does not inherit the pending first step of a sequence from the process
    /// that had the pid before.
    #[test]
    fn a_reused_pid_inherits_no_pending_sequence() {
        let text = r#"
rules:
  - id: seq
    description: d
    severity: low
    condition: kind = "connect"
    sequence: {after: 'kind = "exec" and argv contains "first-step"', within: 600, by: process}
"#;
        let set = Arc::new(
            load::compile(&[load::Source {
                name: "s".into(),
                text: text.into(),
            }])
            .unwrap(),
        );
        let ev = |ts: u64, pid: u32, body: serde_json::Value| -> Event {
            let mut v = serde_json::json!({
                "ts": "2026-11-30T00:00:00Z", "ts_ns": ts, "pid": pid, "tid": pid, "ppid": 99,
                "uid": 0, "gid": 0, "comm": "x", "cgroup_id": 1, "mntns": 1,
            });
            v.as_object_mut()
                .unwrap()
                .extend(body.as_object().unwrap().clone());
            serde_json::from_value(v).unwrap()
        };
        let exec = serde_json::json!({"kind": "exec", "filename": "/bin/x", "argv": ["x", "first-step"], "args_truncated": false, "args_size": 10});
        let connect = serde_json::json!({"kind": "connect", "family": "inet", "sock_type": "stream", "dst_ip": "10.0.0.1", "dst_port": 22, "result": "ok", "via": "syscall"});
        let run = |reuse: bool| {
            let mut p = Processor::new(
                ProcTable::default(),
                None,
                Engine::new(set.clone(), RulesConfig::default()),
            );
            let mut alerts = 0;
            let mut feed = |p: &mut Processor, e: Event| {
                p.process(e, &mut |o| {
                    if let Out::Alert(_) = o {
                        alerts += 1;
                    }
                    Ok::<(), ()>(())
                })
                .unwrap();
            };
            feed(
                &mut p,
                ev(
                    1_000,
                    99,
                    serde_json::json!({"kind": "fork", "child_pid": 100}),
                ),
            );
            feed(&mut p, ev(2_000, 100, exec.clone()));
            if reuse {
                feed(
                    &mut p,
                    ev(
                        3_000,
                        100,
                        serde_json::json!({"kind": "exit", "exit_code": 0}),
                    ),
                );
                feed(
                    &mut p,
                    ev(
                        4_000,
                        99,
                        serde_json::json!({"kind": "fork", "child_pid": 100}),
                    ),
                );
            }
            feed(&mut p, ev(5_000, 100, connect.clone()));
            alerts
        };
        assert_eq!(run(false), 1, "the same process completes the sequence");
        assert_eq!(run(true), 0, "a new process with the same pid does not");
    }

    #[test]
    fn example_that_does_not_alert_is_reported() {
        let text = "rules:\n  - id: t\n    description: d\n    severity: low\n    condition: kind = \"exec\" and comm = \"zzz\"\n    examples:\n      match:\n        - {kind: exec, comm: aaa, filename: /a, argv: [a], args_truncated: false, args_size: 2}\n";
        let set = load::compile(&[load::Source {
            name: "t".into(),
            text: text.into(),
        }])
        .unwrap();
        let (_, f) = test_examples(&set);
        assert_eq!(f.len(), 1);
        assert!(f[0].message.contains("did not alert"));
    }
}
