//! Fuzz target `config`: arbitrary text as heimdall's YAML configuration, through what
//! `heimdall validate` and `heimdall serve` do before the first request: parse, validate, build
//! the key ring and compile the rules (mechanisms, CEL expressions, path patterns, the matcher),
//! mint the demo token, and then decide three requests with the compiled rules. A configuration
//! is either refused with an error or works; it never panics heimdall.
//!
//! Configurations that name files (Cerbos TLS material, key files) are not built: reading
//! whatever path the fuzzer writes (`/dev/zero`) says nothing about heimdall. Configurations with
//! Cerbos or NATS are compiled but not asked to decide, which would need the services.

#![no_main]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "fuzz target: a failed assertion is the finding"
)]

use std::collections::HashMap;
use std::sync::LazyLock;

use heimdall::canonical::RequestLine;
use heimdall::config::{Config, KeySource, Origin};
use heimdall::decision::Decision;
use heimdall::request::{Headers, RequestView};
use heimdall::tokens::Purpose;
use libfuzzer_sys::fuzz_target;
use tokio::runtime::Runtime;

/// Cerbos clients connect lazily on a runtime; decisions run under `tokio::time::timeout`.
static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
});

/// `Authorization` header values: a valid `v4.local` token for a `user`, and none.
static BEARER: LazyLock<String> = LazyLock::new(|| {
    let keys = heimdall::test_helpers::test_keys();
    let claims = heimdall::test_helpers::claims("fuzz-user", &["user"]);
    format!(
        "Bearer {}",
        heimdall::test_helpers::mint(&keys, Purpose::Local, &claims)
    )
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::parse(text, &Origin::Embedded) else {
        return;
    };
    if config.validate().is_err() {
        return;
    }
    if config
        .tokens
        .keys
        .iter()
        .any(|k| !matches!(k, KeySource::Paserk(_)))
    {
        return;
    }
    if config.cerbos.as_ref().is_some_and(|c| c.tls.is_some()) {
        return;
    }
    // No environment variables: the fuzzed text alone configures heimdall.
    let _ = config.keyring(&HashMap::<String, String>::new());
    let _ = config.redacted_yaml();
    let decides = config.cerbos.is_none() && config.nats.is_none();

    RUNTIME.block_on(async {
        let keys = heimdall::test_helpers::test_keys();
        let Ok(built) = heimdall::app::build(config, keys) else {
            return;
        };
        let _ = heimdall::app::demo_token(&built.keys, &built.config);
        if decides {
            for (method, path, authorization) in [
                ("GET", "/", BEARER.as_str()),
                ("DELETE", "/api/documents/1", BEARER.as_str()),
                ("GET", "/admin/users", ""),
            ] {
                decide(&built, method, path, authorization).await;
            }
        }
    });
    // Let the tasks a dropped Cerbos client leaves behind see their channel closed and end.
    RUNTIME.block_on(async {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    });
});

/// Decides one request with the compiled rules and checks the answer is well formed.
async fn decide(built: &heimdall::app::Built, method: &str, path: &str, authorization: &str) {
    // `server.paths.max_length` may be shorter than the path.
    let Ok(line) = RequestLine::parse(method, "api.example.com", path, built.engine.path_policy())
    else {
        return;
    };
    let headers: HashMap<String, String> = [("authorization", authorization), ("accept", "*/*")]
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let view = RequestView::new(&line, "https", Headers::Map(&headers));
    let decided = built.engine.decide(&view).await;
    match &decided.outcome.decision {
        Decision::Allow(_) => {}
        Decision::Deny(response) | Decision::Error(response) => {
            assert!(
                (300..600).contains(&response.status),
                "a refusal with HTTP status {}",
                response.status
            );
        }
    }
}
