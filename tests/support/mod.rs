//! Shared helpers for heimdall's integration tests: finding the real components installed by
//! `make tools`, free loopback ports, an echo upstream, and a real Envoy in front of heimdall.
//!
//! A test crate uses it with `mod support;`. Every address here is on loopback.
#![allow(
    dead_code,
    reason = "each integration test crate uses a different part of the support module"
)]

pub mod cerbos;
pub mod echo;
pub mod envoy;
pub mod nats;
pub mod process;
pub mod tools;

use std::net::{Ipv4Addr, TcpListener};

/// A loopback TCP port that was free a moment ago (bound to 127.0.0.1:0, read, released).
///
/// Prefer binding port 0 directly where the code under test allows it; this is for programs that
/// must be told their port up front. Nothing listens on the port once this returns, so it is also
/// a valid "closed port" for fail-closed tests.
pub fn free_port() -> u16 {
    #[allow(
        clippy::expect_used,
        reason = "a test cannot go on without a loopback port"
    )]
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0 for a free port");
    #[allow(
        clippy::expect_used,
        reason = "a test cannot go on without a loopback port"
    )]
    let port = listener
        .local_addr()
        .expect("local address of a bound listener")
        .port();
    port
}
