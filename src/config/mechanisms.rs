//! The mechanism part of the wire format: one serde-tagged enum per kind, whose variants are the
//! built-in types and carry their config structs. Pure data; `crate::mechanisms` builds the
//! runtime mechanisms from it.
//!
//! A catalogue entry keeps its `config` as YAML until the rules are compiled: a rule step's
//! override is merged into it at the YAML level (top-level keys replace) before it is read into
//! the typed enum, and a bad entry is reported with its id next to every other problem instead
//! of stopping the parse at the first one.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use crate::tokens::Accept;

pub mod provider_tokens;
pub use provider_tokens::{IntrospectionCacheConfig, IntrospectionConfig, JwtConfig};

/// The kinds of mechanism, as named in the configuration, in pipeline order (an `execute`
/// list runs authenticators, then contextualizers, authorizers and finalizers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Authenticator,
    Contextualizer,
    Authorizer,
    Finalizer,
    ErrorHandler,
}

impl Kind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Authenticator => "authenticator",
            Self::Contextualizer => "contextualizer",
            Self::Authorizer => "authorizer",
            Self::Finalizer => "finalizer",
            Self::ErrorHandler => "error_handler",
        }
    }

    /// The name with its indefinite article, for messages.
    pub const fn with_article(self) -> &'static str {
        match self {
            Self::Authenticator => "an authenticator",
            Self::Contextualizer => "a contextualizer",
            Self::Authorizer => "an authorizer",
            Self::Finalizer => "a finalizer",
            Self::ErrorHandler => "an error handler",
        }
    }

    /// The name in "unknown … type" messages.
    const fn spaced(self) -> &'static str {
        match self {
            Self::ErrorHandler => "error handler",
            other => other.as_str(),
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mechanism kind's typed spec: the enum of its built-in types.
pub trait TypedSpec: DeserializeOwned + JsonSchema {
    const KIND: Kind;
    /// The `type` names, as written (checked against the enum by a test).
    const TYPES: &'static [&'static str];
}

/// Why a catalogue entry (with its override) is not a valid spec of its kind.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("unknown {} type `{type_name}` (known: {})", kind.spaced(), known.join(", "))]
    UnknownType {
        kind: Kind,
        type_name: Box<str>,
        known: &'static [&'static str],
    },
    #[error("type `{type_name}` takes no config")]
    TakesNoConfig { type_name: Box<str> },
    /// serde's message: the unknown or missing field, the wrong type.
    #[error("invalid config: {0}")]
    Invalid(Box<str>),
}

/// Reads `type` and `config` into the typed spec of kind `S`. An absent or empty config means
/// every default.
pub fn parse<S: TypedSpec>(type_name: &str, config: &Value) -> Result<S, SpecError> {
    let tagged = |config: Option<Value>| {
        let mut map = serde_yaml_ng::Mapping::new();
        map.insert("type".into(), type_name.into());
        if let Some(config) = config {
            map.insert("config".into(), config);
        }
        serde_yaml_ng::from_value::<S>(Value::Mapping(map))
    };
    if !S::TYPES.contains(&type_name) {
        return Err(SpecError::UnknownType {
            kind: S::KIND,
            type_name: type_name.into(),
            known: S::TYPES,
        });
    }
    // A type without config is a unit variant: it reads from the tag alone.
    let bare = tagged(None);
    let empty = match config {
        Value::Null => true,
        Value::Mapping(m) => m.is_empty(),
        _ => false,
    };
    match (bare, empty) {
        (Ok(spec), true) => Ok(spec),
        (Ok(_), false) => Err(SpecError::TakesNoConfig {
            type_name: type_name.into(),
        }),
        (Err(_), true) => tagged(Some(Value::Mapping(serde_yaml_ng::Mapping::new())))
            .map_err(|e| SpecError::Invalid(e.to_string().into())),
        (Err(_), false) => {
            tagged(Some(config.clone())).map_err(|e| SpecError::Invalid(e.to_string().into()))
        }
    }
}

/// Merges a rule step's override into a catalogue config (top-level keys replace).
pub fn merge_config(base: &Value, over: &Value) -> Value {
    match (base, over) {
        (Value::Mapping(base), Value::Mapping(over)) => {
            let mut merged = base.clone();
            for (k, v) in over {
                merged.insert(k.clone(), v.clone());
            }
            Value::Mapping(merged)
        }
        (_, Value::Null) => base.clone(),
        (_, over) => over.clone(),
    }
}

/// One named mechanism of the catalogue: `id`, `type` and the type's `config`. The config is
/// read into `S` when the rules are compiled (see the module comment).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MechanismSpec<S> {
    pub id: String,
    #[serde(rename = "type")]
    pub type_name: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub config: Value,
    #[serde(skip)]
    pub spec: PhantomData<fn() -> S>,
}

impl<S: TypedSpec> MechanismSpec<S> {
    /// The typed spec, with a rule step's `overrides` merged in (`Value::Null` for none).
    pub fn typed(&self, overrides: &Value) -> Result<S, SpecError> {
        parse(&self.type_name, &merge_config(&self.config, overrides))
    }
}

impl<S: TypedSpec> JsonSchema for MechanismSpec<S> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("{}Entry", S::schema_name()).into()
    }

    /// `S`'s variants (`{type, config}`), each with the `id` added and `config` optional.
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut schema = S::json_schema(generator);
        if let Some(serde_json::Value::Array(variants)) = schema.get_mut("oneOf") {
            for variant in variants
                .iter_mut()
                .filter_map(serde_json::Value::as_object_mut)
            {
                if let Some(serde_json::Value::Object(props)) = variant.get_mut("properties") {
                    props.insert(
                        "id".into(),
                        serde_json::json!({
                            "type": "string",
                            "description": "The name rules use to refer to this mechanism."
                        }),
                    );
                }
                variant.insert("required".into(), serde_json::json!(["id", "type"]));
                variant.insert("additionalProperties".into(), false.into());
            }
        }
        schema
    }
}

/// The mechanism catalogue, by kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MechanismsSpec {
    /// Turn a request's credential into a principal; a rule tries its authenticators in order.
    pub authenticators: Vec<MechanismSpec<AuthenticatorSpec>>,
    /// Enrich the authenticated subject before anything decides on it.
    pub contextualizers: Vec<MechanismSpec<ContextualizerSpec>>,
    /// Decide whether the subject may make the request.
    pub authorizers: Vec<MechanismSpec<AuthorizerSpec>>,
    /// Shape what the upstream receives once the request is allowed.
    pub finalizers: Vec<MechanismSpec<FinalizerSpec>>,
    /// Turn a failed step into the answer the client gets.
    pub error_handlers: Vec<MechanismSpec<ErrorHandlerSpec>>,
}

impl MechanismsSpec {
    /// Every entry as (kind, id, type, config), in the order written, kind by kind.
    pub fn entries(&self) -> impl Iterator<Item = (Kind, &str, &str, &Value)> {
        fn raw<S>(
            kind: Kind,
            list: &[MechanismSpec<S>],
        ) -> impl Iterator<Item = (Kind, &str, &str, &Value)> {
            list.iter()
                .map(move |m| (kind, m.id.as_str(), m.type_name.as_str(), &m.config))
        }
        raw(Kind::Authenticator, &self.authenticators)
            .chain(raw(Kind::Contextualizer, &self.contextualizers))
            .chain(raw(Kind::Authorizer, &self.authorizers))
            .chain(raw(Kind::Finalizer, &self.finalizers))
            .chain(raw(Kind::ErrorHandler, &self.error_handlers))
    }
}

// === authenticators ===

/// An authenticator: `type` and its `config`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "config", rename_all = "snake_case")]
pub enum AuthenticatorSpec {
    /// Verifies PASETO v4 tokens (`v4.local`, `v4.public`) with the process key ring.
    Paseto(PasetoConfig),
    /// Accepts every request as a fixed principal.
    Anonymous(AnonymousConfig),
    /// Refuses every request: the explicit end of a chain.
    Unauthorized,
    /// Verifies an identity provider's JWT access tokens with its published keys (JWKS).
    Jwt(JwtConfig),
    /// Asks the identity provider about opaque access tokens (RFC 7662 introspection).
    #[serde(rename = "oauth2_introspection")]
    OAuth2Introspection(IntrospectionConfig),
}

impl TypedSpec for AuthenticatorSpec {
    const KIND: Kind = Kind::Authenticator;
    const TYPES: &'static [&'static str] = &[
        "paseto",
        "anonymous",
        "unauthorized",
        "jwt",
        "oauth2_introspection",
    ];
}

/// `anonymous`: the principal every request becomes.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AnonymousConfig {
    /// The principal's id.
    pub subject: String,
    /// The principal's roles.
    pub roles: Vec<String>,
}

impl Default for AnonymousConfig {
    fn default() -> Self {
        Self {
            subject: "anonymous".into(),
            roles: Vec::new(),
        }
    }
}

/// Where a token is read from: `{header, scheme}` or `{cookie}`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, untagged)]
pub enum SourceSpec {
    Header {
        /// The header name.
        header: String,
        /// The auth scheme before the token (`Bearer`); without it the whole value is the token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scheme: Option<String>,
    },
    Cookie {
        /// The cookie name.
        cookie: String,
    },
}

/// `paseto`: which tokens are accepted and how their claims are checked.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PasetoConfig {
    /// Where the token is read from, in order; the first source present is used.
    pub sources: Vec<SourceSpec>,
    /// Which token purposes are accepted: `any`, `local` (`v4.local`) or `public` (`v4.public`).
    pub accept: Accept,
    /// Accepted `iss` values (default: `tokens.issuer`).
    pub issuers: Option<Vec<String>>,
    /// Required `aud` (default: `tokens.audience`).
    pub audience: Option<String>,
    /// Clock-skew allowance for `exp`, `nbf` and `iat`; at most 10m.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub leeway: Duration,
    /// Claims every token must carry, besides `sub` and `exp`.
    pub required_claims: Vec<String>,
    /// Accept tokens without `exp`.
    pub allow_non_expiring: bool,
    /// Longest token accepted, in bytes.
    pub max_token_bytes: usize,
    /// The cache of verified tokens.
    pub cache: CacheConfig,
    /// Reject tokens issued before their principal's revocation (`principal.revoked` events).
    /// Effective when NATS is configured; then a principal whose revocation state cannot be
    /// read fails closed.
    pub check_revocation: bool,
}

impl Default for PasetoConfig {
    fn default() -> Self {
        Self {
            sources: vec![SourceSpec::Header {
                header: "authorization".into(),
                scheme: Some("Bearer".into()),
            }],
            accept: Accept::Any,
            issuers: None,
            audience: None,
            leeway: Duration::from_secs(30),
            required_claims: Vec::new(),
            allow_non_expiring: false,
            max_token_bytes: 8192,
            cache: CacheConfig::default(),
            check_revocation: true,
        }
    }
}

/// Verified tokens by hash: a hit skips the signature check.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Cache verified tokens.
    pub enabled: bool,
    /// Most tokens kept.
    pub max_entries: u64,
    /// Longest time a token stays cached (never past its `exp`).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_entries: 100_000,
            max_ttl: Duration::from_secs(300),
        }
    }
}

// === contextualizers ===

/// A contextualizer: `type` and its `config`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "config", rename_all = "snake_case")]
pub enum ContextualizerSpec {
    /// Merges the principal's attributes published on NATS into it (needs `nats`).
    PrincipalAttributes(PrincipalAttributesConfig),
    /// Asks an HTTP service and maps its answer into the subject's attributes.
    Http(Box<super::remote_call::HttpContextualizerConfig>),
}

impl TypedSpec for ContextualizerSpec {
    const KIND: Kind = Kind::Contextualizer;
    const TYPES: &'static [&'static str] = &["principal_attributes", "http"];
}

/// `principal_attributes`: which principal, and whether attributes are required.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PrincipalAttributesConfig {
    /// The principal to enrich, by the name the rule gave it (default: the first one).
    pub principal: Option<String>,
    /// Deny (403) a principal that has no stored attributes at all.
    pub required: bool,
}

// === authorizers ===

/// An authorizer: `type` and its `config`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "config", rename_all = "snake_case")]
pub enum AuthorizerSpec {
    /// Allows every request.
    Allow,
    /// Denies every request (403).
    Deny,
    /// Allows when a CEL expression is true.
    Cel(CelConfig),
    /// Asks the Cerbos PDP (needs `cerbos`).
    Cerbos(CerbosAuthorizerConfig),
    /// Asks an HTTP policy service; its status, or a CEL expression over its answer, decides.
    Remote(super::remote_call::RemoteAuthorizerConfig),
}

impl TypedSpec for AuthorizerSpec {
    const KIND: Kind = Kind::Authorizer;
    const TYPES: &'static [&'static str] = &["allow", "deny", "cel", "cerbos", "remote"];
}

/// `cel`: the expression and the logged reason.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CelConfig {
    /// A boolean CEL expression over `request` and `subject`.
    pub expression: String,
    /// The reason logged when the expression is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `cerbos`: the resource a request is about and the actions to check.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CerbosAuthorizerConfig {
    /// The resource kind, as written (`document`).
    pub kind: String,
    /// CEL for the resource id (e.g. `request.captures.id`); empty when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// CEL per resource attribute.
    #[serde(default)]
    pub attr: BTreeMap<String, String>,
    /// CEL for the action or actions; every one must be allowed.
    pub actions: String,
}

// === finalizers ===

/// A finalizer: `type` and its `config`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "config", rename_all = "snake_case")]
pub enum FinalizerSpec {
    /// Sets upstream request and downstream response headers from CEL expressions.
    Header(HeaderConfig),
    /// Removes upstream request headers.
    RemoveHeaders(RemoveHeadersConfig),
    /// Mints a short-lived JWT for the upstream, signed with `tokens.jwt_keys`.
    Jwt(UpstreamTokenConfig),
    /// Mints a short-lived PASETO `v4.public` token for the upstream, signed with the key ring.
    Paseto(UpstreamTokenConfig),
}

impl TypedSpec for FinalizerSpec {
    const KIND: Kind = Kind::Finalizer;
    const TYPES: &'static [&'static str] = &["header", "remove_headers", "jwt", "paseto"];
}

/// `jwt` and `paseto`: the token minted for the upstream and where it goes.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTokenConfig {
    /// The upstream request header the token is put in.
    pub header: String,
    /// The auth scheme before the token (`Bearer`); empty for the token alone.
    pub scheme: String,
    /// `iss` (default: `tokens.issuer`).
    pub issuer: Option<String>,
    /// `aud`: the upstream's name, or several (required).
    pub audience: Vec<String>,
    /// Lifetime of a token: from 10s to 1h.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub ttl: Duration,
    /// Claim name → CEL expression for its value (any JSON value; `null` leaves the claim out).
    pub claims: BTreeMap<String, String>,
    /// Let `claims` set `iss`, `sub` and `aud` (`exp`, `iat`, `nbf` and `jti` are always
    /// heimdall's).
    pub override_registered_claims: bool,
    /// Minted tokens reused for an unchanged subject.
    pub cache: UpstreamTokenCacheConfig,
}

impl Default for UpstreamTokenConfig {
    fn default() -> Self {
        Self {
            header: "authorization".into(),
            scheme: "Bearer".into(),
            issuer: None,
            audience: Vec::new(),
            ttl: Duration::from_secs(60),
            claims: BTreeMap::new(),
            override_registered_claims: false,
            cache: UpstreamTokenCacheConfig::default(),
        }
    }
}

/// Minted tokens by a hash of their claims (without `iat`, `exp` and `jti`); an entry lives a
/// quarter of the token's `ttl`, so a token from the cache has at least three quarters left.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTokenCacheConfig {
    /// Reuse tokens.
    pub enabled: bool,
    /// Most tokens kept.
    pub max_entries: u64,
}

impl Default for UpstreamTokenCacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_entries: 10_000,
        }
    }
}

/// `header`: header names and the CEL expressions of their values.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderConfig {
    /// Upstream request header name → CEL expression for its value (set, overwriting).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Downstream response header name → CEL expression (added to the response Envoy returns).
    #[serde(default)]
    pub response_headers: BTreeMap<String, String>,
}

/// `remove_headers`: the upstream request headers to remove.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveHeadersConfig {
    /// Header names.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Cookie names taken out of the `Cookie` header (the others stay), e.g. the login's
    /// `heimdall_session`, so the access token never reaches the upstream.
    #[serde(default)]
    pub cookies: Vec<String>,
}

// === error handlers ===

/// An error handler: `type` and its `config`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "config", rename_all = "snake_case")]
pub enum ErrorHandlerSpec {
    /// The default mapping from error kind to status.
    Default,
    /// A 401 with a `WWW-Authenticate` challenge.
    WwwAuthenticate(WwwAuthenticateConfig),
    /// Redirects to a login page with the original URL as a parameter.
    Redirect(RedirectConfig),
    /// A response built from CEL templates.
    Generic(GenericConfig),
}

impl TypedSpec for ErrorHandlerSpec {
    const KIND: Kind = Kind::ErrorHandler;
    const TYPES: &'static [&'static str] = &["default", "www_authenticate", "redirect", "generic"];
}

/// `www_authenticate`: the challenge.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WwwAuthenticateConfig {
    /// The auth scheme (one token).
    pub scheme: String,
    /// The realm (no `"`).
    pub realm: String,
}

impl Default for WwwAuthenticateConfig {
    fn default() -> Self {
        Self {
            scheme: "Bearer".into(),
            realm: "heimdall".into(),
        }
    }
}

/// `redirect`: where to, and how the original URL is passed.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RedirectConfig {
    /// Where to send the browser (the login endpoint).
    pub to: String,
    /// The query parameter that carries the original URL.
    pub param: String,
    /// The redirect status (3xx).
    pub status: u16,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        Self {
            to: "/auth/login".into(),
            param: "redirect_uri".into(),
            status: 302,
        }
    }
}

/// `generic`: status, headers and body.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenericConfig {
    /// The status (3xx, 4xx or 5xx: a 2xx would be an allow behind a forward-auth gateway).
    pub status: u16,
    /// Header name → CEL expression for its value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A CEL expression for the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `TYPES` lists exactly the enum's variants: serde names them in its unknown-variant error.
    fn types_match<S: TypedSpec + std::fmt::Debug>() {
        let mut map = serde_yaml_ng::Mapping::new();
        map.insert("type".into(), "no_such_type".into());
        let err = serde_yaml_ng::from_value::<S>(Value::Mapping(map)).unwrap_err();
        let message = err.to_string();
        let (_, expected) = message.split_once("expected").unwrap();
        let listed: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        assert_eq!(listed, S::TYPES, "{message}");
    }

    #[test]
    fn the_type_lists_are_the_enums() {
        types_match::<AuthenticatorSpec>();
        types_match::<ContextualizerSpec>();
        types_match::<AuthorizerSpec>();
        types_match::<FinalizerSpec>();
        types_match::<ErrorHandlerSpec>();
    }

    #[test]
    fn reads_absent_empty_and_refused_configs() {
        let yaml = |s: &str| serde_yaml_ng::from_str::<Value>(s).unwrap();
        assert!(matches!(
            parse::<AuthenticatorSpec>("paseto", &Value::Null),
            Ok(AuthenticatorSpec::Paseto(_))
        ));
        assert!(matches!(
            parse::<AuthenticatorSpec>("unauthorized", &yaml("{}")),
            Ok(AuthenticatorSpec::Unauthorized)
        ));
        assert_eq!(
            parse::<AuthorizerSpec>("deny", &yaml("{a: 1}")).unwrap_err(),
            SpecError::TakesNoConfig {
                type_name: "deny".into()
            }
        );
        assert_eq!(
            parse::<ErrorHandlerSpec>("teapot", &Value::Null)
                .unwrap_err()
                .to_string(),
            "unknown error handler type `teapot` (known: default, www_authenticate, redirect, generic)"
        );
        let err = parse::<AuthorizerSpec>("cel", &Value::Null).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid config: missing field `expression`"),
            "{err}"
        );
    }
}
