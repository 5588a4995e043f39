//! Prometheus metrics. Labels are bounded: rule ids, decisions, mechanism ids and error kinds,
//! all fixed by the configuration; never a principal or a path.
//!
//! Per-rule counters and histograms are resolved once when rules compile, so a decision
//! increments atomics without a label lookup.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::decision::ErrorKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum DecisionLabel {
    Allow,
    Deny,
    Error,
}

impl EncodeLabelValue for DecisionLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Error => "error",
        })
    }
}

impl EncodeLabelValue for ErrorKind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub rule: String,
    pub decision: DecisionLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepErrorLabels {
    pub mechanism: String,
    pub kind: ErrorKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EntryLabels {
    pub entry: &'static str,
}

/// Every metric heimdall exports.
#[derive(Clone)]
pub struct Metrics {
    decisions: Family<DecisionLabels, Counter>,
    duration: Family<RuleLabels, Histogram, fn() -> Histogram>,
    step_errors: Family<StepErrorLabels, Counter>,
    /// Requests refused before any rule ran: malformed `CheckRequest`s, untrusted or
    /// incomplete `/decision` calls. (A pipeline that times out counts as `decision="error"`.)
    pub rejected: Family<EntryLabels, Counter>,
    pub in_flight: Gauge,
}

/// The counters of one rule.
#[derive(Clone)]
pub struct RuleMetrics {
    pub allow: Counter,
    pub deny: Counter,
    pub error: Counter,
    pub duration: Histogram,
}

fn latency_histogram() -> Histogram {
    // 25 µs … 0.5 s: the decision path lives well under Envoy's 200 ms default timeout.
    Histogram::new([
        0.000_025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
        0.25, 0.5,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            decisions: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            step_errors: Family::default(),
            rejected: Family::default(),
            in_flight: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Creates the metrics and registers them under `heimdall_`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let r = registry.sub_registry_with_prefix("heimdall");
        r.register(
            "check_decisions",
            "Decisions by rule and outcome",
            metrics.decisions.clone(),
        );
        r.register(
            "check_duration_seconds",
            "Time to decide, by rule",
            metrics.duration.clone(),
        );
        r.register(
            "step_errors",
            "Failed pipeline steps by mechanism and error kind",
            metrics.step_errors.clone(),
        );
        r.register(
            "check_rejected",
            "Requests refused before any rule ran, by entry point",
            metrics.rejected.clone(),
        );
        r.register(
            "check_in_flight",
            "Decisions in progress",
            metrics.in_flight.clone(),
        );
        // Process-wide (one exporter); zero while tracing is off.
        r.register(
            "trace_spans_dropped",
            "Finished spans dropped because the trace export queue was full",
            crate::trace_context::spans_dropped().clone(),
        );
        metrics
    }

    /// Resolves the counters of `rule` once, at load.
    pub fn for_rule(&self, rule: &str) -> RuleMetrics {
        let counter = |decision| {
            self.decisions
                .get_or_create(&DecisionLabels {
                    rule: rule.to_owned(),
                    decision,
                })
                .clone()
        };
        RuleMetrics {
            allow: counter(DecisionLabel::Allow),
            deny: counter(DecisionLabel::Deny),
            error: counter(DecisionLabel::Error),
            duration: self
                .duration
                .get_or_create(&RuleLabels {
                    rule: rule.to_owned(),
                })
                .clone(),
        }
    }

    /// Counts a failed step (an error path, so the label lookup is acceptable).
    pub fn step_error(&self, mechanism: &str, kind: ErrorKind) {
        self.step_errors
            .get_or_create(&StepErrorLabels {
                mechanism: mechanism.to_owned(),
                kind,
            })
            .inc();
    }
}

/// Rewrites prometheus-client's OpenMetrics exposition into the Prometheus text format (0.0.4),
/// for scrapers and linters that do not speak OpenMetrics. The two differ where heimdall's
/// metrics are concerned only in that a counter family is named without `_total` in OpenMetrics
/// (`# TYPE heimdall_check_decisions counter`) and with it in the text format, and in the
/// `# UNIT` and `# EOF` lines, which the text format does not have.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut text = String::with_capacity(openmetrics.len() + 256);
    // HELP comes before TYPE: hold it until TYPE says whether the family is a counter.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = if kind == "counter" && !name.ends_with("_total") {
                "_total"
            } else {
                ""
            };
            if let Some((help_name, help_text)) = help.take() {
                let _ = writeln!(text, "# HELP {help_name}{suffix} {help_text}");
            }
            let _ = writeln!(text, "# TYPE {name}{suffix} {kind}");
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counters_with_total_and_drops_openmetrics_lines() {
        let openmetrics = "# HELP heimdall_check_decisions Decisions by rule.\n\
            # TYPE heimdall_check_decisions counter\n\
            heimdall_check_decisions_total{rule=\"a\",decision=\"allow\"} 1\n\
            # HELP heimdall_check_duration_seconds Time to decide.\n\
            # TYPE heimdall_check_duration_seconds histogram\n\
            # UNIT heimdall_check_duration_seconds seconds\n\
            heimdall_check_duration_seconds_count{rule=\"a\"} 1\n\
            # HELP heimdall_check_in_flight Decisions in progress.\n\
            # TYPE heimdall_check_in_flight gauge\n\
            heimdall_check_in_flight 0\n\
            # EOF\n";
        assert_eq!(
            to_prometheus_text(openmetrics),
            "# HELP heimdall_check_decisions_total Decisions by rule.\n\
             # TYPE heimdall_check_decisions_total counter\n\
             heimdall_check_decisions_total{rule=\"a\",decision=\"allow\"} 1\n\
             # HELP heimdall_check_duration_seconds Time to decide.\n\
             # TYPE heimdall_check_duration_seconds histogram\n\
             heimdall_check_duration_seconds_count{rule=\"a\"} 1\n\
             # HELP heimdall_check_in_flight Decisions in progress.\n\
             # TYPE heimdall_check_in_flight gauge\n\
             heimdall_check_in_flight 0\n"
        );
    }

    #[test]
    fn every_registered_family_survives_the_rewrite() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        metrics.for_rule("r").allow.inc();
        let mut openmetrics = String::new();
        prometheus_client::encoding::text::encode(&mut openmetrics, &registry)
            .unwrap_or_else(|e| panic!("encode: {e}"));
        let text = to_prometheus_text(&openmetrics);
        assert!(text.contains("# TYPE heimdall_check_decisions_total counter\n"));
        assert!(text.contains("heimdall_check_decisions_total{rule=\"r\",decision=\"allow\"} 1\n"));
        assert!(!text.contains("# EOF"));
    }
}
