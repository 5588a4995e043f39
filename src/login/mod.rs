//! OpenID Connect login: heimdall as a relying party that turns a provider's login into its own
//! PASETO access token (the one the `paseto` authenticator accepts) and a refresh token that is a
//! sealed envelope around the provider's. Nothing is stored server-side:
//!
//! - a started login lives in a short-lived, encrypted, `HttpOnly` cookie named after its
//!   `state`, holding the state, the nonce, the PKCE verifier and where to go back to, so
//!   parallel logins in several tabs never overwrite each other;
//! - a session is the access token (a cookie for browsers) plus the refresh envelope.
//!
//! Both sealed values are PASETO v4.local under heimdall's local key, bound to their purpose by
//! an implicit assertion, so neither opens as the other nor as an access token. The HTTP side is
//! `http::login`; this module holds the protocol.

pub mod config;
mod provider;
pub mod redirects;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use openidconnect::core::{CoreAuthenticationFlow, CoreGenderClaim};
use openidconnect::url::Url;
use openidconnect::{
    AuthorizationCode, CsrfToken, EmptyAdditionalClaims, IdTokenClaims, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RefreshToken, RequestTokenError, Scope, TokenResponse,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use config::{
    ClaimMapping, ClaimMappingError, CookieConfig, LOGIN_ENV_VARS, LoginConfig, MappedClaims,
};
use provider::{Discovery, HttpError, Provider, error_chain};
pub use redirects::AllowList;

use crate::tokens::{Audience, Claims, Keyring, Purpose};

/// The implicit assertion of a sealed login state.
const STATE_CONTEXT: &[u8] = b"heimdall/login-state/v1";
/// The implicit assertion of a sealed refresh envelope.
const REFRESH_CONTEXT: &[u8] = b"heimdall/refresh/v1";
/// The largest sealed value opened (a refresh envelope carries the provider's refresh token
/// and the principal's roles and attributes).
const MAX_SEALED_BYTES: usize = 16 * 1024;
/// The prefix of a login-state cookie's name; the rest is taken from the state.
pub const STATE_COOKIE_PREFIX: &str = "heimdall_login_";

/// Why a login, refresh or logout failed, and the status that says so.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoginError {
    /// The request itself is wrong (400).
    #[error("{0}")]
    BadRequest(Cow<'static, str>),
    /// The login or refresh is refused: state, nonce, ID token, or the provider said no (401).
    #[error("{0}")]
    Refused(String),
    /// The provider failed or answered something unusable (502).
    #[error("the OpenID provider failed ({operation}): {message}")]
    Provider {
        operation: &'static str,
        message: String,
    },
    /// The provider did not answer in time (504).
    #[error("the OpenID provider did not answer in time ({operation}, {after:?})")]
    Timeout {
        operation: &'static str,
        after: Duration,
    },
}

impl LoginError {
    fn provider(operation: &'static str, message: impl Into<String>) -> Self {
        Self::Provider {
            operation,
            message: crate::redact::untrusted(&message.into(), 300),
        }
    }

    fn from_http(operation: &'static str, error: HttpError) -> Self {
        match error {
            HttpError::Timeout(after) => Self::Timeout { operation, after },
            other => Self::provider(operation, other.to_string()),
        }
    }

    fn bad_request(message: &'static str) -> Self {
        Self::BadRequest(Cow::Borrowed(message))
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Refused(_) => 401,
            Self::Provider { .. } => 502,
            Self::Timeout { .. } => 504,
        }
    }

    fn outcome(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Refused(_) => "refused",
            Self::Provider { .. } => "provider_error",
            Self::Timeout { .. } => "provider_timeout",
        }
    }
}

/// What a started login hands the browser: where to go and the cookie that remembers it.
#[derive(Debug)]
pub struct Started {
    pub authorization_url: Url,
    pub cookie_name: String,
    pub cookie_value: String,
}

/// A session: heimdall's access token, its lifetime, and the refresh envelope.
#[derive(Debug, Clone)]
pub struct Issued {
    pub access_token: String,
    pub expires_in: u64,
    pub refresh_token: Option<String>,
    pub refresh_expires_in: u64,
}

/// A finished login: the session and where the browser goes next (`None`: a JSON client).
#[derive(Debug)]
pub struct LoggedIn {
    pub session: Issued,
    pub redirect: Option<Url>,
}

/// A finished logout.
#[derive(Debug)]
pub struct LoggedOut {
    /// The provider's end-session URL to send the browser to, when it has one.
    pub end_session: Option<Url>,
    /// Whether the provider's refresh token was revoked (false: no envelope, no revocation
    /// endpoint, or the provider failed — the cookies are cleared either way).
    pub revoked: bool,
    /// The subject of the envelope, when one came (for a "log out everywhere" event).
    pub subject: Option<String>,
}

/// A started login, sealed into its cookie.
#[derive(Serialize, Deserialize)]
struct LoginState {
    state: String,
    nonce: String,
    verifier: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    redirect: Option<String>,
    /// Unix seconds after which the callback is refused.
    exp: i64,
}

/// The refresh envelope: the provider's refresh token and the principal minted from it.
#[derive(Serialize, Deserialize)]
struct Envelope {
    rt: String,
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    attr: serde_json::Map<String, serde_json::Value>,
    exp: i64,
}

// The principal a login or refresh mints a token for.
use config::MappedClaims as Identity;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoginLabels {
    endpoint: &'static str,
    outcome: &'static str,
}

/// The claims of the access tokens a login mints.
#[derive(Debug, Clone)]
pub struct Minted {
    pub issuer: String,
    pub audience: Option<String>,
    pub ttl: Duration,
}

/// The login service.
pub struct Login {
    config: LoginConfig,
    discovery: Discovery,
    allow: AllowList,
    /// Mints access tokens.
    keys: Arc<Keyring>,
    /// Seals login states and refresh envelopes: the key ring's local key, or an ephemeral
    /// one when it has none.
    sealing: Arc<Keyring>,
    issuer: String,
    audience: Option<String>,
    ttl: Duration,
    purpose: Purpose,
    scopes: Vec<Scope>,
    /// Publishes "log out everywhere" (`principal.revoked`), when NATS is configured.
    revocations: Option<Arc<crate::attributes::PrincipalStore>>,
    /// Refreshes in flight and just answered, by hash of the envelope.
    refreshes: moka::future::Cache<[u8; 32], Arc<Issued>>,
    requests: Family<LoginLabels, Counter>,
}

impl Login {
    /// Builds the login service; `client_secret` is already read from its source, `minted`
    /// is what minted tokens say (`tokens.issuer`, `tokens.audience`, `tokens.ttl`).
    pub fn new(
        config: LoginConfig,
        client_secret: Option<String>,
        keys: Arc<Keyring>,
        minted: Minted,
        revocations: Option<Arc<crate::attributes::PrincipalStore>>,
        registry: &mut Registry,
    ) -> anyhow::Result<Self> {
        let purpose = keys
            .default_mint_purpose()
            .ok_or_else(|| anyhow::anyhow!("login needs a key that mints tokens"))?;
        let sealing = if keys.can_mint(Purpose::Local) {
            Arc::clone(&keys)
        } else {
            tracing::warn!(
                "login state and refresh tokens are sealed with a key that dies with this process: \
                 configure a k4.local key (PASETO_SYMMETRIC_KEY or tokens.keys) so that restarts \
                 and replicas share it"
            );
            let mut ephemeral = Keyring::default();
            ephemeral.add_raw_symmetric(&rand::random::<[u8; 32]>())?;
            Arc::new(ephemeral)
        };
        let allow = AllowList::new(&config.allowed_redirects, &config.redirect_url)
            .map_err(|e| anyhow::anyhow!("login.allowed_redirects: {e}"))?;
        if allow.is_empty() {
            tracing::warn!(
                "login.allowed_redirects is empty: browser logins cannot return anywhere; only \
                 JSON clients (no redirect_uri) can log in"
            );
        }
        let discovery = Discovery::new(
            &config.issuer_url,
            &config.client_id,
            client_secret,
            &config.redirect_url,
            config.timeout,
            config.metadata_ttl,
        )?;
        let mut scopes: Vec<Scope> = config
            .scopes
            .iter()
            .filter(|s| s.as_str() != "openid")
            .map(|s| Scope::new(s.clone()))
            .collect();
        scopes.dedup();
        let requests = Family::<LoginLabels, Counter>::default();
        registry.register(
            "heimdall_login_requests",
            "Login, callback, refresh and logout requests by outcome (ok, bad_request, refused, provider_error, provider_timeout)",
            requests.clone(),
        );
        let refreshes = moka::future::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(config.refresh_grace.max(Duration::from_millis(1)))
            .build();
        Ok(Self {
            discovery,
            allow,
            keys,
            sealing,
            issuer: minted.issuer,
            audience: minted.audience,
            ttl: minted.ttl,
            purpose,
            scopes,
            refreshes,
            requests,
            revocations,
            config,
        })
    }

    pub fn config(&self) -> &LoginConfig {
        &self.config
    }

    /// Counts one request's outcome.
    pub fn count<T>(&self, endpoint: &'static str, result: &Result<T, LoginError>) {
        let outcome = result.as_ref().map_or_else(LoginError::outcome, |_| "ok");
        self.requests
            .get_or_create(&LoginLabels { endpoint, outcome })
            .inc();
    }

    /// Reads the provider's metadata once, so that the first login does not wait for it and
    /// a misconfiguration shows at startup.
    pub async fn warm_up(&self) {
        if let Err(error) = self.discovery.provider().await {
            tracing::warn!(%error, "OpenID provider discovery failed; logins retry it");
        }
    }

    /// Checks a `redirect_uri` against the allow-list.
    pub fn check_redirect(&self, raw: &str) -> Result<Url, LoginError> {
        self.allow.check(raw).map_err(LoginError::bad_request)
    }

    /// Starts a login: the provider's authorization URL (code flow, PKCE S256, state, nonce)
    /// and the sealed cookie that remembers them. `redirect` is where the browser returns
    /// after the callback; `None` makes the callback answer JSON.
    pub async fn start(&self, redirect: Option<&str>) -> Result<Started, LoginError> {
        let redirect = redirect.map(|r| self.check_redirect(r)).transpose()?;
        let provider = self.discovery.provider().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = provider
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scopes(self.scopes.iter().cloned())
            .set_pkce_challenge(challenge)
            .url();
        let exp = OffsetDateTime::now_utc().unix_timestamp()
            + i64::try_from(self.config.login_ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let sealed = LoginState {
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            verifier: verifier.secret().clone(),
            redirect: redirect.map(String::from),
            exp,
        };
        let payload = serde_json::to_vec(&sealed)
            .map_err(|e| LoginError::provider("login", e.to_string()))?;
        let cookie_value = self
            .sealing
            .seal(STATE_CONTEXT, &payload)
            .map_err(|e| LoginError::provider("login", e.to_string()))?;
        let cookie_name = state_cookie_name(state.secret())
            .ok_or_else(|| LoginError::provider("login", "generated state is not URL-safe"))?;
        Ok(Started {
            authorization_url: url,
            cookie_name,
            cookie_value,
        })
    }

    /// Finishes a login: checks `state` against the sealed cookie, exchanges the code (with
    /// the PKCE verifier), verifies the ID token (signature against the provider's keys,
    /// `iss`, `aud`, `azp`, `exp`, `nonce`), maps its claims and mints the session.
    pub async fn callback(
        &self,
        code: &str,
        state: &str,
        sealed_state: &str,
    ) -> Result<LoggedIn, LoginError> {
        let payload = self
            .sealing
            .unseal(STATE_CONTEXT, sealed_state, MAX_SEALED_BYTES)
            .map_err(|_| {
                LoginError::bad_request(
                    "the login cookie is not valid (tampered with, or sealed with another key)",
                )
            })?;
        let login: LoginState = serde_json::from_slice(&payload)
            .map_err(|_| LoginError::bad_request("the login cookie is not valid"))?;
        if !constant_time_eq(login.state.as_bytes(), state.as_bytes()) {
            return Err(LoginError::bad_request(
                "`state` does not match the login this browser started",
            ));
        }
        if OffsetDateTime::now_utc().unix_timestamp() > login.exp {
            return Err(LoginError::bad_request(
                "the login took longer than login.login_ttl; start again",
            ));
        }
        if code.is_empty() {
            return Err(LoginError::bad_request("`code` is missing"));
        }
        let provider = self.discovery.provider().await?;
        let response = provider
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| LoginError::provider("token", e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(login.verifier))
            .request_async(&self.discovery.http)
            .await
            .map_err(|e| token_error("the authorization code", e))?;
        let id_token = response
            .id_token()
            .ok_or_else(|| LoginError::provider("token", "the answer has no id_token"))?;
        let nonce = Nonce::new(login.nonce);
        let (provider, claims) = match verify(&provider, id_token, &nonce) {
            Ok(claims) => (provider, claims),
            Err(first) => match self.discovery.rediscover().await? {
                // The provider may have rotated its keys since the metadata was read.
                Some(fresh) => {
                    let claims = verify(&fresh, id_token, &nonce)?;
                    (fresh, claims)
                }
                None => return Err(first),
            },
        };
        let raw = raw_claims(&id_token.to_string())?;
        let identity = self
            .identity(
                &provider,
                claims.subject().as_str(),
                raw,
                response.access_token().secret(),
            )
            .await?;
        let refresh = response.refresh_token().map(|t| t.secret().as_str());
        let session_exp = OffsetDateTime::now_utc().unix_timestamp()
            + i64::try_from(self.config.session_ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let session = self.issue(&identity, refresh, session_exp)?;
        let redirect = login
            .redirect
            .map(|r| {
                Url::parse(&r).map_err(|_| LoginError::bad_request("the login cookie is not valid"))
            })
            .transpose()?;
        Ok(LoggedIn { session, redirect })
    }

    /// Exchanges a refresh envelope for a new session. Concurrent refreshes of one envelope
    /// share one call to the provider, and its answer is handed to refreshes of the same
    /// envelope for `refresh_grace` after it, so a provider that rotates refresh tokens does
    /// not fail all but the first.
    pub async fn refresh(&self, envelope: &str) -> Result<Arc<Issued>, LoginError> {
        let key = *blake3::hash(envelope.as_bytes()).as_bytes();
        let issued = self
            .refreshes
            .try_get_with(key, self.refresh_once(envelope))
            .await
            .map_err(|e| (*e).clone())?;
        if self.config.refresh_grace.is_zero() {
            self.refreshes.invalidate(&key).await;
        }
        Ok(issued)
    }

    async fn refresh_once(&self, sealed: &str) -> Result<Arc<Issued>, LoginError> {
        let envelope = self.open_envelope(sealed)?;
        let provider = self.discovery.provider().await?;
        let token = RefreshToken::new(envelope.rt.clone());
        let response = provider
            .client
            .exchange_refresh_token(&token)
            .map_err(|e| LoginError::provider("token", e.to_string()))?
            .request_async(&self.discovery.http)
            .await
            .map_err(|e| token_error("the refresh token", e))?;
        let identity = match response.id_token() {
            Some(id_token) => {
                // A refreshed ID token carries no nonce (OpenID Connect Core §12.2).
                let verifier = provider.client.id_token_verifier();
                let claims = id_token
                    .claims(&verifier, |_: Option<&Nonce>| Ok(()))
                    .map_err(|e| {
                        LoginError::Refused(format!(
                            "the refreshed ID token is not valid: {}",
                            error_chain(&e)
                        ))
                    })?;
                if claims.subject().as_str() != envelope.sub {
                    return Err(LoginError::Refused(
                        "the refreshed ID token names another subject".into(),
                    ));
                }
                let raw = raw_claims(&id_token.to_string())?;
                self.identity(
                    &provider,
                    &envelope.sub,
                    raw,
                    response.access_token().secret(),
                )
                .await?
            }
            None => Identity {
                subject: envelope.sub.clone(),
                roles: envelope.roles.clone(),
                attributes: envelope.attr.clone(),
            },
        };
        // A provider that does not rotate keeps the refresh token it had.
        let refresh = response
            .refresh_token()
            .map_or(envelope.rt.as_str(), |t| t.secret().as_str());
        self.issue(&identity, Some(refresh), envelope.exp)
            .map(Arc::new)
    }

    /// Ends a session: revokes the provider's refresh token when it supports revocation and
    /// an envelope came, and names the provider's end-session URL. `everywhere` also publishes
    /// `principal.revoked` for the envelope's subject, so every replica refuses the access
    /// tokens issued to it so far.
    pub async fn logout(
        &self,
        envelope: Option<&str>,
        post_logout_redirect: Option<&str>,
        everywhere: bool,
    ) -> Result<LoggedOut, LoginError> {
        let post_logout = post_logout_redirect
            .or(self.config.post_logout_redirect.as_deref())
            .map(|r| self.check_redirect(r))
            .transpose()?;
        // An unreadable envelope still logs out: the cookies go either way.
        let envelope = envelope.and_then(|e| self.open_envelope(e).ok());
        if everywhere {
            let store = self.revocations.as_ref().ok_or_else(|| {
                LoginError::bad_request(
                    "logging out everywhere needs NATS (the `nats` section): it is the \
                     `principal.revoked` event",
                )
            })?;
            let subject = envelope.as_ref().map(|e| e.sub.as_str()).ok_or_else(|| {
                LoginError::bad_request(
                    "logging out everywhere needs a valid refresh token: it names who to log out",
                )
            })?;
            store
                .publish_revocation(subject, self.config.timeout)
                .await
                .map_err(|message| LoginError::Provider {
                    operation: "principal.revoked",
                    message,
                })?;
            tracing::info!(
                principal = %crate::redact::untrusted(subject, 128),
                "logged out everywhere: principal.revoked published"
            );
        }
        let provider = self.discovery.provider().await?;
        let mut revoked = false;
        if let (Some(envelope), Some(url)) = (&envelope, &provider.revocation) {
            match self
                .discovery
                .http
                .revoke(
                    url,
                    self.discovery.client_id(),
                    self.discovery.client_secret(),
                    &envelope.rt,
                )
                .await
            {
                Ok(()) => revoked = true,
                Err(error) => tracing::warn!(%error, "refresh token not revoked at logout"),
            }
        }
        let end_session = provider.end_session.clone().map(|mut url| {
            {
                let mut query = url.query_pairs_mut();
                query.append_pair("client_id", self.discovery.client_id());
                if let Some(to) = &post_logout {
                    query.append_pair("post_logout_redirect_uri", to.as_str());
                }
            }
            url
        });
        Ok(LoggedOut {
            end_session,
            revoked,
            subject: envelope.map(|e| e.sub),
        })
    }

    fn open_envelope(&self, sealed: &str) -> Result<Envelope, LoginError> {
        let refused = || LoginError::Refused("the refresh token is not valid".into());
        let payload = self
            .sealing
            .unseal(REFRESH_CONTEXT, sealed.trim(), MAX_SEALED_BYTES)
            .map_err(|_| refused())?;
        let envelope: Envelope = serde_json::from_slice(&payload).map_err(|_| refused())?;
        if OffsetDateTime::now_utc().unix_timestamp() > envelope.exp {
            return Err(LoginError::Refused(
                "the refresh token has expired (login.session_ttl); log in again".into(),
            ));
        }
        Ok(envelope)
    }

    /// The principal from the ID token's claims, merged with userinfo's when configured.
    async fn identity(
        &self,
        provider: &Provider,
        verified_subject: &str,
        mut claims: serde_json::Map<String, serde_json::Value>,
        access_token: &str,
    ) -> Result<Identity, LoginError> {
        if self.config.userinfo {
            let url = provider.userinfo.as_ref().ok_or_else(|| {
                LoginError::provider(
                    "userinfo",
                    "login.userinfo is on but the provider has no userinfo endpoint",
                )
            })?;
            let info = self.discovery.http.get_json(url, access_token).await?;
            // OpenID Connect Core §5.3.2: userinfo's `sub` must be the ID token's.
            if info.get("sub").and_then(|s| s.as_str()) != Some(verified_subject) {
                return Err(LoginError::provider(
                    "userinfo",
                    "its `sub` is not the ID token's",
                ));
            }
            claims.extend(info);
        }
        map_claims(&self.config.claims, &claims)
    }

    /// Mints the access token and seals the refresh envelope.
    fn issue(
        &self,
        identity: &Identity,
        provider_refresh: Option<&str>,
        session_exp: i64,
    ) -> Result<Issued, LoginError> {
        let mut claims = Claims::new(&identity.subject, &self.issuer, self.ttl);
        if let Some(aud) = &self.audience {
            claims.aud = Audience::One(aud.clone());
        }
        claims.roles = identity.roles.clone();
        claims.attr = identity.attributes.clone();
        let access_token = self
            .keys
            .mint(self.purpose, &claims)
            .map_err(|e| LoginError::provider("mint", e.to_string()))?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let refresh_token = provider_refresh
            .map(|rt| {
                let envelope = Envelope {
                    rt: rt.to_owned(),
                    sub: identity.subject.clone(),
                    roles: identity.roles.clone(),
                    attr: identity.attributes.clone(),
                    exp: session_exp,
                };
                let payload = serde_json::to_vec(&envelope)
                    .map_err(|e| LoginError::provider("mint", e.to_string()))?;
                self.sealing
                    .seal(REFRESH_CONTEXT, &payload)
                    .map_err(|e| LoginError::provider("mint", e.to_string()))
            })
            .transpose()?;
        Ok(Issued {
            access_token,
            expires_in: self.ttl.as_secs(),
            refresh_token,
            refresh_expires_in: u64::try_from(session_exp.saturating_sub(now)).unwrap_or(0),
        })
    }
}

/// The cookie name of a login's state: the prefix and up to 16 characters of the state, which
/// must be URL-safe base64 (what heimdall generates). `None` for anything else, so a forged
/// `state` never shapes a header.
pub fn state_cookie_name(state: &str) -> Option<String> {
    if state.is_empty()
        || state.len() > 128
        || !state
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    Some(format!(
        "{STATE_COOKIE_PREFIX}{}",
        state.get(..16).unwrap_or(state)
    ))
}

fn verify(
    provider: &Provider,
    id_token: &openidconnect::core::CoreIdToken,
    nonce: &Nonce,
) -> Result<IdTokenClaims<EmptyAdditionalClaims, CoreGenderClaim>, LoginError> {
    let verifier = provider.client.id_token_verifier();
    id_token
        .claims(&verifier, nonce)
        .cloned()
        .map_err(|e| LoginError::Refused(format!("the ID token is not valid: {}", error_chain(&e))))
}

/// The (already verified) ID token's payload as a JSON object, for the claims the mapping
/// names beyond the standard ones.
fn raw_claims(jwt: &str) -> Result<serde_json::Map<String, serde_json::Value>, LoginError> {
    use base64::Engine as _;
    let payload = jwt
        .split('.')
        .nth(1)
        .ok_or_else(|| LoginError::provider("token", "the ID token is not a JWS"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| LoginError::provider("token", "the ID token payload is not base64url"))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| LoginError::provider("token", "the ID token payload is not a JSON object"))
}

/// Applies the claim mapping to an ID token's (and userinfo's) claims.
fn map_claims(
    mapping: &ClaimMapping,
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Result<Identity, LoginError> {
    mapping.map(claims).map_err(|e| {
        let field = match e {
            ClaimMappingError::NoSubject(_) => "subject",
            ClaimMappingError::NotRoles(_) => "roles",
        };
        LoginError::Refused(format!("the ID token {e} (login.claims.{field})"))
    })
}

/// A failed token request: the provider's refusal is a refused login (401); anything else is
/// the provider failing (502/504).
fn token_error<E: openidconnect::ErrorResponse + 'static>(
    what: &str,
    error: RequestTokenError<HttpError, E>,
) -> LoginError {
    match error {
        RequestTokenError::ServerResponse(response) => LoginError::Refused(format!(
            "the provider refused {what}: {}",
            crate::redact::untrusted(&response.to_string(), 300)
        )),
        RequestTokenError::Request(http) => LoginError::from_http("token", http),
        RequestTokenError::Parse(e, _) => {
            LoginError::provider("token", format!("the answer is not a token response: {e}"))
        }
        RequestTokenError::Other(message) => LoginError::provider("token", message),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_map_to_subject_roles_and_attributes() {
        let claims = serde_json::json!({
            "sub": "alice", "roles": ["user", "editor", ""], "email": "a@example.com", "x": 1
        });
        let identity = map_claims(&ClaimMapping::default(), claims.as_object().unwrap()).unwrap();
        assert_eq!(identity.subject, "alice");
        assert_eq!(identity.roles, ["user", "editor"]);
        assert_eq!(identity.attributes.get("email").unwrap(), "a@example.com");
        assert!(!identity.attributes.contains_key("x"));

        let spaced = serde_json::json!({"sub": "bob", "roles": "user admin,ops"});
        let identity = map_claims(&ClaimMapping::default(), spaced.as_object().unwrap()).unwrap();
        assert_eq!(identity.roles, ["user", "admin", "ops"]);

        for bad in [
            serde_json::json!({"roles": []}),
            serde_json::json!({"sub": "a", "roles": 5}),
        ] {
            assert!(matches!(
                map_claims(&ClaimMapping::default(), bad.as_object().unwrap()),
                Err(LoginError::Refused(_))
            ));
        }
    }

    #[test]
    fn state_cookie_names_come_only_from_url_safe_states() {
        assert_eq!(
            state_cookie_name("abcDEF0123456789xyz").as_deref(),
            Some("heimdall_login_abcDEF0123456789")
        );
        for bad in ["", "a;b", "a b", "a=b", "é", &"a".repeat(129)] {
            assert_eq!(state_cookie_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sealed_values_open_only_in_their_own_context() {
        let mut keys = Keyring::default();
        keys.add_raw_symmetric(crate::test_helpers::TEST_SYMMETRIC_KEY)
            .unwrap();
        let sealed = keys.seal(STATE_CONTEXT, b"{}").unwrap();
        assert_eq!(keys.unseal(STATE_CONTEXT, &sealed, 1024).unwrap(), b"{}");
        assert!(keys.unseal(REFRESH_CONTEXT, &sealed, 1024).is_err());
        // Nor as an access token.
        assert!(
            keys.open(&sealed, crate::tokens::Accept::Any, 1024)
                .is_err()
        );
        let mut tampered = sealed.clone();
        tampered.replace_range(20..21, if &sealed[20..21] == "A" { "B" } else { "A" });
        assert!(keys.unseal(STATE_CONTEXT, &tampered, 1024).is_err());
    }
}
