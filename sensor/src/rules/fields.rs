//! Fields a rule can test, resolved straight from the typed event and its context (no JSON on
//! the hot path), and the evaluation of compiled conditions.

use std::{borrow::Cow, net::IpAddr};

use super::expr::{Expr, Lit, Op, Pattern};
use crate::{
    context::process::{ProcFacts, ProcTable},
    event::Container,
    event::{Ancestor, Body, Event, IpClass, Kind},
};

/// The type of a field's value: it decides which operators and values a rule may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Str,
    Int,
    Bool,
    /// An IP address (text): string operators, `cidr`, and `=`/`in` values must be addresses.
    Ip,
    /// An event kind name: `=`/`!=`/`in` values must be known kinds.
    Kind,
    /// A list of strings: a predicate matches when any element does.
    StrList,
}

impl Type {
    pub fn name(self) -> &'static str {
        match self {
            Type::Str => "string",
            Type::Int => "number",
            Type::Bool => "boolean",
            Type::Ip => "IP address",
            Type::Kind => "event kind",
            Type::StrList => "list of strings",
        }
    }
}

/// Which events carry a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carried {
    /// Every event (process, lineage, container fields).
    Any,
    Only(&'static [Kind]),
}

/// One row of the field table.
#[derive(Debug)]
pub struct FieldDef {
    pub field: Field,
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub ty: Type,
    pub carried: Carried,
    pub doc: &'static str,
}

/// Declares [`Field`] and [`FIELDS`] from one table; the value of each field is read by
/// [`Ctx::get`] (an exhaustive match, so a new field cannot lack a getter).
macro_rules! fields {
    ($($v:ident: $name:literal, &[$($alias:literal),*], Type::$ty:ident, $carried:expr, $doc:literal;)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Field {
            $($v,)*
        }

        /// Every field a rule can test: name, aliases, type, the kinds that carry it, and what
        /// it is. The README's field list is generated from it (`sensor rules fields`).
        pub static FIELDS: &[FieldDef] = &[
            $(FieldDef {
                field: Field::$v,
                name: $name,
                aliases: &[$($alias),*],
                ty: Type::$ty,
                carried: $carried,
                doc: $doc,
            },)*
        ];
    };
}

fields! {
    Kind: "kind", &[], Type::Kind, Carried::Any, "the event kind (the table above)";
    Pid: "pid", &[], Type::Int, Carried::Any, "process (thread-group) id";
    Ppid: "ppid", &[], Type::Int, Carried::Any, "parent's process id";
    Uid: "uid", &[], Type::Int, Carried::Any, "real uid";
    Comm: "comm", &[], Type::Str, Carried::Any, "task comm (16 bytes)";
    Exe: "exe", &["proc.exe"], Type::Str, Carried::Any, "the process's executable path (absent when unknown)";
    ExeName: "proc.name", &["exe.name"], Type::Str, Carried::Any, "basename of `exe` (else `comm`)";
    CgroupId: "cgroup_id", &[], Type::Int, Carried::Any, "cgroup v2 id";
    Filename: "filename", &[], Type::Str, Carried::Only(&[Kind::Exec]), "path given to execve";
    Argv: "argv", &["proc.argv"], Type::StrList, Carried::Any, "arguments (of the exec, else of the process from the process table)";
    Argc: "argc", &[], Type::Int, Carried::Any, "number of arguments";
    Cmdline: "cmdline", &["proc.cmdline"], Type::Str, Carried::Any, "arguments joined with spaces";
    ArgsTruncated: "args_truncated", &[], Type::Bool, Carried::Only(&[Kind::Exec]), "the argv block was longer than the kernel copy";
    DstIp: "dst_ip", &[], Type::Ip, Carried::Only(&[Kind::Connect, Kind::Bind, Kind::Listen, Kind::TcpClose, Kind::NetPayload, Kind::SockDup, Kind::DnsQuery]), "destination (connect, payload), peer (sock_dup), resolver (dns_query) or local (bind, listen) address";
    DstPort: "dst_port", &[], Type::Int, Carried::Only(&[Kind::Connect, Kind::Bind, Kind::Listen, Kind::TcpClose, Kind::NetPayload, Kind::SockDup, Kind::DnsQuery]), "port of `dst_ip`";
    LocalIp: "local_ip", &[], Type::Ip, Carried::Only(&[Kind::Connect, Kind::Bind, Kind::Listen, Kind::TcpClose]), "local address of a connection";
    LocalPort: "local_port", &[], Type::Int, Carried::Only(&[Kind::Connect, Kind::Bind, Kind::Listen, Kind::TcpClose, Kind::NetPayload, Kind::DnsQuery]), "local port of a connection, payload or query";
    Family: "family", &[], Type::Str, Carried::Only(&[Kind::Connect, Kind::Bind, Kind::Listen, Kind::TcpClose]), "`inet` or `inet6`";
    SockType: "sock_type", &[], Type::Str, Carried::Only(&[Kind::Connect, Kind::Bind, Kind::Listen, Kind::TcpClose]), "`stream`, `dgram`, `raw`, …";
    Protocol: "protocol", &[], Type::Str, Carried::Only(&[Kind::Connect, Kind::Bind, Kind::Listen, Kind::TcpClose]), "`tcp`, `udp`, … when known";
    Result: "result", &[], Type::Str, Carried::Only(&[Kind::Connect, Kind::Bind, Kind::Listen, Kind::TcpClose, Kind::GpuIoctl, Kind::GpuOpen, Kind::TunOpen]), "`ok`, `in_progress`, `error`, `unknown`, `closed` (tcp_close)";
    Via: "via", &[], Type::Str, Carried::Only(&[Kind::Connect, Kind::Bind, Kind::Listen, Kind::TcpClose]), "`syscall` or `sock_state` (a TCP connect outside connect(2))";
    DstLoopback: "dst.loopback", &[], Type::Bool, Carried::Only(&[Kind::Connect, Kind::Bind, Kind::Listen, Kind::TcpClose, Kind::NetPayload, Kind::SockDup, Kind::DnsQuery]), "`dst_ip` is a loopback address";
    DstPrivate: "dst.private", &[], Type::Bool, Carried::Only(&[Kind::Connect, Kind::Bind, Kind::Listen, Kind::TcpClose, Kind::NetPayload, Kind::SockDup, Kind::DnsQuery]), "`dst_ip` is private or link-local (RFC 1918, fc00::/7, fe80::/10)";
    DstExternal: "dst.external", &[], Type::Bool, Carried::Only(&[Kind::Connect, Kind::Bind, Kind::Listen, Kind::TcpClose, Kind::NetPayload, Kind::SockDup, Kind::DnsQuery]), "`dst_ip` is neither loopback nor private";
    ChildPid: "child_pid", &[], Type::Int, Carried::Only(&[Kind::Fork]), "the new process";
    ExitStatus: "exit_status", &[], Type::Int, Carried::Only(&[Kind::Exit]), "exit status of a normal exit";
    Device: "device", &[], Type::Str, Carried::Only(&[Kind::GpuIoctl, Kind::GpuOpen, Kind::TunOpen]), "GPU/TUN device kind (`nvidia`, `nvidia-uvm`, `nvidia-caps`, `nvidia-fabric`, `kfd`, `drm`, `tun`)";
    Op: "op", &[], Type::Str, Carried::Only(&[Kind::GpuIoctl]), "decoded GPU ioctl operation";
    Class: "class", &[], Type::Str, Carried::Only(&[Kind::GpuIoctl]), "GPU object class allocated (`HOPPER_COMPUTE_A`, …)";
    Path: "path", &[], Type::Str, Carried::Only(&[Kind::GpuOpen, Kind::TunOpen]), "device path opened";
    Trigger: "trigger", &[], Type::Str, Carried::Only(&[Kind::GpuSessionStart, Kind::GpuSessionEnd, Kind::GpuQuery]), "what started or identified the GPU session";
    Classes: "classes", &[], Type::StrList, Carried::Only(&[Kind::GpuSessionStart, Kind::GpuSessionEnd, Kind::GpuQuery]), "GPU object classes the session allocated";
    SmUtil: "sm_util", &[], Type::Int, Carried::Only(&[Kind::GpuUsage]), "NVML SM utilisation of the process, %";
    MemUtil: "mem_util", &[], Type::Int, Carried::Only(&[Kind::GpuUsage]), "NVML memory utilisation of the process, %";
    PcieRxKbps: "pcie_rx_kbps", &[], Type::Int, Carried::Only(&[Kind::GpuUsage]), "PCIe host→device throughput of the GPU, KB/s";
    PcieTxKbps: "pcie_tx_kbps", &[], Type::Int, Carried::Only(&[Kind::GpuUsage]), "PCIe device→host throughput of the GPU, KB/s";
    ParentExe: "parent.exe", &[], Type::Str, Carried::Any, "the parent's executable";
    ParentName: "parent.name", &[], Type::Str, Carried::Any, "basename of `parent.exe`";
    ParentCmdline: "parent.cmdline", &[], Type::Str, Carried::Any, "the parent's arguments joined";
    AncestorExe: "ancestor.exe", &[], Type::StrList, Carried::Any, "executables of every ancestor";
    AncestorName: "ancestor.name", &[], Type::StrList, Carried::Any, "basenames of `ancestor.exe`";
    AncestorCmdline: "ancestor.cmdline", &[], Type::StrList, Carried::Any, "every ancestor's arguments joined";
    LineageNames: "lineage.names", &[], Type::Str, Carried::Any, "ancestor names joined with `<`, parent first: `bash<python3<containerd-shim`";
    ProcConnections: "proc.connections", &[], Type::Int, Carried::Any, "outbound TCP connections the process made";
    ProcExternalConnections: "proc.external_connections", &[], Type::Int, Carried::Any, "of those, to external addresses";
    ProcGpuSession: "proc.gpu_session", &[], Type::Bool, Carried::Any, "the process has a GPU compute session";
    ProcEpisode: "proc.episode", &[], Type::Str, Carried::Any, "agent episode tag (env var or pod annotation)";
    ContainerId: "container.id", &[], Type::Str, Carried::Any, "container id from the cgroup path";
    PodUid: "pod.uid", &[], Type::Str, Carried::Any, "pod UID from the cgroup path";
    SshFlags: "ssh.flags", &[], Type::StrList, Carried::Any, "single-letter options of an ssh/dbclient/autossh command line, parsed like OpenSSH's getopt";
    SshOptions: "ssh.options", &[], Type::StrList, Carried::Any, "lower-cased keys of its `-o Key=Value` options";
    SshConfigOptions: "ssh.config_options", &[], Type::StrList, Carried::Only(&[Kind::Exec]), "forwarding/proxy directives (lower-cased) in the ssh_config files an OpenSSH `ssh` exec will read that apply to its destination (the event says which file and line)";
    Payload: "payload", &[], Type::Str, Carried::Only(&[Kind::NetPayload]), "the captured first bytes as text (lossy UTF-8)";
    DurationS: "duration_s", &[], Type::Int, Carried::Only(&[Kind::TcpClose]), "how long the connection was open, s";
    ProcOldestExternalConnectionS: "proc.oldest_external_connection_s", &[], Type::Int, Carried::Any, "age of the process's oldest open external connection, s (0 when none)";
    Fd: "fd", &[], Type::Int, Carried::Only(&[Kind::SockDup]), "the descriptor the socket was dup'd onto (0, 1, 2)";
    AppProto: "proto", &[], Type::Str, Carried::Only(&[Kind::NetPayload]), "what the first bytes speak: `ssh`, `tls`, `http`, `stratum`, `json_rpc`, `unknown`";
    Transport: "transport", &[], Type::Str, Carried::Only(&[Kind::NetPayload, Kind::DnsQuery]), "`tcp` or `udp`";
    SshBanner: "ssh.banner", &[], Type::Str, Carried::Only(&[Kind::NetPayload]), "SSH identification string sent (`SSH-2.0-…`)";
    TlsSni: "tls.sni", &[], Type::Str, Carried::Only(&[Kind::NetPayload]), "server name of a TLS ClientHello (lower case)";
    HttpHost: "http.host", &[], Type::Str, Carried::Only(&[Kind::NetPayload]), "Host header of an HTTP/1.x request (lower case)";
    HttpRequest: "http.request", &[], Type::Str, Carried::Only(&[Kind::NetPayload]), "HTTP request line";
    RpcMethod: "rpc.method", &[], Type::Str, Carried::Only(&[Kind::NetPayload]), "JSON-RPC method of the first message (`mining.subscribe`, `login`, …)";
    MinerAgent: "miner.agent", &[], Type::Str, Carried::Only(&[Kind::NetPayload]), "`agent` of an XMRig-style mining login";
    DnsQname: "dns.qname", &[], Type::Str, Carried::Only(&[Kind::DnsQuery]), "name queried (lower case, no trailing dot)";
    DnsQtype: "dns.qtype", &[], Type::Str, Carried::Only(&[Kind::DnsQuery]), "query type (`A`, `AAAA`, `TXT`, … or `TYPEn`)";
    DnsZone: "dns.zone", &[], Type::Str, Carried::Only(&[Kind::DnsQuery]), "registrable zone of the name (last two labels; three under `co.uk`-style suffixes)";
    DnsLongestLabel: "dns.longest_label", &[], Type::Int, Carried::Only(&[Kind::DnsQuery]), "length of the name's longest label";
    DnsLabelEntropy: "dns.label_entropy", &[], Type::Int, Carried::Only(&[Kind::DnsQuery]), "Shannon entropy of the labels left of the zone, bits per character × 100";
    DnsZoneNames: "dns.zone_names", &[], Type::Int, Carried::Only(&[Kind::DnsQuery]), "distinct names this process asked in the same zone in the last 5 minutes";
    ProcSshSession: "proc.ssh_session", &[], Type::Bool, Carried::Any, "the process sent an SSH identification string on an outbound connection (an SSH client by protocol, whatever its name; inherited by fork)";
    StdioSockets: "stdio.sockets", &[], Type::Int, Carried::Only(&[Kind::Exec]), "how many of fds 0-2 were sockets at exec";
    StdioNet: "stdio.net", &[], Type::Int, Carried::Only(&[Kind::Exec]), "how many of fds 0-2 were IPv4/IPv6 sockets with a peer at exec";
    StdioOutbound: "stdio.outbound", &[], Type::Int, Carried::Only(&[Kind::Exec]), "how many of fds 0-2 were outbound TCP connections at exec (opened by a connect the sensor saw; accepted sockets - sshd, inetd - are not)";
    StdioPeerIp: "stdio.peer_ip", &[], Type::Ip, Carried::Only(&[Kind::Exec]), "the peer of the first such socket";
    StdioPeerPort: "stdio.peer_port", &[], Type::Int, Carried::Only(&[Kind::Exec]), "its port";
    ExeUnlinked: "exe.unlinked", &[], Type::Bool, Carried::Only(&[Kind::Exec]), "the executable had no link at exec (a memfd or a deleted file; from the kernel's inode)";
    ExeFileless: "exe.fileless", &[], Type::Bool, Carried::Any, "the program runs from no file on disk: unlinked, run through `/dev/fd/N` or `/proc/*/fd/N`, or a `/memfd:` / `(deleted)` executable";
    ProcStdinProgram: "proc.stdin_program", &[], Type::Bool, Carried::Any, "a shell or interpreter reading its program from stdin (no script, no `-c`/`-e`/`-m` code): what a remote operator types into";
    ParentOpenExternal: "parent.open_external_connections", &[], Type::Int, Carried::Any, "outbound TCP connections to external addresses the parent holds open";
    ProcOpenExternal: "proc.open_external_connections", &[], Type::Int, Carried::Any, "outbound TCP connections to external addresses the process holds open now, those named (TLS SNI / HTTP Host) as a trusted destination (`workload.trusted_destinations`) left out";
    ProcLauncher: "proc.launcher", &[], Type::Str, Carried::Any, "the nearest trusted workload launcher, the process itself or an ancestor (`torchrun`, `jupyter-lab`, `torch.distributed.run`, …): named in `workload.launchers` and its file root-owned under `workload.system_dirs`";
    ProcInWorkload: "proc.in_workload", &[], Type::Bool, Carried::Any, "`proc.launcher` is set: the process runs under a trusted launcher";
    DstLoginService: "dst.login_service", &[], Type::Bool, Carried::Only(&[Kind::Connect, Kind::NetPayload]), "a login service (`workload.login_services`: sshd, dropbear, xrdp, VNC, …) listens on the destination port here, and the destination is loopback or private";
    DstTrusted: "dst.trusted", &[], Type::Bool, Carried::Only(&[Kind::NetPayload]), "the TLS SNI or HTTP Host is a trusted destination (`workload.trusted_destinations`)";
    ProcScript: "proc.script", &[], Type::Str, Carried::Any, "the script an interpreter (sh, bash, python, perl, ruby, php, node, lua, …) runs: its first non-option argument (absent for `-c`/`-m`/`-e` code)";
}

impl Field {
    pub fn parse(s: &str) -> Option<Field> {
        FIELDS
            .iter()
            .find(|d| d.name == s || d.aliases.contains(&s))
            .map(|d| d.field)
    }

    pub fn def(self) -> &'static FieldDef {
        // Every variant has a row: the macro makes both from the same list.
        FIELDS
            .iter()
            .find(|d| d.field == self)
            .unwrap_or(&FIELDS[0])
    }

    /// Whether an event of kind `k` carries this field.
    pub fn carried_by(self, k: Kind) -> bool {
        match self.def().carried {
            Carried::Any => true,
            Carried::Only(ks) => ks.contains(&k),
        }
    }
}

/// The field list as a Markdown table (README "Rules": fields), from [`FIELDS`].
pub fn fields_markdown() -> String {
    let mut out = String::from("| field | type | carried by | meaning |\n|---|---|---|---|\n");
    for d in FIELDS {
        let names = std::iter::once(d.name)
            .chain(d.aliases.iter().copied())
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let carried = match d.carried {
            Carried::Any => "every event".to_string(),
            Carried::Only(ks) => ks
                .iter()
                .map(|k| format!("`{}`", k.name()))
                .collect::<Vec<_>>()
                .join(", "),
        };
        out += &format!("| {names} | {} | {carried} | {} |\n", d.ty.name(), d.doc);
    }
    out
}

/// What the README holds between its `<!-- rules-reference -->` markers: the kinds and the
/// fields (`sensor rules fields` prints it; a test checks the README against it).
pub fn reference_markdown() -> String {
    format!(
        "Event kinds (`kind`):\n\n{}\nFields:\n\n{}",
        kinds_markdown(),
        fields_markdown()
    )
}

/// The kinds as a Markdown table, from [`Kind::ALL`].
pub fn kinds_markdown() -> String {
    let mut out = String::from("| kind | what |\n|---|---|\n");
    for k in Kind::ALL {
        out += &format!("| `{}` | {} |\n", k.name(), k.description());
    }
    out
}

/// A field's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    Null,
    Str(Cow<'a, str>),
    Int(i64),
    Bool(bool),
    Ip(IpAddr),
    List(Vec<Cow<'a, str>>),
}

/// Everything a condition is evaluated against.
pub struct Ctx<'a> {
    pub ev: &'a Event,
    pub procs: &'a ProcTable,
    /// The ancestor chain, computed on first use (most events never need it).
    pub lineage: &'a std::cell::OnceCell<Vec<Ancestor>>,
    pub container: Option<&'a Container>,
    pub facts: &'a ProcFacts,
    /// Results of the predicates already evaluated for this event, by slot (0: not yet, 1:
    /// false, 2: true): a predicate many rules share (`outbound_ok`'s three) is evaluated once.
    pub memo: Option<&'a [std::cell::Cell<u8>]>,
}

pub fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// Parse of an OpenSSH/dropbear client command line as OpenSSH parses it: the single-letter
/// options (combined short flags split; options that take an argument consume it) and the
/// lower-cased keys of `-o Key=Value`. Option letters with arguments: OpenSSH ssh.c `getopt`
/// string. OpenSSH restarts option parsing after the destination (ssh.c: `goto again`), so
/// `ssh u@h -p 22 -N -R …` forwards; the next non-option starts the remote command, and `--`
/// ends the options.
pub fn ssh_parse(argv: &[String]) -> (Vec<String>, Vec<String>) {
    use crate::context::ssh_config::SSH_OPTS_WITH_ARG as WITH_ARG;
    let mut flags = vec![];
    let mut opts = vec![];
    let mut i = 1;
    let mut seen_destination = false;
    while i < argv.len() {
        let a = &argv[i];
        if a == "--" {
            break;
        }
        if !a.starts_with('-') || a.len() < 2 {
            if seen_destination {
                break; // the remote command
            }
            seen_destination = true;
            i += 1;
            continue;
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
            Body::GpuSessionStart(x) | Body::GpuSessionEnd(x) | Body::GpuQuery(x)
                if !x.argv.is_empty() =>
            {
                Cow::Borrowed(&x.argv)
            }
            _ => Cow::Owned(self.procs.argv(self.ev.pid)),
        }
    }

    fn exe(&self) -> Option<&str> {
        self.ev.exe.as_deref()
    }

    fn net(&self) -> Option<&crate::event::Net> {
        match &self.ev.body {
            Body::Connect(n)
            | Body::Bind(n)
            | Body::Listen(n)
            | Body::TcpClose(n)
            | Body::SockDup(n) => Some(n),
            _ => None,
        }
    }

    /// The remote address of a network event (a connect's destination, a payload's, a dup'd
    /// socket's peer, a query's resolver).
    fn remote(&self) -> Option<IpAddr> {
        match &self.ev.body {
            Body::NetPayload(p) => Some(p.dst_ip),
            Body::DnsQuery(q) => Some(q.server),
            _ => self.net().and_then(|n| n.dst_ip),
        }
    }

    fn payload(&self) -> Option<&crate::event::NetPayload> {
        match &self.ev.body {
            Body::NetPayload(p) => Some(p),
            _ => None,
        }
    }

    fn dns(&self) -> Option<&crate::event::DnsQuery> {
        match &self.ev.body {
            Body::DnsQuery(q) => Some(q),
            _ => None,
        }
    }

    fn stdio(&self) -> Option<&crate::event::Stdio> {
        match &self.ev.body {
            Body::Exec(x) => x.stdio.as_ref(),
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
            Field::Kind => Str(Cow::Borrowed(ev.body.kind().name())),
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
            Field::DstIp => self.remote().map_or(Null, Ip),
            Field::DstPort => match &ev.body {
                Body::NetPayload(p) => Int(p.dst_port as i64),
                Body::DnsQuery(q) => Int(q.server_port as i64),
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
            Field::LocalIp => self.net().and_then(|n| n.local_ip).map_or(Null, Ip),
            Field::LocalPort => match &ev.body {
                Body::NetPayload(p) => Int(p.local_port as i64),
                Body::DnsQuery(q) => Int(q.local_port as i64),
                _ => self
                    .net()
                    .and_then(|n| n.local_port)
                    .map_or(Null, |p| Int(p as i64)),
            },
            Field::Family => opt(self.net().map(|n| n.family.as_str())),
            Field::SockType => opt(self.net().map(|n| n.sock_type.as_str())),
            Field::Protocol => opt(self.net().and_then(|n| n.protocol.as_deref())),
            Field::Result => match &ev.body {
                Body::Connect(n) | Body::Bind(n) | Body::Listen(n) | Body::TcpClose(n) => {
                    s(n.result.as_str())
                }
                Body::GpuIoctl(g) => s(g.result.as_str()),
                Body::GpuOpen(g) | Body::TunOpen(g) => s(g.result.as_str()),
                _ => Null,
            },
            Field::Via => opt(self.net().map(|n| n.via.as_str())),
            Field::DstLoopback | Field::DstPrivate | Field::DstExternal => {
                let Some(ip) = self.remote() else {
                    return Null;
                };
                let c = IpClass::of(ip);
                Bool(match f {
                    Field::DstLoopback => c.loopback,
                    Field::DstPrivate => c.private,
                    _ => c.external(),
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
                Body::GpuIoctl(g) => s(g.device.as_str()),
                Body::GpuOpen(g) | Body::TunOpen(g) => s(g.device.as_str()),
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
                // An SSH client by name, or by protocol: a renamed OpenSSH/dropbear (its banner
                // says so) parses like OpenSSH; a library inside an interpreter or a JVM has
                // its host program's command line, not ssh's.
                let renamed = self.facts.ssh_openssh && !is_interpreter(name);
                if !is_ssh_client(name) && !is_ssh_client(name0) && !renamed {
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
            Field::SshConfigOptions => match &ev.body {
                Body::Exec(x) => List(
                    x.ssh_config
                        .as_ref()
                        .map(|c| c.keys().into_iter().map(Cow::Owned).collect())
                        .unwrap_or_default(),
                ),
                _ => Null,
            },
            Field::Fd => match &ev.body {
                Body::SockDup(n) => n.fd.map_or(Null, |fd| Int(fd as i64)),
                _ => Null,
            },
            Field::AppProto => opt(self.payload().map(|p| p.app.proto.as_str())),
            Field::Transport => match &ev.body {
                Body::NetPayload(p) => s(p.transport.as_str()),
                Body::DnsQuery(q) => s(q.transport.as_str()),
                _ => Null,
            },
            Field::SshBanner => opt(self.payload().and_then(|p| p.app.ssh_banner.as_deref())),
            Field::TlsSni => opt(self.payload().and_then(|p| p.app.sni.as_deref())),
            Field::HttpHost => opt(self.payload().and_then(|p| p.app.http_host.as_deref())),
            Field::HttpRequest => opt(self.payload().and_then(|p| p.app.http_request.as_deref())),
            Field::RpcMethod => opt(self.payload().and_then(|p| p.app.rpc_method.as_deref())),
            Field::MinerAgent => opt(self.payload().and_then(|p| p.app.miner_agent.as_deref())),
            Field::DnsQname => opt(self.dns().map(|q| q.qname.as_str())),
            Field::DnsQtype => opt(self.dns().map(|q| q.qtype_name.as_str())),
            Field::DnsZone => opt(self.dns().map(|q| crate::proto::zone(&q.qname))),
            Field::DnsLongestLabel => self.dns().map_or(Null, |q| {
                Int(q.qname.split('.').map(str::len).max().unwrap_or(0) as i64)
            }),
            Field::DnsLabelEntropy => self.dns().map_or(Null, |q| {
                let z = crate::proto::zone(&q.qname);
                let sub = q.qname[..q.qname.len() - z.len()].replace('.', "");
                Int(crate::proto::entropy_x100(&sub))
            }),
            Field::DnsZoneNames => match &ev.body {
                Body::DnsQuery(_) => Int(self.facts.dns_zone_names as i64),
                _ => Null,
            },
            Field::ProcSshSession => Bool(self.facts.ssh_session),
            Field::StdioSockets => match &ev.body {
                Body::Exec(x) => Int(x.stdio.as_ref().map_or(0, |s| s.sockets.len()) as i64),
                _ => Null,
            },
            Field::StdioNet => match &ev.body {
                Body::Exec(x) => Int(x.stdio.as_ref().map_or(0, |s| s.net.len()) as i64),
                _ => Null,
            },
            Field::StdioOutbound => match &ev.body {
                Body::Exec(x) => Int(x.stdio.as_ref().map_or(0, |s| s.outbound.len()) as i64),
                _ => Null,
            },
            Field::StdioPeerIp => self.stdio().and_then(|s| s.peer_ip).map_or(Null, Ip),
            Field::StdioPeerPort => self
                .stdio()
                .and_then(|s| s.peer_port)
                .map_or(Null, |p| Int(p as i64)),
            Field::ExeUnlinked => match &ev.body {
                Body::Exec(x) => Bool(x.exe_unlinked),
                _ => Null,
            },
            Field::ExeFileless => {
                let exe = self.exe().unwrap_or("");
                let by_path = exe.starts_with("/memfd:") || exe.ends_with(" (deleted)");
                Bool(match &ev.body {
                    Body::Exec(x) => {
                        x.exe_unlinked
                            || by_path
                            || x.filename.starts_with("/dev/fd/")
                            || (x.filename.starts_with("/proc/") && x.filename.contains("/fd/"))
                    }
                    _ => by_path,
                })
            }
            Field::ProcStdinProgram => {
                let argv = self.argv();
                let name = self.exe().map(basename).unwrap_or(&ev.comm);
                Bool(interpreter_program(name, &argv) == Some(Program::Stdin))
            }
            Field::ParentOpenExternal => Int(self
                .lin()
                .first()
                .map_or(0, |a| self.procs.open_external(a.pid))
                as i64),
            Field::ProcOpenExternal => Int(self.facts.open_external as i64),
            Field::ProcLauncher => opt(self.facts.launcher.as_deref()),
            Field::ProcInWorkload => Bool(self.facts.launcher.is_some()),
            Field::DstLoginService => {
                let port = match &ev.body {
                    Body::NetPayload(p) => Some(p.dst_port),
                    _ => self.net().and_then(|n| n.dst_port),
                };
                let local = self.remote().is_some_and(|ip| {
                    let c = crate::event::IpClass::of(ip);
                    c.loopback || c.private
                });
                Bool(local && port.is_some_and(|p| self.procs.login_port(p)))
            }
            Field::DstTrusted => match &ev.body {
                Body::NetPayload(p) => Bool(
                    p.app
                        .sni
                        .as_deref()
                        .or(p.app.http_host.as_deref())
                        .is_some_and(|h| self.procs.workload().trusted_destination(h)),
                ),
                _ => Null,
            },
            Field::ProcScript => {
                let argv = self.argv();
                let name = self.exe().map(basename).unwrap_or(&ev.comm);
                match interpreter_script(name, &argv) {
                    Some(sc) => Str(Cow::Owned(sc)),
                    None => Null,
                }
            }
        }
    }
}

/// The option letters that make an interpreter run code from its command line or a module
/// instead of a script (`sh -c`, `python -c/-m`, `perl -e/-E`, `ruby -e`, `node -e/-p`,
/// `php -r`, `lua -e`), or `None` when `name` is not a shell or script interpreter
/// (`python3.11`, `perl5.36` included).
fn interpreter_code_flags(name: &str) -> Option<&'static str> {
    let base = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    Some(match base {
        "sh" | "bash" | "dash" | "zsh" | "ksh" | "mksh" | "ash" | "fish" | "csh" | "tcsh"
        | "busybox" => "c",
        "python" | "pypy" => "cm",
        "perl" => "eE",
        "ruby" | "lua" | "luajit" | "julia" => "e",
        "node" | "nodejs" | "deno" | "bun" => "ep",
        "php" => "r",
        "tclsh" | "Rscript" => "e",
        _ => return None,
    })
}

/// Whether `name` is a shell or script interpreter.
pub fn is_interpreter(name: &str) -> bool {
    interpreter_code_flags(name).is_some()
}

/// Where an interpreter takes its program from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// A script file (the first argument after the options).
    Script(String),
    /// Code on the command line or a module ([`interpreter_code_flags`]).
    Code,
    /// Standard input (no script, no code): interactive, or fed by whoever holds stdin.
    Stdin,
}

/// Where an interpreter's program comes from; `None` when `name` is not an interpreter. Options
/// that take a value (`python -W x`/`-X x`, `perl -I dir`, `bash -o opt`/`-O opt`) skip it.
pub fn interpreter_program(name: &str, argv: &[String]) -> Option<Program> {
    let code = interpreter_code_flags(name)?;
    let mut i = 1;
    while i < argv.len() {
        let a = argv[i].as_str();
        if a == "--" {
            return Some(
                argv.get(i + 1)
                    .map_or(Program::Stdin, |s| Program::Script(s.clone())),
            );
        }
        if a == "-" {
            return Some(Program::Stdin);
        }
        if !a.starts_with('-') || a.starts_with('+') {
            return Some(Program::Script(a.to_string()));
        }
        if a.starts_with("--") {
            i += 1;
            continue;
        }
        let letters = &a[1..];
        if letters.chars().any(|c| code.contains(c)) {
            return Some(Program::Code);
        }
        if matches!(letters, "W" | "X" | "I" | "o" | "O") {
            i += 1; // the option's value
        }
        i += 1;
    }
    Some(Program::Stdin)
}

/// The script an interpreter runs ([`interpreter_program`]).
pub fn interpreter_script(name: &str, argv: &[String]) -> Option<String> {
    match interpreter_program(name, argv)? {
        Program::Script(s) => Some(s),
        _ => None,
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

/// An address against a pattern: `cidr` and the address list of `=`/`!=`/`in` (parsed once,
/// when the rule was compiled) compare addresses; other string operators see its text.
fn ip_match(ip: IpAddr, op: Op, pat: &Pattern) -> bool {
    match (op, pat) {
        (Op::Cidr, Pattern::Cidrs(c)) => c.iter().any(|&(net, len)| cidr_contains(net, len, ip)),
        (Op::Eq | Op::In, Pattern::Ips(l)) => l.iter().any(|a| same_ip(*a, ip)),
        (Op::Ne, Pattern::Ips(l)) => l.iter().all(|a| !same_ip(*a, ip)),
        _ => str_match(&ip.to_string(), op, pat),
    }
}

/// Equal addresses, an IPv4-mapped IPv6 address equal to its IPv4 address.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    let canon = |x: IpAddr| match x {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(x, IpAddr::V4),
        v4 => v4,
    };
    canon(a) == canon(b)
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
        // A string literal (`port in ["22"]`) compares with the number's text; with only
        // numbers in the list there is nothing more to compare (and nothing to format).
        Op::Eq | Op::In => {
            ints().any(|i| i == v)
                || (l.iter().any(|x| !matches!(x, Lit::Int(_)))
                    && str_match(&v.to_string(), op, pat))
        }
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
        Expr::Pred {
            field,
            op,
            pat,
            slot,
        } => match cx.memo.and_then(|m| m.get(*slot as usize)) {
            Some(m) if m.get() != 0 => m.get() == 2,
            Some(m) => {
                let t = pred(cx.get(*field), *op, pat);
                m.set(1 + t as u8);
                t
            }
            None => pred(cx.get(*field), *op, pat),
        },
    }
}

/// Whether `e` can hold for an event of kind `k`, from its `kind` tests alone: `Some(false)`
/// when no event of that kind can match (the rule set skips the rule for that kind), `None`
/// when other fields decide.
pub fn kind_truth(e: &Expr, k: crate::event::Kind) -> Option<bool> {
    match e {
        // `and` is decided by one false, `or` by one true; otherwise all must agree.
        Expr::And(v) | Expr::Or(v) => {
            let decisive = matches!(e, Expr::Or(_));
            let t: Vec<_> = v.iter().map(|x| kind_truth(x, k)).collect();
            if t.contains(&Some(decisive)) {
                Some(decisive)
            } else if t.iter().all(|x| *x == Some(!decisive)) {
                Some(!decisive)
            } else {
                None
            }
        }
        Expr::Not(x) => kind_truth(x, k).map(|t| !t),
        Expr::Pred {
            field: Field::Kind,
            op,
            pat,
            ..
        } => Some(pred(Val::Str(Cow::Borrowed(k.name())), *op, pat)),
        Expr::Pred { .. } => None,
    }
}

/// One predicate on a field's value.
fn pred(v: Val<'_>, op: Op, pat: &Pattern) -> bool {
    match (op, v) {
        (Op::Exists, Val::Null) => false,
        (Op::Exists, Val::List(l)) => !l.is_empty(),
        (Op::Exists, _) => true,
        (Op::Ne, Val::Null) => true,
        (_, Val::Null) => false,
        (_, Val::Str(s)) => str_match(&s, op, pat),
        (_, Val::Ip(ip)) => ip_match(ip, op, pat),
        (_, Val::Int(i)) => int_match(i, op, pat),
        (_, Val::Bool(b)) => {
            let Pattern::Lits(l) = pat else { return false };
            let hit = l.contains(&Lit::Bool(b));
            if op == Op::Ne {
                !hit
            } else {
                matches!(op, Op::Eq | Op::In) && hit
            }
        }
        (Op::Ne, Val::List(l)) => l.iter().all(|s| str_match(s, Op::Ne, pat)),
        (_, Val::List(l)) => l.iter().any(|s| str_match(s, op, pat)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_field_list_is_generated_from_the_table() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let (_, rest) = readme
            .split_once("<!-- rules-reference:begin -->\n")
            .expect("README has the rules-reference markers");
        let (section, _) = rest.split_once("<!-- rules-reference:end -->").unwrap();
        assert!(
            section == reference_markdown(),
            "README's field list differs from the field table: replace the text between the \
             rules-reference markers with the output of `sensor rules fields`"
        );
    }

    #[test]
    fn field_table_is_consistent() {
        let mut names = std::collections::HashSet::new();
        for d in FIELDS {
            for n in std::iter::once(d.name).chain(d.aliases.iter().copied()) {
                assert!(names.insert(n), "field name {n} twice");
                assert_eq!(Field::parse(n), Some(d.field));
            }
            assert_eq!(d.field.def().name, d.name);
            if let Carried::Only(ks) = d.carried {
                assert!(!ks.is_empty(), "{}", d.name);
            }
        }
    }

    fn sv(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn interpreter_scripts() {
        let sc = |name: &str, a: &[&str]| interpreter_script(name, &sv(a));
        assert_eq!(
            sc("python3", &["python3", "-u", "/home/u/hash.py", "x"]).as_deref(),
            Some("/home/u/hash.py")
        );
        assert_eq!(
            sc("python3.11", &["python3", "-W", "ignore", "/tmp/a.py"]).as_deref(),
            Some("/tmp/a.py")
        );
        assert_eq!(
            sc("python3", &["python3", "-c", "print(1)", "/tmp/a.py"]),
            None
        );
        assert_eq!(sc("python3", &["python3", "-m", "http.server"]), None);
        assert_eq!(
            sc("bash", &["bash", "-ex", "/tmp/run.sh"]).as_deref(),
            Some("/tmp/run.sh")
        );
        assert_eq!(sc("bash", &["bash", "-c", "/tmp/run.sh"]), None);
        assert_eq!(sc("perl", &["perl", "-e", "1"]), None);
        assert_eq!(
            sc("node", &["node", "/srv/app.js"]).as_deref(),
            Some("/srv/app.js")
        );
        assert_eq!(sc("curl", &["curl", "/tmp/x"]), None);
        let pr = |name: &str, a: &[&str]| interpreter_program(name, &sv(a));
        assert_eq!(pr("sh", &["sh"]), Some(Program::Stdin));
        assert_eq!(pr("bash", &["bash", "-i"]), Some(Program::Stdin));
        assert_eq!(pr("bash", &["bash", "-c", "ls"]), Some(Program::Code));
        assert_eq!(pr("python3", &["python3", "-"]), Some(Program::Stdin));
        assert_eq!(pr("socat", &["socat"]), None);
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
        // -R inside an option's argument is not a flag; after the destination, the next
        // non-option starts the remote command (its -L is not ssh's).
        let (f, _) = ssh_parse(&sv(&["ssh", "-l", "-R", "host", "ls", "-L"]));
        assert_eq!(f, vec!["l"]);
        // Options after the destination count, as OpenSSH re-parses them.
        let (f, _) = ssh_parse(&sv(&[
            "ssh",
            "u@h",
            "-p",
            "22",
            "-N",
            "-R",
            "9000:localhost:22",
        ]));
        assert_eq!(f, vec!["p", "N", "R"]);
        let (f, _) = ssh_parse(&sv(&["ssh", "u@h", "--", "-R", "x"]));
        assert!(f.is_empty());
        let (f, _) = ssh_parse(&sv(&["ssh", "-i", "/k", "-TD1080", "h"]));
        assert_eq!(f, vec!["i", "T", "D"]);
    }

    #[test]
    fn ip_classes_and_cidr() {
        let c = |s: &str| {
            let c = IpClass::of(s.parse().unwrap());
            (c.loopback, c.private)
        };
        assert_eq!(c("127.0.0.1"), (true, false));
        assert_eq!(c("10.1.2.3"), (false, true));
        assert_eq!(c("8.8.8.8"), (false, false));
        assert_eq!(c("::1"), (true, false));
        assert_eq!(c("fd00::1"), (false, true));
        assert_eq!(c("::ffff:192.168.1.1"), (false, true));
        let p = Pattern::Ips(vec!["10.0.0.1".parse().unwrap()]);
        assert!(ip_match("::ffff:10.0.0.1".parse().unwrap(), Op::Eq, &p));
        assert!(!ip_match("10.0.0.2".parse().unwrap(), Op::In, &p));
        assert!(ip_match("10.0.0.2".parse().unwrap(), Op::Ne, &p));
        let (n, l) = super::super::expr::parse_cidr("10.0.0.0/8").unwrap();
        assert!(cidr_contains(n, l, "10.9.9.9".parse().unwrap()));
        assert!(cidr_contains(n, l, "::ffff:10.9.9.9".parse().unwrap()));
        assert!(!cidr_contains(n, l, "11.0.0.1".parse().unwrap()));
    }
}
