//! tracefs: mounting it when a node boots without it, and reading tracepoint `format` files so
//! that record field offsets are taken from the running kernel.

use std::{
    collections::HashMap,
    ffi::CString,
    path::{Path, PathBuf},
};

use thiserror::Error;

pub const TRACEFS: &str = "/sys/kernel/tracing";

#[derive(Debug, Error)]
pub enum TracefsError {
    #[error("mounting tracefs at {TRACEFS}: {0} (the kernel needs CONFIG_TRACING; run as root)")]
    Mount(std::io::Error),
    #[error("reading {path}: {source} (is the tracepoint compiled into this kernel?)")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no field `{field}` in the tracepoint format")]
    NoField { path: String, field: String },
}

/// Whether a tracefs is reachable at one of the paths aya looks at.
fn tracefs_present() -> bool {
    [
        "/sys/kernel/tracing/events",
        "/sys/kernel/debug/tracing/events",
    ]
    .iter()
    .any(|p| Path::new(p).is_dir())
}

/// Mounts tracefs at /sys/kernel/tracing unless one is already reachable. Returns whether it
/// mounted.
pub fn ensure_mounted() -> Result<bool, TracefsError> {
    if tracefs_present() {
        return Ok(false);
    }
    let src = CString::new("tracefs").unwrap();
    let dst = CString::new(TRACEFS).unwrap();
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call; data is null.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TracefsError::Mount(std::io::Error::last_os_error()));
    }
    Ok(true)
}

fn events_dir() -> PathBuf {
    if Path::new("/sys/kernel/tracing/events").is_dir() {
        PathBuf::from("/sys/kernel/tracing/events")
    } else {
        PathBuf::from("/sys/kernel/debug/tracing/events")
    }
}

/// Field offsets and sizes of one tracepoint record, from `events/<category>/<name>/format`.
#[derive(Debug, Clone)]
pub struct Format {
    path: String,
    /// name → (offset, size); size 0 when the format line has none.
    fields: HashMap<String, (u32, u32)>,
}

impl Format {
    pub fn load(category: &str, name: &str) -> Result<Format, TracefsError> {
        let path = events_dir().join(category).join(name).join("format");
        let text = std::fs::read_to_string(&path).map_err(|source| TracefsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Format::parse(&path.display().to_string(), &text))
    }

    /// Parses lines of the form `field:<type> <name>[N];\toffset:<o>;\tsize:<s>;\tsigned:<0|1>;`.
    pub fn parse(path: &str, text: &str) -> Format {
        let mut fields = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let mut parts = rest.split(';').map(str::trim);
            let decl = parts.next().unwrap_or("");
            let (mut off, mut size) = (None, None);
            for p in parts {
                if let Some(o) = p.strip_prefix("offset:") {
                    off = o.parse::<u32>().ok();
                } else if let Some(s) = p.strip_prefix("size:") {
                    size = s.parse::<u32>().ok();
                }
            }
            let Some(off) = off else {
                continue;
            };
            let name = decl.rsplit([' ', '*']).next().unwrap_or("");
            let name = name.split('[').next().unwrap_or("");
            if !name.is_empty() {
                fields.insert(name.to_string(), (off, size.unwrap_or(0)));
            }
        }
        Format {
            path: path.to_string(),
            fields,
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn offset(&self, field: &str) -> Result<u32, TracefsError> {
        self.field(field).map(|(off, _)| off)
    }

    /// `(offset, size)` of a field.
    pub fn field(&self, field: &str) -> Result<(u32, u32), TracefsError> {
        self.fields
            .get(field)
            .copied()
            .ok_or_else(|| TracefsError::NoField {
                path: self.path.clone(),
                field: field.to_string(),
            })
    }

    /// Bytes of the record the format describes: the end of its last field.
    pub fn record_size(&self) -> u32 {
        self.fields
            .values()
            .map(|&(off, size)| off.saturating_add(size))
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONNECT: &str = "name: sys_enter_connect\nID: 2230\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
\tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;\n\
\tfield:struct sockaddr * uservaddr;\toffset:24;\tsize:8;\tsigned:0;\n\
\tfield:int addrlen;\toffset:32;\tsize:8;\tsigned:0;\n\
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;\n\
\nprint fmt: \"fd: 0x%08lx\"\n";

    #[test]
    fn parses_offsets_pointers_and_arrays() {
        let f = Format::parse("x", CONNECT);
        assert_eq!(f.offset("fd").unwrap(), 16);
        assert_eq!(f.offset("uservaddr").unwrap(), 24);
        assert_eq!(f.offset("addrlen").unwrap(), 32);
        assert_eq!(f.offset("saddr_v6").unwrap(), 40);
        assert!(matches!(f.offset("ret"), Err(TracefsError::NoField { .. })));
        assert_eq!(f.field("addrlen").unwrap(), (32, 8));
        assert_eq!(f.field("saddr_v6").unwrap(), (40, 16));
        assert_eq!(f.record_size(), 56);
    }

    #[test]
    fn garbage_gives_no_fields() {
        let f = Format::parse("x", "field:;;;\nfield:int x;\toffset:zz;\n\u{0}\u{1}");
        assert!(f.offset("x").is_err());
    }
}
