//! Specs of the authenticators that accept an identity provider's own access tokens: `jwt`
//! (signed JWTs verified with the provider's JWKS) and `oauth2_introspection` (opaque tokens
//! asked about at the provider's RFC 7662 endpoint).

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{CacheConfig, SourceSpec};
use crate::attributes::Secret;
use crate::login::ClaimMapping;

fn bearer_sources() -> Vec<SourceSpec> {
    vec![SourceSpec::Header {
        header: "authorization".into(),
        scheme: Some("Bearer".into()),
    }]
}

/// `jwt`: whose tokens are accepted, where their keys come from and how claims are checked.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// The provider's issuer URL. Every token's `iss` must equal it; without `jwks_url` the keys
    /// are found by discovery (`<issuer>/.well-known/openid-configuration`, its `jwks_uri`).
    pub issuer: Option<String>,
    /// The JWKS URL, when discovery is not wanted.
    pub jwks_url: Option<String>,
    /// Accepted `aud` values; a token must name at least one. Required: a token minted for
    /// another API must not be accepted here.
    pub audience: Vec<String>,
    /// Accepted signature algorithms (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384,
    /// EdDSA). `none` and HMAC (HS*) are refused: keys come from a public JWKS.
    pub algorithms: Vec<String>,
    /// Where the token is read from, in order; the first source present is used.
    pub sources: Vec<SourceSpec>,
    /// Clock-skew allowance for `exp` and `nbf`; at most 10m.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub leeway: Duration,
    /// Claims every token must carry, besides `iss`, `aud`, `exp` and the subject claim.
    pub required_claims: Vec<String>,
    /// Longest token accepted, in bytes (checked before any parsing).
    pub max_token_bytes: usize,
    /// How claims become the principal (subject, roles, attributes).
    pub claims: ClaimMapping,
    /// The cache of verified tokens.
    pub cache: CacheConfig,
    /// Deadline of one key fetch (discovery and JWKS together); below `server.check_timeout`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// How long fetched keys are used before they are fetched again.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub jwks_ttl: Duration,
    /// The shortest time between two fetches: a token with an unknown `kid` fetches the keys at
    /// most this often, however many such tokens arrive.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub min_refresh_interval: Duration,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            issuer: None,
            jwks_url: None,
            audience: Vec::new(),
            algorithms: [
                "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
            ]
            .map(String::from)
            .to_vec(),
            sources: bearer_sources(),
            leeway: Duration::from_secs(30),
            required_claims: Vec::new(),
            max_token_bytes: 8192,
            claims: ClaimMapping::default(),
            cache: CacheConfig::default(),
            timeout: Duration::from_millis(150),
            jwks_ttl: Duration::from_secs(600),
            min_refresh_interval: Duration::from_secs(10),
        }
    }
}

/// `oauth2_introspection`: where tokens are introspected and what an active token must show.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct IntrospectionConfig {
    /// The provider's issuer URL: without `introspection_url`, discovery finds the endpoint
    /// (`introspection_endpoint`); an answer's `iss`, when present, must equal it.
    pub issuer: Option<String>,
    /// The introspection endpoint. `${NAME}` is read from the environment at load, as in the
    /// service contract's `${HYDRA_ADMIN_URL}/admin/oauth2/introspect` (Ory Hydra).
    pub introspection_url: Option<String>,
    /// heimdall's client id at the endpoint (`client_secret_basic`); absent: no client
    /// authentication.
    pub client_id: Option<String>,
    /// The client secret as `{env: NAME}` or `{file: PATH}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<Secret>,
    /// The `token_type` (RFC 7662) or `token_use` (Ory Hydra) an answer must carry, e.g.
    /// `access_token` or `Bearer`.
    pub token_type: Option<String>,
    /// Scopes an active token must all have.
    pub scopes: Vec<String>,
    /// Accepted `aud` values; when set, the answer's `aud` must name at least one.
    pub audience: Vec<String>,
    /// Where the token is read from, in order; the first source present is used.
    pub sources: Vec<SourceSpec>,
    /// Clock-skew allowance for the answer's `exp` and `nbf`; at most 10m.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub leeway: Duration,
    /// Longest token accepted, in bytes (checked before anything is sent).
    pub max_token_bytes: usize,
    /// How the answer's claims become the principal (subject, roles, attributes).
    pub claims: ClaimMapping,
    /// The cache of answers.
    pub cache: IntrospectionCacheConfig,
    /// Deadline of one call (discovery or introspection); below `server.check_timeout`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
}

impl Default for IntrospectionConfig {
    fn default() -> Self {
        Self {
            issuer: None,
            introspection_url: None,
            client_id: None,
            client_secret: None,
            token_type: None,
            scopes: Vec::new(),
            audience: Vec::new(),
            sources: bearer_sources(),
            leeway: Duration::from_secs(30),
            max_token_bytes: 8192,
            claims: ClaimMapping::default(),
            cache: IntrospectionCacheConfig::default(),
            timeout: Duration::from_millis(150),
        }
    }
}

/// Introspection answers by token hash. An active answer is kept at most `max_ttl` and never
/// past the token's `exp`: a token revoked at the provider is still accepted that long. A
/// refusal (inactive, or failing a check) is kept `refused_ttl`: a token never becomes active
/// again, and a client retrying a bad token then does not reach the provider every time.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct IntrospectionCacheConfig {
    /// Cache answers.
    pub enabled: bool,
    /// Most answers kept.
    pub max_entries: u64,
    /// Longest time an active answer is used (never past the token's `exp`): the longest a
    /// revocation at the provider goes unnoticed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_ttl: Duration,
    /// How long a refusal is kept (0: not at all).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub refused_ttl: Duration,
}

impl Default for IntrospectionCacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_entries: 100_000,
            max_ttl: Duration::from_secs(60),
            refused_ttl: Duration::from_secs(10),
        }
    }
}
