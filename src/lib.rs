//! heimdall: an Envoy external authorizer.
//!
//! Envoy (or an Istio sidecar) calls `envoy.service.auth.v3.Authorization/Check` for every
//! request; heimdall matches the request to a rule and runs the rule's pipeline (authenticate →
//! authorize → finalize, or the error pipeline). See `docs/rules.md` and `ARCHITECTURE.md`.

pub mod app;
pub mod attributes;
pub mod canonical;
pub mod cerbos;
pub mod config;
pub mod decision;
pub mod engine;
pub(crate) mod expr;
pub mod extauthz;
pub mod file_watch;
pub(crate) mod http;
pub(crate) mod listener;
pub mod login;
pub mod mechanisms;
pub mod metrics;
pub mod outbound;
pub(crate) mod pipeline;
pub mod policy;
pub mod readiness;
pub(crate) mod redact;
pub mod reload;
pub mod request;
pub mod rules;
pub mod subject;
pub mod telemetry;
pub mod tls;
pub mod tokens;
pub mod trace_context;
pub mod ttl_cache;

#[cfg(any(test, feature = "testing"))]
pub mod test_helpers;
