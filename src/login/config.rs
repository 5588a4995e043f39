//! The `login` section: which OpenID provider, which client, where browsers may be sent back,
//! how claims become heimdall's principal, and the cookies' settings.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::attributes::Secret;

/// OpenID Connect login on the side port (`/auth/login`, `/auth/callback`, `/auth/refresh`,
/// `/auth/logout`). `OIDC_ISSUER_URL`, `OIDC_CLIENT_ID`, `OIDC_CLIENT_SECRET` and
/// `OIDC_REDIRECT_URL` together turn it on; `LOGIN_ALLOWED_REDIRECTS` sets the allow-list.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginConfig {
    /// The provider's issuer URL (`OIDC_ISSUER_URL`); discovery reads
    /// `<issuer>/.well-known/openid-configuration`.
    pub issuer_url: String,
    /// heimdall's client id at the provider (`OIDC_CLIENT_ID`).
    pub client_id: String,
    /// The client secret as `{env: NAME}` or `{file: PATH}` (`OIDC_CLIENT_SECRET` sets it from
    /// the environment). Absent: a public client, PKCE only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<Secret>,
    /// heimdall's public callback URL as registered at the provider (`OIDC_REDIRECT_URL`), e.g.
    /// `https://app.example.com/auth/callback`.
    pub redirect_url: String,
    /// Where a login may send the browser back to (`LOGIN_ALLOWED_REDIRECTS`, comma-separated):
    /// origins (`https://app.example.com`) or URL prefixes (`https://app.example.com/ui/`). A
    /// relative `redirect_uri` is resolved against `redirect_url`'s origin and checked too.
    #[serde(default)]
    pub allowed_redirects: Vec<String>,
    /// Scopes asked for; `openid` is always added.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Also read the userinfo endpoint and map its claims (they win over the ID token's).
    #[serde(default)]
    pub userinfo: bool,
    #[serde(default)]
    pub claims: ClaimMapping,
    #[serde(default)]
    pub cookies: CookieConfig,
    /// How long a started login may take before its callback is refused.
    #[serde(default = "default_login_ttl", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub login_ttl: Duration,
    /// Lifetime of heimdall's refresh token (the sealed envelope around the provider's). The
    /// provider's own refresh-token lifetime still applies within it.
    #[serde(default = "default_session_ttl", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub session_ttl: Duration,
    /// Deadline of each call to the provider (discovery, token, userinfo, revocation).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// How long a refresh's answer is handed to other refreshes of the same token, so that a
    /// page firing requests at once gets one answer even when the provider rotates refresh
    /// tokens. 0 turns that off (concurrent refreshes still share one call to the provider).
    #[serde(default = "default_refresh_grace", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub refresh_grace: Duration,
    /// How often the provider's metadata and keys are read again.
    #[serde(default = "default_metadata_ttl", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub metadata_ttl: Duration,
    /// Where the provider sends the browser after logout, when the request names none (must
    /// be allowed by `allowed_redirects`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_logout_redirect: Option<String>,
}

fn default_scopes() -> Vec<String> {
    ["openid", "profile", "email", "offline_access"]
        .map(String::from)
        .to_vec()
}

fn default_login_ttl() -> Duration {
    Duration::from_secs(600)
}

fn default_session_ttl() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_refresh_grace() -> Duration {
    Duration::from_secs(30)
}

fn default_metadata_ttl() -> Duration {
    Duration::from_secs(3600)
}

/// Which claims of the ID token (and userinfo) make heimdall's principal.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimMapping {
    /// The claim that becomes the subject id.
    pub subject: String,
    /// The claim holding roles: a list of strings, or one string of space- or comma-separated
    /// roles. Missing: no roles.
    pub roles: String,
    /// Principal attributes (`attr` of the minted token) by name, each from a claim.
    pub attributes: BTreeMap<String, String>,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        Self {
            subject: "sub".into(),
            roles: "roles".into(),
            attributes: BTreeMap::from([("email".to_owned(), "email".to_owned())]),
        }
    }
}

/// A principal's identity, taken from claims by a [`ClaimMapping`].
#[derive(Debug, Clone, PartialEq)]
pub struct MappedClaims {
    pub subject: String,
    pub roles: Vec<String>,
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// Why claims do not map to a principal; the claim named is the configured one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClaimMappingError {
    #[error("has no `{0}` claim to take the subject from")]
    NoSubject(Box<str>),
    #[error("has a `{0}` claim that is neither a list of roles nor a string")]
    NotRoles(Box<str>),
}

impl ClaimMapping {
    /// The subject (a non-empty string or a number), the roles (a list of strings, or one
    /// string of space- or comma-separated roles; none when the claim is absent) and the
    /// configured attributes present among `claims`.
    pub fn map(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<MappedClaims, ClaimMappingError> {
        use serde_json::Value;
        let subject = match claims.get(&self.subject) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(ClaimMappingError::NoSubject(
                    crate::redact::untrusted(&self.subject, 64).into(),
                ));
            }
        };
        let roles = match claims.get(&self.roles) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            Some(Value::String(s)) => s
                .split([' ', ','])
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .collect(),
            Some(_) => {
                return Err(ClaimMappingError::NotRoles(
                    crate::redact::untrusted(&self.roles, 64).into(),
                ));
            }
        };
        let attributes = self
            .attributes
            .iter()
            .filter_map(|(name, claim)| claims.get(claim).map(|v| (name.clone(), v.clone())))
            .collect();
        Ok(MappedClaims {
            subject,
            roles,
            attributes,
        })
    }
}

/// The cookies a browser login sets.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CookieConfig {
    /// The access-token cookie; a `paseto` authenticator reads it with a `cookie` source.
    pub session: String,
    /// The refresh-token cookie, sent only to `/auth/`.
    pub refresh: String,
    /// `Secure` on every cookie. Turn off only for local development over plain HTTP.
    pub secure: bool,
    /// `Domain` of the session cookies (default: none, the host only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

impl Default for CookieConfig {
    fn default() -> Self {
        Self {
            session: "heimdall_session".into(),
            refresh: "heimdall_refresh".into(),
            secure: true,
            domain: None,
        }
    }
}

/// The environment variables of the login section.
pub const LOGIN_ENV_VARS: [&str; 5] = [
    "OIDC_ISSUER_URL",
    "OIDC_CLIENT_ID",
    "OIDC_CLIENT_SECRET",
    "OIDC_REDIRECT_URL",
    "LOGIN_ALLOWED_REDIRECTS",
];

impl LoginConfig {
    /// A login section with every default: what the `OIDC_*` variables alone configure.
    pub fn new(issuer_url: String, client_id: String, redirect_url: String) -> Self {
        Self {
            issuer_url,
            client_id,
            client_secret: None,
            redirect_url,
            allowed_redirects: Vec::new(),
            scopes: default_scopes(),
            userinfo: false,
            claims: ClaimMapping::default(),
            cookies: CookieConfig::default(),
            login_ttl: default_login_ttl(),
            session_ttl: default_session_ttl(),
            timeout: default_timeout(),
            refresh_grace: default_refresh_grace(),
            metadata_ttl: default_metadata_ttl(),
            post_logout_redirect: None,
        }
    }

    /// Checks what serde cannot; the message names the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let url = |field: &'static str, value: &str| {
            let parsed = openidconnect::url::Url::parse(value).map_err(|e| {
                (
                    field,
                    format!(
                        "`{}` is not a URL: {e}",
                        crate::redact::untrusted(value, 200)
                    ),
                )
            })?;
            if !matches!(parsed.scheme(), "https" | "http") {
                return Err((field, "must be an http or https URL".to_owned()));
            }
            if !parsed.username().is_empty() || parsed.password().is_some() {
                return Err((field, "must not carry credentials".to_owned()));
            }
            Ok(())
        };
        url("login.issuer_url", &self.issuer_url)?;
        url("login.redirect_url", &self.redirect_url)?;
        if self.client_id.trim().is_empty() {
            return Err(("login.client_id", "must not be empty".into()));
        }
        super::redirects::AllowList::new(&self.allowed_redirects, &self.redirect_url)
            .map_err(|e| ("login.allowed_redirects", e))?;
        let cookie_name_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !cookie_name_ok(&self.cookies.session) || !cookie_name_ok(&self.cookies.refresh) {
            return Err((
                "login.cookies",
                "cookie names are letters, digits, `_` and `-`".into(),
            ));
        }
        if let Some(domain) = &self.cookies.domain
            && (domain.is_empty()
                || !domain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
        {
            return Err(("login.cookies.domain", "must be a host name".into()));
        }
        for (field, value) in [
            ("login.login_ttl", self.login_ttl),
            ("login.session_ttl", self.session_ttl),
            ("login.timeout", self.timeout),
            ("login.metadata_ttl", self.metadata_ttl),
        ] {
            if value.is_zero() {
                return Err((field, "must be positive".into()));
            }
        }
        if self.session_ttl > crate::tokens::MAX_TTL {
            return Err(("login.session_ttl", "must be at most 366 days".into()));
        }
        if self.claims.subject.is_empty() {
            return Err(("login.claims.subject", "must name a claim".into()));
        }
        Ok(())
    }
}
