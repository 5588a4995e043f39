//! An identity provider's own access tokens end to end: the dev OpenID provider
//! ([`OidcProvider`], which issues JWT and opaque access tokens and answers introspection), and
//! heimdall behind a real Envoy, configured against it. Shared by the tests of the `jwt` and
//! `oauth2_introspection` authenticators.

use reqwest::StatusCode;
use serde_json::Value;

use super::heimdall::sample_value;
use super::oidc::{OidcProvider, OidcProviderOptions};
use super::process::fail;
use super::stack::{Stack, StackBuilder};

/// The dev provider's client secret file, for `client_secret: {file: …}`.
pub fn client_secret_file() -> std::path::PathBuf {
    super::tools::repo_root().join("infra/oidc/dev-client-secret")
}

/// The provider, and heimdall with Envoy in front.
pub struct IdpStack {
    pub provider: OidcProvider,
    pub stack: Stack,
}

impl IdpStack {
    /// Starts the provider, then heimdall with the configuration `config` writes for it (YAML),
    /// behind Envoy. `None` when a component is not installed outside CI.
    pub async fn start(config: impl FnOnce(&OidcProvider) -> String) -> Option<Self> {
        let provider = OidcProvider::start(OidcProviderOptions::with_redirect_uri(
            "http://127.0.0.1:1/unused",
        ))
        .await?;
        let yaml = config(&provider);
        let stack = StackBuilder::new(&yaml).envoy().start().await?;
        Some(Self { provider, stack })
    }

    /// `GET path` through Envoy with `Authorization: Bearer token`: the status, and the echo
    /// upstream's JSON (what it received) when the request got through.
    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        let Some(envoy) = &self.stack.envoy else {
            fail("the stack has no Envoy");
        };
        let response = self
            .stack
            .client
            .get(envoy.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap_or_else(|e| fail(&format!("GET {path}: {e}")));
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// The status of `GET path` through Envoy with the bearer `token`.
    pub async fn status(&self, path: &str, token: &str) -> StatusCode {
        self.get(path, token).await.0
    }

    /// The sample `name_with_labels` of heimdall's `/metrics` (0 when it is absent).
    pub async fn metric(&self, name_with_labels: &str) -> f64 {
        let url = format!("http://{}/metrics", self.stack.heimdall.http_addr);
        let text = async {
            self.stack
                .client
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .text()
                .await
        }
        .await
        .unwrap_or_else(|e| fail(&format!("GET {url}: {e}")));
        sample_value(&text, name_with_labels).unwrap_or(0.0)
    }
}
