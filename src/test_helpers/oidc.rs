//! A development OpenID Connect provider for login tests, and a headless browser for its forms.
//!
//! [`OidcProvider`] runs `infra/oidc/dev-provider.mjs` (the npm package oidc-provider, run by
//! node) on a free loopback port with one confidential client: `client_secret_basic`, the
//! authorization code flow with PKCE (S256, required), a refresh token with every code exchange,
//! rotated on every use. Its users are [`USERS`]; any password is accepted, an unknown login is
//! refused. It is ready once its discovery document answers 200. Everything it knows (signing
//! keys, sessions, grants, tokens) lives in its memory: [`OidcProvider::stop`] takes it down and
//! [`OidcProvider::start_again`] brings back an empty provider on the same port, so with the same
//! issuer but new keys.
//!
//! [`login_headless`] and [`logout_headless`] play the browser: they follow the provider's
//! redirects and submit its login, consent and logout forms until it sends the browser
//! elsewhere, and return that URL. Their `reqwest::Client` must keep cookies (`.cookie_store(true)`,
//! the `cookies` feature of reqwest) and must not follow redirects (`redirect::Policy::none()`).
//!
//! Both components are found as [`tools::require`] finds a binary: `node` on the usual paths, the
//! package in [`npm_modules`]. Outside CI a missing one skips the test, in CI it fails it.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::{StatusCode, Url};
use tokio::process::Command;

use super::process::{ManagedProcess, NotReady, fail, fresh_dir};
use super::{free_port, tools};

/// The provider's script, relative to the repository root.
pub const SCRIPT: &str = "infra/oidc/dev-provider.mjs";
/// The client id the provider registers unless told otherwise.
pub const DEFAULT_CLIENT_ID: &str = "heimdall";
/// The client secret the provider registers unless told otherwise.
pub const DEFAULT_CLIENT_SECRET: &str = "heimdall-dev-secret";
/// The provider's users and their `roles` claim. Their `name` is `Alice Example` and
/// `Bob Example`, their `email` `alice@example.com` and `bob@example.com` (verified).
pub const USERS: &[(&str, &[&str])] = &[("alice", &["user", "editor"]), ("bob", &["user"])];
/// Every scope the provider knows: `profile` brings `name`, `email` brings `email` and
/// `email_verified`, `roles` brings `roles` (an array of strings), in the ID token as well as from
/// userinfo.
pub const SCOPES: &str = "openid profile email roles offline_access";
/// The password [`login_headless`] types; the provider accepts any.
pub const PASSWORD: &str = "dev-password";
/// A resource indicator whose access tokens are JWTs (RS256, the provider's `/jwks` key) with
/// this `aud`; any `http://127.0.0.1/<path>` is a resource, opaque when the path contains
/// `opaque`, expiring after 2 s when it starts with `/short-lived/`.
pub const JWT_API: &str = "http://127.0.0.1/api";
/// A resource indicator whose access tokens are opaque, with this `aud` at introspection.
pub const OPAQUE_API: &str = "http://127.0.0.1/opaque-api";
/// The scopes a resource grants.
pub const API_SCOPES: &str = "api:read api:write";
/// The `roles` of a client_credentials token (its subject is the client id).
pub const SERVICE_ROLES: &[&str] = &["service", "reader"];

/// How long the provider may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How often readiness is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// The bound on one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a graceful stop (SIGTERM) may take before the provider is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How many times a start is tried when the provider exits at once (its port still held by the
/// previous instance).
const START_ATTEMPTS: u32 = 5;
/// The pause between two such attempts.
const START_RETRY_DELAY: Duration = Duration::from_millis(250);
/// How many requests [`login_headless`] and [`logout_headless`] make at most.
const MAX_STEPS: usize = 16;

/// The directory holding the npm packages the provider loads: `$HEIMDALL_NPM_MODULES` if set,
/// otherwise `<repo>/.tools/npm/node_modules` ([`tools::npm_dir`]).
pub fn npm_modules() -> PathBuf {
    std::env::var_os("HEIMDALL_NPM_MODULES")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| tools::npm_dir().join("node_modules"))
}

/// Whether the npm package oidc-provider is installed in [`npm_modules`]; like
/// [`tools::require`]: in CI a missing package fails the test, elsewhere it prints a "skipping"
/// line and returns `false`.
pub fn require_package() -> bool {
    let manifest = npm_modules().join("oidc-provider").join("package.json");
    if manifest.is_file() {
        return true;
    }
    if tools::in_ci() {
        fail(&format!(
            "oidc-provider is not installed ({} is missing): run `make tools`",
            manifest.display()
        ));
    }
    eprintln!("skipping: oidc-provider not installed, run `make tools`");
    false
}

/// What the provider registers: its one client and the lifetimes of its tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcProviderOptions {
    /// The client id ([`DEFAULT_CLIENT_ID`]).
    pub client_id: String,
    /// The client secret ([`DEFAULT_CLIENT_SECRET`]).
    pub client_secret: String,
    /// The client's redirect URIs; at least one. `http://127.0.0.1:PORT/...` is accepted.
    pub redirect_uris: Vec<String>,
    /// The client's post-logout redirect URIs (RP-initiated logout); may be empty.
    pub post_logout_redirect_uris: Vec<String>,
    /// The access tokens' lifetime, in whole seconds (at least 1); `None` for an hour.
    pub access_token_ttl: Option<Duration>,
    /// The ID tokens' lifetime, in whole seconds (at least 1); `None` for an hour.
    pub id_token_ttl: Option<Duration>,
    /// The refresh tokens' lifetime, in whole seconds (at least 1); `None` for a day.
    pub refresh_token_ttl: Option<Duration>,
}

impl Default for OidcProviderOptions {
    fn default() -> Self {
        Self {
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            client_secret: DEFAULT_CLIENT_SECRET.to_owned(),
            redirect_uris: Vec::new(),
            post_logout_redirect_uris: Vec::new(),
            access_token_ttl: None,
            id_token_ttl: None,
            refresh_token_ttl: None,
        }
    }
}

impl OidcProviderOptions {
    /// The defaults with one redirect URI.
    pub fn with_redirect_uri(redirect_uri: &str) -> Self {
        Self {
            redirect_uris: vec![redirect_uri.to_owned()],
            ..Self::default()
        }
    }

    /// The environment of `infra/oidc/dev-provider.mjs` for these options on `port`.
    fn env(&self, port: u16) -> Result<Vec<(&'static str, String)>, String> {
        if self.redirect_uris.is_empty() {
            return Err("the OpenID provider's client needs at least one redirect URI".into());
        }
        let list = |name: &str, uris: &[String]| {
            if let Some(bad) = uris.iter().find(|uri| uri.contains(',') || uri.is_empty()) {
                return Err(format!("{name}: '{bad}' is empty or holds a comma"));
            }
            Ok(uris.join(","))
        };
        let mut env = vec![
            ("OIDC_PORT", port.to_string()),
            ("OIDC_HOST", "127.0.0.1".to_owned()),
            ("OIDC_CLIENT_ID", self.client_id.clone()),
            ("OIDC_CLIENT_SECRET", self.client_secret.clone()),
            (
                "OIDC_REDIRECT_URIS",
                list("redirect_uris", &self.redirect_uris)?,
            ),
            (
                "OIDC_POST_LOGOUT_REDIRECT_URIS",
                list("post_logout_redirect_uris", &self.post_logout_redirect_uris)?,
            ),
        ];
        for (name, ttl) in [
            ("OIDC_ACCESS_TOKEN_TTL", self.access_token_ttl),
            ("OIDC_ID_TOKEN_TTL", self.id_token_ttl),
            ("OIDC_REFRESH_TOKEN_TTL", self.refresh_token_ttl),
        ] {
            if let Some(ttl) = ttl {
                env.push((name, ttl.as_secs().max(1).to_string()));
            }
        }
        Ok(env)
    }
}

/// A running development OpenID provider on loopback; killed (and its directory removed) when
/// dropped.
pub struct OidcProvider {
    /// `http://127.0.0.1:PORT`, the issuer; the same across restarts.
    pub issuer: String,
    /// The client id it registers.
    pub client_id: String,
    /// The client secret it registers.
    pub client_secret: String,
    node: PathBuf,
    options: OidcProviderOptions,
    port: u16,
    process: Option<ManagedProcess>,
    /// Holds the log, `oidc.log`.
    dir: PathBuf,
}

impl OidcProvider {
    /// Starts the provider on a free loopback port and waits (at most 20 s) until it serves.
    ///
    /// Returns `None` when node or oidc-provider is not installed and the tests do not run in CI
    /// (see [`tools::require`]); panics, with its log, if they are installed but the provider
    /// does not start (or `options` has no redirect URI).
    pub async fn start(options: OidcProviderOptions) -> Option<OidcProvider> {
        let node = tools::require("node")?;
        if !require_package() {
            return None;
        }
        Some(
            Self::start_node(node, options)
                .await
                .unwrap_or_else(|e| fail(&e)),
        )
    }

    /// Starts the provider with the `node` binary as [`OidcProvider::start`] does; `Err` (with
    /// its log) when it does not become ready.
    pub async fn start_node(
        node: PathBuf,
        options: OidcProviderOptions,
    ) -> Result<OidcProvider, String> {
        let port = free_port();
        // Checked before anything is spawned.
        options.env(port)?;
        let mut provider = OidcProvider {
            issuer: format!("http://127.0.0.1:{port}"),
            client_id: options.client_id.clone(),
            client_secret: options.client_secret.clone(),
            node,
            options,
            port,
            process: None,
            dir: fresh_dir("oidc")?,
        };
        provider.try_start_again().await?;
        Ok(provider)
    }

    /// Starts the provider again on the same port (so with the same issuer) after
    /// [`OidcProvider::stop`]; it knows nothing of before: new signing keys, no sessions, grants
    /// or tokens. Does nothing if it is running. Panics, with the log, if it does not become
    /// ready.
    pub async fn start_again(&mut self) {
        if let Err(e) = self.try_start_again().await {
            fail(&e);
        }
    }

    async fn try_start_again(&mut self) -> Result<(), String> {
        if self.process.is_some() {
            return Ok(());
        }
        let mut attempt = 1;
        loop {
            match self.spawn_and_wait().await {
                Ok(()) => return Ok(()),
                // An immediate exit is most likely the port not yet released by the previous
                // instance; the log tells otherwise.
                Err(NotReady::Exited(_)) if attempt < START_ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(START_RETRY_DELAY).await;
                }
                Err(e) => {
                    self.kill().await;
                    return Err(format!(
                        "the OpenID provider did not become ready (attempt {attempt}): {e}\n--- {} ---\n{}",
                        self.log_path().display(),
                        self.log()
                    ));
                }
            }
        }
    }

    async fn spawn_and_wait(&mut self) -> Result<(), NotReady> {
        let env = self.options.env(self.port).map_err(NotReady::TimedOut)?;
        let mut command = Command::new(&self.node);
        command
            .arg(tools::repo_root().join(SCRIPT))
            .current_dir(tools::repo_root())
            .env("HEIMDALL_NPM_MODULES", npm_modules())
            .envs(env);
        let process = ManagedProcess::spawn("oidc-provider", &mut command, &self.log_path())
            .map_err(NotReady::TimedOut)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(PROBE_TIMEOUT)
            .build()
            .map_err(|e| NotReady::TimedOut(format!("HTTP client: {e}")))?;
        let discovery = self.discovery_url();
        let ready = process
            .wait_ready(READY_TIMEOUT, POLL_INTERVAL, || probe(&http, &discovery))
            .await;
        // Kept even when it is not ready, so that `kill` stops it.
        self.process = Some(process);
        ready
    }

    /// Stops the provider (SIGTERM, killed after 5 s) and waits for it to exit: nothing listens
    /// on its port afterwards. Does nothing if it is not running.
    pub async fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop(STOP_TIMEOUT).await;
        }
    }

    /// Kills the provider (SIGKILL) and waits for it to exit. Does nothing if it is not running.
    pub async fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().await;
        }
    }

    /// Whether the provider is running (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// The process id of the running provider, `None` after a stop.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(ManagedProcess::pid)
    }

    /// The port (on 127.0.0.1); the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the options it was started with are.
    pub fn options(&self) -> &OidcProviderOptions {
        &self.options
    }

    /// `ISSUER/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    /// `ISSUER/auth`.
    pub fn authorization_endpoint(&self) -> String {
        format!("{}/auth", self.issuer)
    }

    /// `ISSUER/token`.
    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }

    /// `ISSUER/me`.
    pub fn userinfo_endpoint(&self) -> String {
        format!("{}/me", self.issuer)
    }

    /// `ISSUER/jwks`.
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    /// `ISSUER/token/revocation` (RFC 7009).
    pub fn revocation_endpoint(&self) -> String {
        format!("{}/token/revocation", self.issuer)
    }

    /// `ISSUER/token/introspection` (RFC 7662).
    pub fn introspection_endpoint(&self) -> String {
        format!("{}/token/introspection", self.issuer)
    }

    /// An access token of the client_credentials grant for `scope`, for the API `resource`
    /// ([`JWT_API`], [`OPAQUE_API`], …) or, without one, an opaque token with no `aud`.
    pub async fn client_credentials_token(
        &self,
        scope: &str,
        resource: Option<&str>,
    ) -> Result<String, String> {
        let mut form = vec![("grant_type", "client_credentials"), ("scope", scope)];
        form.extend(resource.map(|r| ("resource", r)));
        let answer: serde_json::Value = self
            .client_call(&self.token_endpoint(), &form)
            .await?
            .json()
            .await
            .map_err(|e| format!("token answer: {e}"))?;
        answer
            .get("access_token")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("no access token in {answer}"))
    }

    /// Revokes `token` at the provider (RFC 7009).
    pub async fn revoke(&self, token: &str) -> Result<(), String> {
        self.client_call(&self.revocation_endpoint(), &[("token", token)])
            .await
            .map(drop)
    }

    /// POSTs `form` to `url` as the client (client_secret_basic); `Err` unless 200.
    async fn client_call(
        &self,
        url: &str,
        form: &[(&str, &str)],
    ) -> Result<reqwest::Response, String> {
        let response = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?
            .post(url)
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .form(form)
            .send()
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        if response.status() != StatusCode::OK {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            return Err(format!("POST {url}: {status}: {body}"));
        }
        Ok(response)
    }

    /// `ISSUER/session/end` (RP-initiated logout).
    pub fn end_session_endpoint(&self) -> String {
        format!("{}/session/end", self.issuer)
    }

    /// What the provider has logged so far (stdout and stderr), across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The log file; it is removed with the provider.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("oidc.log")
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        // Dropping the process kills it and waits (bounded) for it to be gone.
        drop(self.process.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One readiness probe: the discovery document answers 200.
async fn probe(http: &reqwest::Client, discovery: &str) -> Result<(), String> {
    let response = http
        .get(discovery)
        .send()
        .await
        .map_err(|e| format!("GET {discovery}: {e}"))?;
    if response.status() == StatusCode::OK {
        Ok(())
    } else {
        Err(format!("GET {discovery}: {}", response.status()))
    }
}

// ---- the headless browser ------------------------------------------------------------------------

/// Why [`login_headless`] or [`logout_headless`] did not get the browser out of the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadlessError {
    /// The provider showed its login form again after the user (named here) signed in: it does
    /// not know the account.
    LoginRefused(String),
    /// Anything else: an error page, a page that is not understood, a transport error, too many
    /// steps.
    Failed(String),
}

impl std::fmt::Display for HeadlessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadlessError::LoginRefused(user) => {
                write!(f, "the OpenID provider refused the login of '{user}'")
            }
            HeadlessError::Failed(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for HeadlessError {}

/// Plays the browser from `authorize_url` (the provider's authorization endpoint with its query)
/// until the provider redirects it elsewhere, and returns that URL: the relying party's redirect
/// URI with `code`, `state` and `iss`, or with `error` (e.g. a request the provider rejects
/// before any login, such as one without PKCE).
///
/// It follows the provider's redirects and submits its forms: the login form as `user` (with
/// [`PASSWORD`]), the consent form as it is, and any self-submitting form. A login form shown a
/// second time is [`HeadlessError::LoginRefused`]. When the client's cookies hold a provider
/// session already, the provider may redirect at once without a login (single sign-on) and
/// `user` is not used; add `prompt=login` to the authorization request to force one.
///
/// `client` must keep cookies (`.cookie_store(true)`) and must not follow redirects
/// (`redirect::Policy::none()`); its timeout bounds each request, and at most 16 requests are
/// made.
pub async fn login_headless(
    client: &reqwest::Client,
    authorize_url: &str,
    user: &str,
) -> Result<Url, HeadlessError> {
    drive(client, authorize_url, Some(user)).await
}

/// Plays the browser from `end_session_url` (the provider's end-session endpoint with its query,
/// e.g. `client_id`, `post_logout_redirect_uri`, `state`, `id_token_hint`) through the
/// provider's sign-out confirmation, answering "yes, sign me out" (`logout=yes`, which also
/// revokes the grants, and so the tokens, of the session), and returns where the provider sends
/// the browser: the `post_logout_redirect_uri` (with `state`) if the request named one, otherwise
/// the provider's own "Sign-out Success" page.
///
/// `client` as for [`login_headless`]; it must hold the provider's session cookie for there to
/// be anything to sign out of (without one the provider signs out nobody and redirects all the
/// same).
pub async fn logout_headless(
    client: &reqwest::Client,
    end_session_url: &str,
) -> Result<Url, HeadlessError> {
    drive(client, end_session_url, None).await
}

/// The next request of the headless browser.
enum Step {
    Get(Url),
    Post(Url, Vec<(String, String)>),
}

/// Follows the provider from `start` until it sends the browser elsewhere. `login` is the user
/// to sign in as; `None` is a logout, where a provider page without a form is where it ends.
async fn drive(
    client: &reqwest::Client,
    start: &str,
    login: Option<&str>,
) -> Result<Url, HeadlessError> {
    let failed = |message: String| HeadlessError::Failed(message);
    let start = Url::parse(start).map_err(|e| failed(format!("'{start}' is not a URL: {e}")))?;
    let provider = start.origin();
    let mut step = Step::Get(start);
    let mut logins = 0;
    for _ in 0..MAX_STEPS {
        let (url, request) = match step {
            Step::Get(url) => (url.clone(), client.get(url)),
            Step::Post(url, fields) => (url.clone(), client.post(url).form(&fields)),
        };
        let response = request
            .send()
            .await
            .map_err(|e| failed(format!("{url}: {e}")))?;
        if response.url() != &url {
            return Err(failed(format!(
                "the client followed a redirect from {url} to {}: build it with \
                 `redirect(reqwest::redirect::Policy::none())`",
                response.url()
            )));
        }
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| failed(format!("{status} from {url} without a Location")))?;
            let next = url
                .join(location)
                .map_err(|e| failed(format!("{url} redirects to '{location}': {e}")))?;
            if next.origin() != provider {
                return Ok(next);
            }
            step = Step::Get(next);
            continue;
        }
        let body = response
            .text()
            .await
            .map_err(|e| failed(format!("{url}: reading the page: {e}")))?;
        if !status.is_success() {
            let text = page_text(&body);
            let hint = if text.contains("session") || text.contains("cookie") {
                " (the client must keep cookies: `.cookie_store(true)`)"
            } else {
                ""
            };
            return Err(failed(format!("{status} from {url}: {text}{hint}")));
        }
        let Some(form) = first_form(&body) else {
            return match login {
                // The end of a logout without a post-logout redirect URI.
                None => Ok(url),
                Some(_) => Err(failed(format!(
                    "{url} shows a page without a form: {}",
                    page_text(&body)
                ))),
            };
        };
        let mut fields = form.fields;
        if fields
            .iter()
            .any(|f| f.name == "prompt" && f.value == "login")
        {
            let Some(user) = login else {
                return Err(failed(format!("{url} asks to log in during a logout")));
            };
            logins += 1;
            if logins > 1 {
                return Err(HeadlessError::LoginRefused(user.to_owned()));
            }
            for field in &mut fields {
                if field.name == "login" {
                    user.clone_into(&mut field.value);
                } else if field.kind == "password" {
                    PASSWORD.clone_into(&mut field.value);
                }
            }
        }
        let action = if form.action.is_empty() {
            url.clone()
        } else {
            url.join(&form.action)
                .map_err(|e| failed(format!("{url}: form action '{}': {e}", form.action)))?
        };
        if action.origin() != provider {
            return Err(failed(format!(
                "{url} posts a form to {action} (response_mode=form_post is not supported)"
            )));
        }
        let pairs: Vec<(String, String)> = fields.into_iter().map(|f| (f.name, f.value)).collect();
        step = if form.method == "get" {
            let mut target = action;
            target.query_pairs_mut().clear().extend_pairs(&pairs);
            Step::Get(target)
        } else {
            Step::Post(action, pairs)
        };
    }
    Err(failed(format!(
        "the OpenID provider did not send the browser elsewhere within {MAX_STEPS} requests"
    )))
}

/// A form field to submit: its name, value and input type (lower-case, `text` by default).
#[derive(Debug, PartialEq, Eq)]
struct Field {
    name: String,
    value: String,
    kind: String,
}

/// The first form of a page, as a browser would submit it with its default button.
#[derive(Debug, PartialEq, Eq)]
struct Form {
    /// As written (entities decoded), relative to the page.
    action: String,
    /// `get` or `post`.
    method: String,
    /// The named inputs (not buttons, not unchecked boxes) and the default button if named.
    fields: Vec<Field>,
}

/// The first form of `html`: its inputs are those inside it and those elsewhere whose `form`
/// attribute names its `id`; the default button (the first submit button in document order) is
/// submitted with it, as pressing Enter does.
fn first_form(html: &str) -> Option<Form> {
    let tags = tags(html);
    let start = tags.iter().position(|t| t.name == "form")?;
    let form = tags.get(start)?;
    let id = form.attr("id");
    let end = tags
        .iter()
        .skip(start + 1)
        .position(|t| t.name == "/form" || t.name == "form")
        .map_or(tags.len(), |offset| start + 1 + offset);
    let mut fields = Vec::new();
    let mut default_button = None;
    for (i, tag) in tags.iter().enumerate() {
        let owner = tag.attr("form");
        let belongs = match owner {
            Some(owner) => id == Some(owner),
            None => i > start && i < end,
        };
        if !belongs {
            continue;
        }
        let kind = tag.attr("type").unwrap_or_default().to_ascii_lowercase();
        let name = tag.attr("name").unwrap_or_default();
        let value = tag.attr("value").unwrap_or_default();
        let field = Field {
            name: name.to_owned(),
            value: value.to_owned(),
            kind: if kind.is_empty() {
                "text".to_owned()
            } else {
                kind.clone()
            },
        };
        match tag.name.as_str() {
            "button" if kind.is_empty() || kind == "submit" => {
                default_button.get_or_insert(field);
            }
            "input" if kind == "submit" || kind == "image" => {
                default_button.get_or_insert(field);
            }
            "input" => {
                let unchecked =
                    (kind == "checkbox" || kind == "radio") && tag.attr("checked").is_none();
                let skipped = matches!(kind.as_str(), "button" | "reset" | "file");
                if !name.is_empty() && !unchecked && !skipped {
                    fields.push(field);
                }
            }
            _ => {}
        }
    }
    if let Some(button) = default_button.filter(|b| !b.name.is_empty()) {
        fields.push(button);
    }
    Some(Form {
        action: form.attr("action").unwrap_or_default().to_owned(),
        method: form.attr("method").unwrap_or("get").to_ascii_lowercase(),
        fields,
    })
}

/// A start or end tag: its lower-case name (`/form` for an end tag) and attributes (names
/// lower-case, values with entities decoded, `""` for a bare attribute).
#[derive(Debug)]
struct Tag {
    name: String,
    attrs: Vec<(String, String)>,
}

impl Tag {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The tags of `html`, in order; comments, doctypes and the content of `script` and `style`
/// are skipped.
fn tags(html: &str) -> Vec<Tag> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        rest = rest.get(open + 1..).unwrap_or_default();
        if let Some(comment) = rest.strip_prefix("!--") {
            rest = comment
                .find("-->")
                .and_then(|end| comment.get(end + 3..))
                .unwrap_or_default();
            continue;
        }
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '/' || c == '!'))
            .unwrap_or(rest.len());
        let name = rest
            .get(..name_len)
            .unwrap_or_default()
            .to_ascii_lowercase();
        rest = rest.get(name_len..).unwrap_or_default();
        let (attrs, after) = attributes(rest);
        rest = after;
        if name.is_empty() || name.starts_with('!') || name == "/" {
            continue;
        }
        if name == "script" || name == "style" {
            rest = find_ignore_case(rest, &format!("</{name}"))
                .and_then(|end| rest.get(end..))
                .unwrap_or_default();
        }
        out.push(Tag { name, attrs });
    }
    out
}

/// The attributes at the start of `s` (just after a tag name) up to the tag's `>`, and what
/// follows it.
fn attributes(s: &str) -> (Vec<(String, String)>, &str) {
    let mut attrs = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '/');
        if rest.is_empty() {
            return (attrs, rest);
        }
        if let Some(after) = rest.strip_prefix('>') {
            return (attrs, after);
        }
        let name_len = rest
            .find(|c: char| c.is_ascii_whitespace() || matches!(c, '=' | '>' | '/'))
            .unwrap_or(rest.len());
        if name_len == 0 {
            // A stray `=`: skip it.
            rest = rest.get(1..).unwrap_or_default();
            continue;
        }
        let name = rest
            .get(..name_len)
            .unwrap_or_default()
            .to_ascii_lowercase();
        rest = rest.get(name_len..).unwrap_or_default();
        let Some(value) = rest.trim_start().strip_prefix('=') else {
            attrs.push((name, String::new()));
            continue;
        };
        let value = value.trim_start();
        let (raw, after) = match value.chars().next() {
            Some(quote @ ('"' | '\'')) => {
                let inner = value.get(1..).unwrap_or_default();
                match inner.find(quote) {
                    Some(end) => (
                        inner.get(..end).unwrap_or_default(),
                        inner.get(end + 1..).unwrap_or_default(),
                    ),
                    None => (inner, ""),
                }
            }
            _ => {
                let end = value
                    .find(|c: char| c.is_ascii_whitespace() || c == '>')
                    .unwrap_or(value.len());
                (
                    value.get(..end).unwrap_or_default(),
                    value.get(end..).unwrap_or_default(),
                )
            }
        };
        attrs.push((name, decode_entities(raw)));
        rest = after;
    }
}

/// Where `needle` (ASCII) starts in `haystack`, ignoring ASCII case.
fn find_ignore_case(haystack: &str, needle: &str) -> Option<usize> {
    haystack.char_indices().map(|(i, _)| i).find(|&i| {
        haystack
            .get(i..i + needle.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(needle))
    })
}

/// `s` with its character references decoded: the named ones oidc-provider writes (`&amp;`,
/// `&lt;`, `&gt;`, `&quot;`, `&apos;`) and numeric ones; anything else is kept as written.
fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(rest.get(..amp).unwrap_or_default());
        rest = rest.get(amp..).unwrap_or_default();
        let decoded = rest.find(';').filter(|&end| end <= 10).and_then(|end| {
            let entity = rest.get(1..end)?;
            let c = match entity {
                "amp" => '&',
                "lt" => '<',
                "gt" => '>',
                "quot" => '"',
                "apos" => '\'',
                _ => {
                    let code = match entity.strip_prefix('#') {
                        Some(hex) if hex.starts_with(['x', 'X']) => {
                            u32::from_str_radix(hex.get(1..)?, 16).ok()?
                        }
                        Some(decimal) => decimal.parse().ok()?,
                        None => return None,
                    };
                    char::from_u32(code)?
                }
            };
            Some((c, end + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = rest.get(len..).unwrap_or_default();
            }
            None => {
                out.push('&');
                rest = rest.get(1..).unwrap_or_default();
            }
        }
    }
    out.push_str(rest);
    out
}

/// The visible text of a page (tags, scripts and styles removed, whitespace collapsed), at most
/// 300 characters: what an error message quotes.
fn page_text(html: &str) -> String {
    let mut text = String::new();
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        text.push_str(rest.get(..open).unwrap_or_default());
        text.push(' ');
        let tag = rest.get(open + 1..).unwrap_or_default();
        let skip_to = ["script", "style"].iter().find_map(|name| {
            tag.get(..name.len())
                .filter(|t| t.eq_ignore_ascii_case(name))
                .map(|_| format!("</{name}"))
        });
        let after_block = match skip_to {
            Some(end_tag) => find_ignore_case(tag, &end_tag).and_then(|end| tag.get(end..)),
            None => Some(tag),
        }
        .unwrap_or_default();
        rest = after_block
            .find('>')
            .and_then(|end| after_block.get(end + 1..))
            .unwrap_or_default();
    }
    text.push_str(rest);
    let collapsed = decode_entities(&text)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    collapsed.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_form() {
        let html = r#"<!DOCTYPE html><html><head><style>form{x:1}</style></head><body>
            <!-- <form action="/nope"> -->
            <form autocomplete="off" action="/interaction/a&amp;b" method="post">
              <input type="hidden" name="prompt" value="login"/>
              <input required type="text" name="login" placeholder="Enter any login" autofocus="on" value="">
              <input required type="password" name="password" placeholder="and password" >
              <button type="submit" class="login login-submit">Sign-in</button>
            </form></body></html>"#;
        let form = first_form(html).unwrap();
        assert_eq!(form.action, "/interaction/a&b");
        assert_eq!(form.method, "post");
        let names: Vec<(&str, &str, &str)> = form
            .fields
            .iter()
            .map(|f| (f.name.as_str(), f.value.as_str(), f.kind.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("prompt", "login", "hidden"),
                ("login", "", "text"),
                ("password", "", "password")
            ]
        );
    }

    #[test]
    fn logout_form_with_buttons_outside() {
        let html = r#"<div><h1>Do you want to sign-out from 127.0.0.1:1?</h1>
            <form id="op.logoutForm" method="post" action="http://127.0.0.1:1/session/end/confirm"><input type="hidden" name="xsrf" value="s3cr&#39;t"/></form>
            <button autofocus type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
            <button type="submit" form="op.logoutForm">No, stay signed in</button></div>"#;
        let form = first_form(html).unwrap();
        assert_eq!(form.action, "http://127.0.0.1:1/session/end/confirm");
        let pairs: Vec<(&str, &str)> = form
            .fields
            .iter()
            .map(|f| (f.name.as_str(), f.value.as_str()))
            .collect();
        assert_eq!(pairs, [("xsrf", "s3cr't"), ("logout", "yes")]);
    }

    #[test]
    fn self_submitting_form() {
        let html = r#"<head><script>document.addEventListener('DOMContentLoaded', function () { document.forms[0].submit() }); if (1 < 2) {}</script></head>
            <body><form method="post" action="/session/end/confirm">
            <input type="hidden" name="xsrf" value="abc"/>
            <input type="hidden" name="logout" value="yes"/>
            <noscript><button autofocus type="submit">Continue</button></noscript></form></body>"#;
        let form = first_form(html).unwrap();
        let pairs: Vec<(&str, &str)> = form
            .fields
            .iter()
            .map(|f| (f.name.as_str(), f.value.as_str()))
            .collect();
        assert_eq!(pairs, [("xsrf", "abc"), ("logout", "yes")]);
        assert!(first_form("<p>Sign-out Success</p>").is_none());
    }

    #[test]
    fn entities_and_text() {
        assert_eq!(
            decode_entities("a&amp;b&lt;&#x41;&#66;&bogus;&"),
            "a&b<AB&bogus;&"
        );
        assert_eq!(
            page_text("<html><style>h1{}</style><h1>invalid_request</h1><p>bad &quot;x&quot;</p>"),
            "invalid_request bad \"x\""
        );
    }
}
