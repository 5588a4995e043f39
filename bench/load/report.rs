//! The report: per-target throughput and latency percentiles, the ratios between targets, as a
//! table or JSON.

use super::worker::Phase;
use super::{Args, CERBOS_OVERHEAD_TARGET};

/// One target relative to another: throughput below 1 and latency above 1 are the price of the
/// first one's extra work.
pub(crate) struct Ratios {
    throughput: f64,
    p50: f64,
    p99: f64,
}

impl Ratios {
    pub(crate) fn of(phase: &Phase, base: &Phase) -> Self {
        Self {
            throughput: ratio(phase.throughput(), base.throughput()),
            p50: ratio(phase.quantile(0.5) as f64, base.quantile(0.5) as f64),
            p99: ratio(phase.quantile(0.99) as f64, base.quantile(0.99) as f64),
        }
    }

    pub(crate) fn line(&self) -> String {
        format!(
            "throughput {:.2}x, p50 {:.2}x, p99 {:.2}x",
            self.throughput, self.p50, self.p99
        )
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "throughput": self.throughput, "p50": self.p50, "p99": self.p99 })
    }
}

/// `--cerbos`: heimdall uncached against Cerbos direct, and heimdall cached against no-op.
pub(crate) struct CerbosRatios {
    uncached_vs_direct: Ratios,
    /// heimdall uncached minus Cerbos direct, in µs.
    p50_added_us: i64,
    p99_added_us: i64,
    cached_vs_noop: Ratios,
}

impl CerbosRatios {
    pub(crate) fn p50_met(&self) -> bool {
        self.uncached_vs_direct.p50 <= CERBOS_OVERHEAD_TARGET
    }

    pub(crate) fn p99_met(&self) -> bool {
        self.uncached_vs_direct.p99 <= CERBOS_OVERHEAD_TARGET
    }
}

pub(crate) fn added_us(phase: &Phase, base: &Phase, q: f64) -> i64 {
    let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    as_i64(phase.quantile(q)).saturating_sub(as_i64(base.quantile(q)))
}

pub(crate) fn met(yes: bool) -> &'static str {
    if yes { "met" } else { "MISSED" }
}

pub(crate) struct Report<'a> {
    args: &'a Args,
    phases: &'a [Phase],
    /// heimdall relative to the first no-op phase.
    ratios: Option<Ratios>,
    cerbos: Option<CerbosRatios>,
    /// Last no-op throughput over the first one (with --repeat): how much the host drifted.
    drift: Option<f64>,
}

pub(crate) fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        f64::NAN
    }
}

impl<'a> Report<'a> {
    pub(crate) fn new(args: &'a Args, phases: &'a [Phase]) -> Self {
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

    pub(crate) fn print_table(&self) {
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

    pub(crate) fn to_json(&self) -> serde_json::Value {
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

pub(crate) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
