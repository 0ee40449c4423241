//! A bounded, durable spool: one fsync'd file per pending delivery in a directory per sink
//! (`<seq>-<severity rank>.json`), written to a temporary name, fsync'd, renamed, and the
//! directory fsync'd, so a crash leaves either the whole item or nothing. Delivery removes the
//! file. On start-up the directory is scanned and delivery resumes in sequence order. When full,
//! the oldest item of the lowest severity is evicted (and counted).
//!
//! Alerts describe what happens on the node, so the spool is private: directories 0700, files
//! 0600 (also enforced on what an earlier run left). Secrets never reach it (the PagerDuty
//! routing key is added when the request is sent).

use std::{
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::SystemTime,
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub seq: u64,
    /// 0 (info) … 4 (critical).
    pub rank: u8,
    pub path: PathBuf,
}

pub struct Spool {
    dir: PathBuf,
    max: usize,
    next: u64,
    items: Vec<Item>,
    pub evicted: u64,
}

/// Creates `d` (mode 0700) or makes an existing one 0700.
fn private_dir(d: &Path) -> Result<(), SpoolError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(d)
        .map_err(io(d))?;
    fs::set_permissions(d, fs::Permissions::from_mode(0o700)).map_err(io(d))
}

fn parse_name(name: &str) -> Option<(u64, u8)> {
    let stem = name.strip_suffix(".json")?;
    let (seq, rank) = stem.split_once('-')?;
    Some((seq.parse().ok()?, rank.parse().ok()?))
}

impl Spool {
    /// Opens (creating) the spool directory `root/name` and loads what a previous run left.
    pub fn open(root: &Path, name: &str, max: usize) -> Result<Spool, SpoolError> {
        let dir = root.join(name);
        let dir = dir.as_path();
        // The root is created private when missing but never changed (it may be shared, e.g.
        // misconfigured as /tmp): one that others can write to is refused, since they could
        // plant or swap spool entries. The per-sink directory is ours: made 0700.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(io(root))?;
        let md = fs::metadata(root).map_err(io(root))?;
        if md.permissions().mode() & 0o022 != 0 {
            return Err(SpoolError::Io {
                path: root.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "the spool directory is writable by group or others; use a private directory",
                ),
            });
        }
        private_dir(dir)?;
        let mut items = vec![];
        for e in fs::read_dir(dir).map_err(io(dir))?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(".tmp") {
                let _ = fs::remove_file(e.path()); // an interrupted write
                continue;
            }
            if let Some((seq, rank)) = parse_name(&name) {
                // Only regular files (a link is never followed, nor its target chmod'ed).
                let regular = fs::symlink_metadata(e.path()).is_ok_and(|m| m.file_type().is_file());
                if !regular {
                    tracing::warn!(path = %e.path().display(), "not a regular file in the spool: ignored");
                    continue;
                }
                fs::set_permissions(e.path(), fs::Permissions::from_mode(0o600))
                    .map_err(io(&e.path()))?;
                items.push(Item {
                    seq,
                    rank,
                    path: e.path(),
                });
            }
        }
        items.sort_by_key(|i| i.seq);
        let next = items.last().map_or(1, |i| i.seq + 1);
        Ok(Spool {
            dir: dir.to_path_buf(),
            max: max.max(1),
            next,
            items,
            evicted: 0,
        })
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Age in seconds of the oldest pending item.
    pub fn oldest_age_secs(&self) -> f64 {
        self.items
            .first()
            .and_then(|i| fs::metadata(&i.path).ok()?.modified().ok())
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map_or(0.0, |d| d.as_secs_f64())
    }

    /// Adds an item durably.
    pub fn push(&mut self, rank: u8, body: &[u8]) -> Result<(), SpoolError> {
        while self.items.len() >= self.max {
            // Evict the oldest item of the lowest severity present.
            let low = self.items.iter().map(|i| i.rank).min().unwrap_or(0);
            let i = self.items.iter().position(|i| i.rank == low).unwrap_or(0);
            let it = self.items.remove(i);
            let _ = fs::remove_file(&it.path);
            self.evicted += 1;
        }
        let seq = self.next;
        self.next += 1;
        let tmp = self.dir.join(format!(".tmp-{seq}"));
        let path = self.dir.join(format!("{seq:020}-{rank}.json"));
        {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io(&tmp))?;
            f.write_all(body).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io(&path))?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        self.items.push(Item { seq, rank, path });
        Ok(())
    }

    /// The oldest pending item and its body.
    pub fn peek(&self) -> Option<(Item, Vec<u8>)> {
        let it = self.items.first()?.clone();
        let body = fs::read(&it.path).ok()?;
        Some((it, body))
    }

    /// Removes a delivered (or dead) item.
    pub fn remove(&mut self, seq: u64) {
        if let Some(i) = self.items.iter().position(|i| i.seq == seq) {
            let it = self.items.remove(i);
            let _ = fs::remove_file(&it.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("spool-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn survives_reopen_in_order() {
        let d = dir("reopen");
        let mut s = Spool::open(&d, "s", 10).unwrap();
        s.push(3, b"a").unwrap();
        s.push(1, b"b").unwrap();
        fs::write(d.join("s/.tmp-99"), b"half").unwrap();
        drop(s);
        let mut s = Spool::open(&d, "s", 10).unwrap();
        assert_eq!(s.len(), 2);
        assert!(
            !d.join("s/.tmp-99").exists(),
            "interrupted writes are discarded"
        );
        let (it, body) = s.peek().unwrap();
        assert_eq!(body, b"a");
        s.remove(it.seq);
        s.push(2, b"c").unwrap();
        assert_eq!(s.peek().unwrap().1, b"b");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn spool_is_private() {
        let d = dir("private");
        fs::create_dir_all(d.join("s")).unwrap();
        fs::set_permissions(d.join("s"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(d.join("s/00000000000000000007-1.json"), b"old").unwrap();
        fs::set_permissions(
            d.join("s/00000000000000000007-1.json"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc/hostname", d.join("s/00000000000000000008-4.json"))
            .unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
        let mut s = Spool::open(&d, "s", 10).unwrap();
        assert_eq!(s.len(), 1, "the planted link is not an item");
        s.push(2, b"new").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_ne!(
            mode(Path::new("/etc/hostname")),
            0o600,
            "a link target is never chmod'ed"
        );
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&d.join("s")), 0o700);
        for e in fs::read_dir(d.join("s")).unwrap().flatten() {
            if fs::symlink_metadata(e.path())
                .unwrap()
                .file_type()
                .is_file()
            {
                assert_eq!(mode(&e.path()), 0o600, "{}", e.path().display());
            }
        }
        // A spool root that others can write to is refused, and left as it is.
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(Spool::open(&d, "s", 10).is_err());
        assert_eq!(mode(&d), 0o777);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn full_spool_evicts_oldest_lowest_severity() {
        let d = dir("full");
        let mut s = Spool::open(&d, "s", 3).unwrap();
        s.push(4, b"crit-1").unwrap();
        s.push(1, b"low-1").unwrap();
        s.push(1, b"low-2").unwrap();
        s.push(4, b"crit-2").unwrap();
        assert_eq!(s.evicted, 1);
        let mut bodies = vec![];
        while let Some((it, b)) = s.peek() {
            bodies.push(String::from_utf8(b).unwrap());
            s.remove(it.seq);
        }
        assert_eq!(bodies, ["crit-1", "low-2", "crit-2"]);
        let _ = fs::remove_dir_all(&d);
    }
}
