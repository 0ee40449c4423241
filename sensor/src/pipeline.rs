//! The per-event path shared by `sensor run` and `sensor replay`: process context → container →
//! GPU sessions → rules → outputs. Live and offline runs go through exactly this code.

use std::sync::Arc;

use crate::{
    context::{container::Containers, process::ProcTable},
    event::Event,
    gpu::session::{Sessions, UsageSample},
    rules::{Alert, Engine, Input, RuleSet},
};

/// Something the pipeline emits.
pub enum Out<'a> {
    Event(&'a Event),
    Alert(&'a Alert),
}

pub struct Processor {
    pub procs: ProcTable,
    pub sessions: Sessions,
    /// cgroup id → container; `None` when replaying (recorded events carry `container`).
    pub containers: Option<Containers>,
    pub engine: Engine,
    pub alerts: u64,
}

impl Processor {
    pub fn new(procs: ProcTable, containers: Option<Containers>, engine: Engine) -> Processor {
        Processor {
            procs,
            sessions: Sessions::default(),
            containers,
            engine,
            alerts: 0,
        }
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
        self.rules(&ev, emit)?;
        if let Some(d) = derived {
            emit(Out::Event(&d))?;
            self.rules(&d, emit)?;
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
        let alerts = self.engine.process(&Input {
            ev,
            procs: &self.procs,
            container: ev.container.as_ref(),
            facts: &facts,
            gpu_session: session,
        });
        for a in &alerts {
            self.alerts += 1;
            emit(Out::Alert(a))?;
        }
        Ok(())
    }
}
