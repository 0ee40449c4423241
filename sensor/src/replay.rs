//! `sensor replay FILE.jsonl`: runs a recorded event stream through the same [`Processor`] as
//! the live sensor (process table, GPU sessions, rules) and prints the alerts.

use std::io::{BufRead, Write};

use anyhow::Context;

use crate::{
    context::process::ProcTable,
    event::Event,
    output::JsonLines,
    pipeline::{Out, Processor},
    rules::{Engine, RuleSet},
};

/// Kinds that are status records or derived by the pipeline itself: skipped on input (the
/// pipeline derives sessions again from the ioctls and exits).
const SKIP: &[&str] = &[
    "sensor_start",
    "loss",
    "alert",
    "decode_error",
    "rules_reload",
    "gpu_session_start",
    "gpu_session_end",
    "gpu_query",
];

pub struct Summary {
    pub lines: u64,
    pub events: u64,
    pub skipped: u64,
    pub errors: u64,
    pub alerts: u64,
}

pub fn replay(
    input: impl BufRead,
    set: RuleSet,
    cfg: crate::rules::RulesConfig,
    alerts_only: bool,
    out: impl Write,
) -> anyhow::Result<Summary> {
    let mut proc = Processor::new(ProcTable::default(), None, Engine::new(set.into(), cfg));
    let mut out = JsonLines::new(out);
    let mut s = Summary {
        lines: 0,
        events: 0,
        skipped: 0,
        errors: 0,
        alerts: 0,
    };
    let mut input = input;
    let mut buf = Vec::with_capacity(4096);
    let mut n = 0usize;
    loop {
        buf.clear();
        let got = input
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("reading the input after line {n}"))?;
        if got == 0 {
            break;
        }
        n += 1;
        s.lines += 1;
        // A line that is not UTF-8 is reported with its number and skipped; the rest goes on.
        let line = match std::str::from_utf8(&buf) {
            Ok(l) => l.trim_end_matches(['\n', '\r']),
            Err(e) => {
                s.errors += 1;
                eprintln!(
                    "line {n}: not UTF-8 (invalid byte at column {})",
                    e.valid_up_to() + 1
                );
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        // Straight into the typed event; only a line that does not parse is looked at as
        // generic JSON (a status record to skip, or an error to report).
        let ev: Event = match serde_json::from_str(line) {
            Ok(e) => e,
            Err(e) => {
                match serde_json::from_str::<serde_json::Value>(line) {
                    Ok(v)
                        if v.get("kind")
                            .and_then(|k| k.as_str())
                            .is_some_and(|k| SKIP.contains(&k)) =>
                    {
                        s.skipped += 1;
                    }
                    Ok(_) => {
                        s.errors += 1;
                        eprintln!("line {n}: not a sensor event: {e}");
                    }
                    Err(e) => {
                        s.errors += 1;
                        eprintln!("line {n}: not JSON: {e}");
                    }
                }
                continue;
            }
        };
        if SKIP.contains(&crate::rules::fields::kind_name(&ev.body)) {
            s.skipped += 1;
            continue;
        }
        s.events += 1;
        proc.process(ev, &mut |o| match o {
            Out::Event(e) if !alerts_only => out.write(e),
            Out::Event(_) => Ok(()),
            Out::Alert(a) => out.write(a),
        })?;
    }
    out.flush()?;
    s.alerts = proc.alerts;
    Ok(s)
}
