//! The metrics of the attribute pipeline, under `heimdall_attributes_` and `heimdall_nats_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct OutcomeLabels {
    pub(super) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ReasonLabels {
    pub(super) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ResultLabels {
    pub(super) result: &'static str,
}

/// The metrics of the attribute pipeline, registered under `heimdall_attributes_` and
/// `heimdall_nats_`. Labels are fixed words, never a principal.
#[derive(Clone)]
pub struct AttributeMetrics {
    pub(super) connected: Gauge,
    pub(super) events: Family<OutcomeLabels, Counter>,
    pub(super) malformed: Family<ReasonLabels, Counter>,
    pub(super) cas_conflicts: Counter,
    pub(super) apply_duration: Histogram,
    pub(super) consumer_pending: Gauge,
    pub(super) consumer_ack_pending: Gauge,
    pub(super) lookups: Family<ResultLabels, Counter>,
    pub(super) watch_updates: Counter,
    pub(super) revoked: Counter,
    pub(super) live: Gauge,
}

impl AttributeMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            connected: Gauge::default(),
            events: Family::default(),
            malformed: Family::default(),
            cas_conflicts: Counter::default(),
            apply_duration: Histogram::new([
                0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
            ]),
            consumer_pending: Gauge::default(),
            consumer_ack_pending: Gauge::default(),
            lookups: Family::default(),
            watch_updates: Counter::default(),
            revoked: Counter::default(),
            live: Gauge::default(),
        };
        let nats = registry.sub_registry_with_prefix("heimdall_nats");
        nats.register(
            "connected",
            "1 while the NATS connection is up",
            metrics.connected.clone(),
        );
        let r = registry.sub_registry_with_prefix("heimdall_attributes");
        r.register(
            "events",
            "Events handled by outcome: applied, skipped (already applied or superseded), malformed (terminated), retried (nak)",
            metrics.events.clone(),
        );
        r.register(
            "malformed_events",
            "Terminated events by reason",
            metrics.malformed.clone(),
        );
        r.register(
            "cas_conflicts",
            "KV writes retried because another writer changed the principal first",
            metrics.cas_conflicts.clone(),
        );
        r.register(
            "apply_duration_seconds",
            "Time to apply one event to the KV bucket",
            metrics.apply_duration.clone(),
        );
        r.register(
            "consumer_pending",
            "Events in the stream not yet delivered to the shared consumer (lag)",
            metrics.consumer_pending.clone(),
        );
        r.register(
            "consumer_ack_pending",
            "Events delivered but not yet acknowledged",
            metrics.consumer_ack_pending.clone(),
        );
        r.register(
            "lookups",
            "Principal lookups on the decision path: hit, miss (read from KV) or error",
            metrics.lookups.clone(),
        );
        r.register(
            "watch_updates",
            "KV changes received by this replica's watch",
            metrics.watch_updates.clone(),
        );
        r.register(
            "revoked_tokens",
            "Tokens rejected because their principal was revoked after they were issued",
            metrics.revoked.clone(),
        );
        r.register(
            "live",
            "1 while the consumer (if enabled) and the KV watch are running",
            metrics.live.clone(),
        );
        metrics
    }

    pub(super) fn event(&self, outcome: &'static str) {
        self.events.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts a token rejected by a revocation.
    pub fn revoked_token(&self) {
        self.revoked.inc();
    }
}
