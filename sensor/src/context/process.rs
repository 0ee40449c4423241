//! The process table: built from `/proc` at start-up (processes older than the sensor) and kept
//! current from exec/fork/exit events. It gives every event the process's executable.

use std::{collections::VecDeque, fs, sync::Arc};

use crate::event::{Ancestor, Body, Event, IpClass, Outcome, SockType};

/// Per-process facts the rules can use beyond the event itself.
#[derive(Debug, Clone, Default)]
pub struct ProcFacts {
    pub connections: u64,
    pub external_connections: u64,
    pub gpu_session: bool,
    pub episode: Option<String>,
    /// Start (ts_ns) of the oldest still-open outbound TCP connection to an external address.
    pub oldest_external_start_ns: Option<u64>,
    /// The process (or the program it was forked from) sent an SSH identification string on an
    /// outbound connection: an SSH client, whatever its name.
    pub ssh_session: bool,
    /// That SSH client announced itself as OpenSSH or dropbear: its command line is theirs.
    pub ssh_openssh: bool,
    /// For a `dns_query`: distinct names this process asked for in the query's zone within
    /// [`DNS_WINDOW_NS`] (this one included).
    pub dns_zone_names: u32,
    /// Outbound TCP connections to external addresses it holds open now, trusted
    /// destinations (`workload.trusted_destinations`, by SNI/Host) left out.
    pub open_external: u64,
    /// The nearest trusted launcher (itself or an ancestor; see `context::workload`).
    pub launcher: Option<String>,
}

/// Window over which distinct names per zone are counted (Elastic's DNS-tunnel rule uses 5
/// minutes).
pub const DNS_WINDOW_NS: u64 = 300_000_000_000;
/// Zones remembered per process, and distinct names per zone (enough to pass any threshold).
const DNS_ZONES: usize = 32;
const DNS_NAMES: usize = 256;

/// Distinct DNS names asked per zone by one process, per window.
#[derive(Debug, Clone, Default)]
pub struct DnsZones {
    /// (zone, window start ts_ns, hashes of the distinct names).
    zones: Vec<(Arc<str>, u64, std::collections::HashSet<u64>)>,
}

impl DnsZones {
    /// Records `qname` in `zone` at `ts` and returns the distinct names in that zone's window.
    pub fn record(&mut self, zone: &str, qname: &str, ts: u64) -> u32 {
        use std::hash::{Hash, Hasher};
        // Fixed keys: the same name must hash the same way on every query.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        qname.hash(&mut hasher);
        let h = hasher.finish();
        let i = match self.zones.iter().position(|z| &*z.0 == zone) {
            Some(i) => i,
            None => {
                if self.zones.len() >= DNS_ZONES {
                    // Forget the zone whose window started first.
                    if let Some(old) = (0..self.zones.len()).min_by_key(|&i| self.zones[i].1) {
                        self.zones.swap_remove(old);
                    }
                }
                self.zones.push((Arc::from(zone), ts, Default::default()));
                self.zones.len() - 1
            }
        };
        let z = &mut self.zones[i];
        if ts.saturating_sub(z.1) > DNS_WINDOW_NS {
            z.1 = ts;
            z.2.clear();
        }
        if z.2.len() < DNS_NAMES {
            z.2.insert(h);
        }
        z.2.len() as u32
    }
}

/// Exited processes kept so that descendants' lineage still resolves through them.
const TOMBSTONES: usize = 8192;
/// Longest ancestor chain reported.
const MAX_LINEAGE: usize = 64;

#[derive(Debug, Clone, Default)]
pub struct Proc {
    pub ppid: u32,
    /// When the process started (CLOCK_BOOTTIME ns: its fork event, or /proc's starttime for
    /// processes older than the sensor). With the pid it identifies the process: pids are
    /// reused, (pid, start) pairs are not.
    pub start_ns: u64,
    pub exe: Option<Arc<str>>,
    pub argv: Arc<[String]>,
    pub exited: bool,
    /// Outbound connects (ok / in progress / via io_uring), and those to external addresses.
    pub connections: u64,
    pub external_connections: u64,
    /// Agent-episode tag (config `context.episode_env`), inherited by children.
    pub episode: Option<Arc<str>>,
    /// Open outbound TCP connections, oldest first.
    pub open_conns: Vec<OpenConn>,
    /// The nearest trusted launcher: this process's program, else inherited at fork.
    pub launcher: Option<Arc<str>>,
    /// Sent an SSH identification string (inherited by fork, reset by exec); of OpenSSH or
    /// dropbear.
    pub ssh_session: bool,
    pub ssh_openssh: bool,
    /// DNS names asked, per zone (allocated on the first query).
    pub dns: Option<Box<DnsZones>>,
    /// The count [`DnsZones::record`] gave for the process's latest query.
    pub dns_last: u32,
}

/// Open connections remembered per process (the oldest are dropped beyond it).
const MAX_OPEN_CONNS: usize = 256;

/// An open outbound TCP connection.
#[derive(Debug, Clone)]
pub struct OpenConn {
    pub id: Arc<str>,
    pub start_ns: u64,
    pub external: bool,
    pub dst: Option<(std::net::IpAddr, u16)>,
    /// Named (TLS SNI / HTTP Host) by its first bytes.
    pub named: bool,
    /// The name is a trusted destination: not counted as external egress.
    pub trusted: bool,
}

impl OpenConn {
    fn untrusted_external(&self) -> bool {
        self.external && !self.trusted
    }
}

#[derive(Debug, Default)]
pub struct ProcTable {
    /// By pid; hashed with foldhash (looked up several times per event; keys are kernel pids).
    procs: foldhash::HashMap<u32, Proc>,
    exited: VecDeque<u32>,
    /// Environment variables whose value tags an agent episode (read at exec time).
    episode_env: Vec<String>,
    /// Reading /proc for the live host (not a replay or rule examples): `ssh` execs get the
    /// configuration they will read.
    live: bool,
    workload: Arc<super::workload::WorkloadConfig>,
    /// `workload.tree_boundaries`, compiled.
    boundaries: Vec<glob::Pattern>,
    /// The sensor and its ancestors (live only): whatever they started is not one job.
    host_pids: std::collections::HashSet<u32>,
    /// TCP ports login services (`workload.login_services`) listen on: from their listen
    /// events, and at start-up from /proc (their sockets in /proc/net/tcp{,6}).
    login_ports: std::collections::HashSet<u16>,
}

/// Ports of listening TCP sockets (state 0A) in `/proc/net/tcp{,6}` text whose inode is in
/// `inodes` (proc(5): `sl local_address rem_address st … inode`).
fn listening_ports(table: &str, inodes: &std::collections::HashSet<u64>) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                return None;
            }
            let inode: u64 = f[9].parse().ok()?;
            if !inodes.contains(&inode) {
                return None;
            }
            u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()
        })
        .collect()
}

/// Reads the first of `names` set in /proc/PID/environ.
fn episode_from_environ(pid: u32, names: &[String]) -> Option<Arc<str>> {
    let env = fs::read(format!("/proc/{pid}/environ")).ok()?;
    for kv in env.split(|&b| b == 0) {
        let kv = String::from_utf8_lossy(kv);
        if let Some((k, v)) = kv.split_once('=') {
            if names.iter().any(|n| n == k) && !v.is_empty() {
                return Some(Arc::from(v));
            }
        }
    }
    None
}

/// Parses the ppid (field 4) and starttime (field 22, clock ticks since boot) out of
/// `/proc/PID/stat` (proc(5); the comm in field 2 may contain spaces and parentheses, so split
/// after the last ')').
fn stat_ppid_start(stat: &str) -> Option<(u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let ppid = f.nth(1)?.parse().ok()?;
    // Fields 3.. follow the comm; starttime is field 22, the 20th after it.
    let start_ticks: u64 = f.nth(17)?.parse().ok()?;
    Some((ppid, start_ticks))
}

/// Clock ticks per second of /proc's times (`sysconf(_SC_CLK_TCK)`).
fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

impl ProcTable {
    /// Reads every process in `/proc`. Unreadable entries (races with exit) are skipped.
    pub fn scan() -> ProcTable {
        let mut t = ProcTable {
            live: true,
            ..ProcTable::default()
        };
        let tck = clk_tck();
        let Ok(dir) = fs::read_dir("/proc") else {
            return t;
        };
        for ent in dir.flatten() {
            let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let base = ent.path();
            let Some((ppid, start_ticks)) = fs::read_to_string(base.join("stat"))
                .ok()
                .and_then(|s| stat_ppid_start(&s))
            else {
                continue;
            };
            let exe = fs::read_link(base.join("exe"))
                .ok()
                .map(|p| Arc::from(p.to_string_lossy().as_ref()));
            let argv: Vec<String> = fs::read(base.join("cmdline"))
                .map(|b| crate::decode::split_argv(&b))
                .unwrap_or_default();
            t.procs.insert(
                pid,
                Proc {
                    ppid,
                    start_ns: start_ticks.saturating_mul(1_000_000_000) / tck,
                    exe,
                    argv: argv.into(),
                    ..Proc::default()
                },
            );
        }
        t
    }

    #[cfg(test)]
    pub fn get(&self, pid: u32) -> Option<&Proc> {
        self.procs.get(&pid)
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    pub fn set_episode_env(&mut self, names: Vec<String>) {
        self.episode_env = names;
    }

    /// Sets the workload knowledge; live tables also take the sensor's own ancestry as tree
    /// boundaries.
    pub fn set_workload(&mut self, w: super::workload::WorkloadConfig) {
        self.boundaries = w
            .tree_boundaries
            .iter()
            .filter_map(|g| glob::Pattern::new(g).ok())
            .collect();
        self.workload = Arc::new(w);
        if self.live {
            self.scan_login_ports();
            let mut cur = std::process::id();
            while cur > 1 && self.host_pids.insert(cur) {
                cur = self.procs.get(&cur).map_or(0, |p| p.ppid);
            }
        }
    }

    pub fn workload(&self) -> &super::workload::WorkloadConfig {
        &self.workload
    }

    /// Whether a login service listens on TCP `port` here.
    pub fn login_port(&self, port: u16) -> bool {
        self.login_ports.contains(&port)
    }

    /// Finds the ports the running login services listen on (live start-up): their socket
    /// inodes from /proc/PID/fd, matched against /proc/net/tcp{,6}.
    fn scan_login_ports(&mut self) {
        let mut inodes = std::collections::HashSet::new();
        for (pid, p) in &self.procs {
            if !p
                .exe
                .as_deref()
                .is_some_and(|e| self.workload.is_login_service(e))
            {
                continue;
            }
            let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                if let Ok(l) = fs::read_link(fd.path()) {
                    let l = l.to_string_lossy();
                    if let Some(n) = l.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                        if let Ok(n) = n.parse() {
                            inodes.insert(n);
                        }
                    }
                }
            }
        }
        for t in ["/proc/net/tcp", "/proc/net/tcp6"] {
            if let Ok(text) = fs::read_to_string(t) {
                self.login_ports.extend(listening_ports(&text, &inodes));
            }
        }
    }

    /// Whether the children of `pid` start process trees of their own.
    fn is_boundary(&self, pid: u32, p: &Proc) -> bool {
        pid <= 1
            || self.host_pids.contains(&pid)
            || p.exe.as_deref().is_some_and(|e| {
                let n = e.rsplit('/').next().unwrap_or(e);
                self.boundaries.iter().any(|g| g.matches(n))
            })
    }

    /// The root of `pid`'s process tree: its oldest ancestor whose parent is init, a session,
    /// service or container manager (`workload.tree_boundaries`), the sensor's own ancestry, or
    /// unknown. Identified by (pid, start) like any process.
    pub fn tree_root(&self, pid: u32) -> (u32, u64) {
        let mut cur = pid;
        for _ in 0..MAX_LINEAGE {
            let Some(p) = self.procs.get(&cur) else { break };
            let parent = p.ppid;
            match self.procs.get(&parent) {
                Some(pp) if parent != cur && !self.is_boundary(parent, pp) => cur = parent,
                _ => break,
            }
        }
        self.key(cur)
    }

    /// Records `pid` (with `exe`) and its ancestors where the table does not know them yet
    /// (rule examples, replay of streams recorded without their process history).
    pub fn add_lineage(&mut self, pid: u32, exe: Option<&str>, lineage: &[Ancestor]) {
        let mut child = pid;
        let mut child_exe = exe.map(str::to_string);
        for a in lineage.iter().chain(std::iter::once(&Ancestor {
            pid: 0,
            exe: None,
            argv: vec![],
        })) {
            let e = self.procs.entry(child).or_default();
            if e.exe.is_none() {
                e.exe = child_exe.as_deref().map(Arc::from);
            }
            if e.ppid == 0 {
                e.ppid = a.pid;
            }
            if a.pid == 0 {
                break;
            }
            child = a.pid;
            child_exe = a.exe.clone();
            let pa = self.procs.entry(a.pid).or_default();
            if pa.argv.is_empty() {
                pa.argv = a.argv.clone().into();
            }
        }
    }

    /// Facts the rules use about `pid`.
    /// Open outbound TCP connections of `pid` to external addresses.
    pub fn open_external(&self, pid: u32) -> usize {
        self.procs.get(&pid).map_or(0, |p| {
            p.open_conns
                .iter()
                .filter(|c| c.untrusted_external())
                .count()
        })
    }

    pub fn facts(&self, pid: u32) -> ProcFacts {
        self.procs
            .get(&pid)
            .map_or_else(Default::default, |p| ProcFacts {
                connections: p.connections,
                external_connections: p.external_connections,
                gpu_session: false,
                episode: p.episode.as_deref().map(str::to_string),
                oldest_external_start_ns: p
                    .open_conns
                    .iter()
                    .find(|c| c.untrusted_external())
                    .map(|c| c.start_ns),
                ssh_session: p.ssh_session,
                ssh_openssh: p.ssh_openssh,
                dns_zone_names: p.dns_last,
                open_external: p
                    .open_conns
                    .iter()
                    .filter(|c| c.untrusted_external())
                    .count() as u64,
                launcher: p.launcher.as_deref().map(str::to_string),
            })
    }

    /// The identity of the process now running as `pid`: (pid, start). Keys per-process state
    /// (rule sequences and thresholds) so a reused pid never inherits a dead process's state.
    pub fn key(&self, pid: u32) -> (u32, u64) {
        (pid, self.procs.get(&pid).map_or(0, |p| p.start_ns))
    }

    /// The executable and arguments of `pid`, when known.
    pub fn info(&self, pid: u32) -> (Option<String>, Vec<String>) {
        self.procs.get(&pid).map_or((None, vec![]), |p| {
            (p.exe.as_deref().map(str::to_string), p.argv.to_vec())
        })
    }

    /// The episode tag of `pid`, when one was set.
    pub fn episode(&self, pid: u32) -> Option<&str> {
        self.procs.get(&pid).and_then(|p| p.episode.as_deref())
    }

    pub fn argv(&self, pid: u32) -> Vec<String> {
        self.procs
            .get(&pid)
            .map(|p| p.argv.to_vec())
            .unwrap_or_default()
    }

    /// Ancestors of `pid` from its parent up to init (pid 1) or the first unknown process.
    /// Parents are the ones recorded at fork/exec time, so later re-parenting (`setsid`, `ssh
    /// -f`, `nohup` and a dying parent) does not hide the real ancestry.
    pub fn lineage(&self, pid: u32) -> Vec<Ancestor> {
        let mut out = vec![];
        let mut cur = self.procs.get(&pid).map(|p| p.ppid).unwrap_or(0);
        while cur != 0 && out.len() < MAX_LINEAGE {
            let Some(p) = self.procs.get(&cur) else {
                out.push(Ancestor {
                    pid: cur,
                    exe: None,
                    argv: vec![],
                });
                break;
            };
            out.push(Ancestor {
                pid: cur,
                exe: p.exe.as_deref().map(str::to_string),
                argv: p.argv.to_vec(),
            });
            if cur == 1 || p.ppid == cur {
                break;
            }
            cur = p.ppid;
        }
        out
    }

    /// Updates the table from `ev` and fills `ev.exe`.
    pub fn apply(&mut self, ev: &mut Event) {
        match &mut ev.body {
            Body::Exec(x) => {
                // fexecve/execveat(AT_EMPTY_PATH) name the file `/dev/fd/N`; a memfd or a deleted
                // file has no usable path: /proc names what runs (`/memfd:x (deleted)`).
                let via_fd = x.filename.starts_with("/dev/fd/") || x.filename.starts_with("/proc/");
                let exe: Arc<str> = if x.filename.starts_with('/') && !via_fd && !x.exe_unlinked {
                    Arc::from(x.filename.as_str())
                } else {
                    // A relative path: the kernel resolved it against the cwd; ask /proc.
                    fs::read_link(format!("/proc/{}/exe", ev.pid))
                        .map(|p| Arc::from(p.to_string_lossy().as_ref()))
                        .unwrap_or_else(|_| Arc::from(x.filename.as_str()))
                };
                let p = self.procs.entry(ev.pid).or_insert_with(|| Proc {
                    ppid: ev.ppid,
                    start_ns: ev.ts_ns,
                    ..Proc::default()
                });
                // Keep the parent recorded at fork time: it is the real ancestor even when the
                // process was re-parented before this exec.
                if p.exited || p.ppid == 0 {
                    p.ppid = ev.ppid;
                }
                p.exited = false;
                p.exe = Some(exe.clone());
                // A new program: its sessions start now (a fork after exec inherits them).
                p.connections = 0;
                p.external_connections = 0;
                p.ssh_session = false;
                p.ssh_openssh = false;
                if !self.episode_env.is_empty() {
                    if let Some(tag) = episode_from_environ(ev.pid, &self.episode_env) {
                        p.episode = Some(tag);
                    }
                }
                p.argv = x.argv.clone().into();
                // A launcher verified now (live: path and ownership through the process's
                // root), or as recorded (replay).
                if self.live && x.launcher.is_none() {
                    if let Some((name, path)) = self.workload.claimed_launcher(&exe, &x.argv) {
                        let root = std::path::PathBuf::from(format!("/proc/{}/root", ev.pid));
                        if self.workload.trusted_path(&root, &path) {
                            x.launcher = Some(name);
                        }
                    }
                }
                if let Some(l) = &x.launcher {
                    p.launcher = Some(Arc::from(l.as_str()));
                }
                if self.live && x.ssh_config.is_none() && exe.rsplit('/').next() == Some("ssh") {
                    x.ssh_config = Some(super::ssh_config::read(
                        std::path::Path::new("/proc"),
                        ev.pid,
                        ev.uid,
                        &x.argv,
                    ));
                }
                ev.exe = Some(exe.to_string());
            }
            Body::Fork(f) => {
                let parent = self.procs.get(&ev.pid).cloned().unwrap_or_default();
                ev.exe = parent.exe.as_deref().map(str::to_string);
                let child = Proc {
                    ppid: ev.pid,
                    start_ns: ev.ts_ns,
                    exe: parent.exe,
                    argv: parent.argv,
                    episode: parent.episode,
                    // A forked child carries on the parent's sessions (ssh -f forks after
                    // connecting; the child then serves the forwards).
                    connections: parent.connections,
                    external_connections: parent.external_connections,
                    ssh_session: parent.ssh_session,
                    ssh_openssh: parent.ssh_openssh,
                    launcher: parent.launcher,
                    ..Proc::default()
                };
                self.procs.insert(f.child_pid, child);
            }
            Body::Exit(_) => {
                if let Some(p) = self.procs.get_mut(&ev.pid) {
                    p.exited = true;
                    ev.exe = p.exe.as_deref().map(str::to_string);
                    self.exited.push_back(ev.pid);
                    while self.exited.len() > TOMBSTONES {
                        let old = self.exited.pop_front().unwrap();
                        if self.procs.get(&old).is_some_and(|p| p.exited) {
                            self.procs.remove(&old);
                        }
                    }
                }
            }
            Body::Connect(n) => {
                if let Some(p) = self.procs.get_mut(&ev.pid) {
                    // TCP sessions only: UDP "connects" (resolver probes, getaddrinfo's
                    // AI_ADDRCONFIG checks) open no session.
                    if n.result != Outcome::Error && n.sock_type == SockType::Stream {
                        p.connections += 1;
                        let external = n.dst_ip.is_some_and(|ip| IpClass::of(ip).external());
                        if external {
                            p.external_connections += 1;
                        }
                        if let Some(id) = &n.conn_id {
                            if p.open_conns.len() >= MAX_OPEN_CONNS {
                                p.open_conns.remove(0);
                            }
                            p.open_conns.push(OpenConn {
                                id: Arc::from(id.as_str()),
                                start_ns: ev.ts_ns,
                                external,
                                dst: n.dst_ip.zip(n.dst_port),
                                named: false,
                                trusted: false,
                            });
                        }
                    }
                    if let Some(e) = p.exe.as_deref() {
                        ev.exe = Some(e.to_string());
                    }
                }
            }
            Body::Listen(n) => {
                if let Some(p) = self.procs.get(&ev.pid) {
                    if let (Some(e), Some(port)) = (p.exe.as_deref(), n.local_port) {
                        if self.workload.is_login_service(e) {
                            self.login_ports.insert(port);
                        }
                    }
                    if let Some(e) = p.exe.as_deref() {
                        ev.exe = Some(e.to_string());
                    }
                }
            }
            Body::TcpClose(n) => {
                if let Some(p) = self.procs.get_mut(&ev.pid) {
                    if let Some(id) = &n.conn_id {
                        if let Some(i) = p.open_conns.iter().position(|c| &*c.id == id.as_str()) {
                            let c = p.open_conns.remove(i);
                            n.duration_s = Some(ev.ts_ns.saturating_sub(c.start_ns) as f64 / 1e9);
                        }
                    }
                    if let Some(e) = p.exe.as_deref() {
                        ev.exe = Some(e.to_string());
                    }
                }
            }
            Body::NetPayload(n) => {
                if let Some(p) = self.procs.get_mut(&ev.pid) {
                    if n.app.proto == crate::event::AppProto::Ssh {
                        p.ssh_session = true;
                        let b = n.app.ssh_banner.as_deref().unwrap_or("");
                        if b.starts_with("SSH-2.0-OpenSSH") || b.starts_with("SSH-2.0-dropbear") {
                            p.ssh_openssh = true;
                        }
                    }
                    // The connection's name (SNI / Host): a trusted destination's connection
                    // is not external egress.
                    let name = n.app.sni.as_deref().or(n.app.http_host.as_deref());
                    if let Some(c) = p
                        .open_conns
                        .iter_mut()
                        .rev()
                        .find(|c| !c.named && c.dst == Some((n.dst_ip, n.dst_port)))
                    {
                        c.named = true;
                        c.trusted = name.is_some_and(|h| self.workload.trusted_destination(h));
                    }
                    if let Some(e) = p.exe.as_deref() {
                        ev.exe = Some(e.to_string());
                    }
                }
            }
            Body::DnsQuery(q) => {
                if let Some(p) = self.procs.get_mut(&ev.pid) {
                    let zone = crate::proto::zone(&q.qname);
                    p.dns_last = p
                        .dns
                        .get_or_insert_with(Default::default)
                        .record(zone, &q.qname, ev.ts_ns);
                    if let Some(e) = p.exe.as_deref() {
                        ev.exe = Some(e.to_string());
                    }
                }
            }
            _ => {
                if let Some(e) = self.procs.get(&ev.pid).and_then(|p| p.exe.as_deref()) {
                    ev.exe = Some(e.to_string());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Exec, Exit, Fork};

    fn ev(pid: u32, body: Body) -> Event {
        Event {
            ts: String::new(),
            ts_ns: 0,
            pid,
            tid: pid,
            ppid: 1,
            uid: 0,
            gid: 0,
            comm: "x".into(),
            cgroup_id: 1,
            mntns: 0,
            exe: None,
            container: None,
            body,
        }
    }

    #[test]
    fn stat_ppid_with_odd_comm() {
        assert_eq!(
            stat_ppid_start(
                "42 (a b) c)) S 7 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 12345 99"
            ),
            Some((7, 12345))
        );
        assert_eq!(stat_ppid_start("42 (x) S 7 42 42 0"), None);
        assert_eq!(stat_ppid_start("garbage"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(stat_ppid_start(&own).is_some_and(|(_, t)| t > 0));
    }

    #[test]
    fn fork_inherits_exec_replaces_exit_removes() {
        let mut t = ProcTable::default();
        let mut e = ev(
            100,
            Body::Exec(Exec {
                filename: "/usr/bin/python3".into(),
                argv: vec!["python3".into()],
                args_truncated: false,
                args_size: 8,
                filename_truncated: false,
                args_unreadable: false,
                exe_unlinked: false,
                stdio: None,
                ssh_config: None,
                launcher: None,
            }),
        );
        t.apply(&mut e);
        assert_eq!(e.exe.as_deref(), Some("/usr/bin/python3"));
        let mut f = ev(100, Body::Fork(Fork { child_pid: 101 }));
        t.apply(&mut f);
        assert_eq!(t.get(101).unwrap().ppid, 100);
        assert_eq!(t.get(101).unwrap().exe.as_deref(), Some("/usr/bin/python3"));
        let mut x = ev(
            101,
            Body::Exit(Exit {
                exit_code: 0,
                exit_status: Some(0),
                signal: None,
            }),
        );
        t.apply(&mut x);
        assert_eq!(x.exe.as_deref(), Some("/usr/bin/python3"));
        assert!(
            t.get(101).unwrap().exited,
            "kept as a tombstone for lineage"
        );
    }

    #[test]
    fn lineage_survives_reparenting_and_parent_exit() {
        let mut t = ProcTable::default();
        let exec = |pid, ppid, exe: &str| {
            let mut e = ev(
                pid,
                Body::Exec(Exec {
                    filename: exe.into(),
                    argv: vec![exe.into()],
                    args_truncated: false,
                    args_size: 1,
                    filename_truncated: false,
                    args_unreadable: false,
                    exe_unlinked: false,
                    stdio: None,
                    ssh_config: None,
                    launcher: None,
                }),
            );
            e.ppid = ppid;
            e
        };
        t.apply(&mut exec(10, 1, "/usr/bin/python3"));
        t.apply(&mut ev(10, Body::Fork(Fork { child_pid: 11 })));
        t.apply(&mut exec(11, 10, "/bin/sh"));
        t.apply(&mut ev(11, Body::Fork(Fork { child_pid: 12 })));
        // sh exits; ssh (12) is re-parented to init before it execs.
        t.apply(&mut ev(
            11,
            Body::Exit(Exit {
                exit_code: 0,
                exit_status: Some(0),
                signal: None,
            }),
        ));
        t.apply(&mut exec(12, 1, "/usr/bin/ssh"));
        let l = t.lineage(12);
        let pids: Vec<u32> = l.iter().map(|a| a.pid).collect();
        assert_eq!(pids, vec![11, 10, 1]);
        assert_eq!(l[0].exe.as_deref(), Some("/bin/sh"));
        assert_eq!(l[1].exe.as_deref(), Some("/usr/bin/python3"));
    }

    #[test]
    fn login_ports_from_proc_net_tcp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0 100 0 0 10 0\n\
   1: 0100007F:08AF 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2222 1 0 100 0 0 10 0\n\
   2: 0100007F:9C40 0100007F:0016 01 00000000:00000000 00:00000000 00000000     0        0 1111 1 0 100 0 0 10 0\n";
        let inodes = [1111u64].into_iter().collect();
        // Only the listening socket of the login service: not another program's, not a
        // connected socket with the same inode number.
        assert_eq!(listening_ports(table, &inodes), vec![22]);
    }

    #[test]
    fn trees_stop_at_boundaries_and_trusted_connections_are_not_egress() {
        let mut t = ProcTable::default();
        t.set_workload(crate::context::workload::WorkloadConfig::default());
        // init → sshd → bash → python3 (agent) → bash (tool)
        let chain = [
            (1, 10, "/usr/sbin/sshd"),
            (10, 11, "/usr/bin/bash"),
            (11, 12, "/usr/bin/python3"),
            (12, 13, "/usr/bin/bash"),
        ];
        for (pp, pid, exe) in chain {
            let mut f = ev(pp, Body::Fork(crate::event::Fork { child_pid: pid }));
            t.apply(&mut f);
            let mut x = ev(
                pid,
                Body::Exec(Exec {
                    filename: exe.into(),
                    argv: vec![exe.into()],
                    args_truncated: false,
                    args_size: 4,
                    filename_truncated: false,
                    args_unreadable: false,
                    exe_unlinked: false,
                    stdio: None,
                    ssh_config: None,
                    launcher: None,
                }),
            );
            x.ppid = pp;
            t.apply(&mut x);
        }
        // sshd is a boundary: the login shell roots the tree.
        assert_eq!(t.tree_root(13).0, 11);
        assert_eq!(t.tree_root(11).0, 11);
        let net = |ip: &str, id: &str| crate::event::Net {
            family: crate::event::Family::Inet,
            sock_type: SockType::Stream,
            protocol: None,
            dst_ip: Some(ip.parse().unwrap()),
            dst_port: Some(443),
            local_ip: None,
            local_port: None,
            fd: Some(3),
            result: Outcome::Ok,
            errno: None,
            error: None,
            via: crate::event::Via::Syscall,
            conn_id: Some(id.into()),
            duration_s: None,
        };
        t.apply(&mut ev(12, Body::Connect(net("198.51.100.1", "a"))));
        t.apply(&mut ev(12, Body::Connect(net("198.51.100.2", "b"))));
        assert_eq!(t.facts(12).open_external, 2);
        let mut p = crate::event::NetPayload {
            fd: -1,
            family: crate::event::Family::Inet,
            dst_ip: "198.51.100.2".parse().unwrap(),
            dst_port: 443,
            local_port: 40000,
            transport: crate::event::Transport::Tcp,
            len: 300,
            data: String::new(),
            text: String::new(),
            owner_only: false,
            app: Default::default(),
        };
        p.app.sni = Some("api.wandb.ai".into());
        t.apply(&mut ev(12, Body::NetPayload(p)));
        let f = t.facts(12);
        assert_eq!(f.open_external, 1, "the tracker is trusted by its TLS name");
        // Closed: no longer counted.
        t.apply(&mut ev(12, Body::TcpClose(net("198.51.100.1", "a"))));
        assert_eq!(t.facts(12).open_external, 0);
        assert_eq!(
            t.facts(12).external_connections,
            2,
            "the count since exec stays"
        );
    }

    #[test]
    fn scan_sees_this_process() {
        let t = ProcTable::scan();
        let me = t.get(std::process::id()).expect("own pid in /proc scan");
        assert!(me.exe.is_some());
        assert!(!me.argv.is_empty());
    }
}
