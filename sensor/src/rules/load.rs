//! Loading rule files (YAML): lists, macros and rules, merged across the files of a directory
//! (and the built-in set). Every error names the file, the line and the reason.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use thiserror::Error;

use super::{
    expr::{self, Expr, Lit, Scope},
    Kind, Rule, RuleSet, Scoped, Sequence, Severity, Threshold,
};

#[derive(Debug, Error, Clone, PartialEq)]
#[error("{file}:{line}: {reason}")]
pub struct LoadError {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

/// Limits on what is read (with [`expr::limits`] for each condition). A file or a set over a
/// limit is a load error; a hot reload that fails keeps the previous set.
pub mod limits {
    /// Largest rule file, in bytes.
    pub const MAX_FILE_BYTES: u64 = 1 << 20;
    /// Most rule files read from one directory.
    pub const MAX_FILES_PER_DIR: usize = 256;
    /// Largest total cost of every compiled condition, exception and sequence step of a set
    /// (cost units as in [`super::expr::limits::MAX_COST`]): bounds the memory of a set.
    pub const MAX_SET_COST: usize = 2_000_000;
    /// Largest total size of the sources of a set, in bytes.
    pub const MAX_SET_BYTES: usize = 16 << 20;
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// New lists; a name defined by an earlier file (or the built-in set) is an error.
    #[serde(default)]
    lists: std::collections::BTreeMap<String, Vec<serde_yaml_ng::Value>>,
    /// Items added to lists defined earlier (e.g. a site's own launchers), said explicitly.
    #[serde(default)]
    append_lists: std::collections::BTreeMap<String, Vec<serde_yaml_ng::Value>>,
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
    /// Replace a macro of the same name defined earlier (without it, that is an error: a
    /// silent redefinition would change every rule that uses the macro).
    #[serde(default, rename = "override")]
    override_: bool,
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
    /// Evidence, not an incident on its own: the rule's hits add this weight to the incident
    /// of their entity (pod, episode or process tree), which is raised when the weights of
    /// distinct rules reach `incidents.threshold`. Without it a hit raises an incident at once.
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Replace a rule with the same id defined earlier (e.g. a built-in one).
    #[serde(default, rename = "override")]
    pub override_: bool,
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

/// Whether a directory entry is a rule file by its name (`*.yaml`, `*.yml`; hidden files, such
/// as the `..data` links of a Kubernetes ConfigMap volume, are not).
pub fn is_rule_file(p: &Path) -> bool {
    p.extension().is_some_and(|x| x == "yaml" || x == "yml")
        && !p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Reads one rule file: only a regular file (links are followed, as ConfigMap volumes need) of
/// at most [`limits::MAX_FILE_BYTES`]. The file is opened non-blocking and checked on the open
/// descriptor, so a FIFO or a device never blocks or feeds the loader.
pub fn read_file(p: &Path) -> Result<Source, LoadError> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    let err = |reason: String| LoadError {
        file: p.display().to_string(),
        line: 0,
        reason,
    };
    // Checked before opening (opening some devices has effects) and again on the descriptor
    // (the path may have been swapped in between).
    let before = std::fs::metadata(p).map_err(|e| err(format!("stat: {e}")))?;
    let f = if before.is_file() {
        Some(
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(p)
                .map_err(|e| err(format!("opening: {e}")))?,
        )
    } else {
        None
    };
    let md = match &f {
        Some(f) => f.metadata().map_err(|e| err(format!("stat: {e}")))?,
        None => before,
    };
    if !md.is_file() {
        let what = {
            use std::os::unix::fs::FileTypeExt;
            let t = md.file_type();
            if t.is_dir() {
                "a directory"
            } else if t.is_fifo() {
                "a FIFO"
            } else if t.is_char_device() || t.is_block_device() {
                "a device"
            } else if t.is_socket() {
                "a socket"
            } else {
                "not a regular file"
            }
        };
        return Err(err(format!(
            "not a regular file ({what}): rule files must be regular files"
        )));
    }
    let max = limits::MAX_FILE_BYTES;
    if md.len() > max {
        return Err(err(format!(
            "file is {} bytes, more than the limit of {max}",
            md.len()
        )));
    }
    let Some(f) = f else {
        return Err(err("not a regular file".into()));
    };
    let mut bytes = Vec::with_capacity(md.len() as usize);
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(format!("reading: {e}")))?;
    if bytes.len() as u64 > max {
        return Err(err(format!("file grew past the limit of {max} bytes")));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        LoadError {
            file: p.display().to_string(),
            line,
            reason: format!("not UTF-8 (byte {at})"),
        }
    })?;
    Ok(Source {
        name: p.display().to_string(),
        text,
    })
}

/// Reads every `*.yaml`/`*.yml` file of `dir`, sorted by name (at most
/// [`limits::MAX_FILES_PER_DIR`]).
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
        .filter(|p| is_rule_file(p))
        .collect();
    if files.len() > limits::MAX_FILES_PER_DIR {
        return Err(err(format!(
            "{} rule files, more than the limit of {}",
            files.len(),
            limits::MAX_FILES_PER_DIR
        )));
    }
    files.sort();
    files.iter().map(|p| read_file(p)).collect()
}

/// Line (1-based) of the first line containing `needle`; 0 when none. Only called to report an
/// error, so loading stays linear in the size of the rules.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map_or(0, |i| i + 1)
}

/// Words that cannot name a macro: the language's keywords and every field (a macro would
/// silently shadow the field).
fn reserved(name: &str) -> bool {
    ["and", "or", "not", "in", "true", "false", "exists"].contains(&name)
        || super::fields::Field::parse(name).is_some()
}

fn lit(v: &serde_yaml_ng::Value) -> Option<Lit> {
    match v {
        serde_yaml_ng::Value::String(s) => Some(Lit::Str(s.clone())),
        serde_yaml_ng::Value::Number(n) => n.as_i64().map(Lit::Int),
        serde_yaml_ng::Value::Bool(b) => Some(Lit::Bool(*b)),
        _ => None,
    }
}

/// Kinds a condition is restricted to by a top-level `kind = …`/`kind in (…)` (the parser has
/// checked that every name is a known kind): what the load-time field check holds a condition
/// to. (Which rules run for an event's kind is decided by `fields::kind_truth`, which sees
/// `kind` tests anywhere in the condition.)
fn kinds_of(e: &Expr) -> Option<Vec<Kind>> {
    use super::{expr::Op, expr::Pattern, fields::Field};
    let one = |e: &Expr| match e {
        Expr::Pred {
            field: Field::Kind,
            op: Op::Eq | Op::In,
            pat: Pattern::Lits(l),
            ..
        } => Some(
            l.iter()
                .filter_map(|x| match x {
                    Lit::Str(s) => Kind::from_name(s),
                    _ => None,
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

/// Every field tested in `e` must be carried by at least one of `kinds` (a rule on `exec`
/// events that tests `dst_port` can never fire).
fn check_carried(e: &Expr, kinds: &[Kind]) -> Result<(), String> {
    match e {
        Expr::And(v) | Expr::Or(v) => v.iter().try_for_each(|x| check_carried(x, kinds)),
        Expr::Not(x) => check_carried(x, kinds),
        Expr::Pred { field, .. } => {
            if kinds.iter().any(|k| field.carried_by(*k)) {
                return Ok(());
            }
            let d = field.def();
            let on = match d.carried {
                super::fields::Carried::Only(ks) => {
                    ks.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
                }
                super::fields::Carried::Any => String::new(),
            };
            let these = kinds
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(", ");
            Err(format!(
                "field `{}` is never set on {these} events (only on {on}): the condition can never match",
                d.name
            ))
        }
    }
}

/// Longest sequence/threshold window, in seconds (a day): bounds correlation state.
pub const MAX_WINDOW_SECS: f64 = 86_400.0;
/// Largest threshold count (the window keeps one timestamp per match).
pub const MAX_THRESHOLD_COUNT: usize = 100_000;

/// Parses and compiles sources into a rule set.
pub fn compile(sources: &[Source]) -> Result<RuleSet, LoadError> {
    let mut parsed = vec![];
    let mut bytes = 0usize;
    for s in sources {
        bytes += s.text.len();
        if bytes > limits::MAX_SET_BYTES {
            return Err(LoadError {
                file: s.name.clone(),
                line: 0,
                reason: format!(
                    "rule sources total more than {} bytes",
                    limits::MAX_SET_BYTES
                ),
            });
        }
        let f: File = serde_yaml_ng::from_str(&s.text).map_err(|e| LoadError {
            file: s.name.clone(),
            line: e.location().map_or(0, |l| l.line()),
            reason: e.to_string(),
        })?;
        parsed.push((s, f));
    }
    let mut scope = Scope::default();
    let mut list_src: HashMap<String, String> = HashMap::new();
    for (s, f) in &parsed {
        let to_lits = |name: &String, vals: &Vec<serde_yaml_ng::Value>| {
            vals.iter()
                .map(lit)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| LoadError {
                    file: s.name.clone(),
                    line: line_of(&s.text, &format!("{name}:")),
                    reason: format!("list `{name}`: items must be strings, numbers or booleans"),
                })
        };
        for (name, vals) in &f.lists {
            let lits = to_lits(name, vals)?;
            if let Some(first) = list_src.get(name) {
                return Err(LoadError {
                    file: s.name.clone(),
                    line: line_of(&s.text, &format!("{name}:")),
                    reason: format!(
                        "list `{name}` is already defined in {first}: put the extra items under `append_lists:` to extend it"
                    ),
                });
            }
            list_src.insert(name.clone(), s.name.clone());
            scope.lists.insert(name.clone(), lits);
        }
        for (name, vals) in &f.append_lists {
            let lits = to_lits(name, vals)?;
            let Some(l) = scope.lists.get_mut(name) else {
                return Err(LoadError {
                    file: s.name.clone(),
                    line: line_of(&s.text, &format!("{name}:")),
                    reason: format!("append_lists: no list `{name}` is defined before this file"),
                });
            };
            l.extend(lits);
        }
    }
    let mut total_cost = 0usize;
    let mut spend = |cost: usize, file: &str, line: &dyn Fn() -> usize| {
        total_cost = total_cost.saturating_add(cost);
        if total_cost > limits::MAX_SET_COST {
            return Err(LoadError {
                file: file.to_string(),
                line: line(),
                reason: format!(
                    "the rule set is too large: more than {} cost units in all",
                    limits::MAX_SET_COST
                ),
            });
        }
        Ok(())
    };
    let mut macro_src: HashMap<String, String> = HashMap::new();
    for (s, f) in &parsed {
        for m in &f.macros {
            let line = || line_of(&s.text, &format!("name: {}", m.name));
            let err = |reason: String| LoadError {
                file: s.name.clone(),
                line: line(),
                reason,
            };
            if reserved(&m.name) {
                return Err(err(format!(
                    "macro `{}`: the name is a keyword or a field",
                    m.name
                )));
            }
            match (macro_src.get(&m.name), m.override_) {
                (Some(first), false) => {
                    return Err(err(format!(
                    "macro `{}` is already defined in {first}: set `override: true` to replace it",
                    m.name
                )))
                }
                (None, true) => {
                    return Err(err(format!(
                        "macro `{}`: `override: true` but no earlier macro has this name",
                        m.name
                    )))
                }
                _ => {}
            }
            let c = expr::compile(&m.condition, &scope)
                .map_err(|e| err(format!("macro `{}`: {e}", m.name)))?;
            spend(c.cost, &s.name, &line)?;
            if m.override_ {
                tracing::info!(macro_ = %m.name, file = %s.name, "macro overridden");
            }
            macro_src.insert(m.name.clone(), s.name.clone());
            scope.macros.insert(m.name.clone(), c);
        }
    }
    let mut rules: Vec<Rule> = vec![];
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (s, f) in &parsed {
        for d in &f.rules {
            let line = || line_of(&s.text, &format!("id: {}", d.id));
            let err = |reason: String| LoadError {
                file: s.name.clone(),
                line: line(),
                reason,
            };
            let replaces = match (seen.get(&d.id), d.override_) {
                (Some(_), false) => {
                    return Err(err(format!(
                        "duplicate rule id `{}` (set `override: true` to replace the earlier rule)",
                        d.id
                    )))
                }
                (None, true) => {
                    return Err(err(format!(
                        "rule `{}`: `override: true` but no earlier rule has this id",
                        d.id
                    )))
                }
                (Some(&i), true) => Some(i),
                (None, false) => None,
            };
            let cond = expr::compile(&d.condition, &scope)
                .map_err(|e| err(format!("rule `{}` condition: {e}", d.id)))?;
            spend(cond.cost, &s.name, &line)?;
            let kinds = kinds_of(&cond.expr);
            if let Some(k) = &kinds {
                check_carried(&cond.expr, k)
                    .map_err(|e| err(format!("rule `{}` condition: {e}", d.id)))?;
            }
            let mut exceptions = vec![];
            for x in &d.exceptions {
                let c = expr::compile(x, &scope)
                    .map_err(|e| err(format!("rule `{}` exception: {e}", d.id)))?;
                spend(c.cost, &s.name, &line)?;
                if let Some(k) = &kinds {
                    check_carried(&c.expr, k)
                        .map_err(|e| err(format!("rule `{}` exception: {e}", d.id)))?;
                }
                exceptions.push(c.expr);
            }
            let sequence = match &d.sequence {
                Some(sq) => {
                    let after = expr::compile(&sq.after, &scope)
                        .map_err(|e| err(format!("rule `{}` sequence.after: {e}", d.id)))?;
                    spend(after.cost, &s.name, &line)?;
                    if let Some(k) = kinds_of(&after.expr) {
                        check_carried(&after.expr, &k)
                            .map_err(|e| err(format!("rule `{}` sequence.after: {e}", d.id)))?;
                    }
                    if !(sq.within > 0.0 && sq.within <= MAX_WINDOW_SECS) {
                        return Err(err(format!(
                            "rule `{}`: sequence.within must be > 0 and at most {MAX_WINDOW_SECS} s",
                            d.id
                        )));
                    }
                    Some(Sequence {
                        after: after.expr,
                        within_ns: (sq.within * 1e9) as u64,
                        by: sq.by,
                    })
                }
                None => None,
            };
            if let Some(t) = &d.threshold {
                if t.count == 0
                    || t.count > MAX_THRESHOLD_COUNT
                    || !(t.within > 0.0 && t.within <= MAX_WINDOW_SECS)
                {
                    return Err(err(format!(
                        "rule `{}`: threshold needs 1 ≤ count ≤ {MAX_THRESHOLD_COUNT} and 0 < within ≤ {MAX_WINDOW_SECS} s",
                        d.id
                    )));
                }
            }
            let cond = cond.expr;
            let rule = Rule {
                id: d.id.clone(),
                description: d.description.clone(),
                severity: d.severity,
                tags: d.tags.clone(),
                cond,
                exceptions,
                sequence,
                threshold: d.threshold.clone(),
                weight: d.weight,
                enabled: d.enabled,
                def: d.clone(),
                source: s.name.clone(),
            };
            match replaces {
                Some(i) => {
                    tracing::info!(rule = %d.id, file = %s.name, replaces = %rules[i].source, "rule overridden");
                    rules[i] = rule;
                }
                None => {
                    seen.insert(d.id.clone(), rules.len());
                    rules.push(rule);
                }
            }
        }
    }
    Ok(RuleSet::new(rules))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(name: &str, text: &str) -> Source {
        Source {
            name: name.into(),
            text: text.into(),
        }
    }

    const SITE_MACRO: &str =
        "macros:\n  - name: spawned\n    condition: kind = \"exec\" and pid > 1\n";

    #[test]
    fn a_site_file_cannot_silently_shadow_builtins() {
        // Redefining a built-in macro would change every built-in rule that uses it.
        let e = compile(&[builtin(), src("site.yaml", SITE_MACRO)]).unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("site.yaml", 2), "{e}");
        assert!(
            e.reason
                .contains("already defined in <builtin>/default.yaml"),
            "{e}"
        );
        assert!(e.reason.contains("override: true"), "{e}");
        // Said explicitly, it is allowed.
        let ok = SITE_MACRO.replace("    condition:", "    override: true\n    condition:");
        assert!(compile(&[builtin(), src("site.yaml", &ok)]).is_ok());
        // A list: extending needs `append_lists`.
        let e = compile(&[builtin(), src("l.yaml", "lists:\n  shells: [python3]\n")]).unwrap_err();
        assert!(e.reason.contains("append_lists"), "{e}");
        let set = compile(&[
            builtin(),
            src("l.yaml", "append_lists:\n  shells: [mylauncher]\n"),
        ])
        .unwrap();
        assert_eq!(set.len(), compile(&[builtin()]).unwrap().len());
        let e = compile(&[src("l.yaml", "append_lists:\n  nosuch: [x]\n")]).unwrap_err();
        assert!(e.reason.contains("no list `nosuch`"), "{e}");
        // A macro may not shadow a field or a keyword.
        let e = compile(&[src(
            "f.yaml",
            "macros:\n  - name: dst_port\n    condition: kind = \"exec\"\n",
        )])
        .unwrap_err();
        assert!(e.reason.contains("keyword or a field"), "{e}");
        // A rule replaces a built-in one only with `override: true`.
        let r = "rules:\n  - id: tun-device-open\n    description: d\n    severity: low\n    condition: kind = \"exec\"\n";
        let e = compile(&[builtin(), src("r.yaml", r)]).unwrap_err();
        assert!(e.reason.contains("duplicate rule id"), "{e}");
        let set = compile(&[
            builtin(),
            src(
                "r.yaml",
                &r.replace("    severity:", "    override: true\n    severity:"),
            ),
        ])
        .unwrap();
        let t = set
            .rules
            .iter()
            .find(|r| r.id == "tun-device-open")
            .unwrap();
        assert_eq!((t.source.as_str(), t.severity), ("r.yaml", Severity::Low));
    }

    #[test]
    fn a_macro_bomb_is_refused_without_allocating_it() {
        let mut text = String::from("macros:\n  - name: m0\n    condition: kind = \"exec\"\n");
        for i in 1..=24 {
            text += &format!("  - name: m{i}\n    condition: m{} or m{}\n", i - 1, i - 1);
        }
        text += "rules:\n  - id: bomb\n    description: d\n    severity: low\n    condition: m24\n";
        assert!(text.len() < 1200);
        let e = compile(&[src("bomb.yaml", &text)]).unwrap_err();
        assert!(e.reason.contains("too large"), "{e}");
        assert!(e.line > 0, "{e}");
    }

    #[test]
    fn the_whole_set_is_bounded() {
        // Many rules each under the per-condition limit, together over the set's limit: a
        // 10k-item list through a macro costs 10k units per use.
        let items: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
        let mut text = format!(
            "lists:\n  big: [{}]\nmacros:\n  - name: m\n    condition: dst_port in (big)\nrules:\n",
            items.join(", ")
        );
        for i in 0..(limits::MAX_SET_COST / 10_000 + 2) {
            text += &format!("  - {{id: r{i}, description: d, severity: low, condition: m}}\n");
        }
        let e = compile(&[src("big.yaml", &text)]).unwrap_err();
        assert!(e.reason.contains("too large"), "{e}");
    }

    #[test]
    fn many_rules_load_in_linear_time() {
        // 20k rules: the line of a rule is only looked up for an error (this took > 30 s when
        // every rule's line was searched from the top of its file).
        let mut text = String::from("rules:\n");
        for i in 0..20_000 {
            text += &format!(
                "  - id: r{i}\n    description: d\n    severity: low\n    condition: kind = \"exec\" and comm = \"c{i}\"\n"
            );
        }
        let t = std::time::Instant::now();
        let set = compile(&[src("many.yaml", &text)]).unwrap();
        assert_eq!(set.len(), 20_000);
        eprintln!("20k rules compiled in {:?}", t.elapsed());
    }

    #[test]
    fn only_bounded_regular_files_are_read() {
        let d = std::env::temp_dir().join(format!("rules-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        // A FIFO: opening it for reading would block until a writer comes.
        let fifo = d.join("a.yaml");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_dir(&d).err().expect("a FIFO is refused");
        assert!(e.reason.contains("FIFO"), "{e}");
        std::fs::remove_file(&fifo).unwrap();
        // A link to a device that never ends.
        std::os::unix::fs::symlink("/dev/zero", d.join("b.yaml")).unwrap();
        let e = read_dir(&d).err().expect("a device is refused");
        assert!(e.reason.contains("device"), "{e}");
        std::fs::remove_file(d.join("b.yaml")).unwrap();
        // Too big.
        std::fs::write(
            d.join("c.yaml"),
            vec![b'#'; limits::MAX_FILE_BYTES as usize + 1],
        )
        .unwrap();
        let e = read_dir(&d).err().expect("a huge file is refused");
        assert!(e.reason.contains("limit"), "{e}");
        std::fs::remove_file(d.join("c.yaml")).unwrap();
        // Not UTF-8: the line is said.
        std::fs::write(d.join("d.yaml"), b"rules: []\n# \xff\n").unwrap();
        let e = read_dir(&d).err().expect("bad UTF-8 is refused");
        assert_eq!(e.line, 2, "{e}");
        std::fs::remove_file(d.join("d.yaml")).unwrap();
        // A link to a regular file is followed (ConfigMap volumes are links); hidden files
        // (the volume's `..data`) are not rule files.
        std::fs::write(d.join(".hidden.yaml"), "not: [valid").unwrap();
        std::fs::write(d.join("real"), "rules: []\n").unwrap();
        std::os::unix::fs::symlink(d.join("real"), d.join("e.yaml")).unwrap();
        assert_eq!(read_dir(&d).unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn rules_are_type_checked_when_loaded() {
        for (cond, needle) in [
            ("kind = \"exce\"", "unknown event kind \"exce\""),
            (
                "kind = \"connect\" and dst_port startswith \"x\"",
                "cannot apply to `dst_port`",
            ),
            (
                "kind = \"exec\" and dst_port = 22",
                "field `dst_port` is never set on exec events",
            ),
            (
                "kind in (\"exec\", \"fork\") and not sm_util > 90",
                "field `sm_util` is never set on exec, fork events",
            ),
            (
                "kind = \"connect\" and nosuch = 1",
                "unknown field or macro `nosuch`",
            ),
        ] {
            let text = format!("rules:\n  - id: t\n    description: d\n    severity: low\n    condition: '{cond}'\n");
            let e = compile(&[src("t.yaml", &text)]).unwrap_err();
            assert_eq!((e.file.as_str(), e.line), ("t.yaml", 2), "{e}");
            assert!(e.reason.contains(needle), "{cond} -> {e}");
        }
        // Exceptions are checked against the rule's kinds too.
        let text = "rules:\n  - id: t\n    description: d\n    severity: low\n    condition: kind = \"exec\"\n    exceptions: ['duration_s > 3']\n";
        let e = compile(&[src("t.yaml", text)]).unwrap_err();
        assert!(e.reason.contains("exception: field `duration_s`"), "{e}");
        // A field every event carries is fine on any kind.
        let ok = "rules:\n  - id: t\n    description: d\n    severity: low\n    condition: kind in (\"exec\", \"connect\") and parent.name = \"bash\" and dst_port = 22\n";
        assert!(compile(&[src("t.yaml", ok)]).is_ok());
    }

    #[test]
    fn windows_are_bounded() {
        for (extra, needle) in [
            (
                "    sequence: {after: 'kind = \"exec\"', within: 1e30}\n",
                "sequence.within",
            ),
            (
                "    sequence: {after: 'kind = \"exec\"', within: .nan}\n",
                "sequence.within",
            ),
            ("    threshold: {count: 3, within: -1}\n", "threshold"),
            (
                "    threshold: {count: 100000000, within: 1}\n",
                "threshold",
            ),
        ] {
            let text = format!("rules:\n  - id: w\n    description: d\n    severity: low\n    condition: kind = \"exec\"\n{extra}");
            let e = compile(&[src("w.yaml", &text)]).unwrap_err();
            assert!(e.reason.contains(needle), "{extra} -> {e}");
        }
    }

    #[test]
    fn deeply_nested_yaml_is_an_error_not_a_crash() {
        let text = format!("rules: {}{}\n", "[".repeat(5_000), "]".repeat(5_000));
        assert!(compile(&[src("deep.yaml", &text)]).is_err());
        let text = format!(
            "rules:\n  - id: x\n    description: d\n    severity: low\n    condition: kind = \"exec\"\n    examples:\n      match: [{}{}]\n",
            "{a: ".repeat(5_000),
            "}".repeat(5_000)
        );
        assert!(compile(&[src("deep2.yaml", &text)]).is_err());
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// Rule files assembled from valid and broken pieces.
        fn file() -> impl Strategy<Value = String> {
            let piece = prop::sample::select(vec![
                "lists:\n  l1: [a, 1, true]\n",
                "lists:\n  l1: [[nested]]\n",
                "append_lists:\n  l1: [b]\n",
                "macros:\n  - name: m1\n    condition: kind = \"exec\"\n",
                "macros:\n  - name: m1\n    override: true\n    condition: m1 or m1\n",
                "macros:\n  - name: kind\n    condition: kind = \"exec\"\n",
                "rules:\n  - {id: r1, description: d, severity: low, condition: 'kind = \"exec\"'}\n",
                "rules:\n  - {id: r1, override: true, description: d, severity: high, condition: m1}\n",
                "rules:\n  - {id: r2, description: d, severity: loud, condition: x}\n",
                "rules:\n  - {id: r3, description: d, severity: low, condition: 'kind = \"exec\"', sequence: {after: 'kind = \"fork\"', within: 5}}\n",
                "rules:\n  - {id: r4, description: d, severity: low, condition: 'kind = \"exec\"', threshold: {count: 0, within: 1}}\n",
                "rules: [\n",
                "&a [*a]\n",
                "\t- :\n",
                "",
            ]);
            proptest::collection::vec(piece, 0..4).prop_map(|v| v.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            /// Any assembly of pieces over the built-in set: a rule set or an error naming a file;
            /// never a panic.
            #[test]
            fn any_rule_file_compiles_or_errors_with_a_location(a in file(), b in file()) {
                let srcs = [builtin(), Source { name: "a.yaml".into(), text: a }, Source { name: "b.yaml".into(), text: b }];
                if let Err(e) = compile(&srcs) {
                    prop_assert!(!e.file.is_empty());
                }
            }
        }
    }
}
