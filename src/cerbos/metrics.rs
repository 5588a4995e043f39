//! Cerbos metrics under `heimdall_cerbos_`: call latency, errors by kind, schema validation
//! errors, decision cache hits and misses. The per-call latency histograms are resolved once,
//! at construction; only the error paths look a label set up.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The Cerbos API calls heimdall makes.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum CerbosCall {
    CheckResources,
    PlanResources,
}

impl CerbosCall {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::CheckResources => "check_resources",
            Self::PlanResources => "plan_resources",
        }
    }
}

/// Why a call failed, as the `kind` label counts it (one per [`super::CerbosError`] variant).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum FailureKind {
    Invalid,
    Address,
    Tls,
    Timeout,
    Unavailable,
    Rejected,
    Malformed,
}

impl FailureKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Address => "address",
            Self::Tls => "tls",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::Rejected => "rejected",
            Self::Malformed => "malformed",
        }
    }
}

/// What a schema validation error is about.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ValidationSource {
    Principal,
    Resource,
    Unspecified,
}

impl ValidationSource {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Principal => "principal",
            Self::Resource => "resource",
            Self::Unspecified => "unspecified",
        }
    }
}

macro_rules! encode_as_str {
    ($($label:ty),*) => {$(
        impl EncodeLabelValue for $label {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
                encoder.write_str(self.as_str())
            }
        }
    )*};
}

encode_as_str!(CerbosCall, FailureKind, ValidationSource);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    call: CerbosCall,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    call: CerbosCall,
    kind: FailureKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ValidationLabels {
    call: CerbosCall,
    source: ValidationSource,
}

/// The Cerbos metric handles.
#[derive(Clone)]
pub struct CerbosMetrics {
    check_latency: Histogram,
    plan_latency: Histogram,
    errors: Family<ErrorLabels, Counter>,
    validation_errors: Family<ValidationLabels, Counter>,
    cache_hits: Counter,
    cache_misses: Counter,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    ])
}

impl CerbosMetrics {
    /// Registers under `heimdall_cerbos_`.
    pub fn new(registry: &mut Registry) -> Self {
        let latency: Family<CallLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let call = |call| latency.get_or_create(&CallLabels { call }).clone();
        let metrics = Self {
            check_latency: call(CerbosCall::CheckResources),
            plan_latency: call(CerbosCall::PlanResources),
            errors: Family::default(),
            validation_errors: Family::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("heimdall_cerbos");
        r.register(
            "call_duration_seconds",
            "Cerbos call latency by call",
            latency,
        );
        r.register(
            "errors",
            "Failed Cerbos calls by call and kind",
            metrics.errors.clone(),
        );
        r.register(
            "validation_errors",
            "Schema validation errors Cerbos reported in its answers, by call and source",
            metrics.validation_errors.clone(),
        );
        r.register(
            "decision_cache_hits",
            "CheckResources answered from the decision cache",
            metrics.cache_hits.clone(),
        );
        r.register(
            "decision_cache_misses",
            "CheckResources sent to Cerbos",
            metrics.cache_misses.clone(),
        );
        metrics
    }

    pub(super) fn latency(&self, call: CerbosCall) -> &Histogram {
        match call {
            CerbosCall::CheckResources => &self.check_latency,
            CerbosCall::PlanResources => &self.plan_latency,
        }
    }

    pub(super) fn failed(&self, call: CerbosCall, kind: FailureKind) {
        self.errors.get_or_create(&ErrorLabels { call, kind }).inc();
    }

    pub(super) fn validation_error(&self, call: CerbosCall, source: ValidationSource) {
        self.validation_errors
            .get_or_create(&ValidationLabels { call, source })
            .inc();
    }

    pub(super) fn cache_hit(&self) {
        self.cache_hits.inc();
    }

    pub(super) fn cache_miss(&self) {
        self.cache_misses.inc();
    }
}
