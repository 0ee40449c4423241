//! Loading rule files (YAML): lists, macros and rules, merged across the files of a directory
//! (and the built-in set). Every error names the file, the line and the reason.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use super::{
    expr::{self, Expr, Lit, Scope},
    Rule, RuleSet, Scoped, Sequence, Severity, Threshold,
};

#[derive(Debug, Error, Clone, PartialEq)]
#[error("{file}:{line}: {reason}")]
pub struct LoadError {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    lists: std::collections::BTreeMap<String, Vec<serde_yaml_ng::Value>>,
    #[serde(default)]
    macros: Vec<MacroDef>,
    #[serde(default)]
    rules: Vec<RuleDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MacroDef {
    name: String,
    condition: String,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    pub id: String,
    pub description: String,
    pub severity: Severity,
    #[serde(default)]
    pub tags: Vec<String>,
    pub condition: String,
    #[serde(default)]
    pub exceptions: Vec<String>,
    #[serde(default)]
    pub sequence: Option<SeqDef>,
    #[serde(default)]
    pub threshold: Option<Threshold>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub examples: Examples,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct SeqDef {
    pub after: String,
    pub within: f64,
    #[serde(default)]
    pub by: Scoped,
}

/// Example events shipped with a rule: each item is one event (JSON as the sensor prints it,
/// optionally with `lineage`) or `{events: [...]}` for a sequence; the alert must fire on the
/// last event of a `match` item and never for a `no_match` item.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct Examples {
    #[serde(default, rename = "match")]
    pub matching: Vec<serde_json::Value>,
    #[serde(default)]
    pub no_match: Vec<serde_json::Value>,
}

/// One source of rules.
pub struct Source {
    pub name: String,
    pub text: String,
}

/// The built-in rule set, compiled into the binary.
pub fn builtin() -> Source {
    Source {
        name: "<builtin>/default.yaml".into(),
        text: include_str!("../../rules/default.yaml").into(),
    }
}

/// Reads every `*.yaml`/`*.yml` file of `dir`, sorted by name.
pub fn read_dir(dir: &Path) -> Result<Vec<Source>, LoadError> {
    let err = |reason: String| LoadError {
        file: dir.display().to_string(),
        line: 0,
        reason,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| err(format!("reading rules directory: {e}")))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).map_err(|e| LoadError {
                file: p.display().to_string(),
                line: 0,
                reason: e.to_string(),
            })?;
            Ok(Source {
                name: p.display().to_string(),
                text,
            })
        })
        .collect()
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map_or(0, |i| i + 1)
}

fn lit(v: &serde_yaml_ng::Value) -> Option<Lit> {
    match v {
        serde_yaml_ng::Value::String(s) => Some(Lit::Str(s.clone())),
        serde_yaml_ng::Value::Number(n) => n.as_i64().map(Lit::Int),
        serde_yaml_ng::Value::Bool(b) => Some(Lit::Bool(*b)),
        _ => None,
    }
}

/// Kinds a condition is restricted to by a top-level `kind = …`/`kind in (…)`.
fn kinds_of(e: &Expr) -> Option<Vec<String>> {
    use super::{expr::Op, expr::Pattern, fields::Field};
    let one = |e: &Expr| match e {
        Expr::Pred {
            field: Field::Kind,
            op: Op::Eq | Op::In,
            pat: Pattern::Lits(l),
        } => Some(
            l.iter()
                .map(|x| match x {
                    Lit::Str(s) => s.clone(),
                    o => o.to_string(),
                })
                .collect(),
        ),
        _ => None,
    };
    match e {
        Expr::And(v) => v.iter().find_map(one),
        e => one(e),
    }
}

/// Parses and compiles sources into a rule set.
pub fn compile(sources: &[Source]) -> Result<RuleSet, LoadError> {
    let mut parsed = vec![];
    for s in sources {
        let f: File = serde_yaml_ng::from_str(&s.text).map_err(|e| LoadError {
            file: s.name.clone(),
            line: e.location().map_or(0, |l| l.line()),
            reason: e.to_string(),
        })?;
        parsed.push((s, f));
    }
    let mut scope = Scope::default();
    for (s, f) in &parsed {
        for (name, vals) in &f.lists {
            let lits = vals
                .iter()
                .map(lit)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| LoadError {
                    file: s.name.clone(),
                    line: line_of(&s.text, &format!("{name}:")),
                    reason: format!("list `{name}`: items must be strings, numbers or booleans"),
                })?;
            scope.lists.entry(name.clone()).or_default().extend(lits);
        }
    }
    for (s, f) in &parsed {
        for m in &f.macros {
            let e = expr::parse(&m.condition, &scope).map_err(|e| LoadError {
                file: s.name.clone(),
                line: line_of(&s.text, &format!("name: {}", m.name)),
                reason: format!("macro `{}`: {e}", m.name),
            })?;
            scope.macros.insert(m.name.clone(), e);
        }
    }
    let mut rules = vec![];
    let mut seen = std::collections::HashSet::new();
    for (s, f) in &parsed {
        for d in &f.rules {
            let line = line_of(&s.text, &format!("id: {}", d.id));
            let err = |reason: String| LoadError {
                file: s.name.clone(),
                line,
                reason,
            };
            if !seen.insert(d.id.clone()) {
                return Err(err(format!("duplicate rule id `{}`", d.id)));
            }
            let cond = expr::parse(&d.condition, &scope)
                .map_err(|e| err(format!("rule `{}` condition: {e}", d.id)))?;
            let exceptions = d
                .exceptions
                .iter()
                .map(|x| expr::parse(x, &scope))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(format!("rule `{}` exception: {e}", d.id)))?;
            let sequence = match &d.sequence {
                Some(sq) => {
                    let after = expr::parse(&sq.after, &scope)
                        .map_err(|e| err(format!("rule `{}` sequence.after: {e}", d.id)))?;
                    if sq.within <= 0.0 {
                        return Err(err(format!("rule `{}`: sequence.within must be > 0", d.id)));
                    }
                    Some(Sequence {
                        after,
                        within_ns: (sq.within * 1e9) as u64,
                        by: sq.by,
                    })
                }
                None => None,
            };
            if let Some(t) = &d.threshold {
                if t.count == 0 || t.within <= 0.0 {
                    return Err(err(format!(
                        "rule `{}`: threshold needs count ≥ 1, within > 0",
                        d.id
                    )));
                }
            }
            rules.push(Rule {
                kinds: kinds_of(&cond),
                id: d.id.clone(),
                description: d.description.clone(),
                severity: d.severity,
                tags: d.tags.clone(),
                cond,
                exceptions,
                sequence,
                threshold: d.threshold.clone(),
                enabled: d.enabled,
                def: d.clone(),
                source: s.name.clone(),
            });
        }
    }
    Ok(RuleSet::new(rules))
}
