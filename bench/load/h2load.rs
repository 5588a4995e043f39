//! `--generator h2load`: what one Check costs the server's CPU, measured from outside.
//!
//! The built-in generator shares the machine with the servers it drives, and its own tonic
//! client takes a share of the cores; it answers "how do latency and throughput compare". This
//! mode answers "what does one Check cost heimdall's process": an independent C load generator
//! (`h2load`, Debian package `nghttp2-client`) sends one prepared gRPC frame over and over,
//! and the server's CPU time is read from `/proc/<pid>/stat` before and after the measured
//! window. The no-op authorizer runs as a child process of its own (this example with
//! `--serve-noop`), so both figures are process CPU time ÷ requests, and the ratios are taken in
//! the same run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use prost::Message as _;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use super::Args;
use super::targets::{Load, Target, preflight};

/// The gRPC method every frame is sent to.
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";
/// Bound on one h2load run beyond its own duration (connection set-up, the report).
const H2LOAD_SLACK: Duration = Duration::from_secs(30);
/// Bound on the no-op child printing its address.
const NOOP_START_TIMEOUT: Duration = Duration::from_secs(10);

/// One server process to measure and the request it is sent.
pub(crate) struct CpuTarget {
    pub(crate) name: &'static str,
    pub(crate) pid: u32,
    pub(crate) addr: SocketAddr,
    pub(crate) request: CheckRequest,
    /// Which figure this target is compared against: its name.
    pub(crate) baseline: &'static str,
    /// The goal for CPU per Check relative to the baseline, from the performance budget.
    pub(crate) cpu_goal: f64,
    pub(crate) setup: &'static str,
}

/// What one h2load run of one target measured.
pub(crate) struct CpuPhase {
    pub(crate) name: &'static str,
    pub(crate) baseline: &'static str,
    pub(crate) cpu_goal: f64,
    pub(crate) requests: u64,
    pub(crate) failed: u64,
    pub(crate) req_per_sec: f64,
    /// The server's user + system CPU time over the measured window, in seconds.
    pub(crate) cpu_seconds: f64,
}

impl CpuPhase {
    pub(crate) fn cpu_per_check_us(&self) -> f64 {
        if self.requests == 0 {
            return f64::NAN;
        }
        self.cpu_seconds * 1e6 / self.requests as f64
    }
}

/// The no-op authorizer as a child process: this example with `--serve-noop`.
pub(crate) struct NoopChild {
    child: Child,
    pub(crate) addr: SocketAddr,
}

impl NoopChild {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating this example's binary")?;
        let mut child = Command::new(exe)
            .arg("--serve-noop")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting the no-op authorizer")?;
        let stdout = child
            .stdout
            .take()
            .context("the no-op authorizer has no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(NOOP_START_TIMEOUT, lines.next_line())
            .await
            .context("the no-op authorizer did not print its address in time")??
            .context("the no-op authorizer exited before printing its address")?;
        let addr = line
            .trim()
            .parse()
            .with_context(|| format!("the no-op authorizer printed `{line}`, not an address"))?;
        Ok(Self { child, addr })
    }

    pub(crate) fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .id()
            .context("the no-op authorizer is not running")
    }
}

/// `--serve-noop`: serves the no-op authorizer on a free loopback port, prints the address on
/// standard output, and serves until killed.
pub(crate) async fn serve_noop() -> anyhow::Result<()> {
    let noop = super::targets::NoopServer::start()?;
    println!("{}", noop.addr);
    // Never resolves: the parent kills this process when it is done.
    std::future::pending::<()>().await;
    drop(noop);
    Ok(())
}

/// The gRPC frame of `request`: uncompressed flag, big-endian length, the message.
fn grpc_frame(request: &CheckRequest) -> anyhow::Result<Vec<u8>> {
    let message = request.encode_to_vec();
    let len = u32::try_from(message.len()).context("request larger than 4 GiB")?;
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&message);
    Ok(frame)
}

/// `h2load` on PATH, or a clear error saying how to install it.
pub(crate) fn h2load_binary() -> anyhow::Result<PathBuf> {
    heimdall::test_helpers::tools::find("h2load").context(
        "h2load is missing: run `scripts/install-tools.sh h2load` (Debian package nghttp2-client)",
    )
}

/// The clock ticks per second of `/proc/<pid>/stat`'s CPU times.
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|ticks| *ticks > 0.0)
        .unwrap_or(100.0)
}

/// User + system CPU time of process `pid` (all its threads, live and exited), in ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: count from the last `)`.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("/proc/<pid>/stat without a command name")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Field 3 (state) is index 0 here, so utime (14) and stime (15) are 11 and 12.
    let field = |index: usize| -> anyhow::Result<u64> {
        fields
            .get(index)
            .context("/proc/<pid>/stat is too short")?
            .parse::<u64>()
            .context("/proc/<pid>/stat: a CPU time that is not a number")
    };
    Ok(field(11)? + field(12)?)
}

/// What h2load printed, reduced to the figures used here.
struct H2loadRun {
    requests: u64,
    failed: u64,
    req_per_sec: f64,
}

/// Reads `requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout`
/// and `finished in 10.00s, 33210.30 req/s, 5.11MB/s`.
fn parse_h2load(output: &str) -> anyhow::Result<H2loadRun> {
    let mut succeeded = None;
    let mut failed = 0;
    let mut req_per_sec = None;
    for line in output.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("requests:") {
            for part in rest.split(',') {
                let mut words = part.split_whitespace();
                let (Some(count), Some(what)) = (words.next(), words.next()) else {
                    continue;
                };
                let count: u64 = count.parse().unwrap_or(0);
                match what {
                    "succeeded" => succeeded = Some(count),
                    "failed" | "errored" | "timeout" => failed += count,
                    _ => {}
                }
            }
        } else if let Some(rest) = line.strip_prefix("finished in") {
            req_per_sec = rest
                .split(',')
                .nth(1)
                .and_then(|part| part.trim().strip_suffix("req/s"))
                .and_then(|n| n.trim().parse::<f64>().ok());
        }
    }
    match (succeeded, req_per_sec) {
        (Some(requests), Some(req_per_sec)) => Ok(H2loadRun {
            requests,
            failed,
            req_per_sec,
        }),
        _ => bail!("h2load printed no request count or rate:\n{output}"),
    }
}

/// Runs h2load against `addr` for `duration`, sending the frame in `body`.
async fn h2load(
    bin: &Path,
    addr: SocketAddr,
    body: &Path,
    duration: Duration,
    args: &Args,
) -> anyhow::Result<H2loadRun> {
    let streams = (args.concurrency / args.connections).max(1);
    let seconds = duration.as_secs().max(1);
    let mut command = Command::new(bin);
    if let Some(rate) = args.rate {
        // h2load paces requests per client (connection): split the total rate over them.
        let per_client = (rate / u32::try_from(args.connections).unwrap_or(u32::MAX)).max(1);
        command.arg(format!("--rps={per_client}"));
    }
    command
        .args(["-t", "1"])
        .args(["-c", &args.connections.to_string()])
        .args(["-m", &streams.to_string()])
        .args(["-D", &seconds.to_string()])
        .args(["-d", &body.display().to_string()])
        .args(["-H", "content-type: application/grpc"])
        .args(["-H", "te: trailers"])
        .arg(format!("http://{addr}{CHECK_PATH}"))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(duration + H2LOAD_SLACK, command.output())
        .await
        .context("h2load did not finish in time")?
        .with_context(|| format!("running {}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "h2load failed ({}): {}{}",
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    parse_h2load(&stdout)
}

/// Checks the target allows its request, warms it up, then measures one window.
pub(crate) async fn measure(target: &CpuTarget, args: &Args) -> anyhow::Result<CpuPhase> {
    let bin = h2load_binary()?;
    preflight(&Target {
        name: target.name,
        addr: target.addr,
        load: std::sync::Arc::new(Load::Fixed(target.request.clone())),
        setup: target.setup,
    })
    .await?;
    let body = heimdall::test_helpers::tools::scratch_dir().join(format!(
        "h2load-{}-{}.bin",
        std::process::id(),
        target.name.replace('/', "-")
    ));
    std::fs::write(&body, grpc_frame(&target.request)?)
        .with_context(|| format!("writing the request frame to {}", body.display()))?;
    eprintln!(
        "load: {}: h2load {:?} warm-up, then {:?} with {} connection(s) × {} stream(s)",
        target.name,
        args.warmup,
        args.duration,
        args.connections,
        (args.concurrency / args.connections).max(1)
    );
    if !args.warmup.is_zero() {
        h2load(&bin, target.addr, &body, args.warmup, args).await?;
    }
    let before = cpu_ticks(target.pid)?;
    let run = h2load(&bin, target.addr, &body, args.duration, args).await?;
    let after = cpu_ticks(target.pid)?;
    let _ = std::fs::remove_file(&body);
    let cpu_seconds = after.saturating_sub(before) as f64 / clock_ticks();
    Ok(CpuPhase {
        name: target.name,
        baseline: target.baseline,
        cpu_goal: target.cpu_goal,
        requests: run.requests,
        failed: run.failed,
        req_per_sec: run.req_per_sec,
        cpu_seconds,
    })
}

/// One target over every round: the medians of its figures and of its per-round ratios (each
/// round's ratio is taken against the baseline measured in the same round, so slow drift of a
/// shared host cancels out).
pub(crate) struct Summary {
    pub(crate) name: &'static str,
    pub(crate) baseline: &'static str,
    pub(crate) cpu_goal: f64,
    pub(crate) rounds: usize,
    pub(crate) requests: u64,
    pub(crate) failed: u64,
    pub(crate) req_per_sec: f64,
    pub(crate) cpu_per_check_us: f64,
    pub(crate) cpu_ratio: f64,
    pub(crate) throughput_ratio: f64,
    /// The smallest and largest per-round CPU ratio: how much the host moved.
    pub(crate) cpu_ratio_range: (f64, f64),
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values.get(mid).copied().unwrap_or(f64::NAN)
    } else {
        let (a, b) = (values.get(mid - 1), values.get(mid));
        a.zip(b).map_or(f64::NAN, |(a, b)| (a + b) / 2.0)
    }
}

/// `rounds[r][t]` is target `t` in round `r`; every round measures the same targets in order.
pub(crate) fn summarize(rounds: &[Vec<CpuPhase>]) -> Vec<Summary> {
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    first
        .iter()
        .enumerate()
        .map(|(index, target)| {
            let mine: Vec<&CpuPhase> = rounds.iter().filter_map(|r| r.get(index)).collect();
            let ratios: Vec<(f64, f64)> = rounds
                .iter()
                .filter_map(|round| {
                    let phase = round.get(index)?;
                    let base = round.iter().find(|p| p.name == phase.baseline)?;
                    Some((
                        phase.cpu_per_check_us() / base.cpu_per_check_us(),
                        phase.req_per_sec / base.req_per_sec,
                    ))
                })
                .collect();
            let cpu_ratios: Vec<f64> = ratios.iter().map(|r| r.0).collect();
            let lowest = cpu_ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let highest = cpu_ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            Summary {
                name: target.name,
                baseline: target.baseline,
                cpu_goal: target.cpu_goal,
                rounds: mine.len(),
                requests: mine.iter().map(|p| p.requests).sum(),
                failed: mine.iter().map(|p| p.failed).sum(),
                req_per_sec: median(mine.iter().map(|p| p.req_per_sec).collect()),
                cpu_per_check_us: median(mine.iter().map(|p| p.cpu_per_check_us()).collect()),
                cpu_ratio: median(cpu_ratios),
                throughput_ratio: median(ratios.iter().map(|r| r.1).collect()),
                cpu_ratio_range: (lowest, highest),
            }
        })
        .collect()
}

/// The table: per target, throughput and CPU per Check, and both relative to its baseline.
pub(crate) fn print_table(summaries: &[Summary]) {
    println!(
        "{:<24} {:>6} {:>10} {:>14} {:>10} {:>13} {:>9} {:>14}",
        "target", "rounds", "req/s", "CPU µs/Check", "CPU ratio", "ratio range", "req/s ×", "goal"
    );
    for s in summaries {
        let goal = if s.name == s.baseline || !s.cpu_goal.is_finite() {
            "-".to_owned()
        } else if s.cpu_ratio <= s.cpu_goal {
            format!("≤{:.2} met", s.cpu_goal)
        } else {
            format!("≤{:.2} MISSED", s.cpu_goal)
        };
        println!(
            "{:<24} {:>6} {:>10.0} {:>14.1} {:>10.2} {:>6.2}–{:<6.2} {:>9.2} {:>14}",
            s.name,
            s.rounds,
            s.req_per_sec,
            s.cpu_per_check_us,
            s.cpu_ratio,
            s.cpu_ratio_range.0,
            s.cpu_ratio_range.1,
            s.throughput_ratio,
            goal
        );
        if s.failed > 0 {
            println!("  ! {} requests failed at the HTTP/2 level", s.failed);
        }
    }
    println!(
        "Medians over the rounds. CPU ratio: the target's process CPU per Check over the no-op's in \
         the same round; req/s ×: throughput over the no-op's. Read the ratios, not the absolute \
         figures: the host is shared and h2load runs on it too."
    );
}

pub(crate) fn to_json(rounds: &[Vec<CpuPhase>], summaries: &[Summary]) -> serde_json::Value {
    let phase = |p: &CpuPhase| {
        serde_json::json!({
            "target": p.name,
            "requests": p.requests,
            "failed": p.failed,
            "req_per_sec": p.req_per_sec,
            "cpu_seconds": p.cpu_seconds,
            "cpu_per_check_us": p.cpu_per_check_us(),
        })
    };
    serde_json::json!({
        "summary": summaries.iter().map(|s| serde_json::json!({
            "target": s.name,
            "baseline": s.baseline,
            "rounds": s.rounds,
            "requests": s.requests,
            "req_per_sec": s.req_per_sec,
            "cpu_per_check_us": s.cpu_per_check_us,
            "cpu_ratio": s.cpu_ratio,
            "cpu_ratio_min": s.cpu_ratio_range.0,
            "cpu_ratio_max": s.cpu_ratio_range.1,
            "throughput_ratio": s.throughput_ratio,
            "cpu_goal": if s.cpu_goal.is_finite() { Some(s.cpu_goal) } else { None },
        })).collect::<Vec<_>>(),
        "rounds": rounds.iter().map(|r| r.iter().map(phase).collect::<Vec<_>>()).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_h2load_figures() {
        let output = "finished in 10.00s, 33210.30 req/s, 5.11MB/s\n\
                      requests: 332103 total, 332231 started, 332103 done, 332100 succeeded, \
                      3 failed, 0 errored, 0 timeout\n";
        let run = parse_h2load(output).unwrap();
        assert_eq!(run.requests, 332_100);
        assert_eq!(run.failed, 3);
        assert!((run.req_per_sec - 33_210.30).abs() < 1e-6);
        assert!(parse_h2load("nothing useful").is_err());
    }

    #[test]
    fn ratios_are_taken_within_a_round_and_their_median_reported() {
        let phase = |name, baseline, requests, cpu_seconds| CpuPhase {
            name,
            baseline,
            cpu_goal: 1.15,
            requests,
            failed: 0,
            req_per_sec: requests as f64,
            cpu_seconds,
        };
        // Round 2's host is twice as slow for both targets: the ratio stays 1.5.
        let rounds = vec![
            vec![
                phase("no-op", "no-op", 100, 1.0),
                phase("x", "no-op", 100, 1.5),
            ],
            vec![
                phase("no-op", "no-op", 100, 2.0),
                phase("x", "no-op", 100, 3.0),
            ],
            vec![
                phase("no-op", "no-op", 100, 1.0),
                phase("x", "no-op", 100, 1.2),
            ],
        ];
        let summaries = summarize(&rounds);
        let x = summaries.get(1).unwrap();
        assert_eq!(x.rounds, 3);
        assert!((x.cpu_ratio - 1.5).abs() < 1e-9);
        assert!((x.cpu_ratio_range.0 - 1.2).abs() < 1e-9);
        assert!((x.cpu_ratio_range.1 - 1.5).abs() < 1e-9);
        assert_eq!(x.requests, 300);
    }
}
