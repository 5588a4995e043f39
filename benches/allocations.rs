//! Heap allocations per warm Check, counted: the served path (HTTP/2, gRPC, the listener, the
//! engine, the response) on heimdall and on the no-op ext_authz server, and the engine alone
//! (`ExtAuthz::check` called in process).
//!
//! Each server runs on a current-thread runtime on a thread of its own, and the counting
//! allocator counts that thread only (allocation-counter's counters are thread-local), so the
//! client's allocations never enter the figure. Allocation counts are deterministic enough to
//! hold to a budget; the budgets below are what the served path allocates today with a little
//! headroom, and a run that exceeds one exits non-zero.
//!
//! ```text
//! cargo bench --bench allocations
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::print_stdout,
    reason = "bench: a failure is a broken bench, the report is the output"
)]

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use allocation_counter::AllocationInfo;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization as _;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use heimdall::extauthz::ExtAuthz;
use heimdall::test_helpers::noop::serve_noop;
use heimdall::test_helpers::{CheckRequestBuilder, claims, embedded_config, mint, test_keys};
use heimdall::tokens::Purpose;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};

/// Calls before counting (connections, caches, lazily built state), then counted calls; under
/// `cargo test` (no `--bench` argument, a debug build) a short run that checks the bench works
/// and holds no budget, since debug builds allocate differently.
struct Calls {
    warm_up: usize,
    counted: usize,
}

const BENCH: Calls = Calls {
    warm_up: 2_000,
    counted: 10_000,
};
const SMOKE: Calls = Calls {
    warm_up: 50,
    counted: 200,
};
/// Calls in flight at once, over this many HTTP/2 connections.
const IN_FLIGHT: usize = 16;
const CONNECTIONS: usize = 4;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Allocations per served Check: heimdall's budget is the no-op's figure plus this many (what
/// the documents rule measured at the time of writing: +2, its response carries two headers
/// and a removal more than the no-op's).
const SERVED_EXTRA_BUDGET: f64 = 8.0;
/// Allocations per in-process Check (the engine, the request view, the response message): the
/// documents rule (token, CEL, two header values, one removal, the rule's metadata) measured 11,
/// the public rule 7. Most are the response's own strings.
const DOCUMENTS_BUDGET: f64 = 14.0;
const PUBLIC_BUDGET: f64 = 9.0;

fn documents_request(token: &str) -> CheckRequest {
    CheckRequestBuilder::get("/api/documents/42")
        .bearer(token)
        .header("accept", "application/json")
        .header("user-agent", "bench/1.0")
        .build()
}

fn public_request() -> CheckRequest {
    CheckRequestBuilder::get("/public/index.html")
        .header("accept", "text/html")
        .header("user-agent", "bench/1.0")
        .build()
}

/// The counts of one measured phase, per Check.
struct PerCheck {
    allocations: f64,
    bytes: f64,
}

impl PerCheck {
    fn of(info: &AllocationInfo, calls: usize) -> Self {
        Self {
            allocations: info.count_total as f64 / calls as f64,
            bytes: info.bytes_total as f64 / calls as f64,
        }
    }
}

/// What the server thread is told, in order: warm-up over, measured calls over.
struct Phases {
    warmed: oneshot::Receiver<()>,
    measured: oneshot::Receiver<()>,
}

/// Runs a server on a current-thread runtime on its own thread; `start` binds it and returns its
/// address (and keeps whatever must live while it serves). Returns the address and a handle
/// that yields the allocations of the measured phase.
fn server_thread<S, F>(
    start: S,
) -> (
    SocketAddr,
    oneshot::Sender<()>,
    oneshot::Sender<()>,
    std::thread::JoinHandle<AllocationInfo>,
)
where
    S: FnOnce() -> F + Send + 'static,
    F: std::future::Future<Output = (SocketAddr, Box<dyn std::any::Any>)>,
{
    let (addr_tx, addr_rx) = mpsc::channel();
    let (warmed_tx, warmed) = oneshot::channel();
    let (measured_tx, measured) = oneshot::channel();
    let handle = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let phases = Phases { warmed, measured };
        let (addr, keep) = runtime.block_on(start());
        addr_tx.send(addr).unwrap();
        runtime.block_on(phases.warmed).unwrap();
        let info = allocation_counter::measure(|| {
            runtime.block_on(phases.measured).unwrap();
        });
        drop(keep);
        info
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    (addr, warmed_tx, measured_tx, handle)
}

/// `calls` Checks with IN_FLIGHT in flight over the channels; every answer must be an allow.
async fn drive(channels: &[Channel], request: &CheckRequest, calls: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..IN_FLIGHT {
        let mut client = AuthorizationClient::new(channels[worker % channels.len()].clone());
        let request = request.clone();
        let share = calls / IN_FLIGHT + usize::from(worker < calls % IN_FLIGHT);
        tasks.spawn(async move {
            for _ in 0..share {
                let answer = tokio::time::timeout(CALL_TIMEOUT, client.check(request.clone()))
                    .await
                    .expect("a Check timed out")
                    .expect("a Check failed")
                    .into_inner();
                assert!(
                    matches!(answer.http_response, Some(HttpResponse::OkResponse(_))),
                    "the benchmark request was not allowed: {answer:?}"
                );
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// Allocations per Check on the server thread for `request`, served by what `start` starts.
fn served<S, F>(
    client: &tokio::runtime::Runtime,
    calls: &Calls,
    start: S,
    request: &CheckRequest,
) -> PerCheck
where
    S: FnOnce() -> F + Send + 'static,
    F: std::future::Future<Output = (SocketAddr, Box<dyn std::any::Any>)>,
{
    let (addr, warmed, measured, server) = server_thread(start);
    client.block_on(async {
        let mut channels = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            channels.push(
                Endpoint::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .unwrap(),
            );
        }
        drive(&channels, request, calls.warm_up).await;
        warmed.send(()).unwrap();
        drive(&channels, request, calls.counted).await;
        measured.send(()).unwrap();
    });
    PerCheck::of(&server.join().unwrap(), calls.counted)
}

async fn start_noop() -> (SocketAddr, Box<dyn std::any::Any>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_noop(listener, async {
        let _ = stopped.await;
    }));
    (addr, Box::new(stop) as Box<dyn std::any::Any>)
}

async fn start_heimdall() -> (SocketAddr, Box<dyn std::any::Any>) {
    let built = heimdall::app::build(embedded_config(), test_keys()).unwrap();
    let running = built.serve().await.unwrap();
    (
        running.grpc_addr,
        Box::new(running) as Box<dyn std::any::Any>,
    )
}

/// Allocations per `ExtAuthz::check` in process, on this thread.
fn in_process(
    calls: &Calls,
    runtime: &tokio::runtime::Runtime,
    service: &ExtAuthz,
    request: &CheckRequest,
) -> PerCheck {
    let call = |request: CheckRequest| {
        runtime.block_on(async {
            let answer = service
                .check(tonic::Request::new(request))
                .await
                .unwrap()
                .into_inner();
            assert!(matches!(
                answer.http_response,
                Some(HttpResponse::OkResponse(_))
            ));
        });
    };
    for _ in 0..calls.warm_up {
        call(request.clone());
    }
    // The copies are made before counting: Envoy's request arrives decoded, not cloned.
    let requests: Vec<CheckRequest> = (0..calls.counted).map(|_| request.clone()).collect();
    let mut requests = requests.into_iter();
    let info = allocation_counter::measure(|| {
        for request in requests.by_ref() {
            call(request);
        }
    });
    PerCheck::of(&info, calls.counted)
}

fn main() {
    let keys = test_keys();
    let token = mint(
        &keys,
        Purpose::Local,
        &claims("bench-user", &["user", "editor"]),
    );
    let documents = documents_request(&token);
    let public = public_request();

    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let benchmarking = std::env::args().any(|arg| arg == "--bench");
    let calls = if benchmarking { &BENCH } else { &SMOKE };
    let noop = served(&client, calls, start_noop, &documents);
    let heimdall_documents = served(&client, calls, start_heimdall, &documents);
    let heimdall_public = served(&client, calls, start_heimdall, &public);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let built = heimdall::app::build(embedded_config(), test_keys()).unwrap();
    let engine = built.engine;
    let service = ExtAuthz::new(std::sync::Arc::clone(&engine));
    let engine_documents = in_process(calls, &runtime, &service, &documents);
    let engine_public = in_process(calls, &runtime, &service, &public);

    // The decision future is boxed once per Check (by the service trait), so its size is bytes
    // allocated and, where a future is moved into its box, copied on every call.
    let line = heimdall::extauthz::request_line(&documents, engine.path_policy()).unwrap();
    let view = heimdall::extauthz::view(&documents, &line);
    let decide_future_bytes = std::mem::size_of_val(&engine.decide(&view));

    let served_budget = noop.allocations + SERVED_EXTRA_BUDGET;
    let rows = [
        ("served: no-op server", &noop, None),
        (
            "served: heimdall, documents",
            &heimdall_documents,
            Some(served_budget),
        ),
        (
            "served: heimdall, public",
            &heimdall_public,
            Some(served_budget),
        ),
        (
            "in process: documents",
            &engine_documents,
            Some(DOCUMENTS_BUDGET),
        ),
        ("in process: public", &engine_public, Some(PUBLIC_BUDGET)),
    ];
    println!(
        "{:<30} {:>12} {:>12} {:>16}",
        "allocations per warm Check", "allocations", "bytes", "budget"
    );
    let mut over = false;
    for (name, figures, budget) in rows {
        let verdict = match budget {
            None => "-".to_owned(),
            Some(budget) if figures.allocations <= budget => format!("≤{budget:.0} met"),
            Some(budget) => {
                over = true;
                format!("≤{budget:.0} OVER")
            }
        };
        println!(
            "{name:<30} {:>12.1} {:>12.0} {verdict:>16}",
            figures.allocations, figures.bytes
        );
    }
    println!(
        "served heimdall over the no-op: documents +{:.1}, public +{:.1} allocations per Check",
        heimdall_documents.allocations - noop.allocations,
        heimdall_public.allocations - noop.allocations
    );
    println!("size of the Engine::decide future: {decide_future_bytes} bytes");
    if !benchmarking {
        println!("(a short smoke run under `cargo test`: budgets are held by `cargo bench` only)");
    }
    if over && benchmarking {
        eprintln!("allocations: a budget is exceeded");
        std::process::exit(1);
    }
}
