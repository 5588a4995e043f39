//! Free loopback ports for programs that must be told their port up front.

use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU16, Ordering};

use super::fail;

/// The ports [`free_port`] hands out: below Linux's default ephemeral range (32768–60999), so
/// the kernel never gives one to an outgoing connection or a `bind(0)` between the moment a port
/// is found free and the moment the program under test binds it. Tests that open thousands of
/// client connections (listeners, adversarial) made that race real.
pub const HANDED_OUT_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A loopback TCP port that was free a moment ago (bound on 127.0.0.1, checked, released).
///
/// Prefer binding port 0 directly where the code under test allows it; this is for programs that
/// must be told their port up front. Ports come from [`HANDED_OUT_PORTS`], each at most once per
/// process, starting at an offset derived from the process id so that consecutive test binaries
/// do not reuse each other's ports. Nothing listens on the port once this returns, so it is also
/// a valid "closed port" for fail-closed tests. Panics when the whole range is taken.
pub fn free_port() -> u16 {
    try_free_port().unwrap_or_else(|| fail("no free loopback port below the ephemeral range"))
}

/// [`free_port`], `None` when every port of [`HANDED_OUT_PORTS`] is taken.
pub fn try_free_port() -> Option<u16> {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let span = HANDED_OUT_PORTS.end - HANDED_OUT_PORTS.start;
    let offset = u16::try_from(std::process::id() % u32::from(span)).unwrap_or(0);
    (0..span).find_map(|_| {
        let step = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = HANDED_OUT_PORTS.start + (offset + step) % span;
        TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .is_ok()
            .then_some(port)
    })
}
