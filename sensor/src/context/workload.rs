//! What the node's ordinary work is: training launchers, notebooks and dashboards (trusted by
//! the path and ownership of the program they run, never by its name), the destinations an
//! ordinary job talks to (experiment trackers, model hubs, package indexes: by TLS SNI or HTTP
//! Host), and where a process tree starts (config `[workload]`).

use std::{os::unix::fs::MetadataExt, path::Path};

use serde::Deserialize;

use crate::rules::fields::{basename, interpreter_program, interpreter_script};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadConfig {
    /// Programs (basename of the executable or of the script an interpreter runs) that start
    /// ordinary GPU work. Trusted only when the file lies under `system_dirs` and it and its
    /// directory are owned by root and writable by nobody else (checked through
    /// /proc/PID/root, so inside the container that runs it).
    pub launchers: Vec<String>,
    /// Python modules run with `-m` that are launchers (the interpreter must pass the same
    /// path and ownership check).
    pub launcher_modules: Vec<String>,
    /// Directories whose root-owned programs can be trusted launchers.
    pub system_dirs: Vec<String>,
    /// Destinations (TLS SNI / HTTP Host, this name or a subdomain) that ordinary jobs talk to
    /// for a long time: their connections do not count as external egress.
    pub trusted_destinations: Vec<String>,
    /// Programs (basename globs) whose children each start a process tree of their own: a
    /// session, service or container manager is not part of the work it starts. The sensor's
    /// own ancestors are boundaries too.
    pub tree_boundaries: Vec<String>,
    /// Programs (basenames) that serve logins: the ports they listen on are login services
    /// (`dst.login_service`): a relay into one exposes a shell.
    pub login_services: Vec<String>,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        WorkloadConfig {
            launchers: v(&[
                "torchrun",
                "deepspeed",
                "accelerate",
                "ray",
                "raylet",
                "mpirun",
                "mpiexec",
                "orted",
                "prted",
                "srun",
                "slurmstepd",
                "jupyter",
                "jupyter-lab",
                "jupyter-notebook",
                "jupyter-server",
                "tensorboard",
                "vllm",
                "text-generation-launcher",
                "tritonserver",
            ]),
            launcher_modules: v(&[
                "torch.distributed.run",
                "torch.distributed.launch",
                "deepspeed.launcher.runner",
                "accelerate.commands.launch",
                "jupyterlab",
                "notebook",
                "jupyter_server",
                "ipykernel_launcher",
                "tensorboard.main",
                "vllm.entrypoints.openai.api_server",
            ]),
            system_dirs: v(&[
                "/usr/bin/",
                "/usr/sbin/",
                "/usr/local/bin/",
                "/usr/local/sbin/",
                "/usr/lib/",
                "/usr/local/lib/",
                "/bin/",
                "/sbin/",
                "/opt/",
            ]),
            trusted_destinations: v(&[
                "wandb.ai",
                "wandb.com",
                "comet.com",
                "comet.ml",
                "neptune.ai",
                "mlflow.org",
                "huggingface.co",
                "hf.co",
                "pypi.org",
                "pythonhosted.org",
                "github.com",
                "githubusercontent.com",
                "pytorch.org",
                "nvidia.com",
                "nvcr.io",
                "ngc.nvidia.com",
                "anaconda.org",
                "conda.io",
            ]),
            tree_boundaries: v(&[
                "systemd",
                "init",
                "sshd",
                "sshd-session",
                "login",
                "su",
                "sudo",
                "cron",
                "crond",
                "atd",
                "tmux*",
                "screen",
                "containerd",
                "containerd-shim*",
                "conmon",
                "runc",
                "crun",
                "dockerd",
                "kubelet",
                "agetty",
            ]),
            login_services: v(&[
                "sshd",
                "sshd-session",
                "dropbear",
                "dropbearmulti",
                "xrdp",
                "Xvnc",
                "x11vnc",
                "telnetd",
                "in.telnetd",
            ]),
        }
    }
}

impl WorkloadConfig {
    pub fn check(&self) -> Result<(), String> {
        for g in &self.tree_boundaries {
            glob::Pattern::new(g).map_err(|e| format!("workload.tree_boundaries: {g:?}: {e}"))?;
        }
        for d in &self.system_dirs {
            if !d.starts_with('/') || !d.ends_with('/') {
                return Err(format!(
                    "workload.system_dirs: {d:?} must be an absolute directory ending in /"
                ));
            }
        }
        Ok(())
    }

    pub fn is_login_service(&self, exe: &str) -> bool {
        let n = basename(exe);
        self.login_services.iter().any(|l| l == n)
    }

    /// Whether `name` (a TLS SNI or HTTP Host, any case, maybe with a port) is a trusted
    /// destination or a subdomain of one.
    pub fn trusted_destination(&self, name: &str) -> bool {
        let n = name.rsplit_once(':').map_or(name, |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                name
            }
        });
        let n = n.trim_end_matches('.').to_ascii_lowercase();
        self.trusted_destinations.iter().any(|d| {
            let d = d.trim_start_matches('.').to_ascii_lowercase();
            n == d || n.ends_with(&format!(".{d}"))
        })
    }

    /// The launcher a program claims to be, and the file that must pass the ownership check:
    /// (name, path). `exe` is the executable, `argv` its arguments.
    pub fn claimed_launcher(&self, exe: &str, argv: &[String]) -> Option<(String, String)> {
        let name = basename(exe);
        if self.launchers.iter().any(|l| l == name) {
            return Some((name.to_string(), exe.to_string()));
        }
        interpreter_program(name, argv)?;
        if name.starts_with("python") {
            // `python -m module` (or `-mmodule`): the module is the program.
            let mut it = argv.iter().skip(1);
            while let Some(a) = it.next() {
                let m = match a.as_str() {
                    "-m" => it.next().map(String::as_str),
                    x if x.starts_with("-m") => Some(&x[2..]),
                    x if !x.starts_with('-') => break,
                    _ => continue,
                };
                return m
                    .filter(|m| self.launcher_modules.iter().any(|l| l == m))
                    .map(|m| (m.to_string(), exe.to_string()));
            }
        }
        let script = interpreter_script(name, argv)?;
        let sname = basename(&script);
        if self.launchers.iter().any(|l| l == sname) && script.starts_with('/') {
            return Some((sname.to_string(), script));
        }
        None
    }

    /// `path` lies under a system directory and, seen from `root` (a process's `/proc/PID/root`),
    /// it and its directory are root-owned and writable by no one else.
    pub fn trusted_path(&self, root: &Path, path: &str) -> bool {
        if !self
            .system_dirs
            .iter()
            .any(|d| path.starts_with(d.as_str()))
            || path.contains("/../")
        {
            return false;
        }
        let rel = path.trim_start_matches('/');
        let file = root.join(rel);
        let ok =
            |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0);
        ok(&file) && file.parent().is_some_and(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn launchers_by_exe_script_and_module() {
        let w = WorkloadConfig::default();
        assert_eq!(
            w.claimed_launcher("/usr/local/bin/torchrun", &argv(&["torchrun", "x.py"])),
            Some(("torchrun".into(), "/usr/local/bin/torchrun".into()))
        );
        assert_eq!(
            w.claimed_launcher(
                "/usr/bin/python3.11",
                &argv(&[
                    "python3",
                    "/usr/local/bin/torchrun",
                    "--nproc_per_node=2",
                    "t.py"
                ])
            ),
            Some(("torchrun".into(), "/usr/local/bin/torchrun".into()))
        );
        assert_eq!(
            w.claimed_launcher(
                "/usr/bin/python3.11",
                &argv(&["python3", "-m", "torch.distributed.run", "t.py"])
            ),
            Some(("torch.distributed.run".into(), "/usr/bin/python3.11".into()))
        );
        assert_eq!(
            w.claimed_launcher("/usr/bin/python3", &argv(&["python3", "train.py"])),
            None
        );
        assert_eq!(
            w.claimed_launcher("/usr/bin/python3", &argv(&["python3", "-m", "http.server"])),
            None
        );
    }

    #[test]
    fn trust_needs_a_root_owned_system_path() {
        let w = WorkloadConfig::default();
        let root = Path::new("/");
        // /usr/bin/env is root-owned in every Debian-like image.
        assert!(w.trusted_path(root, "/usr/bin/env"));
        // Named like a launcher, in a writable place: never trusted.
        let d = std::env::temp_dir().join(format!("wl-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("torchrun");
        std::fs::write(&f, "#!/bin/sh\n").unwrap();
        assert!(!w.trusted_path(root, f.to_str().unwrap()));
        std::fs::remove_dir_all(&d).unwrap();
        assert!(!w.trusted_path(root, "/usr/bin/../../tmp/torchrun"));
    }

    #[test]
    fn destinations_by_suffix() {
        let w = WorkloadConfig::default();
        assert!(w.trusted_destination("api.wandb.ai"));
        assert!(w.trusted_destination("HuggingFace.co:443"));
        assert!(!w.trusted_destination("wandb.ai.evil.example"));
        assert!(!w.trusted_destination("notwandb.ai"));
    }
}
