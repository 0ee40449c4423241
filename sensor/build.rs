//! Builds the eBPF object (`sensor-ebpf`) and embeds it, with its SHA-256, in the agent.
//!
//! The eBPF crate needs `-Z build-std=core` for `bpfel-unknown-none`. The Debian toolchain
//! (`rustc-web`, `cargo-web`, `rust-web-src`; rustc 1.96) is used with `RUSTC_BOOTSTRAP=1`, and
//! `bpf-linker` 0.13 (LLVM 22) must be on PATH. Overrides:
//! - `SENSOR_EBPF_OBJECT=/path/to/object`: use a prebuilt object, build nothing;
//! - `SENSOR_BPF_CARGO`, `SENSOR_BPF_RUSTC`: the cargo/rustc used for the eBPF build
//!   (default `/usr/bin/cargo`, `/usr/bin/rustc`).
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use sha2::{Digest, Sha256};

fn main() {
    println!("cargo:rerun-if-env-changed=SENSOR_EBPF_OBJECT");
    println!("cargo:rerun-if-env-changed=SENSOR_BPF_CARGO");
    println!("cargo:rerun-if-env-changed=SENSOR_BPF_RUSTC");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());

    let obj = match env::var_os("SENSOR_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => build_ebpf(&root),
    };
    let bytes =
        fs::read(&obj).unwrap_or_else(|e| panic!("reading eBPF object {}: {e}", obj.display()));
    let hash = Sha256::digest(&bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    let dst = out.join("sensor-ebpf.o");
    fs::write(&dst, &bytes).unwrap();
    println!("cargo:rustc-env=SENSOR_EBPF_SHA256={hex}");
    println!("cargo:rerun-if-changed={}", obj.display());
}

fn build_ebpf(root: &Path) -> PathBuf {
    let crate_dir = root.join("sensor-ebpf");
    for p in ["src", "Cargo.toml", "build.rs", ".cargo/config.toml"] {
        println!("cargo:rerun-if-changed={}", crate_dir.join(p).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("sensor-common/src").display()
    );
    let cargo = env::var("SENSOR_BPF_CARGO").unwrap_or_else(|_| "/usr/bin/cargo".into());
    let rustc = env::var("SENSOR_BPF_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    let target_dir = root.join("target").join("bpf");
    let mut cmd = Command::new(&cargo);
    // Start from a clean environment for the nested cargo: the variables cargo sets for build
    // scripts (RUSTC, RUSTFLAGS, CARGO_ENCODED_RUSTFLAGS, CARGO_TARGET_DIR, …) would leak the host
    // build's settings into the eBPF build.
    for (k, _) in env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO") || k.starts_with("RUST") || k == "TARGET" || k == "HOST" {
            cmd.env_remove(&*k);
        }
    }
    // rustup's proxies earlier on PATH would otherwise take over `cargo`/`rustc` lookups of the
    // nested build; bpf-linker lives in ~/.cargo/bin.
    let home = env::var("HOME").unwrap_or_else(|_| "/root".into());
    let path = format!(
        "/usr/bin:/bin:/usr/sbin:/sbin:{home}/.cargo/bin:{}",
        env::var("PATH").unwrap_or_default()
    );
    cmd.current_dir(&crate_dir)
        .env("PATH", path)
        .env("RUSTC", &rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", &target_dir)
        .args([
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ]);
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("running {cargo} for the eBPF build: {e}; run scripts/setup.sh to install the toolchain")
    });
    if !status.success() {
        panic!("eBPF build failed ({status}); see the output above (toolchain: scripts/setup.sh)");
    }
    target_dir.join("bpfel-unknown-none/release/sensor-ebpf")
}
