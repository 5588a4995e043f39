//! Authenticators: turn a credential of the request into a verified [`Principal`].
//!
//! An authenticator that finds no credential of its kind answers [`AuthnError::NotResponsible`]
//! so the next one of the chain is tried; a present but invalid credential is a
//! [`AuthnError::Failed`] authentication error.

use std::sync::Arc;

use serde_yaml_ng::Value;
use time::OffsetDateTime;

use super::token_source::{TokenSources, VerifiedCache, check_leeway, check_size, token_key};
use super::{BuildContext, BuildError};
use crate::config::mechanisms::{AuthenticatorSpec, PasetoConfig, parse};
use crate::decision::{ErrorKind, StepError};
use crate::request::RequestView;
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
    Jwt(super::jwt::JwtAuthenticator),
    OAuth2Introspection(super::introspection::IntrospectionAuthenticator),
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
            AuthenticatorSpec::Jwt(cfg) => {
                Self::Jwt(super::jwt::JwtAuthenticator::new(id, cfg, ctx)?)
            }
            AuthenticatorSpec::OAuth2Introspection(cfg) => Self::OAuth2Introspection(
                super::introspection::IntrospectionAuthenticator::new(id, cfg, ctx)?,
            ),
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
            // The key fetch and the introspection call are boxed, as the revocation lookup.
            Self::Jwt(a) => match a.authenticate_cached(req)? {
                super::jwt::Verified::Principal(principal) => Ok(principal),
                super::jwt::Verified::NeedsKeys(token) => {
                    Box::pin(a.authenticate_fetching(token)).await
                }
            },
            Self::OAuth2Introspection(a) => {
                let token = a.find_token(req)?;
                Box::pin(a.authenticate(token)).await
            }
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

/// Verifies PASETO v4 tokens with the process key ring.
pub struct PasetoAuthenticator {
    id: Arc<str>,
    keys: Arc<Keyring>,
    sources: TokenSources,
    accept: Accept,
    validation: Validation,
    max_token_bytes: usize,
    /// Verified tokens by BLAKE3 hash of the token: a hit skips the signature check.
    cache: Option<VerifiedCache>,
    /// Where revocations are read, when they are checked.
    revocations: Option<Arc<crate::attributes::PrincipalStore>>,
}

impl PasetoAuthenticator {
    fn new(id: &Arc<str>, cfg: PasetoConfig, ctx: &BuildContext<'_>) -> Result<Self, BuildError> {
        let sources = TokenSources::new(id, cfg.sources)?;
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
        check_leeway(cfg.leeway)?;
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
        let cache = VerifiedCache::new(&cfg.cache);
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

    fn authenticate(&self, req: &RequestView<'_>) -> Result<Arc<Principal>, AuthnError> {
        let token = self.sources.find(req)?;
        check_size(&self.id, token, self.max_token_bytes)?;
        let now = OffsetDateTime::now_utc();
        let key = self.cache.as_ref().map(|_| token_key(token));
        if let (Some(cache), Some(key)) = (&self.cache, &key)
            && let Some(principal) = cache.get(key, self.validation.leeway)
        {
            return Ok(principal);
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
