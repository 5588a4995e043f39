//! Event harness: how fast heimdall applies principal-attribute events, and how long a published
//! event takes to change a decision.
//!
//! It starts a real NATS server with JetStream (`.tools/bin/nats-server`, file storage in the
//! build's `tmp` directory) on a free loopback port, then:
//!
//! 1. **apply rate**: publishes `--events` events over `--principals` principals to the stream
//!    while no heimdall runs, starts `--instances` heimdall instances in this process, and
//!    times how long the shared consumer takes to acknowledge all of them. It prints events per
//!    second in total and per instance;
//! 2. **propagation**: with the instances running, `--flips` times publishes an event that
//!    flips one principal's `plan` and sends ext_authz `Check`s to one instance until the
//!    decision flips with it, and prints the publish-to-decision latency percentiles.
//!
//! All traffic stays on 127.0.0.1 and every wait ends by a deadline.
//!
//! ```text
//! cargo run --release --example events
//! cargo run --release --example events -- --events 100000 --instances 2 --flips 500
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "bench harness: a failure ends the run with its message"
)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, consumer::PullConsumer};
use clap::Parser;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use hdrhistogram::Histogram;
use heimdall::app::Running;
use heimdall::test_helpers::fixtures::ATTRIBUTES;
use heimdall::test_helpers::heimdall::serve_in_process;
use heimdall::test_helpers::nats::NatsServer;
use heimdall::test_helpers::{bearer_check_request, claims, mint, test_config, test_keys};
use heimdall::tokens::Purpose;
use rand::Rng as _;

#[derive(Parser)]
#[command(about = "Apply rate and publish-to-decision propagation of principal attribute events")]
struct Args {
    /// Events published before heimdall starts, for the apply rate.
    #[arg(long, default_value_t = 50_000)]
    events: usize,
    /// Principals the events are spread over.
    #[arg(long, default_value_t = 1_000)]
    principals: usize,
    /// heimdall instances sharing the consumer.
    #[arg(long, default_value_t = 1)]
    instances: usize,
    /// Decision flips measured for propagation.
    #[arg(long, default_value_t = 200)]
    flips: usize,
    /// Workers per instance (`nats.consumer.workers`).
    #[arg(long, default_value_t = heimdall::attributes::NatsConfig::default().consumer.workers)]
    workers: usize,
    /// The NATS server binary.
    #[arg(long, default_value = ".tools/bin/nats-server")]
    nats_bin: PathBuf,
}

async fn start_heimdall(nats_url: &str, workers: usize) -> anyhow::Result<(Running, String)> {
    let mut config = test_config(ATTRIBUTES);
    let nats = config.nats.as_mut().context("nats section")?;
    nats.url = nats_url.to_owned();
    nats.consumer.workers = workers;
    let (keys, running) = serve_in_process(config, test_keys())
        .await
        .map_err(anyhow::Error::msg)?;
    let token = mint(&keys, Purpose::Public, &claims("flipper", &["user"]));
    Ok((running, token))
}

async fn wait_acked(consumer: &mut PullConsumer, last_seq: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let info = consumer.info().await?;
        if info.ack_floor.stream_sequence >= last_seq && info.num_ack_pending == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("events not applied within 10 minutes: {info:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let nats = NatsServer::start_binary(args.nats_bin.clone())
        .await
        .map_err(|e| anyhow::anyhow!("{e} (run `make tools`)"))?;
    let mut js = jetstream::new(async_nats::connect(nats.url()).await?);
    js.set_timeout(Duration::from_secs(5));
    let defaults = heimdall::attributes::NatsConfig::default();
    js.create_stream(jetstream::stream::Config {
        name: defaults.stream.name.clone(),
        subjects: defaults.all_subjects(),
        storage: jetstream::stream::StorageType::File,
        max_age: defaults.stream.max_age,
        ..Default::default()
    })
    .await?;

    // Publish everything first (acks pipelined in windows), so the apply rate is heimdall's.
    let mut rng = rand::rng();
    let started = Instant::now();
    let mut last_seq = 0;
    let mut pending = Vec::with_capacity(1024);
    for n in 0..args.events {
        let principal = rng.random_range(0..args.principals);
        let plan = ["free", "pro", "enterprise"][n % 3];
        let payload = serde_json::json!({
            "user_id": format!("user-{principal}"),
            "plan": plan,
            "attributes": {"current_users": rng.random_range(0..1000), "api_calls_today": n},
        });
        let subject = if n % 2 == 0 {
            "subscription.updated"
        } else {
            "usage.updated"
        };
        pending.push(
            js.publish(subject, serde_json::to_vec(&payload)?.into())
                .await?,
        );
        if pending.len() == 1024 || n + 1 == args.events {
            for ack in pending.drain(..) {
                last_seq = last_seq.max(ack.await?.sequence);
            }
        }
    }
    eprintln!(
        "published {} events over {} principals in {:.2?}",
        args.events,
        args.principals,
        started.elapsed()
    );

    let started = Instant::now();
    let mut instances = Vec::new();
    for _ in 0..args.instances {
        instances.push(start_heimdall(&nats.url(), args.workers).await?);
    }
    let mut consumer: PullConsumer = js
        .get_stream(&defaults.stream.name)
        .await?
        .get_consumer(&defaults.consumer.durable)
        .await
        .map_err(|e| anyhow::anyhow!("consumer: {e}"))?;
    wait_acked(&mut consumer, last_seq).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let rate = args.events as f64 / elapsed;
    println!(
        "apply: {} events, {} instance(s): {elapsed:.2} s from start (readiness included), {rate:.0} events/s, {:.0} events/s per instance",
        args.events,
        args.instances,
        rate / args.instances as f64
    );

    // Propagation: flip one principal's plan and watch the decision follow.
    let (running, token) = &instances[0];
    let mut client = AuthorizationClient::connect(format!("http://{}", running.grpc_addr)).await?;
    let request = bearer_check_request("/reports", token, &[]);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for flip in 0..args.flips {
        let enterprise = flip % 2 == 0;
        let plan = if enterprise { "enterprise" } else { "free" };
        let payload = serde_json::json!({"user_id": "flipper", "plan": plan});
        let sent = Instant::now();
        js.publish("subscription.updated", serde_json::to_vec(&payload)?.into())
            .await?
            .await?;
        let deadline = sent + Duration::from_secs(10);
        loop {
            let response = client.check(request.clone()).await?.into_inner();
            let allowed = response.status.is_some_and(|s| s.code == 0);
            if allowed == enterprise {
                break;
            }
            if Instant::now() > deadline {
                bail!("flip {flip} did not reach the decision within 10 s");
            }
        }
        histogram.record(u64::try_from(sent.elapsed().as_micros())?)?;
    }
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "propagation (publish → decision), {} flips: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        args.flips,
        ms(0.5),
        ms(0.9),
        ms(0.99),
        histogram.max() as f64 / 1000.0
    );
    for (running, _) in instances {
        running.shutdown(Duration::from_secs(1)).await;
    }
    Ok(())
}
