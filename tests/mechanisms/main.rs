//! Mechanisms against real peers (`tests/mechanisms/`): one test binary, one module per
//! mechanism family, each binary linking the whole crate once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests: a failed assertion is the finding"
)]

mod finalizers;
mod http_contextualizer;
mod introspection;
mod jwt;
mod remote_authorizer;
