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

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use clap::Parser;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
    attribute_context,
};
use envoy_types::pb::google::rpc;
use hdrhistogram::Histogram;
use heimdall::cerbos::pb::cerbos::effect::v1::Effect;
use heimdall::cerbos::pb::cerbos::engine::v1::{Principal, Resource};
use heimdall::cerbos::pb::cerbos::request::v1::{CheckResourcesRequest, check_resources_request};
use heimdall::cerbos::pb::cerbos::response::v1::CheckResourcesResponse;
use heimdall::cerbos::pb::cerbos::svc::v1::cerbos_service_client::CerbosServiceClient;
use rand::Rng as _;
use rand::distr::Alphanumeric;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::sync::{Mutex, oneshot};
use tokio::task::JoinSet;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long heimdall may take to answer 200 on `/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two `/ready` polls.
const READY_POLL: Duration = Duration::from_millis(50);
/// Bound on one `/ready` exchange, so a stuck socket cannot eat the whole readiness budget.
const READY_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on `heimdall token mint`.
const MINT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one `Check` call: a call that hangs counts as an error instead of stalling a worker
/// past the end of its phase.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on opening one HTTP/2 connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// heimdall log lines kept to explain a failed start.
const LOG_TAIL: usize = 40;
/// Histogram range in microseconds: 1 µs to 60 s at three significant digits.
const HISTOGRAM_MAX_US: u64 = 60_000_000;
/// Upper bounds on the flags, so a typo cannot start an unbounded run.
const MAX_PHASE: Duration = Duration::from_secs(3600);
const MAX_CONCURRENCY: usize = 10_000;

/// The request every worker sends, shaped like Envoy's for `GET /api/documents/42?x=1`.
const HOST: &str = "127.0.0.1:10000";
const PATH: &str = "/api/documents/42?x=1";

/// `--cerbos`: how long Cerbos may take to answer SERVING on its gRPC health service.
const CERBOS_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one Cerbos health probe.
const CERBOS_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Cerbos's shipped configuration and the example policies, relative to the repository root.
const CERBOS_CONFIG: &str = "infra/cerbos/config.yaml";
const CERBOS_POLICIES: &str = "infra/cerbos/policies";
/// heimdall's configurations for `--cerbos`, relative to the repository root: decision cache
/// off, and on.
const CERBOS_BENCH_CONFIG: &str = "bench/cerbos-bench.yaml";
const CERBOS_BENCH_CACHED_CONFIG: &str = "bench/cerbos-bench-cached.yaml";
/// The `--cerbos` request: `GET /docs/alice/<id>` with `X-Department: eng`, by alice (role
/// `user`, attribute `department: eng`), allowed by the example policy's `view-own` rule.
const CERBOS_PATH_PREFIX: &str = "/docs/alice/";
const CERBOS_FIXED_ID: u64 = 42;
/// What heimdall uncached may add to Cerbos's own latency: at most 10%.
const CERBOS_OVERHEAD_TARGET: f64 = 1.10;

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
    match run(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("load: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// One target to measure: where it listens, what to send, and what a denial would mean.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    load: Arc<Load>,
    /// The setup the first call checks, for the message when it is not allowed.
    setup: &'static str,
}

const PLAIN_SETUP: &str = "the request is GET /api/documents/42 with a token for bench-user, \
                           roles user and editor";
const CERBOS_SETUP: &str = "the request is alice (role user, department eng) viewing document \
                            alice/<id> (department eng, not public, published), which Cerbos's \
                            example policies in infra/cerbos/policies allow";

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
        let token = mint_token(&env, &["--sub", "bench-user", "--roles", "user,editor"]).await?;
        let child = start_heimdall(&env, "heimdall").await?;
        plain = Arc::new(Load::Fixed(check_request(&token, PATH, &[])));
        targets.push(Target {
            name: "heimdall",
            addr: child.grpc,
            load: Arc::clone(&plain),
            setup: PLAIN_SETUP,
        });
        heimdalls.push(child);

        if args.cerbos {
            let cerbos = CerbosPdp::start(args).await?;
            let uncached_env = env.for_cerbos(CERBOS_BENCH_CONFIG, cerbos.grpc)?;
            let cached_env = env.for_cerbos(CERBOS_BENCH_CACHED_CONFIG, cerbos.grpc)?;
            let token = mint_token(
                &uncached_env,
                &[
                    "--sub",
                    "alice",
                    "--roles",
                    "user",
                    "--attr",
                    "department=eng",
                ],
            )
            .await?;
            let uncached = start_heimdall(&uncached_env, "heimdall-uncached").await?;
            let cached = start_heimdall(&cached_env, "heimdall-cached").await?;
            let path = format!("{CERBOS_PATH_PREFIX}{CERBOS_FIXED_ID}");
            let docs = check_request(&token, &path, &[("x-department", "eng")]);
            // Cache first, then the two Cerbos-bound targets back to back, so that the pair
            // whose ratio matters runs under the same host conditions.
            targets.push(Target {
                name: "heimdall-cached",
                addr: cached.grpc,
                load: Arc::new(Load::Fixed(docs.clone())),
                setup: CERBOS_SETUP,
            });
            targets.push(Target {
                name: "cerbos-direct",
                addr: cerbos.grpc,
                load: Arc::new(Load::Cerbos(cerbos_request())),
                setup: CERBOS_SETUP,
            });
            targets.push(Target {
                name: "heimdall-uncached",
                addr: uncached.grpc,
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

    for child in heimdalls {
        child.stop().await;
    }
    if let Some(cerbos) = pdp {
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

async fn start_heimdall(env: &HeimdallEnv, name: &str) -> anyhow::Result<Heimdall> {
    let mut child = Heimdall::spawn(env)?;
    child
        .wait_ready(READY_TIMEOUT)
        .await
        .with_context(|| format!("starting {name}"))?;
    eprintln!(
        "load: {name} ready on {} (side port {})",
        child.grpc, child.http
    );
    Ok(child)
}

// ---------------------------------------------------------------------------------------------
// The no-op baseline
// ---------------------------------------------------------------------------------------------

/// Answers every `Check` with OK and an empty `ok_response`, the least an authorizer can do.
struct Noop;

#[tonic::async_trait]
impl Authorization for Noop {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(CheckResponse {
            status: Some(rpc::Status::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
            dynamic_metadata: None,
        }))
    }
}

/// The no-op server, on a runtime of its own: like heimdall in its own process, it then gets
/// its own worker threads instead of sharing the load generator's.
struct NoopServer {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl NoopServer {
    fn start() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("noop-authz")
            .enable_all()
            .build()
            .context("no-op server runtime")?;
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("binding the no-op server")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        runtime.spawn(async move {
            let served = async {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                // Same socket options as heimdall's listener, so only the handler differs.
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                Server::builder()
                    .add_service(AuthorizationServer::new(Noop))
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    })
                    .await?;
                anyhow::Ok(())
            };
            if let Err(e) = served.await {
                eprintln!("load: no-op server failed: {e:#}");
            }
        });
        Ok(Self {
            addr,
            runtime: Some(runtime),
            shutdown: Some(shutdown),
        })
    }
}

impl Drop for NoopServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        // Dropping a runtime inside another one's context is not allowed; this one only has to
        // stop, not to finish anything.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// heimdall as a child process
// ---------------------------------------------------------------------------------------------

/// What `heimdall serve` and `heimdall token mint` share: the binary, the ports and the key.
struct HeimdallEnv {
    bin: PathBuf,
    config: Option<PathBuf>,
    grpc_port: u16,
    http_port: u16,
    key: String,
    /// `CERBOS_GRPC_URL`, for the `--cerbos` instances.
    cerbos_url: Option<String>,
}

impl HeimdallEnv {
    fn new(args: &Args) -> anyhow::Result<Self> {
        let (bin, is_default) = match &args.heimdall_bin {
            Some(bin) => (bin.clone(), false),
            None => (default_heimdall_bin(), true),
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
        if let Some(config) = &args.config
            && !config.is_file()
        {
            bail!("--config {}: no such file", config.display());
        }
        let (grpc_port, http_port) = free_ports()?;
        // PASETO_SYMMETRIC_KEY takes the raw bytes of the variable: 32 ASCII characters are
        // 32 bytes, and a fresh key per run means no token from elsewhere can be replayed here.
        let key = rand::rng()
            .sample_iter(Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        Ok(Self {
            bin,
            config: args.config.clone(),
            grpc_port,
            http_port,
            key,
            cerbos_url: None,
        })
    }

    /// Another instance for `--cerbos`: same binary and key (so tokens minted by one verify on
    /// the other), fresh ports, `config` (relative to the repository root) and Cerbos at `pdp`.
    fn for_cerbos(&self, config: &str, pdp: SocketAddr) -> anyhow::Result<Self> {
        let config = repo_root().join(config);
        if !config.is_file() {
            bail!("{}: no such file", config.display());
        }
        let (grpc_port, http_port) = free_ports()?;
        Ok(Self {
            bin: self.bin.clone(),
            config: Some(config),
            grpc_port,
            http_port,
            key: self.key.clone(),
            cerbos_url: Some(pdp.to_string()),
        })
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .env("GRPC_PORT", self.grpc_port.to_string())
            .env("PORT", self.http_port.to_string())
            .env("PASETO_SYMMETRIC_KEY", &self.key)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        // Without --config, make sure an exported HEIMDALL_CONFIG does not sneak in.
        match &self.config {
            Some(config) => command.env("HEIMDALL_CONFIG", config),
            None => command.env_remove("HEIMDALL_CONFIG"),
        };
        // CERBOS_GRPC_URL overrides `cerbos.url`; an exported one must not reach the plain run.
        match &self.cerbos_url {
            Some(url) => command.env("CERBOS_GRPC_URL", url),
            None => command.env_remove("CERBOS_GRPC_URL"),
        };
        command
    }
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `heimdall` in the directory above this example's, e.g. `target/release/heimdall` for
/// `target/release/examples/load`: it follows the profile and `CARGO_TARGET_DIR`.
fn default_heimdall_bin() -> PathBuf {
    next_to_examples_dir().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("release")
            .join("heimdall")
    })
}

fn next_to_examples_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let examples = exe.parent()?;
    if examples.file_name()? != "examples" {
        return None;
    }
    Some(examples.parent()?.join("heimdall"))
}

/// `cargo run --example` does not rebuild the binary: say so when the sources are newer.
fn warn_if_stale(bin: &Path) {
    let Ok(built) = bin.metadata().and_then(|m| m.modified()) else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
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

/// Two distinct free loopback ports: both listeners are held until both ports are known, so
/// the kernel cannot hand out the same one twice.
fn free_ports() -> anyhow::Result<(u16, u16)> {
    let a = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let b = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

/// `heimdall token mint <claims> --purpose local`, e.g. `--sub bench-user --roles user,editor`;
/// the token is the trimmed standard output.
async fn mint_token(env: &HeimdallEnv, claims: &[&str]) -> anyhow::Result<String> {
    let mut command = env.command();
    command
        .args(["token", "mint"])
        .args(claims)
        .args(["--purpose", "local"]);
    let output = tokio::time::timeout(MINT_TIMEOUT, command.output())
        .await
        .context("`heimdall token mint` did not finish within 30s")?
        .with_context(|| format!("running {}", env.bin.display()))?;
    if !output.status.success() {
        bail!(
            "`heimdall token mint` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let token = String::from_utf8(output.stdout)
        .context("`heimdall token mint` printed something that is not UTF-8")?
        .trim()
        .to_owned();
    if !token.starts_with("v4.local.") {
        bail!("`heimdall token mint` printed `{token}`, not a v4.local token");
    }
    Ok(token)
}

/// A running `heimdall serve`, killed when dropped.
struct Heimdall {
    child: Child,
    grpc: SocketAddr,
    http: SocketAddr,
    log: LogTail,
    /// The task draining stderr into `log`.
    drain: Option<tokio::task::JoinHandle<()>>,
}

impl Heimdall {
    fn spawn(env: &HeimdallEnv) -> anyhow::Result<Self> {
        let mut command = env.command();
        command
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {} serve", env.bin.display()))?;
        let stderr = child.stderr.take().context("heimdall's stderr")?;
        let log = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL)));
        // Keep draining stderr for the whole run: a full pipe would block heimdall's logging
        // and so its requests. The task ends when heimdall closes stderr, i.e. when it exits.
        let drain = tokio::spawn(drain_into(stderr, Arc::clone(&log)));
        Ok(Self {
            child,
            grpc: SocketAddr::from((Ipv4Addr::LOCALHOST, env.grpc_port)),
            http: SocketAddr::from((Ipv4Addr::LOCALHOST, env.http_port)),
            log,
            drain: Some(drain),
        })
    }

    /// Polls `GET /ready` on the side port until it answers 200, heimdall exits, or `limit`.
    async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                // Its last lines may still be in the pipe: let the drain reach end of file.
                if let Some(drain) = self.drain.take() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
                }
                bail!(
                    "heimdall exited before it was ready ({status}); its last log lines:\n{}",
                    self.log_tail().await
                );
            }
            let probe =
                tokio::time::timeout(READY_REQUEST_TIMEOUT, http_status(self.http, "/ready")).await;
            let last = match probe {
                Ok(Ok(200)) => return Ok(()),
                Ok(Ok(code)) => format!("/ready answered {code}"),
                // Mostly "connection refused" while heimdall is still starting.
                Ok(Err(e)) => format!("{e:#}"),
                Err(_) => "/ready did not answer within 1s".to_owned(),
            };
            if Instant::now() >= deadline {
                bail!(
                    "heimdall was not ready within {limit:?} ({last}); its last log lines:\n{}",
                    self.log_tail().await
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    async fn log_tail(&self) -> String {
        format_tail(&self.log).await
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

type LogTail = Arc<Mutex<VecDeque<String>>>;

/// Reads `from` line by line to its end, keeping the last LOG_TAIL lines in `tail`.
async fn drain_into(from: impl tokio::io::AsyncRead + Unpin, tail: LogTail) {
    let mut reader = BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                let mut tail = tail.lock().await;
                if tail.len() == LOG_TAIL {
                    tail.pop_front();
                }
                tail.push_back(text);
            }
        }
    }
}

async fn format_tail(log: &LogTail) -> String {
    let tail = log.lock().await;
    if tail.is_empty() {
        return "  (none)".into();
    }
    tail.iter()
        .map(|line| format!("  {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The status code of `GET path` over a bare HTTP/1.1 connection.
async fn http_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut status_line = String::new();
    BufReader::new(stream).read_line(&mut status_line).await?;
    // "HTTP/1.1 200 OK"
    status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP status line: {:?}", status_line.trim_end()))
}

// ---------------------------------------------------------------------------------------------
// Cerbos as a child process (--cerbos)
// ---------------------------------------------------------------------------------------------

/// A running `cerbos server` on loopback ports, killed when dropped.
struct CerbosPdp {
    child: Child,
    grpc: SocketAddr,
    log: LogTail,
}

impl CerbosPdp {
    /// `cerbos server` with the shipped configuration and example policies, from the repository
    /// root, its listeners moved to free loopback ports; waits until gRPC health says SERVING.
    async fn start(args: &Args) -> anyhow::Result<Self> {
        let bin = cerbos_bin(args)?;
        let (grpc_port, http_port) = free_ports()?;
        let grpc = SocketAddr::from((Ipv4Addr::LOCALHOST, grpc_port));
        let http = SocketAddr::from((Ipv4Addr::LOCALHOST, http_port));
        let mut child = Command::new(&bin)
            .arg("server")
            .arg(format!("--config={CERBOS_CONFIG}"))
            .arg(format!("--set=server.grpcListenAddr={grpc}"))
            .arg(format!("--set=server.httpListenAddr={http}"))
            .arg(format!("--set=storage.disk.directory={CERBOS_POLICIES}"))
            .arg("--log-level=warn")
            .current_dir(repo_root())
            .env("CERBOS_NO_TELEMETRY", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} server", bin.display()))?;
        let log = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL)));
        let stdout: Option<ChildStdout> = child.stdout.take();
        let stderr: Option<ChildStderr> = child.stderr.take();
        let mut drains = Vec::new();
        if let Some(stdout) = stdout {
            drains.push(tokio::spawn(drain_into(stdout, Arc::clone(&log))));
        }
        if let Some(stderr) = stderr {
            drains.push(tokio::spawn(drain_into(stderr, Arc::clone(&log))));
        }
        let mut pdp = Self { child, grpc, log };
        if let Err(e) = pdp.wait_ready().await {
            // Its last lines may still be in the pipes.
            let _ = pdp.child.start_kill();
            for drain in drains {
                let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
            }
            bail!(
                "Cerbos was not ready: {e:#}; its last log lines:\n{}",
                format_tail(&pdp.log).await
            );
        }
        eprintln!("load: Cerbos ready on {grpc} (HTTP {http})");
        Ok(pdp)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + CERBOS_READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("it exited ({status})");
            }
            let last = match cerbos_health(self.grpc).await {
                Ok(()) => return Ok(()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!("not SERVING within {CERBOS_READY_TIMEOUT:?} ({last})");
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
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

/// One gRPC health check of the whole server (service `""`), bounded by CERBOS_PROBE_TIMEOUT.
async fn cerbos_health(grpc: SocketAddr) -> anyhow::Result<()> {
    let probe = async {
        let channel = Endpoint::from_shared(format!("http://{grpc}"))?
            .connect_timeout(CERBOS_PROBE_TIMEOUT)
            .connect()
            .await?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        anyhow::Ok(response.into_inner().status)
    };
    let status = tokio::time::timeout(CERBOS_PROBE_TIMEOUT, probe)
        .await
        .context("health check did not answer in time")??;
    if status == ServingStatus::Serving as i32 {
        Ok(())
    } else {
        bail!("health status {status}")
    }
}

// ---------------------------------------------------------------------------------------------
// The request and the answers
// ---------------------------------------------------------------------------------------------

fn peer(port: u32) -> attribute_context::Peer {
    attribute_context::Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                protocol: socket_address::Protocol::Tcp.into(),
                address: Ipv4Addr::LOCALHOST.to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                ..SocketAddress::default()
            })),
        }),
        ..attribute_context::Peer::default()
    }
}

const REQUEST_ID: &str = "heimdall-load-0001";

/// What Envoy's HTTP ext_authz filter sends for `GET http://127.0.0.1:10000<path>` with
/// `Authorization: Bearer <token>` and the `extra` headers (lower-case names), e.g. for
/// `/api/documents/42?x=1`.
fn check_request(token: &str, path: &str, extra: &[(&str, &str)]) -> CheckRequest {
    let headers: HashMap<String, String> = [
        (":authority", HOST.to_owned()),
        (":method", "GET".to_owned()),
        (":path", path.to_owned()),
        ("authorization", format!("Bearer {token}")),
        ("accept", "application/json".to_owned()),
        ("user-agent", "heimdall-load/1".to_owned()),
        ("x-request-id", REQUEST_ID.to_owned()),
    ]
    .into_iter()
    .chain(extra.iter().map(|&(k, v)| (k, v.to_owned())))
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer(54_321)),
            destination: Some(peer(10_000)),
            request: Some(attribute_context::Request {
                time: None,
                http: Some(attribute_context::HttpRequest {
                    id: REQUEST_ID.to_owned(),
                    method: "GET".to_owned(),
                    headers,
                    path: path.to_owned(),
                    host: HOST.to_owned(),
                    scheme: "http".to_owned(),
                    protocol: "HTTP/1.1".to_owned(),
                    ..attribute_context::HttpRequest::default()
                }),
            }),
            ..AttributeContext::default()
        }),
    }
}

/// `request` with its path (`:path` and `path`) set to `path`.
fn with_path(request: &CheckRequest, path: String) -> CheckRequest {
    let mut request = request.clone();
    if let Some(http) = request
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        http.headers.insert(":path".to_owned(), path.clone());
        http.path = path;
    }
    request
}

fn pb_string(text: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(text.to_owned())),
    }
}

/// The `CheckResources` heimdall's `cerbos` authorizer sends for the `--cerbos` request with
/// document id 42: principal alice, role `user`, `department: eng`; resource `document`
/// `{owner: alice, public: false, department: eng, status: published}`; action `view`.
fn cerbos_request() -> CheckResourcesRequest {
    let principal = Principal {
        id: "alice".to_owned(),
        roles: vec!["user".to_owned()],
        attr: HashMap::from([("department".to_owned(), pb_string("eng"))]),
        ..Principal::default()
    };
    let resource = Resource {
        kind: "document".to_owned(),
        id: CERBOS_FIXED_ID.to_string(),
        attr: HashMap::from([
            ("owner".to_owned(), pb_string("alice")),
            (
                "public".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::BoolValue(false)),
                },
            ),
            ("department".to_owned(), pb_string("eng")),
            ("status".to_owned(), pb_string("published")),
        ]),
        ..Resource::default()
    };
    CheckResourcesRequest {
        request_id: REQUEST_ID.to_owned(),
        principal: Some(principal),
        resources: vec![check_resources_request::ResourceEntry {
            actions: vec!["view".to_owned()],
            resource: Some(resource),
        }],
        ..CheckResourcesRequest::default()
    }
}

/// `request` with its (single) resource's id set to `id`.
fn with_resource_id(request: &CheckResourcesRequest, id: u64) -> CheckResourcesRequest {
    let mut request = request.clone();
    if let Some(resource) = request
        .resources
        .iter_mut()
        .next()
        .and_then(|entry| entry.resource.as_mut())
    {
        resource.id = id.to_string();
    }
    request
}

/// What a target's workers send. Every call clones a prepared request (and, for the varying
/// ones, sets one string in it): the same cost on every target, as Envoy's encoding would be.
enum Load {
    /// The same ext_authz `Check` every call.
    Fixed(CheckRequest),
    /// An ext_authz `Check` whose path is `prefix` followed by a per-call number, so that no
    /// two calls ask the same question.
    VaryingPath {
        base: CheckRequest,
        prefix: &'static str,
    },
    /// `CheckResources` straight to Cerbos, with a per-call resource id.
    Cerbos(CheckResourcesRequest),
}

/// A client of the right service for a `Load`, on one connection.
enum Client {
    Authz(AuthorizationClient<Channel>),
    Cerbos(CerbosServiceClient<Channel>),
}

impl Load {
    fn client(&self, channel: Channel) -> Client {
        match self {
            Load::Fixed(_) | Load::VaryingPath { .. } => {
                Client::Authz(AuthorizationClient::new(channel))
            }
            Load::Cerbos(_) => Client::Cerbos(CerbosServiceClient::new(channel)),
        }
    }

    /// One call; `seq` picks the path or resource id of the varying loads.
    async fn call(&self, client: &mut Client, seq: u64) -> Outcome {
        match (self, client) {
            (Load::Fixed(request), Client::Authz(client)) => classify(
                tokio::time::timeout(CALL_TIMEOUT, client.check(request.clone()))
                    .await
                    .ok(),
            ),
            (Load::VaryingPath { base, prefix }, Client::Authz(client)) => {
                let request = with_path(base, format!("{prefix}{seq}"));
                classify(
                    tokio::time::timeout(CALL_TIMEOUT, client.check(request))
                        .await
                        .ok(),
                )
            }
            (Load::Cerbos(base), Client::Cerbos(client)) => {
                let request = with_resource_id(base, seq);
                classify_cerbos(
                    tokio::time::timeout(CALL_TIMEOUT, client.check_resources(request))
                        .await
                        .ok(),
                )
            }
            _ => Outcome::Error("internal: the client does not match the load".into()),
        }
    }
}

/// How one `Check` ended.
enum Outcome {
    /// gRPC OK, status code 0 and an `ok_response`: Envoy would forward the request.
    Allowed,
    /// The authorizer answered, but not with an allow: Envoy would not forward the request.
    Denied(String),
    /// No usable answer: transport failure, gRPC error, timeout or a malformed response.
    Error(String),
}

fn describe_denied(kind: &str, denied: &DeniedHttpResponse) -> String {
    let http = denied.status.as_ref().map_or(0, |s| s.code);
    let body: String = denied.body.chars().take(200).collect();
    format!("{kind} HTTP {http}, body {body:?}")
}

/// Sorts an answer out; `None` is a call that timed out.
fn classify(answer: Option<Result<tonic::Response<CheckResponse>, tonic::Status>>) -> Outcome {
    let response = match answer {
        None => return Outcome::Error(format!("no answer within {CALL_TIMEOUT:?}")),
        Some(Err(status)) => {
            return Outcome::Error(format!("gRPC {:?}: {}", status.code(), status.message()));
        }
        Some(Ok(response)) => response.into_inner(),
    };
    let (code, message) = response
        .status
        .as_ref()
        .map_or((0, ""), |s| (s.code, s.message.as_str()));
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => Outcome::Denied(format!(
            "status {code} {message:?}, {}",
            describe_denied("denied_response", denied)
        )),
        Some(HttpResponse::ErrorResponse(denied)) => Outcome::Error(format!(
            "status {code} {message:?}, {}",
            describe_denied("error_response", denied)
        )),
        // Envoy denies on any non-OK status, whatever else the response carries.
        _ if code != 0 => Outcome::Denied(format!("status {code} {message:?}")),
        Some(HttpResponse::OkResponse(_)) => Outcome::Allowed,
        None => Outcome::Error("status OK without an ok_response".into()),
    }
}

/// Sorts out a `CheckResources` answer for one resource and the action `view`.
fn classify_cerbos(
    answer: Option<Result<tonic::Response<CheckResourcesResponse>, tonic::Status>>,
) -> Outcome {
    let response = match answer {
        None => return Outcome::Error(format!("no answer within {CALL_TIMEOUT:?}")),
        Some(Err(status)) => {
            return Outcome::Error(format!("gRPC {:?}: {}", status.code(), status.message()));
        }
        Some(Ok(response)) => response.into_inner(),
    };
    let Some(result) = response.results.first() else {
        return Outcome::Error("CheckResources answered without a result".into());
    };
    let effect = result.actions.get("view").copied();
    if effect == Some(Effect::Allow as i32) {
        return Outcome::Allowed;
    }
    let id = result.resource.as_ref().map_or("?", |r| r.id.as_str());
    let effect = effect.map_or_else(
        || "none".to_owned(),
        |e| Effect::try_from(e).map_or_else(|_| e.to_string(), |e| format!("{e:?}")),
    );
    Outcome::Denied(format!("effect {effect} for view on document {id}"))
}

/// One call on a fresh connection before any load: a target that denies or fails the request
/// stops the run here, loudly, instead of producing figures for the wrong code path.
async fn preflight(target: &Target) -> anyhow::Result<()> {
    let Target {
        name, addr, setup, ..
    } = target;
    let channel = connect(*addr)
        .await
        .with_context(|| format!("{name}: connecting to {addr}"))?;
    let mut client = target.load.client(channel);
    match target.load.call(&mut client, CERBOS_FIXED_ID).await {
        Outcome::Allowed => Ok(()),
        Outcome::Denied(why) => bail!(
            "{name} DENIED the benchmark request ({why}); the token or the configuration is wrong \
             ({setup}). The run stops here."
        ),
        Outcome::Error(why) => bail!("{name} failed the benchmark request: {why}"),
    }
}

async fn connect(addr: SocketAddr) -> anyhow::Result<Channel> {
    // One `Channel` from `connect` is one HTTP/2 connection.
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await?)
}

// ---------------------------------------------------------------------------------------------
// Load phases
// ---------------------------------------------------------------------------------------------

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3)?)
}

/// What one worker (or, merged, a whole phase) saw.
struct Tally {
    /// Latency of the allowed calls started in the measurement window, in µs.
    latency: Histogram<u64>,
    allowed: u64,
    denials: u64,
    errors: u64,
    /// Denials and errors during the warm-up: not measured, but still a failed run.
    warmup_failures: u64,
    first_denial: Option<String>,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            latency: new_histogram()?,
            allowed: 0,
            denials: 0,
            errors: 0,
            warmup_failures: 0,
            first_denial: None,
            first_error: None,
        })
    }

    fn record(&mut self, measured: bool, latency: Duration, outcome: Outcome) {
        match outcome {
            Outcome::Allowed if measured => {
                let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                self.latency.saturating_record(micros.max(1));
                self.allowed += 1;
            }
            Outcome::Allowed => {}
            Outcome::Denied(why) => {
                if measured {
                    self.denials += 1;
                } else {
                    self.warmup_failures += 1;
                }
                self.first_denial.get_or_insert(why);
            }
            Outcome::Error(why) => {
                if measured {
                    self.errors += 1;
                } else {
                    self.warmup_failures += 1;
                }
                self.first_error.get_or_insert(why);
            }
        }
    }

    fn merge(&mut self, other: Self) -> anyhow::Result<()> {
        self.latency.add(&other.latency)?;
        self.allowed += other.allowed;
        self.denials += other.denials;
        self.errors += other.errors;
        self.warmup_failures += other.warmup_failures;
        if self.first_denial.is_none() {
            self.first_denial = other.first_denial;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }
}

/// One closed-loop worker: sends the request, waits for the answer, repeats until
/// `measure_until`. Only calls started at or after `measure_from` are measured, so the load
/// does not pause between warm-up and measurement.
///
/// Worker `index` of `stride` numbers its calls `index`, `index + stride`, ...: the varying
/// loads never repeat a path or a resource id within a phase.
async fn worker(
    mut client: Client,
    load: Arc<Load>,
    (index, stride): (u64, u64),
    measure_from: Instant,
    measure_until: Instant,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    let mut seq = index;
    loop {
        let started = Instant::now();
        if started >= measure_until {
            return Ok(tally);
        }
        let outcome = load.call(&mut client, seq).await;
        let latency = started.elapsed();
        tally.record(started >= measure_from, latency, outcome);
        seq += stride;
    }
}

/// One target's results.
struct Phase {
    target: &'static str,
    window: Duration,
    tally: Tally,
}

impl Phase {
    fn clean(&self) -> bool {
        self.tally.denials == 0 && self.tally.errors == 0 && self.tally.warmup_failures == 0
    }

    fn throughput(&self) -> f64 {
        self.tally.allowed as f64 / self.window.as_secs_f64()
    }

    fn quantile(&self, q: f64) -> u64 {
        self.tally.latency.value_at_quantile(q)
    }

    fn warn_if_failed(&self) {
        let t = &self.tally;
        if self.clean() {
            return;
        }
        eprintln!(
            "load: !!! {}: {} denials and {} errors measured, {} failures during warm-up; \
             none of them counts as throughput",
            self.target, t.denials, t.errors, t.warmup_failures
        );
        if let Some(denial) = &t.first_denial {
            eprintln!(
                "load: !!!   first denial (the token or the configuration is wrong): {denial}"
            );
        }
        if let Some(error) = &t.first_error {
            eprintln!("load: !!!   first error: {error}");
        }
    }
}

async fn run_phase(target: &Target, args: &Args) -> anyhow::Result<Phase> {
    let Target {
        name, addr, load, ..
    } = target;
    let addr = *addr;
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        channels.push(
            connect(addr)
                .await
                .with_context(|| format!("{name}: connecting to {addr}"))?,
        );
    }
    let stride = args.concurrency as u64;

    let start = Instant::now();
    let measure_from = start + args.warmup;
    let measure_until = measure_from + args.duration;
    let mut workers = JoinSet::new();
    for (index, channel) in (0..stride).zip(channels.iter().cycle()) {
        workers.spawn(worker(
            load.client(channel.clone()),
            Arc::clone(load),
            (index, stride),
            measure_from,
            measure_until,
        ));
    }

    // Workers start no call after `measure_until` and each call is bounded by CALL_TIMEOUT,
    // so they are all done shortly after; the hard stop only guards against the unforeseen.
    let hard_stop = tokio::time::Instant::from_std(measure_until + CALL_TIMEOUT * 2);
    let mut total = Tally::new()?;
    loop {
        match tokio::time::timeout_at(hard_stop, workers.join_next()).await {
            Ok(Some(joined)) => total.merge(joined.context("a worker task failed")??)?,
            Ok(None) => break,
            Err(_) => {
                workers.abort_all();
                bail!("{name}: workers did not stop by the deadline");
            }
        }
    }
    Ok(Phase {
        target: name,
        window: args.duration,
        tally: total,
    })
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

/// One target relative to another: throughput below 1 and latency above 1 are the price of the
/// first one's extra work.
struct Ratios {
    throughput: f64,
    p50: f64,
    p99: f64,
}

impl Ratios {
    fn of(phase: &Phase, base: &Phase) -> Self {
        Self {
            throughput: ratio(phase.throughput(), base.throughput()),
            p50: ratio(phase.quantile(0.5) as f64, base.quantile(0.5) as f64),
            p99: ratio(phase.quantile(0.99) as f64, base.quantile(0.99) as f64),
        }
    }

    fn line(&self) -> String {
        format!(
            "throughput {:.2}x, p50 {:.2}x, p99 {:.2}x",
            self.throughput, self.p50, self.p99
        )
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "throughput": self.throughput, "p50": self.p50, "p99": self.p99 })
    }
}

/// `--cerbos`: heimdall uncached against Cerbos direct, and heimdall cached against no-op.
struct CerbosRatios {
    uncached_vs_direct: Ratios,
    /// heimdall uncached minus Cerbos direct, in µs.
    p50_added_us: i64,
    p99_added_us: i64,
    cached_vs_noop: Ratios,
}

impl CerbosRatios {
    fn p50_met(&self) -> bool {
        self.uncached_vs_direct.p50 <= CERBOS_OVERHEAD_TARGET
    }

    fn p99_met(&self) -> bool {
        self.uncached_vs_direct.p99 <= CERBOS_OVERHEAD_TARGET
    }
}

fn added_us(phase: &Phase, base: &Phase, q: f64) -> i64 {
    let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    as_i64(phase.quantile(q)).saturating_sub(as_i64(base.quantile(q)))
}

fn met(yes: bool) -> &'static str {
    if yes { "met" } else { "MISSED" }
}

struct Report<'a> {
    args: &'a Args,
    phases: &'a [Phase],
    /// heimdall relative to the first no-op phase.
    ratios: Option<Ratios>,
    cerbos: Option<CerbosRatios>,
    /// Last no-op throughput over the first one (with --repeat): how much the host drifted.
    drift: Option<f64>,
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        f64::NAN
    }
}

impl<'a> Report<'a> {
    fn new(args: &'a Args, phases: &'a [Phase]) -> Self {
        let find = |name: &str| phases.iter().find(|p| p.target == name);
        let mut noops = phases.iter().filter(|p| p.target == "no-op");
        let first_noop = noops.next();
        let last_noop = noops.next_back();
        let ratios = find("heimdall")
            .zip(first_noop)
            .map(|(h, base)| Ratios::of(h, base));
        let cerbos = match (
            find("heimdall-uncached"),
            find("cerbos-direct"),
            find("heimdall-cached"),
            first_noop,
        ) {
            (Some(uncached), Some(direct), Some(cached), Some(noop)) => Some(CerbosRatios {
                uncached_vs_direct: Ratios::of(uncached, direct),
                p50_added_us: added_us(uncached, direct, 0.5),
                p99_added_us: added_us(uncached, direct, 0.99),
                cached_vs_noop: Ratios::of(cached, noop),
            }),
            _ => None,
        };
        let drift = first_noop
            .zip(last_noop)
            .map(|(first, last)| ratio(last.throughput(), first.throughput()));
        Self {
            args,
            phases,
            ratios,
            cerbos,
            drift,
        }
    }

    fn print_table(&self) {
        let a = self.args;
        let call = if a.cerbos {
            "ext_authz Check (cerbos-direct: Cerbos CheckResources)"
        } else {
            "ext_authz Check"
        };
        println!(
            "{call}, {} workers over {} HTTP/2 connection(s), {:?} measured after {:?} \
             warm-up, {} CPU(s); latency in µs",
            a.concurrency,
            a.connections,
            a.duration,
            a.warmup,
            cpus()
        );
        let width = self
            .phases
            .iter()
            .map(|p| p.target.len())
            .max()
            .unwrap_or(0)
            .max(9);
        println!(
            "{:<width$} {:>10} {:>10} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7}",
            "target", "requests", "req/s", "p50", "p90", "p99", "p99.9", "max", "denied", "errors"
        );
        for p in self.phases {
            println!(
                "{:<width$} {:>10} {:>10.0} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7}",
                p.target,
                p.tally.allowed,
                p.throughput(),
                p.quantile(0.5),
                p.quantile(0.9),
                p.quantile(0.99),
                p.quantile(0.999),
                p.tally.latency.max(),
                p.tally.denials,
                p.tally.errors,
            );
        }
        let warmup_failures: u64 = self.phases.iter().map(|p| p.tally.warmup_failures).sum();
        if warmup_failures > 0 {
            println!("{warmup_failures} call(s) failed during warm-up (not in the figures above)");
        }
        if let Some(r) = &self.ratios {
            println!("heimdall / no-op: {}", r.line());
        }
        if let Some(c) = &self.cerbos {
            println!("heimdall-cached / no-op: {}", c.cached_vs_noop.line());
            let u = &c.uncached_vs_direct;
            println!(
                "heimdall-uncached / cerbos-direct: throughput {:.2}x, p50 {:.2}x ({:+} µs), \
                 p99 {:.2}x ({:+} µs)",
                u.throughput, u.p50, c.p50_added_us, u.p99, c.p99_added_us
            );
            println!(
                "target heimdall-uncached latency <= {CERBOS_OVERHEAD_TARGET:.2}x cerbos-direct: \
                 p50 {}, p99 {}",
                met(c.p50_met()),
                met(c.p99_met())
            );
        }
        if let Some(drift) = self.drift {
            println!("no-op drift (last / first throughput): {drift:.2}x");
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let a = self.args;
        let phases: Vec<_> = self
            .phases
            .iter()
            .map(|p| {
                serde_json::json!({
                    "target": p.target,
                    "requests": p.tally.allowed,
                    "throughput_rps": p.throughput(),
                    "latency_us": {
                        "p50": p.quantile(0.5),
                        "p90": p.quantile(0.9),
                        "p99": p.quantile(0.99),
                        "p99_9": p.quantile(0.999),
                        "max": p.tally.latency.max(),
                        "mean": p.tally.latency.mean(),
                    },
                    "denials": p.tally.denials,
                    "errors": p.tally.errors,
                    "warmup_failures": p.tally.warmup_failures,
                    "first_denial": p.tally.first_denial,
                    "first_error": p.tally.first_error,
                })
            })
            .collect();
        serde_json::json!({
            "settings": {
                "duration_s": a.duration.as_secs_f64(),
                "warmup_s": a.warmup.as_secs_f64(),
                "concurrency": a.concurrency,
                "connections": a.connections,
                "cpus": cpus(),
                "config": a.config.as_ref().map(|c| c.display().to_string()),
                "cerbos": a.cerbos,
            },
            "phases": phases,
            "ratios": self.ratios.as_ref().map(Ratios::to_json),
            "cerbos": self.cerbos.as_ref().map(|c| serde_json::json!({
                "uncached_vs_direct": c.uncached_vs_direct.to_json(),
                "p50_added_us": c.p50_added_us,
                "p99_added_us": c.p99_added_us,
                "latency_target": CERBOS_OVERHEAD_TARGET,
                "p50_target_met": c.p50_met(),
                "p99_target_met": c.p99_met(),
                "cached_vs_noop": c.cached_vs_noop.to_json(),
            })),
            "noop_drift": self.drift,
        })
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
