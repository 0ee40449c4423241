//! `[export.file]`: JSON lines in a file that rotates by size, the way log shippers expect.
//!
//! When the next line would take the file past `max_bytes`, it is closed and renamed to
//! `PATH.1` (older backups move up: `.1` → `.2` …, the one past `backups` is removed) and a new
//! `PATH` is started. With `compress`, a rotated file is gzipped (`PATH.1.gz`) and the plain one
//! removed. Shippers that follow the file by inode (Fluent Bit `tail`, Vector `file`, Promtail)
//! read the renamed file to its end and then pick up the new one; a glob such as `*.jsonl`
//! leaves the backups alone.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    sync::{mpsc::Receiver, Arc, Mutex},
    time::Duration,
};

use serde::Deserialize;

use super::{all_kinds, check_kinds, Record, RecordKind, MAX_QUEUE};
use crate::metrics::Metrics;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The file to write (its directory is created). Backups sit beside it.
    pub path: PathBuf,
    /// Size at which the file is rotated: bytes or "100MiB".
    #[serde(
        default = "default_max_bytes",
        deserialize_with = "crate::config::de_size"
    )]
    pub max_bytes: u64,
    /// Rotated files kept (0: the full file is removed at rotation).
    #[serde(default = "default_backups")]
    pub backups: u32,
    /// Gzip rotated files.
    #[serde(default = "default_true")]
    pub compress: bool,
    /// Which records are written.
    #[serde(default = "all_kinds")]
    pub records: Vec<RecordKind>,
    /// Records waiting for the writer thread; past it they are dropped and counted.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_max_bytes() -> u64 {
    100 << 20
}
fn default_backups() -> u32 {
    5
}
fn default_true() -> bool {
    true
}
fn default_queue() -> usize {
    65536
}

impl FileConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.path.as_os_str().is_empty() || self.path.is_dir() {
            return Err(format!(
                "export.file.path = {:?}: must name a file",
                self.path
            ));
        }
        if self.max_bytes < 4096 {
            return Err(format!(
                "export.file.max_bytes = {}: at least 4KiB",
                self.max_bytes
            ));
        }
        if self.backups > 1000 {
            return Err(format!(
                "export.file.backups = {}: at most 1000",
                self.backups
            ));
        }
        if self.queue == 0 || self.queue > MAX_QUEUE {
            return Err(format!(
                "export.file.queue = {}: between 1 and {MAX_QUEUE}",
                self.queue
            ));
        }
        check_kinds("export.file", &self.records)
    }
}

/// The file and its rotation.
pub struct RotatingFile {
    cfg: FileConfig,
    w: BufWriter<File>,
    size: u64,
}

impl RotatingFile {
    pub fn open(cfg: FileConfig) -> io::Result<RotatingFile> {
        if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let mut me = RotatingFile {
            w: BufWriter::with_capacity(1 << 16, open_append(&cfg.path)?),
            size: 0,
            cfg,
        };
        me.repair()?;
        me.size = me.w.get_ref().metadata()?.len();
        // A line cut by a crash: the next record starts on its own line.
        if me.size > 0 && !ends_with_newline(&me.cfg.path)? {
            me.w.write_all(b"\n")?;
            me.w.flush()?;
            me.size += 1;
        }
        Ok(me)
    }

    /// Appends one line (a newline is added), rotating first when it would not fit.
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let n = line.len() as u64 + 1;
        if self.size > 0 && self.size + n > self.cfg.max_bytes {
            self.rotate()?;
        }
        // One write of the line with its newline: the buffer is never flushed between them.
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        self.w.write_all(&buf)?;
        self.size += n;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }

    /// Finishes a rotation a crash interrupted: a leftover `PATH.1.gz.tmp` is removed and a
    /// plain `PATH.1` (renamed, not yet compressed) is compressed into the backup chain.
    fn repair(&mut self) -> io::Result<()> {
        if !self.cfg.compress || self.cfg.backups == 0 {
            return Ok(());
        }
        let mut plain = self.cfg.path.clone().into_os_string();
        plain.push(".1");
        let plain = PathBuf::from(plain);
        let gz = self.backup(1);
        let mut tmp = gz.clone().into_os_string();
        tmp.push(".tmp");
        remove_if_exists(Path::new(&tmp))?;
        if plain.exists() {
            if gz.exists() {
                self.shift()?;
            }
            gzip(&plain, &gz)?;
            fs::remove_file(&plain)?;
        }
        Ok(())
    }

    /// Moves every backup up one place (the one past `backups` is removed).
    fn shift(&self) -> io::Result<()> {
        remove_if_exists(&self.backup(self.cfg.backups))?;
        for i in (1..self.cfg.backups).rev() {
            let from = self.backup(i);
            if from.exists() {
                fs::rename(&from, self.backup(i + 1))?;
            }
        }
        Ok(())
    }

    fn backup(&self, i: u32) -> PathBuf {
        let mut s = self.cfg.path.clone().into_os_string();
        s.push(format!(".{i}"));
        if self.cfg.compress {
            s.push(".gz");
        }
        PathBuf::from(s)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.w.flush()?;
        self.w.get_ref().sync_data()?;
        let path = self.cfg.path.clone();
        if self.cfg.backups == 0 {
            fs::remove_file(&path)?;
        } else {
            self.shift()?;
            if self.cfg.compress {
                // Rename first: a shipper still reading the old inode keeps reading it.
                let mut plain = path.clone().into_os_string();
                plain.push(".1");
                let plain = PathBuf::from(plain);
                fs::rename(&path, &plain)?;
                gzip(&plain, &self.backup(1))?;
                fs::remove_file(&plain)?;
            } else {
                fs::rename(&path, self.backup(1))?;
            }
        }
        self.w = BufWriter::with_capacity(1 << 16, open_append(&path)?);
        self.size = 0;
        Ok(())
    }
}

/// Records carry command lines: the file is 0640 (the shipper reads it as root or as the
/// group).
fn open_append(p: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(p)
}

fn ends_with_newline(p: &Path) -> io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(p)?;
    if f.metadata()?.len() == 0 {
        return Ok(true);
    }
    f.seek(SeekFrom::End(-1))?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b)?;
    Ok(b[0] == b'\n')
}

fn remove_if_exists(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Gzips `from` into `to` through a temporary name, so `to` is whole or absent.
fn gzip(from: &Path, to: &Path) -> io::Result<()> {
    let mut tmp = to.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut enc = flate2::write::GzEncoder::new(
        BufWriter::new(File::create(&tmp)?),
        flate2::Compression::default(),
    );
    io::copy(&mut File::open(from)?, &mut enc)?;
    let f = enc.finish()?.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    fs::rename(&tmp, to)
}

/// The writer thread (supervised; restarted after a failure with the queue kept). `pending`
/// counts records queued and not yet flushed (see [`super::Exporters::wait_idle`]).
pub fn spawn(
    cfg: FileConfig,
    rx: Arc<Mutex<Receiver<Arc<Record>>>>,
    pending: crate::health::Backlog,
    metrics: &Metrics,
) {
    use crate::health::Exit;
    let written = metrics.export_counter("file", "exported");
    let failed = metrics.export_counter("file", "failed");
    crate::health::supervise_thread(&metrics.health, "export-file", move || {
        let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
        let mut f = RotatingFile::open(cfg.clone())
            .map_err(|e| anyhow::anyhow!("opening export.file.path {}: {e}", cfg.path.display()))?;
        tracing::info!(path = %cfg.path.display(), "exporting to a rotating JSON-lines file");
        loop {
            let first = match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(r) => r,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Ok(Exit::Done("the pipeline stopped".into()));
                }
            };
            // One burst: what is queued now (bounded, so a flush comes at least every 4096
            // records), then a flush. Taken records leave `pending` whatever happens to them.
            let mut taken = pending.take(1);
            let mut r = Some(first);
            while let Some(rec) = r.take() {
                if let Err(e) = f.write_line(rec.json.as_bytes()) {
                    failed.inc();
                    // The supervisor logs it, waits and reopens the file.
                    return Err(anyhow::anyhow!(
                        "writing {}: {e} (the record is lost)",
                        cfg.path.display()
                    ));
                }
                written.inc();
                if taken.count() < 4096 {
                    if let Ok(next) = rx.try_recv() {
                        taken.add();
                        r = Some(next);
                    }
                }
            }
            f.flush()?;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn cfg(dir: &Path, max: u64, backups: u32, compress: bool) -> FileConfig {
        FileConfig {
            path: dir.join("events.jsonl"),
            max_bytes: max,
            backups,
            compress,
            records: all_kinds(),
            queue: 16,
        }
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sensor-export-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn gunzip(p: &Path) -> String {
        let mut s = String::new();
        flate2::read::GzDecoder::new(File::open(p).unwrap())
            .read_to_string(&mut s)
            .unwrap();
        s
    }

    #[test]
    fn rotates_by_size_keeps_n_gzipped_backups_in_order() {
        let d = tmpdir("rot");
        let mut f = RotatingFile::open(cfg(&d, 4096, 2, true)).unwrap();
        // 100-byte lines: 40 fit in 4096 bytes; 150 lines make 4 files, of which the oldest goes.
        for i in 0..150 {
            let line = format!("{{\"n\":{i:05}{}}}", " ".repeat(88));
            assert_eq!(line.len(), 99);
            f.write_line(line.as_bytes()).unwrap();
        }
        f.flush().unwrap();
        let mut names: Vec<String> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["events.jsonl", "events.jsonl.1.gz", "events.jsonl.2.gz"]
        );
        let first = |s: &str| s.lines().next().unwrap()[5..10].parse::<u32>().unwrap();
        assert_eq!(first(&gunzip(&d.join("events.jsonl.2.gz"))), 40);
        assert_eq!(first(&gunzip(&d.join("events.jsonl.1.gz"))), 80);
        let cur = fs::read_to_string(d.join("events.jsonl")).unwrap();
        assert_eq!(first(&cur), 120);
        assert_eq!(cur.lines().count(), 30);
        for n in ["events.jsonl.1.gz", "events.jsonl.2.gz"] {
            let text = gunzip(&d.join(n));
            assert_eq!(text.lines().count(), 40, "{n}");
            assert!(text.len() as u64 <= 4096);
        }
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn reopens_appending_and_rotates_plain_without_compress() {
        let d = tmpdir("plain");
        fs::write(d.join("events.jsonl"), "x".repeat(4000) + "\n").unwrap();
        let mut f = RotatingFile::open(cfg(&d, 4096, 1, false)).unwrap();
        f.write_line(&[b'y'; 200]).unwrap();
        f.flush().unwrap();
        assert_eq!(
            fs::read_to_string(d.join("events.jsonl.1")).unwrap().len(),
            4001
        );
        assert_eq!(
            fs::read_to_string(d.join("events.jsonl")).unwrap(),
            "y".repeat(200) + "\n"
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_rotation_cut_by_a_crash_is_finished_at_open() {
        let d = tmpdir("crash");
        // The state between the rename and the gzip: a plain .1, a half-written .1.gz.tmp, an
        // older .1.gz, and a live file cut mid-line.
        fs::write(d.join("events.jsonl.1"), "{\"n\":2}\n").unwrap();
        fs::write(d.join("events.jsonl.1.gz.tmp"), "garbage").unwrap();
        gzip_str(&d.join("events.jsonl.1.gz"), "{\"n\":1}\n");
        fs::write(d.join("events.jsonl"), "{\"n\":3}\n{\"n\":").unwrap();
        let mut f = RotatingFile::open(cfg(&d, 1 << 20, 3, true)).unwrap();
        f.write_line(b"{\"n\":4}").unwrap();
        f.flush().unwrap();
        let mut names: Vec<String> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["events.jsonl", "events.jsonl.1.gz", "events.jsonl.2.gz"]
        );
        assert_eq!(gunzip(&d.join("events.jsonl.1.gz")), "{\"n\":2}\n");
        assert_eq!(gunzip(&d.join("events.jsonl.2.gz")), "{\"n\":1}\n");
        let cur = fs::read_to_string(d.join("events.jsonl")).unwrap();
        assert_eq!(cur.lines().last(), Some("{\"n\":4}"), "{cur}");
        let _ = fs::remove_dir_all(&d);
    }

    fn gzip_str(p: &Path, s: &str) {
        let mut e =
            flate2::write::GzEncoder::new(File::create(p).unwrap(), flate2::Compression::default());
        e.write_all(s.as_bytes()).unwrap();
        e.finish().unwrap();
    }

    #[test]
    fn bad_config_is_refused() {
        let d = tmpdir("bad");
        let mut c = cfg(&d, 100, 1, true);
        assert!(c.check().unwrap_err().contains("max_bytes"));
        c.max_bytes = 1 << 20;
        c.records.clear();
        assert!(c.check().unwrap_err().contains("records"));
        c.records = all_kinds();
        c.path = d.clone();
        assert!(c.check().unwrap_err().contains("must name a file"));
        let _ = fs::remove_dir_all(&d);
    }
}
