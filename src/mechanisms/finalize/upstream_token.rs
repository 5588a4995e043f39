//! The `jwt` and `paseto` finalizers: a short-lived signed token for the upstream, carrying the
//! subject and claims computed with CEL, so the upstream verifies who is calling with a public
//! key instead of trusting `X-User-*` headers.
//!
//! Tokens are cached by a BLAKE3 hash of their claims without `iat`, `exp` and `jti`: an
//! unchanged subject is not signed again on every request. An entry lives a quarter of the
//! token's `ttl` ([`CACHE_FRACTION`]), so a token sent from the cache always has at least three
//! quarters of its lifetime left.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::TokensConfig;
use crate::config::mechanisms::UpstreamTokenConfig;
use crate::decision::{Allowed, ErrorKind, StepError};
use crate::expr::{Expr, Vars};
use crate::mechanisms::{BuildContext, BuildError, header_name};
use crate::tokens::{Audience, Claims, Keyring, Purpose};
use crate::ttl_cache::TtlCache;

/// The shortest `ttl`: below it, clock skew between heimdall and the upstream rejects tokens.
const MIN_TTL: Duration = Duration::from_secs(10);
/// The longest `ttl`: an upstream token is a per-request credential, not a session.
const MAX_TTL: Duration = Duration::from_secs(3600);
/// A cached token lives `ttl / CACHE_FRACTION`.
const CACHE_FRACTION: u32 = 4;

/// Claims heimdall always sets itself.
const OWN_CLAIMS: [&str; 4] = ["exp", "iat", "nbf", "jti"];
/// Claims with their own settings, which `claims` may replace with `override_registered_claims`.
const REGISTERED: [&str; 3] = ["iss", "sub", "aud"];

/// Claim names with the expressions of their values.
type ComputedClaims = Box<[(Box<str>, Expr)]>;

/// Which token is minted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFormat {
    /// A JWS signed with the first private key of `tokens.jwt_keys`.
    Jwt,
    /// A PASETO `v4.public` token signed with the key ring's signing key.
    Paseto,
}

impl TokenFormat {
    const fn name(self) -> &'static str {
        match self {
            Self::Jwt => "jwt",
            Self::Paseto => "paseto",
        }
    }
}

/// A fixed value or one computed per request.
enum Computed<T> {
    Fixed(T),
    Expr(Expr),
}

/// The `jwt` or `paseto` finalizer.
pub struct UpstreamToken {
    id: Arc<str>,
    format: TokenFormat,
    keys: Arc<Keyring>,
    header: Arc<str>,
    /// `"Bearer "`, or empty.
    prefix: Box<str>,
    issuer: Computed<String>,
    subject: Expr,
    audience: Computed<Vec<String>>,
    claims: ComputedClaims,
    ttl: Duration,
    /// Header values (prefix and token) by claim hash.
    cache: Option<TtlCache<[u8; 32], Arc<str>>>,
}

/// The claims of one request, without the times and `jti`.
#[derive(Serialize)]
struct Rendered {
    iss: String,
    sub: String,
    aud: Vec<String>,
    extra: Map<String, Value>,
}

impl Rendered {
    /// What the cache is keyed by: every claim but `iat`, `exp` and `jti`.
    fn key(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new();
        // Writing into a hasher cannot fail, and these values always serialize.
        let _ = serde_json::to_writer(&mut hasher, self);
        *hasher.finalize().as_bytes()
    }
}

/// `aud` as JWT libraries expect it: one string, or an array of several.
#[derive(Serialize)]
#[serde(untagged)]
enum JwtAudience<'a> {
    One(&'a str),
    Many(&'a [String]),
}

/// The JWT payload: the configured claims, the registered ones and the times.
#[derive(Serialize)]
struct JwtClaims<'a> {
    #[serde(flatten)]
    extra: &'a Map<String, Value>,
    iss: &'a str,
    sub: &'a str,
    aud: JwtAudience<'a>,
    iat: u64,
    exp: u64,
    jti: String,
}

impl UpstreamToken {
    /// Builds and checks the finalizer; every refusal names the setting.
    pub fn build(
        id: &Arc<str>,
        format: TokenFormat,
        cfg: UpstreamTokenConfig,
        ctx: &BuildContext<'_>,
    ) -> Result<Self, BuildError> {
        let invalid = |message: String| BuildError::Invalid(message.into());
        match format {
            TokenFormat::Jwt if !ctx.keys.jwt().can_sign() => {
                return Err(invalid(
                    "no JWT signing key: add a PKCS#8 Ed25519 or EC private key under \
                     `tokens.jwt_keys`"
                        .into(),
                ));
            }
            TokenFormat::Paseto if !ctx.keys.can_mint(Purpose::Public) => {
                return Err(invalid(
                    "no v4.public signing key: add a `k4.secret` key under `tokens.keys`".into(),
                ));
            }
            _ => {}
        }
        if cfg.ttl < MIN_TTL || cfg.ttl > MAX_TTL {
            return Err(invalid(format!(
                "`ttl`: {} is out of range (from {} to {})",
                humantime::format_duration(cfg.ttl),
                humantime::format_duration(MIN_TTL),
                humantime::format_duration(MAX_TTL)
            )));
        }
        if !cfg.scheme.is_empty() && !cfg.scheme.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "`scheme` must be one token, such as `Bearer`".into(),
            ));
        }
        if cfg.cache.enabled && cfg.cache.max_entries == 0 {
            return Err(invalid(
                "`cache.max_entries` must be positive (or set `cache.enabled: false`)".into(),
            ));
        }
        let mut registered = RegisteredClaims::default();
        let claims = compile_claims(&cfg, &mut registered)?;
        let issuer = match registered.iss {
            Some(expr) => Computed::Expr(expr),
            None => Computed::Fixed(cfg.issuer.unwrap_or_else(|| ctx.tokens.issuer.clone())),
        };
        if matches!(&issuer, Computed::Fixed(iss) if iss.is_empty()) {
            return Err(invalid("`issuer` must not be empty".into()));
        }
        let audience = match registered.aud {
            Some(expr) => Computed::Expr(expr),
            None if cfg.audience.is_empty() || cfg.audience.iter().any(String::is_empty) => {
                return Err(invalid(
                    "`audience`: name the upstream the token is for; a token without an \
                     audience is accepted by every service that trusts these keys"
                        .into(),
                ));
            }
            None => Computed::Fixed(cfg.audience),
        };
        if format == TokenFormat::Paseto {
            refuse_tokens_heimdall_accepts(&issuer, &audience, ctx.tokens)?;
        }
        let subject = match registered.sub {
            Some(expr) => expr,
            None => Expr::compile("subject.id").map_err(BuildError::expr("`sub`"))?,
        };
        let cache = cfg
            .cache
            .enabled
            .then(|| TtlCache::new(cfg.cache.max_entries));
        Ok(Self {
            id: Arc::clone(id),
            format,
            keys: Arc::clone(ctx.keys),
            header: header_name(&cfg.header)?,
            prefix: match cfg.scheme.as_str() {
                "" => "".into(),
                scheme => format!("{scheme} ").into(),
            },
            issuer,
            subject,
            audience,
            claims,
            ttl: cfg.ttl,
            cache,
        })
    }

    /// Sets the header to a token for this request's subject, from the cache when it has one.
    pub fn finalize(&self, vars: &Vars<'_>, out: &mut Allowed) -> Result<(), StepError> {
        let rendered = self.render(vars)?;
        let value = match &self.cache {
            Some(cache) => {
                let key = rendered.key();
                match cache.get(&key) {
                    Some(value) => value,
                    None => {
                        let value = self.mint(&rendered)?;
                        cache.insert(key, Arc::clone(&value), self.ttl / CACHE_FRACTION);
                        value
                    }
                }
            }
            None => self.mint(&rendered)?,
        };
        out.set_header(&self.header, String::from(&*value));
        Ok(())
    }

    /// Every expression it evaluates.
    pub fn expressions(&self) -> impl Iterator<Item = &Expr> {
        let computed_issuer = match &self.issuer {
            Computed::Expr(e) => Some(e),
            Computed::Fixed(_) => None,
        };
        let computed_audience = match &self.audience {
            Computed::Expr(e) => Some(e),
            Computed::Fixed(_) => None,
        };
        std::iter::once(&self.subject)
            .chain(computed_issuer)
            .chain(computed_audience)
            .chain(self.claims.iter().map(|(_, e)| e))
    }

    fn error(&self, message: String) -> StepError {
        StepError::new(ErrorKind::Internal, &self.id, message)
    }

    /// The claims of this request, without the times and `jti`.
    fn render(&self, vars: &Vars<'_>) -> Result<Rendered, StepError> {
        let sub = self
            .subject
            .eval_string(vars)
            .map_err(|e| self.error(format!("claim `sub`: {e}")))?;
        if sub.is_empty() {
            return Err(self.error("claim `sub` is empty".into()));
        }
        let iss = match &self.issuer {
            Computed::Fixed(iss) => iss.clone(),
            Computed::Expr(e) => e
                .eval_string(vars)
                .map_err(|e| self.error(format!("claim `iss`: {e}")))?,
        };
        let aud = match &self.audience {
            Computed::Fixed(aud) => aud.clone(),
            Computed::Expr(e) => e
                .eval_strings(vars)
                .map_err(|e| self.error(format!("claim `aud`: {e}")))?,
        };
        let mut extra = Map::new();
        for (name, expr) in &self.claims {
            let value = expr
                .eval_json(vars)
                .map_err(|e| self.error(format!("claim `{name}`: {e}")))?;
            if !value.is_null() {
                extra.insert(String::from(&**name), value);
            }
        }
        Ok(Rendered {
            iss,
            sub,
            aud,
            extra,
        })
    }

    /// A new token, as the header value.
    fn mint(&self, rendered: &Rendered) -> Result<Arc<str>, StepError> {
        let token = match self.format {
            TokenFormat::Jwt => self.mint_jwt(rendered),
            TokenFormat::Paseto => self.mint_paseto(rendered),
        }
        .map_err(|e| self.error(format!("{} token: {e}", self.format.name())))?;
        Ok(Arc::from(format!("{}{token}", self.prefix)))
    }

    fn mint_jwt(&self, rendered: &Rendered) -> Result<String, crate::tokens::KeyError> {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let aud = match rendered.aud.as_slice() {
            [one] => JwtAudience::One(one),
            many => JwtAudience::Many(many),
        };
        self.keys.jwt().sign(&JwtClaims {
            extra: &rendered.extra,
            iss: &rendered.iss,
            sub: &rendered.sub,
            aud,
            iat,
            exp: iat.saturating_add(self.ttl.as_secs()),
            jti: crate::tokens::random_token_id(),
        })
    }

    fn mint_paseto(&self, rendered: &Rendered) -> Result<String, crate::tokens::KeyError> {
        let mut claims = Claims::new(&rendered.sub, &rendered.iss, self.ttl);
        claims.aud = match rendered.aud.as_slice() {
            [one] => Audience::One(one.clone()),
            many => Audience::Many(many.to_vec()),
        };
        claims.extra = rendered.extra.clone();
        self.keys.mint(Purpose::Public, &claims)
    }
}

/// `iss`, `sub` and `aud` taken from `claims` (with `override_registered_claims`).
#[derive(Default)]
struct RegisteredClaims {
    iss: Option<Expr>,
    sub: Option<Expr>,
    aud: Option<Expr>,
}

/// Compiles `claims`, refusing heimdall's own claims always and the registered ones unless
/// `override_registered_claims` lets them through (they go to `registered`).
fn compile_claims(
    cfg: &UpstreamTokenConfig,
    registered: &mut RegisteredClaims,
) -> Result<ComputedClaims, BuildError> {
    let mut out = Vec::with_capacity(cfg.claims.len());
    for (name, source) in &cfg.claims {
        let shown = crate::redact::untrusted(name, 64);
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(BuildError::Invalid(
                format!("`claims`: `{shown}` is not a claim name").into(),
            ));
        }
        if OWN_CLAIMS.contains(&name.as_str()) {
            return Err(BuildError::Invalid(
                format!(
                    "`claims.{name}`: `exp`, `iat`, `nbf` and `jti` are set by heimdall (use `ttl`)"
                )
                .into(),
            ));
        }
        let expr = Expr::compile(source).map_err(BuildError::expr(format!("claim `{shown}`")))?;
        if REGISTERED.contains(&name.as_str()) {
            if !cfg.override_registered_claims {
                return Err(BuildError::Invalid(
                    format!(
                        "`claims.{name}` would replace the registered claim `{name}`: use \
                         `issuer`/`audience`, or set `override_registered_claims: true`"
                    )
                    .into(),
                ));
            }
            let slot = match name.as_str() {
                "iss" => &mut registered.iss,
                "sub" => &mut registered.sub,
                _ => &mut registered.aud,
            };
            *slot = Some(expr);
            continue;
        }
        out.push((Box::from(name.as_str()), expr));
    }
    Ok(out.into_boxed_slice())
}

/// A `v4.public` token is signed with the key heimdall's own `paseto` authenticators verify: one
/// minted for an upstream must not be a credential heimdall itself accepts (the upstream could
/// replay it). Refused when heimdall's defaults would accept it: its issuer and no
/// `tokens.audience`, or `tokens.audience` among its audiences.
fn refuse_tokens_heimdall_accepts(
    issuer: &Computed<String>,
    audience: &Computed<Vec<String>>,
    tokens: &TokensConfig,
) -> Result<(), BuildError> {
    let accepted = match (&tokens.audience, issuer, audience) {
        (Some(own), _, Computed::Fixed(aud)) => aud.contains(own),
        (None, Computed::Fixed(iss), _) => *iss == tokens.issuer,
        _ => false,
    };
    if accepted {
        return Err(BuildError::Invalid(
            "heimdall's own `paseto` authenticators would accept this token (same signing \
             key): give it an `audience` other than `tokens.audience`, and set \
             `tokens.audience` (or another `issuer`)"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::mechanisms::{FinalizerSpec, parse};
    use crate::request::{Headers, RequestView};
    use crate::subject::{Principal, Subject};
    use crate::tokens::{JwtAlgorithm, jwt::test_keys};

    fn keys() -> Arc<Keyring> {
        let mut keys = crate::test_helpers::test_keys();
        let pair = test_keys::generate(JwtAlgorithm::EdDsa);
        keys.add_jwt_pem(&pair.private_pem, 0, None).unwrap();
        Arc::new(keys)
    }

    fn tokens() -> TokensConfig {
        TokensConfig {
            audience: Some("heimdall".into()),
            ..TokensConfig::default()
        }
    }

    fn build(
        type_name: &str,
        yaml: &str,
        keys: &Arc<Keyring>,
        tokens: &TokensConfig,
    ) -> Result<UpstreamToken, String> {
        let config = serde_yaml_ng::from_str(yaml).unwrap();
        let (format, cfg) = match parse::<FinalizerSpec>(type_name, &config) {
            Ok(FinalizerSpec::Jwt(cfg)) => (TokenFormat::Jwt, cfg),
            Ok(FinalizerSpec::Paseto(cfg)) => (TokenFormat::Paseto, cfg),
            Ok(_) => unreachable!(),
            Err(e) => return Err(e.to_string()),
        };
        crate::mechanisms::with_test_context(keys, tokens, |ctx| {
            UpstreamToken::build(&Arc::from("upstream"), format, cfg, ctx)
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn refusals_name_the_setting() {
        let keys = keys();
        let tokens = tokens();
        let cases = [
            ("jwt", "{}", "`audience`: name the upstream"),
            (
                "jwt",
                "{audience: [api], ttl: 2h}",
                "`ttl`: 2h is out of range",
            ),
            (
                "jwt",
                "{audience: [api], ttl: 1s}",
                "`ttl`: 1s is out of range",
            ),
            (
                "jwt",
                "{audience: [api], claims: {exp: '1'}}",
                "`claims.exp`: `exp`, `iat`, `nbf` and `jti` are set by heimdall",
            ),
            (
                "jwt",
                "{audience: [api], claims: {sub: subject.attr.email}}",
                "`claims.sub` would replace the registered claim `sub`",
            ),
            (
                "jwt",
                "{audience: [api], claims: {email: 'subject.nope'}}",
                "claim `email`:",
            ),
            (
                "jwt",
                "{audience: [api], scheme: 'Two words'}",
                "`scheme` must be one token",
            ),
            (
                "jwt",
                "{audience: [api], header: 'bad header'}",
                "is not a valid header name",
            ),
            (
                "jwt",
                "{audience: [api], cache: {max_entries: 0}}",
                "`cache.max_entries` must be positive",
            ),
            (
                "jwt",
                "{audience: [api], algorithm: HS256}",
                "unknown field `algorithm`",
            ),
            (
                "paseto",
                "{audience: [heimdall]}",
                "heimdall's own `paseto` authenticators would accept this token",
            ),
        ];
        for (type_name, yaml, expected) in cases {
            let err = build(type_name, yaml, &keys, &tokens).err().unwrap();
            assert!(err.contains(expected), "{yaml}: {err}");
        }
        let no_audience = TokensConfig::default();
        let err = build("paseto", "{audience: [api]}", &keys, &no_audience)
            .err()
            .unwrap();
        assert!(err.contains("would accept this token"), "{err}");
        assert!(
            build(
                "paseto",
                "{audience: [api], issuer: gateway}",
                &keys,
                &no_audience
            )
            .is_ok()
        );
        let without_jwt_key = Arc::new(crate::test_helpers::test_keys());
        let err = build("jwt", "{audience: [api]}", &without_jwt_key, &tokens)
            .err()
            .unwrap();
        assert!(err.contains("no JWT signing key"), "{err}");
    }

    fn with_subject<T>(id: &str, f: impl FnOnce(&Vars<'_>) -> T) -> T {
        let mut attrs = Map::new();
        attrs.insert("email".into(), Value::from(format!("{id}@example.com")));
        attrs.insert("tenant".into(), Value::from("acme"));
        let subject = Subject::single(Principal::new(id, vec!["user".into()], attrs, "bearer"));
        let line = crate::canonical::RequestLine::parse(
            "GET",
            "api.example.com",
            "/x",
            &Default::default(),
        )
        .unwrap();
        let view = RequestView::new(&line, "https", Headers::None);
        let mut vars = Vars::default();
        vars.bind_request(&view, &[]);
        vars.bind_subject(&subject);
        f(&vars)
    }

    fn payload(token: &str) -> Value {
        use base64::Engine as _;
        let body = token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(body)
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn claims_are_built_from_the_subject_and_cached_by_their_values() {
        let keys = keys();
        let finalizer = build(
            "jwt",
            "{audience: [orders], ttl: 1m, claims: {email: subject.attr.email, \
             roles: subject.roles, missing: 'null', path: request.path}}",
            &keys,
            &tokens(),
        )
        .unwrap();
        let token_for = |id: &str| {
            with_subject(id, |vars| {
                let mut out = Allowed::default();
                finalizer.finalize(vars, &mut out).unwrap();
                let (_, value) = out
                    .upstream_headers
                    .iter()
                    .find(|(n, _)| &**n == "authorization")
                    .unwrap()
                    .clone();
                value.strip_prefix("Bearer ").unwrap().to_owned()
            })
        };
        let alice = token_for("alice");
        let claims = payload(&alice);
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["iss"], "heimdall");
        assert_eq!(claims["aud"], "orders");
        assert_eq!(claims["email"], "alice@example.com");
        assert_eq!(claims["roles"], serde_json::json!(["user"]));
        assert_eq!(claims["path"], "/x");
        assert!(claims.get("missing").is_none(), "null leaves a claim out");
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            60
        );
        assert_eq!(token_for("alice"), alice, "same subject: the cached token");
        let bob = token_for("bob");
        assert_ne!(bob, alice);
        assert_eq!(payload(&bob)["sub"], "bob");
    }

    #[test]
    fn registered_claims_may_be_overridden_when_allowed() {
        let keys = keys();
        let finalizer = build(
            "jwt",
            "{override_registered_claims: true, cache: {enabled: false}, claims: \
             {sub: subject.attr.email, aud: '[\"a\", subject.attr.tenant]'}}",
            &keys,
            &tokens(),
        )
        .unwrap();
        let token = with_subject("carol", |vars| {
            let mut out = Allowed::default();
            finalizer.finalize(vars, &mut out).unwrap();
            out.upstream_headers[0].1.clone()
        });
        let claims = payload(token.strip_prefix("Bearer ").unwrap());
        assert_eq!(claims["sub"], "carol@example.com");
        assert_eq!(claims["aud"], serde_json::json!(["a", "acme"]));
    }
}
