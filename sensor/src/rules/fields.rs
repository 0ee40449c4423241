//! Fields a rule can test, resolved straight from the typed event and its context (no JSON on
//! the hot path), and the evaluation of compiled conditions.

use std::{borrow::Cow, net::IpAddr};

use super::expr::{Expr, Lit, Op, Pattern};
use crate::{
    context::{container::Container, process::ProcTable},
    event::{Ancestor, Body, Event},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Kind,
    Pid,
    Ppid,
    Uid,
    Comm,
    Exe,
    ExeName,
    CgroupId,
    Filename,
    Argv,
    Argc,
    Cmdline,
    ArgsTruncated,
    DstIp,
    DstPort,
    LocalIp,
    LocalPort,
    Family,
    SockType,
    Protocol,
    Result,
    Via,
    DstLoopback,
    DstPrivate,
    DstExternal,
    ChildPid,
    ExitStatus,
    Device,
    Op,
    Class,
    Path,
    Trigger,
    Classes,
    SmUtil,
    MemUtil,
    PcieRxKbps,
    PcieTxKbps,
    ParentExe,
    ParentName,
    ParentCmdline,
    AncestorExe,
    AncestorName,
    AncestorCmdline,
    /// Ancestor names joined with '<', parent first: "bash<python3<containerd-shim".
    LineageNames,
    ProcConnections,
    ProcExternalConnections,
    ProcGpuSession,
    ProcEpisode,
    ContainerId,
    PodUid,
    SshFlags,
    SshOptions,
    Payload,
    DurationS,
    ProcOldestExternalConnectionS,
}

impl Field {
    pub fn parse(s: &str) -> Option<Field> {
        use Field::*;
        Some(match s {
            "kind" => Kind,
            "pid" => Pid,
            "ppid" => Ppid,
            "uid" => Uid,
            "comm" => Comm,
            "exe" | "proc.exe" => Exe,
            "exe.name" | "proc.name" => ExeName,
            "cgroup_id" => CgroupId,
            "filename" => Filename,
            "argv" | "proc.argv" => Argv,
            "argc" => Argc,
            "cmdline" | "proc.cmdline" => Cmdline,
            "args_truncated" => ArgsTruncated,
            "dst_ip" => DstIp,
            "dst_port" => DstPort,
            "local_ip" => LocalIp,
            "local_port" => LocalPort,
            "family" => Family,
            "sock_type" => SockType,
            "protocol" => Protocol,
            "result" => Result,
            "via" => Via,
            "dst.loopback" => DstLoopback,
            "dst.private" => DstPrivate,
            "dst.external" => DstExternal,
            "child_pid" => ChildPid,
            "exit_status" => ExitStatus,
            "device" => Device,
            "op" => Op,
            "class" => Class,
            "path" => Path,
            "trigger" => Trigger,
            "classes" => Classes,
            "sm_util" => SmUtil,
            "mem_util" => MemUtil,
            "pcie_rx_kbps" => PcieRxKbps,
            "pcie_tx_kbps" => PcieTxKbps,
            "parent.exe" => ParentExe,
            "parent.name" => ParentName,
            "parent.cmdline" => ParentCmdline,
            "ancestor.exe" => AncestorExe,
            "ancestor.name" => AncestorName,
            "ancestor.cmdline" => AncestorCmdline,
            "lineage.names" => LineageNames,
            "proc.connections" => ProcConnections,
            "proc.external_connections" => ProcExternalConnections,
            "proc.gpu_session" => ProcGpuSession,
            "proc.episode" => ProcEpisode,
            "container.id" => ContainerId,
            "pod.uid" => PodUid,
            "ssh.flags" => SshFlags,
            "ssh.options" => SshOptions,
            "payload" => Payload,
            "duration_s" => DurationS,
            "proc.oldest_external_connection_s" => ProcOldestExternalConnectionS,
            _ => return None,
        })
    }
}

/// A field's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    Null,
    Str(Cow<'a, str>),
    Int(i64),
    Bool(bool),
    List(Vec<Cow<'a, str>>),
}

/// Per-process facts the rules can use beyond the event itself.
#[derive(Debug, Clone, Default)]
pub struct ProcFacts {
    pub connections: u64,
    pub external_connections: u64,
    pub gpu_session: bool,
    pub episode: Option<String>,
    /// Start (ts_ns) of the oldest still-open outbound TCP connection to an external address.
    pub oldest_external_start_ns: Option<u64>,
}

/// Everything a condition is evaluated against.
pub struct Ctx<'a> {
    pub ev: &'a Event,
    pub procs: &'a ProcTable,
    /// The ancestor chain, computed on first use (most events never need it).
    pub lineage: &'a std::cell::OnceCell<Vec<Ancestor>>,
    pub container: Option<&'a Container>,
    pub facts: &'a ProcFacts,
}

pub fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

pub fn ip_class(ip: &str) -> (bool, bool) {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => (a.is_loopback(), a.is_private() || a.is_link_local()),
        Ok(IpAddr::V6(a)) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return (v4.is_loopback(), v4.is_private() || v4.is_link_local());
            }
            let seg = a.segments()[0];
            (
                a.is_loopback(),
                (seg & 0xfe00) == 0xfc00 || (seg & 0xffc0) == 0xfe80,
            )
        }
        Err(_) => (false, false),
    }
}

/// getopt-style parse of an OpenSSH/dropbear client command line: the single-letter options
/// (combined short flags split; options that take an argument consume it) and the lower-cased
/// keys of `-o Key=Value`. Option letters with arguments: OpenSSH ssh.c `getopt` string.
pub fn ssh_parse(argv: &[String]) -> (Vec<String>, Vec<String>) {
    const WITH_ARG: &str = "BbcDEeFIiJLlmOoPpQRSWwtyK";
    let mut flags = vec![];
    let mut opts = vec![];
    let mut i = 1;
    while i < argv.len() {
        let a = &argv[i];
        if a == "--" || !a.starts_with('-') || a.len() < 2 {
            // First non-option: the destination; OpenSSH stops option parsing there.
            break;
        }
        let chars: Vec<char> = a[1..].chars().collect();
        let mut j = 0;
        while j < chars.len() {
            let c = chars[j];
            flags.push(c.to_string());
            if WITH_ARG.contains(c) {
                let rest: String = chars[j + 1..].iter().collect();
                let val = if !rest.is_empty() {
                    rest
                } else {
                    i += 1;
                    argv.get(i).cloned().unwrap_or_default()
                };
                if c == 'o' {
                    let key = val
                        .split(['=', ' '])
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_lowercase();
                    opts.push(key);
                }
                break;
            }
            j += 1;
        }
        i += 1;
    }
    (flags, opts)
}

fn is_ssh_client(name: &str) -> bool {
    matches!(
        name,
        "ssh" | "dbclient" | "autossh" | "plink" | "dropbearmulti"
    )
}

impl Ctx<'_> {
    pub fn lin(&self) -> &[Ancestor] {
        self.lineage.get_or_init(|| self.procs.lineage(self.ev.pid))
    }

    fn argv(&self) -> Cow<'_, [String]> {
        match &self.ev.body {
            Body::Exec(x) => Cow::Borrowed(&x.argv),
            _ => Cow::Owned(self.procs.argv(self.ev.pid)),
        }
    }

    fn exe(&self) -> Option<&str> {
        self.ev.exe.as_deref()
    }

    fn net(&self) -> Option<&crate::event::Net> {
        match &self.ev.body {
            Body::Connect(n) | Body::Bind(n) | Body::Listen(n) | Body::TcpClose(n) => Some(n),
            _ => None,
        }
    }

    pub fn get(&self, f: Field) -> Val<'_> {
        use Val::*;
        fn s(v: &str) -> Val<'_> {
            Val::Str(Cow::Borrowed(v))
        }
        fn opt(v: Option<&str>) -> Val<'_> {
            v.map_or(Val::Null, |v| Val::Str(Cow::Borrowed(v)))
        }
        let ev = self.ev;
        match f {
            Field::Kind => Str(Cow::Borrowed(kind_name(&ev.body))),
            Field::Pid => Int(ev.pid as i64),
            Field::Ppid => Int(ev.ppid as i64),
            Field::Uid => Int(ev.uid as i64),
            Field::Comm => Str(Cow::Borrowed(&ev.comm)),
            Field::Exe => opt(self.exe()),
            Field::ExeName => opt(self.exe().map(basename).or(Some(ev.comm.as_str()))),
            Field::CgroupId => Int(ev.cgroup_id as i64),
            Field::Filename => match &ev.body {
                Body::Exec(x) => s(&x.filename),
                _ => Null,
            },
            Field::Argv => match &ev.body {
                Body::Exec(x) => List(x.argv.iter().map(|a| Cow::Borrowed(a.as_str())).collect()),
                _ => List(
                    self.procs
                        .argv(ev.pid)
                        .into_iter()
                        .map(Cow::Owned)
                        .collect(),
                ),
            },
            Field::Argc => Int(self.argv().len() as i64),
            Field::Cmdline => Str(Cow::Owned(self.argv().join(" "))),
            Field::ArgsTruncated => match &ev.body {
                Body::Exec(x) => Bool(x.args_truncated),
                _ => Null,
            },
            Field::DstIp => match &ev.body {
                Body::NetPayload(p) => s(&p.dst_ip),
                _ => opt(self.net().and_then(|n| n.dst_ip.as_deref())),
            },
            Field::DstPort => match &ev.body {
                Body::NetPayload(p) => Int(p.dst_port as i64),
                _ => self
                    .net()
                    .and_then(|n| n.dst_port)
                    .map_or(Null, |p| Int(p as i64)),
            },
            Field::DurationS => match &ev.body {
                Body::TcpClose(n) => n.duration_s.map_or(Null, |d| Int(d as i64)),
                _ => Null,
            },
            Field::ProcOldestExternalConnectionS => {
                self.facts.oldest_external_start_ns.map_or(Int(0), |t| {
                    Int((ev.ts_ns.saturating_sub(t) / 1_000_000_000) as i64)
                })
            }
            Field::Payload => match &ev.body {
                Body::NetPayload(p) => s(&p.text),
                _ => Null,
            },
            Field::LocalIp => opt(self.net().and_then(|n| n.local_ip.as_deref())),
            Field::LocalPort => self
                .net()
                .and_then(|n| n.local_port)
                .map_or(Null, |p| Int(p as i64)),
            Field::Family => opt(self.net().map(|n| n.family.as_str())),
            Field::SockType => opt(self.net().map(|n| n.sock_type.as_str())),
            Field::Protocol => opt(self.net().and_then(|n| n.protocol.as_deref())),
            Field::Result => match &ev.body {
                Body::Connect(n) | Body::Bind(n) | Body::Listen(n) | Body::TcpClose(n) => {
                    s(&n.result)
                }
                Body::GpuIoctl(g) => s(&g.result),
                Body::GpuOpen(g) | Body::TunOpen(g) => s(&g.result),
                _ => Null,
            },
            Field::Via => opt(self.net().map(|n| n.via.as_str())),
            Field::DstLoopback | Field::DstPrivate | Field::DstExternal => {
                let Some(ip) = self.net().and_then(|n| n.dst_ip.as_deref()) else {
                    return Null;
                };
                let (lo, private) = ip_class(ip);
                Bool(match f {
                    Field::DstLoopback => lo,
                    Field::DstPrivate => private,
                    _ => !lo && !private,
                })
            }
            Field::ChildPid => match &ev.body {
                Body::Fork(x) => Int(x.child_pid as i64),
                _ => Null,
            },
            Field::ExitStatus => match &ev.body {
                Body::Exit(x) => x.exit_status.map_or(Null, |v| Int(v as i64)),
                _ => Null,
            },
            Field::Device => match &ev.body {
                Body::GpuIoctl(g) => s(&g.device),
                Body::GpuOpen(g) | Body::TunOpen(g) => s(&g.device),
                _ => Null,
            },
            Field::Op => match &ev.body {
                Body::GpuIoctl(g) => s(&g.op),
                _ => Null,
            },
            Field::Class => match &ev.body {
                Body::GpuIoctl(g) => opt(g.class.as_deref()),
                _ => Null,
            },
            Field::Path => match &ev.body {
                Body::GpuOpen(g) | Body::TunOpen(g) => s(&g.path),
                _ => Null,
            },
            Field::Trigger | Field::Classes => match &ev.body {
                Body::GpuSessionStart(x) | Body::GpuSessionEnd(x) | Body::GpuQuery(x) => {
                    if f == Field::Trigger {
                        opt(x.trigger.as_deref())
                    } else {
                        List(x.classes.iter().map(|c| Cow::Owned(c.clone())).collect())
                    }
                }
                _ => Null,
            },
            Field::SmUtil | Field::MemUtil | Field::PcieRxKbps | Field::PcieTxKbps => {
                match &ev.body {
                    Body::GpuUsage(u) => Int(match f {
                        Field::SmUtil => u.sm_util,
                        Field::MemUtil => u.mem_util,
                        Field::PcieRxKbps => u.pcie_rx_kbps,
                        _ => u.pcie_tx_kbps,
                    } as i64),
                    _ => Null,
                }
            }
            Field::ParentExe => opt(self.lin().first().and_then(|a| a.exe.as_deref())),
            Field::ParentName => opt(self
                .lin()
                .first()
                .and_then(|a| a.exe.as_deref())
                .map(basename)),
            Field::ParentCmdline => self
                .lin()
                .first()
                .map_or(Null, |a| Str(Cow::Owned(a.argv.join(" ")))),
            Field::AncestorExe | Field::AncestorName | Field::AncestorCmdline => List(
                self.lin()
                    .iter()
                    .filter_map(|a| match f {
                        Field::AncestorExe => a.exe.clone().map(Cow::Owned),
                        Field::AncestorName => a
                            .exe
                            .as_deref()
                            .map(|e| Cow::Owned(basename(e).to_string())),
                        _ => Some(Cow::Owned(a.argv.join(" "))),
                    })
                    .collect(),
            ),
            Field::LineageNames => Str(Cow::Owned(
                self.lin()
                    .iter()
                    .map(|a| a.exe.as_deref().map(basename).unwrap_or("?"))
                    .collect::<Vec<_>>()
                    .join("<"),
            )),
            Field::ProcConnections => Int(self.facts.connections as i64),
            Field::ProcExternalConnections => Int(self.facts.external_connections as i64),
            Field::ProcGpuSession => Bool(self.facts.gpu_session),
            Field::ProcEpisode => opt(self.facts.episode.as_deref()),
            Field::ContainerId => opt(self.container.and_then(|c| c.id.as_deref())),
            Field::PodUid => opt(self.container.and_then(|c| c.pod_uid.as_deref())),
            Field::SshFlags | Field::SshOptions => {
                let argv = self.argv();
                let name = self.exe().map(basename).unwrap_or(&ev.comm);
                let name0 = argv.first().map(|a| basename(a)).unwrap_or("");
                if !is_ssh_client(name) && !is_ssh_client(name0) {
                    return List(vec![]);
                }
                // autossh passes its own options first and the ssh ones after; parsing as
                // ssh still finds -R/-L/-D and -o.
                let (flags, opts) = ssh_parse(&argv);
                List(
                    if f == Field::SshFlags { flags } else { opts }
                        .into_iter()
                        .map(Cow::Owned)
                        .collect(),
                )
            }
        }
    }
}

pub fn kind_name(b: &Body) -> &'static str {
    match b {
        Body::Exec(_) => "exec",
        Body::Fork(_) => "fork",
        Body::Exit(_) => "exit",
        Body::Connect(_) => "connect",
        Body::Bind(_) => "bind",
        Body::Listen(_) => "listen",
        Body::NetPayload(_) => "net_payload",
        Body::TcpClose(_) => "tcp_close",
        Body::GpuIoctl(_) => "gpu_ioctl",
        Body::GpuOpen(_) => "gpu_open",
        Body::TunOpen(_) => "tun_open",
        Body::GpuSessionStart(_) => "gpu_session_start",
        Body::GpuSessionEnd(_) => "gpu_session_end",
        Body::GpuQuery(_) => "gpu_query",
        Body::GpuUsage(_) => "gpu_usage",
    }
}

fn lit_str(l: &Lit) -> Cow<'_, str> {
    match l {
        Lit::Str(s) => Cow::Borrowed(s),
        other => Cow::Owned(other.to_string()),
    }
}

fn str_match(v: &str, op: Op, pat: &Pattern) -> bool {
    match (op, pat) {
        (Op::Eq | Op::In, Pattern::Lits(l)) => l.iter().any(|x| lit_str(x) == v),
        (Op::Ne, Pattern::Lits(l)) => l.iter().all(|x| lit_str(x) != v),
        (Op::Contains, Pattern::Lits(l)) => l.iter().any(|x| v.contains(lit_str(x).as_ref())),
        (Op::IContains, Pattern::Lits(l)) => {
            let lv = v.to_lowercase();
            l.iter().any(|x| lv.contains(lit_str(x).as_ref()))
        }
        (Op::StartsWith, Pattern::Lits(l)) => l.iter().any(|x| v.starts_with(lit_str(x).as_ref())),
        (Op::EndsWith, Pattern::Lits(l)) => l.iter().any(|x| v.ends_with(lit_str(x).as_ref())),
        (Op::Glob, Pattern::Globs(g)) => g.iter().any(|p| p.matches(v)),
        (Op::Regex, Pattern::Regex(r)) => r.is_match(v),
        (Op::Cidr, Pattern::Cidrs(c)) => v
            .parse::<IpAddr>()
            .is_ok_and(|ip| c.iter().any(|&(net, len)| cidr_contains(net, len, ip))),
        _ => false,
    }
}

fn cidr_contains(net: IpAddr, len: u8, ip: IpAddr) -> bool {
    let ip = match (net, ip) {
        (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        _ => ip,
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len as u32)
            };
            u32::from(n) & m == u32::from(a) & m
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len as u32)
            };
            u128::from(n) & m == u128::from(a) & m
        }
        _ => false,
    }
}

fn int_match(v: i64, op: Op, pat: &Pattern) -> bool {
    let Pattern::Lits(l) = pat else { return false };
    let ints = || {
        l.iter()
            .filter_map(|x| if let Lit::Int(i) = x { Some(*i) } else { None })
    };
    match op {
        Op::Eq | Op::In => ints().any(|i| i == v) || str_match(&v.to_string(), op, pat),
        Op::Ne => ints().all(|i| i != v),
        Op::Gt => ints().any(|i| v > i),
        Op::Ge => ints().any(|i| v >= i),
        Op::Lt => ints().any(|i| v < i),
        Op::Le => ints().any(|i| v <= i),
        _ => str_match(&v.to_string(), op, pat),
    }
}

/// Evaluates a compiled condition.
pub fn eval(e: &Expr, cx: &Ctx<'_>) -> bool {
    match e {
        Expr::And(v) => v.iter().all(|e| eval(e, cx)),
        Expr::Or(v) => v.iter().any(|e| eval(e, cx)),
        Expr::Not(e) => !eval(e, cx),
        Expr::Pred { field, op, pat } => {
            let v = cx.get(*field);
            match (op, v) {
                (Op::Exists, Val::Null) => false,
                (Op::Exists, Val::List(l)) => !l.is_empty(),
                (Op::Exists, _) => true,
                (Op::Ne, Val::Null) => true,
                (_, Val::Null) => false,
                (_, Val::Str(s)) => str_match(&s, *op, pat),
                (_, Val::Int(i)) => int_match(i, *op, pat),
                (_, Val::Bool(b)) => {
                    let Pattern::Lits(l) = pat else { return false };
                    let hit = l.contains(&Lit::Bool(b));
                    if *op == Op::Ne {
                        !hit
                    } else {
                        matches!(op, Op::Eq | Op::In) && hit
                    }
                }
                (Op::Ne, Val::List(l)) => l.iter().all(|s| str_match(s, Op::Ne, pat)),
                (_, Val::List(l)) => l.iter().any(|s| str_match(s, *op, pat)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sv(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ssh_getopt_combined_flags_and_options() {
        let (f, o) = ssh_parse(&sv(&["ssh", "-fNR", "8080:localhost:80", "user@host"]));
        assert_eq!(f, vec!["f", "N", "R"]);
        assert!(o.is_empty());
        let (f, o) = ssh_parse(&sv(&[
            "ssh",
            "-p",
            "2222",
            "-oRemoteForward=9000 127.0.0.1:22",
            "-o",
            "ProxyCommand=nc %h %p",
            "h",
        ]));
        assert_eq!(f, vec!["p", "o", "o"]);
        assert_eq!(o, vec!["remoteforward", "proxycommand"]);
        // -R inside a port argument is not a flag; arguments after the host are the command.
        let (f, _) = ssh_parse(&sv(&["ssh", "-l", "-R", "host", "-L"]));
        assert_eq!(f, vec!["l"]);
        let (f, _) = ssh_parse(&sv(&["ssh", "-i", "/k", "-TD1080", "h"]));
        assert_eq!(f, vec!["i", "T", "D"]);
    }

    #[test]
    fn ip_classes_and_cidr() {
        assert_eq!(ip_class("127.0.0.1"), (true, false));
        assert_eq!(ip_class("10.1.2.3"), (false, true));
        assert_eq!(ip_class("8.8.8.8"), (false, false));
        assert_eq!(ip_class("::1"), (true, false));
        assert_eq!(ip_class("fd00::1"), (false, true));
        assert_eq!(ip_class("::ffff:192.168.1.1"), (false, true));
        let (n, l) = super::super::expr::parse_cidr("10.0.0.0/8").unwrap();
        assert!(cidr_contains(n, l, "10.9.9.9".parse().unwrap()));
        assert!(cidr_contains(n, l, "::ffff:10.9.9.9".parse().unwrap()));
        assert!(!cidr_contains(n, l, "11.0.0.1".parse().unwrap()));
    }
}
