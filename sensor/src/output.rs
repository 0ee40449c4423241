//! Outputs: one JSON object per line on stdout (events, alerts, sensor status records).

use std::io::{self, Write};

use serde::Serialize;

/// A buffered JSON-lines writer. `flush` is called by the pipeline whenever its queue is empty,
/// so output latency stays low without a syscall per event under load.
pub struct JsonLines<W: Write> {
    w: io::BufWriter<W>,
}

impl<W: Write> JsonLines<W> {
    pub fn new(w: W) -> Self {
        JsonLines {
            w: io::BufWriter::with_capacity(1 << 16, w),
        }
    }

    pub fn write<T: Serialize + ?Sized>(&mut self, v: &T) -> io::Result<()> {
        serde_json::to_writer(&mut self.w, v)?;
        self.w.write_all(b"\n")
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
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
