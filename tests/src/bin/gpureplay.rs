//! Test helper: real ioctl(2) calls on GPU device nodes (or stand-ins).
//!
//!   gpureplay replay FIXTURE.jsonl.gz DIR   re-issue every recorded ioctl (same request, same
//!                                           first 64 argument bytes) on DIR/<basename of path>
//!   gpureplay replay-after-line FIXTURE DIR open the nodes, print "ready", wait for a line on
//!                                           stdin, replay, print "replayed N", and wait for
//!                                           another line before exiting
//!   gpureplay opath NODE                    open NODE with O_PATH, then an RM_ALLOC ioctl on it
//!   gpureplay storm N NODE                  N non-GPU-looking and GPU-looking ioctls on NODE
use std::{
    collections::HashMap,
    ffi::CString,
    io::{BufRead, BufReader},
    path::Path,
};

fn open(path: &Path, flags: i32) -> i32 {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: c is a valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    assert!(
        fd >= 0,
        "open {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    fd
}

fn ioctl(fd: i32, cmd: u64, buf: &mut [u8]) -> i64 {
    // SAFETY: buf is a valid writable buffer larger than any argument the request encodes
    // (stand-in devices do not read it; a real driver would bound its copy by _IOC_SIZE).
    let rc = unsafe { libc::ioctl(fd, cmd as _, buf.as_mut_ptr()) };
    if rc < 0 {
        -(std::io::Error::last_os_error().raw_os_error().unwrap() as i64)
    } else {
        rc as i64
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let pat = format!("\"{key}\":\"");
    let i = line
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + pat.len();
    &line[i..i + line[i..].find('"').unwrap()]
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    match a.get(1).map(String::as_str) {
        Some(mode @ ("replay" | "replay-after-line")) => {
            let f = std::fs::File::open(&a[2]).expect("fixture");
            let dir = Path::new(&a[3]);
            let mut fds: HashMap<String, i32> = HashMap::new();
            if mode == "replay-after-line" {
                // Open the devices first, then wait: the ioctls come from a process that held
                // GPU fds before the sensor started.
                for base in ["nvidiactl", "nvidia0", "nvidia-uvm"] {
                    fds.insert(base.to_string(), open(&dir.join(base), libc::O_RDWR));
                }
                println!("ready");
                let mut l = String::new();
                std::io::stdin().read_line(&mut l).unwrap();
            }
            let mut n = 0;
            let mut buf = vec![0u8; 16384];
            for line in BufReader::new(flate2::read::GzDecoder::new(f)).lines() {
                let line = line.unwrap();
                let path = field(&line, "path");
                let base = Path::new(path)
                    .file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string();
                let fd = *fds
                    .entry(base.clone())
                    .or_insert_with(|| open(&dir.join(&base), libc::O_RDWR));
                let cmd =
                    u64::from_str_radix(field(&line, "cmd").trim_start_matches("0x"), 16).unwrap();
                let arg = unhex(field(&line, "arg"));
                buf.fill(0);
                buf[..arg.len()].copy_from_slice(&arg);
                ioctl(fd, cmd, &mut buf);
                n += 1;
            }
            println!("replayed {n}");
            if mode == "replay-after-line" {
                // Keep the session alive until told to exit.
                use std::io::Write;
                std::io::stdout().flush().unwrap();
                let mut l = String::new();
                std::io::stdin().read_line(&mut l).unwrap();
            }
        }
        Some("opath") => {
            let fd = open(Path::new(&a[2]), libc::O_PATH);
            let mut buf = vec![0u8; 64];
            buf[12..16].copy_from_slice(&0xcbc0u32.to_le_bytes()); // HOPPER_COMPUTE_A
            let rc = ioctl(fd, 0xc030462b, &mut buf); // NV_ESC_RM_ALLOC (NVOS64)
            println!("rc {rc}");
        }
        Some("storm") => {
            let n: u64 = a[2].parse().unwrap();
            let fd = open(Path::new(&a[3]), libc::O_RDWR);
            let mut buf = vec![0u8; 64];
            for i in 0..n {
                let cmd = if i % 2 == 0 {
                    0xc030462b
                } else {
                    0x5401 /* TCGETS */
                };
                ioctl(fd, cmd, &mut buf);
            }
            println!("storm {n}");
        }
        _ => {
            eprintln!("usage: see tests/src/bin/gpureplay.rs");
            std::process::exit(2);
        }
    }
}
