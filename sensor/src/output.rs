//! Outputs: one JSON object per line on stdout (events, alerts, sensor status records).

use std::{
    collections::BTreeMap,
    io::{self, Write},
};

use serde::{Deserialize, Serialize};

/// The records the sensor prints beside events and alerts (README "Event schema": status).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Status {
    SensorStart(SensorStart),
    Loss(Loss),
    DecodeError(DecodeFailure),
    RulesReload(RulesReload),
}

impl Status {
    /// The `kind` names of status records.
    pub const KINDS: &'static [&'static str] =
        &["sensor_start", "loss", "decode_error", "rules_reload"];

    /// This record's `kind` name.
    pub fn name(&self) -> &'static str {
        match self {
            Status::SensorStart(_) => "sensor_start",
            Status::Loss(_) => "loss",
            Status::DecodeError(_) => "decode_error",
            Status::RulesReload(_) => "rules_reload",
        }
    }

    pub fn ts(&self) -> &str {
        match self {
            Status::SensorStart(s) => &s.ts,
            Status::Loss(s) => &s.ts,
            Status::DecodeError(s) => &s.ts,
            Status::RulesReload(s) => &s.ts,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensorStart {
    pub ts: String,
    pub version: String,
    pub ebpf_sha256: String,
    pub kernel: String,
    /// Attached programs.
    pub hooks: Vec<String>,
    pub tracefs_mounted_by_sensor: bool,
    pub ring_size: u64,
    pub processes_scanned: usize,
    pub gpu_class_table: String,
    pub rules: usize,
    pub sensor_pid: u32,
    /// Memory the kernel locked for the BPF maps, by map, and the total (bytes).
    #[serde(default)]
    pub map_bytes: BTreeMap<String, u64>,
    #[serde(default)]
    pub map_bytes_total: u64,
    /// Where `/metrics` is served (absent when disabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<String>,
}

/// Cumulative counters, printed when a drop counter changed and always at exit (`final`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Loss {
    pub ts: String,
    pub received: BTreeMap<String, u64>,
    pub received_total: u64,
    pub kernel_dropped: BTreeMap<String, u64>,
    pub kernel_dropped_total: u64,
    pub user_dropped: u64,
    pub user_dropped_by_kind: BTreeMap<String, u64>,
    pub decode_errors: u64,
    pub alerts: u64,
    pub alerts_deduplicated: u64,
    /// Probe failures other than a full ring, "hook/error" → count (non-zero ones only).
    #[serde(default)]
    pub probe_errors: BTreeMap<String, u64>,
    #[serde(rename = "final")]
    pub last: bool,
}

/// A ring record that did not decode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecodeFailure {
    pub ts: String,
    pub error: String,
    pub len: usize,
}

/// The outcome of a rules reload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RulesReload {
    pub ts: String,
    pub ok: bool,
    /// `SIGHUP` or `file change`.
    pub trigger: String,
    /// Rules active after it (the previous set when it failed).
    pub rules: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A buffered JSON-lines writer. `flush` is called by the pipeline whenever its queue is empty,
/// so output latency stays low without a syscall per event under load.
pub struct JsonLines<W: Write> {
    w: W,
    /// Lines not yet written. serde_json writes into a `Vec` without a call per fragment
    /// (through a `BufWriter` each key, quote and escaped run is one `write_all`: a tenth of
    /// the agent's CPU at 10k events/s).
    buf: Vec<u8>,
}

/// Bytes gathered before they are written without waiting for a flush.
const CHUNK: usize = 1 << 16;

impl<W: Write> JsonLines<W> {
    pub fn new(w: W) -> Self {
        JsonLines {
            w,
            buf: Vec::with_capacity(CHUNK + 4096),
        }
    }

    pub fn write<T: Serialize + ?Sized>(&mut self, v: &T) -> io::Result<()> {
        let start = self.buf.len();
        if let Err(e) = serde_json::to_writer(&mut self.buf, v) {
            // Nothing of a value that failed to serialize is written.
            self.buf.truncate(start);
            return Err(e.into());
        }
        self.buf.push(b'\n');
        if self.buf.len() >= CHUNK {
            self.flush_buf()?;
        }
        Ok(())
    }

    /// Writes the gathered lines; on an error they are dropped (the caller decides whether
    /// stdout goes on).
    fn flush_buf(&mut self) -> io::Result<()> {
        let r = self.w.write_all(&self.buf);
        self.buf.clear();
        r
    }

    pub fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.flush_buf()?;
        }
        self.w.flush()
    }
}

impl<W: Write> Drop for JsonLines<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_object_per_line() {
        let mut buf = vec![];
        {
            let mut j = JsonLines::new(&mut buf);
            j.write(&serde_json::json!({"kind": "x", "s": "a\nb"}))
                .unwrap();
            j.write(&serde_json::json!({"kind": "y"})).unwrap();
            j.flush().unwrap();
        }
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(lines[0]).unwrap()["s"],
            "a\nb"
        );
    }
}
