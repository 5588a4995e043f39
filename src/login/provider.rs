//! The OpenID provider as heimdall sees it: discovery (cached, read again after
//! `metadata_ttl` or when a token is signed by a key it does not know yet), the openidconnect
//! client, and the one HTTP client every call to the provider goes through — deadlines, no
//! redirects, bounded bodies.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod, CoreGrantType,
    CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm,
    CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::url::Url;
use openidconnect::{
    AdditionalProviderMetadata, ClientId, ClientSecret, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IssuerUrl, ProviderMetadata, RedirectUrl,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::LoginError;
pub(super) use crate::outbound::error_chain;
use crate::outbound::{HttpClient, OutboundError, client_basic_credentials};

/// The largest answer read from the provider.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Discovery fields openidconnect's core metadata leaves out: RP-initiated logout and RFC 7009
/// revocation.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub(super) struct LogoutMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) end_session_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) revocation_endpoint: Option<String>,
}

impl AdditionalProviderMetadata for LogoutMetadata {}

type Metadata = ProviderMetadata<
    LogoutMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// The client as discovery configures it: authorization endpoint set, token and userinfo
/// endpoints as the provider announces them.
pub(super) type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// One discovery's result.
pub(super) struct Provider {
    pub(super) client: Client,
    pub(super) userinfo: Option<Url>,
    pub(super) end_session: Option<Url>,
    pub(super) revocation: Option<Url>,
    fetched: Instant,
}

/// Why a call to the provider failed, as the HTTP client adapter reports it.
pub(super) type HttpError = OutboundError;

/// The provider's endpoints and keys, and the HTTP client to reach them.
pub(super) struct Discovery {
    issuer: IssuerUrl,
    client_id: ClientId,
    client_secret: Option<ClientSecret>,
    redirect: RedirectUrl,
    metadata_ttl: Duration,
    pub(super) http: Http,
    current: Mutex<Option<Arc<Provider>>>,
}

/// The HTTP client of every provider call.
#[derive(Clone)]
pub(super) struct Http(HttpClient);

impl Http {
    pub(super) fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        HttpClient::new(timeout, MAX_BODY_BYTES).map(Self)
    }

    /// Sends one request (openidconnect's shape) and reads at most [`MAX_BODY_BYTES`].
    pub(super) async fn send(
        &self,
        request: openidconnect::HttpRequest,
    ) -> Result<openidconnect::HttpResponse, HttpError> {
        self.0.send(request).await
    }

    /// A GET with a bearer token, for userinfo; JSON object or an error.
    pub(super) async fn get_json(
        &self,
        url: &Url,
        bearer: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, LoginError> {
        let request = http::Request::builder()
            .method(http::Method::GET)
            .uri(url.as_str())
            .header(http::header::AUTHORIZATION, format!("Bearer {bearer}"))
            .header(http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|e| LoginError::provider("userinfo", e.to_string()))?;
        let response = self
            .send(request)
            .await
            .map_err(|e| LoginError::from_http("userinfo", e))?;
        if !response.status().is_success() {
            return Err(LoginError::provider(
                "userinfo",
                format!("answered {}", response.status()),
            ));
        }
        serde_json::from_slice(response.body()).map_err(|_| {
            LoginError::provider(
                "userinfo",
                "the answer is not a JSON object (a signed userinfo JWT is not supported)",
            )
        })
    }

    /// An RFC 7009 revocation of a refresh token, with the client's credentials.
    pub(super) async fn revoke(
        &self,
        url: &Url,
        client_id: &str,
        client_secret: Option<&str>,
        refresh_token: &str,
    ) -> Result<(), LoginError> {
        // Built before the request is sent: the serializer is not `Send`.
        let request = {
            let mut form = openidconnect::url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("token", refresh_token)
                .append_pair("token_type_hint", "refresh_token");
            let mut request = http::Request::builder()
                .method(http::Method::POST)
                .uri(url.as_str())
                .header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .header(http::header::ACCEPT, "application/json");
            match client_secret {
                Some(secret) => {
                    request = request.header(
                        http::header::AUTHORIZATION,
                        client_basic_credentials(client_id, secret),
                    );
                }
                None => {
                    form.append_pair("client_id", client_id);
                }
            }
            request
                .body(form.finish().into_bytes())
                .map_err(|e| LoginError::provider("revocation", e.to_string()))?
        };
        let response = self
            .send(request)
            .await
            .map_err(|e| LoginError::from_http("revocation", e))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(LoginError::provider(
                "revocation",
                format!("answered {}", response.status()),
            ))
        }
    }
}

/// openidconnect's requests go through [`Http::send`]; a boxed `Send` future, so the login
/// handlers stay `Send` (a closure's borrowed future is not, for every lifetime).
impl<'c> openidconnect::AsyncHttpClient<'c> for Http {
    type Error = HttpError;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<openidconnect::HttpResponse, HttpError>> + Send + 'c>,
    >;

    fn call(&'c self, request: openidconnect::HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

impl Discovery {
    pub(super) fn new(
        issuer: &str,
        client_id: &str,
        client_secret: Option<String>,
        redirect: &str,
        timeout: Duration,
        metadata_ttl: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            issuer: IssuerUrl::new(issuer.to_owned())?,
            client_id: ClientId::new(client_id.to_owned()),
            client_secret: client_secret.map(ClientSecret::new),
            redirect: RedirectUrl::new(redirect.to_owned())?,
            metadata_ttl,
            http: Http::new(timeout)?,
            current: Mutex::new(None),
        })
    }

    pub(super) fn client_id(&self) -> &str {
        self.client_id.as_str()
    }

    pub(super) fn client_secret(&self) -> Option<&str> {
        self.client_secret.as_ref().map(|s| s.secret().as_str())
    }

    /// The provider, discovered now when never discovered or older than `metadata_ttl`.
    pub(super) async fn provider(&self) -> Result<Arc<Provider>, LoginError> {
        let mut current = self.current.lock().await;
        if let Some(provider) = current.as_ref()
            && provider.fetched.elapsed() < self.metadata_ttl
        {
            return Ok(Arc::clone(provider));
        }
        let provider = Arc::new(self.discover().await?);
        *current = Some(Arc::clone(&provider));
        Ok(provider)
    }

    /// Discovers again when the cached metadata is older than a minute: the provider may have
    /// rotated its signing keys. Returns `None` when it is too fresh to be worth asking.
    pub(super) async fn rediscover(&self) -> Result<Option<Arc<Provider>>, LoginError> {
        const MIN_AGE: Duration = Duration::from_secs(60);
        let mut current = self.current.lock().await;
        if current
            .as_ref()
            .is_some_and(|p| p.fetched.elapsed() < MIN_AGE)
        {
            return Ok(None);
        }
        let provider = Arc::new(self.discover().await?);
        *current = Some(Arc::clone(&provider));
        Ok(Some(provider))
    }

    async fn discover(&self) -> Result<Provider, LoginError> {
        let metadata = Metadata::discover_async(self.issuer.clone(), &self.http)
            .await
            .map_err(|e| match e {
                openidconnect::DiscoveryError::Request(http) => {
                    LoginError::from_http("discovery", http)
                }
                other => LoginError::provider("discovery", error_chain(&other)),
            })?;
        let extra = metadata.additional_metadata().clone();
        let userinfo = metadata.userinfo_endpoint().map(|u| u.url().clone());
        let parse = |what: &'static str, url: Option<String>| {
            url.map(|u| {
                Url::parse(&u).map_err(|_| {
                    LoginError::provider("discovery", format!("`{what}` is not a URL"))
                })
            })
            .transpose()
        };
        let end_session = parse("end_session_endpoint", extra.end_session_endpoint)?;
        let revocation = parse("revocation_endpoint", extra.revocation_endpoint)?;
        let client = CoreClient::from_provider_metadata(
            metadata,
            self.client_id.clone(),
            self.client_secret.clone(),
        )
        .set_redirect_uri(self.redirect.clone());
        tracing::info!(issuer = %self.issuer.as_str(), "OpenID provider discovered");
        Ok(Provider {
            client,
            userinfo,
            end_session,
            revocation,
            fetched: Instant::now(),
        })
    }
}
