//! Load phases: closed-loop workers at fixed concurrency over a few HTTP/2 connections, a
//! warm-up then a measured window, every call bounded by a deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use super::Args;
use super::targets::{CALL_TIMEOUT, Client, Load, Outcome, Target, connect};

/// Histogram range in microseconds: 1 µs to 60 s at three significant digits.
const HISTOGRAM_MAX_US: u64 = 60_000_000;

pub(crate) fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3)?)
}

/// What one worker (or, merged, a whole phase) saw.
pub(crate) struct Tally {
    /// Latency of the allowed calls started in the measurement window, in µs.
    pub(crate) latency: Histogram<u64>,
    pub(crate) allowed: u64,
    pub(crate) denials: u64,
    pub(crate) errors: u64,
    /// Denials and errors during the warm-up: not measured, but still a failed run.
    pub(crate) warmup_failures: u64,
    pub(crate) first_denial: Option<String>,
    pub(crate) first_error: Option<String>,
}

impl Tally {
    pub(crate) fn new() -> anyhow::Result<Self> {
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

    pub(crate) fn record(&mut self, measured: bool, latency: Duration, outcome: Outcome) {
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

    pub(crate) fn merge(&mut self, other: Self) -> anyhow::Result<()> {
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
pub(crate) async fn worker(
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
pub(crate) struct Phase {
    pub(crate) target: &'static str,
    pub(crate) window: Duration,
    pub(crate) tally: Tally,
}

impl Phase {
    pub(crate) fn clean(&self) -> bool {
        self.tally.denials == 0 && self.tally.errors == 0 && self.tally.warmup_failures == 0
    }

    pub(crate) fn throughput(&self) -> f64 {
        self.tally.allowed as f64 / self.window.as_secs_f64()
    }

    pub(crate) fn quantile(&self, q: f64) -> u64 {
        self.tally.latency.value_at_quantile(q)
    }

    pub(crate) fn warn_if_failed(&self) {
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

pub(crate) async fn run_phase(target: &Target, args: &Args) -> anyhow::Result<Phase> {
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
