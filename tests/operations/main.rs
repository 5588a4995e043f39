//! Running heimdall in production: rule reload, TLS, tracing and the deployment files, each
//! against the real components (`tests/operations/`: one test binary, linked once).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests: a failed assertion is the finding"
)]

mod compose;
mod reload;
mod tls;
mod tracing;
