//! The rule condition language: parsing into a compiled tree.
//!
//! ```text
//! expr  := and ("or" and)*
//! and   := unary ("and" unary)*
//! unary := "not" unary | "(" expr ")" | MACRO | FIELD OP VALUE | FIELD "exists"
//! OP    := = == != in contains icontains startswith endswith glob regex > >= < <= cidr
//! VALUE := "string" | 'string' | number | true | false | (v, v, …) | (LIST) | @LIST
//! ```
//! A list-valued field (argv, ancestor.exe, ssh.flags, …) matches when any element does.

use std::{collections::HashMap, fmt};

use thiserror::Error;

use super::fields::Field;

#[derive(Debug, Error, PartialEq)]
#[error("{message} (at character {pos}: {near:?})")]
pub struct ParseError {
    pub message: String,
    pub pos: usize,
    pub near: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl fmt::Display for Lit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lit::Str(s) => write!(f, "{s:?}"),
            Lit::Int(i) => write!(f, "{i}"),
            Lit::Bool(b) => write!(f, "{b}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    In,
    Contains,
    IContains,
    StartsWith,
    EndsWith,
    Glob,
    Regex,
    Gt,
    Ge,
    Lt,
    Le,
    Cidr,
    Exists,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::In => "in",
            Op::Contains => "contains",
            Op::IContains => "icontains",
            Op::StartsWith => "startswith",
            Op::EndsWith => "endswith",
            Op::Glob => "glob",
            Op::Regex => "regex",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Cidr => "cidr",
            Op::Exists => "exists",
        }
    }
}

/// A compiled comparison value.
#[derive(Debug, Clone)]
pub enum Pattern {
    Lits(Vec<Lit>),
    Regex(regex::Regex),
    Globs(Vec<glob::Pattern>),
    Cidrs(Vec<(std::net::IpAddr, u8)>),
    /// `=`/`!=`/`in` on an address field: the values parsed once, at load.
    Ips(Vec<std::net::IpAddr>),
}

#[derive(Debug, Clone)]
pub enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Pred {
        field: Field,
        op: Op,
        pat: Pattern,
        /// The predicate's slot in the rule set's per-event memo (equal predicates share one;
        /// assigned by `RuleSet::new`, [`NO_SLOT`] until then).
        slot: u32,
    },
}

/// A predicate not yet given a memo slot.
pub const NO_SLOT: u32 = u32::MAX;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    LParen,
    RParen,
    Comma,
    At,
    Sym(String),
}

fn lex(s: &str) -> Result<Vec<(usize, Tok)>, ParseError> {
    let b = s.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    let err = |pos: usize, m: &str| ParseError {
        message: m.to_string(),
        pos,
        near: s[pos..].chars().take(20).collect(),
    };
    while i < b.len() {
        let c = b[i] as char;
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        match c {
            '(' => (out.push((i, Tok::LParen)), i += 1).1,
            ')' => (out.push((i, Tok::RParen)), i += 1).1,
            ',' => (out.push((i, Tok::Comma)), i += 1).1,
            '@' => (out.push((i, Tok::At)), i += 1).1,
            '"' | '\'' => {
                let q = b[i];
                i += 1;
                let mut v = Vec::new();
                loop {
                    match b.get(i) {
                        None => return Err(err(start, "unterminated string")),
                        Some(&x) if x == q => break,
                        Some(b'\\') if i + 1 < b.len() => {
                            v.push(b[i + 1]);
                            i += 2;
                        }
                        Some(&x) => {
                            v.push(x);
                            i += 1;
                        }
                    }
                }
                i += 1;
                out.push((start, Tok::Str(String::from_utf8_lossy(&v).into_owned())));
            }
            '=' | '!' | '<' | '>' => {
                let two = s.get(i..i + 2).unwrap_or("");
                let sym = if ["==", "!=", ">=", "<="].contains(&two) {
                    two
                } else {
                    &s[i..i + 1]
                };
                if sym == "!" {
                    return Err(err(i, "unexpected '!'"));
                }
                i += sym.len();
                out.push((start, Tok::Sym(sym.to_string())));
            }
            c if c.is_ascii_digit()
                || (c == '-' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                let n = s[start..i].parse().map_err(|_| err(start, "bad number"))?;
                out.push((start, Tok::Int(n)));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'_'
                        || b[i] == b'.'
                        || b[i] == b'-')
                {
                    i += 1;
                }
                out.push((start, Tok::Ident(s[start..i].to_string())));
            }
            _ => return Err(err(i, "unexpected character")),
        }
    }
    Ok(out)
}

/// Limits that make every condition safe to load and to evaluate on the event path, whatever a
/// rule file holds (README "Rules": limits).
pub mod limits {
    /// Longest condition text, in bytes.
    pub const MAX_CONDITION_BYTES: usize = 16 * 1024;
    /// Deepest nesting of `(`, `not`, `and`/`or` groups, counted after macros are expanded
    /// (evaluation and drop are recursive: this bounds their stack use).
    pub const MAX_DEPTH: usize = 48;
    /// Largest condition after macro expansion, in cost units: one per operator node and per
    /// value, plus one per 64 bytes of string values. Bounds memory and per-event work.
    pub const MAX_COST: usize = 20_000;
    /// Largest compiled regex program and lazy-DFA cache (bytes each), per predicate.
    pub const MAX_REGEX_BYTES: usize = 128 << 10;
    /// What a regex predicate costs (cost units, ~64 bytes each): its compiled program and
    /// cache may take up to 2 × [`MAX_REGEX_BYTES`], however short its text.
    pub const REGEX_COST: usize = 4_000;
}

/// A compiled condition with what it costs (see [`limits`]).
#[derive(Debug, Clone)]
pub struct Compiled {
    pub expr: Expr,
    pub cost: usize,
    pub depth: usize,
}

/// Named lists and macros a condition may refer to.
#[derive(Debug, Default, Clone)]
pub struct Scope {
    pub lists: HashMap<String, Vec<Lit>>,
    pub macros: HashMap<String, Compiled>,
}

struct Parser<'a> {
    src: &'a str,
    toks: Vec<(usize, Tok)>,
    i: usize,
    scope: &'a Scope,
    /// Current nesting depth (with the depth of expanded macros).
    depth: usize,
    /// Deepest nesting reached.
    max_depth: usize,
    /// Cost so far, macros counted expanded.
    cost: usize,
}

fn lits_cost(l: &[Lit]) -> usize {
    l.iter()
        .map(|x| match x {
            Lit::Str(s) => 1 + s.len() / 64,
            _ => 1,
        })
        .sum()
}

impl Parser<'_> {
    fn err(&self, m: impl Into<String>) -> ParseError {
        let pos = self.toks.get(self.i).map_or(self.src.len(), |t| t.0);
        ParseError {
            message: m.into(),
            pos,
            near: self.src[pos..].chars().take(24).collect(),
        }
    }
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i).map(|t| &t.1)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.i).map(|t| t.1.clone());
        self.i += 1;
        t
    }
    fn kw(&self, k: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(s)) if s == k)
    }
    /// Adds to the cost; an error once the condition is too large (checked before a macro is
    /// copied, so a macro bomb never allocates).
    fn spend(&mut self, n: usize) -> Result<(), ParseError> {
        self.cost = self.cost.saturating_add(n);
        if self.cost > limits::MAX_COST {
            return Err(self.err(format!(
                "condition too large: more than {} units after macro expansion",
                limits::MAX_COST
            )));
        }
        Ok(())
    }
    /// Enters one nesting level of `extra` depth; an error past the limit.
    fn enter(&mut self, extra: usize) -> Result<(), ParseError> {
        let d = self.depth + extra;
        if d > limits::MAX_DEPTH {
            return Err(self.err(format!(
                "condition nested too deeply: more than {} levels (macros counted expanded)",
                limits::MAX_DEPTH
            )));
        }
        self.max_depth = self.max_depth.max(d);
        Ok(())
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut v = vec![self.and()?];
        while self.kw("or") {
            self.i += 1;
            v.push(self.and()?);
        }
        Ok(if v.len() == 1 {
            v.pop().unwrap()
        } else {
            self.spend(1)?;
            Expr::Or(v)
        })
    }
    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut v = vec![self.unary()?];
        while self.kw("and") {
            self.i += 1;
            v.push(self.unary()?);
        }
        Ok(if v.len() == 1 {
            v.pop().unwrap()
        } else {
            self.spend(1)?;
            Expr::And(v)
        })
    }
    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.kw("not") {
            self.enter(1)?;
            self.spend(1)?;
            self.i += 1;
            self.depth += 1;
            let e = self.unary();
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(e?)));
        }
        match self.next() {
            Some(Tok::LParen) => {
                self.i -= 1;
                self.enter(1)?;
                self.i += 1;
                self.depth += 1;
                let e = self.or();
                self.depth -= 1;
                let e = e?;
                match self.next() {
                    Some(Tok::RParen) => Ok(e),
                    _ => {
                        self.i -= 1;
                        Err(self.err("expected ')'"))
                    }
                }
            }
            Some(Tok::Ident(name)) => {
                if let Some(m) = self.scope.macros.get(&name) {
                    self.i -= 1;
                    self.enter(m.depth)?;
                    self.spend(m.cost)?;
                    self.i += 1;
                    return Ok(m.expr.clone());
                }
                let field = Field::parse(&name).ok_or_else(|| {
                    self.i -= 1;
                    self.err(format!("unknown field or macro `{name}`"))
                })?;
                self.predicate(field)
            }
            None => Err(self.err("expected a condition")),
            _ => {
                self.i -= 1;
                Err(self.err("expected a field, macro, 'not' or '('"))
            }
        }
    }
    fn predicate(&mut self, field: Field) -> Result<Expr, ParseError> {
        let op = match self.next() {
            Some(Tok::Sym(s)) => match s.as_str() {
                "=" | "==" => Op::Eq,
                "!=" => Op::Ne,
                ">" => Op::Gt,
                ">=" => Op::Ge,
                "<" => Op::Lt,
                "<=" => Op::Le,
                _ => unreachable!(),
            },
            Some(Tok::Ident(s)) => match s.as_str() {
                "in" => Op::In,
                "contains" => Op::Contains,
                "icontains" => Op::IContains,
                "startswith" => Op::StartsWith,
                "endswith" => Op::EndsWith,
                "glob" => Op::Glob,
                "regex" => Op::Regex,
                "cidr" => Op::Cidr,
                "exists" => {
                    self.spend(1)?;
                    return Ok(Expr::Pred {
                        field,
                        op: Op::Exists,
                        pat: Pattern::Lits(vec![]),
                        slot: NO_SLOT,
                    });
                }
                _ => {
                    self.i -= 1;
                    return Err(self.err(format!("unknown operator `{s}`")));
                }
            },
            _ => {
                self.i -= 1;
                return Err(self.err("expected an operator"));
            }
        };
        let lits = self.values()?;
        self.spend(1 + lits_cost(&lits))?;
        self.check_types(field, op, &lits)?;
        if matches!(op, Op::Gt | Op::Ge | Op::Lt | Op::Le)
            && !(lits.len() == 1 && matches!(lits[0], Lit::Int(_)))
        {
            return Err(self.err("comparison needs one number"));
        }
        let strs = || -> Result<Vec<String>, ParseError> {
            lits.iter()
                .map(|l| match l {
                    Lit::Str(s) => Ok(s.clone()),
                    other => Ok(other.to_string()),
                })
                .collect()
        };
        let pat = match op {
            Op::Regex => {
                let s = strs()?;
                let joined = s
                    .iter()
                    .map(|r| format!("(?:{r})"))
                    .collect::<Vec<_>>()
                    .join("|");
                self.spend(limits::REGEX_COST)?;
                Pattern::Regex(
                    regex::RegexBuilder::new(&joined)
                        .size_limit(limits::MAX_REGEX_BYTES)
                        .dfa_size_limit(limits::MAX_REGEX_BYTES)
                        .build()
                        .map_err(|e| self.err(format!("bad regex: {e}")))?,
                )
            }
            Op::Glob => Pattern::Globs(
                strs()?
                    .iter()
                    .map(|g| glob::Pattern::new(g).map_err(|e| self.err(format!("bad glob: {e}"))))
                    .collect::<Result<_, _>>()?,
            ),
            Op::Cidr => Pattern::Cidrs(
                strs()?
                    .iter()
                    .map(|c| parse_cidr(c).ok_or_else(|| self.err(format!("bad CIDR {c:?}"))))
                    .collect::<Result<_, _>>()?,
            ),
            Op::Eq | Op::Ne | Op::In if field.def().ty == super::fields::Type::Ip => Pattern::Ips(
                strs()?
                    .iter()
                    .map(|a| {
                        a.parse()
                            .map_err(|_| self.err(format!("bad IP address {a:?}")))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Op::IContains => Pattern::Lits(
                strs()?
                    .into_iter()
                    .map(|s| Lit::Str(s.to_lowercase()))
                    .collect(),
            ),
            _ => Pattern::Lits(lits),
        };
        Ok(Expr::Pred {
            field,
            op,
            pat,
            slot: NO_SLOT,
        })
    }
    /// The operator must apply to the field's type and every value must be of that type (an
    /// unknown event kind, `dst_port startswith "x"`, `cidr` on a name: load errors).
    fn check_types(&self, field: Field, op: Op, lits: &[Lit]) -> Result<(), ParseError> {
        use super::fields::Type;
        let d = field.def();
        let ok_op = match d.ty {
            Type::Int => matches!(
                op,
                Op::Eq | Op::Ne | Op::In | Op::Gt | Op::Ge | Op::Lt | Op::Le
            ),
            Type::Bool | Type::Kind => matches!(op, Op::Eq | Op::Ne | Op::In),
            Type::Str | Type::StrList => !matches!(
                op,
                Op::Gt | Op::Ge | Op::Lt | Op::Le | Op::Cidr | Op::Exists
            ),
            Type::Ip => !matches!(op, Op::Gt | Op::Ge | Op::Lt | Op::Le | Op::Exists),
        };
        if !ok_op {
            return Err(self.err(format!(
                "`{}` cannot apply to `{}` (a {})",
                op.name(),
                d.name,
                d.ty.name()
            )));
        }
        for l in lits {
            let bad =
                |what: &str| self.err(format!("`{}` is a {}: {l} is {what}", d.name, d.ty.name()));
            match (d.ty, l) {
                (Type::Int, Lit::Int(_)) | (Type::Bool, Lit::Bool(_)) => {}
                (Type::Int, _) => return Err(bad("not a number")),
                (Type::Bool, _) => return Err(bad("not true or false")),
                (Type::Kind, Lit::Str(k)) => {
                    if crate::event::Kind::from_name(k).is_none() {
                        let known: Vec<&str> =
                            crate::event::Kind::ALL.iter().map(|k| k.name()).collect();
                        return Err(self.err(format!(
                            "unknown event kind {k:?} (kinds: {})",
                            known.join(", ")
                        )));
                    }
                }
                (Type::Kind, _) => return Err(bad("not a kind name")),
                (Type::Str | Type::StrList | Type::Ip, Lit::Str(v)) => {
                    if d.ty == Type::Ip
                        && matches!(op, Op::Eq | Op::Ne | Op::In)
                        && v.parse::<std::net::IpAddr>().is_err()
                    {
                        return Err(bad("not an IP address (use cidr for networks)"));
                    }
                }
                (Type::Str | Type::StrList | Type::Ip, _) if op == Op::Cidr => {
                    return Err(bad("not a CIDR string"))
                }
                (Type::Str | Type::StrList | Type::Ip, _) => {
                    return Err(bad("not a string (quote it)"))
                }
            }
        }
        Ok(())
    }

    fn values(&mut self) -> Result<Vec<Lit>, ParseError> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(vec![Lit::Str(s)]),
            Some(Tok::Int(n)) => Ok(vec![Lit::Int(n)]),
            Some(Tok::Ident(s)) if s == "true" || s == "false" => Ok(vec![Lit::Bool(s == "true")]),
            Some(Tok::At) => match self.next() {
                Some(Tok::Ident(name)) => self.list(&name),
                _ => Err(self.err("expected a list name after '@'")),
            },
            Some(Tok::LParen) => {
                let mut v = vec![];
                loop {
                    match self.next() {
                        Some(Tok::Str(s)) => v.push(Lit::Str(s)),
                        Some(Tok::Int(n)) => v.push(Lit::Int(n)),
                        Some(Tok::Ident(name)) => v.extend(self.list(&name)?),
                        _ => {
                            self.i -= 1;
                            return Err(self.err("expected a value or list name"));
                        }
                    }
                    match self.next() {
                        Some(Tok::Comma) => continue,
                        Some(Tok::RParen) => break,
                        _ => {
                            self.i -= 1;
                            return Err(self.err("expected ',' or ')'"));
                        }
                    }
                }
                Ok(v)
            }
            _ => {
                self.i -= 1;
                Err(self.err("expected a value"))
            }
        }
    }
    fn list(&mut self, name: &str) -> Result<Vec<Lit>, ParseError> {
        self.scope.lists.get(name).cloned().ok_or_else(|| {
            self.i -= 1;
            self.err(format!("unknown list `{name}`"))
        })
    }
}

pub fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (ip, len) = s.split_once('/').unwrap_or((s, ""));
    let ip: std::net::IpAddr = ip.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = if len.is_empty() {
        max
    } else {
        len.parse().ok()?
    };
    (len <= max).then_some((ip, len))
}

/// Parses a condition against the lists and macros in `scope`.
#[cfg(test)]
pub fn parse(src: &str, scope: &Scope) -> Result<Expr, ParseError> {
    compile(src, scope).map(|c| c.expr)
}

/// Parses a condition and reports its cost and depth, within [`limits`].
pub fn compile(src: &str, scope: &Scope) -> Result<Compiled, ParseError> {
    if src.len() > limits::MAX_CONDITION_BYTES {
        return Err(ParseError {
            message: format!(
                "condition is {} bytes long, more than the limit of {}",
                src.len(),
                limits::MAX_CONDITION_BYTES
            ),
            pos: 0,
            near: src.chars().take(20).collect(),
        });
    }
    let toks = lex(src)?;
    let mut p = Parser {
        src,
        toks,
        i: 0,
        scope,
        depth: 1,
        max_depth: 1,
        cost: 0,
    };
    let e = p.or()?;
    if p.i < p.toks.len() {
        return Err(p.err("unexpected text after the condition"));
    }
    Ok(Compiled {
        expr: e,
        cost: p.cost,
        depth: p.max_depth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_precedence_lists_and_macros() {
        let mut sc = Scope::default();
        sc.lists.insert(
            "ssh".into(),
            vec![Lit::Str("ssh".into()), Lit::Str("dbclient".into())],
        );
        let m = compile("proc.name in (ssh)", &sc).unwrap();
        sc.macros.insert("ssh_client".into(), m);
        let e = parse(
            r#"kind = "exec" and ssh_client or not (dst_port in (22, 2222))"#,
            &sc,
        )
        .unwrap();
        let Expr::Or(v) = e else {
            panic!("or at top: {e:?}")
        };
        assert!(matches!(v[0], Expr::And(_)));
        assert!(matches!(v[1], Expr::Not(_)));
        let e = parse("argv contains @ssh", &sc).unwrap();
        let Expr::Pred {
            pat: Pattern::Lits(l),
            ..
        } = e
        else {
            panic!()
        };
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn nesting_and_size_are_bounded() {
        let sc = Scope::default();
        let ok = format!("{}kind = \"exec\"{}", "(".repeat(40), ")".repeat(40));
        assert!(compile(&ok, &sc).is_ok());
        for deep in [
            format!("{}kind = \"exec\"{}", "(".repeat(5000), ")".repeat(5000)),
            format!("{}kind = \"exec\"", "not ".repeat(2000)),
        ] {
            let e = compile(&deep, &sc).unwrap_err();
            assert!(e.message.contains("nested too deeply"), "{e}");
        }
        let long = vec!["kind = \"exec\""; 2000].join(" or ");
        let e = compile(&long, &sc).unwrap_err();
        assert!(e.message.contains("bytes long"), "{e}");
        // A macro bomb: each macro uses the previous one twice. The cost is checked before a
        // macro is copied, so this fails fast instead of allocating 2^24 nodes.
        let mut sc = Scope::default();
        let first = compile("kind = \"exec\"", &sc).unwrap();
        sc.macros.insert("m0".into(), first);
        let mut err = None;
        for i in 1..25 {
            match compile(&format!("m{} or m{}", i - 1, i - 1), &sc) {
                Ok(c) => {
                    assert!(c.cost <= limits::MAX_COST);
                    sc.macros.insert(format!("m{i}"), c);
                }
                Err(e) => {
                    err = Some((i, e));
                    break;
                }
            }
        }
        let (i, e) = err.expect("the bomb is refused");
        assert!(i < 20, "refused at level {i}");
        assert!(e.message.contains("too large"), "{e}");
        // Depth through macros counts too.
        let mut sc = Scope::default();
        sc.macros.insert(
            "d".into(),
            compile(
                &format!("{}kind = \"exec\"{}", "(".repeat(40), ")".repeat(40)),
                &sc,
            )
            .unwrap(),
        );
        let e = compile(&format!("{}d{}", "(".repeat(20), ")".repeat(20)), &sc).unwrap_err();
        assert!(e.message.contains("nested too deeply"), "{e}");
    }

    #[test]
    fn errors_say_where() {
        let sc = Scope::default();
        for (src, needle) in [
            ("kind = ", "expected a value"),
            ("kind == \"exec", "unterminated"),
            ("nosuchfield = 1", "unknown field"),
            ("kind frob 1", "unknown operator"),
            ("kind = \"exec\" and", "expected a condition"),
            ("(kind = \"exec\"", "expected ')'"),
            (
                "dst_port > \"x\"",
                "`dst_port` is a number: \"x\" is not a number",
            ),
            ("dst_port > (1, 2)", "one number"),
            ("kind = \"exce\"", "unknown event kind \"exce\""),
            (
                "kind in (\"exec\", \"conect\")",
                "unknown event kind \"conect\"",
            ),
            (
                "dst_port startswith \"x\"",
                "`startswith` cannot apply to `dst_port` (a number)",
            ),
            ("dst_port = \"22\"", "`dst_port` is a number"),
            ("comm cidr \"10.0.0.0/8\"", "`cidr` cannot apply to `comm`"),
            ("dst_ip = \"example.com\"", "not an IP address"),
            ("comm = 3", "not a string"),
            ("dst.external = \"yes\"", "not true or false"),
            ("argv regex \"(\"", "bad regex"),
            ("argv in (nolist)", "unknown list"),
            ("dst_ip cidr \"10.0.0.0/99\"", "bad CIDR"),
            ("kind = \"exec\" )", "unexpected text"),
            ("kind ! 3", "unexpected '!'"),
        ] {
            let e = parse(src, &sc).unwrap_err();
            assert!(e.to_string().contains(needle), "{src:?} -> {e}");
        }
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// Conditions built from the language's own tokens (and some junk).
        fn condition() -> impl Strategy<Value = String> {
            let tok = prop::sample::select(vec![
                "(",
                ")",
                "not",
                "and",
                "or",
                "kind",
                "=",
                "==",
                "!=",
                "in",
                "contains",
                "icontains",
                "startswith",
                "endswith",
                "glob",
                "regex",
                "cidr",
                ">",
                ">=",
                "<",
                "<=",
                "exists",
                "\"exec\"",
                "'x'",
                "\"[\"",
                "\"10.0.0.0/8\"",
                "\"(\"",
                "22",
                "-1",
                "99999999999999999999",
                "@l",
                "l",
                ",",
                "dst_port",
                "argv",
                "proc.name",
                "dst_ip",
                "ancestor.exe",
                "m",
                "true",
                "!",
                "\"\\\"",
                "\u{e9}",
                "'",
            ]);
            proptest::collection::vec(tok, 0..40).prop_map(|v| v.join(" "))
        }

        fn scope() -> Scope {
            let mut sc = Scope::default();
            sc.lists
                .insert("l".into(), vec![Lit::Str("a".into()), Lit::Int(3)]);
            let m = compile("kind = \"exec\" or dst_port in (22, 2222)", &sc).unwrap();
            sc.macros.insert("m".into(), m);
            sc
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]

            /// Any token soup: a compiled condition within the limits, or an error with a
            /// position inside the text; never a panic.
            #[test]
            fn any_condition_compiles_within_limits_or_errors(src in condition()) {
                match compile(&src, &scope()) {
                    Ok(c) => {
                        prop_assert!(c.cost <= limits::MAX_COST);
                        prop_assert!(c.depth <= limits::MAX_DEPTH);
                    }
                    Err(e) => prop_assert!(e.pos <= src.len(), "{e:?}"),
                }
            }

            /// Arbitrary characters too.
            #[test]
            fn any_text_never_panics(src in "\\PC{0,120}") {
                let _ = compile(&src, &scope());
            }
        }
    }
}
