//! Open-loop latency through Envoy: Envoy with heimdall as its ext_authz against the same Envoy
//! without the filter, at fixed request rates, p50/p99/p99.9 side by side.
//!
//! One run starts `heimdall serve` (embedded configuration, a fresh PASETO_SYMMETRIC_KEY), mints
//! a token for bench-user (roles user, editor), and starts two Envoys (`--concurrency 1`, or
//! `--envoy-workers`) from
//! `bench/envoy/envoy.yaml`: one with the ext_authz filter of the shipped `envoy/envoy.yaml`
//! (gRPC to heimdall, 250 ms timeout, fail closed), one identical but without the filter. Every
//! request that passes is answered by Envoy itself, so the difference between the two is the
//! authorization call. It checks that the ext_authz Envoy allows the token (200) and denies a
//! request without one (401), then drives `GET /api/documents/42` with `oha` against each Envoy
//! at each rate (1,000, 3,000 and 5,000 req/s by default) with latency correction: latency is
//! measured from the moment each request was due, not from when it was sent, so a stall shows
//! in the percentiles instead of thinning the load (no coordinated omission). A last phase sends
//! as fast as a fixed number of connections allows (closed loop), for the maximum throughput.
//!
//! All traffic stays on 127.0.0.1; every phase is bounded by its duration plus a grace period.
//! `bench/README.md` documents how to run it and how to read the table.
//!
//! ```text
//! scripts/install-tools.sh envoy oha && cargo build --release
//! cargo run --release --example envoy-load -- --duration 10
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use heimdall::test_helpers::envoy::{Envoy, render_shipped};
use heimdall::test_helpers::heimdall::{
    ConfigSource, HeimdallCommand, HeimdallProcess, mint_token, start_heimdall,
};
use heimdall::test_helpers::{http_client, tools};
use rand::Rng as _;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};

/// The bench Envoy configuration, with the ext_authz filter.
const ENVOY_TEMPLATE: &str = include_str!("envoy.yaml");
/// The ext_authz filter's name in `http_filters`.
const EXT_AUTHZ_FILTER: &str = "envoy.filters.http.ext_authz";
/// The request every phase sends.
const PATH: &str = "/api/documents/42";
/// Upper bounds on the flags, so a typo cannot start an unbounded run.
const MAX_PHASE: Duration = Duration::from_secs(600);
const MAX_RATE: u32 = 1_000_000;
const MAX_CONNECTIONS: usize = 5_000;
/// What oha may take beyond its duration (start-up, requests in flight at the deadline).
const OHA_GRACE: Duration = Duration::from_secs(30);
/// An achieved rate below this share of the requested one means the generator fell behind.
const RATE_TOLERANCE: f64 = 0.95;
/// Linux reports process CPU times in /proc in units of USER_HZ, which is 100 on every
/// architecture Envoy ships for.
const USER_HZ: f64 = 100.0;

#[derive(Parser, Debug)]
#[command(
    name = "envoy-load",
    about = "Open-loop latency through Envoy: heimdall as ext_authz against no filter, on 127.0.0.1"
)]
struct Args {
    /// Measurement time per Envoy and rate: seconds (`10`) or a duration (`500ms`, `1m`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Warm-up per Envoy before the first phase (at the lowest rate, not reported).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Requested rates in requests per second, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,3000,5000")]
    rates: Vec<u32>,
    /// Connections oha keeps open for the fixed-rate phases (enough that none waits for a free
    /// one at the highest rate unless the server stalls).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Connections for the unlimited phase (closed loop: each has one request in flight).
    #[arg(long, default_value_t = 32)]
    max_connections: usize,
    /// Skip the unlimited phase.
    #[arg(long)]
    no_max: bool,
    /// The heimdall binary (default: `heimdall` next to this example's directory, i.e.
    /// `target/release/heimdall`).
    #[arg(long)]
    heimdall_bin: Option<PathBuf>,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Worker threads of each Envoy (`--concurrency`): 1 by default; 2 is how a 2-core Envoy is
    /// deployed, at the price of sharing the cores with heimdall and oha here.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    envoy_workers: u16,
}

/// Accepts plain seconds (`3`, `0.5`) as well as humantime durations (`3s`, `250ms`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(secs) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| format!("`{text}`: {e}"));
    }
    humantime::parse_duration(text).map_err(|e| format!("`{text}`: {e}"))
}

impl Args {
    fn validate(&self) -> anyhow::Result<()> {
        if self.duration < Duration::from_secs(1) || self.duration > MAX_PHASE {
            bail!("--duration must be between 1s and 10m");
        }
        if self.warmup > MAX_PHASE {
            bail!("--warmup must be at most 10m");
        }
        if self.rates.is_empty() && self.no_max {
            bail!("nothing to measure: no --rates and --no-max");
        }
        if self.rates.iter().any(|rate| *rate == 0 || *rate > MAX_RATE) {
            bail!("--rates must be between 1 and {MAX_RATE} req/s");
        }
        for (flag, value) in [
            ("--connections", self.connections),
            ("--max-connections", self.max_connections),
        ] {
            if value == 0 || value > MAX_CONNECTIONS {
                bail!("{flag} must be between 1 and {MAX_CONNECTIONS}");
            }
        }
        Ok(())
    }
}

/// The installed components a run needs; missing ones fail the run before anything starts.
struct Components {
    heimdall: PathBuf,
    oha: PathBuf,
}

impl Components {
    fn find(args: &Args) -> anyhow::Result<Self> {
        let heimdall = args
            .heimdall_bin
            .clone()
            .unwrap_or_else(tools::heimdall_binary);
        let mut missing = Vec::new();
        if !heimdall.is_file() {
            missing.push(format!(
                "heimdall: no binary at {}; run `cargo build --release` (or pass --heimdall-bin)",
                heimdall.display()
            ));
        }
        if tools::find("envoy").is_none() {
            missing.push("envoy: run `scripts/install-tools.sh envoy`".to_owned());
        }
        let oha = tools::find("oha");
        if oha.is_none() {
            missing.push("oha: run `scripts/install-tools.sh oha`".to_owned());
        }
        match oha {
            Some(oha) if missing.is_empty() => Ok(Self { heimdall, oha }),
            _ => bail!(
                "missing components (looked in $HEIMDALL_TOOLS, {}, $PATH):\n  {}",
                tools::repo_tools_dir().display(),
                missing.join("\n  ")
            ),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("envoy-load: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Which of the two Envoys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// No ext_authz filter: Envoy's own cost.
    Plain,
    /// The ext_authz filter calling heimdall.
    ExtAuthz,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Self::Plain => "no ext_authz",
            Self::ExtAuthz => "heimdall",
        }
    }
}

/// One Envoy under test and the pid whose CPU time is sampled.
struct Target {
    variant: Variant,
    envoy: Envoy,
    pid: Option<u32>,
}

/// The offered load of a phase.
#[derive(Debug, Clone, Copy)]
enum Load {
    /// Open loop at this many requests per second, latency from each request's due time.
    Rate(u32),
    /// Closed loop: as fast as this many connections go.
    Max(usize),
}

impl Load {
    fn label(self) -> String {
        match self {
            Self::Rate(rate) => format!("{rate}/s"),
            Self::Max(connections) => format!("max ({connections} conn)"),
        }
    }
}

/// What one oha run measured, plus the CPU each process used meanwhile.
#[derive(Debug, Clone)]
struct Phase {
    load: Load,
    variant: Variant,
    requested: Option<u32>,
    achieved: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    p999_ms: Option<f64>,
    requests: u64,
    errors: u64,
    non_2xx: u64,
    error_kinds: BTreeMap<String, u64>,
    /// CPU used over the phase, in percent of one core.
    cpu_envoy: Option<f64>,
    cpu_heimdall: Option<f64>,
    cpu_oha: Option<f64>,
}

impl Phase {
    /// Whether the generator reached the requested rate (always true for the unlimited phase).
    fn rate_reached(&self) -> bool {
        self.requested
            .is_none_or(|rate| self.achieved >= f64::from(rate) * RATE_TOLERANCE)
    }

    fn to_json(&self) -> Value {
        json!({
            "load": self.load.label(),
            "envoy": self.variant.label(),
            "requested_rps": self.requested,
            "achieved_rps": self.achieved,
            "rate_reached": self.rate_reached(),
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "p999_ms": self.p999_ms,
            "requests": self.requests,
            "errors": self.errors,
            "non_2xx": self.non_2xx,
            "error_kinds": self.error_kinds,
            "cpu_percent": {
                "envoy": self.cpu_envoy,
                "heimdall": self.cpu_heimdall,
                "oha": self.cpu_oha,
            },
        })
    }
}

/// Starts everything, checks the code path, runs every phase and prints the report; `Ok(false)`
/// when a phase saw errors or non-2xx answers.
async fn run(args: &Args) -> anyhow::Result<bool> {
    args.validate()?;
    let components = Components::find(args)?;
    let oha_version = oha_version(&components.oha).await?;

    // Every child is killed when dropped, so an early return stops them all too.
    let key: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    let command = HeimdallCommand::new(ConfigSource::Embedded)
        .binary(components.heimdall.clone())
        .env("PASETO_SYMMETRIC_KEY", &key);
    let token = mint_token(&command, &["--sub", "bench-user", "--roles", "user,editor"]).await?;
    let heimdall = start_heimdall(&command, "heimdall").await?;

    let grpc = heimdall.grpc_addr();
    let with_filter = render_shipped(ENVOY_TEMPLATE, grpc, grpc).map_err(anyhow::Error::msg)?;
    let without_filter = render_shipped(&without_ext_authz(ENVOY_TEMPLATE)?, grpc, grpc)
        .map_err(anyhow::Error::msg)?;
    let mut targets = Vec::new();
    for (variant, config) in [
        (Variant::Plain, without_filter),
        (Variant::ExtAuthz, with_filter),
    ] {
        let envoy = Envoy::start_rendered_with_workers(config, args.envoy_workers)
            .await
            .context("envoy is not installed: run `scripts/install-tools.sh envoy`")?;
        let pid = pid_running_with(&envoy.config_path());
        eprintln!(
            "envoy-load: Envoy ({}) on {} (admin {})",
            variant.label(),
            envoy.listen_addr(),
            envoy.admin_addr()
        );
        targets.push(Target {
            variant,
            envoy,
            pid,
        });
    }
    preflight(&targets, &token).await?;

    let oha = Oha {
        bin: components.oha.clone(),
        authorization: format!("Authorization: Bearer {token}"),
    };
    if let Some(rate) = args.rates.iter().min() {
        for target in &targets {
            if !args.warmup.is_zero() {
                eprintln!(
                    "envoy-load: warm-up {} at {rate}/s for {:?}",
                    target.variant.label(),
                    args.warmup
                );
                oha.run(
                    &target.envoy.url(PATH),
                    Load::Rate(*rate),
                    args.warmup,
                    args,
                )
                .await?;
            }
        }
    }
    let mut loads: Vec<Load> = args.rates.iter().map(|rate| Load::Rate(*rate)).collect();
    if !args.no_max {
        loads.push(Load::Max(args.max_connections));
    }
    let mut phases = Vec::new();
    for load in loads {
        for target in &targets {
            eprintln!(
                "envoy-load: {} through Envoy ({}) for {:?}",
                load.label(),
                target.variant.label(),
                args.duration
            );
            phases.push(measure(&oha, target, &heimdall, load, args).await?);
        }
    }

    let clean = phases.iter().all(|p| p.errors == 0 && p.non_2xx == 0);
    if args.json {
        let report = json!({
            "duration_s": args.duration.as_secs_f64(),
            "connections": args.connections,
            "oha": oha_version,
            "envoy_concurrency": args.envoy_workers,
            "phases": phases.iter().map(Phase::to_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&phases, args, &oha_version);
    }
    Ok(clean)
}

/// The template without the ext_authz filter: everything else, the `heimdall` cluster included,
/// stays, so the two Envoys differ by the filter alone.
fn without_ext_authz(template: &str) -> anyhow::Result<String> {
    let mut doc: Value = serde_yaml_ng::from_str(template).context("bench/envoy/envoy.yaml")?;
    let mut removed = 0;
    let listeners = doc
        .pointer_mut("/static_resources/listeners")
        .and_then(Value::as_array_mut)
        .context("bench/envoy/envoy.yaml has no listeners")?;
    for listener in listeners {
        let chains = listener
            .get_mut("filter_chains")
            .and_then(Value::as_array_mut)
            .context("a listener without filter_chains")?;
        for chain in chains {
            let filters = chain
                .get_mut("filters")
                .and_then(Value::as_array_mut)
                .context("a filter chain without filters")?;
            for filter in filters {
                if let Some(http_filters) = filter
                    .pointer_mut("/typed_config/http_filters")
                    .and_then(Value::as_array_mut)
                {
                    let before = http_filters.len();
                    http_filters.retain(|f| {
                        f.get("name").and_then(Value::as_str) != Some(EXT_AUTHZ_FILTER)
                    });
                    removed += before - http_filters.len();
                }
            }
        }
    }
    if removed != 1 {
        bail!("expected one {EXT_AUTHZ_FILTER} filter in bench/envoy/envoy.yaml, found {removed}");
    }
    serde_yaml_ng::to_string(&doc).context("rendering the Envoy configuration without ext_authz")
}

/// The numbers are only about heimdall's code path if the ext_authz Envoy allows the token and
/// denies its absence, and the plain Envoy answers 200 to the same request.
async fn preflight(targets: &[Target], token: &str) -> anyhow::Result<()> {
    let client = http_client();
    for target in targets {
        let url = target.envoy.url(PATH);
        let with_token = client
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("GET {url} with the token"))?
            .status();
        let without_token = client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url} without a token"))?
            .status();
        let expected_without = match target.variant {
            Variant::Plain => 200,
            Variant::ExtAuthz => 401,
        };
        if with_token.as_u16() != 200 || without_token.as_u16() != expected_without {
            bail!(
                "Envoy ({}) answered {with_token} with the token (expected 200) and \
                 {without_token} without (expected {expected_without}); Envoy's log:\n{}",
                target.variant.label(),
                target.envoy.log()
            );
        }
        eprintln!(
            "envoy-load: Envoy ({}): {with_token} with the token, {without_token} without",
            target.variant.label()
        );
    }
    Ok(())
}

/// How to run oha for this run's request.
struct Oha {
    bin: PathBuf,
    /// The `Authorization` header line.
    authorization: String,
}

impl Oha {
    /// Runs oha once and returns its JSON report and its pid's CPU percent.
    async fn run(
        &self,
        url: &str,
        load: Load,
        duration: Duration,
        args: &Args,
    ) -> anyhow::Result<(Value, Option<f64>)> {
        let mut command = tokio::process::Command::new(&self.bin);
        command
            .args(["--no-tui", "--output-format", "json"])
            // Requests in flight at the deadline are waited for, not counted as errors.
            .arg("--wait-ongoing-requests-after-deadline")
            .arg("-z")
            .arg(format!("{}ms", duration.as_millis()))
            .arg("-H")
            .arg(&self.authorization);
        match load {
            Load::Rate(rate) => {
                command
                    .arg("-c")
                    .arg(args.connections.to_string())
                    .arg("-q")
                    .arg(rate.to_string())
                    .arg("--latency-correction");
            }
            Load::Max(connections) => {
                command.arg("-c").arg(connections.to_string());
            }
        }
        command
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("running {}", self.bin.display()))?;
        // oha's CPU time shows in this process's children's times once it has been waited for.
        let cpu = CpuSample::children();
        let output = tokio::time::timeout(duration + OHA_GRACE, child.wait_with_output())
            .await
            .with_context(|| format!("oha did not finish within {:?}", duration + OHA_GRACE))?
            .context("waiting for oha")?;
        let cpu = cpu.percent();
        if !output.status.success() {
            bail!(
                "oha failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let report: Value = serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "oha printed something that is not JSON: {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })?;
        Ok((report, cpu))
    }
}

/// One phase against one Envoy, with the CPU heimdall and Envoy used meanwhile.
async fn measure(
    oha: &Oha,
    target: &Target,
    heimdall: &HeimdallProcess,
    load: Load,
    args: &Args,
) -> anyhow::Result<Phase> {
    let envoy_cpu = CpuSample::start(target.pid);
    let heimdall_cpu = CpuSample::start(heimdall.pid());
    let (report, oha_cpu) = oha
        .run(&target.envoy.url(PATH), load, args.duration, args)
        .await?;
    let cpu_envoy = envoy_cpu.percent();
    let cpu_heimdall = heimdall_cpu.percent();
    let counts = |key: &str| -> BTreeMap<String, u64> {
        report
            .get(key)
            .and_then(Value::as_object)
            .map(|map| {
                map.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let statuses = counts("statusCodeDistribution");
    let error_kinds = counts("errorDistribution");
    let non_2xx = statuses
        .iter()
        .filter(|(status, _)| !status.starts_with('2'))
        .map(|(_, n)| n)
        .sum();
    let errors = error_kinds.values().sum::<u64>();
    let percentile = |name: &str| {
        report
            .pointer(&format!("/latencyPercentiles/{name}"))
            .and_then(Value::as_f64)
            .map(|secs| secs * 1000.0)
    };
    let achieved = report
        .pointer("/summary/requestsPerSec")
        .and_then(Value::as_f64)
        .context("oha's report has no summary.requestsPerSec")?;
    Ok(Phase {
        load,
        variant: target.variant,
        requested: match load {
            Load::Rate(rate) => Some(rate),
            Load::Max(_) => None,
        },
        achieved,
        p50_ms: percentile("p50"),
        p99_ms: percentile("p99"),
        p999_ms: percentile("p99.9"),
        requests: statuses.values().sum::<u64>() + errors,
        errors,
        non_2xx,
        error_kinds,
        cpu_envoy,
        cpu_heimdall: match target.variant {
            Variant::ExtAuthz => cpu_heimdall,
            // heimdall idles while the plain Envoy is measured.
            Variant::Plain => None,
        },
        cpu_oha: oha_cpu,
    })
}

/// `oha --version`, which also proves the binary runs.
async fn oha_version(bin: &Path) -> anyhow::Result<String> {
    let output = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(bin)
            .arg("--version")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("`oha --version` did not finish within 10s")?
    .with_context(|| format!("running {}", bin.display()))?;
    if !output.status.success() {
        bail!(
            "`{} --version` failed ({}); reinstall with `scripts/install-tools.sh oha`",
            bin.display(),
            output.status
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The pid of the process whose command line holds `arg` (Envoy's configuration file is unique
/// to each Envoy the testkit starts).
fn pid_running_with(arg: &Path) -> Option<u32> {
    let wanted = arg.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            cmdline
                .split(|b| *b == 0)
                .any(|part| part == wanted)
                .then_some(pid)
        })
}

/// A process's CPU time (user + system) at a start instant, to turn into a percentage later.
struct CpuSample {
    pid: Option<u32>,
    ticks: Option<u64>,
    at: Instant,
}

impl CpuSample {
    fn start(pid: Option<u32>) -> Self {
        Self {
            pid,
            ticks: pid.and_then(cpu_ticks),
            at: Instant::now(),
        }
    }

    /// The CPU time of this process's waited-for children.
    fn children() -> Self {
        Self {
            pid: None,
            ticks: children_ticks(),
            at: Instant::now(),
        }
    }

    /// CPU used since the sample was taken, in percent of one core; `None` if the process could
    /// not be read (e.g. it has exited).
    fn percent(&self) -> Option<f64> {
        let now = match self.pid {
            Some(pid) => cpu_ticks(pid)?,
            None => children_ticks()?,
        };
        let elapsed = self.at.elapsed().as_secs_f64();
        let used = now.checked_sub(self.ticks?)?;
        (elapsed > 0.0).then(|| u64_to_f64(used) / USER_HZ / elapsed * 100.0)
    }
}

/// utime + stime of `/proc/<pid>/stat`, in USER_HZ ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    stat_pair(&pid.to_string(), 14)
}

/// cutime + cstime of `/proc/self/stat`: the CPU time of the children this process has waited
/// for, in USER_HZ ticks.
fn children_ticks() -> Option<u64> {
    stat_pair("self", 16)
}

/// The sum of fields `field` and `field + 1` (numbered from 1, as in proc(5)) of
/// `/proc/<pid>/stat`.
fn stat_pair(pid: &str, field: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it, from
    // field 3.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(field.checked_sub(3)?);
    let first: u64 = fields.next()?.parse().ok()?;
    let second: u64 = fields.next()?.parse().ok()?;
    Some(first + second)
}

#[expect(
    clippy::cast_precision_loss,
    reason = "CPU ticks of one bench phase are far below 2^52"
)]
fn u64_to_f64(value: u64) -> f64 {
    value as f64
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

fn pct(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}%"))
}

fn print_table(phases: &[Phase], args: &Args, oha_version: &str) {
    println!(
        "GET {PATH} through Envoy (--concurrency {}, HTTP/1.1, direct_response 200), {:?} per \
         phase, {oha_version}; fixed rates open loop with latency correction over {} \
         connections",
        args.envoy_workers, args.duration, args.connections
    );
    println!();
    println!(
        "{:<16} {:<13} {:>9} {:>8} {:>8} {:>9} {:>7} {:>8} {:>9} {:>9} {:>6}",
        "load",
        "Envoy",
        "achieved",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "errors",
        "non-2xx",
        "CPU:envoy",
        "heimdall",
        "oha"
    );
    let mut previous = None;
    for phase in phases {
        let load = phase.load.label();
        let shown = if previous.as_ref() == Some(&load) {
            String::new()
        } else {
            load.clone()
        };
        let behind = if phase.rate_reached() { " " } else { "*" };
        println!(
            "{:<16} {:<13} {:>8.0}{behind} {:>8} {:>8} {:>9} {:>7} {:>8} {:>9} {:>9} {:>6}",
            shown,
            phase.variant.label(),
            phase.achieved,
            ms(phase.p50_ms),
            ms(phase.p99_ms),
            ms(phase.p999_ms),
            phase.errors,
            phase.non_2xx,
            pct(phase.cpu_envoy),
            pct(phase.cpu_heimdall),
            pct(phase.cpu_oha),
        );
        previous = Some(load);
    }
    println!();
    if phases.iter().any(|p| !p.rate_reached()) {
        println!(
            "* achieved rate below {:.0}% of the requested one: the box could not offer that \
             load, and the percentiles include the time requests waited to be sent",
            RATE_TOLERANCE * 100.0
        );
    }
    for phase in phases.iter().filter(|p| !p.error_kinds.is_empty()) {
        println!(
            "{} {}: errors {:?}",
            phase.load.label(),
            phase.variant.label(),
            phase.error_kinds
        );
    }
    println!(
        "CPU is percent of one core over the phase (the box has {} cores shared by oha, both \
         Envoys and heimdall); heimdall's is shown for the ext_authz phases only.",
        std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get)
    );
}
