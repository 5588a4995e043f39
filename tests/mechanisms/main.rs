//! Mechanisms against the real services they call (`tests/mechanisms/`), with heimdall run as
//! its binary behind a real Envoy. One test binary: each links the whole crate.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests: a failed assertion is the finding"
)]

mod http_contextualizer;
mod remote_authorizer;
