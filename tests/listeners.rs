//! Bounded listeners: stalled, idle and oversized clients on both ports do not starve
//! well-behaved ones, are closed by the server's deadlines, cannot make memory grow without
//! bound, and a saturated cap or descriptor exhaustion does not spin a core.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed setup or lookup is a failed test"
)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::{BufMut as _, Bytes, BytesMut};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use heimdall::config::Config;
use heimdall::test_helpers::{bearer_check_request, claims, mint, test_config, test_keys};
use heimdall::tokens::{Audience, Keyring, Purpose};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

const RULES: &str = include_str!("fixtures/rules.yaml");
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// Process-wide measurements (RSS, CPU time, descriptors) would see each other's load: the
/// tests of this file run one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The bound a well-behaved request must be answered within while the ports are under attack.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

fn config() -> Config {
    test_config(RULES)
}

/// Raises the soft open-files limit to the hard one and checks it covers `needed`.
fn raise_open_files(needed: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit).unwrap();
    }
    let current = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    assert!(
        current >= needed,
        "this test needs {needed} open files; the hard limit (ulimit -Hn) allows {current}"
    );
}

fn token(keys: &Keyring) -> String {
    let mut c = claims("alice", &["user"]);
    c.aud = Audience::One("heimdall-tests".into());
    mint(keys, Purpose::Public, &c)
}

/// One gRPC Check on a fresh connection, answered within [`ANSWER_WITHIN`]; returns its code.
async fn check_answers(grpc: SocketAddr, request: CheckRequest) -> i32 {
    tokio::time::timeout(ANSWER_WITHIN, async {
        let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
            .await
            .unwrap()
            .max_encoding_message_size(8 * 1024 * 1024);
        let response = client.check(request).await.unwrap().into_inner();
        response.status.map_or(0, |s| s.code)
    })
    .await
    .expect("a well-behaved Check was not answered in time")
}

/// `/health` and `/ready` on fresh connections, each answered 200 within [`ANSWER_WITHIN`].
async fn probes_answer(http: SocketAddr) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(ANSWER_WITHIN)
        .build()
        .unwrap();
    for path in ["/health", "/ready"] {
        let response = client
            .get(format!("http://{http}{path}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path} did not answer in time: {e}"));
        assert_eq!(response.status(), reqwest::StatusCode::OK, "{path}");
    }
}

/// Opens `count` connections to `addr` that send `prefix` (possibly nothing) and stall.
async fn stalled(addr: SocketAddr, count: usize, prefix: &'static [u8]) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        if !prefix.is_empty() {
            stream.write_all(prefix).await.unwrap();
        }
        streams.push(stream);
    }
    streams
}

/// Whether the server closes `stream` before `deadline` (EOF or reset, after any bytes it
/// sent, such as its HTTP/2 SETTINGS).
async fn closed_by_server(mut stream: TcpStream, deadline: tokio::time::Instant) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// (a) 2,000 connections with half an HTTP/2 preface or half an HTTP/1 request line, plus idle
/// ones, do not keep a Check, `/health` or `/ready` from being answered, and all are closed by
/// the server once the header read timeout passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_idle_connections_do_not_starve_clients_and_are_closed() {
    let _one = ONE_AT_A_TIME.lock().await;
    const STALLED_PER_PORT: usize = 1000;
    const IDLE_PER_PORT: usize = 50;
    // Client and server ends of every connection, plus headroom.
    raise_open_files(2 * 2 * (STALLED_PER_PORT + IDLE_PER_PORT) as u64 + 512);

    let header_read_timeout = Duration::from_secs(3);
    let mut config = config();
    config.server.grpc.header_read_timeout = header_read_timeout;
    config.server.http.header_read_timeout = header_read_timeout;
    config.server.grpc.max_connections = 4096;
    config.server.http.max_connections = 4096;
    let built = heimdall::app::build(config, test_keys()).unwrap();
    let token = token(&built.keys);
    let running = built.serve().await.unwrap();
    let (grpc, http) = (running.grpc_addr, running.http_addr);

    let opened = tokio::time::Instant::now();
    let mut attackers = stalled(grpc, STALLED_PER_PORT, b"PRI * HTTP/2.0\r\n").await;
    attackers.extend(stalled(http, STALLED_PER_PORT, b"GET /hea").await);
    attackers.extend(stalled(grpc, IDLE_PER_PORT, b"").await);
    attackers.extend(stalled(http, IDLE_PER_PORT, b"").await);
    let opening_took = opened.elapsed();

    let code = check_answers(grpc, bearer_check_request("/api/documents/3", &token, &[])).await;
    assert_eq!(code, 0, "the Check was not allowed");
    probes_answer(http).await;

    // Every stalled connection is closed by the server: not before the header read timeout
    // (the first ones were opened `opening_took` before the last), and soon after it.
    let deadline = opened + opening_took + header_read_timeout + Duration::from_secs(4);
    let total = attackers.len();
    let closed = futures_util::future::join_all(
        attackers
            .into_iter()
            .map(|stream| closed_by_server(stream, deadline)),
    )
    .await
    .into_iter()
    .filter(|closed| *closed)
    .count();
    assert_eq!(closed, total, "stalled connections left open by the server");
    assert!(
        opened.elapsed() >= header_read_timeout,
        "connections were closed before the header read timeout"
    );

    // And the ports still serve afterwards.
    probes_answer(http).await;
    running.shutdown(Duration::from_secs(5)).await;
}

/// A CheckRequest `extra` bytes larger than a plain one (one big header).
fn big_check_request(token: &str, extra: usize) -> CheckRequest {
    let big = "x".repeat(extra);
    bearer_check_request("/api/documents/3", token, &[("x-padding", big.as_str())])
}

fn vm_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// The `grpc-status` of a response, from its headers (trailers-only) or its trailers.
async fn grpc_status(response: h2::client::ResponseFuture) -> Option<String> {
    let response = response.await.ok()?;
    if let Some(status) = response.headers().get("grpc-status") {
        return status.to_str().ok().map(str::to_owned);
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.ok()?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.ok()??;
    trailers
        .get("grpc-status")
        .and_then(|s| s.to_str().ok())
        .map(str::to_owned)
}

/// `streams` gRPC Check streams over `connections` HTTP/2 connections, each announcing a
/// message of `announced` bytes and sending `sent` of them, never ending the stream. Returns
/// the pending responses and what keeps the streams open.
async fn unfinished_messages(
    grpc: SocketAddr,
    connections: usize,
    streams: usize,
    announced: u32,
    payload: &Bytes,
) -> (Vec<h2::client::ResponseFuture>, Vec<h2::SendStream<Bytes>>) {
    let mut responses = Vec::new();
    let mut open = Vec::new();
    let mut prefix = BytesMut::with_capacity(5);
    prefix.put_u8(0);
    prefix.put_u32(announced);
    let prefix = prefix.freeze();
    for _ in 0..connections {
        let tcp = TcpStream::connect(grpc).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        for _ in 0..streams / connections {
            let mut client = client.clone().ready().await.unwrap();
            let request = http::Request::post(format!("http://{grpc}{CHECK_PATH}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .unwrap();
            let (response, mut stream) = client.send_request(request, false).unwrap();
            stream.send_data(prefix.clone(), false).unwrap();
            // One shared buffer: the client side holds no copy per stream.
            stream.send_data(payload.clone(), false).unwrap();
            responses.push(response);
            open.push(stream);
        }
    }
    (responses, open)
}

/// (b) A message over `server.grpc.max_message_bytes` is refused, one within it is decided,
/// and 200 streams that announce a message and never finish it cannot make memory grow
/// without bound: over-limit ones are refused at once, the others end at the request timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_unfinished_messages_are_bounded() {
    let _one = ONE_AT_A_TIME.lock().await;
    let request_timeout = Duration::from_secs(3);
    let mut config = config();
    config.server.grpc.request_timeout = request_timeout;
    let limit = config.server.grpc.max_message_bytes;
    let built = heimdall::app::build(config, test_keys()).unwrap();
    let token = token(&built.keys);
    let running = built.serve().await.unwrap();
    let grpc = running.grpc_addr;

    // What Envoy sends with 60 KiB of headers and an 8 KiB body is well within the limit: it
    // is decided (whatever the rules make of the padding), not refused at the gRPC layer.
    check_answers(grpc, big_check_request(&token, 68 * 1024)).await;
    let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
        .await
        .unwrap()
        .max_encoding_message_size(8 * 1024 * 1024);
    let refused = client
        .check(big_check_request(&token, limit + 1))
        .await
        .expect_err("an oversized message was accepted");
    assert!(
        matches!(
            refused.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{refused:?}"
    );

    let before = vm_rss_bytes();
    // 100 streams announce 4 MiB (what the old default accepted) and 100 announce just under
    // the limit and send all but one byte of it: the most a stream can make the server hold.
    let within = u32::try_from(limit - 1).unwrap();
    let almost = Bytes::from(vec![b'x'; limit - 2]);
    let (over_responses, _over_open) = unfinished_messages(
        grpc,
        2,
        100,
        4 * 1024 * 1024,
        &Bytes::from(vec![b'x'; 16 * 1024]),
    )
    .await;
    let (held_responses, _held_open) = unfinished_messages(grpc, 2, 100, within, &almost).await;
    let sent = tokio::time::Instant::now();

    let over: Vec<_> = futures_util::future::join_all(
        over_responses
            .into_iter()
            .map(|r| tokio::time::timeout(ANSWER_WITHIN, grpc_status(r))),
    )
    .await;
    // Let the held streams' data arrive before measuring.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let grown = vm_rss_bytes().saturating_sub(before);
    eprintln!(
        "RSS growth with 200 unfinished messages: {} KiB",
        grown / 1024
    );
    assert!(
        grown < 128 * 1024 * 1024,
        "200 unfinished messages grew RSS by {} MiB",
        grown / (1024 * 1024)
    );
    // gRPC OUT_OF_RANGE (11) as soon as the length prefix is read.
    assert!(
        over.iter()
            .all(|s| matches!(s, Ok(Some(code)) if code == "11")),
        "over-limit streams were not refused at once: {over:?}"
    );
    // The held streams end with DEADLINE_EXCEEDED (4) at the request timeout, not later.
    let held = futures_util::future::join_all(held_responses.into_iter().map(|r| {
        tokio::time::timeout_at(
            sent + request_timeout + Duration::from_secs(3),
            grpc_status(r),
        )
    }))
    .await;
    assert!(
        held.iter()
            .all(|s| matches!(s, Ok(Some(code)) if code == "4")),
        "unfinished messages were not ended at the request timeout: {held:?}"
    );
    assert!(sent.elapsed() >= request_timeout);
    running.shutdown(Duration::from_secs(5)).await;
}

/// Clock ticks per second for /proc/*/stat times.
fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// User plus system CPU time of a process, in seconds.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name (field 2) may hold spaces; fields after it are space-separated.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / clock_ticks() as f64
}

/// The share of one core `pid` used over `window`.
async fn cpu_share(pid: &str, window: Duration) -> f64 {
    let start = cpu_seconds(pid);
    let started = Instant::now();
    tokio::time::sleep(window).await;
    (cpu_seconds(pid) - start) / started.elapsed().as_secs_f64()
}

/// (c) With both caps saturated, new connections wait without spinning a core, and are served
/// once the stalled ones are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_cap_does_not_spin() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut config = config();
    for cap in [
        &mut config.server.grpc.max_connections,
        &mut config.server.http.max_connections,
    ] {
        *cap = 8;
    }
    config.server.grpc.header_read_timeout = Duration::from_secs(30);
    config.server.http.header_read_timeout = Duration::from_secs(30);
    let built = heimdall::app::build(config, test_keys()).unwrap();
    let running = built.serve().await.unwrap();
    let (grpc, http) = (running.grpc_addr, running.http_addr);

    let mut attackers = stalled(grpc, 100, b"PRI * HTTP/2.0\r\n").await;
    attackers.extend(stalled(http, 100, b"GET /hea").await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A probe queued behind the cap is not answered while it is saturated.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    assert!(
        client
            .get(format!("http://{http}/health"))
            .send()
            .await
            .is_err(),
        "the side port served past its connection cap"
    );

    let share = cpu_share("self", Duration::from_millis(1500)).await;
    eprintln!(
        "CPU with both caps saturated: {:.1}% of a core",
        share * 100.0
    );
    assert!(
        share < 0.5,
        "a saturated cap used {:.0}% of a core",
        share * 100.0
    );

    drop(attackers);
    probes_answer(http).await;
    running.shutdown(Duration::from_secs(5)).await;
}

/// (c) The process out of file descriptors (EMFILE on accept) backs off instead of retrying
/// `accept` in a busy loop, and serves again once descriptors free up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_exhaustion_backs_off() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (grpc_port, http_port) = (
        heimdall::test_helpers::free_port(),
        heimdall::test_helpers::free_port(),
    );
    // A small open-files limit for heimdall only, set by the shell it is exec'ed from.
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 64 && exec \"$0\" serve")
        .arg(env!("CARGO_BIN_EXE_heimdall"))
        .env_remove("HEIMDALL_CONFIG")
        .env_remove("PASETO_SYMMETRIC_KEY")
        .env("HEIMDALL_BIND", "127.0.0.1")
        .env("GRPC_PORT", grpc_port.to_string())
        .env("PORT", http_port.to_string())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap().to_string();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("heimdall is serving") {
                return;
            }
        }
        panic!("heimdall exited before serving");
    })
    .await
    .expect("heimdall did not start in time");
    // Keep draining its log so it never blocks on a full pipe.
    let log = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line);
        }
        seen
    });

    let http: SocketAddr = ([127, 0, 0, 1], http_port).into();
    let grpc: SocketAddr = ([127, 0, 0, 1], grpc_port).into();
    // Mostly on the gRPC port, whose former server retried a failing accept at once.
    let mut attackers = stalled(grpc, 150, b"PRI * HTTP/2.0\r\n").await;
    attackers.extend(stalled(http, 50, b"GET /hea").await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let share = cpu_share(&pid, Duration::from_millis(1500)).await;
    eprintln!("CPU under EMFILE: {:.1}% of a core", share * 100.0);
    assert!(
        share < 0.5,
        "accept under EMFILE used {:.0}% of a core",
        share * 100.0
    );

    drop(attackers);
    // The backoff is at most a second; then the port serves again.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let health = client
        .get(format!("http://{http}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK);

    child.start_kill().unwrap();
    let _ = child.wait().await;
    let seen = log.await.unwrap();
    assert!(
        seen.iter()
            .any(|l| l.contains("accept failed; retrying with backoff")),
        "no backoff was logged:\n{}",
        seen.join("\n")
    );
}
