//! `sensor replay FILE.jsonl`: runs a recorded event stream through the same [`Processor`] as
//! the live sensor (process table, GPU sessions, rules) and prints the alerts.

use std::io::{BufRead, Write};

use anyhow::Context;

use crate::{
    context::process::ProcTable,
    event::{Event, Kind},
    output::JsonLines,
    pipeline::{Out, Processor},
    rules::{Engine, RuleSet},
};

/// Status records (not events): skipped on input.
const STATUS: &[&str] = &[
    "sensor_start",
    "loss",
    "alert",
    "decode_error",
    "rules_reload",
];

/// Kinds the pipeline derives itself (again, from the ioctls and exits): skipped on input.
fn derived_by_pipeline(k: Kind) -> bool {
    matches!(
        k,
        Kind::GpuSessionStart | Kind::GpuSessionEnd | Kind::GpuQuery
    )
}

fn skipped(kind: &str) -> bool {
    STATUS.contains(&kind) || Kind::from_name(kind).is_some_and(derived_by_pipeline)
}

pub struct Summary {
    pub lines: u64,
    pub events: u64,
    pub skipped: u64,
    pub errors: u64,
    pub alerts: u64,
    /// Incidents raised.
    pub incidents: u64,
}

/// What a replay knows beyond the rules: the workload and the incident settings.
#[derive(Debug, Clone, Default)]
pub struct ReplayContext {
    pub workload: crate::context::workload::WorkloadConfig,
    pub incidents: crate::incidents::IncidentsConfig,
}

pub fn replay(
    input: impl BufRead,
    set: RuleSet,
    cfg: crate::rules::RulesConfig,
    context: ReplayContext,
    alerts_only: bool,
    out: impl Write,
) -> anyhow::Result<Summary> {
    let mut procs = ProcTable::default();
    procs.set_workload(context.workload);
    let mut proc =
        Processor::new(procs, None, Engine::new(set.into(), cfg)).with_incidents(context.incidents);
    let mut out = JsonLines::new(out);
    let mut s = Summary {
        lines: 0,
        events: 0,
        skipped: 0,
        errors: 0,
        alerts: 0,
        incidents: 0,
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
        let ev: Event = match Event::from_json(line) {
            Ok(e) => e,
            Err(e) => {
                match serde_json::from_str::<serde_json::Value>(line) {
                    Ok(v) if v.get("kind").and_then(|k| k.as_str()).is_some_and(skipped) => {
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
        if derived_by_pipeline(ev.body.kind()) {
            s.skipped += 1;
            continue;
        }
        s.events += 1;
        proc.process(ev, &mut |o| match o {
            Out::Event(e) if !alerts_only => out.write(e),
            Out::Event(_) => Ok(()),
            Out::Alert(a) => out.write(a),
            Out::Incident(i) => out.write(i),
        })?;
    }
    out.flush()?;
    s.alerts = proc.alerts;
    s.incidents = proc.incidents.raised_total;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FORK: &str = r#"{"ts":"2026-11-27T00:00:00Z","ts_ns":1,"pid":7,"tid":7,"ppid":1,"uid":0,"gid":0,"comm":"x","cgroup_id":1,"mntns":1,"kind":"fork","child_pid":8}"#;

    fn line() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(FORK.as_bytes().to_vec()),
            Just(br#"{"kind":"loss","final":true}"#.to_vec()),
            Just(br#"{"kind":"exec"}"#.to_vec()),
            Just(b"".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..80).prop_map(|mut v| {
                v.retain(|&b| b != b'\n');
                v
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        /// Any mix of events, status records, blank lines and garbage (invalid UTF-8 too):
        /// every line is accounted for, never a panic and never an early stop.
        #[test]
        fn every_line_is_accounted_for(lines in proptest::collection::vec(line(), 0..30)) {
            let mut input = Vec::new();
            for l in &lines {
                input.extend_from_slice(l);
                input.push(b'\n');
            }
            let set = crate::rules::load::compile(&[crate::rules::load::builtin()]).unwrap();
            let mut out = Vec::new();
            let s = replay(&input[..], set, Default::default(), Default::default(), false, &mut out).unwrap();
            let blank = lines.iter().filter(|l| std::str::from_utf8(l).is_ok_and(|t| t.trim().is_empty())).count() as u64;
            prop_assert_eq!(s.lines, lines.len() as u64);
            prop_assert_eq!(s.events + s.skipped + s.errors + blank, s.lines);
            let forks = lines.iter().filter(|l| l.as_slice() == FORK.as_bytes()).count() as u64;
            prop_assert!(s.events >= forks);
        }
    }
}
