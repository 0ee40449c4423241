//! `sensor`: eBPF security sensor for GPU nodes.
//!
//! Data path: [`hook`] (load + attach) → [`ring`] (BPF ring buffer) → [`decode`] →
//! [`context`] (process table) → [`output`] (JSON lines). [`run`] wires them.

mod config;
mod context;
mod decode;
mod event;
mod gpu;
mod hook;
mod output;
mod pipeline;
mod ring;
mod rules;
mod run;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (ebpf sha256 ",
    env!("SENSOR_EBPF_SHA256"),
    ")"
);

#[derive(Parser)]
#[command(name = "sensor", version = VERSION, about = "eBPF security sensor for GPU nodes")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load the eBPF programs and print one JSON object per event on stdout.
    Run {
        /// TOML configuration file (README "Configuration"); defaults for everything else.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Report only this process and what it forks afterwards (repeatable; adds to
        /// filter.only_pids).
        #[arg(long = "only-pid")]
        only_pid: Vec<u32>,
        /// Ring buffer size, e.g. 16KiB or 8MiB (overrides ring.size).
        #[arg(long = "ring-size")]
        ring_size: Option<String>,
    },
    /// Validate a configuration file and print the effective configuration.
    CheckConfig { file: PathBuf },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SENSOR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run {
            config,
            only_pid,
            ring_size,
        } => {
            let mut cfg = match &config {
                Some(p) => config::Config::load(p)?,
                None => config::Config::default(),
            };
            cfg.filter.only_pids.extend(only_pid);
            if let Some(s) = ring_size {
                cfg.ring.size = config::parse_size(&s).map_err(anyhow::Error::msg)?;
            }
            cfg.validate("command line")?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            rt.block_on(run::run(cfg))
        }
        Cmd::CheckConfig { file } => {
            let cfg = config::Config::load(&file)?;
            println!("{cfg:#?}");
            Ok(())
        }
    }
}
