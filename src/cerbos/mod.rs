//! Cerbos, the policy decision point: the gRPC client heimdall calls (`CheckResources`,
//! `PlanResources`), with a deadline per call, a bounded decision cache and metrics, behind the
//! [`crate::policy::PolicyDecisionPoint`] seam.
//!
//! Only this module knows the generated protobuf types: `config` (the section and TLS),
//! `client` (connections, validation, the decision cache), `convert` (JSON ↔ protobuf), `plan`
//! (query plans), `metrics` and `health` (readiness).

pub mod pb;

mod client;
mod config;
mod convert;
mod health;
mod metrics;
mod plan;

use std::time::Duration;

pub use client::Cerbos;
pub use config::{CerbosConfig, CerbosTls, DEFAULT_ROLE};
pub use convert::{json_to_pb, pb_to_json};
pub use health::watch_health;
pub use metrics::{CerbosCall, CerbosMetrics, FailureKind, ValidationSource};

/// Why a call to Cerbos produced no decision. Every variant denies; [`CerbosError::is_refusal`]
/// tells a question that is invalid (a denial) from a PDP that could not answer (an outage).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CerbosError {
    /// heimdall would not send the question: Cerbos would refuse it (no roles, an empty
    /// resource id, duplicate actions, too many resources).
    #[error("invalid policy question: {0}")]
    Invalid(String),
    #[error("invalid Cerbos address `{0}`")]
    Address(String),
    #[error("Cerbos TLS: {0}")]
    Tls(String),
    #[error("Cerbos did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Cerbos is unreachable: {0}")]
    Unavailable(String),
    #[error("Cerbos refused the request: {0}")]
    Rejected(String),
    #[error("Cerbos answered something unusable: {0}")]
    Malformed(String),
}

impl CerbosError {
    /// Whether the question itself was refused (by heimdall or by Cerbos), as opposed to
    /// Cerbos being unreachable, late or broken. A refusal is a denial: retrying, or letting
    /// the request through because "the PDP failed", would be wrong.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Invalid(_) | Self::Rejected(_))
    }

    /// The metric label of this failure.
    pub fn kind(&self) -> FailureKind {
        match self {
            Self::Invalid(_) => FailureKind::Invalid,
            Self::Address(_) => FailureKind::Address,
            Self::Tls(_) => FailureKind::Tls,
            Self::Timeout(_) => FailureKind::Timeout,
            Self::Unavailable(_) => FailureKind::Unavailable,
            Self::Rejected(_) => FailureKind::Rejected,
            Self::Malformed(_) => FailureKind::Malformed,
        }
    }
}

impl crate::policy::DecisionError for CerbosError {
    fn is_refusal(&self) -> bool {
        CerbosError::is_refusal(self)
    }
}
