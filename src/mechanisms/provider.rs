//! What the authenticators of an identity provider's own tokens (`jwt`, `oauth2_introspection`)
//! share: URL checks at load, one outbound client each with a deadline below the Check's,
//! OpenID discovery, JSON answers read defensively, the claims-to-principal mapping, and their
//! metrics.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::BuildError;
use crate::login::ClaimMapping;
use crate::outbound::HttpClient;
use crate::redact::untrusted;
use crate::subject::Principal;

/// The largest discovery document, JWKS or introspection answer read.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    mechanism: String,
    outcome: &'static str,
}

/// Calls to identity providers, by mechanism and outcome.
#[derive(Clone, Default)]
pub struct ProviderMetrics {
    jwks_fetches: Family<CallLabels, Counter>,
    introspections: Family<CallLabels, Counter>,
}

impl ProviderMetrics {
    /// Creates the metrics and registers them under `heimdall_`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let r = registry.sub_registry_with_prefix("heimdall");
        r.register(
            "jwks_fetches",
            "Key set (JWKS) fetches of `jwt` authenticators, by mechanism and outcome (ok, error)",
            metrics.jwks_fetches.clone(),
        );
        r.register(
            "introspections",
            "Token introspection calls, by mechanism and outcome (active, inactive, error)",
            metrics.introspections.clone(),
        );
        metrics
    }

    /// Counts a JWKS fetch (the I/O path: the label lookup is acceptable).
    pub(crate) fn jwks_fetch(&self, mechanism: &str, outcome: &'static str) {
        Self::count(&self.jwks_fetches, mechanism, outcome);
    }

    /// Counts an introspection call.
    pub(crate) fn introspection(&self, mechanism: &str, outcome: &'static str) {
        Self::count(&self.introspections, mechanism, outcome);
    }

    fn count(family: &Family<CallLabels, Counter>, mechanism: &str, outcome: &'static str) {
        family
            .get_or_create(&CallLabels {
                mechanism: mechanism.to_owned(),
                outcome,
            })
            .inc();
    }
}

/// `value` as an http(s) URL without credentials; the message names `field`.
pub(crate) fn http_url(field: &str, value: &str) -> Result<url::Url, BuildError> {
    let invalid = |why: String| BuildError::Invalid(format!("`{field}` {why}").into());
    let url = url::Url::parse(value)
        .map_err(|e| invalid(format!("`{}` is not a URL: {e}", untrusted(value, 200))))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("must be an http or https URL".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "must not carry credentials (use `client_id` and `client_secret`)".into(),
        ));
    }
    Ok(url)
}

/// The outbound client of one mechanism: `timeout` must be positive and below the Check
/// deadline, so a slow provider ends in a Communication error, not a cut-off Check.
pub(crate) fn client(timeout: Duration, check_timeout: Duration) -> Result<HttpClient, BuildError> {
    if timeout.is_zero() || timeout >= check_timeout {
        return Err(BuildError::Invalid(
            format!(
                "`timeout` {} must be positive and below server.check_timeout ({})",
                humantime::format_duration(timeout),
                humantime::format_duration(check_timeout)
            )
            .into(),
        ));
    }
    HttpClient::new(timeout, MAX_ANSWER_BYTES)
        .map_err(|e| BuildError::Invalid(format!("HTTP client: {e}").into()))
}

/// Reads a JSON object from a 200 answer; anything else is described without quoting more
/// than a short, escaped piece of the body.
pub(crate) fn json_object(
    what: &str,
    response: &http::Response<Vec<u8>>,
) -> Result<Map<String, Value>, String> {
    if response.status() != http::StatusCode::OK {
        return Err(format!(
            "{what} answered {}: {}",
            response.status(),
            untrusted(&String::from_utf8_lossy(response.body()), 100)
        ));
    }
    match serde_json::from_slice(response.body()) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(format!("{what} did not answer a JSON object")),
    }
}

/// GETs a JSON object.
pub(crate) async fn get_json(
    client: &HttpClient,
    what: &str,
    url: &str,
) -> Result<Map<String, Value>, String> {
    let request = http::Request::get(url)
        .header(http::header::ACCEPT, "application/json")
        .body(Vec::new())
        .map_err(|e| format!("{what}: {e}"))?;
    let response = client
        .send(request)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    json_object(what, &response)
}

/// The endpoint `field` (`jwks_uri`, `introspection_endpoint`) of `issuer`'s discovery
/// document. The document's `issuer` must be `issuer` exactly (OpenID Connect Discovery §4.3):
/// a document served for another issuer must not choose heimdall's keys.
pub(crate) async fn discover(
    client: &HttpClient,
    issuer: &str,
    field: &str,
) -> Result<String, String> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let document = get_json(client, "discovery", &url).await?;
    if document.get("issuer").and_then(Value::as_str) != Some(issuer) {
        return Err("the discovery document names another issuer".into());
    }
    let endpoint = document
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("the discovery document has no `{field}`"))?;
    http_url(field, endpoint).map_err(|e| format!("discovery: {e}"))?;
    Ok(endpoint.to_owned())
}

/// `value` as Unix seconds (an integer or a float, as JSON numbers come).
pub(crate) fn unix_time(value: Option<&Value>) -> Option<OffsetDateTime> {
    let seconds = value?.as_f64()?;
    if !seconds.is_finite() {
        return None;
    }
    // Truncation is intended: sub-second precision does not matter for `exp`/`nbf`/`iat`.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "finite; out-of-range values saturate and are then refused by from_unix_timestamp"
    )]
    let whole = seconds as i64;
    OffsetDateTime::from_unix_timestamp(whole).ok()
}

/// Whether `claims` has an `aud` (a string or a list of strings) naming one of `accepted`.
pub(crate) fn audience_matches(claims: &Map<String, Value>, accepted: &[Box<str>]) -> bool {
    match claims.get("aud") {
        Some(Value::String(aud)) => accepted.iter().any(|a| **a == **aud),
        Some(Value::Array(auds)) => auds
            .iter()
            .filter_map(Value::as_str)
            .any(|aud| accepted.iter().any(|a| &**a == aud)),
        _ => false,
    }
}

/// The principal a mapping makes of verified claims; the message says what is missing.
pub(crate) fn principal(
    id: &Arc<str>,
    mapping: &ClaimMapping,
    claims: &Map<String, Value>,
) -> Result<Principal, String> {
    let mapped = mapping.map(claims).map_err(|e| format!("the token {e}"))?;
    let text = |name: &str| claims.get(name).and_then(Value::as_str).map(Arc::from);
    Ok(Principal {
        id: Arc::from(mapped.subject),
        roles: mapped
            .roles
            .into_iter()
            .map(String::into_boxed_str)
            .collect(),
        claims: Arc::new(mapped.attributes),
        mechanism: Arc::clone(id),
        issuer: text("iss"),
        expires_at: unix_time(claims.get("exp")),
        issued_at: unix_time(claims.get("iat")),
        token_id: text("jti"),
        stored: None,
        fetched: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn audiences_are_strings_or_lists() {
        let accepted: Vec<Box<str>> = vec!["api".into()];
        let claims = |v: Value| json!({ "aud": v }).as_object().unwrap().clone();
        assert!(audience_matches(&claims(json!("api")), &accepted));
        assert!(audience_matches(&claims(json!(["x", "api"])), &accepted));
        assert!(!audience_matches(&claims(json!(["x"])), &accepted));
        assert!(!audience_matches(&claims(json!(1)), &accepted));
        assert!(!audience_matches(&Map::new(), &accepted));
    }

    #[test]
    fn urls_are_http_without_credentials() {
        assert!(http_url("jwks_url", "https://idp.example/keys").is_ok());
        for bad in ["ftp://idp/keys", "https://u:p@idp/keys", "not a url"] {
            let err = http_url("jwks_url", bad).unwrap_err().to_string();
            assert!(err.starts_with("`jwks_url`"), "{err}");
            assert!(!err.contains("u:p"), "{err}");
        }
    }

    #[test]
    fn the_deadline_stays_below_the_checks() {
        let check = Duration::from_millis(180);
        assert!(client(Duration::from_millis(150), check).is_ok());
        for bad in [Duration::ZERO, check, Duration::from_secs(1)] {
            assert!(client(bad, check).is_err());
        }
    }

    #[test]
    fn times_are_whole_seconds() {
        assert_eq!(
            unix_time(Some(&json!(1_700_000_000.7))).map(OffsetDateTime::unix_timestamp),
            Some(1_700_000_000)
        );
        assert_eq!(unix_time(Some(&json!("1"))), None);
        assert_eq!(unix_time(None), None);
    }
}
