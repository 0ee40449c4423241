//! The OpenSSH client configuration an `ssh` process is about to read, read from the host at
//! exec: forwarding and proxy directives in it are as telling as `-R` on the command line, and
//! an agent can hide them there. Files are read through `/proc/PID/root` (the process's own
//! mount namespace: a container's files, not the host's) and `/proc/PID/cwd` for a relative
//! `-F`. What could not be read is said (`absent`, `unreadable: …`), not guessed.
//!
//! Which files (ssh(1), ssh_config(5), OpenSSH 9.x): `-F file` replaces both defaults (`-F none`
//! reads nothing); otherwise `~/.ssh/config` of the user, then `/etc/ssh/ssh_config`. `Include`
//! is followed (globs; relative paths from `~/.ssh` for the user file, `/etc/ssh` for the
//! system file). A directive counts when it is outside any block, in a `Host` block whose
//! patterns match the destination as typed, or in a `Match` block (marked `certain: false`:
//! its criteria are not evaluated here).

use std::path::{Path, PathBuf};

use crate::event::{ConfigFile, Directive, SshConfig};

/// Directives that forward ports or devices, or run a helper that carries the session
/// (ssh_config(5)), lower-cased.
pub const WATCHED: &[&str] = &[
    "remoteforward",
    "localforward",
    "dynamicforward",
    "tunnel",
    "tunneldevice",
    "gatewayports",
    "permitremoteopen",
    "proxycommand",
    "proxyjump",
    "localcommand",
    "permitlocalcommand",
];

/// Largest file read, files followed per exec, `Include` depth.
const MAX_FILE: u64 = 256 << 10;
const MAX_FILES: usize = 16;
const MAX_DEPTH: usize = 4;

/// Option letters of OpenSSH's ssh(1) that take an argument (ssh.c `getopt` string).
pub const SSH_OPTS_WITH_ARG: &str = "BbcDEeFIiJLlmOoPpQRSWwtyK";

/// `-F` value and destination host of an OpenSSH command line (options after the destination
/// count, as OpenSSH parses them).
pub fn target(argv: &[String]) -> (Option<String>, Option<String>) {
    let (mut file, mut dest) = (None, None);
    let mut i = 1;
    while i < argv.len() {
        let a = &argv[i];
        if a == "--" {
            if dest.is_none() {
                dest = argv.get(i + 1).cloned();
            }
            break;
        }
        if !a.starts_with('-') || a.len() < 2 {
            if dest.is_some() {
                break;
            }
            dest = Some(a.clone());
            i += 1;
            continue;
        }
        let chars: Vec<char> = a[1..].chars().collect();
        for (j, &c) in chars.iter().enumerate() {
            if SSH_OPTS_WITH_ARG.contains(c) {
                let rest: String = chars[j + 1..].iter().collect();
                let val = if rest.is_empty() {
                    i += 1;
                    argv.get(i).cloned().unwrap_or_default()
                } else {
                    rest
                };
                if c == 'F' {
                    file = Some(val);
                }
                break;
            }
        }
        i += 1;
    }
    let host = dest.map(|d| {
        let d = d.strip_prefix("ssh://").unwrap_or(&d).to_string();
        let d = d.rsplit('@').next().unwrap_or(&d).to_string();
        // ssh://host:port, [v6]:port
        let d = d.trim_start_matches('[');
        d.split([']', ':']).next().unwrap_or(d).to_string()
    });
    (file, host)
}

/// Whether an ssh_config `Host` pattern list matches `host` (`*`, `?`, `!negation`).
pub fn host_matches(patterns: &str, host: &str) -> bool {
    let mut any = false;
    for p in patterns.split([' ', '\t', ',']).filter(|p| !p.is_empty()) {
        let (neg, p) = p.strip_prefix('!').map_or((false, p), |q| (true, q));
        let ok = glob::Pattern::new(&p.to_ascii_lowercase())
            .is_ok_and(|g| g.matches(&host.to_ascii_lowercase()));
        if ok && neg {
            return false;
        }
        any |= ok && !neg;
    }
    any
}

/// The process's home directory: `/etc/passwd` inside its root, else `/root` for uid 0.
fn home(root: &Path, uid: u32) -> Option<String> {
    let pw = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    pw.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[5].to_string())
        })
        .or_else(|| (uid == 0).then(|| "/root".into()))
}

/// Reads a config file safely: opened non-blocking (a FIFO cannot stall the pipeline), checked
/// on the open descriptor to be a regular file (not `/dev/zero`), read up to [`MAX_FILE`].
fn read_bounded(p: &Path) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(p)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                "absent".to_string()
            } else {
                format!("unreadable: {e}")
            }
        })?;
    let m = f.metadata().map_err(|e| format!("unreadable: {e}"))?;
    if !m.file_type().is_file() {
        return Err("unreadable: not a regular file".into());
    }
    if m.len() > MAX_FILE {
        return Err("too_large".into());
    }
    let mut b = Vec::new();
    f.take(MAX_FILE + 1)
        .read_to_end(&mut b)
        .map_err(|e| format!("unreadable: {e}"))?;
    if b.len() as u64 > MAX_FILE {
        return Err("too_large".into());
    }
    Ok(String::from_utf8_lossy(&b).into_owned())
}

struct Reader<'a> {
    root: &'a Path,
    /// `/proc/PID`: `/dev/fd/N` and `/proc/self/…` of the process resolve here, not in the
    /// sensor's own /proc.
    proc_pid: PathBuf,
    host: String,
    out: SshConfig,
}

impl Reader<'_> {
    /// Reads `path` (as the process sees it); `base` resolves relative `Include`s.
    fn file(&mut self, path: &str, base: &str, depth: usize) {
        if self.out.files.len() >= MAX_FILES || depth > MAX_DEPTH {
            return;
        }
        let on_host = if let Some(n) = path.strip_prefix("/dev/fd/") {
            self.proc_pid.join("fd").join(n)
        } else if let Some(rest) = path.strip_prefix("/proc/self/") {
            self.proc_pid.join(rest)
        } else {
            self.root.join(path.trim_start_matches('/'))
        };
        let status = match read_bounded(&on_host) {
            Ok(text) => {
                self.out.files.push(ConfigFile {
                    path: path.to_string(),
                    status: "read".into(),
                });
                self.parse(path, &text, base, depth);
                return;
            }
            Err(status) => status,
        };
        self.out.files.push(ConfigFile {
            path: path.to_string(),
            status,
        });
    }

    fn parse(&mut self, path: &str, text: &str, base: &str, depth: usize) {
        // (block line, applies, certain)
        let mut block = (String::new(), true, true);
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = match line.find(|c: char| c == '=' || c.is_whitespace()) {
                Some(i) => (
                    &line[..i],
                    line[i..].trim_start_matches(|c: char| c == '=' || c.is_whitespace()),
                ),
                None => (line, ""),
            };
            let key = key.to_ascii_lowercase();
            match key.as_str() {
                "host" => block = (line.to_string(), host_matches(value, &self.host), true),
                "match" => {
                    let all = value.trim().eq_ignore_ascii_case("all");
                    block = (line.to_string(), true, all);
                }
                "include" if block.1 => {
                    for inc in value.split_whitespace() {
                        let inc = if inc.starts_with('/') {
                            inc.to_string()
                        } else if let Some(rest) = inc.strip_prefix("~/") {
                            format!("{}/{rest}", base.trim_end_matches("/.ssh"))
                        } else {
                            format!("{base}/{inc}")
                        };
                        if inc.contains("**") {
                            // The glob crate would walk whole trees; ssh's glob(3) would not.
                            self.out.files.push(ConfigFile {
                                path: inc,
                                status: "unreadable: recursive pattern not followed".into(),
                            });
                            continue;
                        }
                        let pat = self.root.join(inc.trim_start_matches('/'));
                        let mut hits: Vec<PathBuf> = glob::glob(&pat.to_string_lossy())
                            .map(|g| g.flatten().take(MAX_FILES).collect())
                            .unwrap_or_default();
                        hits.sort();
                        if hits.is_empty() {
                            self.file(&inc, base, depth + 1);
                        }
                        for h in hits {
                            let seen = h
                                .strip_prefix(self.root)
                                .map(|p| format!("/{}", p.display()))
                                .unwrap_or_else(|_| h.display().to_string());
                            self.file(&seen, base, depth + 1);
                        }
                    }
                }
                k if block.1 && WATCHED.contains(&k) => self.out.directives.push(Directive {
                    key,
                    value: value.chars().take(256).collect(),
                    source: format!("{path}:{}", n + 1),
                    block: block.0.clone(),
                    certain: block.2,
                }),
                _ => {}
            }
        }
    }
}

/// What `ssh` (pid `pid`, uid `uid`, command line `argv`) will read. `proc_root` is `/proc`
/// (tests pass a directory laid out like it).
pub fn read(proc_root: &Path, pid: u32, uid: u32, argv: &[String]) -> SshConfig {
    let proc_pid = proc_root.join(pid.to_string());
    let root = proc_pid.join("root");
    let (file, host) = target(argv);
    let mut r = Reader {
        root: &root,
        proc_pid: proc_pid.clone(),
        host: host.unwrap_or_default(),
        out: SshConfig {
            files: vec![],
            directives: vec![],
        },
    };
    match file.as_deref() {
        Some("none") => {}
        Some(f) => {
            let path = if f.starts_with('/') {
                f.to_string()
            } else {
                // Relative to the process's working directory.
                let cwd = std::fs::read_link(proc_root.join(pid.to_string()).join("cwd"))
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| "/".into());
                format!("{}/{f}", cwd.trim_end_matches('/'))
            };
            r.file(&path, "/etc/ssh", 0);
        }
        None => {
            match home(&root, uid) {
                Some(h) => {
                    let ssh_dir = format!("{}/.ssh", h.trim_end_matches('/'));
                    r.file(&format!("{ssh_dir}/config"), &ssh_dir, 0);
                }
                None => r.out.files.push(ConfigFile {
                    path: "~/.ssh/config".into(),
                    status: format!("unreadable: no home directory for uid {uid}"),
                }),
            }
            r.file("/etc/ssh/ssh_config", "/etc/ssh", 0);
        }
    }
    r.out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn target_of_a_command_line() {
        assert_eq!(
            target(&sv(&["ssh", "-F", "/c", "u@h", "-N"])),
            (Some("/c".into()), Some("h".into()))
        );
        assert_eq!(
            target(&sv(&["ssh", "h2", "-Fx"])),
            (Some("x".into()), Some("h2".into()))
        );
        assert_eq!(
            target(&sv(&["ssh", "ssh://u@h3:2222"])).1.as_deref(),
            Some("h3")
        );
        assert_eq!(target(&sv(&["ssh", "-p", "22"])).1, None);
    }

    #[test]
    fn host_patterns() {
        assert!(host_matches("*.example.com bastion", "bastion"));
        assert!(host_matches("*.example.com", "a.Example.com"));
        assert!(!host_matches("* !pool", "pool"));
        assert!(!host_matches("other", "h"));
    }

    /// A fake /proc with one process whose root holds an ssh config with includes and blocks.
    #[test]
    fn reads_what_ssh_would_read_and_says_what_it_could_not() {
        let dir = std::env::temp_dir().join(format!("sshcfg-{}", std::process::id()));
        let root = dir.join("77/root");
        std::fs::create_dir_all(root.join("home/u/.ssh/conf.d")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nu:x:1000:1000::/home/u:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            root.join("home/u/.ssh/config"),
            "# user\nInclude conf.d/*.conf\nHost other\n  RemoteForward 1 h:2\nHost tun*\n  RemoteForward 9000 127.0.0.1:22\n  User x\nMatch exec \"true\"\n  ProxyCommand nc %h %p\n",
        )
        .unwrap();
        std::fs::write(
            root.join("home/u/.ssh/conf.d/a.conf"),
            "DynamicForward=1080\n",
        )
        .unwrap();
        let c = read(&dir, 77, 1000, &sv(&["ssh", "u@tunnel", "-N"]));
        assert_eq!(
            c.files[0],
            ConfigFile {
                path: "/home/u/.ssh/config".into(),
                status: "read".into()
            }
        );
        assert_eq!(c.files[1].path, "/home/u/.ssh/conf.d/a.conf");
        assert_eq!(
            c.files[2],
            ConfigFile {
                path: "/etc/ssh/ssh_config".into(),
                status: "absent".into()
            }
        );
        let got: Vec<(&str, &str, bool)> = c
            .directives
            .iter()
            .map(|d| (d.key.as_str(), d.source.as_str(), d.certain))
            .collect();
        assert_eq!(
            got,
            vec![
                ("dynamicforward", "/home/u/.ssh/conf.d/a.conf:1", true),
                ("remoteforward", "/home/u/.ssh/config:6", true),
                ("proxycommand", "/home/u/.ssh/config:9", false),
            ]
        );
        assert_eq!(c.directives[1].block, "Host tun*");
        // A FIFO, a device and a recursive Include are refused without blocking or reading.
        let etc = root.join("etc/ssh");
        std::fs::create_dir_all(&etc).unwrap();
        let fifo =
            std::ffi::CString::new(etc.join("ssh_config").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid path in our temp dir.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        std::fs::write(root.join("home/u/.ssh/config"), "Include /**/x\n").unwrap();
        let c = read(&dir, 77, 1000, &sv(&["ssh", "h"]));
        assert_eq!(
            c.files[1].status,
            "unreadable: recursive pattern not followed"
        );
        assert_eq!(c.files[2].status, "unreadable: not a regular file");
        // -F none reads nothing; a process that is gone leaves every file unreadable/absent.
        assert!(read(&dir, 77, 0, &sv(&["ssh", "-F", "none", "h"]))
            .files
            .is_empty());
    }
}
