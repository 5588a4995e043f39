//! Fuzz target `redirect`: arbitrary text as the `redirect_uri` of `/auth/login` and
//! `/auth/logout`, through the login's allow-list (`heimdall::login::AllowList`). An open
//! redirect is a phishing tool with heimdall's name on it, and browsers read URLs more loosely
//! than parsers do, so this target asserts what the browser will do with what heimdall accepts,
//! not just the absence of panics:
//!
//! - an accepted URL is on an allowed origin and under the entry's path prefix, read back from
//!   the serialized form the `Location` header carries (the browser's view), not from the value
//!   the check computed;
//! - the serialized form is printable ASCII with no backslash and no userinfo, and checking it
//!   again accepts it as the same URL (no second reading goes elsewhere);
//! - the raw input itself had none of the spellings browsers repair silently (controls, spaces,
//!   backslashes, non-ASCII).

#![no_main]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "fuzz target: a failed assertion is the finding"
)]

use std::sync::LazyLock;

use heimdall::login::AllowList;
use libfuzzer_sys::fuzz_target;
use url::Url;

/// A whole origin, an origin with a path prefix, and a loopback origin with a port.
const ENTRIES: [&str; 3] = [
    "https://app.example.com",
    "https://docs.example.com/guide/",
    "http://127.0.0.1:3000/ui",
];

static LIST: LazyLock<AllowList> = LazyLock::new(|| {
    let entries: Vec<String> = ENTRIES.iter().map(|e| (*e).to_owned()).collect();
    AllowList::new(&entries, "https://auth.example.com/auth/callback").unwrap()
});

/// Whether `url` (as a browser reads it) is on an entry's origin and under its prefix.
fn allowed(url: &Url) -> bool {
    let path = url.path();
    match (url.scheme(), url.host_str(), url.port_or_known_default()) {
        ("https", Some("app.example.com"), Some(443)) => true,
        ("https", Some("docs.example.com"), Some(443)) => path.starts_with("/guide/"),
        ("http", Some("127.0.0.1"), Some(3000)) => path == "/ui" || path.starts_with("/ui/"),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(accepted) = LIST.check(raw) else {
        return;
    };
    assert!(
        raw.bytes().all(|b| b.is_ascii_graphic()) && !raw.contains('\\'),
        "accepted a spelling browsers repair: {raw:?}"
    );
    let location = accepted.as_str();
    assert!(
        location.bytes().all(|b| b.is_ascii_graphic()) && !location.contains('\\'),
        "Location is not plain ASCII: {location:?} (from {raw:?})"
    );
    let browser = Url::parse(location).unwrap();
    assert!(
        browser.username().is_empty() && browser.password().is_none(),
        "Location carries userinfo: {location:?} (from {raw:?})"
    );
    assert!(
        allowed(&browser),
        "open redirect: {raw:?} sends the browser to {location:?}"
    );
    let again = LIST.check(location).unwrap();
    assert_eq!(
        again.as_str(),
        location,
        "a second reading differs: {raw:?}"
    );
});
