//! Developer tasks: `cargo xtask build | test | recall | confusion | bench`.
//!
//! The eBPF object is built by `sensor/build.rs` (Debian toolchain, see README "Build"), so
//! `build` is an ordinary release build of the agent.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the eBPF object and the `sensor` binary with it embedded (release).
    Build {
        /// Link statically (for copying the binary to another machine, e.g. a GPU node).
        #[arg(long = "static")]
        static_: bool,
    },
    /// Run every test: unit tests and the root-only integration tests in tests/.
    Test {
        /// Extra arguments for `cargo test` (after --), e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the evasion suite (tests/tests/evasion.rs) and print its recall table.
    Recall,
    /// Run the benign corpus and the attacks (tests/tests/incidents.rs, evasion.rs) and print
    /// the confusion table (README "Judgement").
    Confusion,
    /// Run the benchmarks and print the ratio table (README "Performance").
    Bench {
        /// Seconds for the sustained-rate measurement.
        #[arg(long, default_value_t = 30)]
        secs: u64,
        /// A part only: `micro [ROUNDS]`, `hooks [ROUNDS]`, `costs`, `replay [RUNS]`,
        /// `cpu [RUNS]`, `poll [RUNS]`, `storm [SECS]`, `smoke`.
        #[arg(trailing_var_arg = true)]
        part: Vec<String>,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(mut c: Command) -> Result<()> {
    let st = c.status().with_context(|| format!("running {c:?}"))?;
    if !st.success() {
        bail!("{c:?} failed: {st}");
    }
    Ok(())
}

fn build(static_: bool) -> Result<PathBuf> {
    let mut c = cargo();
    c.args([
        "build",
        "--release",
        "--package",
        "sensor",
        "--package",
        "sensor-tests",
        "--bins",
    ]);
    if static_ {
        c.env("RUSTFLAGS", "-C target-feature=+crt-static")
            .args(["--target", "x86_64-unknown-linux-gnu"]);
    }
    run(c)?;
    Ok(if static_ {
        root().join("target/x86_64-unknown-linux-gnu/release/sensor")
    } else {
        root().join("target/release/sensor")
    })
}

/// Totals from libtest's "test result:" lines.
#[derive(Default, Debug)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

fn parse_totals(out: &str, t: &mut Totals) {
    for line in out.lines() {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            continue;
        };
        for part in rest.split([';', '.']) {
            let mut w = part.split_whitespace();
            let (Some(n), Some(what)) = (w.next(), w.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => t.passed += n,
                "failed" => t.failed += n,
                "ignored" => t.ignored += n,
                _ => {}
            }
        }
    }
}

fn test(args: Vec<String>) -> Result<ExitCode> {
    let bin = build(false)?;
    let skip_log = root().join("target/test-skips.log");
    let _ = std::fs::remove_file(&skip_log);
    let mut c = cargo();
    c.args(["test", "--release", "--workspace", "--no-fail-fast"])
        .args(&args)
        .env("SENSOR_BIN", &bin)
        .env("SENSOR_SKIP_LOG", &skip_log)
        .stdout(std::process::Stdio::piped());
    let mut child = c.spawn().context("running cargo test")?;
    // Tee stdout so the totals can be computed while the output still streams.
    let mut out = String::new();
    {
        use std::io::{BufRead, BufReader, Write};
        let stdout = child.stdout.take().unwrap();
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            std::io::stdout().flush().ok();
            out.push_str(&line);
            out.push('\n');
        }
    }
    let st = child.wait()?;
    let mut t = Totals::default();
    parse_totals(&out, &mut t);
    // The benchmark as a smoke (whole runs only): every measurement once, briefly; the figures
    // are printed, not judged (`cargo xtask bench` is the full run with targets). It failing to
    // run at all is a failure.
    // SAFETY: no preconditions.
    let root_user = unsafe { libc::geteuid() } == 0;
    if args.is_empty() && !root_user {
        println!("bench smoke: not run (needs root to load the eBPF programs)");
    }
    if args.is_empty() && root_user {
        println!("bench smoke (figures only; `cargo xtask bench` for the targets):");
        let ok = Command::new(root().join("target/release/bench"))
            .arg("smoke")
            .env("SENSOR_BIN", &bin)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            println!("bench smoke: FAILED");
            t.failed += 1;
        }
    }
    let skips: Vec<String> = std::fs::read_to_string(&skip_log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    for s in &skips {
        println!("skipped: {s}");
    }
    // A skipped test returns early and libtest counts it as passed: move it to "skipped".
    let skipped = skips.len() as u64;
    let passed = t.passed.saturating_sub(skipped);
    println!("{passed} passed, {} failed, {skipped} skipped", t.failed);
    Ok(if st.success() && t.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The confusion table from the tests' `CONFUSION|scenario|expected|got|score|severity|signals`
/// lines: benign scenarios (expected `none`) first, then attacks; and the counts.
fn confusion_table(out: &str) -> (String, usize, usize) {
    let mut rows: Vec<Vec<&str>> = out
        .lines()
        // libtest prints `test name ... ` before a test's first output line.
        .filter_map(|l| l.find("CONFUSION|").map(|i| &l[i + "CONFUSION|".len()..]))
        .map(|l| l.split('|').collect::<Vec<_>>())
        .filter(|f| f.len() == 6)
        .collect();
    rows.sort_by_key(|f| f[1] != "none");
    let mut t = String::from(
        "| corpus | scenario | expected | got | incident score | severity | rule hits |\n|---|---|---|---|---|---|---|\n",
    );
    let mut wrong = 0;
    for f in &rows {
        let ok = f[1] == f[2];
        if !ok {
            wrong += 1;
        }
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            if f[1] == "none" { "benign" } else { "attack" },
            f[0],
            f[1],
            if ok {
                f[2].to_string()
            } else {
                format!("**{}**", f[2])
            },
            f[3],
            f[4],
            f[5]
        ));
    }
    (t, rows.len(), wrong)
}

fn confusion() -> Result<ExitCode> {
    let bin = build(false)?;
    let mut out = String::new();
    let mut ok = true;
    for t in ["incidents", "evasion"] {
        let o = cargo()
            .args([
                "test",
                "--release",
                "-p",
                "sensor-tests",
                "--test",
                t,
                "--",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SENSOR_BIN", &bin)
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("running cargo test")?;
        ok &= o.status.success();
        out.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    let (table, n, wrong) = confusion_table(&out);
    println!("{table}");
    println!("{n} scenarios, {wrong} not as expected");
    Ok(if ok && wrong == 0 && n > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn bench(secs: u64, part: Vec<String>) -> Result<()> {
    let bin = build(false)?;
    let mut c = Command::new(root().join("target/release/bench"));
    c.env("SENSOR_BIN", &bin);
    if part.is_empty() {
        c.arg(secs.to_string());
    } else {
        c.args(part);
    }
    run(c)
}

fn main() -> Result<ExitCode> {
    match Cli::parse().cmd {
        Cmd::Build { static_ } => {
            let p = build(static_)?;
            println!("{}", p.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Test { args } => test(args),
        Cmd::Bench { secs, part } => bench(secs, part).map(|()| ExitCode::SUCCESS),
        Cmd::Confusion => confusion(),
        Cmd::Recall => {
            let bin = build(false)?;
            let mut c = cargo();
            c.args([
                "test",
                "--release",
                "-p",
                "sensor-tests",
                "--test",
                "evasion",
                "--",
                "--nocapture",
            ])
            .env("SENSOR_BIN", &bin);
            run(c).map(|()| ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_rows_sorted_and_mismatches_marked() {
        let out = "noise\nCONFUSION|miner|incident|none|-|-|-\ntest t ... CONFUSION|torchrun|none|none|-|-|-\nCONFUSION|bad|x\n";
        let (t, n, wrong) = confusion_table(out);
        assert_eq!((n, wrong), (2, 1));
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[2].starts_with("| benign | torchrun"), "{t}");
        assert!(lines[3].contains("**none**"), "{t}");
    }

    #[test]
    fn totals_from_libtest_lines() {
        let mut t = Totals::default();
        parse_totals(
            "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
             noise\n\
             test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out\n",
            &mut t,
        );
        assert_eq!((t.passed, t.failed, t.ignored), (15, 2, 1));
    }
}
