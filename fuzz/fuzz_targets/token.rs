//! Fuzz target `token`: arbitrary bytes against heimdall's PASETO reading — the purpose check,
//! the footer `kid`, verification and decryption, claim parsing and validation. Nothing a client
//! sends as a bearer token may panic, and a token heimdall minted must open to the same claims.
//!
//! The first byte picks what the rest is:
//! - `0`: a whole token, as a client would send it;
//! - `1`, `2`: the footer of a real `v4.public` / `v4.local` token (base64url-encoded here, so
//!   the fuzzer works on the JSON that `kid` is read from);
//! - `3`: a claims document: validated, then minted in both purposes and opened again.

#![no_main]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "fuzz target: a failed assertion is the finding"
)]

use std::sync::LazyLock;
use std::time::Duration;

use base64::Engine as _;
use heimdall::tokens::{Accept, Claims, Keyring, Purpose, TokenError, Validation, token_purpose};
use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;

/// What the paseto authenticator accepts by default.
const MAX_TOKEN_BYTES: usize = 8192;

struct Fixture {
    keys: Keyring,
    /// Tokens minted once with `keys`, without their footer (`v4.<purpose>.<body>`).
    public_body: String,
    local_body: String,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let keys = heimdall::test_helpers::test_keys();
    let claims = heimdall::test_helpers::claims("fuzz", &["user"]);
    let body = |purpose| {
        let token = heimdall::test_helpers::mint(&keys, purpose, &claims);
        // Minted tokens carry a footer: `v4.<purpose>.<body>.<footer>`.
        let (body, _footer) = token.rsplit_once('.').expect("minted token has a footer");
        body.to_owned()
    };
    Fixture {
        public_body: body(Purpose::Public),
        local_body: body(Purpose::Local),
        keys,
    }
});

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let fixture = &*FIXTURE;
    match mode % 4 {
        0 => {
            if let Ok(token) = std::str::from_utf8(rest) {
                open_all(&fixture.keys, token);
            }
        }
        1 | 2 => {
            let body = if mode % 4 == 1 {
                &fixture.public_body
            } else {
                &fixture.local_body
            };
            let footer = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rest);
            let token = format!("{body}.{footer}");
            // The footer is authenticated: any footer but the minted one must fail to open.
            if let Ok(claims) = fixture.keys.open(&token, Accept::Any, MAX_TOKEN_BYTES) {
                panic!("a token with a substituted footer opened: {claims:?}");
            }
        }
        _ => claims_round_trip(&fixture.keys, rest),
    }
});

/// Opens `token` with every `Accept`; whatever happens, no panic, and the outcomes agree.
fn open_all(keys: &Keyring, token: &str) {
    let purpose = token_purpose(token);
    let any = keys.open(token, Accept::Any, MAX_TOKEN_BYTES);
    let local = keys.open(token, Accept::Local, MAX_TOKEN_BYTES);
    let public = keys.open(token, Accept::Public, MAX_TOKEN_BYTES);
    match purpose {
        Ok(Purpose::Local) => {
            assert_eq!(
                any, local,
                "Accept::Any and Accept::Local disagree on a v4.local token"
            );
            assert!(
                token.len() > MAX_TOKEN_BYTES
                    || matches!(public, Err(TokenError::WrongPurpose { .. })),
                "Accept::Public let a v4.local token through: {public:?}"
            );
        }
        Ok(Purpose::Public) => {
            assert_eq!(
                any, public,
                "Accept::Any and Accept::Public disagree on a v4.public token"
            );
            assert!(
                token.len() > MAX_TOKEN_BYTES
                    || matches!(local, Err(TokenError::WrongPurpose { .. })),
                "Accept::Local let a v4.public token through: {local:?}"
            );
        }
        Err(_) => {
            assert!(any.is_err() && local.is_err() && public.is_err());
        }
    }
    if let Ok(claims) = &any {
        let _ = validation().check(claims, OffsetDateTime::now_utc());
    }
    for error in [any, local, public].iter().filter_map(|r| r.as_ref().err()) {
        // Error messages are logged: untrusted text in them (a `kid`, a version) is cut
        // short, so a large footer cannot flood a log line.
        let message = error.to_string();
        assert!(
            message.len() <= 512,
            "an error message grows with the token: {message:?}"
        );
    }
}

/// The claim rules of a typical paseto authenticator.
fn validation() -> Validation {
    Validation {
        issuers: vec!["heimdall".to_owned()].into(),
        audience: Some("api".to_owned()),
        leeway: Duration::from_secs(30),
        required: vec!["roles".to_owned(), "jti".to_owned()].into(),
        allow_non_expiring: false,
    }
}

/// A claims document heimdall accepts must survive minting: both purposes open to claims that
/// serialize exactly as the minted ones did.
fn claims_round_trip(keys: &Keyring, json: &[u8]) {
    let Ok(claims) = serde_json::from_slice::<Claims>(json) else {
        return;
    };
    let _ = validation().check(&claims, OffsetDateTime::now_utc());
    let minted_json = without_floats(serde_json::to_value(&claims).expect("claims serialize"));
    for purpose in [Purpose::Public, Purpose::Local] {
        let token = keys.mint(purpose, &claims).expect("mint");
        assert_eq!(token_purpose(&token), Ok(purpose));
        let opened = keys
            .open(&token, Accept::Any, usize::MAX)
            .unwrap_or_else(|e| panic!("a minted {purpose} token does not open: {e}"));
        let opened_json = without_floats(serde_json::to_value(&opened).expect("claims serialize"));
        assert_eq!(
            minted_json, opened_json,
            "{purpose} token changed its claims"
        );
    }
}

/// `value` with every non-integer number replaced by `null`: serde_json parses floats with a
/// best-effort precision, so one may come back a unit in the last place off.
fn without_floats(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => Value::Null,
        Value::Array(items) => Value::Array(items.into_iter().map(without_floats).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, without_floats(v)))
                .collect(),
        ),
        other => other,
    }
}
