//! Token claims: what heimdall reads and writes (`Claims`, `Audience`), and `Validation`, the
//! claim rules of one authenticator (times with leeway, issuer, audience, required claims).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{TokenError, shown};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Audience::is_empty")]
    pub aud: Audience,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub attr: serde_json::Map<String, serde_json::Value>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// `aud` as PASETO writes it (a string) or as a list.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Audience {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn is_empty(&self) -> bool {
        matches!(self, Self::None)
    }

    fn contains(&self, wanted: &str) -> bool {
        match self {
            Self::None => false,
            Self::One(a) => a == wanted,
            Self::Many(list) => list.iter().any(|a| a == wanted),
        }
    }
}

/// The longest lifetime of a minted token. `tokens.ttl` and `token mint --ttl` are refused
/// above it; [`Claims::new`] clamps to it so no lifetime can overflow the date arithmetic.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

impl Claims {
    /// Claims for a new token: `iat` and `nbf` now, `exp` after `ttl` (at most [`MAX_TTL`]), a
    /// random `jti`.
    pub fn new(subject: &str, issuer: &str, ttl: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        let exp = now + ttl.min(MAX_TTL);
        Self {
            sub: Some(subject.to_owned()),
            iss: Some(issuer.to_owned()),
            iat: format_time(now),
            nbf: format_time(now),
            exp: format_time(exp),
            jti: Some(random_id()),
            ..Self::default()
        }
    }

    /// Whether a claim is present, by name.
    pub fn has(&self, name: &str) -> bool {
        match name {
            "sub" => self.sub.is_some(),
            "iss" => self.iss.is_some(),
            "aud" => !self.aud.is_empty(),
            "exp" => self.exp.is_some(),
            "nbf" => self.nbf.is_some(),
            "iat" => self.iat.is_some(),
            "jti" => self.jti.is_some(),
            "roles" => !self.roles.is_empty(),
            "attr" => !self.attr.is_empty(),
            other => self.extra.contains_key(other),
        }
    }
}

fn format_time(t: OffsetDateTime) -> Option<String> {
    t.replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
}

/// A random token id (`jti`): 144 bits, base64url.
pub fn random_id() -> String {
    use base64::Engine as _;
    let bytes: [u8; 18] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn parse_time(
    value: Option<&str>,
    name: &'static str,
) -> Result<Option<OffsetDateTime>, TokenError> {
    value
        .map(|v| OffsetDateTime::parse(v, &Rfc3339).map_err(|_| TokenError::BadTime(name)))
        .transpose()
}

/// Claim rules of one authenticator.
#[derive(Debug, Clone)]
pub struct Validation {
    pub issuers: Box<[String]>,
    pub audience: Option<String>,
    pub leeway: Duration,
    pub required: Box<[String]>,
    pub allow_non_expiring: bool,
}

/// The times of a validated token.
#[derive(Debug, Clone, Copy)]
pub struct ValidTimes {
    pub expires_at: Option<OffsetDateTime>,
    pub issued_at: Option<OffsetDateTime>,
}

impl Validation {
    /// Checks `sub`, times (with leeway), issuer, audience and required claims at `now`.
    pub fn check(&self, claims: &Claims, now: OffsetDateTime) -> Result<ValidTimes, TokenError> {
        if claims.sub.as_deref().is_none_or(str::is_empty) {
            return Err(TokenError::MissingClaim("sub".into()));
        }
        // Checked: `OffsetDateTime ± Duration` panics out of range. Configured leeways are
        // bounded at build time; a `Validation` built otherwise refuses instead of panicking.
        let leeway =
            time::Duration::try_from(self.leeway).map_err(|_| TokenError::LeewayOutOfRange)?;
        let earliest = now
            .checked_sub(leeway)
            .ok_or(TokenError::LeewayOutOfRange)?;
        let latest = now
            .checked_add(leeway)
            .ok_or(TokenError::LeewayOutOfRange)?;
        let exp = parse_time(claims.exp.as_deref(), "exp")?;
        let nbf = parse_time(claims.nbf.as_deref(), "nbf")?;
        let iat = parse_time(claims.iat.as_deref(), "iat")?;
        match exp {
            Some(exp) if earliest >= exp => {
                return Err(TokenError::Expired(shown(
                    claims.exp.as_deref().unwrap_or_default(),
                )));
            }
            None if !self.allow_non_expiring => return Err(TokenError::NoExpiry),
            _ => {}
        }
        if let Some(nbf) = nbf
            && latest < nbf
        {
            return Err(TokenError::NotYetValid(shown(
                claims.nbf.as_deref().unwrap_or_default(),
            )));
        }
        if let Some(iat) = iat
            && latest < iat
        {
            return Err(TokenError::IssuedInFuture(shown(
                claims.iat.as_deref().unwrap_or_default(),
            )));
        }
        if !self.issuers.is_empty() {
            let iss = claims
                .iss
                .as_deref()
                .ok_or_else(|| TokenError::MissingClaim("iss".into()))?;
            if !self.issuers.iter().any(|i| i == iss) {
                return Err(TokenError::WrongIssuer(shown(iss)));
            }
        }
        if let Some(aud) = &self.audience
            && !claims.aud.contains(aud)
        {
            return Err(TokenError::WrongAudience(aud.clone()));
        }
        for name in &self.required {
            if !claims.has(name) {
                return Err(TokenError::MissingClaim(name.as_str().into()));
            }
        }
        Ok(ValidTimes {
            expires_at: exp,
            issued_at: iat,
        })
    }
}
