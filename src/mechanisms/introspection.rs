//! The `oauth2_introspection` authenticator: opaque access tokens (Ory Hydra, any RFC 7662
//! provider), asked about at the provider's introspection endpoint.
//!
//! Answers are cached by the token's hash: an active one until the token's `exp` and at most
//! `cache.max_ttl` (the longest a revocation goes unnoticed), a refusal for `cache.refused_ttl`
//! (a token that is not active never becomes active again). Concurrent requests with the same
//! uncached token share one call. A provider that fails, times out or answers anything but a
//! JSON object is a Communication error, never an allow, and is not cached.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use moka::Expiry;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::authn::AuthnError;
use super::provider::{
    ProviderMetrics, audience_matches, discover, http_url, json_object, principal, unix_time,
};
use super::remote_call::expand_env;
use super::token_source::{TokenSources, check_leeway, check_size, token_key, ttl_until};
use super::{BuildContext, BuildError};
use crate::config::mechanisms::IntrospectionConfig;
use crate::decision::{ErrorKind, StepError};
use crate::login::ClaimMapping;
use crate::outbound::HttpClient;
use crate::request::RequestView;
use crate::subject::Principal;

/// What the provider's answer (and heimdall's checks of it) made of one token.
#[derive(Clone)]
enum Answer {
    Active(Arc<Principal>),
    /// Not active, or failing a check: why.
    Refused(Arc<str>),
}

/// Active answers live until the token's `exp` (and `max_ttl`), refusals `refused_ttl`.
struct AnswerExpiry {
    max_ttl: Duration,
    refused_ttl: Duration,
}

impl Expiry<[u8; 32], Answer> for AnswerExpiry {
    fn expire_after_create(&self, _: &[u8; 32], answer: &Answer, _: Instant) -> Option<Duration> {
        Some(match answer {
            Answer::Active(principal) => ttl_until(principal.expires_at, self.max_ttl),
            Answer::Refused(_) => self.refused_ttl,
        })
    }
}

/// Where the endpoint is.
enum Endpoint {
    Url(Box<str>),
    /// `introspection_endpoint` of the issuer's discovery document, once found.
    Discovery(ArcSwapOption<String>),
}

/// Introspects opaque tokens (RFC 7662).
pub struct IntrospectionAuthenticator {
    id: Arc<str>,
    sources: TokenSources,
    max_token_bytes: usize,
    endpoint: Endpoint,
    issuer: Option<Box<str>>,
    /// The `Authorization` value (client_secret_basic); it holds the secret, so this type has
    /// no `Debug` and the value is never formatted.
    authorization: Option<Box<str>>,
    /// A client id without a secret, sent in the form (a public client).
    public_client_id: Option<Box<str>>,
    token_type: Option<Box<str>>,
    scopes: Box<[Box<str>]>,
    audience: Box<[Box<str>]>,
    leeway: Duration,
    mapping: ClaimMapping,
    cache: Option<moka::future::Cache<[u8; 32], Answer>>,
    http: HttpClient,
    metrics: ProviderMetrics,
}

impl IntrospectionAuthenticator {
    pub(crate) fn new(
        id: &Arc<str>,
        cfg: IntrospectionConfig,
        ctx: &BuildContext<'_>,
    ) -> Result<Self, BuildError> {
        let invalid = |m: String| BuildError::Invalid(m.into());
        if let Some(issuer) = &cfg.issuer {
            http_url("issuer", issuer)?;
        }
        let endpoint = match (&cfg.introspection_url, &cfg.issuer) {
            (Some(url), _) => {
                let url = expand_env(url, &|name| std::env::var(name).ok())
                    .map_err(|e| invalid(format!("introspection_url: {e}")))?;
                Endpoint::Url(http_url("introspection_url", &url)?.as_str().into())
            }
            (None, Some(_)) => Endpoint::Discovery(ArcSwapOption::empty()),
            (None, None) => {
                return Err(invalid(
                    "needs `introspection_url` or `issuer` (endpoint found by OpenID discovery)"
                        .into(),
                ));
            }
        };
        let (authorization, public_client_id) = match (&cfg.client_id, &cfg.client_secret) {
            (Some(id), Some(secret)) => {
                let secret = secret
                    .read()
                    .map_err(|e| invalid(format!("`client_secret`: {e:#}")))?;
                if secret.is_empty() {
                    return Err(invalid("`client_secret` is empty".into()));
                }
                let basic = crate::outbound::client_basic_credentials(id, &secret);
                (Some(basic.into_boxed_str()), None)
            }
            (Some(id), None) => (None, Some(id.as_str().into())),
            (None, Some(_)) => {
                return Err(invalid("`client_secret` needs `client_id`".into()));
            }
            (None, None) => (None, None),
        };
        check_leeway(cfg.leeway)?;
        if cfg.max_token_bytes == 0 {
            return Err(invalid("`max_token_bytes` must be positive".into()));
        }
        if cfg.claims.subject.is_empty() {
            return Err(invalid("`claims.subject` must name a claim".into()));
        }
        if cfg.scopes.iter().chain(&cfg.audience).any(String::is_empty) {
            return Err(invalid(
                "`scopes` and `audience` must not hold empty values".into(),
            ));
        }
        let cache = cfg.cache.enabled.then(|| {
            moka::future::Cache::builder()
                .max_capacity(cfg.cache.max_entries)
                .expire_after(AnswerExpiry {
                    max_ttl: cfg.cache.max_ttl,
                    refused_ttl: cfg.cache.refused_ttl,
                })
                .build()
        });
        Ok(Self {
            id: Arc::clone(id),
            sources: TokenSources::new(id, cfg.sources)?,
            max_token_bytes: cfg.max_token_bytes,
            endpoint,
            issuer: cfg.issuer.map(Into::into),
            authorization,
            public_client_id,
            token_type: cfg.token_type.map(Into::into),
            scopes: cfg.scopes.into_iter().map(Into::into).collect(),
            audience: cfg.audience.into_iter().map(Into::into).collect(),
            leeway: cfg.leeway,
            mapping: cfg.claims,
            cache,
            http: super::provider::client(cfg.timeout, ctx.check_timeout)?,
            metrics: ctx.provider_metrics.clone(),
        })
    }

    fn fail(&self, kind: ErrorKind, message: impl Into<String>) -> AuthnError {
        AuthnError::Failed(StepError::new(kind, &self.id, message))
    }

    /// The request's token, checked for size: the part without I/O.
    pub(crate) fn find_token<'a>(&self, req: &RequestView<'a>) -> Result<&'a str, AuthnError> {
        let token = self.sources.find(req)?;
        check_size(&self.id, token, self.max_token_bytes)?;
        Ok(token)
    }

    /// The principal of an active token, from the cache or the provider.
    pub(crate) async fn authenticate(&self, token: &str) -> Result<Arc<Principal>, AuthnError> {
        let answer = match &self.cache {
            Some(cache) => cache
                .try_get_with(token_key(token), self.introspect(token))
                .await
                .map_err(|e| self.fail(ErrorKind::Communication, e.as_str()))?,
            None => self
                .introspect(token)
                .await
                .map_err(|e| self.fail(ErrorKind::Communication, e))?,
        };
        match answer {
            Answer::Active(principal)
                if principal
                    .expires_at
                    .is_none_or(|exp| OffsetDateTime::now_utc() - self.leeway < exp) =>
            {
                Ok(principal)
            }
            Answer::Active(_) => Err(self.fail(ErrorKind::Authentication, "the token has expired")),
            Answer::Refused(why) => Err(self.fail(ErrorKind::Authentication, &*why)),
        }
    }

    /// One call to the endpoint; `Err` is the provider failing (not cached).
    async fn introspect(&self, token: &str) -> Result<Answer, String> {
        let result = self.call(token).await;
        let outcome = match &result {
            Ok(Ok(_)) => "active",
            Ok(Err(_)) => "inactive",
            Err(_) => "error",
        };
        self.metrics.introspection(&self.id, outcome);
        let answer = result?;
        Ok(match answer.and_then(|claims| self.check(&claims)) {
            Ok(principal) => Answer::Active(Arc::new(principal)),
            Err(why) => Answer::Refused(why.into()),
        })
    }

    /// The answer's claims when it says `active: true`, `Ok(Err(_))` when it does not.
    async fn call(&self, token: &str) -> Result<Result<Map<String, Value>, String>, String> {
        let endpoint = self.endpoint().await?;
        let body = {
            // Not held across an await: the serializer is not `Sync`.
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("token", token);
            form.append_pair("token_type_hint", "access_token");
            if let Some(client_id) = &self.public_client_id {
                form.append_pair("client_id", client_id);
            }
            form.finish().into_bytes()
        };
        let mut request = http::Request::post(&*endpoint)
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        if let Some(authorization) = &self.authorization {
            request = request.header(http::header::AUTHORIZATION, &**authorization);
        }
        let request = request
            .body(body)
            .map_err(|e| format!("introspection request: {e}"))?;
        let response = self.http.send(request).await;
        let response = match response {
            Ok(response) => response,
            Err(e) => {
                self.forget_endpoint();
                return Err(format!("the introspection endpoint: {e}"));
            }
        };
        let claims = json_object("the introspection endpoint", &response)?;
        // RFC 7662 §2.2: `active` is a boolean; anything but `true` is not active.
        match claims.get("active") {
            Some(Value::Bool(true)) => Ok(Ok(claims)),
            Some(Value::Bool(false)) => Ok(Err("the token is not active".into())),
            _ => Err("the introspection endpoint answered without a boolean `active`".into()),
        }
    }

    async fn endpoint(&self) -> Result<Arc<String>, String> {
        match &self.endpoint {
            Endpoint::Url(url) => Ok(Arc::new(url.to_string())),
            Endpoint::Discovery(found) => {
                if let Some(url) = found.load_full() {
                    return Ok(url);
                }
                let issuer = self.issuer.as_deref().unwrap_or_default();
                let url = Arc::new(discover(&self.http, issuer, "introspection_endpoint").await?);
                found.store(Some(Arc::clone(&url)));
                Ok(url)
            }
        }
    }

    /// A discovered endpoint that does not answer is looked up again next time.
    fn forget_endpoint(&self) {
        if let Endpoint::Discovery(found) = &self.endpoint {
            found.store(None);
        }
    }

    /// heimdall's checks of an active answer, then the principal.
    fn check(&self, claims: &Map<String, Value>) -> Result<Principal, String> {
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        if let Some(wanted) = &self.token_type
            && ![text("token_type"), text("token_use")]
                .into_iter()
                .flatten()
                .any(|t| t.eq_ignore_ascii_case(wanted))
        {
            return Err(format!("the token is not of type `{wanted}`"));
        }
        let granted = text("scope").unwrap_or_default();
        if let Some(missing) = self
            .scopes
            .iter()
            .find(|s| !granted.split(' ').any(|g| g == &***s))
        {
            return Err(format!("the token lacks the scope `{missing}`"));
        }
        if !self.audience.is_empty() && !audience_matches(claims, &self.audience) {
            return Err("`aud` names none of the accepted audiences".into());
        }
        if let (Some(issuer), Some(iss)) = (&self.issuer, claims.get("iss"))
            && iss.as_str() != Some(issuer)
        {
            return Err("`iss` is not the configured issuer".into());
        }
        let now = OffsetDateTime::now_utc();
        if unix_time(claims.get("exp")).is_some_and(|exp| exp <= now - self.leeway) {
            return Err("the token has expired (`exp`)".into());
        }
        if unix_time(claims.get("nbf")).is_some_and(|nbf| nbf > now + self.leeway) {
            return Err("the token is not valid yet (`nbf`)".into());
        }
        principal(&self.id, &self.mapping, claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn authenticator(yaml: &str) -> Result<IntrospectionAuthenticator, BuildError> {
        let config: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).unwrap();
        let crate::config::mechanisms::AuthenticatorSpec::OAuth2Introspection(cfg) =
            crate::config::mechanisms::parse("oauth2_introspection", &config).unwrap()
        else {
            unreachable!()
        };
        let keys = Arc::new(crate::tokens::Keyring::default());
        crate::mechanisms::with_test_context(&keys, &Default::default(), |ctx| {
            IntrospectionAuthenticator::new(&Arc::from("opaque"), cfg, ctx)
        })
    }

    #[test]
    fn refused_at_load_with_the_field_named() {
        for (yaml, needle) in [
            ("{}", "needs `introspection_url` or `issuer`"),
            (
                "{introspection_url: 'http://h/i', client_secret: {env: X}}",
                "`client_secret` needs `client_id`",
            ),
            (
                "{introspection_url: 'http://h/i', client_id: c, client_secret: {env: HEIMDALL_TEST_UNSET_SECRET}}",
                "`client_secret`: environment variable `HEIMDALL_TEST_UNSET_SECRET` is not set",
            ),
            (
                "{introspection_url: 'http://h/i', timeout: 1s}",
                "below server.check_timeout",
            ),
            (
                "{introspection_url: 'http://h/i', sources: []}",
                "`sources`",
            ),
            (
                "{introspection_url: 'ftp://h/i'}",
                "`introspection_url` must be an http",
            ),
        ] {
            let err = authenticator(yaml).err().unwrap().to_string();
            assert!(err.contains(needle), "{yaml}: {err}");
        }
    }

    #[test]
    fn an_active_answer_must_pass_every_check() {
        let a = authenticator(
            "{issuer: 'http://idp', token_type: access_token, scopes: [read, write], audience: [api]}",
        )
        .unwrap();
        let good = json!({"active": true, "sub": "alice", "roles": "user editor",
            "scope": "openid read write", "aud": ["api"], "iss": "http://idp",
            "token_use": "access_token", "exp": OffsetDateTime::now_utc().unix_timestamp() + 60});
        let check = |patch: Value| {
            let mut claims = good.as_object().unwrap().clone();
            claims.extend(patch.as_object().unwrap().clone());
            a.check(&claims)
        };
        let principal = check(json!({})).unwrap();
        assert_eq!(&*principal.id, "alice");
        assert_eq!(principal.roles.len(), 2);
        for (patch, needle) in [
            (json!({"scope": "read"}), "lacks the scope `write`"),
            (json!({"aud": "other"}), "`aud` names none"),
            (json!({"iss": "http://evil"}), "`iss` is not"),
            (json!({"token_use": "refresh_token"}), "not of type"),
            (json!({"exp": 1}), "expired"),
            (json!({"sub": null}), "no `sub` claim"),
        ] {
            let err = check(patch.clone()).unwrap_err();
            assert!(err.contains(needle), "{patch}: {err}");
        }
    }
}
