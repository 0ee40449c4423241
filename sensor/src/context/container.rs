//! Container and pod identity from the cgroup v2 id the kernel reports: the id is the inode of
//! the cgroup directory, so the agent indexes the cgroup2 tree by inode and parses the path:
//! containerd (`cri-containerd-<id>.scope`), CRI-O (`crio-<id>.scope`), docker
//! (`docker-<id>.scope`, `/docker/<id>`), cgroupfs-driver kubepods (`/kubepods/<qos>/pod<uid>/<id>`)
//! and systemd-driver kubepods slices (`kubepods-<qos>-pod<uid_with_underscores>.slice`).

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub use crate::event::Container;

/// Parses a cgroup path into container runtime/id and pod UID.
pub fn parse_cgroup_path(path: &str) -> Container {
    let mut c = Container {
        cgroup: path.to_string(),
        ..Default::default()
    };
    for comp in path.split('/') {
        let stem = comp
            .strip_suffix(".scope")
            .or_else(|| comp.strip_suffix(".slice"))
            .unwrap_or(comp);
        for (prefix, rt) in [
            ("cri-containerd-", "containerd"),
            ("crio-", "cri-o"),
            ("docker-", "docker"),
        ] {
            if let Some(id) = stem.strip_prefix(prefix) {
                if is_hex_id(id) {
                    c.id = Some(id.to_string());
                    c.runtime = Some(rt.to_string());
                }
            }
        }
        // systemd driver: kubepods-burstable-pod<uid with '_'>.slice
        if comp.starts_with("kubepods") && comp.ends_with(".slice") {
            if let Some(i) = stem.rfind("-pod") {
                c.pod_uid = Some(stem[i + 4..].replace('_', "-"));
            }
        }
        // cgroupfs driver: /kubepods/burstable/pod<uid>/<container id>
        if let Some(uid) = comp.strip_prefix("pod") {
            if uid.len() >= 32 && uid.chars().all(|ch| ch.is_ascii_hexdigit() || ch == '-') {
                c.pod_uid = Some(uid.to_string());
            }
        }
        if c.id.is_none() && is_hex_id(comp) && comp.len() == 64 {
            c.id = Some(comp.to_string());
            if path.contains("/docker/") {
                c.runtime = Some("docker".into());
            }
        }
    }
    c
}

fn is_hex_id(s: &str) -> bool {
    s.len() >= 12 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// The cgroup2 mount point (`/sys/fs/cgroup/unified` on hybrid hosts, `/sys/fs/cgroup` on pure v2).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .next()
}

/// cgroup id → container, with a re-scan of the tree on a miss (at most once a second).
pub struct Containers {
    root: Option<PathBuf>,
    by_id: HashMap<u64, Container>,
    last_scan: Option<Instant>,
    pods: Option<super::kube::Pods>,
    annotations: Vec<String>,
}

impl Containers {
    pub fn new(pods: Option<super::kube::Pods>, annotations: Vec<String>) -> Containers {
        let mut c = Containers {
            root: cgroup2_root(),
            by_id: HashMap::new(),
            last_scan: None,
            pods,
            annotations,
        };
        c.scan();
        c
    }

    fn scan(&mut self) {
        self.last_scan = Some(Instant::now());
        let Some(root) = self.root.clone() else {
            return;
        };
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
            if let Ok(m) = std::fs::metadata(&dir) {
                let rel = dir
                    .strip_prefix(&root)
                    .unwrap_or(Path::new(""))
                    .display()
                    .to_string();
                self.by_id
                    .entry(m.ino())
                    .or_insert_with(|| parse_cgroup_path(&format!("/{rel}")));
            }
        }
    }

    /// The container of a cgroup id; `None` for the root cgroup or an unknown id.
    pub fn get(&mut self, cgroup_id: u64) -> Option<&Container> {
        if cgroup_id <= 1 {
            return None;
        }
        if !self.by_id.contains_key(&cgroup_id)
            && self
                .last_scan
                .is_none_or(|t| t.elapsed() > Duration::from_secs(1))
        {
            self.scan();
        }
        let pods = self.pods.as_ref();
        let c = self.by_id.get_mut(&cgroup_id)?;
        // Pod metadata may arrive after the cgroup was first seen: fill it in once known.
        if c.pod.is_none() {
            if let Some(meta) = c.pod_uid.as_deref().and_then(|u| pods?.get(u)) {
                c.pod = Some(meta.name);
                c.namespace = Some(meta.namespace);
                c.node = meta.node;
                c.labels = meta.labels;
                c.workload = meta.workload;
                c.annotations = meta
                    .annotations
                    .into_iter()
                    .filter(|(k, _)| self.annotations.contains(k))
                    .collect();
            }
        }
        // The container's name and image: its status (with the runtime id) may come after the
        // pod itself.
        if c.name.is_none() {
            if let (Some(uid), Some(id)) = (c.pod_uid.as_deref(), c.id.as_deref()) {
                if let Some((name, image)) = pods.and_then(|p| p.container(uid, id)) {
                    c.name = Some(name);
                    c.image = (!image.is_empty()).then_some(image);
                }
            }
        }
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_systemd_slice() {
        let c = parse_cgroup_path(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_0000_4000_8000_123456789abc.slice/cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope",
        );
        assert_eq!(c.runtime.as_deref(), Some("containerd"));
        assert_eq!(c.id.as_deref().map(str::len), Some(64));
        assert_eq!(
            c.pod_uid.as_deref(),
            Some("1b2c3d4e-0000-4000-8000-123456789abc")
        );
    }

    #[test]
    fn crio_docker_cgroupfs_and_plain() {
        let c = parse_cgroup_path("/kubepods.slice/kubepods-pod11111111_2222_3333_4444_555555555555.slice/crio-abcdef012345.scope");
        assert_eq!(
            (c.runtime.as_deref(), c.id.as_deref()),
            (Some("cri-o"), Some("abcdef012345"))
        );
        assert_eq!(
            c.pod_uid.as_deref(),
            Some("11111111-2222-3333-4444-555555555555")
        );
        let id = "f".repeat(64);
        let c = parse_cgroup_path(&format!(
            "/kubepods/besteffort/pod11111111-2222-3333-4444-555555555555/{id}"
        ));
        assert_eq!(c.id.as_deref(), Some(id.as_str()));
        assert_eq!(
            c.pod_uid.as_deref(),
            Some("11111111-2222-3333-4444-555555555555")
        );
        let c = parse_cgroup_path(&format!("/system.slice/docker-{id}.scope"));
        assert_eq!(c.runtime.as_deref(), Some("docker"));
        let c = parse_cgroup_path("/user.slice/user-0.slice/session-1.scope");
        assert_eq!((c.id, c.pod_uid), (None, None));
    }
}
