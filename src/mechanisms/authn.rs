//! Authenticators: turn a credential of the request into a verified [`Principal`].
//!
//! An authenticator that finds no credential of its kind answers [`AuthnError::NotResponsible`]
//! so the next one of the chain is tried; a present but invalid credential is a
//! [`AuthnError::Failed`] authentication error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use serde_yaml_ng::Value;
use time::OffsetDateTime;

use super::{BuildContext, BuildError};
use crate::config::mechanisms::{AuthenticatorSpec, PasetoConfig, SourceSpec, parse};
use crate::decision::{ErrorKind, StepError};
use crate::request::{HeaderLookup, RequestView};
use crate::subject::Principal;
use crate::tokens::{Accept, Keyring, Validation};

/// Why an authenticator produced no principal.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthnError {
    /// No credential of this authenticator's kind: try the next one.
    NotResponsible,
    /// A credential was there and is not acceptable.
    Failed(StepError),
}

/// The built-in authenticators.
pub enum Authenticator {
    Paseto(PasetoAuthenticator),
    Anonymous(AnonymousAuthenticator),
    /// Refuses every request: the explicit end of a chain.
    Unauthorized(Arc<str>),
}

impl Authenticator {
    /// Reads `type` and `config` and builds (the API port's authenticator is built this way).
    pub(crate) fn build(
        id: &Arc<str>,
        type_name: &str,
        config: &Value,
        ctx: &BuildContext<'_>,
    ) -> Result<Self, BuildError> {
        Self::from_spec(id, parse(type_name, config)?, ctx)
    }

    /// Builds the authenticator a spec describes.
    pub fn from_spec(
        id: &Arc<str>,
        spec: AuthenticatorSpec,
        ctx: &BuildContext<'_>,
    ) -> Result<Self, BuildError> {
        Ok(match spec {
            AuthenticatorSpec::Paseto(cfg) => Self::Paseto(PasetoAuthenticator::new(id, cfg, ctx)?),
            AuthenticatorSpec::Anonymous(cfg) => Self::Anonymous(AnonymousAuthenticator {
                principal: Arc::new(Principal::new(
                    &cfg.subject,
                    cfg.roles,
                    serde_json::Map::new(),
                    id,
                )),
            }),
            AuthenticatorSpec::Unauthorized => Self::Unauthorized(Arc::clone(id)),
        })
    }

    /// Authenticates the request.
    pub async fn authenticate(&self, req: &RequestView<'_>) -> Result<Arc<Principal>, AuthnError> {
        match self {
            Self::Paseto(a) => {
                let principal = a.authenticate(req)?;
                if a.revocations.is_none() {
                    return Ok(principal);
                }
                // Boxed: the store lookup's state would otherwise make every Check's future
                // (allocated and moved per request) as large as the rarely taken I/O path.
                Box::pin(a.check_revocation(principal)).await
            }
            Self::Anonymous(a) => Ok(Arc::clone(&a.principal)),
            Self::Unauthorized(id) => Err(AuthnError::Failed(StepError::new(
                ErrorKind::Authentication,
                id,
                "request refused by `unauthorized`",
            ))),
        }
    }

    /// Whether this authenticator accepts requests without any credential (flagged at load).
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Self::Anonymous(_))
    }
}

// === anonymous ===

/// Accepts every request as a fixed principal.
pub struct AnonymousAuthenticator {
    principal: Arc<Principal>,
}

// === paseto ===

#[derive(Debug, Clone)]
enum TokenSource {
    /// A header, with an auth scheme (`Bearer`) or the bare token.
    Header {
        name: Box<str>,
        scheme: Option<Box<str>>,
    },
    Cookie(Box<str>),
}

/// A cached principal lives until the earlier of the configured TTL and the token's expiry.
struct UntilExpiry {
    max_ttl: Duration,
}

impl Expiry<[u8; 32], Arc<Principal>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Principal>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let ttl = match value.expires_at {
            Some(exp) => {
                let left = exp - OffsetDateTime::now_utc();
                Duration::try_from(left)
                    .unwrap_or(Duration::ZERO)
                    .min(self.max_ttl)
            }
            None => self.max_ttl,
        };
        Some(ttl)
    }
}

/// The longest clock-skew allowance a `paseto` authenticator accepts.
const MAX_LEEWAY: Duration = Duration::from_secs(600);

/// Verifies PASETO v4 tokens with the process key ring.
pub struct PasetoAuthenticator {
    id: Arc<str>,
    keys: Arc<Keyring>,
    sources: Box<[TokenSource]>,
    accept: Accept,
    validation: Validation,
    max_token_bytes: usize,
    /// Verified tokens by BLAKE3 hash of the token: a hit skips the signature check.
    cache: Option<moka::sync::Cache<[u8; 32], Arc<Principal>>>,
    /// Where revocations are read, when they are checked.
    revocations: Option<Arc<crate::attributes::PrincipalStore>>,
}

impl PasetoAuthenticator {
    fn new(id: &Arc<str>, cfg: PasetoConfig, ctx: &BuildContext<'_>) -> Result<Self, BuildError> {
        if cfg.sources.is_empty() {
            return Err(BuildError::Invalid(
                "`sources` must name at least one header or cookie".into(),
            ));
        }
        let sources = cfg
            .sources
            .into_iter()
            .map(|s| match s {
                SourceSpec::Header { header, scheme } => {
                    http::HeaderName::try_from(header.as_str())
                        .map_err(|_| BuildError::HeaderName(header.as_str().into()))?;
                    Ok(TokenSource::Header {
                        name: header.to_ascii_lowercase().into(),
                        scheme: scheme.map(Into::into),
                    })
                }
                SourceSpec::Cookie { cookie } => Ok(TokenSource::Cookie(cookie.into())),
            })
            .collect::<Result<Box<[_]>, BuildError>>()?;
        let purposes = match cfg.accept {
            Accept::Any => vec![
                crate::tokens::Purpose::Local,
                crate::tokens::Purpose::Public,
            ],
            Accept::Local => vec![crate::tokens::Purpose::Local],
            Accept::Public => vec![crate::tokens::Purpose::Public],
        };
        if !purposes.iter().any(|p| ctx.keys.can_verify(*p)) {
            return Err(BuildError::NoVerifyingKey);
        }
        if cfg.max_token_bytes == 0 {
            return Err(BuildError::Invalid(
                "`max_token_bytes` must be positive".into(),
            ));
        }
        // Clock skew is seconds, at most minutes; a huge value would overflow the time
        // arithmetic of every Check (a panic per request), and a long one accepts expired tokens.
        if cfg.leeway > MAX_LEEWAY {
            return Err(BuildError::Invalid(
                format!(
                    "`leeway` {} is longer than the {} allowed",
                    humantime::format_duration(cfg.leeway),
                    humantime::format_duration(MAX_LEEWAY)
                )
                .into(),
            ));
        }
        let issuers = cfg
            .issuers
            .unwrap_or_else(|| vec![ctx.tokens.issuer.clone()]);
        let validation = Validation {
            issuers: issuers.into(),
            audience: cfg.audience.or_else(|| ctx.tokens.audience.clone()),
            leeway: cfg.leeway,
            required: cfg.required_claims.into(),
            allow_non_expiring: cfg.allow_non_expiring,
        };
        let cache = cfg.cache.enabled.then(|| {
            moka::sync::Cache::builder()
                .max_capacity(cfg.cache.max_entries)
                .expire_after(UntilExpiry {
                    max_ttl: cfg.cache.max_ttl,
                })
                .build()
        });
        Ok(Self {
            id: Arc::clone(id),
            keys: Arc::clone(ctx.keys),
            sources,
            accept: cfg.accept,
            validation,
            max_token_bytes: cfg.max_token_bytes,
            cache,
            revocations: ctx.attributes.filter(|_| cfg.check_revocation).cloned(),
        })
    }

    /// Checked on every request, after the token cache: a revocation must not wait for a cached
    /// token to expire.
    async fn check_revocation(
        &self,
        principal: Arc<Principal>,
    ) -> Result<Arc<Principal>, AuthnError> {
        let Some(store) = &self.revocations else {
            return Ok(principal);
        };
        match store.get(&principal.id).await {
            Ok(snapshot) => match snapshot.record {
                Some(record) if record.revokes(principal.issued_at) => {
                    store.metrics().revoked_token();
                    Err(self.fail("token revoked: issued before the principal's `not_before`"))
                }
                _ => Ok(principal),
            },
            Err(e) => Err(AuthnError::Failed(StepError::new(
                ErrorKind::Communication,
                &self.id,
                format!("revocation state unavailable: {e}"),
            ))),
        }
    }

    fn fail(&self, message: impl Into<String>) -> AuthnError {
        AuthnError::Failed(StepError::new(ErrorKind::Authentication, &self.id, message))
    }

    /// The token of the first source that has one.
    fn find_token<'a>(&self, req: &RequestView<'a>) -> Result<&'a str, AuthnError> {
        for source in &self.sources {
            match source {
                TokenSource::Header { name, scheme } => {
                    let value = match req.headers.get_unique(name) {
                        HeaderLookup::Absent => continue,
                        HeaderLookup::Ambiguous => {
                            return Err(self.fail(format!("header `{name}` sent more than once")));
                        }
                        HeaderLookup::One(v) => v.trim(),
                    };
                    let token = match scheme {
                        None => value,
                        Some(scheme) => match value.split_once(' ') {
                            // Auth schemes are case-insensitive (RFC 9110 §11.1).
                            Some((s, rest)) if s.eq_ignore_ascii_case(scheme) => rest.trim(),
                            // Another scheme (Basic, …) is another authenticator's business.
                            Some(_) => continue,
                            None if value.eq_ignore_ascii_case(scheme) => {
                                return Err(self.fail(format!(
                                    "header `{name}` has the `{scheme}` scheme but no token"
                                )));
                            }
                            None => {
                                return Err(self.fail(format!(
                                    "header `{name}` does not use the `{scheme}` scheme"
                                )));
                            }
                        },
                    };
                    if token.is_empty() {
                        return Err(self.fail(format!("header `{name}` carries an empty token")));
                    }
                    return Ok(token);
                }
                TokenSource::Cookie(name) => {
                    if let Some(token) = req.cookie(name).filter(|t| !t.is_empty()) {
                        return Ok(token);
                    }
                }
            }
        }
        Err(AuthnError::NotResponsible)
    }

    fn authenticate(&self, req: &RequestView<'_>) -> Result<Arc<Principal>, AuthnError> {
        let token = self.find_token(req)?;
        // Checked before hashing too, so an oversized token costs nothing.
        if token.len() > self.max_token_bytes {
            return Err(self.fail(format!(
                "token is {} bytes, over the limit of {}",
                token.len(),
                self.max_token_bytes
            )));
        }
        let now = OffsetDateTime::now_utc();
        let key = self
            .cache
            .as_ref()
            .map(|_| *blake3::hash(token.as_bytes()).as_bytes());
        if let (Some(cache), Some(key)) = (&self.cache, &key)
            && let Some(principal) = cache.get(key)
        {
            // The entry never outlives `exp`, but the clock is checked anyway: cheap and exact.
            if principal
                .expires_at
                .is_none_or(|exp| now - self.validation.leeway < exp)
            {
                return Ok(principal);
            }
            cache.invalidate(key);
        }
        let claims = self
            .keys
            .open(token, self.accept, self.max_token_bytes)
            .map_err(|e| self.fail(e.to_string()))?;
        let times = self
            .validation
            .check(&claims, now)
            .map_err(|e| self.fail(e.to_string()))?;
        let principal = Arc::new(Principal {
            id: Arc::from(claims.sub.as_deref().unwrap_or_default()),
            roles: claims
                .roles
                .into_iter()
                .map(String::into_boxed_str)
                .collect(),
            claims: Arc::new(claims.attr),
            mechanism: Arc::clone(&self.id),
            issuer: claims.iss.map(Arc::from),
            expires_at: times.expires_at,
            issued_at: times.issued_at,
            token_id: claims.jti.map(Arc::from),
            stored: None,
            fetched: None,
        });
        if let (Some(cache), Some(key)) = (&self.cache, key) {
            cache.insert(key, Arc::clone(&principal));
        }
        Ok(principal)
    }
}
