//! Where a bearer-token authenticator finds its token (a header with or without an auth scheme,
//! or a cookie), and the verified-token cache they share: built once from the `sources` and
//! `cache` settings, read per request without allocating.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use super::BuildError;
use super::authn::AuthnError;
use crate::config::mechanisms::{CacheConfig, SourceSpec};
use crate::decision::{ErrorKind, StepError};
use crate::request::{HeaderLookup, RequestView};
use crate::subject::Principal;
use crate::ttl_cache::TtlCache;

#[derive(Debug, Clone)]
enum TokenSource {
    /// A header, with an auth scheme (`Bearer`) or the bare token.
    Header {
        name: Box<str>,
        scheme: Option<Box<str>>,
    },
    Cookie(Box<str>),
}

/// The configured token sources of one authenticator, in order.
#[derive(Debug, Clone)]
pub(crate) struct TokenSources {
    id: Arc<str>,
    sources: Box<[TokenSource]>,
}

impl TokenSources {
    /// Checks and compiles `sources`; `id` names the mechanism in the errors of
    /// [`TokenSources::find`].
    pub(crate) fn new(id: &Arc<str>, sources: Vec<SourceSpec>) -> Result<Self, BuildError> {
        if sources.is_empty() {
            return Err(BuildError::Invalid(
                "`sources` must name at least one header or cookie".into(),
            ));
        }
        let sources = sources
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
        Ok(Self {
            id: Arc::clone(id),
            sources,
        })
    }

    fn fail(&self, message: String) -> AuthnError {
        AuthnError::Failed(StepError::new(ErrorKind::Authentication, &self.id, message))
    }

    /// The token of the first source that has one; `NotResponsible` when none has.
    pub(crate) fn find<'a>(&self, req: &RequestView<'a>) -> Result<&'a str, AuthnError> {
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
}

/// A token's cache key: its BLAKE3 hash (the token itself is never kept).
pub(crate) fn token_key(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

/// The refusal of a token longer than `max` bytes, checked before any parsing or hashing so an
/// oversized token costs nothing.
pub(crate) fn check_size(id: &Arc<str>, token: &str, max: usize) -> Result<(), AuthnError> {
    if token.len() > max {
        return Err(AuthnError::Failed(StepError::new(
            ErrorKind::Authentication,
            id,
            format!("token is {} bytes, over the limit of {max}", token.len()),
        )));
    }
    Ok(())
}

/// The longest clock-skew allowance a token authenticator accepts.
pub(crate) const MAX_LEEWAY: Duration = Duration::from_secs(600);

/// Refuses a `leeway` over [`MAX_LEEWAY`]: clock skew is seconds, at most minutes; a huge value
/// would overflow the time arithmetic of every Check (a panic per request), and a long one
/// accepts expired tokens.
pub(crate) fn check_leeway(leeway: Duration) -> Result<(), BuildError> {
    if leeway > MAX_LEEWAY {
        return Err(BuildError::Invalid(
            format!(
                "`leeway` {} is longer than the {} allowed",
                humantime::format_duration(leeway),
                humantime::format_duration(MAX_LEEWAY)
            )
            .into(),
        ));
    }
    Ok(())
}

/// The earlier of `max_ttl` and the time left until `expires_at` (zero once it passed).
pub(crate) fn ttl_until(expires_at: Option<OffsetDateTime>, max_ttl: Duration) -> Duration {
    match expires_at {
        Some(exp) => Duration::try_from(exp - OffsetDateTime::now_utc())
            .unwrap_or(Duration::ZERO)
            .min(max_ttl),
        None => max_ttl,
    }
}

/// Verified tokens by hash: a hit skips verification; an entry never outlives the token's
/// `exp` nor `max_ttl`.
pub(crate) struct VerifiedCache {
    cache: TtlCache<[u8; 32], Arc<Principal>>,
    max_ttl: Duration,
}

impl VerifiedCache {
    /// The cache `config` describes, `None` when it is turned off.
    pub(crate) fn new(config: &CacheConfig) -> Option<Self> {
        config.enabled.then(|| Self {
            cache: TtlCache::new(config.max_entries),
            max_ttl: config.max_ttl,
        })
    }

    /// The principal of a token verified before and not expired (with `leeway`) by now.
    pub(crate) fn get(&self, key: &[u8; 32], leeway: Duration) -> Option<Arc<Principal>> {
        let principal = self.cache.get(key)?;
        // The entry never outlives `exp`, but the clock is checked anyway: cheap and exact.
        if principal
            .expires_at
            .is_none_or(|exp| OffsetDateTime::now_utc() - leeway < exp)
        {
            return Some(principal);
        }
        self.cache.remove(key);
        None
    }

    pub(crate) fn insert(&self, key: [u8; 32], principal: Arc<Principal>) {
        let ttl = ttl_until(principal.expires_at, self.max_ttl);
        self.cache.insert(key, principal, ttl);
    }
}
