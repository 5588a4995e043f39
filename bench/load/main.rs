//! Load harness: heimdall's ext_authz `Check` against a no-op authorizer, side by side.
//!
//! One run starts a no-op `envoy.service.auth.v3.Authorization` server in this process (the
//! baseline: the cost of gRPC, HTTP/2 and protobuf alone) and `heimdall serve` as a child
//! process, mints a token with `heimdall token mint`, then drives both with the same Envoy-shaped
//! `CheckRequest` in a closed loop at fixed concurrency. It prints throughput and latency
//! percentiles per target and the heimdall/no-op ratios, which are what to compare across
//! machines and commits: the absolute figures depend on the host, since the load generator and
//! the servers share its cores.
//!
//! With `--cerbos` it also starts a Cerbos PDP (`.tools/bin/cerbos`) and measures, in the same
//! run, `CheckResources` sent straight to Cerbos (Cerbos's own cost), heimdall with a `cerbos`
//! authorizer and its decision cache off (one Cerbos call per Check), and the same with the cache
//! on and a fixed request (every Check a cache hit); then it prints heimdall-uncached against
//! Cerbos direct and heimdall-cached against the no-op server.
//!
//! All traffic stays on 127.0.0.1 and every loop ends by a deadline. `bench/README.md` documents
//! the flags and how to read the output.
//!
//! ```text
//! cargo build --release && cargo run --release --example load -- --duration 10
//! cargo build --release && cargo run --release --example load -- --cerbos --duration 5
//! ```

mod h2load;
mod report;
mod targets;
mod worker;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use clap::Parser;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use heimdall::test_helpers::cerbos::{self, Cerbos};
use heimdall::test_helpers::heimdall::{ConfigSource, HeimdallCommand, mint_token, start_heimdall};
use heimdall::test_helpers::tools;
use rand::Rng as _;
use rand::distr::Alphanumeric;

use h2load::{CpuTarget, NoopChild};
use report::Report;
use targets::{
    CERBOS_FIXED_ID, CERBOS_PATH_PREFIX, Load, NoopServer, PATH, Target, anonymous_request,
    cerbos_request, check_request, preflight,
};
use worker::run_phase;

/// Upper bounds on the flags, so a typo cannot start an unbounded run.
const MAX_PHASE: Duration = Duration::from_secs(3600);
const MAX_CONCURRENCY: usize = 10_000;

/// heimdall's configurations for `--cerbos`, relative to the repository root: decision cache
/// off, and on.
const CERBOS_BENCH_CONFIG: &str = "bench/cerbos-bench.yaml";
const CERBOS_BENCH_CACHED_CONFIG: &str = "bench/cerbos-bench-cached.yaml";
/// What heimdall uncached may add to Cerbos's own latency: at most 10%.
const CERBOS_OVERHEAD_TARGET: f64 = 1.10;

const PLAIN_SETUP: &str = "the request is GET /api/documents/42 with a token for bench-user, \
                           roles user and editor";
const PUBLIC_PATH: &str = "/public/index.html";
const PUBLIC_SETUP: &str = "the request is GET /public/index.html without a credential, which the \
                            embedded configuration's `public` rule allows";
const CERBOS_SETUP: &str = "the request is alice (role user, department eng) viewing document \
                            alice/<id> (department eng, not public, published), which Cerbos's \
                            example policies in infra/cerbos/policies allow";

#[derive(Parser, Debug)]
#[command(
    name = "load",
    about = "Load harness: heimdall's ext_authz Check against a no-op authorizer on 127.0.0.1"
)]
struct Args {
    /// Measurement time per target: seconds (`10`) or a duration (`500ms`, `1m`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Warm-up time per target before measuring, same syntax as --duration.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Workers per target, each with one call in flight (closed loop).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// HTTP/2 connections per target; workers are spread over them round-robin.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// The heimdall binary (default: `heimdall` next to this example's directory, i.e.
    /// `target/release/heimdall`).
    #[arg(long)]
    heimdall_bin: Option<PathBuf>,
    /// heimdall configuration file, passed as HEIMDALL_CONFIG (default: the embedded one).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Measure the no-op server only: no heimdall process, no token.
    #[arg(long)]
    only_noop: bool,
    /// Measure the no-op server again after heimdall, to see how much the host drifted.
    #[arg(long)]
    repeat: bool,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also start a Cerbos PDP and measure Cerbos direct, heimdall with its `cerbos` authorizer
    /// and the decision cache off, and the same with the cache on.
    #[arg(long, conflicts_with_all = ["only_noop", "config"])]
    cerbos: bool,
    /// The Cerbos binary for --cerbos (default: `.tools/bin/cerbos` in the repository).
    #[arg(long, requires = "cerbos")]
    cerbos_bin: Option<PathBuf>,
    /// `builtin`: this process's tonic client drives every target (throughput and latency).
    /// `h2load`: h2load (Debian nghttp2-client) drives them and the report is each server
    /// process's CPU time per Check against the no-op's, for the documents and public rules
    /// (and the cached Cerbos decision with --cerbos).
    #[arg(long, value_enum, default_value_t = Generator::Builtin)]
    generator: Generator,
    /// Internal (the h2load mode's baseline process): serve the no-op authorizer on a free
    /// loopback port, print its address and serve until killed.
    #[arg(long, hide = true)]
    serve_noop: bool,
    /// With `--generator h2load`: measure every target this many times, in turn, and report
    /// the medians (each ratio against the no-op of the same round).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=50))]
    rounds: u16,
    /// With `--generator h2load`: a fixed total request rate (req/s, paced per connection with
    /// h2load's `--rps`) instead of as fast as the server answers, so that every target does
    /// the same work per second and CPU per Check compares like with like.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    rate: Option<u32>,
    /// With `--generator h2load`: another heimdall binary (e.g. the previous commit's) measured
    /// in the same rounds as `before-documents` and `before-public`, to see what a change did.
    #[arg(long)]
    compare_bin: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Generator {
    Builtin,
    H2load,
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
        if self.duration.is_zero() || self.duration > MAX_PHASE {
            bail!("--duration must be between 1ms and 1h");
        }
        if self.warmup > MAX_PHASE {
            bail!("--warmup must be at most 1h");
        }
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            bail!("--concurrency must be between 1 and {MAX_CONCURRENCY}");
        }
        if self.connections == 0 || self.connections > self.concurrency {
            bail!("--connections must be between 1 and --concurrency (each needs a worker)");
        }
        if self.cerbos {
            // Before anything starts, not after heimdall is up.
            cerbos_bin(self)?;
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let result = if args.serve_noop {
        h2load::serve_noop().await.map(|()| true)
    } else if args.generator == Generator::H2load {
        run_h2load(&args).await
    } else {
        run(&args).await
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("load: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs every phase and prints the report; `Ok(false)` when any phase saw errors or denials.
async fn run(args: &Args) -> anyhow::Result<bool> {
    args.validate()?;
    let noop = NoopServer::start()?;
    eprintln!("load: no-op authorizer on {}", noop.addr);

    // Every child is killed when dropped, so an early return stops them all too.
    let mut heimdalls = Vec::new();
    let mut pdp = None;
    let mut plain = Arc::new(Load::Fixed(check_request("not-a-token", PATH, &[])));
    let mut targets = Vec::new();
    if !args.only_noop {
        let env = HeimdallEnv::new(args)?;
        let plain_heimdall = env.plain();
        let token = mint_token(
            &plain_heimdall,
            &["--sub", "bench-user", "--roles", "user,editor"],
        )
        .await?;
        let child = start_heimdall(&plain_heimdall, "heimdall").await?;
        plain = Arc::new(Load::Fixed(check_request(&token, PATH, &[])));
        targets.push(Target {
            name: "heimdall",
            addr: child.grpc_addr(),
            load: Arc::clone(&plain),
            setup: PLAIN_SETUP,
        });
        heimdalls.push(child);

        if args.cerbos {
            let cerbos = start_cerbos(args).await?;
            let uncached_env = env.for_cerbos(CERBOS_BENCH_CONFIG, cerbos.grpc_addr())?;
            let cached_env = env.for_cerbos(CERBOS_BENCH_CACHED_CONFIG, cerbos.grpc_addr())?;
            let docs = cerbos_check_request(&uncached_env).await?;
            let uncached = start_heimdall(&uncached_env, "heimdall-uncached").await?;
            let cached = start_heimdall(&cached_env, "heimdall-cached").await?;
            // Cache first, then the two Cerbos-bound targets back to back, so that the pair
            // whose ratio matters runs under the same host conditions.
            targets.push(Target {
                name: "heimdall-cached",
                addr: cached.grpc_addr(),
                load: Arc::new(Load::Fixed(docs.clone())),
                setup: CERBOS_SETUP,
            });
            targets.push(Target {
                name: "cerbos-direct",
                addr: cerbos.grpc_addr(),
                load: Arc::new(Load::Cerbos(cerbos_request())),
                setup: CERBOS_SETUP,
            });
            targets.push(Target {
                name: "heimdall-uncached",
                addr: uncached.grpc_addr(),
                load: Arc::new(Load::VaryingPath {
                    base: docs,
                    prefix: CERBOS_PATH_PREFIX,
                }),
                setup: CERBOS_SETUP,
            });
            heimdalls.push(uncached);
            heimdalls.push(cached);
            pdp = Some(cerbos);
        }
    }
    targets.insert(
        0,
        Target {
            name: "no-op",
            addr: noop.addr,
            load: Arc::clone(&plain),
            setup: PLAIN_SETUP,
        },
    );
    if args.repeat {
        targets.push(Target {
            name: "no-op",
            addr: noop.addr,
            load: plain,
            setup: PLAIN_SETUP,
        });
    }

    let mut phases = Vec::with_capacity(targets.len());
    for target in &targets {
        preflight(target).await?;
        eprintln!(
            "load: {}: {:?} warm-up, then {:?} at concurrency {} over {} connection(s)",
            target.name, args.warmup, args.duration, args.concurrency, args.connections
        );
        let phase = run_phase(target, args).await?;
        phase.warn_if_failed();
        phases.push(phase);
    }

    for mut child in heimdalls {
        child.kill().await;
    }
    if let Some(mut cerbos) = pdp {
        cerbos.stop().await;
    }
    drop(noop);

    let report = Report::new(args, &phases);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        report.print_table();
    }
    Ok(phases.iter().all(|p| p.clean()))
}

/// The `--cerbos` request (see CERBOS_SETUP) with a token minted by `heimdall` for alice.
async fn cerbos_check_request(heimdall: &HeimdallCommand) -> anyhow::Result<CheckRequest> {
    let claims = [
        "--sub",
        "alice",
        "--roles",
        "user",
        "--attr",
        "department=eng",
    ];
    let token = mint_token(heimdall, &claims).await?;
    let path = format!("{CERBOS_PATH_PREFIX}{CERBOS_FIXED_ID}");
    Ok(check_request(&token, &path, &[("x-department", "eng")]))
}

/// `--generator h2load`: CPU per Check of each server process, against the no-op's.
async fn run_h2load(args: &Args) -> anyhow::Result<bool> {
    args.validate()?;
    h2load::h2load_binary()?;
    let noop = NoopChild::start().await?;
    eprintln!("load: no-op authorizer (child process) on {}", noop.addr);
    let env = HeimdallEnv::new(args)?;
    let plain = env.plain();
    let token = mint_token(&plain, &["--sub", "bench-user", "--roles", "user,editor"]).await?;
    let heimdall = start_heimdall(&plain, "heimdall").await?;
    let heimdall_pid = heimdall.pid().context("heimdall is not running")?;
    let documents = check_request(&token, PATH, &[]);
    let public = anonymous_request(PUBLIC_PATH);
    let noop_pid = noop.pid()?;
    // Every heimdall target is compared with the no-op server answering the very same frame:
    // a smaller request costs the no-op less too.
    let noop_for = |name: &'static str, request: &CheckRequest, setup: &'static str| CpuTarget {
        name,
        pid: noop_pid,
        addr: noop.addr,
        request: request.clone(),
        baseline: name,
        cpu_goal: f64::INFINITY,
        setup,
    };
    let mut targets = vec![
        noop_for("no-op/documents", &documents, PLAIN_SETUP),
        CpuTarget {
            name: "heimdall-documents",
            pid: heimdall_pid,
            addr: heimdall.grpc_addr(),
            request: documents.clone(),
            baseline: "no-op/documents",
            cpu_goal: 1.15,
            setup: PLAIN_SETUP,
        },
        noop_for("no-op/public", &public, PUBLIC_SETUP),
        CpuTarget {
            name: "heimdall-public",
            pid: heimdall_pid,
            addr: heimdall.grpc_addr(),
            request: public.clone(),
            baseline: "no-op/public",
            cpu_goal: 1.05,
            setup: PUBLIC_SETUP,
        },
    ];
    let mut others = Vec::new();
    if let Some(before) = &args.compare_bin {
        // Same key and configuration, another binary: an A/B of two builds in one run.
        let command = plain.on_fresh_ports().binary(before.clone());
        let child = start_heimdall(&command, "before").await?;
        let pid = child
            .pid()
            .context("the --compare-bin heimdall is not running")?;
        targets.push(CpuTarget {
            name: "before-documents",
            pid,
            addr: child.grpc_addr(),
            request: documents.clone(),
            baseline: "no-op/documents",
            cpu_goal: f64::INFINITY,
            setup: PLAIN_SETUP,
        });
        targets.push(CpuTarget {
            name: "before-public",
            pid,
            addr: child.grpc_addr(),
            request: public.clone(),
            baseline: "no-op/public",
            cpu_goal: f64::INFINITY,
            setup: PUBLIC_SETUP,
        });
        others.push(child);
    }
    let mut pdp = None;
    if args.cerbos {
        let cerbos = start_cerbos(args).await?;
        let cached_env = env.for_cerbos(CERBOS_BENCH_CACHED_CONFIG, cerbos.grpc_addr())?;
        let request = cerbos_check_request(&cached_env).await?;
        let cached = start_heimdall(&cached_env, "heimdall-cerbos-cached").await?;
        targets.push(noop_for("no-op/cerbos", &request, CERBOS_SETUP));
        targets.push(CpuTarget {
            name: "heimdall-cerbos-cached",
            pid: cached.pid().context("heimdall is not running")?,
            addr: cached.grpc_addr(),
            request,
            baseline: "no-op/cerbos",
            cpu_goal: 1.3,
            setup: CERBOS_SETUP,
        });
        others.push(cached);
        pdp = Some(cerbos);
    }
    let mut rounds = Vec::with_capacity(usize::from(args.rounds));
    for round in 1..=args.rounds {
        eprintln!("load: round {round} of {}", args.rounds);
        let mut phases = Vec::with_capacity(targets.len());
        for target in &targets {
            phases.push(h2load::measure(target, args).await?);
        }
        rounds.push(phases);
    }
    let summaries = h2load::summarize(&rounds);
    let mut heimdall = heimdall;
    heimdall.kill().await;
    for mut child in others {
        child.kill().await;
    }
    if let Some(mut cerbos) = pdp {
        cerbos.stop().await;
    }
    drop(noop);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&h2load::to_json(&rounds, &summaries))?
        );
    } else {
        h2load::print_table(&summaries);
    }
    Ok(summaries.iter().all(|s| s.failed == 0))
}

// ---------------------------------------------------------------------------------------------
// heimdall and Cerbos as child processes (the testkit's managed processes)
// ---------------------------------------------------------------------------------------------

/// What every `heimdall serve` and `heimdall token mint` of a run share: the binary and the key.
struct HeimdallEnv {
    bin: PathBuf,
    /// `--config`, made absolute (heimdall runs from the repository root).
    config: Option<PathBuf>,
    key: String,
}

impl HeimdallEnv {
    fn new(args: &Args) -> anyhow::Result<Self> {
        let (bin, is_default) = match &args.heimdall_bin {
            Some(bin) => (bin.clone(), false),
            None => (tools::heimdall_binary(), true),
        };
        if !bin.is_file() {
            bail!(
                "no heimdall binary at {}: run `cargo build --release` first, pass --heimdall-bin, \
                 or measure the baseline alone with --only-noop",
                bin.display()
            );
        }
        if is_default {
            warn_if_stale(&bin);
        }
        let config = match &args.config {
            Some(config) if !config.is_file() => {
                bail!("--config {}: no such file", config.display())
            }
            Some(config) => Some(
                std::fs::canonicalize(config)
                    .with_context(|| format!("--config {}", config.display()))?,
            ),
            None => None,
        };
        // PASETO_SYMMETRIC_KEY takes the raw bytes of the variable: 32 ASCII characters are
        // 32 bytes, and a fresh key per run means no token from elsewhere can be replayed here.
        let key = rand::rng()
            .sample_iter(Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        Ok(Self { bin, config, key })
    }

    /// The plain instance: `--config` or the embedded configuration, on free loopback ports.
    fn plain(&self) -> HeimdallCommand {
        let config = self
            .config
            .clone()
            .map_or(ConfigSource::Embedded, ConfigSource::File);
        HeimdallCommand::new(config)
            .binary(self.bin.clone())
            .env("PASETO_SYMMETRIC_KEY", &self.key)
    }

    /// An instance for `--cerbos`: same binary and key (so tokens minted by one verify on the
    /// other), fresh ports, `config` (relative to the repository root) and Cerbos at `pdp`.
    fn for_cerbos(&self, config: &str, pdp: SocketAddr) -> anyhow::Result<HeimdallCommand> {
        let config = repo_root().join(config);
        if !config.is_file() {
            bail!("{}: no such file", config.display());
        }
        Ok(HeimdallCommand::new(ConfigSource::File(config))
            .binary(self.bin.clone())
            .env("PASETO_SYMMETRIC_KEY", &self.key)
            .env("CERBOS_GRPC_URL", &pdp.to_string()))
    }
}

fn repo_root() -> PathBuf {
    tools::repo_root()
}

/// `cargo run --example` does not rebuild the binary: say so when the sources are newer.
fn warn_if_stale(bin: &Path) {
    let Ok(built) = bin.metadata().and_then(|m| m.modified()) else {
        return;
    };
    let root = repo_root();
    let newest = [
        root.join("Cargo.toml"),
        root.join("config"),
        root.join("src"),
    ]
    .iter()
    .filter_map(|path| newest_mtime(path, 8))
    .max();
    if newest.is_some_and(|newest| newest > built) {
        eprintln!(
            "load: warning: {} is older than the sources; run `cargo build --release` to measure \
             the current code",
            bin.display()
        );
    }
}

/// The newest modification time under `path`, `depth` directory levels deep at most.
fn newest_mtime(path: &Path, depth: u32) -> Option<SystemTime> {
    let meta = path.metadata().ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    if depth == 0 {
        return None;
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| newest_mtime(&entry.path(), depth - 1))
        .max()
}

/// `cerbos server` with the shipped configuration and example policies, its listeners on free
/// loopback ports; waits until gRPC health says SERVING.
async fn start_cerbos(args: &Args) -> anyhow::Result<Cerbos> {
    let bin = cerbos_bin(args)?;
    let pdp = Cerbos::start_binary(bin, Path::new(cerbos::POLICIES), &[])
        .await
        .map_err(anyhow::Error::msg)?;
    eprintln!(
        "load: Cerbos ready on {} (HTTP {})",
        pdp.grpc_addr(),
        pdp.http_addr()
    );
    Ok(pdp)
}

/// `--cerbos-bin` or `.tools/bin/cerbos`, which must exist.
fn cerbos_bin(args: &Args) -> anyhow::Result<PathBuf> {
    let bin = args
        .cerbos_bin
        .clone()
        .unwrap_or_else(|| repo_root().join(".tools/bin/cerbos"));
    if !bin.is_file() {
        bail!(
            "no Cerbos binary at {}: run `scripts/install-tools.sh cerbos` or pass --cerbos-bin",
            bin.display()
        );
    }
    Ok(bin)
}
