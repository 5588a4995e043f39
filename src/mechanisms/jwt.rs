//! The `jwt` authenticator: an identity provider's JWT access tokens (Keycloak, Auth0, Entra ID,
//! Ory Hydra with JWT tokens), verified with the keys the provider publishes (JWKS).
//!
//! Verification happens on the Check's thread with the keys in memory; only a missing or
//! expired key set, or a token naming a key that is not there (a rotation at the provider),
//! leads to a fetch, in a boxed future. Fetches are single-flight and rate limited: at most one
//! per `min_refresh_interval`, however many tokens with unknown `kid`s arrive, and concurrent
//! misses wait for the one fetch in progress.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::authn::AuthnError;
use super::provider::{ProviderMetrics, discover, get_json, http_url, principal};
use super::token_source::{TokenSources, VerifiedCache, check_leeway, check_size, token_key};
use super::{BuildContext, BuildError};
use crate::config::mechanisms::JwtConfig;
use crate::decision::{ErrorKind, StepError};
use crate::login::ClaimMapping;
use crate::outbound::HttpClient;
use crate::redact::untrusted;
use crate::request::RequestView;
use crate::subject::Principal;

/// The most keys tried for a token without `kid`.
const MAX_KEYS_WITHOUT_KID: usize = 8;
/// How long past `jwks_ttl` a key set keeps serving while fetching a new one fails.
const STALE_GRACE_FACTOR: u32 = 2;

/// A public key of the provider's set, with what it may verify.
struct VerifyingKey {
    key: DecodingKey,
    family: AlgorithmFamily,
    /// The JWK's `alg`, when it names one: then only that algorithm.
    alg: Option<Algorithm>,
    curve: Option<EllipticCurve>,
}

impl VerifyingKey {
    /// The key of one JWK, `None` for anything not usable to verify a signature: a key for
    /// encryption, an unknown key type or algorithm, and any symmetric (`oct`) key, which a
    /// public key set must not hold and which would open the HMAC key-confusion attack.
    fn from_jwk(value: &Value) -> Option<(Option<Box<str>>, Self)> {
        let jwk: Jwk = serde_json::from_value(value.clone()).ok()?;
        if matches!(
            jwk.common.public_key_use,
            Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
        ) {
            return None;
        }
        let curve = match &jwk.algorithm {
            AlgorithmParameters::EllipticCurve(p) => Some(p.curve.clone()),
            AlgorithmParameters::OctetKeyPair(p) => Some(p.curve.clone()),
            AlgorithmParameters::RSA(_) => None,
            _ => return None,
        };
        let alg = match &jwk.common.key_algorithm {
            Some(a) => Some(a.to_string().parse::<Algorithm>().ok()?),
            None => None,
        };
        let key = DecodingKey::from_jwk(&jwk).ok()?;
        let family = key.family();
        if family == AlgorithmFamily::Hmac || alg.is_some_and(|a| a.family() != family) {
            return None;
        }
        let kid = jwk.common.key_id.map(String::into_boxed_str);
        Some((
            kid,
            Self {
                key,
                family,
                alg,
                curve,
            },
        ))
    }

    /// Whether the key may verify `alg`: the family of its `kty`, its own `alg` if it names one,
    /// and the curve the algorithm is defined on.
    fn accepts(&self, alg: Algorithm) -> bool {
        let curve_fits = match alg {
            Algorithm::ES256 => self.curve == Some(EllipticCurve::P256),
            Algorithm::ES384 => self.curve == Some(EllipticCurve::P384),
            Algorithm::EdDSA => self.curve == Some(EllipticCurve::Ed25519),
            _ => true,
        };
        alg.family() == self.family && self.alg.is_none_or(|a| a == alg) && curve_fits
    }
}

/// One fetched key set.
struct KeySet {
    by_kid: HashMap<Box<str>, Arc<VerifyingKey>>,
    /// Every key, in the order published (for tokens without `kid`).
    all: Vec<Arc<VerifyingKey>>,
    fetched: Instant,
}

enum KeyLookup<'a> {
    Found(&'a VerifyingKey),
    /// The token names a `kid` the set does not have.
    UnknownKid,
    /// No key of the set may verify the token's algorithm.
    NoKeyForAlg,
}

impl KeySet {
    fn parse(jwks: &Map<String, Value>) -> Result<Self, String> {
        let keys = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("the key set has no `keys` list")?;
        let mut set = KeySet {
            by_kid: HashMap::new(),
            all: Vec::new(),
            fetched: Instant::now(),
        };
        for (kid, key) in keys.iter().filter_map(VerifyingKey::from_jwk) {
            let key = Arc::new(key);
            if let Some(kid) = kid {
                set.by_kid.insert(kid, Arc::clone(&key));
            }
            set.all.push(key);
        }
        if set.all.is_empty() {
            return Err("the key set holds no usable signing key".into());
        }
        Ok(set)
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> KeyLookup<'_> {
        match kid {
            Some(kid) => match self.by_kid.get(kid) {
                Some(key) if key.accepts(alg) => KeyLookup::Found(key),
                Some(_) => KeyLookup::NoKeyForAlg,
                None => KeyLookup::UnknownKid,
            },
            // Without `kid` the only candidates are keys that may verify `alg`; the first one
            // is tried (providers that omit `kid` publish one key per algorithm).
            None => self
                .all
                .iter()
                .take(MAX_KEYS_WITHOUT_KID)
                .find(|k| k.accepts(alg))
                .map_or(KeyLookup::NoKeyForAlg, |k| KeyLookup::Found(k)),
        }
    }

    fn age(&self) -> Duration {
        self.fetched.elapsed()
    }
}

/// Where the key set is fetched from.
enum KeySource {
    Url(Box<str>),
    /// `jwks_uri` of the issuer's discovery document.
    Discovery,
}

/// What only the one fetch in progress touches.
struct RefreshState {
    last_attempt: Option<Instant>,
    last_error: Option<String>,
    discovered: Option<String>,
}

/// What the keys in memory made of a token.
pub(crate) enum Verified<'a> {
    Principal(Arc<Principal>),
    /// The keys must be fetched first: [`JwtAuthenticator::authenticate_fetching`].
    NeedsKeys(&'a str),
}

/// The JOSE header fields heimdall reads before choosing a key.
#[derive(serde::Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

/// Verifies JWT access tokens with the provider's JWKS.
pub struct JwtAuthenticator {
    id: Arc<str>,
    sources: TokenSources,
    max_token_bytes: usize,
    /// The accepted algorithms, each with its validation (claims, leeway) prepared at load.
    validations: Box<[(Algorithm, Validation)]>,
    leeway: Duration,
    required_claims: Box<[Box<str>]>,
    mapping: ClaimMapping,
    cache: Option<VerifiedCache>,
    issuer: Box<str>,
    source: KeySource,
    http: HttpClient,
    keys: ArcSwapOption<KeySet>,
    refresh: tokio::sync::Mutex<RefreshState>,
    jwks_ttl: Duration,
    min_refresh_interval: Duration,
    metrics: ProviderMetrics,
}

impl JwtAuthenticator {
    pub(crate) fn new(
        id: &Arc<str>,
        cfg: JwtConfig,
        ctx: &BuildContext<'_>,
    ) -> Result<Self, BuildError> {
        let invalid = |m: &str| BuildError::Invalid(m.into());
        let issuer = match (&cfg.issuer, &cfg.jwks_url) {
            (Some(issuer), _) => issuer.clone(),
            (None, None) => {
                return Err(invalid(
                    "needs `issuer` (keys found by OpenID discovery) or `jwks_url`",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "`issuer` is required with `jwks_url`: every token's `iss` must equal it",
                ));
            }
        };
        http_url("issuer", &issuer)?;
        let source = match cfg.jwks_url {
            Some(url) => KeySource::Url(http_url("jwks_url", &url)?.as_str().into()),
            None => KeySource::Discovery,
        };
        if cfg.audience.is_empty() || cfg.audience.iter().any(String::is_empty) {
            return Err(invalid(
                "`audience` must name the accepted `aud` values: a token minted for another API must not be accepted",
            ));
        }
        let algorithms = parse_algorithms(&cfg.algorithms)?;
        check_leeway(cfg.leeway)?;
        if cfg.max_token_bytes == 0 {
            return Err(invalid("`max_token_bytes` must be positive"));
        }
        if cfg.claims.subject.is_empty() {
            return Err(invalid("`claims.subject` must name a claim"));
        }
        if cfg.jwks_ttl.is_zero() {
            return Err(invalid("`jwks_ttl` must be positive"));
        }
        if cfg.min_refresh_interval.is_zero() || cfg.min_refresh_interval > cfg.jwks_ttl {
            return Err(invalid(
                "`min_refresh_interval` must be positive and at most `jwks_ttl`",
            ));
        }
        let http = super::provider::client(cfg.timeout, ctx.check_timeout)?;
        let validations = algorithms
            .into_iter()
            .map(|alg| {
                let mut v = Validation::new(alg);
                v.leeway = cfg.leeway.as_secs();
                v.validate_nbf = true;
                v.set_required_spec_claims(&["exp", "iss", "aud"]);
                v.set_issuer(&[issuer.as_str()]);
                v.set_audience(&cfg.audience);
                (alg, v)
            })
            .collect();
        Ok(Self {
            id: Arc::clone(id),
            sources: TokenSources::new(id, cfg.sources)?,
            max_token_bytes: cfg.max_token_bytes,
            validations,
            leeway: cfg.leeway,
            required_claims: cfg.required_claims.into_iter().map(Into::into).collect(),
            mapping: cfg.claims,
            cache: VerifiedCache::new(&cfg.cache),
            issuer: issuer.into(),
            source,
            http,
            keys: ArcSwapOption::empty(),
            refresh: tokio::sync::Mutex::new(RefreshState {
                last_attempt: None,
                last_error: None,
                discovered: None,
            }),
            jwks_ttl: cfg.jwks_ttl,
            min_refresh_interval: cfg.min_refresh_interval,
            metrics: ctx.provider_metrics.clone(),
        })
    }

    fn fail(&self, message: impl Into<String>) -> AuthnError {
        AuthnError::Failed(StepError::new(ErrorKind::Authentication, &self.id, message))
    }

    fn unavailable(&self, message: &str) -> AuthnError {
        AuthnError::Failed(StepError::new(
            ErrorKind::Communication,
            &self.id,
            format!("the provider's keys are unavailable: {message}"),
        ))
    }

    /// Verifies the request's token with the keys in memory, without I/O.
    pub(crate) fn authenticate_cached<'a>(
        &self,
        req: &RequestView<'a>,
    ) -> Result<Verified<'a>, AuthnError> {
        let token = self.sources.find(req)?;
        check_size(&self.id, token, self.max_token_bytes)?;
        let key = self.cache.as_ref().map(|_| token_key(token));
        if let (Some(cache), Some(key)) = (&self.cache, &key)
            && let Some(principal) = cache.get(key, self.leeway)
        {
            return Ok(Verified::Principal(principal));
        }
        let (alg, kid) = self.header(token)?;
        let keys = self.keys.load();
        let Some(keys) = keys.as_ref().filter(|k| k.age() < self.jwks_ttl) else {
            return Ok(Verified::NeedsKeys(token));
        };
        match keys.find(kid.as_deref(), alg) {
            KeyLookup::Found(verifying) => self
                .verify(token, key, alg, verifying)
                .map(Verified::Principal),
            KeyLookup::UnknownKid => Ok(Verified::NeedsKeys(token)),
            KeyLookup::NoKeyForAlg => Err(self.no_key_for(alg)),
        }
    }

    /// Verifies `token` after fetching the keys (rate limited, see the module comment).
    pub(crate) async fn authenticate_fetching(
        &self,
        token: &str,
    ) -> Result<Arc<Principal>, AuthnError> {
        let (alg, kid) = self.header(token)?;
        let keys = self.refreshed_keys().await?;
        match keys.find(kid.as_deref(), alg) {
            KeyLookup::Found(verifying) => {
                let key = self.cache.as_ref().map(|_| token_key(token));
                self.verify(token, key, alg, verifying)
            }
            KeyLookup::UnknownKid => Err(self.fail(format!(
                "no key `{}` in the provider's key set",
                untrusted(kid.as_deref().unwrap_or_default(), 64)
            ))),
            KeyLookup::NoKeyForAlg => Err(self.no_key_for(alg)),
        }
    }

    fn no_key_for(&self, alg: Algorithm) -> AuthnError {
        self.fail(format!(
            "no key of the provider's key set verifies {alg:?} for this token"
        ))
    }

    /// The token's algorithm (accepted by the configuration) and `kid`.
    fn header(&self, token: &str) -> Result<(Algorithm, Option<String>), AuthnError> {
        use base64::Engine as _;
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(self.fail("not a JWT: a signed JWT has three `.`-separated parts"));
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| self.fail("not a JWT: the header is not base64url"))?;
        let header: RawHeader = serde_json::from_slice(&bytes)
            .map_err(|_| self.fail("not a JWT: the header is not a JSON object with `alg`"))?;
        // RFC 7515 §4.1.11: an extension heimdall does not implement must not be ignored.
        if header.crit.is_some() {
            return Err(self.fail("the header has `crit` extensions, which are not supported"));
        }
        let alg = header
            .alg
            .parse::<Algorithm>()
            .ok()
            .filter(|alg| self.validations.iter().any(|(a, _)| a == alg))
            .ok_or_else(|| {
                self.fail(format!(
                    "algorithm `{}` is not accepted",
                    untrusted(&header.alg, 16)
                ))
            })?;
        Ok((alg, header.kid))
    }

    /// Checks the signature and the claims, maps them to the principal and caches it.
    fn verify(
        &self,
        token: &str,
        cache_key: Option<[u8; 32]>,
        alg: Algorithm,
        verifying: &VerifyingKey,
    ) -> Result<Arc<Principal>, AuthnError> {
        let validation = self
            .validations
            .iter()
            .find_map(|(a, v)| (*a == alg).then_some(v))
            .ok_or_else(|| self.fail(format!("algorithm {alg:?} is not accepted")))?;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &verifying.key, validation)
            .map_err(|e| self.fail(reason(&e)))?
            .claims;
        if let Some(missing) = self
            .required_claims
            .iter()
            .find(|c| claims.get(&***c).is_none_or(Value::is_null))
        {
            return Err(self.fail(format!("the token has no `{missing}` claim")));
        }
        let principal =
            Arc::new(principal(&self.id, &self.mapping, &claims).map_err(|m| self.fail(m))?);
        if let (Some(cache), Some(key)) = (&self.cache, cache_key) {
            cache.insert(key, Arc::clone(&principal));
        }
        Ok(principal)
    }

    /// The key set after a refresh, or the current one when another request refreshed it
    /// meanwhile, or when the last fetch is less than `min_refresh_interval` ago.
    async fn refreshed_keys(&self) -> Result<Arc<KeySet>, AuthnError> {
        let seen = self.keys.load_full();
        let mut state = self.refresh.lock().await;
        let current = self.keys.load_full();
        let usable = |set: &Arc<KeySet>| set.age() < self.jwks_ttl * STALE_GRACE_FACTOR;
        if let Some(set) = &current {
            let replaced = seen.as_ref().is_none_or(|s| !Arc::ptr_eq(s, set));
            if replaced && set.age() < self.jwks_ttl {
                return Ok(Arc::clone(set));
            }
        }
        if state
            .last_attempt
            .is_some_and(|at| at.elapsed() < self.min_refresh_interval)
        {
            return match current.filter(usable) {
                Some(set) => Ok(set),
                None => Err(self.unavailable(
                    state
                        .last_error
                        .as_deref()
                        .unwrap_or("the last fetch is too recent to fetch again"),
                )),
            };
        }
        state.last_attempt = Some(Instant::now());
        let fetched = tokio::time::timeout(self.http.timeout(), self.fetch(&mut state))
            .await
            .unwrap_or_else(|_| Err(format!("no key set within {:?}", self.http.timeout())));
        match fetched {
            Ok(set) => {
                self.metrics.jwks_fetch(&self.id, "ok");
                state.last_error = None;
                let set = Arc::new(set);
                self.keys.store(Some(Arc::clone(&set)));
                Ok(set)
            }
            Err(error) => {
                self.metrics.jwks_fetch(&self.id, "error");
                tracing::warn!(mechanism = &*self.id, %error, "fetching the provider's keys failed");
                let result = match current.filter(usable) {
                    // Keys fetched recently stay in use while the provider is unreachable.
                    Some(set) => Ok(set),
                    None => Err(self.unavailable(&error)),
                };
                state.last_error = Some(error);
                result
            }
        }
    }

    async fn fetch(&self, state: &mut RefreshState) -> Result<KeySet, String> {
        let url = match (&self.source, &state.discovered) {
            (KeySource::Url(url), _) => url.to_string(),
            (KeySource::Discovery, Some(url)) => url.clone(),
            (KeySource::Discovery, None) => {
                let url = discover(&self.http, &self.issuer, "jwks_uri").await?;
                state.discovered = Some(url.clone());
                url
            }
        };
        let answer = get_json(&self.http, "the JWKS endpoint", &url).await;
        if answer.is_err() {
            // The provider may have moved its keys: discover again next time.
            state.discovered = None;
        }
        KeySet::parse(&answer?)
    }
}

/// The accepted algorithms; `none` and HMAC are refused (keys come from a public set: an HMAC
/// "secret" would be public key bytes anyone can sign with).
fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, BuildError> {
    if names.is_empty() {
        return Err(BuildError::Invalid(
            "`algorithms` must name at least one".into(),
        ));
    }
    names
        .iter()
        .map(|name| {
            let refused = |why: &str| {
                BuildError::Invalid(format!("`algorithms`: `{name}` is refused: {why}").into())
            };
            if name.eq_ignore_ascii_case("none") {
                return Err(refused("unsigned tokens are never accepted"));
            }
            let alg = name.parse::<Algorithm>().map_err(|_| {
                refused("not a known signature algorithm (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)")
            })?;
            if alg.family() == AlgorithmFamily::Hmac {
                return Err(refused(
                    "HMAC needs a shared secret, and the keys come from a public key set",
                ));
            }
            Ok(alg)
        })
        .collect()
}

/// A precise reason for a refused token, never quoting it.
fn reason(error: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as E;
    match error.kind() {
        E::InvalidSignature => "the signature does not verify".into(),
        E::ExpiredSignature => "the token has expired (`exp`)".into(),
        E::ImmatureSignature => "the token is not valid yet (`nbf`)".into(),
        E::InvalidIssuer => "`iss` is not the configured issuer".into(),
        E::InvalidAudience => "`aud` names none of the accepted audiences".into(),
        E::MissingRequiredClaim(claim) => {
            format!("the token has no `{}` claim", untrusted(claim, 32))
        }
        E::InvalidClaimFormat(claim) => {
            format!("the `{}` claim has the wrong type", untrusted(claim, 32))
        }
        E::InvalidAlgorithm => "the algorithm does not match the key".into(),
        E::Base64(_) => "not a JWT: a part is not base64url".into(),
        E::Json(_) | E::Utf8(_) => "not a JWT: the claims are not a JSON object".into(),
        _ => "the token does not verify".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn build(yaml: &str) -> Result<JwtAuthenticator, BuildError> {
        let config: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).unwrap();
        let crate::config::mechanisms::AuthenticatorSpec::Jwt(cfg) =
            crate::config::mechanisms::parse("jwt", &config).unwrap()
        else {
            unreachable!()
        };
        let keys = Arc::new(crate::tokens::Keyring::default());
        crate::mechanisms::with_test_context(&keys, &Default::default(), |ctx| {
            JwtAuthenticator::new(&Arc::from("idp"), cfg, ctx)
        })
    }

    #[test]
    fn refused_at_load_with_the_field_named() {
        let ok = "issuer: 'http://idp'\naudience: [api]\n";
        assert!(build(ok).is_ok());
        for (yaml, needle) in [
            ("audience: [api]".to_owned(), "needs `issuer`"),
            (
                "{jwks_url: 'http://idp/keys', audience: [api]}".to_owned(),
                "`issuer` is required with `jwks_url`",
            ),
            ("issuer: 'http://idp'".to_owned(), "`audience` must name"),
            (
                format!("{ok}algorithms: [RS256, none]"),
                "`none` is refused",
            ),
            (format!("{ok}algorithms: [HS256]"), "`HS256` is refused"),
            (format!("{ok}sources: []"), "`sources`"),
            (format!("{ok}leeway: 1h"), "`leeway`"),
            (format!("{ok}timeout: 200ms"), "below server.check_timeout"),
            (format!("{ok}max_token_bytes: 0"), "`max_token_bytes`"),
            (
                format!("{ok}min_refresh_interval: 1h"),
                "`min_refresh_interval`",
            ),
            (
                format!("{ok}jwks_url: 'file:///etc/keys'"),
                "`jwks_url` must be an http",
            ),
        ] {
            let err = build(&yaml).err().unwrap().to_string();
            assert!(err.contains(needle), "{yaml}: {err}");
        }
        let unknown =
            crate::config::mechanisms::parse::<crate::config::mechanisms::AuthenticatorSpec>(
                "jwt",
                &serde_yaml_ng::from_str("{issuer: x, audiences: [a]}").unwrap(),
            )
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("unknown field `audiences`"), "{unknown}");
    }

    #[test]
    fn none_and_hmac_are_refused_at_load() {
        for (names, needle) in [
            (vec!["RS256", "none"], "`none` is refused"),
            (vec!["HS256"], "`HS256` is refused: HMAC"),
            (vec!["RS1"], "`RS1` is refused: not a known"),
            (vec![], "at least one"),
        ] {
            let names: Vec<String> = names.into_iter().map(String::from).collect();
            let err = parse_algorithms(&names).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        assert_eq!(
            parse_algorithms(&["ES256".into(), "EdDSA".into()]).unwrap(),
            [Algorithm::ES256, Algorithm::EdDSA]
        );
    }

    fn rsa_jwk(extra: Value) -> Value {
        // A 512-bit modulus is enough to parse; nothing is verified with it here.
        let mut jwk = json!({
            "kty": "RSA", "kid": "r1",
            "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw",
            "e": "AQAB"
        });
        jwk.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        jwk
    }

    #[test]
    fn a_key_verifies_only_its_own_family_alg_and_curve() {
        let (_, rsa) = VerifyingKey::from_jwk(&rsa_jwk(json!({}))).unwrap();
        assert!(rsa.accepts(Algorithm::RS256) && rsa.accepts(Algorithm::PS256));
        assert!(!rsa.accepts(Algorithm::HS256) && !rsa.accepts(Algorithm::ES256));
        let (_, pinned) = VerifyingKey::from_jwk(&rsa_jwk(json!({"alg": "RS256"}))).unwrap();
        assert!(pinned.accepts(Algorithm::RS256) && !pinned.accepts(Algorithm::PS256));
        let ec = json!({"kty": "EC", "crv": "P-256", "kid": "e1",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
        let (_, ec) = VerifyingKey::from_jwk(&ec).unwrap();
        assert!(ec.accepts(Algorithm::ES256) && !ec.accepts(Algorithm::ES384));
        assert!(!ec.accepts(Algorithm::RS256));
    }

    #[test]
    fn symmetric_encryption_and_mismatched_keys_are_skipped() {
        let oct = json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h"});
        assert!(VerifyingKey::from_jwk(&oct).is_none());
        assert!(VerifyingKey::from_jwk(&rsa_jwk(json!({"use": "enc"}))).is_none());
        assert!(VerifyingKey::from_jwk(&rsa_jwk(json!({"alg": "ES256"}))).is_none());
        assert!(VerifyingKey::from_jwk(&rsa_jwk(json!({"alg": "RSA-OAEP"}))).is_none());
        let set = KeySet::parse(
            json!({"keys": [oct, rsa_jwk(json!({}))]})
                .as_object()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(set.all.len(), 1);
        assert!(matches!(
            set.find(Some("r1"), Algorithm::RS256),
            KeyLookup::Found(_)
        ));
        assert!(matches!(
            set.find(Some("h"), Algorithm::HS256),
            KeyLookup::UnknownKid
        ));
        assert!(matches!(
            set.find(Some("r1"), Algorithm::ES256),
            KeyLookup::NoKeyForAlg
        ));
        assert!(matches!(
            set.find(None, Algorithm::PS256),
            KeyLookup::Found(_)
        ));
        let only_oct = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]});
        assert!(KeySet::parse(only_oct.as_object().unwrap()).is_err());
    }
}
