//! `sensor`: the command line. Everything else is the `sensor` library (src/lib.rs).

use sensor::{config, pipeline, replay, rules, run};

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
        /// Also write every event (JSON lines) to FILE, for `sensor replay`.
        #[arg(long)]
        record: Option<PathBuf>,
        /// Extra rules directory (repeatable; adds to rules.dirs).
        #[arg(long = "rules")]
        rules: Vec<PathBuf>,
        /// Metrics listen address (overrides metrics.listen; port 0 picks a free one, reported
        /// in `sensor_start.metrics_addr`).
        #[arg(long = "metrics-listen")]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Validate a configuration file and print the effective configuration.
    CheckConfig { file: PathBuf },
    /// Rule files: check them or run their examples.
    Rules {
        #[command(subcommand)]
        cmd: RulesCmd,
    },
    /// Run a recorded event stream (JSON lines) through the rules, offline; prints alerts.
    Replay {
        file: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Extra rules directory (repeatable).
        #[arg(long = "rules")]
        rules: Vec<PathBuf>,
        /// Print only alerts (default: events and alerts, as `sensor run` does).
        #[arg(long)]
        alerts_only: bool,
    },
}

#[derive(Subcommand)]
enum RulesCmd {
    /// Parse and compile the built-in rules plus every *.yaml in DIR.
    Check { dir: PathBuf },
    /// Also run every rule's examples (must / must not match).
    Test { dir: PathBuf },
    /// Print the event kinds and the fields a rule can test (Markdown; the README's list).
    Fields,
}

fn load_config(path: &Option<PathBuf>) -> anyhow::Result<config::Config> {
    Ok(match path {
        Some(p) => config::Config::load(p)?,
        None => config::Config::default(),
    })
}

/// `SENSOR_LOG` (default `info`), with the HTTP/TLS client libraries capped at `info`: their
/// debug records print request URLs, and a sink URL can be a secret (a Slack webhook).
fn log_filter() -> tracing_subscriber::EnvFilter {
    let mut f = tracing_subscriber::EnvFilter::try_from_env("SENSOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for d in [
        "ureq=info",
        "ureq_proto=info",
        "rustls=info",
        "hyper=info",
        "hyper_util=info",
    ] {
        if let Ok(d) = d.parse() {
            f = f.add_directive(d);
        }
    }
    f
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(log_filter())
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run {
            config,
            only_pid,
            ring_size,
            record,
            rules,
            metrics_listen,
        } => {
            let mut cfg = load_config(&config)?;
            cfg.filter.only_pids.extend(only_pid);
            cfg.rules.dirs.extend(rules);
            if let Some(a) = metrics_listen {
                cfg.metrics.listen = a;
            }
            if let Some(s) = ring_size {
                cfg.ring.size = config::parse_size(&s).map_err(anyhow::Error::msg)?;
            }
            cfg.validate("command line")?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            rt.block_on(run::run(cfg, record))
        }
        Cmd::Rules { cmd } => {
            let (dir, test) = match cmd {
                RulesCmd::Check { dir } => (dir, false),
                RulesCmd::Test { dir } => (dir, true),
                RulesCmd::Fields => {
                    print!("{}", rules::fields::reference_markdown());
                    return Ok(());
                }
            };
            let cfg = rules::RulesConfig {
                dirs: vec![dir],
                ..Default::default()
            };
            let set = run::load_rules(&cfg)?;
            println!("{} rules OK", set.len());
            if test {
                let (checked, failures) = pipeline::test_examples(&set);
                for f in &failures {
                    println!("FAIL {} ({}): {}", f.rule, f.source, f.message);
                }
                println!(
                    "{} passed, {} failed",
                    checked - failures.len().min(checked),
                    failures.len()
                );
                if !failures.is_empty() {
                    std::process::exit(1);
                }
            }
            Ok(())
        }
        Cmd::Replay {
            file,
            config,
            rules,
            alerts_only,
        } => {
            let mut cfg = load_config(&config)?;
            cfg.rules.dirs.extend(rules);
            let set = run::load_rules(&cfg.rules)?;
            let f = std::fs::File::open(&file)
                .with_context(|| format!("opening {}", file.display()))?;
            let t = std::time::Instant::now();
            let stdout = std::io::stdout().lock();
            let s = replay::replay(
                std::io::BufReader::with_capacity(1 << 20, f),
                set,
                cfg.rules,
                replay::ReplayContext {
                    workload: cfg.workload,
                    incidents: cfg.incidents,
                },
                alerts_only,
                stdout,
            )?;
            let secs = t.elapsed().as_secs_f64();
            eprintln!(
                "replayed {} events ({} lines, {} skipped, {} errors) in {secs:.2}s: {:.0} events/s, {} alerts, {} incidents",
                s.events, s.lines, s.skipped, s.errors, s.events as f64 / secs, s.alerts, s.incidents
            );
            if s.errors > 0 {
                std::process::exit(2);
            }
            Ok(())
        }
        Cmd::CheckConfig { file } => {
            let cfg = config::Config::load(&file)?;
            println!("{cfg:#?}");
            Ok(())
        }
    }
}
