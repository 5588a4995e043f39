//! Mechanisms against real peers (`tests/mechanisms/`), one module per mechanism; shared setup
//! lives in `heimdall::test_helpers`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests: a failed assertion is the finding"
)]

mod introspection;
mod jwt;
