//! The rule engine: compiled YAML rules (conditions over event, process, ancestor and container
//! fields; exceptions; "A then B within T" sequences; thresholds over a window) evaluated on
//! every event, producing alerts with the process lineage attached.

pub mod expr;
pub mod fields;
pub mod load;

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::event::Kind;
use crate::{
    context::process::{ProcFacts, ProcTable},
    event::{Ancestor, Container, Event},
};
use expr::Expr;
use fields::{basename, eval, Ctx};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn raised(self) -> Severity {
        match self {
            Severity::Info => Severity::Low,
            Severity::Low => Severity::Medium,
            Severity::Medium => Severity::High,
            _ => Severity::Critical,
        }
    }
}

/// What "the same" means for sequences and thresholds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scoped {
    #[default]
    Process,
    /// The process tree: keyed by its root (`ProcTable::tree_root`).
    Tree,
    /// The container (cgroup).
    Container,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    pub count: usize,
    /// Seconds.
    pub within: f64,
    #[serde(default)]
    pub by: Scoped,
}

#[derive(Debug, Clone)]
pub struct Sequence {
    pub after: Expr,
    pub within_ns: u64,
    pub by: Scoped,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub description: String,
    pub severity: Severity,
    pub tags: Vec<String>,
    pub cond: Expr,
    pub exceptions: Vec<Expr>,
    pub sequence: Option<Sequence>,
    pub threshold: Option<Threshold>,
    /// Evidence weight (see [`load::RuleDef::weight`]); `None`: a strong signal.
    pub weight: Option<u32>,
    pub enabled: bool,
    pub def: load::RuleDef,
    pub source: String,
}

/// A compiled set, indexed by the event kinds its rules apply to.
#[derive(Debug)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    /// For each kind, the enabled rules an event of that kind can match (or, for a sequence,
    /// advance), in file order: the `kind` tests of each condition, wherever they sit in it,
    /// decide ([`fields::kind_truth`]); a condition no `kind` test restricts is on every list.
    /// Indexed by the kind's id (ids are small: under 64).
    by_kind: Vec<Vec<usize>>,
    /// Distinct predicates (the size of the per-event memo).
    slots: usize,
}

/// Gives every predicate of `e` its memo slot: one per distinct (field, operator, pattern).
fn assign_slots(e: &mut Expr, seen: &mut HashMap<String, u32>) {
    match e {
        Expr::And(v) | Expr::Or(v) => v.iter_mut().for_each(|x| assign_slots(x, seen)),
        Expr::Not(x) => assign_slots(x, seen),
        Expr::Pred {
            field,
            op,
            pat,
            slot,
        } => {
            let n = seen.len() as u32;
            *slot = *seen.entry(format!("{field:?} {op:?} {pat:?}")).or_insert(n);
        }
    }
}

impl RuleSet {
    pub fn new(mut rules: Vec<Rule>) -> RuleSet {
        let mut seen = HashMap::new();
        for r in &mut rules {
            assign_slots(&mut r.cond, &mut seen);
            r.exceptions
                .iter_mut()
                .for_each(|x| assign_slots(x, &mut seen));
            if let Some(sq) = &mut r.sequence {
                assign_slots(&mut sq.after, &mut seen);
            }
        }
        let ids = Kind::ALL.iter().map(|k| k.id() as usize).max().unwrap_or(0);
        let mut by_kind = vec![vec![]; ids + 1];
        for &k in Kind::ALL {
            let can = |e: &Expr| fields::kind_truth(e, k) != Some(false);
            let list: Vec<usize> = rules
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    r.enabled
                        && (can(&r.cond) || r.sequence.as_ref().is_some_and(|s| can(&s.after)))
                })
                .map(|(i, _)| i)
                .collect();
            by_kind[k.id() as usize] = list;
        }
        RuleSet {
            rules,
            by_kind,
            slots: seen.len(),
        }
    }

    /// The rules an event of kind `k` is evaluated against.
    pub fn for_kind(&self, k: Kind) -> &[usize] {
        self.by_kind.get(k.id() as usize).map_or(&[], Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// Engine settings (config `[rules]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Load the rules compiled into the binary.
    pub builtin: bool,
    /// Extra rule directories (every *.yaml / *.yml file).
    pub dirs: Vec<std::path::PathBuf>,
    /// Identical alerts (same fingerprint) within this many seconds are counted, not repeated.
    pub dedup_secs: u64,
    /// Process names (globs) of agent runtimes: their presence in the lineage raises severity.
    pub agent_runtimes: Vec<String>,
    /// cgroup path substrings of the agent sandbox; empty: anywhere.
    pub sandbox_cgroups: Vec<String>,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            builtin: true,
            dirs: vec![],
            dedup_secs: 60,
            agent_runtimes: ["python*", "node", "nodejs", "deno", "bun"]
                .map(String::from)
                .to_vec(),
            sandbox_cgroups: vec![],
        }
    }
}

/// A rule hit, printed as `{"kind": "alert", …}` for a strong rule and `{"kind": "evidence",
/// …}` for a weighted one. Sinks receive the incident it joins, not the hit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Alert {
    /// `alert` or `evidence`.
    pub kind: String,
    pub ts: String,
    pub rule: String,
    pub description: String,
    pub severity: Severity,
    /// Evidence weight; absent for a strong signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// The incident this hit joined (see `crate::incidents`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity_raised_by: Option<String>,
    pub tags: Vec<String>,
    pub fingerprint: String,
    pub pid: u32,
    pub comm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    pub argv: Vec<String>,
    /// The triggering event.
    pub event: Event,
    /// Earlier events that led to it (sequence's first step).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub related: Vec<Event>,
    /// For thresholds: how many matches in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    pub lineage: Vec<Ancestor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub episode: Option<String>,
    /// The process's GPU compute session, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_session: Option<Event>,
}

/// What the engine needs from the rest of the pipeline for one event.
pub struct Input<'a> {
    pub ev: &'a Event,
    pub procs: &'a ProcTable,
    pub container: Option<&'a Container>,
    pub facts: &'a ProcFacts,
    pub gpu_session: Option<&'a Event>,
}

pub struct Engine {
    set: Arc<RuleSet>,
    cfg: RulesConfig,
    runtimes: Vec<glob::Pattern>,
    /// (rule, scope key) → recent first-step matches (ts_ns, event).
    seq_state: HashMap<(usize, ScopeKey), VecDeque<(u64, Event)>>,
    /// (rule, scope key) → match timestamps in the window.
    thr_state: HashMap<(usize, ScopeKey), VecDeque<u64>>,
    /// fingerprint → last emitted ts_ns.
    dedup: HashMap<String, u64>,
    pub suppressed: u64,
    /// The per-event predicate memo (kept to reuse its allocation).
    memo: Vec<std::cell::Cell<u8>>,
}

const MAX_PENDING: usize = 64;
/// Scopes with correlation state kept at most; past it, expired windows are dropped first and
/// then the whole state (counted in `suppressed`-style logs).
const MAX_SCOPES: usize = 100_000;

/// What sequences and thresholds are counted per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ScopeKey {
    /// (pid, start ns) of the process (or of the tree's root).
    Process((u32, u64)),
    Container(u64),
}

impl Engine {
    pub fn new(set: Arc<RuleSet>, cfg: RulesConfig) -> Engine {
        let runtimes = cfg
            .agent_runtimes
            .iter()
            .filter_map(|g| glob::Pattern::new(g).ok())
            .collect();
        Engine {
            set,
            cfg,
            runtimes,
            seq_state: HashMap::new(),
            thr_state: HashMap::new(),
            dedup: HashMap::new(),
            suppressed: 0,
            memo: vec![],
        }
    }

    pub fn set(&self) -> &Arc<RuleSet> {
        &self.set
    }

    /// Swaps in a new rule set (hot reload); correlation state starts afresh.
    pub fn replace(&mut self, set: Arc<RuleSet>) {
        self.set = set;
        self.seq_state.clear();
        self.thr_state.clear();
    }

    /// Processes are identified by (pid, start time), never by pid alone: a reused pid must not
    /// inherit a dead process's pending sequence or threshold window.
    fn scope_key(by: Scoped, cx: &Ctx<'_>) -> ScopeKey {
        let ev = cx.ev;
        match by {
            Scoped::Process => ScopeKey::Process(cx.procs.key(ev.pid)),
            Scoped::Container => ScopeKey::Container(ev.cgroup_id),
            Scoped::Tree => ScopeKey::Process(cx.procs.tree_root(ev.pid)),
        }
    }

    /// Scopes holding sequence or threshold state (tests, diagnostics).
    pub fn correlation_scopes(&self) -> usize {
        self.seq_state.len() + self.thr_state.len()
    }

    /// Drops the correlation state of a process that exited (keyed by its (pid, start)), and
    /// bounds the state of all scopes: sequences and thresholds cannot grow without end.
    fn forget(&mut self, inp: &Input<'_>) {
        if let crate::event::Body::Exit(_) = inp.ev.body {
            let key = ScopeKey::Process(inp.procs.key(inp.ev.pid));
            let set = self.set.clone();
            let stateful = set.rules.iter().enumerate();
            for (i, _) in stateful.filter(|(_, r)| r.sequence.is_some() || r.threshold.is_some()) {
                self.seq_state.remove(&(i, key));
                self.thr_state.remove(&(i, key));
            }
        }
        if self.seq_state.len() + self.thr_state.len() > MAX_SCOPES {
            let now = inp.ev.ts_ns;
            let rules = &self.set.rules;
            self.seq_state.retain(|(i, _), q| {
                let win = rules[*i].sequence.as_ref().map_or(0, |s| s.within_ns);
                q.back().is_some_and(|(t, _)| now.saturating_sub(*t) <= win)
            });
            self.thr_state.retain(|(i, _), q| {
                let win = rules[*i]
                    .threshold
                    .as_ref()
                    .map_or(0, |t| (t.within * 1e9) as u64);
                q.back().is_some_and(|t| now.saturating_sub(*t) <= win)
            });
            if self.seq_state.len() + self.thr_state.len() > MAX_SCOPES {
                tracing::warn!(
                    "more than {MAX_SCOPES} processes with open rule sequences/thresholds: state reset"
                );
                self.seq_state.clear();
                self.thr_state.clear();
            }
        }
    }

    /// Evaluates every applicable rule on `ev`.
    pub fn process(&mut self, inp: &Input<'_>) -> Vec<Alert> {
        let out = self.evaluate(inp);
        self.forget(inp);
        out
    }

    fn evaluate(&mut self, inp: &Input<'_>) -> Vec<Alert> {
        let set = self.set.clone();
        let kind = inp.ev.body.kind();
        let idx = set.for_kind(kind);
        let lineage = std::cell::OnceCell::new();
        self.memo.clear();
        self.memo.resize(set.slots, std::cell::Cell::new(0));
        let memo = std::mem::take(&mut self.memo);
        let mut out = vec![];
        for &i in idx {
            let r = &set.rules[i];
            let cx = Ctx {
                ev: inp.ev,
                procs: inp.procs,
                lineage: &lineage,
                container: inp.container,
                facts: inp.facts,
                memo: Some(&memo),
            };
            let hit = eval(&r.cond, &cx) && !r.exceptions.iter().any(|x| eval(x, &cx));
            let mut related = vec![];
            let mut count = None;
            let mut fire = hit;
            if let Some(sq) = &r.sequence {
                let key = (i, Self::scope_key(sq.by, &cx));
                let now = inp.ev.ts_ns;
                if hit {
                    fire = false;
                    if let Some(q) = self.seq_state.get_mut(&key) {
                        q.retain(|(t, _)| now.saturating_sub(*t) <= sq.within_ns);
                        if let Some((_, first)) = q.iter().find(|(t, e)| *t <= now && e != inp.ev) {
                            related.push(first.clone());
                            fire = true;
                        }
                    }
                }
                if eval(&sq.after, &cx) {
                    let q = self.seq_state.entry(key).or_default();
                    if q.len() >= MAX_PENDING {
                        q.pop_front();
                    }
                    q.push_back((now, inp.ev.clone()));
                }
            }
            if fire {
                if let Some(t) = &r.threshold {
                    let key = (i, Self::scope_key(t.by, &cx));
                    let now = inp.ev.ts_ns;
                    let q = self.thr_state.entry(key).or_default();
                    q.push_back(now);
                    let win = (t.within * 1e9) as u64;
                    while q.front().is_some_and(|&f| now.saturating_sub(f) > win) {
                        q.pop_front();
                    }
                    if q.len() >= t.count {
                        count = Some(q.len());
                        q.clear();
                    } else {
                        fire = false;
                    }
                }
            }
            if !fire {
                continue;
            }
            let lin = cx.lin().to_vec();
            out.extend(self.alert(r, inp, &lin, related, count));
        }
        self.memo = memo;
        out
    }

    fn alert(
        &mut self,
        r: &Rule,
        inp: &Input<'_>,
        lineage: &[Ancestor],
        related: Vec<Event>,
        count: Option<usize>,
    ) -> Option<Alert> {
        let ev = inp.ev;
        let argv = match &ev.body {
            crate::event::Body::Exec(x) => x.argv.clone(),
            _ => inp.procs.argv(ev.pid),
        };
        // Raise the severity when an agent runtime sits in the lineage inside the sandbox.
        let mut severity = r.severity;
        let mut raised_by = None;
        let in_sandbox = self.cfg.sandbox_cgroups.is_empty()
            || inp.container.is_some_and(|c| {
                self.cfg
                    .sandbox_cgroups
                    .iter()
                    .any(|s| c.cgroup.contains(s.as_str()))
            });
        if in_sandbox {
            if let Some(a) = lineage.iter().find(|a| {
                a.exe
                    .as_deref()
                    .is_some_and(|e| self.runtimes.iter().any(|g| g.matches(basename(e))))
            }) {
                severity = severity.raised();
                raised_by = Some(format!(
                    "agent runtime {} (pid {}) in the lineage",
                    a.exe.as_deref().map(basename).unwrap_or("?"),
                    a.pid
                ));
            }
        }
        // Fingerprint: rule, process identity, and what the process touched.
        let mut h = Sha256::new();
        h.update(r.id.as_bytes());
        h.update(ev.exe.as_deref().unwrap_or(&ev.comm).as_bytes());
        h.update(ev.pid.to_le_bytes());
        if let crate::event::Body::Connect(n) = &ev.body {
            h.update(
                n.dst_ip
                    .map(|ip| ip.to_string())
                    .unwrap_or_default()
                    .as_bytes(),
            );
            h.update(n.dst_port.unwrap_or(0).to_le_bytes());
        }
        let fingerprint = crate::hex(&h.finalize()[..12]);
        let dedup_ns = self.cfg.dedup_secs * 1_000_000_000;
        if let Some(&last) = self.dedup.get(&fingerprint) {
            if ev.ts_ns.saturating_sub(last) < dedup_ns {
                self.suppressed += 1;
                return None;
            }
        }
        if self.dedup.len() > 100_000 {
            let now = ev.ts_ns;
            self.dedup.retain(|_, t| now.saturating_sub(*t) < dedup_ns);
        }
        self.dedup.insert(fingerprint.clone(), ev.ts_ns);
        Some(Alert {
            kind: if r.weight.is_some() {
                "evidence"
            } else {
                "alert"
            }
            .into(),
            ts: ev.ts.clone(),
            rule: r.id.clone(),
            description: r.description.clone(),
            severity,
            weight: r.weight,
            incident: None,
            severity_raised_by: raised_by,
            tags: r.tags.clone(),
            fingerprint,
            pid: ev.pid,
            comm: ev.comm.clone(),
            exe: ev.exe.clone(),
            argv,
            event: ev.clone(),
            related,
            count,
            lineage: lineage.to_vec(),
            container: inp.container.cloned(),
            episode: inp.facts.episode.clone(),
            gpu_session: inp.gpu_session.cloned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_errors_name_file_and_line() {
        let bad = load::Source { name: "x.yaml".into(), text: "rules:\n  - id: a\n    description: d\n    severity: loud\n    condition: kind = \"exec\"\n".into() };
        let e = load::compile(&[bad]).unwrap_err();
        assert_eq!(e.file, "x.yaml");
        assert!(e.line >= 2 && e.reason.contains("loud"), "{e}");
        let bad = load::Source {
            name: "y.yaml".into(),
            text:
                "rules:\n  - id: b\n    description: d\n    severity: low\n    condition: kind = \n"
                    .into(),
        };
        let e = load::compile(&[bad]).unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("y.yaml", 2), "{e}");
        assert!(e.reason.contains("rule `b` condition"), "{e}");
        let dup =
            "rules:\n  - {id: c, description: d, severity: low, condition: 'kind = \"exec\"'}\n";
        let e = load::compile(&[
            load::Source {
                name: "z".into(),
                text: dup.to_string(),
            },
            load::Source {
                name: "z2".into(),
                text: dup.into(),
            },
        ])
        .unwrap_err();
        assert!(e.reason.contains("duplicate"), "{e}");
    }

    #[test]
    fn rules_are_indexed_by_the_kinds_their_conditions_allow() {
        let text = r#"rules:
  - {id: either, description: d, severity: low, condition: '(kind = "exec" and comm = "a") or (kind = "net_payload" and proto = "ssh")'}
  - {id: not-exec, description: d, severity: low, condition: 'not kind = "exec" and comm = "a"'}
  - {id: any, description: d, severity: low, condition: 'comm = "a"'}
  - {id: nested, description: d, severity: low, condition: 'comm = "a" and (kind in ("connect", "bind") and dst_port = 1)'}
  - {id: seq, description: d, severity: low, condition: 'kind = "connect"', sequence: {after: 'kind = "exec"', within: 5}}
"#;
        let set = load::compile(&[load::Source {
            name: "k.yaml".into(),
            text: text.into(),
        }])
        .unwrap();
        let ids = |k: Kind| -> Vec<&str> {
            set.for_kind(k)
                .iter()
                .map(|&i| set.rules[i].id.as_str())
                .collect()
        };
        assert_eq!(ids(Kind::Exec), ["either", "any", "seq"]);
        assert_eq!(ids(Kind::NetPayload), ["either", "not-exec", "any"]);
        assert_eq!(ids(Kind::Connect), ["not-exec", "any", "nested", "seq"]);
        assert_eq!(ids(Kind::Bind), ["not-exec", "any", "nested"]);
        assert_eq!(ids(Kind::Fork), ["not-exec", "any"]);
        // `comm = "a"` (five rules) and `kind = "exec"` (three) have one memo slot each.
        // Distinct: kind exec, comm, kind net_payload, proto, kind in, dst_port, kind connect.
        assert_eq!(set.slots, 7);
    }
}
