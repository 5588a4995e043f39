//! Principal attributes from NATS JetStream: business events → one shared durable consumer →
//! the KV bucket (compare-and-swap) → a bounded cache per replica, kept fresh by a KV watch.
//!
//! The write side ([`consumer`]) folds events into one document per principal ([`record`]);
//! the read side ([`store::PrincipalStore`]) answers the `principal_attributes` contextualizer,
//! the Cerbos authorizer's principal and token revocation. [`run`] owns the connection: heimdall
//! starts without NATS, keeps retrying, and reports ready once the consumer and the watch are
//! live. The design and its reasons are in ARCHITECTURE.md.

pub mod consumer;
pub mod event;
pub mod record;
pub mod store;

mod config;
mod metrics;
mod supervisor;

pub use config::{
    BucketSettings, CacheSettings, ConsumerSettings, NatsAuth, NatsConfig, NatsTls, Secret,
    StreamSettings,
};
pub use metrics::AttributeMetrics;
use metrics::ReasonLabels;
pub use store::{LookupError, PrincipalStore, Snapshot};
pub use supervisor::run;
